//! chorus gateway: WebSocket connections, rooms, presence and the HTTP API.
//!
//! Layout:
//! - `config/`: flags and their `CHORUS_*` environment twins, grouped by concern
//!   (cluster, auth, connection and sends, rooms, HTTP), each part handed its group.
//! - `node`: where one process is wired: `NodeBuilder` takes the seams (store,
//!   broker, presence; tests inject failing ones), starts each service's loop,
//!   and `Node` holds the handles plus the drain.
//! - `sessions`: session presence (attach, settle, the leave grace period) and
//!   its heartbeat and hot-room count loops.
//! - `receipts`: read receipts batched in memory and flushed by their own loop.
//! - `admission`: connection ids and the node-wide and per-user connection caps.
//! - `retention`: the history trimmer (age and count) and its loop.
//! - `conn/`: one WebSocket: the socket loop, the handshake, delivery (queue,
//!   gap fill, replay, bounded writes), the drain, token timers; generic over
//!   the socket.
//! - `ops/`: the requests a connection answers, one file per command;
//!   `ops/send.rs` is the one send path (WebSocket `send` and HTTP publish).
//! - `hub`: local room membership and fan-out into bounded per-connection queues.
//! - `fanout`: room traffic above the broker: the one local delivery, delivery
//!   cursors, gap fill from history and tip checks; joining a room (hub and
//!   subscription together, undone together).
//! - `sequencer`: the room writer (fenced epochs, group commit, publish, ack).
//! - `send`: a send to sequence, its ack, and why it was not acked.
//! - `router`: where a send goes (local writer or, in cluster mode, the room's
//!   owner through its inbox), with retries that stay idempotent.
//! - `inbox`: the node-to-node inbox seam (forwarded sends and their answers)
//!   and its wire format; the Redis broker carries it.
//! - `cluster/`: what speaks Redis for the node as a whole: the clients'
//!   settings, room ownership leases (a routing hint; the store's epoch is the
//!   fence).
//! - `broker/`: the transport seam between nodes and the handler it calls back
//!   (memory: an in-process bus; Redis pub/sub).
//! - `presence/`: the presence seam (memory; Redis with expiry).
//! - `auth`: JWTs, dev identities, resume tokens, ACLs.
//! - `names`: user and tenant id rules, tenant-namespaced keys.
//! - `clock`: Unix milliseconds.
//! - `listener`: the accept loop: pending-connection bounds, per-IP limits,
//!   HTTP/1 timeouts, lingering close.
//! - `jwks`: the identity provider's key set (file or URL), cached and
//!   refetched (rate-limited) when a token names an unknown key id.
//! - `http/`: routes (`mod.rs`: health, readiness, metrics, demo page, the key
//!   check), the upgrade at `/ws` (`ws.rs`), the JSON API under `/v1` (`api.rs`),
//!   the API's error shape (`error.rs`).
//! - `ratelimit`, `metrics`: token buckets and the Prometheus exporter.
//! - `websocket/`: the server end of a WebSocket: the upgrade, frames read
//!   through a stack buffer and written from shared payloads with `writev`.
//! - `wire`: stored messages as protocol messages and `msg` frames, history pages.
//! - `shutdown`: the signal every background loop exits on, and the tracker
//!   of their tasks that the drain waits for.

mod admission;
pub mod auth;
pub mod broker;
mod clock;
mod cluster;
pub mod config;
mod conn;
pub mod fanout;
pub mod http;
pub mod hub;
pub mod inbox;
mod jwks;
pub mod listener;
pub mod metrics;
pub mod names;
pub mod node;
mod ops;
pub mod presence;
pub mod ratelimit;
mod receipts;
mod retention;
mod router;
mod send;
mod sequencer;
mod sessions;
pub mod shutdown;
mod websocket;
mod wire;

pub use config::Config;
pub use node::Node;
