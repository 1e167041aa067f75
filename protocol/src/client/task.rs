//! The background socket task: reads frames, routes replies to waiting
//! requests, de-duplicates messages into events, writes queued requests,
//! answers pings and detects a dead connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};

use crate::frame::ServerFrame;

use super::event::Inbound;
use super::seq::{SeqTracker, Verdict};
use super::shared::{CloseInfo, Outbound, Reply, Shared};
use super::{ClientError, Event, Joined, WsStream};

pub(super) const PONG: &str = r#"{"op":"pong"}"#;
/// Frames written before one flush.
const MAX_WRITE_BATCH: usize = 128;
/// How long a graceful close waits for the server's close reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) fn close_parts(cf: Option<CloseFrame>) -> (Option<u16>, String) {
    match cf {
        Some(cf) => (Some(u16::from(cf.code)), cf.reason.as_str().to_owned()),
        None => (None, String::new()),
    }
}

pub(super) struct Task {
    pub(super) ws: WsStream,
    pub(super) shared: Arc<Shared>,
    pub(super) out_rx: mpsc::Receiver<Outbound>,
    pub(super) events: mpsc::Sender<Inbound>,
    pub(super) tracker: SeqTracker,
    pub(super) auto_pong: bool,
    pub(super) dead_after: Option<Duration>,
    pub(super) write_timeout: Duration,
    pub(super) last_rx: Instant,
    /// Why the connection ended, once known (used by `Drop`).
    pub(super) close: Option<CloseInfo>,
}

impl Drop for Task {
    fn drop(&mut self) {
        // Runs on normal end and when the task is aborted (Client::abort):
        // no request may wait forever.
        let info = self.close.take().unwrap_or(CloseInfo {
            code: None,
            reason: "connection aborted by client".into(),
        });
        self.shared.fail_all(&info);
    }
}

type Flow = Result<(), CloseInfo>;

impl Task {
    pub(super) async fn run(
        mut self,
        mut close_rx: oneshot::Receiver<()>,
        early: Vec<ServerFrame>,
    ) {
        let mut info = None;
        for f in early {
            if let Err(i) = self.on_frame(f).await {
                info = Some(i);
                break;
            }
        }
        let info = match info {
            Some(i) => i,
            None => self.main_loop(&mut close_rx).await,
        };
        tracing::debug!(code = ?info.code, reason = %info.reason, "chorus client connection ended");
        self.shared.fail_all(&info);
        let ev = Event::Closed {
            code: info.code,
            reason: info.reason.clone(),
        };
        self.close = Some(info);
        // The receiver may be gone (Client dropped or closed): fine.
        let _ = self.events.send(Inbound::Event(ev)).await;
    }

