//! The node-to-node inbox: sends forwarded to a room's owner and the owner's
//! answers (see `router`).
//!
//! A seam beside the broker (centrifuge's `Controller` beside its `Broker`):
//! an [`Inbox`] posts to a node's inbox; an [`InboxHandler`] (the router's
//! `Forwarder`) takes what arrives in this node's. The Redis broker carries it
//! on its subscriber connection (channel `{prefix}n:{node}`).
//!
//! Wire format, here and nowhere else (text, one pub/sub message each):
//! - `F {id} {from_node}\n{send request JSON}`: a send forwarded to its owner.
//! - `A {id}\n{answer JSON}`: the owner's answer to forward `id` of the node
//!   it came from.

use async_trait::async_trait;
use chorus_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::send::{Acked, SendError, SendRequest};

/// A message on its way to an inbox, in the wire format (made only here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded(String);

impl Encoded {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// A message received in this node's inbox.
#[derive(Debug)]
pub enum InboxMessage {
    /// A send forwarded to this node (the room's owner, as `from` thinks),
    /// to be answered with `Answer { id }` in `from`'s inbox.
    Forward {
        id: u64,
        from: String,
        req: SendRequest,
    },
    /// The owner's answer to this node's forward `id`. An answer whose body
    /// does not decode is an internal error of that send.
    Answer {
        id: u64,
        result: Result<Acked, SendError>,
    },
}

/// An inbox message that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum Undecodable {
    #[error("undecodable inbox message")]
    Message,
    #[error("undecodable forward: {0}")]
    Forward(serde_json::Error),
}

impl InboxMessage {
    /// `F`: forward `req` (as forward `id` of node `from`).
    pub fn forward(id: u64, from: &str, req: &SendRequest) -> Result<Encoded, serde_json::Error> {
        let body = serde_json::to_string(req)?;
        Ok(Encoded(format!("F {id} {from}\n{body}")))
    }

    /// `A`: answer forward `id` with the send's outcome.
    pub fn answer(id: u64, result: Result<Acked, SendError>) -> Encoded {
        // Only strings and numbers: it encodes. Were it not to, the empty body
        // reaches the sender as a bad answer (an internal error of the send).
        let body = serde_json::to_string(&ForwardReply::from(result)).unwrap_or_default();
        Encoded(format!("A {id}\n{body}"))
    }

    pub fn decode(text: &str) -> Result<InboxMessage, Undecodable> {
        let (head, body) = text.split_once('\n').unwrap_or((text, ""));
        let mut parts = head.split(' ');
        let kind = parts.next();
        let id = parts.next().and_then(|i| i.parse::<u64>().ok());
        match (kind, id, parts.next()) {
            (Some("F"), Some(id), Some(from)) => Ok(InboxMessage::Forward {
                id,
                from: from.to_owned(),
                req: serde_json::from_str(body).map_err(Undecodable::Forward)?,
            }),
            (Some("A"), Some(id), _) => Ok(InboxMessage::Answer {
                id,
                result: match serde_json::from_str::<ForwardReply>(body) {
                    Ok(r) => r.into(),
                    Err(e) => Err(SendError::Internal(format!("bad forward reply: {e}"))),
                },
            }),
            _ => Err(Undecodable::Message),
        }
    }
}

/// Why a message could not be posted.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InboxError(pub String);

/// Posts to the inboxes of other nodes.
#[async_trait]
pub trait Inbox: Send + Sync + 'static {
    /// Post `message` to `node`'s inbox. `Ok(false)`: no node listens there
    /// (it is gone); `Ok(true)`: handed over, not necessarily handled (the
    /// sender times out and retries).
    async fn post(&self, node: &str, message: Encoded) -> Result<bool, InboxError>;
}

/// Takes the messages of this node's inbox, one at a time, as they arrive.
#[async_trait]
pub trait InboxHandler: Send + Sync + 'static {
    async fn on_inbox(&self, message: InboxMessage);
}

