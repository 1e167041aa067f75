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
//! - `FB {from_node}\n{id} {send request JSON}\n{id} {JSON}...`: several
//!   sends forwarded at once, in the order the owner takes them.
//! - `A {id}\n{answer JSON}`: the owner's answer to forward `id` of the node
//!   it came from.
//! - `AB\n{id} {answer JSON}\n{id} {JSON}...`: several answers at once.
//!
//! The JSON is compact (serde's encoding: no raw newline); a request whose
//! JSON holds one anyway (a body kept as raw text) goes alone, as `F`. A lone
//! send or answer goes in the single form, so a node that knows only `F` and
//! `A` still understands a cluster at low load.

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

/// A send's outcome as its owner answers it.
pub type Outcome = Result<Acked, SendError>;

/// A message received in this node's inbox.
#[derive(Debug)]
pub enum InboxMessage {
    /// Sends forwarded to this node (the rooms' owner, as `from` thinks), in
    /// order, each to be answered under its id in `from`'s inbox.
    Forwards {
        from: String,
        items: Vec<(u64, SendRequest)>,
        /// Entries of a batch that did not decode (skipped; their senders
        /// time out and route them again).
        undecodable: usize,
    },
    /// The owner's answers to this node's forwards, by id. An answer whose
    /// body does not decode is an internal error of that send.
    Answers(Vec<(u64, Outcome)>),
}

/// An inbox message that does not decode.
#[derive(Debug, thiserror::Error)]
pub enum Undecodable {
    #[error("undecodable inbox message")]
    Message,
    #[error("undecodable forward: {0}")]
    Forward(serde_json::Error),
}

/// The JSON of a forwarded send (what [`InboxMessage::forwards`] carries).
pub fn forward_body(req: &SendRequest) -> Result<String, serde_json::Error> {
    serde_json::to_string(req)
}

impl InboxMessage {
    /// `F`: forward one send (`body` from [`forward_body`]) as forward `id`
    /// of node `from`.
    pub fn forward(id: u64, from: &str, body: &str) -> Encoded {
        Encoded(format!("F {id} {from}\n{body}"))
    }

    /// Forward several sends of node `from` (ids and [`forward_body`]s, in
    /// order): as few messages as the format allows, to be posted in order,
    /// each with the number of sends it carries.
    pub fn forwards(from: &str, items: &[(u64, String)]) -> Vec<(Encoded, usize)> {
        let mut out = Vec::new();
        let mut run: Vec<&(u64, String)> = Vec::new();
        let flush = |run: &mut Vec<&(u64, String)>, out: &mut Vec<(Encoded, usize)>| {
            match run.as_slice() {
                [] => {}
                [(id, body)] => out.push((InboxMessage::forward(*id, from, body), 1)),
                many => {
                    let mut text = String::with_capacity(
                        8 + from.len() + many.iter().map(|(_, b)| b.len() + 22).sum::<usize>(),
                    );
                    text.push_str("FB ");
                    text.push_str(from);
                    for (id, body) in many {
                        text.push('\n');
                        text.push_str(&id.to_string());
                        text.push(' ');
                        text.push_str(body);
                    }
                    out.push((Encoded(text), many.len()));
                }
            }
            run.clear();
        };
        for item in items {
            if item.1.contains('\n') {
                flush(&mut run, &mut out);
                out.push((InboxMessage::forward(item.0, from, &item.1), 1));
            } else {
                run.push(item);
            }
        }
        flush(&mut run, &mut out);
        out
    }

    /// `A`: answer forward `id` with the send's outcome.
    pub fn answer(id: u64, result: Outcome) -> Encoded {
        Encoded(format!("A {id}\n{}", answer_body(result)))
    }

    /// Answer several forwards at once (`A` for one, `AB` for more).
    pub fn answers(items: Vec<(u64, Outcome)>) -> Encoded {
        if items.len() == 1 {
            let Some((id, result)) = items.into_iter().next() else {
                unreachable!("one item")
            };
            return InboxMessage::answer(id, result);
        }
        let mut text = String::from("AB");
        for (id, result) in items {
            text.push('\n');
            text.push_str(&id.to_string());
            text.push(' ');
            text.push_str(&answer_body(result));
        }
        Encoded(text)
    }

