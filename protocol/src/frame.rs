//! Every frame of protocol v1 as serde types.
//!
//! Frames are JSON objects in WebSocket text frames, tagged by `op`. Unknown
//! fields are ignored; an unknown `op` is answered with an `unknown_op` error.
//! Requests may carry a numeric `id`, echoed on the reply and on any error.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::json::check_app_json;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The WebSocket subprotocol naming that version.
pub const SUBPROTOCOL: &str = "chorus.v1";

/// An arbitrary JSON value kept as its raw text (message bodies and meta): the
/// gateway stores and forwards it without re-encoding.
#[derive(Clone)]
pub struct Json(pub Box<RawValue>);

impl PartialEq for Json {
    fn eq(&self, other: &Json) -> bool {
        self.get() == other.get()
    }
}

impl Eq for Json {}

impl Json {
    /// Wrap raw JSON text, checking it is valid JSON.
    pub fn from_text(text: impl Into<String>) -> Result<Json, serde_json::Error> {
        RawValue::from_string(text.into()).map(Json)
    }

    /// Serialise any value.
    /// A value that cannot be serialised (a map with non-string keys) becomes
    /// `null`.
    pub fn from_value<T: Serialize>(value: &T) -> Json {
        Json(serde_json::value::to_raw_value(value).unwrap_or_else(|_| RawValue::NULL.to_owned()))
    }

    /// The raw JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Parse into a typed value.
    pub fn parse<T: de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl fmt::Debug for Json {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.get())
    }
}

impl Serialize for Json {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Json {
    // Through a `Value` because frames tagged by `op` are buffered by serde,
    // and a `RawValue` cannot be read back from that buffer.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        serde_json::value::to_raw_value(&value)
            .map(Json)
            .map_err(de::Error::custom)
    }
}

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

/// Why a client frame could not be decoded; carries what could be read of it
/// so the error frame can answer the right request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// `bad_request` or `unknown_op`.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The request id, if it could be read.
    pub id: Option<u64>,
    /// The op, if it could be read.
    pub op: Option<String>,
}

/// Every field any client frame has, all optional: decoded in one pass
/// without buffering, then checked per op.
#[derive(Deserialize)]
struct FlatFrame<'a> {
    #[serde(borrow)]
    op: Option<std::borrow::Cow<'a, str>>,
    id: Option<u64>,
    /// Read wide: any `uint` is a decodable `hello` (PROTOCOL.md 5.1), and a
    /// version other than 1 closes 4506, not 4500.
    v: Option<u64>,
    token: Option<String>,
    device: Option<String>,
    meta: Option<Box<RawValue>>,
    resume: Option<Resume>,
    room: Option<String>,
    since: Option<u64>,
    keep_membership: Option<bool>,
    cid: Option<String>,
    body: Option<Box<RawValue>>,
    before: Option<u64>,
    after: Option<u64>,
    limit: Option<u32>,
    seq: Option<u64>,
    active: Option<bool>,
}

