//! [`ClientHandle`]: the requests, and their reply types.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::frame::{ClientFrame, Json, Limits, Message, PresenceUser, RoomState, ServerFrame};

use super::ClientError;
#[cfg(doc)]
use super::Event;
use super::backoff::{random_u64, retry_delay};
use super::shared::{Outbound, Shared};
#[cfg(doc)]
use crate::{codes::ErrorCode, frame::Resume};

/// The server's `welcome`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub v: u32,
    /// Session id (kept by a successful resume).
    pub session: String,
    pub user: String,
    pub tenant: Option<String>,
    pub device: String,
    pub node: String,
    /// Present in [`Resume::token`] to resume.
    pub resume_token: String,
    pub resume_ttl_ms: u64,
    pub heartbeat_ms: u64,
    pub idle_timeout_ms: u64,
    pub limits: Limits,
    /// Durable memberships with tips and unread counts.
    pub rooms: Vec<RoomState>,
    /// Whether the resume was accepted.
    pub resumed: bool,
}

/// Reply to `join` (also [`Event::Joined`] for rooms re-joined by a resume).
#[derive(Debug, Clone, PartialEq)]
pub struct Joined {
    pub room: String,
    /// Tip when the join completed.
    pub tip: u64,
    pub last_read: u64,
    /// False when too many messages were missed: page `history` for them.
    pub recovered: bool,
    /// How many `msg` frames were replayed before the `joined`.
    pub replayed: u64,
    /// Users online; empty for a hot room (see `online`).
    pub presence: Vec<PresenceUser>,
    /// How many users are online.
    pub online: u64,
}

/// Reply to `send`: the message is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub room: String,
    pub cid: String,
    pub seq: u64,
    pub msg_id: String,
    /// Commit time, Unix milliseconds.
    pub ts: i64,
    /// True when this `cid` had been stored before.
    pub duplicate: bool,
}

/// Reply to `history`.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub room: String,
    /// Ascending by seq.
    pub messages: Vec<Message>,
    /// More exist in the direction asked.
    pub has_more: bool,
}

/// Removes a request's waiter when the request finishes or is cancelled.
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().waiters.remove(&self.id);
    }
}

/// A borrowed `send` frame: encodes without copying room, cid and body.
#[derive(Serialize)]
struct SendFrame<'a> {
    op: &'static str,
    id: u64,
    room: &'a str,
    cid: &'a str,
    body: &'a Json,
    #[serde(skip_serializing_if = "Option::is_none")]
    meta: Option<&'a Json>,
}

/// The request side of a connection: cheap to clone, `Send + Sync`, usable
/// from any task. Fails with [`ClientError::Closed`] once the connection ended.
#[derive(Clone)]
pub struct ClientHandle {
    pub(super) shared: Arc<Shared>,
}

