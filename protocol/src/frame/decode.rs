//! Decoding a client frame: one pass over every field any frame has, then
//! the checks of its `op`, with a [`DecodeError`] that names the request
//! (its `id` and `op`) where they could be read.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{ClientFrame, Json, PROTOCOL_VERSION, Resume};
use crate::codes::ErrorCode;
use crate::json::check_app_json;

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
