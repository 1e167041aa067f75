//! [`Event`]: what the server sends that is not a reply, and the items of
//! the event channel.

use crate::codes::ErrorCode;
use crate::frame::{Message, PresenceUser, Receipt, ServerFrame};

use super::Joined;
#[cfg(doc)]
use super::{Client, ClientHandle};

/// Something the server sent that is not a reply to a request.
#[derive(Debug, Clone)]
pub enum Event {
    /// A room message (already de-duplicated by seq).
    Msg(Message),
    /// The next `msg` of `room` has seq `got` but `expected` was due: messages
    /// were skipped. Emitted just before that [`Event::Msg`].
    Gap {
        room: String,
        expected: u64,
        got: u64,
    },
    /// A room re-joined by the server during a resume (a `joined` without id).
    Joined(Joined),
    /// Coalesced read/delivery positions.
    Receipt {
        room: String,
        receipts: Vec<Receipt>,
    },
    /// Someone else is typing.
    Typing {
        room: String,
        user: String,
        device: String,
        active: bool,
    },
    /// Users who came online in / went offline from a room; for a hot room,
    /// empty lists and the coalesced `online` count instead.
    PresenceDiff {
        room: String,
        joined: Vec<PresenceUser>,
        left: Vec<String>,
        online: Option<u64>,
    },
    /// The server asks to reconnect (usually followed by close 4000).
    Reconnect { reason: String, retry_after_ms: u64 },
    /// The connection's token expires at `exp` (Unix seconds): call
    /// [`ClientHandle::refresh`] with a fresh token before then, or the
    /// server closes with 4502.
    RefreshNeeded { exp: u64 },
    /// An `error` frame no request is waiting for (e.g. for `read`/`delivered`,
    /// or an unsolicited one).
    Error {
        code: ErrorCode,
        message: String,
        retryable: bool,
        retry_after_ms: Option<u64>,
        /// The `op` of the failed request, if the server said.
        request: Option<String>,
        cid: Option<String>,
        room: Option<String>,
    },
    /// A frame that is valid but unexpected here (e.g. an `ack` without id).
    Other(Box<ServerFrame>),
    /// A frame that could not be decoded (or a binary frame).
    Invalid { text: String, error: String },
    /// The connection ended; the last event. `code` is the WebSocket close
    /// code when a close frame arrived, `None` for a dropped or dead connection.
    Closed { code: Option<u16>, reason: String },
}

/// What flows through the event channel: events, and cursor updates kept in
/// order with them so [`Client::cursors`] matches what was returned.
pub(super) enum Inbound {
    Event(Event),
    /// The room's cursor is now this (after a `joined`).
    Cursor(String, u64),
    /// The room was left: drop its cursor.
    Forget(String),
}
