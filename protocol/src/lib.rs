//! chorus wire protocol v1.
//!
//! Layout:
//! - [`frame`]: every frame as serde types, decoding with precise errors, message
//!   and presence shapes, room name rules.
//! - [`json`]: the rules every application JSON value (bodies, meta) obeys.
//! - [`codes`]: close codes (reconnect vs do-not-reconnect ranges) and error codes.
//! - `client` (feature `client`): an async Rust client used by tests, the chaos
//!   harness and the load generator.
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
pub use json::{JsonRule, MAX_JSON_DEPTH, check_app_json};