    pub fn decode(text: &str) -> Result<InboxMessage, Undecodable> {
        let (head, body) = text.split_once('\n').unwrap_or((text, ""));
        let mut parts = head.split(' ');
        let kind = parts.next();
        match kind {
            Some("F") => {
                let id = parts.next().and_then(|i| i.parse::<u64>().ok());
                let (Some(id), Some(from)) = (id, parts.next()) else {
                    return Err(Undecodable::Message);
                };
                Ok(InboxMessage::Forwards {
                    from: from.to_owned(),
                    items: vec![(
                        id,
                        serde_json::from_str(body).map_err(Undecodable::Forward)?,
                    )],
                    undecodable: 0,
                })
            }
            Some("FB") => {
                let Some(from) = parts.next() else {
                    return Err(Undecodable::Message);
                };
                let mut items = Vec::new();
                let mut undecodable = 0;
                for line in body.split('\n') {
                    let entry = line.split_once(' ').and_then(|(id, json)| {
                        Some((id.parse::<u64>().ok()?, serde_json::from_str(json).ok()?))
                    });
                    match entry {
                        Some(e) => items.push(e),
                        None => undecodable += 1,
                    }
                }
                Ok(InboxMessage::Forwards {
                    from: from.to_owned(),
                    items,
                    undecodable,
                })
            }
            Some("A") => {
                let id = parts.next().and_then(|i| i.parse::<u64>().ok());
                let Some(id) = id else {
                    return Err(Undecodable::Message);
                };
                Ok(InboxMessage::Answers(vec![(id, decode_answer(body))]))
            }
            Some("AB") => Ok(InboxMessage::Answers(
                body.split('\n')
                    .filter_map(|line| {
                        let (id, json) = line.split_once(' ')?;
                        Some((id.parse::<u64>().ok()?, decode_answer(json)))
                    })
                    .collect(),
            )),
            _ => Err(Undecodable::Message),
        }
    }
}

/// The JSON of an answer. Only strings and numbers: it encodes. Were it not
/// to, the empty body reaches the sender as a bad answer (an internal error
/// of the send).
fn answer_body(result: Outcome) -> String {
    serde_json::to_string(&ForwardReply::from(result)).unwrap_or_default()
}