    async fn main_loop(&mut self, close_rx: &mut oneshot::Receiver<()>) -> CloseInfo {
        let far = Duration::from_secs(86400 * 365);
        let sleep = tokio::time::sleep(self.dead_after.unwrap_or(far));
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                // Ok: Client::close; Err: the Client was dropped. Both close gracefully.
                _ = &mut *close_rx => return self.graceful_close().await,
                m = self.ws.next() => {
                    if let Err(info) = self.on_ws(m).await {
                        return info;
                    }
                }
                o = self.out_rx.recv() => match o {
                    Some(o) => {
                        if let Err(info) = self.write_batch(o).await {
                            return info;
                        }
                    }
                    // Unreachable while `Shared` (holding the sender) lives.
                    None => return self.graceful_close().await,
                },
                () = &mut sleep, if self.dead_after.is_some() => {
                    let dead_after = self.dead_after.unwrap_or(far);
                    let due = self.last_rx + dead_after;
                    if Instant::now() < due {
                        sleep.as_mut().reset(due);
                        continue;
                    }
                    // The select may have picked the timer while a frame was
                    // ready: look once more without waiting.
                    if let Some(m) = self.ws.next().now_or_never() {
                        if let Err(info) = self.on_ws(m).await {
                            return info;
                        }
                        sleep.as_mut().reset(self.last_rx + dead_after);
                        continue;
                    }
                    return CloseInfo {
                        code: None,
                        reason: format!("no frame from server for {} ms", dead_after.as_millis()),
                    };
                }
            }
        }
    }

    async fn on_ws(&mut self, m: Option<Result<WsMessage, tungstenite::Error>>) -> Flow {
        self.last_rx = Instant::now();
        match m {
            None => Err(CloseInfo {
                code: None,
                reason: "connection closed without close frame".into(),
            }),
            Some(Err(e)) => Err(CloseInfo {
                code: None,
                reason: e.to_string(),
            }),
            Some(Ok(msg)) => self.on_message(msg).await,
        }
    }

    async fn on_message(&mut self, msg: WsMessage) -> Flow {
        match msg {
            WsMessage::Text(t) => match ServerFrame::decode(t.as_str()) {
                Ok(f) => self.on_frame(f).await,
                Err(e) => {
                    self.on_undecodable(t.as_str(), e.to_string()).await;
                    Ok(())
                }
            },
            WsMessage::Binary(b) => {
                let ev = Event::Invalid {
                    text: format!("<binary frame, {} bytes>", b.len()),
                    error: "binary frame".into(),
                };
                self.emit(Inbound::Event(ev)).await;
                Ok(())
            }
            WsMessage::Close(cf) => {
                // Send the close reply tungstenite queued, best effort.
                let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.flush()).await;
                let (code, reason) = close_parts(cf);
                Err(CloseInfo { code, reason })
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => Ok(()),
        }
    }

    async fn on_undecodable(&mut self, text: &str, error: String) {
        #[derive(Deserialize)]
        struct IdOnly {
            id: Option<u64>,
        }
        if let Ok(IdOnly { id: Some(id) }) = serde_json::from_str::<IdOnly>(text) {
            let err = ClientError::Protocol(format!("undecodable reply: {error}: {text}"));
            if self.shared.complete(id, Err(err)).is_none() {
                return;
            }
        }
        let ev = Event::Invalid {
            text: text.to_owned(),
            error,
        };
        self.emit(Inbound::Event(ev)).await;
    }

    async fn emit(&mut self, item: Inbound) {
        // Blocks while the channel is full (documented back-pressure). An
        // error means the Client is gone: nobody to tell.
        let _ = self.events.send(item).await;
    }

    /// Hand a reply to its waiter; log it if nobody waits (timed out).
    fn reply(&self, id: u64, frame: Reply) {
        if let Some(r) = self.shared.complete(id, frame) {
            tracing::debug!(id, reply = ?r, "reply for no waiting request (timed out?)");
        }
    }

    async fn on_frame(&mut self, f: ServerFrame) -> Flow {
        match f {
            ServerFrame::Msg(m) => match self.tracker.msg(&m.room, m.seq) {
                Verdict::Deliver => self.emit(Inbound::Event(Event::Msg(m))).await,
                Verdict::Duplicate => {
                    self.shared.duplicates.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::Gap { expected } => {
                    self.shared.gaps.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(room = %m.room, expected, got = m.seq, "gap in room seq");
                    let gap = Event::Gap {
                        room: m.room.clone(),
                        expected,
                        got: m.seq,
                    };
                    self.emit(Inbound::Event(gap)).await;
                    self.emit(Inbound::Event(Event::Msg(m))).await;
                }
            },
            ServerFrame::Ping {} => {
                if self.auto_pong {
                    let pong = WsMessage::Text(Utf8Bytes::from_static(PONG));
                    self.write_now(pong).await?;
                }
            }
            ServerFrame::Joined {
                id,
                room,
                tip,
                last_read,
                recovered,
                replayed,
                presence,
                online,
            } => {
                let cursor = self.tracker.joined(&room, tip);
                self.emit(Inbound::Cursor(room.clone(), cursor)).await;
                let joined = Joined {
                    room,
                    tip,
                    last_read,
                    recovered,
                    replayed,
                    presence,
                    online,
                };
                match id {
                    Some(id) => {
                        let frame = ServerFrame::Joined {
                            id: Some(id),
                            room: joined.room,
                            tip,
                            last_read,
                            recovered,
                            replayed,
                            presence: joined.presence,
                            online,
                        };
                        self.reply(id, Ok(frame));
                    }
                    None => self.emit(Inbound::Event(Event::Joined(joined))).await,
                }
            }
            ServerFrame::Left { id, room } => {
                self.tracker.left(&room);
                self.emit(Inbound::Forget(room.clone())).await;
                match id {
                    Some(id) => self.reply(id, Ok(ServerFrame::Left { id: Some(id), room })),
                    None => {
                        self.emit(Inbound::Event(Event::Other(Box::new(ServerFrame::Left {
                            id,
                            room,
                        }))))
                        .await
                    }
                }
            }
            ServerFrame::Error {
                id,
                request,
                code,
                message,
                retryable,
                retry_after_ms,
                cid,
                room,
            } => {
                if let Some(id) = id {
                    let err = ClientError::Server {
                        code,
                        message,
                        retryable,
                        retry_after_ms,
                    };
                    self.reply(id, Err(err));
                } else {
                    if let (Some("refresh"), Some(room)) = (request.as_deref(), &room) {
                        // A refresh left a room its new token does not allow.
                        self.tracker.left(room);
                        self.emit(Inbound::Forget(room.clone())).await;
                    }
                    let ev = Event::Error {
                        code,
                        message,
                        retryable,
                        retry_after_ms,
                        request,
                        cid,
                        room,
                    };
                    self.emit(Inbound::Event(ev)).await;
                }
            }
            ServerFrame::Receipt { room, receipts } => {
                self.emit(Inbound::Event(Event::Receipt { room, receipts }))
                    .await;
            }
            ServerFrame::Typing {
                room,
                user,
                device,
                active,
            } => {
                self.emit(Inbound::Event(Event::Typing {
                    room,
                    user,
                    device,
                    active,
                }))
                .await;
            }
            ServerFrame::PresenceDiff {
                room,
                joined,
                left,
                online,
            } => {
                self.emit(Inbound::Event(Event::PresenceDiff {
                    room,
                    joined,
                    left,
                    online,
                }))
                .await;
            }
            ServerFrame::Reconnect {
                reason,
                retry_after_ms,
            } => {
                self.emit(Inbound::Event(Event::Reconnect {
                    reason,
                    retry_after_ms,
                }))
                .await;
            }
            ServerFrame::RefreshNeeded { exp } => {
                self.emit(Inbound::Event(Event::RefreshNeeded { exp }))
                    .await;
            }
            f @ (ServerFrame::Ack { id: Some(id), .. }
            | ServerFrame::Refreshed { id: Some(id), .. }
            | ServerFrame::History { id: Some(id), .. }
            | ServerFrame::Presence { id: Some(id), .. }
            | ServerFrame::Pong { id: Some(id) }) => self.reply(id, Ok(f)),
            // A bare pong answers nothing we sent; ignore it.
            ServerFrame::Pong { id: None } => {}
            other => {
                self.emit(Inbound::Event(Event::Other(Box::new(other))))
                    .await
            }
        }
        Ok(())
    }

    fn prepare(&mut self, o: Outbound) -> WsMessage {
        match o {
            Outbound::Text(s) => WsMessage::Text(s.into()),
            Outbound::Join { room, since, text } => {
                self.tracker.join_sent(&room, since);
                WsMessage::Text(text.into())
            }
            Outbound::Raw(m) => m,
        }
    }

    /// Write `first` and whatever else is queued (bounded), then flush once.
    async fn write_batch(&mut self, first: Outbound) -> Flow {
        let m = self.prepare(first);
        let timeout = self.write_timeout;
        let res = tokio::time::timeout(timeout, async {
            self.ws.feed(m).await?;
            for _ in 0..MAX_WRITE_BATCH {
                let Ok(o) = self.out_rx.try_recv() else { break };
                let m = self.prepare(o);
                self.ws.feed(m).await?;
            }
            self.ws.flush().await
        })
        .await;
        write_result(res, timeout)
    }

    async fn write_now(&mut self, m: WsMessage) -> Flow {
        let timeout = self.write_timeout;
        let res = tokio::time::timeout(timeout, self.ws.send(m)).await;
        write_result(res, timeout)
    }

    /// Send close 1000, then read (still routing replies) until the server's
    /// close reply or the end of the stream, at most `CLOSE_TIMEOUT`.
    async fn graceful_close(&mut self) -> CloseInfo {
        let frame = CloseFrame {
            code: WsCloseCode::Normal,
            reason: Utf8Bytes::from_static(""),
        };
        let mut info = CloseInfo {
            code: Some(1000),
            reason: "closed by client".into(),
        };
        let done = async {
            if let Err(e) = self.ws.close(Some(frame)).await {
                return CloseInfo {
                    code: None,
                    reason: format!("close failed: {e}"),
                };
            }
            loop {
                match self.ws.next().await {
                    None | Some(Err(_)) => return info.clone(),
                    Some(Ok(WsMessage::Close(cf))) => {
                        let (code, reason) = close_parts(cf);
                        if code.is_some() {
                            info.code = code;
                        }
                        if !reason.is_empty() {
                            info.reason = reason;
                        }
                        return info.clone();
                    }
                    Some(Ok(WsMessage::Text(t))) => {
                        // Replies still go to their waiters; events are not
                        // delivered any more.
                        if let Ok(f) = ServerFrame::decode(t.as_str()) {
                            let id = match &f {
                                ServerFrame::Joined { id, .. }
                                | ServerFrame::Left { id, .. }
                                | ServerFrame::Ack { id, .. }
                                | ServerFrame::History { id, .. }
                                | ServerFrame::Presence { id, .. }
                                | ServerFrame::Pong { id }
                                | ServerFrame::Refreshed { id, .. }
                                | ServerFrame::Error { id, .. } => *id,
                                _ => None,
                            };
                            if let Some(id) = id {
                                let reply = match f {
                                    ServerFrame::Error {
                                        code,
                                        message,
                                        retryable,
                                        retry_after_ms,
                                        ..
                                    } => Err(ClientError::Server {
                                        code,
                                        message,
                                        retryable,
                                        retry_after_ms,
                                    }),
                                    f => Ok(f),
                                };
                                self.shared.complete(id, reply);
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                }
            }
        };
        let closing = CloseInfo {
            code: Some(1000),
            reason: "closed by client".into(),
        };
        tokio::time::timeout(CLOSE_TIMEOUT, done)
            .await
            .unwrap_or(closing)
    }
}

fn write_result(
    res: Result<Result<(), tungstenite::Error>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Flow {
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(CloseInfo {
            code: None,
            reason: format!("write failed: {e}"),
        }),
        Err(_) => Err(CloseInfo {
            code: None,
            reason: format!("write blocked for {} ms", timeout.as_millis()),
        }),
    }
}
