//! Frames from server to client: [`ServerFrame`] and the shapes it carries
//! ([`Message`], [`RoomState`], [`Limits`], [`PresenceUser`] and its
//! [`DeviceInfo`], [`Receipt`]).

use serde::{Deserialize, Serialize};

use super::Json;
use crate::codes::ErrorCode;

/// One stored message, as delivered live (`msg`) and in history pages.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Message {
    pub room: String,
    /// Position in the room: 1, 2, 3, ... with no gap.
    pub seq: u64,
    /// Server-assigned unique id (UUID v7).
    pub id: String,
    /// The sending user (`sub` of their token), or the API publisher's name.
    pub sender: String,
    /// The sender's client message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    pub body: Json,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Json>,
    /// Commit time, Unix milliseconds.
    pub ts: i64,
}

/// A room the user is a member of, as listed in `welcome`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomState {
    pub room: String,
    /// Highest seq in the room.
    pub tip: u64,
    /// The user's read position (any device).
    pub last_read: u64,
    /// The user's delivery position (any device).
    pub last_delivered: u64,
    /// `tip - last_read`.
    pub unread: u64,
}

/// Limits the server enforces on this connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// Largest inbound WebSocket frame, bytes; larger closes with 4504.
    pub max_frame_bytes: u64,
    /// Largest `body` + `meta` of a send, bytes; larger gets `message_too_large`.
    pub max_message_bytes: u64,
    /// Rooms one connection may have joined at once.
    pub max_rooms: u64,
    /// Sustained sends per second on one connection.
    pub sends_per_sec: u64,
    /// Burst of sends above the sustained rate.
    pub send_burst: u64,
    /// Largest history page.
    pub max_history_page: u64,
    /// Messages replayed on join/resume before `recovered: false` is reported.
    pub max_replay: u64,
}

/// One device of a present user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeviceInfo {
    pub device: String,
    /// Node holding the connection.
    pub node: String,
    /// When the connection joined, Unix milliseconds.
    pub since: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

/// A user present in a room, with their devices.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PresenceUser {
    pub user: String,
    pub devices: Vec<DeviceInfo>,
}

/// One user's positions, in a `receipt` frame.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
}

/// A frame from server to client.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Reply to `hello`.
    Welcome {
        v: u32,
        /// Session id (stable across resumes).
        session: String,
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        device: String,
        node: String,
        /// Present this in `hello.resume.token` to resume.
        resume_token: String,
        /// How long the resume token stays valid, ms.
        resume_ttl_ms: u64,
        /// The server sends `ping` this often; answer with `pong`.
        heartbeat_ms: u64,
        /// Close (4001) when nothing arrives for this long.
        idle_timeout_ms: u64,
        limits: Limits,
        /// The user's durable memberships with tips and unread counts.
        rooms: Vec<RoomState>,
        /// Whether `hello.resume` was accepted (rooms are re-joined with replay).
        resumed: bool,
    },
    /// Reply to `join` (also sent for each room re-joined by a resume).
    Joined {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        /// Tip when the join completed (messages up to it were replayed if asked).
        tip: u64,
        last_read: u64,
        /// False when more than `max_replay` messages were missed: the client
        /// must page `history` for the rest; live delivery starts after `tip`.
        recovered: bool,
        /// How many messages were replayed before this frame.
        replayed: u64,
        /// Users online in the room; empty when the room is hot (more users
        /// online than the server's threshold): see `online`.
        presence: Vec<PresenceUser>,
        /// How many users are online in the room.
        #[serde(default)]
        online: u64,
    },
    /// Reply to `leave`.
    Left {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
    },
    /// Reply to `send`: the message is durably committed as `seq`.
    Ack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        cid: String,
        seq: u64,
        msg_id: String,
        ts: i64,
        /// True when this `cid` had been stored before (a retry).
        duplicate: bool,
    },
    /// A room message.
    Msg(Message),
    /// Reply to `history`.
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        messages: Vec<Message>,
        has_more: bool,
    },
    /// Coalesced read/delivery positions of members.
    Receipt {
        room: String,
        receipts: Vec<Receipt>,
    },
    /// Someone is typing (never persisted).
    Typing {
        room: String,
        user: String,
        device: String,
        active: bool,
    },
    /// A room's presence snapshot (reply to `presence`).
    Presence {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        users: Vec<PresenceUser>,
        /// `true` when the list was cut at the server's presence reply bound
        /// (`users` then holds the first users that fit); absent otherwise.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// Users who came online in / went offline from a room.
    PresenceDiff {
        room: String,
        joined: Vec<PresenceUser>,
        left: Vec<String>,
        /// Hot rooms only: the online count, coalesced, with empty lists.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        online: Option<u64>,
    },
    /// Server heartbeat: answer with `pong`.
    Ping {},
    /// Answer to a client `ping`.
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A request failed; the connection stays open.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The `op` of the request this error answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request: Option<String>,
        code: ErrorCode,
        message: String,
        retryable: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        /// The `cid` of the failed send, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
        /// The room of the failed request, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
    },
    /// The server asks the client to reconnect (usually followed by a close 4000).
    Reconnect { reason: String, retry_after_ms: u64 },
    /// Reply to `refresh`: the new token is in force until `exp`.
    Refreshed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The new token's expiry, Unix seconds.
        exp: u64,
    },
    /// The connection's token expires at `exp` (Unix seconds): send `refresh`
    /// with a fresh one before then, or be closed with 4502.
    RefreshNeeded { exp: u64 },
}

impl ServerFrame {
    /// Encode to JSON text.
    #[allow(
        clippy::expect_used,
        reason = "string keys and raw JSON only: cannot fail"
    )]
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }

    /// Decode JSON text (used by clients).
    pub fn decode(text: &str) -> Result<ServerFrame, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// An error frame for `code`, with its retryability.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> ServerFrame {
        ServerFrame::Error {
            id: None,
            request: None,
            code,
            message: message.into(),
            retryable: code.retryable(),
            retry_after_ms: None,
            cid: None,
            room: None,
        }
    }
}