fn decode_answer(json: &str) -> Outcome {
    match serde_json::from_str::<ForwardReply>(json) {
        Ok(r) => r.into(),
        Err(e) => Err(SendError::Internal(format!("bad forward reply: {e}"))),
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
        Ok(m) => {
            if let InboxMessage::Forwards { undecodable, .. } = &m
                && *undecodable > 0
            {
                warn!(undecodable, "undecodable forwards in a batch");
            }
            handler.on_inbox(m).await
        }
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

    fn forwards(m: InboxMessage) -> (String, Vec<(u64, SendRequest)>, usize) {
        match m {
            InboxMessage::Forwards {
                from,
                items,
                undecodable,
            } => (from, items, undecodable),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn forward_round_trips() {
        let body = forward_body(&req()).unwrap_or_else(|e| panic!("{e}"));
        let wire = InboxMessage::forward(7, "node-a", &body);
        assert!(wire.as_str().starts_with("F 7 node-a\n{"));
        let (from, items, bad) = forwards(InboxMessage::decode(wire.as_str()).unwrap());
        assert_eq!((from.as_str(), items.len(), bad), ("node-a", 1, 0));
        let (id, req) = &items[0];
        assert_eq!(*id, 7);
        assert_eq!((req.room.as_str(), req.cid.as_str()), ("t/r", "c1"));
        assert_eq!(req.body.get(), r#"{"text":"hi"}"#);
    }

    #[test]
    fn forwards_go_in_one_message_in_order() {
        let body = forward_body(&req()).unwrap_or_else(|e| panic!("{e}"));
        // One send: the single form, which every node understands.
        let one = InboxMessage::forwards("n", &[(1, body.clone())]);
        assert_eq!(one, vec![(InboxMessage::forward(1, "n", &body), 1)]);
        let items: Vec<(u64, String)> = (10..15).map(|i| (i, body.clone())).collect();
        let wire = InboxMessage::forwards("node-b", &items);
        assert_eq!(wire.len(), 1);
        assert_eq!(wire[0].1, 5);
        assert!(wire[0].0.as_str().starts_with("FB node-b\n10 {"));
        let (from, got, bad) = forwards(InboxMessage::decode(wire[0].0.as_str()).unwrap());
        assert_eq!((from.as_str(), bad), ("node-b", 0));
        assert_eq!(
            got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![10, 11, 12, 13, 14]
        );
        assert!(got.iter().all(|(_, r)| r.cid == "c1"));
        // A request with a raw newline goes alone, in place.
        let raw = "{\"room\":\"t/r\",\n\"x\":1}".to_string();
        let wire = InboxMessage::forwards(
            "n",
            &[
                (1, body.clone()),
                (2, body.clone()),
                (3, raw.clone()),
                (4, body.clone()),
            ],
        );
        assert_eq!(wire.len(), 3);
        assert!(wire[0].0.as_str().starts_with("FB n\n1 "));
        assert_eq!(wire[0].1, 2);
        assert_eq!(wire[1], (InboxMessage::forward(3, "n", &raw), 1));
        assert_eq!(wire[2], (InboxMessage::forward(4, "n", &body), 1));
        // A bad entry of a batch is skipped; the others are kept.
        let (_, got, bad) = forwards(
            InboxMessage::decode(&format!("FB n\n1 {body}\n2 not json\nx {body}\n3 {body}"))
                .unwrap(),
        );
        assert_eq!(
            got.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(bad, 2);
    }

    fn outcomes() -> Vec<Outcome> {
        vec![
            Ok(Acked {
                seq: 3,
                id: "m".into(),
                ts: 9,
                duplicate: true,
            }),
            Err(SendError::NotOwner),
            Err(SendError::Timeout),
            Err(SendError::Unavailable("x".into())),
        ]
    }

    fn same(sent: &Outcome, got: &Outcome) {
        match (sent, got) {
            // The message of an unavailable error is its Display.
            (Err(SendError::Unavailable(_)), Err(SendError::Unavailable(m))) => {
                assert_eq!(m, "history unavailable: x");
            }
            _ => assert_eq!(got, sent),
        }
    }

    #[test]
    fn answers_round_trip_every_outcome_alone_and_together() {
        for outcome in outcomes() {
            let wire = InboxMessage::answer(12, outcome.clone());
            assert!(wire.as_str().starts_with("A 12\n"));
            match InboxMessage::decode(wire.as_str()) {
                Ok(InboxMessage::Answers(got)) => {
                    assert_eq!(got.len(), 1);
                    assert_eq!(got[0].0, 12);
                    same(&outcome, &got[0].1);
                }
                other => panic!("{other:?}"),
            }
        }
        let sent: Vec<(u64, Outcome)> = outcomes()
            .into_iter()
            .enumerate()
            .map(|(i, o)| (i as u64 + 1, o))
            .collect();
        let wire = InboxMessage::answers(sent.clone());
        assert!(wire.as_str().starts_with("AB\n1 {"));
        match InboxMessage::decode(wire.as_str()) {
            Ok(InboxMessage::Answers(got)) => {
                assert_eq!(got.len(), sent.len());
                for ((id, o), (gid, g)) in sent.iter().zip(&got) {
                    assert_eq!(id, gid);
                    same(o, g);
                }
            }
            other => panic!("{other:?}"),
        }
        // One answer goes in the single form.
        assert_eq!(
            InboxMessage::answers(vec![(5, Err(SendError::Timeout))]),
            InboxMessage::answer(5, Err(SendError::Timeout))
        );
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
            InboxMessage::decode("FB"),
            Err(Undecodable::Message)
        ));
        assert!(matches!(
            InboxMessage::decode("F 1 n\nnot json"),
            Err(Undecodable::Forward(_))
        ));
        // A bad answer still answers its forward: with an internal error.
        match InboxMessage::decode("A 5\nnot json") {
            Ok(InboxMessage::Answers(got)) => {
                assert!(matches!(got.as_slice(), [(5, Err(SendError::Internal(_)))]));
            }
            other => panic!("{other:?}"),
        }
    }
}