impl ClientFrame {
    /// Decode a text frame, with an error fit for an `error` frame on failure.
    pub fn decode(text: &str) -> Result<ClientFrame, DecodeError> {
        if !text.trim_start().starts_with('{') {
            return Err(DecodeError {
                code: ErrorCode::BadRequest,
                message: "a frame must be a JSON object".to_owned(),
                id: None,
                op: None,
            });
        }
        let flat: FlatFrame<'_> = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                // Only an object has a readable `op`/`id` (serde would also read
                // a struct from an array, positionally).
                let value = serde_json::from_str::<serde_json::Value>(text).ok();
                let (op, id) = match value.as_ref().and_then(|v| v.as_object()) {
                    // `op` absent: `""`; present but not a string: no
                    // `request` (PROTOCOL.md 6.13).
                    Some(obj) => (
                        match obj.get("op") {
                            None | Some(serde_json::Value::Null) => Some(String::new()),
                            Some(o) => o.as_str().map(str::to_owned),
                        },
                        obj.get("id").and_then(|v| v.as_u64()),
                    ),
                    None => (None, None),
                };
                return Err(DecodeError {
                    code: ErrorCode::BadRequest,
                    message: format!("malformed frame: {e}"),
                    id,
                    op,
                });
            }
        };
        let id = flat.id;
        let op = flat.op.as_deref().unwrap_or("").to_owned();
        let missing = |field: &str| DecodeError {
            code: ErrorCode::BadRequest,
            message: if op.is_empty() {
                "every frame needs a string field 'op'".to_owned()
            } else {
                format!("op '{op}' needs field '{field}'")
            },
            id,
            // The frame is an object whose `op` is a string or absent: the
            // error names it, `""` when absent (PROTOCOL.md 6.13).
            op: Some(op.clone()),
        };
        // Application JSON is checked here, once, for every op that carries it
        // (see `json`): a frame breaking a rule is refused as a whole.
        let app = |field: &str, raw: Option<&RawValue>| -> Result<(), DecodeError> {
            match raw.map(|r| check_app_json(r.get())) {
                Some(Err(rule)) => Err(DecodeError {
                    code: ErrorCode::BadRequest,
                    message: format!("{field}: {rule}"),
                    id,
                    op: (!op.is_empty()).then(|| op.clone()),
                }),
                _ => Ok(()),
            }
        };
        if matches!(op.as_str(), "hello" | "send") {
            app("meta", flat.meta.as_deref())?;
            app("body", flat.body.as_deref())?;
        }
        let frame = match op.as_str() {
            "hello" => ClientFrame::Hello {
                // A version beyond u32 is unsupported all the same: keep it
                // different from every version this type can name.
                v: flat
                    .v
                    .map_or(PROTOCOL_VERSION, |v| u32::try_from(v).unwrap_or(u32::MAX)),
                token: flat.token,
                device: flat.device,
                meta: flat.meta.map(Json),
                resume: flat.resume,
            },
            "join" => ClientFrame::Join {
                id,
                room: flat.room.ok_or_else(|| missing("room"))?,
                since: flat.since,
            },
            "leave" => ClientFrame::Leave {
                id,
                room: flat.room.ok_or_else(|| missing("room"))?,
                keep_membership: flat.keep_membership.unwrap_or(false),
            },
            "send" => ClientFrame::Send {
                id,
                room: flat.room.ok_or_else(|| missing("room"))?,
                cid: flat.cid.ok_or_else(|| missing("cid"))?,
                body: Json(flat.body.ok_or_else(|| missing("body"))?),
                meta: flat.meta.map(Json),
            },
            "history" => ClientFrame::History {
                id,
                room: flat.room.ok_or_else(|| missing("room"))?,
                before: flat.before,
                after: flat.after,
                limit: flat.limit,
            },
            "read" => ClientFrame::Read {
                id,
                room: flat.room.ok_or_else(|| missing("room"))?,
                seq: flat.seq.ok_or_else(|| missing("seq"))?,
            },
            "delivered" => ClientFrame::Delivered {
                id,
                room: flat.room.ok_or_else(|| missing("room"))?,
                seq: flat.seq.ok_or_else(|| missing("seq"))?,
            },
            "typing" => ClientFrame::Typing {
                room: flat.room.ok_or_else(|| missing("room"))?,
                active: flat.active.unwrap_or(true),
            },
            "presence" => ClientFrame::Presence {
                id,
                room: flat.room.ok_or_else(|| missing("room"))?,
            },
            "ping" => ClientFrame::Ping { id },
            "pong" => ClientFrame::Pong {},
            "refresh" => ClientFrame::Refresh {
                id,
                token: flat.token.ok_or_else(|| missing("token"))?,
            },
            "" => return Err(missing("op")),
            other => {
                return Err(DecodeError {
                    code: ErrorCode::UnknownOp,
                    message: format!("unknown op '{other}'"),
                    id,
                    op: Some(other.to_owned()),
                });
            }
        };
        Ok(frame)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_send_keeps_raw_body() {
        let f = ClientFrame::decode(
            r#"{"op":"send","id":7,"room":"r","cid":"c1","body":{"text":"hi"},"extra":1}"#,
        )
        .unwrap();
        match f {
            ClientFrame::Send {
                id,
                room,
                cid,
                body,
                meta,
            } => {
                assert_eq!(id, Some(7));
                assert_eq!(room, "r");
                assert_eq!(cid, "c1");
                assert_eq!(body.get(), r#"{"text":"hi"}"#);
                assert!(meta.is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn decode_errors_carry_id_and_op() {
        let e = ClientFrame::decode(r#"{"op":"frobnicate","id":3}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownOp);
        assert_eq!(e.id, Some(3));
        let e = ClientFrame::decode(r#"{"op":"join","id":4,"room":5}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert_eq!(e.id, Some(4));
        assert_eq!(e.op.as_deref(), Some("join"));
        let e = ClientFrame::decode("{not json").unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = ClientFrame::decode(r#"{"op":"send","room":"r","cid":"x"}"#).unwrap_err();
        assert!(e.message.contains("body"));
        let e = ClientFrame::decode(r#"{"op":7,"id":13}"#).unwrap_err();
        assert_eq!(
            (e.code, e.id, e.op),
            (ErrorCode::BadRequest, Some(13), None)
        );
        let e = ClientFrame::decode(r#"[1,2]"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn client_frames_round_trip() {
        let frames = vec![
            ClientFrame::Hello {
                v: 1,
                token: Some("t".into()),
                device: Some("phone".into()),
                meta: Some(Json::from_text(r#"{"a":1}"#).unwrap()),
                resume: Some(Resume {
                    token: "r".into(),
                    rooms: [("x".to_string(), 3)].into(),
                }),
            },
            ClientFrame::Join {
                id: Some(1),
                room: "r".into(),
                since: Some(2),
            },
            ClientFrame::Leave {
                id: None,
                room: "r".into(),
                keep_membership: true,
            },
            ClientFrame::Send {
                id: Some(2),
                room: "r".into(),
                cid: "c".into(),
                body: Json::from_text("\"hi\"").unwrap(),
                meta: None,
            },
            ClientFrame::History {
                id: None,
                room: "r".into(),
                before: Some(9),
                after: None,
                limit: Some(5),
            },
            ClientFrame::Read {
                id: None,
                room: "r".into(),
                seq: 4,
            },
            ClientFrame::Delivered {
                id: None,
                room: "r".into(),
                seq: 4,
            },
            ClientFrame::Typing {
                room: "r".into(),
                active: false,
            },
            ClientFrame::Presence {
                id: Some(9),
                room: "r".into(),
            },
            ClientFrame::Ping { id: Some(1) },
            ClientFrame::Pong {},
            ClientFrame::Refresh {
                id: Some(3),
                token: "jwt".into(),
            },
        ];
        for f in frames {
            let text = f.encode();
            let back = ClientFrame::decode(&text).unwrap();
            assert_eq!(back.encode(), text);
        }
    }

    #[test]
    fn server_frames_round_trip() {
        let msg = ServerFrame::Msg(Message {
            room: "r".into(),
            seq: 1,
            id: "m".into(),
            sender: "u".into(),
            cid: Some("c".into()),
            body: Json::from_text(r#"{"text":"hi"}"#).unwrap(),
            meta: None,
            ts: 5,
        });
        let text = msg.encode();
        assert!(
            text.starts_with(r#"{"op":"msg","room":"r","seq":1"#),
            "{text}"
        );
        let back = ServerFrame::decode(&text).unwrap();
        assert_eq!(back.encode(), text);
        for (f, want) in [
            (
                ServerFrame::Refreshed {
                    id: Some(4),
                    exp: 1_700_000_000,
                },
                r#"{"op":"refreshed","id":4,"exp":1700000000}"#,
            ),
            (
                ServerFrame::RefreshNeeded { exp: 1_700_000_000 },
                r#"{"op":"refresh_needed","exp":1700000000}"#,
            ),
        ] {
            assert_eq!(f.encode(), want);
            assert_eq!(ServerFrame::decode(want).unwrap().encode(), want);
        }
        let e = ClientFrame::decode(r#"{"op":"refresh","id":5}"#).unwrap_err();
        assert_eq!((e.code, e.id), (ErrorCode::BadRequest, Some(5)));
        assert!(e.message.contains("token"), "{}", e.message);
        let err = ServerFrame::error(ErrorCode::RateLimited, "slow down");
        let text = err.encode();
        assert!(text.contains(r#""retryable":true"#));
        assert_eq!(ServerFrame::decode(&text).unwrap().encode(), text);
    }

    #[test]
    fn room_names() {
        assert!(valid_room("general"));
        assert!(valid_room("dm:alice:bob"));
        assert!(!valid_room(""));
        assert!(!valid_room("a/b"));
        assert!(!valid_room(&"x".repeat(129)));
        assert_eq!(direct_room("bob", "alice"), "dm:alice:bob");
    }

    /// PROTOCOL.md 1.4: a cid is 1-128 characters, not bytes.
    #[test]
    fn cids_are_counted_in_characters() {
        assert!(!valid_cid(""));
        assert!(valid_cid("c"));
        assert!(valid_cid(&"x".repeat(128)));
        assert!(!valid_cid(&"x".repeat(129)));
        // 128 characters of two bytes each (256 bytes) are fine; 129 are not.
        assert!(valid_cid(&"é".repeat(128)));
        assert!(!valid_cid(&"é".repeat(129)));
        assert!(valid_cid(&"🙂".repeat(128)));
    }

    /// PROTOCOL.md 5.1 and 3.1: any `uint` version is a decodable `hello`
    /// (then closed 4506 unless it is 1), also one beyond 32 bits.
    #[test]
    fn hello_versions_beyond_u32_decode_as_unsupported() {
        for (text, want) in [
            (r#"{"op":"hello"}"#, PROTOCOL_VERSION),
            (r#"{"op":"hello","v":2}"#, 2),
            (r#"{"op":"hello","v":4294967295}"#, u32::MAX),
            (r#"{"op":"hello","v":4294967296}"#, u32::MAX),
            (r#"{"op":"hello","v":18446744073709551615}"#, u32::MAX),
        ] {
            match ClientFrame::decode(text) {
                Ok(ClientFrame::Hello { v, .. }) => assert_eq!(v, want, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(ClientFrame::decode(r#"{"op":"hello","v":-1}"#).is_err());
        assert!(ClientFrame::decode(r#"{"op":"hello","v":"1"}"#).is_err());
    }

    /// PROTOCOL.md 6.13, found by the `client_frame` fuzz target: a frame
    /// without `op` is answered with `request: ""` also when another field is
    /// malformed; a non-string `op` gets no `request`.
    #[test]
    fn malformed_frames_without_op_name_an_empty_request() {
        let e = ClientFrame::decode(r#"{"id":1,"room":5}"#).unwrap_err();
        assert_eq!((e.op.as_deref(), e.id), (Some(""), Some(1)));
        let e = ClientFrame::decode(r#"{"id":2}"#).unwrap_err();
        assert_eq!((e.op.as_deref(), e.id), (Some(""), Some(2)));
        // `null` counts as absent, as everywhere in the protocol.
        let e = ClientFrame::decode(r#"{"op":null,"id":3}"#).unwrap_err();
        assert_eq!((e.op.as_deref(), e.id), (Some(""), Some(3)));
        let e = ClientFrame::decode(r#"{"op":7,"id":4,"room":5}"#).unwrap_err();
        assert_eq!((e.op, e.id), (None, Some(4)));
    }
}