/// Decode a received inbox message and hand it to `handler` (the transport
/// calls this with the text it received).
pub async fn dispatch(handler: &dyn InboxHandler, text: &str) {
    match InboxMessage::decode(text) {
        Ok(m) => handler.on_inbox(m).await,
        Err(Undecodable::Message) => warn!("undecodable inbox message"),
        Err(Undecodable::Forward(e)) => warn!(error = %e, "undecodable forward"),
    }
}

/// The answer an owner sends back for a forwarded send (the JSON of `A`).
#[derive(Debug, Serialize, Deserialize)]
enum ForwardReply {
    Ok {
        seq: u64,
        id: String,
        ts: i64,
        duplicate: bool,
    },
    Err {
        code: ErrorCode,
        message: String,
    },
}

impl From<Result<Acked, SendError>> for ForwardReply {
    fn from(r: Result<Acked, SendError>) -> ForwardReply {
        match r {
            Ok(a) => ForwardReply::Ok {
                seq: a.seq,
                id: a.id,
                ts: a.ts,
                duplicate: a.duplicate,
            },
            Err(e) => ForwardReply::Err {
                code: e.code(),
                message: e.to_string(),
            },
        }
    }
}

impl From<ForwardReply> for Result<Acked, SendError> {
    fn from(r: ForwardReply) -> Result<Acked, SendError> {
        match r {
            ForwardReply::Ok {
                seq,
                id,
                ts,
                duplicate,
            } => Ok(Acked {
                seq,
                id,
                ts,
                duplicate,
            }),
            ForwardReply::Err { code, message } => Err(match code {
                ErrorCode::NotOwner => SendError::NotOwner,
                ErrorCode::Timeout => SendError::Timeout,
                ErrorCode::Unavailable => SendError::Unavailable(message),
                _ => SendError::Internal(message),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use chorus_protocol::Json;

    use super::*;

    fn req() -> SendRequest {
        SendRequest {
            room: "t/r".into(),
            sender: "alice".into(),
            cid: "c1".into(),
            body: Json::from_text(r#"{"text":"hi"}"#.to_owned()).unwrap_or_else(|e| panic!("{e}")),
            meta: None,
        }
    }

    #[test]
    fn forward_round_trips() {
        let wire = InboxMessage::forward(7, "node-a", &req()).unwrap_or_else(|e| panic!("{e}"));
        assert!(wire.as_str().starts_with("F 7 node-a\n{"));
        match InboxMessage::decode(wire.as_str()) {
            Ok(InboxMessage::Forward { id, from, req }) => {
                assert_eq!((id, from.as_str()), (7, "node-a"));
                assert_eq!((req.room.as_str(), req.cid.as_str()), ("t/r", "c1"));
                assert_eq!(req.body.get(), r#"{"text":"hi"}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn answers_round_trip_both_outcomes() {
        let acked = Acked {
            seq: 3,
            id: "m".into(),
            ts: 9,
            duplicate: true,
        };
        let outcomes = [
            Ok(acked),
            Err(SendError::NotOwner),
            Err(SendError::Timeout),
            Err(SendError::Unavailable("x".into())),
        ];
        for outcome in outcomes {
            let wire = InboxMessage::answer(12, outcome.clone());
            match InboxMessage::decode(wire.as_str()) {
                Ok(InboxMessage::Answer { id: 12, result }) => match (&outcome, &result) {
                    // The message of an unavailable error is its Display.
                    (Err(SendError::Unavailable(_)), Err(SendError::Unavailable(m))) => {
                        assert_eq!(m, "history unavailable: x");
                    }
                    _ => assert_eq!(result, outcome),
                },
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn undecodable_messages_are_told_apart() {
        assert!(matches!(
            InboxMessage::decode("X 1\n{}"),
            Err(Undecodable::Message)
        ));
        assert!(matches!(
            InboxMessage::decode("F 1\n{}"),
            Err(Undecodable::Message)
        ));
        assert!(matches!(
            InboxMessage::decode("F 1 n\nnot json"),
            Err(Undecodable::Forward(_))
        ));
        // A bad answer still answers its forward: with an internal error.
        assert!(matches!(
            InboxMessage::decode("A 5\nnot json"),
            Ok(InboxMessage::Answer {
                id: 5,
                result: Err(SendError::Internal(_))
            })
        ));
    }
}
