//! An async Rust client for the chorus gateway (feature `client`).
//!
//! Used by the integration tests, the chaos harness and the load generator, so
//! it stays small and cheap: one background task per connection, no
//! per-message allocation beyond decoding the frame.
//!
//! # Shape
//!
//! - [`Client::connect`] / [`Client::connect_resume`] open the WebSocket, send
//!   `hello` and return once `welcome` arrived.
//! - Requests ([`ClientHandle::join`], [`ClientHandle::send`],
//!   [`ClientHandle::history`], ...) live on [`ClientHandle`], which [`Client`]
//!   dereferences to. A handle is `Clone + Send + Sync`: get one with
//!   [`Client::handle`] to send from other tasks while the [`Client`] owner
//!   drains events.
//! - Everything the server sends that is not a reply (messages, receipts,
//!   typing, presence diffs, `reconnect` and `refresh_needed` hints, errors
//!   without a waiting request, the final close) arrives through
//!   [`Client::next_event`].
//!
//! # The application must drain events
//!
//! Events go through a bounded channel ([`ClientConfig::event_capacity`],
//! default 65536). When it is full the background task **waits** for room:
//! it then stops reading the socket, stops answering the server's `ping`s and
//! stops writing requests, so pending requests time out and the server will
//! eventually close the connection (4002 slow consumer or 4001 heartbeat
//! timeout). Keep calling [`Client::next_event`] (or drop the [`Client`]).
//!
//! # Ordering, de-duplication and cursors
//!
//! The task tracks the last `seq` per room. A `msg` with `seq <=` the last one
//! is dropped and counted ([`ClientHandle::duplicates_dropped`]); a `msg` with
//! `seq > last + 1` is delivered after an [`Event::Gap`] (a correct server never
//! causes one; counted in [`ClientHandle::gaps`]). [`Client::cursors`] is the last
//! seq per room *returned by [`Client::next_event`]* (not merely received), so a
//! [`Resume`] built from [`Client::resume_state`] never skips a message the
//! application has not seen.

mod backoff;
mod config;
mod connect;
mod error;
mod event;
mod handle;
mod seq;
mod shared;
mod task;

#[cfg(test)]
mod fake_server;

/// Re-export of the WebSocket library, for [`ClientHandle::send_raw_message`]
/// and [`connect_ws`] users.
pub use tokio_tungstenite::tungstenite;

pub use backoff::{Backoff, backoff_delay, random_u64, retry_delay};
pub use config::{ClientConfig, dev_url, new_cid, token_url, with_query};
pub use connect::{Client, WsStream, connect_ws};
pub use error::ClientError;
pub use event::Event;
pub use handle::{Ack, ClientHandle, HistoryPage, Joined, Welcome};

#[cfg(doc)]
use crate::frame::Resume;