impl fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandle")
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl ClientHandle {
    fn next_id(&self) -> u64 {
        self.shared.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Register a waiter for a fresh id, queue `build(id)`, wait for the reply.
    async fn call(
        &self,
        timeout: Duration,
        build: impl FnOnce(u64) -> Outbound,
    ) -> Result<ServerFrame, ClientError> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.shared.lock();
            if let Some(info) = &p.closed {
                return Err(info.error());
            }
            p.waiters.insert(id, tx);
        }
        let _guard = WaiterGuard {
            shared: &self.shared,
            id,
        };
        let out = build(id);
        let wait = async {
            if self.shared.out.send(out).await.is_err() {
                return Err(self.shared.closed_error());
            }
            match rx.await {
                Ok(reply) => reply,
                Err(_) => Err(self.shared.closed_error()),
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Timeout),
        }
    }

    async fn push(&self, out: Outbound) -> Result<(), ClientError> {
        if let Some(info) = &self.shared.lock().closed {
            return Err(info.error());
        }
        self.shared
            .out
            .send(out)
            .await
            .map_err(|_| self.shared.closed_error())
    }

    /// Join `room` (becoming a durable member), replaying messages with
    /// `seq > since` when given. Replayed `msg`s arrive as [`Event::Msg`]
    /// before this returns (they are queued in the event channel first).
    ///
    /// Cursor rule: when the room is not currently joined on this connection,
    /// `since` becomes the room's last seen seq (so the replay is delivered);
    /// when it is already joined, messages already delivered are dropped as
    /// duplicates. After `joined`, the cursor is at least the room's `tip`.
    pub async fn join(&self, room: &str, since: Option<u64>) -> Result<Joined, ClientError> {
        let reply = self
            .call(self.shared.request_timeout, |id| Outbound::Join {
                room: room.to_owned(),
                since,
                text: ClientFrame::Join {
                    id: Some(id),
                    room: room.to_owned(),
                    since,
                }
                .encode(),
            })
            .await?;
        match reply {
            ServerFrame::Joined {
                room,
                tip,
                last_read,
                recovered,
                replayed,
                presence,
                online,
                ..
            } => Ok(Joined {
                room,
                tip,
                last_read,
                recovered,
                replayed,
                presence,
                online,
            }),
            other => Err(unexpected("joined", &other)),
        }
    }

    /// Leave `room` on this connection; without `keep_membership` the durable
    /// membership ends too. Waits for `left`. The room's cursor is dropped.
    pub async fn leave(&self, room: &str, keep_membership: bool) -> Result<(), ClientError> {
        let reply = self
            .call(self.shared.request_timeout, |id| {
                Outbound::Text(
                    ClientFrame::Leave {
                        id: Some(id),
                        room: room.to_owned(),
                        keep_membership,
                    }
                    .encode(),
                )
            })
            .await?;
        match reply {
            ServerFrame::Left { .. } => Ok(()),
            other => Err(unexpected("left", &other)),
        }
    }

    /// Send a message: one attempt, waiting up to `send_timeout` for the `ack`.
    pub async fn send(
        &self,
        room: &str,
        cid: &str,
        body: Json,
        meta: Option<Json>,
    ) -> Result<Ack, ClientError> {
        self.send_ref(room, cid, &body, meta.as_ref()).await
    }

    async fn send_ref(
        &self,
        room: &str,
        cid: &str,
        body: &Json,
        meta: Option<&Json>,
    ) -> Result<Ack, ClientError> {
        let reply = self
            .call(self.shared.send_timeout, |id| {
                let frame = SendFrame {
                    op: "send",
                    id,
                    room,
                    cid,
                    body,
                    meta,
                };
                #[allow(clippy::expect_used, reason = "string keys and raw JSON only")]
                Outbound::Text(serde_json::to_string(&frame).expect("send frames serialise"))
            })
            .await?;
        match reply {
            ServerFrame::Ack {
                room,
                cid,
                seq,
                msg_id,
                ts,
                duplicate,
                ..
            } => Ok(Ack {
                room,
                cid,
                seq,
                msg_id,
                ts,
                duplicate,
            }),
            other => Err(unexpected("ack", &other)),
        }
    }

    /// Send, retrying retryable errors and timeouts with the same `cid` (so
    /// the message is stored once), up to `max_send_attempts` attempts. Waits
    /// `retry_after_ms` (plus a little jitter) when the server gives it, else
    /// exponential back-off with jitter. Non-retryable errors and
    /// [`ClientError::Closed`] return at once (after a close, reconnect and
    /// retry with the same `cid`).
    pub async fn send_with_retry(
        &self,
        room: &str,
        cid: &str,
        body: Json,
    ) -> Result<Ack, ClientError> {
        self.send_with_retry_meta(room, cid, body, None).await
    }

    /// [`ClientHandle::send_with_retry`] with `meta`.
    pub async fn send_with_retry_meta(
        &self,
        room: &str,
        cid: &str,
        body: Json,
        meta: Option<Json>,
    ) -> Result<Ack, ClientError> {
        let attempts = self.shared.max_send_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let err = match self.send_ref(room, cid, &body, meta.as_ref()).await {
                Ok(ack) => return Ok(ack),
                Err(e) => e,
            };
            if attempt >= attempts || !err.is_retryable() {
                return Err(err);
            }
            let retry_after = match &err {
                ClientError::Server { retry_after_ms, .. } => *retry_after_ms,
                _ => None,
            };
            let delay = retry_delay(
                attempt - 1,
                retry_after,
                self.shared.retry_base,
                self.shared.retry_cap,
                random_u64(),
            );
            tracing::debug!(room, cid, attempt, ?delay, error = %err, "retrying send");
            tokio::time::sleep(delay).await;
        }
    }

    /// Page a room's history (see the protocol: `after` ascending from it,
    /// `before` the newest page below it, neither the newest page).
    pub async fn history(
        &self,
        room: &str,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, ClientError> {
        let reply = self
            .call(self.shared.request_timeout, |id| {
                Outbound::Text(
                    ClientFrame::History {
                        id: Some(id),
                        room: room.to_owned(),
                        before,
                        after,
                        limit,
                    }
                    .encode(),
                )
            })
            .await?;
        match reply {
            ServerFrame::History {
                room,
                messages,
                has_more,
                ..
            } => Ok(HistoryPage {
                room,
                messages,
                has_more,
            }),
            other => Err(unexpected("history", &other)),
        }
    }

    /// Read receipt up to `seq` (fire and forget: a failure arrives as
    /// [`Event::Error`]). Returns once queued for the socket.
    pub async fn read(&self, room: &str, seq: u64) -> Result<(), ClientError> {
        let text = ClientFrame::Read {
            id: None,
            room: room.to_owned(),
            seq,
        }
        .encode();
        self.push(Outbound::Text(text)).await
    }

    /// Delivery ack up to `seq` (fire and forget, like [`ClientHandle::read`]).
    pub async fn delivered(&self, room: &str, seq: u64) -> Result<(), ClientError> {
        let text = ClientFrame::Delivered {
            id: None,
            room: room.to_owned(),
            seq,
        }
        .encode();
        self.push(Outbound::Text(text)).await
    }

    /// Typing indicator (fire and forget).
    pub async fn typing(&self, room: &str, active: bool) -> Result<(), ClientError> {
        let text = ClientFrame::Typing {
            room: room.to_owned(),
            active,
        }
        .encode();
        self.push(Outbound::Text(text)).await
    }

    /// The room's presence snapshot (room must be joined).
    pub async fn presence(&self, room: &str) -> Result<Vec<PresenceUser>, ClientError> {
        let reply = self
            .call(self.shared.request_timeout, |id| {
                Outbound::Text(
                    ClientFrame::Presence {
                        id: Some(id),
                        room: room.to_owned(),
                    }
                    .encode(),
                )
            })
            .await?;
        match reply {
            ServerFrame::Presence { users, .. } => Ok(users),
            other => Err(unexpected("presence", &other)),
        }
    }

    /// Protocol-level `ping`; returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let start = Instant::now();
        let reply = self
            .call(self.shared.request_timeout, |id| {
                Outbound::Text(ClientFrame::Ping { id: Some(id) }.encode())
            })
            .await?;
        match reply {
            ServerFrame::Pong { .. } => Ok(start.elapsed()),
            other => Err(unexpected("pong", &other)),
        }
    }

    /// Replace the connection's JWT with `token` (same user and tenant) and
    /// return its `exp` (Unix seconds): the server then closes the connection
    /// at that time instead of the old token's, and sends
    /// [`Event::RefreshNeeded`] again before it. Rooms the new token does not
    /// allow were left by the server before this returns: each arrived as an
    /// [`Event::Error`] with `request` `"refresh"`, code `forbidden` and the
    /// room (its cursor is dropped). A refused token
    /// ([`ErrorCode::Unauthorized`], or [`ErrorCode::Forbidden`] for another
    /// user or tenant) changes nothing: the old token stays in force.
    pub async fn refresh(&self, token: &str) -> Result<u64, ClientError> {
        let reply = self
            .call(self.shared.request_timeout, |id| {
                Outbound::Text(
                    ClientFrame::Refresh {
                        id: Some(id),
                        token: token.to_owned(),
                    }
                    .encode(),
                )
            })
            .await?;
        match reply {
            ServerFrame::Refreshed { exp, .. } => Ok(exp),
            other => Err(unexpected("refreshed", &other)),
        }
    }

    /// Any request frame: its `id` is replaced by a fresh one and the reply
    /// frame (or error) returned as is. Frames without an id (`hello`,
    /// `typing`, `pong`) are rejected with [`ClientError::Protocol`]; send
    /// them with [`ClientHandle::send_raw`].
    pub async fn request(&self, frame: ClientFrame) -> Result<ServerFrame, ClientError> {
        let join = match &frame {
            ClientFrame::Join { room, since, .. } => Some((room.clone(), *since)),
            ClientFrame::Hello { .. } | ClientFrame::Typing { .. } | ClientFrame::Pong {} => {
                return Err(ClientError::Protocol(format!(
                    "op '{}' has no id",
                    frame.op()
                )));
            }
            _ => None,
        };
        let timeout = match frame {
            ClientFrame::Send { .. } => self.shared.send_timeout,
            _ => self.shared.request_timeout,
        };
        self.call(timeout, move |id| {
            let text = with_id(frame, id).encode();
            match join {
                Some((room, since)) => Outbound::Join { room, since, text },
                None => Outbound::Text(text),
            }
        })
        .await
    }

    /// Write a raw text frame (tests send malformed input with it).
    pub async fn send_raw(&self, text: String) -> Result<(), ClientError> {
        self.push(Outbound::Raw(WsMessage::Text(text.into()))).await
    }

    /// Write any WebSocket message (binary frames, pings, close frames, ...).
    pub async fn send_raw_message(&self, m: WsMessage) -> Result<(), ClientError> {
        self.push(Outbound::Raw(m)).await
    }

    /// How many `msg` frames were dropped because their seq was already seen.
    pub fn duplicates_dropped(&self) -> u64 {
        self.shared.duplicates.load(Ordering::Relaxed)
    }

    /// How many [`Event::Gap`]s were emitted.
    pub fn gaps(&self) -> u64 {
        self.shared.gaps.load(Ordering::Relaxed)
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed.is_some()
    }

    /// The close code and reason once the connection has ended.
    pub fn close_info(&self) -> Option<(Option<u16>, String)> {
        self.shared
            .lock()
            .closed
            .as_ref()
            .map(|c| (c.code, c.reason.clone()))
    }
}

