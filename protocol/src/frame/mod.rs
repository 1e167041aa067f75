//! Every frame of protocol v1 as serde types.
//!
//! Frames are JSON objects in WebSocket text frames, tagged by `op`. Unknown
//! fields are ignored; an unknown `op` is answered with an `unknown_op` error.
//! Requests may carry a numeric `id`, echoed on the reply and on any error.
//!
//! Layout: this file holds the version, the subprotocol and the name rules
//! (cids, rooms, direct rooms); `raw` [`Json`], a JSON value kept as its raw
//! text; `client` [`ClientFrame`] and [`Resume`]; `decode` the decoding of a
//! client frame with precise errors ([`DecodeError`]); `server`
//! [`ServerFrame`] and the shapes it carries (messages, room states, limits,
//! presence, receipts).

mod client;
mod decode;
mod raw;
mod server;
#[cfg(test)]
mod tests;

pub use client::{ClientFrame, Resume};
pub use decode::DecodeError;
pub use raw::Json;
pub use server::{DeviceInfo, Limits, Message, PresenceUser, Receipt, RoomState, ServerFrame};

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The WebSocket subprotocol naming that version.
pub const SUBPROTOCOL: &str = "chorus.v1";

/// Client message ids: 1 to 128 characters (Unicode scalar values).
pub const MAX_CID_CHARS: usize = 128;

/// Whether `cid` is a valid client message id: 1 to 128 characters, counted
/// as Unicode scalar values (as JSON Schema's `maxLength` counts them), not
/// bytes.
pub fn valid_cid(cid: &str) -> bool {
    !cid.is_empty() && cid.chars().nth(MAX_CID_CHARS).is_none()
}

/// Room names: 1 to 128 characters from `A-Z a-z 0-9 _ - . : @ #`.
pub const MAX_ROOM_LEN: usize = 128;

/// Whether `room` is a valid room name.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_LEN
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@#".contains(&b))
}

/// The deterministic id of the direct room between two users: `dm:` and the
/// two user ids sorted, joined by `:`.
pub fn direct_room(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("dm:{x}:{y}")
}
