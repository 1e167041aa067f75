//! chorus wire protocol v1.
//!
//! Layout:
//! - [`frame`]: every frame as serde types, decoding with precise errors, message
//!   and presence shapes, room name rules. A folder split by concept into
//!   private modules, everything public re-exported from `frame`:
//!   - `raw`: `Json`, an application JSON value kept as its raw text.
//!   - `client`: `ClientFrame` (op names, request ids, encoding) and `Resume`.
//!   - `decode`: `ClientFrame::decode` and `DecodeError`.
//!   - `server`: `ServerFrame` and the shapes it carries (`Message`,
//!     `RoomState`, `Limits`, `PresenceUser`, `DeviceInfo`, `Receipt`).
//!   - `tests` (tests only): decoding, round trips, the name rules.
//!   - the folder's `mod.rs`: the version, the subprotocol and the name rules.
//! - [`json`]: the rules every application JSON value (bodies, meta) obeys.
//! - [`codes`]: close codes (reconnect vs do-not-reconnect ranges) and error codes.
//! - `client` (feature `client`): an async Rust client used by tests, the chaos
//!   harness and the load generator. A folder split by concept into private
//!   modules, everything public re-exported from `client`:
//!   - `config`: `ClientConfig`, the URL helpers, `new_cid`.
//!   - `error`: `ClientError`.
//!   - `handle`: `ClientHandle` (the requests) and the reply types.
//!   - `event`: `Event`, and what flows through the event channel.
//!   - `connect`: `Client` (upgrade, `hello` until `welcome`, then events and
//!     cursors) and `connect_ws`.
//!   - `shared`: state shared by the handles and the socket task (waiting
//!     requests, close reason, outbound queue, counters).
//!   - `task`: the background socket task.
//!   - `seq`: per-room seq de-duplication and gap detection.
//!   - `backoff`: back-off with jitter (send retries, reconnecting harnesses).
//!   - `fake_server` (tests only): a scripted server exercising the client end
//!     to end.
//!
//! The authoritative specification is `PROTOCOL.md` in this crate's folder.

pub mod codes;
pub mod frame;
pub mod json;

#[cfg(feature = "client")]
pub mod client;

pub use codes::{CloseCode, ErrorCode, should_reconnect};
pub use frame::{
    ClientFrame, DecodeError, DeviceInfo, Json, Limits, Message, PROTOCOL_VERSION, PresenceUser,
    Receipt, Resume, RoomState, SUBPROTOCOL, ServerFrame, direct_room, valid_cid, valid_room,
};
pub use json::{JsonRule, MAX_JSON_DEPTH, RESERVED_KEY_PREFIX, check_app_json};