fn unexpected(want: &str, got: &ServerFrame) -> ClientError {
    ClientError::Protocol(format!("expected '{want}' reply, got {got:?}"))
}

fn with_id(frame: ClientFrame, new: u64) -> ClientFrame {
    let id = Some(new);
    match frame {
        ClientFrame::Join { room, since, .. } => ClientFrame::Join { id, room, since },
        ClientFrame::Leave {
            room,
            keep_membership,
            ..
        } => ClientFrame::Leave {
            id,
            room,
            keep_membership,
        },
        ClientFrame::Send {
            room,
            cid,
            body,
            meta,
            ..
        } => ClientFrame::Send {
            id,
            room,
            cid,
            body,
            meta,
        },
        ClientFrame::History {
            room,
            before,
            after,
            limit,
            ..
        } => ClientFrame::History {
            id,
            room,
            before,
            after,
            limit,
        },
        ClientFrame::Read { room, seq, .. } => ClientFrame::Read { id, room, seq },
        ClientFrame::Delivered { room, seq, .. } => ClientFrame::Delivered { id, room, seq },
        ClientFrame::Presence { room, .. } => ClientFrame::Presence { id, room },
        ClientFrame::Ping { .. } => ClientFrame::Ping { id },
        ClientFrame::Refresh { token, .. } => ClientFrame::Refresh { id, token },
        other @ (ClientFrame::Hello { .. } | ClientFrame::Typing { .. } | ClientFrame::Pong {}) => {
            other
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_frame_encodes_as_client_send() {
        let body = Json::from_text(r#"{"text":"hi"}"#).unwrap();
        let meta = Json::from_text(r#"{"k":1}"#).unwrap();
        for meta in [None, Some(&meta)] {
            let f = SendFrame {
                op: "send",
                id: 9,
                room: "r",
                cid: "c",
                body: &body,
                meta,
            };
            let text = serde_json::to_string(&f).unwrap();
            match ClientFrame::decode(&text).unwrap() {
                ClientFrame::Send {
                    id,
                    room,
                    cid,
                    body: b,
                    meta: m,
                } => {
                    assert_eq!(id, Some(9));
                    assert_eq!(room, "r");
                    assert_eq!(cid, "c");
                    assert_eq!(b.get(), body.get());
                    assert_eq!(
                        m.as_ref().map(|j| j.get().to_owned()),
                        meta.map(|j| j.get().to_owned())
                    );
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn with_id_replaces_ids() {
        let f = with_id(
            ClientFrame::History {
                id: Some(1),
                room: "r".into(),
                before: None,
                after: Some(2),
                limit: None,
            },
            7,
        );
        assert_eq!(f.id(), Some(7));
        let f = with_id(ClientFrame::Ping { id: None }, 3);
        assert_eq!(f.id(), Some(3));
    }
}
