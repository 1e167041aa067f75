//! Frames from client to server: [`ClientFrame`], its `op` names, request ids
//! and encoding, and the [`Resume`] data of `hello`. Decoding is in `decode`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Json, PROTOCOL_VERSION};

/// Resume data sent in `hello` after a disconnect.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resume {
    /// The `resume_token` of the previous session's `welcome`.
    pub token: String,
    /// The last seq the client has seen in each room it wants back.
    #[serde(default)]
    pub rooms: BTreeMap<String, u64>,
}

/// A frame from client to server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame of every connection: authenticate, optionally resume.
    Hello {
        /// Protocol version; 1.
        #[serde(default = "default_version")]
        v: u32,
        /// JWT, when not given in the URL or `Authorization` header.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// A device name (e.g. "phone", "desktop"); defaults to "default".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        /// Presence metadata shown to other members (small JSON object).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meta: Option<Json>,
        /// Resume a previous session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Resume>,
    },
    /// Join a room (and become a durable member); optionally replay after `since`.
    Join {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        /// Replay every message with `seq > since` before live ones.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
    },
    /// Stop receiving a room on this connection; without `keep_membership`,
    /// also end the user's durable membership.
    Leave {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        #[serde(default)]
        keep_membership: bool,
    },
    /// Send a message to a joined room.
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        /// Client message id: unique per sender and room; retries reuse it.
        cid: String,
        body: Json,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        meta: Option<Json>,
    },
    /// Page a room's history.
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        /// Messages with `seq < before`, newest first page (returned ascending).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        /// Messages with `seq > after`, ascending.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Read receipt: the user has read up to `seq`.
    Read {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        seq: u64,
    },
    /// Delivery ack: this device has received up to `seq`.
    Delivered {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
        seq: u64,
    },
    /// Typing indicator (ephemeral).
    Typing {
        room: String,
        #[serde(default = "default_true")]
        active: bool,
    },
    /// Ask for a room's presence snapshot.
    Presence {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        room: String,
    },
    /// Client heartbeat; answered with `pong`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Answer to a server `ping`.
    Pong {},
    /// Replace the connection's JWT with a fresh one for the same user and
    /// tenant; answered with `refreshed`.
    Refresh {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        token: String,
    },
}

fn default_version() -> u32 {
    PROTOCOL_VERSION
}

fn default_true() -> bool {
    true
}

impl ClientFrame {
    /// The `op` name.
    pub fn op(&self) -> &'static str {
        match self {
            ClientFrame::Hello { .. } => "hello",
            ClientFrame::Join { .. } => "join",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::Send { .. } => "send",
            ClientFrame::History { .. } => "history",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Delivered { .. } => "delivered",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Presence { .. } => "presence",
            ClientFrame::Ping { .. } => "ping",
            ClientFrame::Pong {} => "pong",
            ClientFrame::Refresh { .. } => "refresh",
        }
    }

    /// The request id, where the frame has one.
    pub fn id(&self) -> Option<u64> {
        match self {
            ClientFrame::Join { id, .. }
            | ClientFrame::Leave { id, .. }
            | ClientFrame::Send { id, .. }
            | ClientFrame::History { id, .. }
            | ClientFrame::Read { id, .. }
            | ClientFrame::Delivered { id, .. }
            | ClientFrame::Presence { id, .. }
            | ClientFrame::Refresh { id, .. }
            | ClientFrame::Ping { id } => *id,
            ClientFrame::Hello { .. } | ClientFrame::Typing { .. } | ClientFrame::Pong {} => None,
        }
    }

    /// Encode to JSON text.
    #[allow(
        clippy::expect_used,
        reason = "string keys and raw JSON only: cannot fail"
    )]
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("client frames always serialise")
    }
}
