//! One WebSocket connection: handshake, the request loop, delivery, heartbeats,
//! and the close.
//!
//! One task per connection owns the socket (reads and writes) and the
//! connection's room cursors; others reach it through its bounded outbound queue
//! and its kill switch (see `hub`). The task `select!`s over: inbound frames,
//! the outbound queue, acks of sends in flight, the heartbeat tick, token
//! expiry, the kill switch and the node's shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes, WebSocket};
use chorus_history::{Position, ReadRange};
use chorus_protocol::{
    ClientFrame, CloseCode, ErrorCode, Json, PROTOCOL_VERSION, PresenceUser, Resume, RoomState,
    ServerFrame, valid_cid, valid_room,
};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio_tungstenite::tungstenite;
use tracing::{debug, warn};

use crate::auth::{AuthError, Identity};
use crate::clock::now_ms;
use crate::hub::{ConnHandle, Kill, Outbound, Queue};
use crate::listener::Slot;
use crate::node::Node;
use crate::presence::PresenceEntry;
use crate::ratelimit::TokenBucket;
use crate::send::{Acked, SendError, SendRequest, await_ack};
use crate::wire::{msg_frame, read_page, to_message};

/// Credentials found on the upgrade request.
#[derive(Debug, Default, Clone)]
pub struct UpgradeAuth {
    /// From `Authorization: Bearer` or `?access_token=`.
    pub token: Option<String>,
    /// From `?user=` (dev mode only).
    pub dev_user: Option<String>,
}

/// Frames written per flush when draining the outbound queue.
const WRITE_BATCH: usize = 256;
/// Messages read from history per page during replay and gap fill.
const REPLAY_PAGE: u32 = 500;
/// How long a close waits for the client's close reply.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// The connection's end of its outbound queue: closes it when dropped, so
/// the hub stops queueing to a connection that is gone.
struct QueueRx(Arc<Queue>);

impl Drop for QueueRx {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Why the loop ended.
enum End {
    /// Close with this code.
    Close(CloseCode),
    /// The client closed or the socket broke: nothing more to send.
    Gone,
}

/// A send waiting for its commit.
type PendingAck =
    Pin<Box<dyn Future<Output = (Option<u64>, String, String, Result<Acked, SendError>)> + Send>>;

/// A room this connection has joined.
struct Joined {
    /// Public room name (as the client wrote it).
    public: String,
    /// Highest seq written to the client: live frames at or below it are
    /// duplicates, above it + 1 a gap to fill from history.
    last_seq: u64,
    /// Last typing start relayed, for the typing rate limit.
    last_typing: Option<Instant>,
    /// Whether the last typing event relayed was a start (a stop then clears it).
    typing_shown: bool,
}

/// Entry point from the HTTP upgrade. `slot` is this connection's place among
/// the pending ones (see `listener`): released once `hello` authenticated,
/// closed with `handshake_timeout` if the listener evicts it before that.
///
/// A panic anywhere in the connection's work is caught here: counted, logged
/// once (by the panic hook), answered with close 4003 `internal_error`; the
/// node and every other connection carry on.
pub async fn serve(node: Arc<Node>, ws: WebSocket, creds: UpgradeAuth, slot: Option<Slot>) {
    let mut ws = ws;
    let evicted = async {
        match &slot {
            Some(s) => s.evicted().await,
            None => std::future::pending().await,
        }
    };
    let shaken = tokio::select! {
        r = AssertUnwindSafe(Box::pin(handshake(&node, &mut ws))).catch_unwind() => r,
        _ = evicted => {
            // Evicted at the pending bound: descriptors are what is short, so
            // the close frame goes out without waiting for the client's reply
            // (and the socket does not linger, see `listener::LingerStream`).
            Box::pin(close_now(&mut ws, CloseCode::HandshakeTimeout)).await;
            return;
        }
    };
    let hello = match shaken {
        Ok(Ok(h)) => h,
        Ok(Err(code)) => {
            Box::pin(close(&mut ws, code, None)).await;
            return;
        }
        Err(panic) => {
            crate::metrics::panicked("connection", panic.as_ref());
            Box::pin(close(&mut ws, CloseCode::InternalError, None)).await;
            return;
        }
    };
    let ClientFrame::Hello {
        v,
        token,
        device,
        meta,
        resume,
    } = hello
    else {
        close(
            &mut ws,
            CloseCode::ProtocolViolation,
            Some("first frame must be hello"),
        )
        .await;
        return;
    };
    if v != PROTOCOL_VERSION {
        close(
            &mut ws,
            CloseCode::UnsupportedVersion,
            Some("this server speaks v1"),
        )
        .await;
        return;
    }
    if let Some(m) = &meta
        && m.get().len() as u64 > node.cfg.max_presence_meta_bytes
    {
        let detail = format!(
            "hello.meta is {} bytes, over --max-presence-meta-bytes {}",
            m.get().len(),
            node.cfg.max_presence_meta_bytes
        );
        Box::pin(close(&mut ws, CloseCode::MessageTooBig, Some(&detail))).await;
        return;
    }
    let token = creds.token.or(token);
    let ident = match node
        .auth
        .authenticate(token.as_deref(), creds.dev_user.as_deref())
        .await
    {
        Ok(i) => i,
        Err(e) => {
            metrics::counter!("chorus_auth_failures_total").increment(1);
            let code = e.close_code();
            let reason = match &e {
                AuthError::Invalid(_) => "invalid token",
                AuthError::Missing => "missing token",
                AuthError::Expired => "token expired",
                AuthError::KeysUnavailable => "the identity provider's key set is unavailable",
            };
            debug!(error = %e, "authentication failed");
            Box::pin(close(&mut ws, code, Some(reason))).await;
            return;
        }
    };
    let user_key = ident.user_key();
    if let Err(code) = node.admit(&user_key) {
        Box::pin(close(&mut ws, code, None)).await;
        return;
    }
    // Authenticated: no longer pending.
    if let Some(slot) = &slot {
        slot.release();
    }
    drop(slot);
    let queue = Queue::new(node.cfg.outbound_queue);
    let handle = ConnHandle {
        id: node.next_conn_id(),
        tx: queue.clone(),
        kill: Arc::new(Kill::default()),
        max_bytes: node.cfg.outbound_bytes,
    };
    let mut conn = Conn {
        node: node.clone(),
        ws,
        handle,
        rx: QueueRx(queue),
        user_key: user_key.clone(),
        ident,
        session: String::new(),
        generation: 0,
        entry: None,
        rooms: HashMap::new(),
        sends: TokenBucket::new(node.cfg.sends_per_sec, node.cfg.send_burst),
        frames: TokenBucket::new(node.cfg.frames_per_sec, node.cfg.frame_burst),
        last_seen: Instant::now(),
        pending: FuturesUnordered::new(),
        token_changed: false,
    };
    let end = match AssertUnwindSafe(conn.run(device, meta, resume))
        .catch_unwind()
        .await
    {
        Ok(end) => end,
        Err(panic) => {
            crate::metrics::panicked("connection", panic.as_ref());
            End::Close(CloseCode::InternalError)
        }
    };
    // The connection's state is cleaned up even after a panic (rooms, presence,
    // session); a second panic there still leaves the node running.
    if let Err(panic) = AssertUnwindSafe(Box::pin(conn.finish(end)))
        .catch_unwind()
        .await
    {
        crate::metrics::panicked("connection", panic.as_ref());
    }
    node.release(&user_key);
}

/// How long a draining connection reads requests already on their way, at
/// most, and how long a quiet socket ends that early.
const DRAIN_READ: Duration = Duration::from_secs(1);
const DRAIN_QUIET: Duration = Duration::from_millis(100);

/// Most control frames (ping, pong) accepted before `hello`.
const MAX_FRAMES_BEFORE_HELLO: u32 = 8;

/// Wait for the first data frame, which must decode as `hello`.
async fn handshake(node: &Node, ws: &mut WebSocket) -> Result<ClientFrame, CloseCode> {
    let deadline = tokio::time::Instant::now() + node.cfg.handshake_timeout();
    let mut control = 0;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.recv()).await {
            Err(_) => return Err(CloseCode::HandshakeTimeout),
            Ok(None) => return Err(CloseCode::ProtocolViolation),
            Ok(Some(Err(e))) => return Err(classify(&e).unwrap_or(CloseCode::ProtocolViolation)),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            WsMessage::Text(t) => {
                return match ClientFrame::decode(t.as_str()) {
                    Ok(f @ ClientFrame::Hello { .. }) => Ok(f),
                    _ => Err(CloseCode::ProtocolViolation),
                };
            }
            WsMessage::Binary(_) => return Err(CloseCode::ProtocolViolation),
            WsMessage::Close(_) => return Err(CloseCode::ProtocolViolation),
            WsMessage::Ping(_) | WsMessage::Pong(_) => {
                control += 1;
                if control > MAX_FRAMES_BEFORE_HELLO {
                    return Err(CloseCode::Flood);
                }
            }
        }
    }
}

/// The close code for a read error, if the error is the client's fault.
fn classify(e: &axum::Error) -> Option<CloseCode> {
    let inner = std::error::Error::source(e)?;
    match inner.downcast_ref::<tungstenite::Error>()? {
        tungstenite::Error::Capacity(_) => Some(CloseCode::MessageTooBig),
        tungstenite::Error::Utf8(_) => Some(CloseCode::ProtocolViolation),
        tungstenite::Error::Protocol(_) => Some(CloseCode::ProtocolViolation),
        _ => None,
    }
}

/// Send a close frame (bounded in time) and let the socket go.
async fn close(ws: &mut WebSocket, code: CloseCode, detail: Option<&str>) {
    metrics::counter!("chorus_closes_total", "code" => code.reason()).increment(1);
    let reason = detail
        .map(|d| format!("{}: {d}", code.reason()))
        .unwrap_or_else(|| code.reason().to_owned());
    let frame = CloseFrame {
        code: code.code(),
        reason: Utf8Bytes::from(reason),
    };
    let sent = tokio::time::timeout(
        Duration::from_secs(2),
        ws.send(WsMessage::Close(Some(frame))),
    )
    .await;
    if matches!(sent, Ok(Ok(()))) {
        // Closing handshake: read (and drop) what the client still sends, up to
        // its close reply. Closing the socket with unread input makes the kernel
        // answer with a reset, and a reset makes the client's kernel discard what
        // the client has not read yet: the `reconnect` hint and this close frame.
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(m)) = ws.recv().await {
                if matches!(m, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Send a close frame (briefly bounded) and return without the closing
/// handshake: for a connection evicted while pending.
async fn close_now(ws: &mut WebSocket, code: CloseCode) {
    metrics::counter!("chorus_closes_total", "code" => code.reason()).increment(1);
    let frame = CloseFrame {
        code: code.code(),
        reason: Utf8Bytes::from(code.reason()),
    };
    let _ = tokio::time::timeout(
        Duration::from_millis(100),
        ws.send(WsMessage::Close(Some(frame))),
    )
    .await;
}

struct Conn {
    node: Arc<Node>,
    ws: WebSocket,
    handle: ConnHandle,
    rx: QueueRx,
    ident: Identity,
    user_key: String,
    /// Session id (kept across resumes).
    session: String,
    /// This connection's attach generation of the session (see `Node::detach_session`).
    generation: u64,
    /// This connection's presence entry, once attached.
    entry: Option<PresenceEntry>,
    /// Room key -> cursor.
    rooms: HashMap<Arc<str>, Joined>,
    /// Send rate limit.
    sends: TokenBucket,
    /// Inbound frame flood limit.
    frames: TokenBucket,
    /// Last inbound frame, for the idle timeout.
    last_seen: Instant,
    /// Sends in flight, acked as their commits finish.
    pending: FuturesUnordered<PendingAck>,
    /// Set when `refresh` replaced the token: the loop re-arms the expiry and
    /// `refresh_needed` timers for the new `exp`.
    token_changed: bool,
}

/// A failed request: the error frame to answer it with.
struct Fail {
    code: ErrorCode,
    message: String,
    retry_after_ms: Option<u64>,
}

impl Fail {
    fn new(code: ErrorCode, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

type Step = Result<(), End>;

impl Conn {
    async fn run(
        &mut self,
        device: Option<String>,
        meta: Option<Json>,
        resume: Option<Resume>,
    ) -> End {
        // Cold paths are boxed: an `.await` stores its future inside this
        // one, so a large handshake or request future would otherwise make
        // every idle connection as big as the largest of them (see
        // BENCHMARKS.md, idle memory). The hot path (`on_outbound`) stays
        // inline: no allocation per delivery.
        if let Err(end) = Box::pin(self.welcome(device, meta, resume)).await {
            return end;
        }
        let heartbeat = self.node.cfg.heartbeat();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let kill = self.handle.kill.clone();
        // Created once, not per turn of the loop: a timer or waiter made anew
        // on every wake-up is registered and removed again for each delivery.
        // Each of them ends the loop, so none is polled after it completes;
        // the token timers are re-armed (reset) instead, and polled only
        // while armed.
        let killed = kill.wait();
        let stopping = self.node.shutdown().cancelled_owned();
        let far = tokio::time::Instant::now() + MAX_TIMER;
        let expired = tokio::time::sleep_until(far);
        let hint = tokio::time::sleep_until(far);
        tokio::pin!(killed, stopping, expired, hint);
        // Whether the connection has a token expiry / a `refresh_needed` due.
        let (mut expiry_armed, mut hint_armed) = (false, false);
        // Whether this token's `refresh_needed` went out (once per token).
        let mut hint_sent = false;
        // The expiry timer fired early (it is capped at MAX_TIMER): set again.
        let mut recheck = false;
        self.token_changed = true;
        loop {
            let new_token = std::mem::take(&mut self.token_changed);
            if (new_token || std::mem::take(&mut recheck))
                && let Some(exp) = self.ident.exp
            {
                hint_sent &= !new_token;
                let t = token_timers(exp, self.node.cfg.refresh_hint_secs, now_ms());
                let now = tokio::time::Instant::now();
                expired.as_mut().reset(now + t.expiry);
                expiry_armed = true;
                hint_armed = false;
                if let Some(h) = t.hint.filter(|_| !hint_sent) {
                    hint.as_mut().reset(now + h);
                    hint_armed = true;
                }
            }
            let step = tokio::select! {
                biased;
                code = &mut killed => Err(End::Close(code)),
                _ = &mut stopping => return Box::pin(self.drain()).await,
                _ = &mut expired, if expiry_armed => {
                    // No leeway once connected (PROTOCOL.md 3.2): the close
                    // comes at `exp`. A timer capped at MAX_TIMER re-arms.
                    match self.ident.exp {
                        Some(exp) if exp_ms(exp) <= now_ms() => {
                            Err(End::Close(CloseCode::TokenExpired))
                        }
                        _ => {
                            recheck = true;
                            Ok(())
                        }
                    }
                }
                _ = &mut hint, if hint_armed => {
                    (hint_armed, hint_sent) = (false, true);
                    let exp = self.ident.exp.unwrap_or(0);
                    self.write(&ServerFrame::RefreshNeeded { exp }).await
                }
                inbound = self.ws.recv() => Box::pin(self.on_inbound(inbound)).await,
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    Box::pin(self.on_ack(done)).await
                }
                Some(out) = self.rx.0.pop() => self.on_outbound(out).await,
                _ = tick.tick() => Box::pin(self.on_tick()).await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    /// Authenticated `hello`: attach the session (resumed or new), send `welcome`,
    /// then re-join resumed rooms.
    async fn welcome(
        &mut self,
        device: Option<String>,
        meta: Option<Json>,
        resume: Option<Resume>,
    ) -> Step {
        let node = self.node.clone();
        let grant = resume
            .as_ref()
            .and_then(|r| node.auth.verify_resume(&r.token))
            .filter(|g| g.user == self.ident.user && g.tenant == self.ident.tenant);
        let resumed = grant.is_some();
        self.session = grant
            .map(|g| g.session)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let device = device
            .filter(|d| !d.is_empty() && d.len() <= 64)
            .unwrap_or_else(|| "default".to_owned());
        let meta = meta
            .and_then(|m| m.parse::<serde_json::Value>().ok())
            .filter(|m| !m.is_null());
        let entry = PresenceEntry {
            session: self.session.clone(),
            user: self.ident.user.clone(),
            user_key: self.user_key.clone(),
            device: device.clone(),
            node: node.id.clone(),
            since: now_ms(),
            meta,
        };
        self.generation = node
            .attach_session(entry.clone(), Some(self.handle.kill.clone()))
            .await;
        self.entry = Some(entry);
        let memberships = match node.store.memberships(&self.user_key).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "loading memberships failed");
                return Err(End::Close(CloseCode::Unavailable));
            }
        };
        let frame = ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            session: self.session.clone(),
            user: self.ident.user.clone(),
            tenant: self.ident.tenant.clone(),
            device,
            node: node.id.clone(),
            resume_token: node.auth.resume_token(&self.session, &self.ident),
            resume_ttl_ms: node.cfg.resume_ttl_ms,
            heartbeat_ms: node.cfg.heartbeat_ms,
            idle_timeout_ms: node.cfg.idle_timeout_ms,
            limits: node.cfg.limits(),
            // Only rooms the current token allows: a membership from an earlier
            // token with wider `rooms` stays stored but is not shown.
            rooms: memberships
                .iter()
                .filter(|m| self.ident.allows(crate::names::public_name(&m.room)))
                .map(|m| RoomState {
                    room: crate::names::public_name(&m.room).to_owned(),
                    tip: m.tip,
                    last_read: m.last_read,
                    last_delivered: m.last_delivered,
                    unread: m.unread(),
                })
                .collect(),
            resumed,
        };
        self.write(&frame).await?;
        if resumed && let Some(r) = resume {
            for (room, since) in r.rooms {
                self.request(ClientFrame::Join {
                    id: None,
                    room,
                    since: Some(since),
                })
                .await?;
            }
            let rooms: Vec<String> = self.rooms.keys().map(|k| k.to_string()).collect();
            node.settle_session(&self.session, self.generation, &rooms, &self.ident.user)
                .await;
        }
        Ok(())
    }

    async fn on_inbound(&mut self, inbound: Option<Result<WsMessage, axum::Error>>) -> Step {
        let msg = match inbound {
            None => return Err(End::Gone),
            Some(Err(e)) => {
                return Err(match classify(&e) {
                    Some(code) => End::Close(code),
                    None => End::Gone,
                });
            }
            Some(Ok(m)) => m,
        };
        self.last_seen = Instant::now();
        metrics::counter!("chorus_frames_in_total").increment(1);
        if self.frames.take().is_err() {
            return Err(End::Close(CloseCode::Flood));
        }
        match msg {
            WsMessage::Text(t) => match ClientFrame::decode(t.as_str()) {
                Ok(frame) => self.request(frame).await,
                Err(e) => {
                    self.write(&ServerFrame::Error {
                        id: e.id,
                        request: e.op,
                        code: e.code,
                        message: e.message,
                        retryable: false,
                        retry_after_ms: None,
                        cid: None,
                        room: None,
                    })
                    .await
                }
            },
            WsMessage::Binary(_) => Err(End::Close(CloseCode::ProtocolViolation)),
            WsMessage::Close(_) => Err(End::Gone),
            WsMessage::Ping(_) | WsMessage::Pong(_) => Ok(()),
        }
    }

    /// Dispatch one decoded request; failures become `error` frames.
    async fn request(&mut self, frame: ClientFrame) -> Step {
        let id = frame.id();
        let op = frame.op();
        let (room, cid) = match &frame {
            ClientFrame::Send { room, cid, .. } => (Some(room.clone()), Some(cid.clone())),
            ClientFrame::Join { room, .. }
            | ClientFrame::Leave { room, .. }
            | ClientFrame::History { room, .. }
            | ClientFrame::Read { room, .. }
            | ClientFrame::Delivered { room, .. }
            | ClientFrame::Typing { room, .. }
            | ClientFrame::Presence { room, .. } => (Some(room.clone()), None),
            _ => (None, None),
        };
        let result = match frame {
            ClientFrame::Hello { .. } => Err(Fail::new(
                ErrorCode::InvalidState,
                "hello was already accepted",
            )),
            ClientFrame::Join { id, room, since } => self.join(id, room, since).await,
            ClientFrame::Leave {
                id,
                room,
                keep_membership,
            } => self.leave(id, room, keep_membership).await,
            ClientFrame::Send {
                id,
                room,
                cid,
                body,
                meta,
            } => self.send(id, room, cid, body, meta).await,
            ClientFrame::History {
                id,
                room,
                before,
                after,
                limit,
            } => self.history(id, room, before, after, limit).await,
            ClientFrame::Read { room, seq, .. } => self.mark(room, Position::Read, seq).await,
            ClientFrame::Delivered { room, seq, .. } => {
                self.mark(room, Position::Delivered, seq).await
            }
            ClientFrame::Typing { room, active } => self.typing(room, active).await,
            ClientFrame::Presence { id, room } => self.presence(id, room).await,
            ClientFrame::Ping { id } => return self.write(&ServerFrame::Pong { id }).await,
            ClientFrame::Pong {} => Ok(()),
            ClientFrame::Refresh { id, token } => Box::pin(self.refresh(id, token)).await,
        };
        match result {
            Ok(()) => Ok(()),
            Err(Fail {
                code,
                message,
                retry_after_ms,
            }) => {
                if code == ErrorCode::RateLimited {
                    metrics::counter!("chorus_rate_limited_total").increment(1);
                }
                self.write(&ServerFrame::Error {
                    id,
                    request: Some(op.to_owned()),
                    code,
                    message,
                    retryable: code.retryable(),
                    retry_after_ms,
                    cid,
                    room,
                })
                .await
            }
        }
    }

    /// Room name and ACL checks; the room's key.
    fn check_room(&self, room: &str) -> Result<String, Fail> {
        if !valid_room(room) {
            return Err(invalid_room());
        }
        if !self.ident.allows(room) {
            return Err(Fail::new(
                ErrorCode::Forbidden,
                format!("not allowed in room '{room}'"),
            ));
        }
        Ok(self.ident.room_key(room))
    }

    /// The key of a room this connection has joined. An invalid name is
    /// `invalid_room` (it can never be joined), not `not_joined`.
    fn joined_key(&self, room: &str) -> Result<Arc<str>, Fail> {
        if !valid_room(room) {
            return Err(invalid_room());
        }
        let key = self.ident.room_key(room);
        self.rooms
            .get_key_value(key.as_str())
            .map(|(k, _)| k.clone())
            .ok_or_else(|| Fail::new(ErrorCode::NotJoined, format!("join '{room}' first")))
    }

    async fn join(
        &mut self,
        id: Option<u64>,
        room: String,
        since: Option<u64>,
    ) -> Result<(), Fail> {
        let key = self.check_room(&room)?;
        if self.node.cfg.test_panic_room.as_deref() == Some(room.as_str()) {
            panic!("--test-panic-room: join of {room}");
        }
        let already = self.rooms.contains_key(key.as_str());
        if !already && self.rooms.len() as u64 >= self.node.cfg.max_rooms {
            return Err(Fail::new(
                ErrorCode::TooManyRooms,
                format!("at most {} rooms per connection", self.node.cfg.max_rooms),
            ));
        }
        let node = self.node.clone();
        if !already {
            check_membership_cap(&node, &key, &self.user_key).await?;
        }
        let membership = node
            .store
            .join(&key, &self.user_key, now_ms())
            .await
            .map_err(store_fail)?;
        // Subscribe before reading the tip: every message committed after this
        // point reaches the queue, every one before it is at or below the tip.
        let key: Arc<str> = if already {
            self.rooms
                .get_key_value(key.as_str())
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(key))
        } else {
            // Every join, not only the room's first here: a join that raced a
            // failed first one must not ride on a subscription that never
            // happened. Without the room's feed this connection would hear
            // nothing from other nodes, so the join fails (retryable) and is
            // undone rather than succeed deaf.
            let Ok(key) = node.fanout.join(&key, self.handle.clone()).await else {
                return Err(Fail::new(
                    ErrorCode::Unavailable,
                    format!(
                        "cannot receive room '{room}' now (redis or history unreachable): join again"
                    ),
                ));
            };
            self.rooms.insert(
                key.clone(),
                Joined {
                    public: room.clone(),
                    last_seq: 0,
                    last_typing: None,
                    typing_shown: false,
                },
            );
            key
        };
        let tip = match node.store.tips(&[key.to_string()]).await {
            Ok(t) => t.first().copied().unwrap_or(0),
            Err(e) => {
                if !already {
                    self.drop_room(&key).await;
                }
                return Err(store_fail(e));
            }
        };
        let mut recovered = true;
        let mut replayed = 0;
        let start = match since {
            Some(s) if tip.saturating_sub(s) > node.cfg.max_replay => {
                recovered = false;
                tip
            }
            Some(s) => s.min(tip),
            None if already => self.rooms.get(&key).map(|j| j.last_seq).unwrap_or(tip),
            None => tip,
        };
        if let Some(j) = self.rooms.get_mut(&key) {
            j.last_seq = start;
        }
        if start < tip {
            match self.replay(&key, tip).await {
                Ok((n, complete)) => {
                    replayed = n;
                    recovered &= complete;
                }
                Err(ReplayError::Store(e)) => {
                    // Like a failed tip read: a refused join leaves nothing
                    // joined (the retry replays from the same `since`).
                    if !already {
                        self.drop_room(&key).await;
                    }
                    return Err(store_fail(e));
                }
                Err(ReplayError::Socket) => return Ok(()),
            }
        }
        let counted = match self.entry.clone() {
            Some(entry) => {
                node.presence_join(&key, &self.session, &entry, self.handle.id)
                    .await
            }
            None => None,
        };
        // A hot room's list would cost every joiner the whole room: the count only.
        let online = match counted {
            Some(n) => n,
            None => node.presence.room_count(&key).await.unwrap_or(0),
        };
        // So is a list over the reply bound (large `meta`s): never a reply so
        // big that the join fails.
        let presence = if online > node.cfg.presence_hot_users {
            Vec::new()
        } else {
            let users = node.presence.room(&key).await.unwrap_or_default();
            match fit_presence(users, node.cfg.max_presence_reply_bytes) {
                (users, false) => users,
                (_, true) => Vec::new(),
            }
        };
        let frame = ServerFrame::Joined {
            id,
            room,
            tip: self
                .rooms
                .get(&key)
                .map(|j| j.last_seq.max(tip))
                .unwrap_or(tip),
            last_read: membership.last_read,
            recovered,
            replayed,
            presence,
            online,
        };
        self.write(&frame)
            .await
            .map_err(|_| Fail::new(ErrorCode::Internal, "socket closed"))
    }

    /// Write history from the room's cursor up to `upto` (inclusive). Returns how
    /// many were written and whether the range was complete (no trimmed hole).
    async fn replay(&mut self, key: &Arc<str>, upto: u64) -> Result<(u64, bool), ReplayError> {
        let mut written = 0;
        let mut complete = true;
        loop {
            let Some(after) = self.rooms.get(key).map(|j| j.last_seq) else {
                return Ok((written, complete));
            };
            if after >= upto {
                return Ok((written, complete));
            }
            let page = self
                .node
                .store
                .read(
                    key,
                    ReadRange::After {
                        after,
                        limit: REPLAY_PAGE,
                    },
                )
                .await
                .map_err(ReplayError::Store)?;
            if page.first().is_none_or(|m| m.seq > upto) {
                // Trimmed by retention (or not yet visible): report and move on.
                complete = false;
                if let Some(j) = self.rooms.get_mut(key) {
                    j.last_seq = upto;
                }
                return Ok((written, complete));
            }
            let public = self
                .rooms
                .get(key)
                .map(|j| j.public.clone())
                .unwrap_or_default();
            for m in page {
                if m.seq > upto {
                    break;
                }
                let expected = self.rooms.get(key).map(|j| j.last_seq + 1).unwrap_or(m.seq);
                if m.seq != expected {
                    complete = false;
                }
                let seq = m.seq;
                if self.feed(msg_frame(to_message(&public, m))).await.is_err() {
                    return Err(ReplayError::Socket);
                }
                written += 1;
                if let Some(j) = self.rooms.get_mut(key) {
                    j.last_seq = seq;
                }
            }
            if self.flush().await.is_err() {
                return Err(ReplayError::Socket);
            }
        }
    }

    /// Forget a room locally (this connection's cursor, the hub, and the
    /// node's subscription if it was the last member here).
    async fn drop_room(&mut self, key: &Arc<str>) {
        self.rooms.remove(key);
        self.node.fanout.leave(key, self.handle.id).await;
    }

    async fn leave(
        &mut self,
        id: Option<u64>,
        room: String,
        keep_membership: bool,
    ) -> Result<(), Fail> {
        // The ACL applies as for `join` (PROTOCOL.md 2.2): a room the token
        // does not allow is `forbidden`, also for leaving. Such a membership is
        // no longer listed in `welcome` either.
        let key = self.check_room(&room)?;
        if let Some((k, _)) = self.rooms.get_key_value(key.as_str()) {
            let k = k.clone();
            self.drop_room(&k).await;
            self.node
                .presence_leave(&k, &self.session, &self.ident.user)
                .await;
        }
        if !keep_membership {
            self.node
                .store
                .leave(&key, &self.user_key)
                .await
                .map_err(store_fail)?;
        }
        self.write(&ServerFrame::Left { id, room })
            .await
            .map_err(|_| Fail::new(ErrorCode::Internal, "socket closed"))
    }

    /// `refresh`: verify the new token like a `hello`'s, for the same user and
    /// tenant, put it in force (its `exp` re-arms the timers, its `rooms` claim
    /// decides from now on), and leave every joined room it does not allow
    /// (each with an `error` naming the room, before the `refreshed` reply;
    /// the durable membership stays, as when a resume's new token no longer
    /// allows a room). A refused token changes nothing.
    async fn refresh(&mut self, id: Option<u64>, token: String) -> Result<(), Fail> {
        if self.ident.exp.is_none() {
            return Err(Fail::new(
                ErrorCode::InvalidState,
                "this connection was not authenticated with a JWT (development mode): \
                 there is no token to refresh",
            ));
        }
        let node = self.node.clone();
        let new = node.auth.verify(&token).await.map_err(|e| {
            metrics::counter!("chorus_auth_failures_total").increment(1);
            debug!(error = %e, "refresh refused");
            match e {
                AuthError::KeysUnavailable => Fail {
                    code: ErrorCode::Unavailable,
                    message: e.to_string(),
                    retry_after_ms: Some(1000),
                },
                _ => Fail::new(ErrorCode::Unauthorized, e.to_string()),
            }
        })?;
        if new.user != self.ident.user || new.tenant != self.ident.tenant {
            return Err(Fail::new(
                ErrorCode::Forbidden,
                "the new token is for another user or tenant",
            ));
        }
        let exp = new.exp.unwrap_or(0);
        self.ident = new;
        self.token_changed = true;
        metrics::counter!("chorus_token_refreshes_total").increment(1);
        let mut revoked: Vec<(Arc<str>, String)> = self
            .rooms
            .iter()
            .filter(|(_, j)| !self.ident.allows(&j.public))
            .map(|(k, j)| (k.clone(), j.public.clone()))
            .collect();
        revoked.sort_by(|a, b| a.1.cmp(&b.1));
        let closed = |_| Fail::new(ErrorCode::Internal, "socket closed");
        for (key, room) in revoked {
            self.drop_room(&key).await;
            node.presence_leave(&key, &self.session, &self.ident.user)
                .await;
            self.write(&ServerFrame::Error {
                id: None,
                request: Some("refresh".into()),
                code: ErrorCode::Forbidden,
                message: format!("the new token does not allow room '{room}': left it"),
                retryable: false,
                retry_after_ms: None,
                cid: None,
                room: Some(room),
            })
            .await
            .map_err(closed)?;
        }
        self.write(&ServerFrame::Refreshed { id, exp })
            .await
            .map_err(closed)
    }

    /// Validate a send, apply the limits (this connection's bucket first: a
    /// flooding socket is refused without a Redis round trip; then the user's
    /// and the tenant's shared buckets), and queue it; its ack comes through
    /// `pending`. The shared check is awaited here, not in `pending`, so sends
    /// reach the router in the order the client sent them.
    async fn send(
        &mut self,
        id: Option<u64>,
        room: String,
        cid: String,
        body: Json,
        meta: Option<Json>,
    ) -> Result<(), Fail> {
        let key = self.joined_key(&room)?;
        if !valid_cid(&cid) {
            return Err(Fail::new(
                ErrorCode::BadRequest,
                "cid must be 1-128 characters",
            ));
        }
        let size = body.get().len() + meta.as_ref().map(|m| m.get().len()).unwrap_or(0);
        if size as u64 > self.node.cfg.max_message_bytes {
            return Err(Fail::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "body+meta is {size} bytes; the limit is {}",
                    self.node.cfg.max_message_bytes
                ),
            ));
        }
        if let Err(wait) = self.sends.take() {
            return Err(Fail {
                code: ErrorCode::RateLimited,
                message: format!("at most {} sends per second", self.node.cfg.sends_per_sec),
                retry_after_ms: Some(wait.as_millis() as u64 + 1),
            });
        }
        if let Err(r) = self
            .node
            .limits
            .check(Some(&self.user_key), self.ident.tenant.as_deref())
            .await
        {
            return Err(Fail {
                code: ErrorCode::RateLimited,
                message: r.message(),
                retry_after_ms: Some(r.retry_after_ms()),
            });
        }
        let req = SendRequest {
            room: key.to_string(),
            sender: self.ident.user.clone(),
            cid: cid.clone(),
            body,
            meta,
        };
        let rx = self.node.router.submit(req).map_err(send_fail)?;
        let timeout = self.node.cfg.send_timeout();
        self.pending.push(Box::pin(async move {
            (id, room, cid, await_ack(rx, timeout).await)
        }));
        Ok(())
    }

    async fn on_ack(
        &mut self,
        (id, room, cid, result): (Option<u64>, String, String, Result<Acked, SendError>),
    ) -> Step {
        match result {
            Ok(a) => {
                self.deliver_upto(&room, a.seq).await?;
                self.write(&ServerFrame::Ack {
                    id,
                    room,
                    cid,
                    seq: a.seq,
                    msg_id: a.id,
                    ts: a.ts,
                    duplicate: a.duplicate,
                })
                .await
            }
            Err(e) => {
                let code = e.code();
                self.write(&ServerFrame::Error {
                    id,
                    request: Some("send".into()),
                    code,
                    message: e.to_string(),
                    retryable: code.retryable(),
                    retry_after_ms: Some(100),
                    cid: Some(cid),
                    room: Some(room),
                })
                .await
            }
        }
    }

    /// Before the ack of `seq`, the sender's own `msg` (PROTOCOL.md 7.1: msg,
    /// then ack), if this connection is joined to the room: what is queued is
    /// written first, and if the message has not arrived yet (it comes from
    /// another node, or the fan-out window holds it) it is read from history.
    /// The live copy is then dropped as a duplicate.
    async fn deliver_upto(&mut self, room: &str, seq: u64) -> Step {
        let key = self.ident.room_key(room);
        let behind = |c: &Self| c.rooms.get(key.as_str()).is_some_and(|j| j.last_seq < seq);
        if !behind(self) {
            return Ok(());
        }
        while let Some(o) = self.rx.0.try_pop() {
            self.feed_outbound(o).await?;
        }
        if !behind(self) {
            return Ok(());
        }
        let Some((key, _)) = self.rooms.get_key_value(key.as_str()) else {
            return Ok(());
        };
        let key = key.clone();
        match self.replay(&key, seq).await {
            Ok(_) => Ok(()),
            Err(ReplayError::Socket) => Err(End::Gone),
            // The ack still goes out; the gap is filled by the tip check.
            Err(ReplayError::Store(e)) => {
                debug!(error = %e, "reading the sender's own message before its ack");
                Ok(())
            }
        }
    }

    async fn history(
        &mut self,
        id: Option<u64>,
        room: String,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(), Fail> {
        let key = self.check_room(&room)?;
        let (messages, has_more) = read_page(
            &*self.node.store,
            &key,
            before,
            after,
            limit,
            self.node.cfg.max_history_page,
        )
        .await
        .map_err(store_fail)?;
        let messages = messages.into_iter().map(|m| to_message(&room, m)).collect();
        self.write(&ServerFrame::History {
            id,
            room,
            messages,
            has_more,
        })
        .await
        .map_err(|_| Fail::new(ErrorCode::Internal, "socket closed"))
    }

    async fn mark(&mut self, room: String, position: Position, seq: u64) -> Result<(), Fail> {
        let key = self.joined_key(&room)?;
        self.node
            .mark(&key, &self.ident.user, &self.user_key, position, seq)
            .await
            .map_err(store_fail)
    }

    async fn typing(&mut self, room: String, active: bool) -> Result<(), Fail> {
        let key = self.joined_key(&room)?;
        let interval = Duration::from_millis(self.node.cfg.typing_interval_ms);
        let Some(j) = self.rooms.get_mut(&key) else {
            return Ok(());
        };
        // Starts are rate-limited (excess dropped silently: typing is ephemeral);
        // a stop goes through when it clears a relayed start, so indicators clear
        // promptly. A stop does not reset the start limit: alternating start/stop
        // would otherwise relay every frame.
        if active {
            if j.last_typing.is_some_and(|t| t.elapsed() < interval) {
                return Ok(());
            }
            j.last_typing = Some(Instant::now());
            j.typing_shown = true;
        } else {
            if !j.typing_shown {
                return Ok(());
            }
            j.typing_shown = false;
        }
        let device = self
            .entry
            .as_ref()
            .map(|e| e.device.clone())
            .unwrap_or_default();
        let frame = ServerFrame::Typing {
            room,
            user: self.ident.user.clone(),
            device,
            active,
        };
        self.node
            .broadcast(&key, &frame, Some(self.handle.id))
            .await;
        Ok(())
    }

    async fn presence(&mut self, id: Option<u64>, room: String) -> Result<(), Fail> {
        let key = self.joined_key(&room)?;
        let users = self
            .node
            .presence
            .room(&key)
            .await
            .map_err(|e| Fail::new(ErrorCode::Unavailable, e.to_string()))?;
        let (users, truncated) = fit_presence(users, self.node.cfg.max_presence_reply_bytes);
        self.write(&ServerFrame::Presence {
            id,
            room,
            users,
            truncated,
        })
        .await
        .map_err(|_| Fail::new(ErrorCode::Internal, "socket closed"))
    }

    /// Write queued frames: this one and whatever else is queued, one flush.
    ///
    /// Stops once the connection was declared slow: it is closed with 4002 next
    /// (the client resumes from its last seq), so writing more to it, or filling
    /// the gap its dropped batch left from history, is wasted work and memory.
    async fn on_outbound(&mut self, first: Outbound) -> Step {
        let mut next = Some(first);
        for _ in 0..WRITE_BATCH {
            let Some(o) = next.take() else { break };
            if let Some(code) = self.handle.kill.requested() {
                return Err(End::Close(code));
            }
            self.feed_outbound(o).await?;
            next = self.rx.0.try_pop();
        }
        self.flush().await
    }

    async fn feed_outbound(&mut self, out: Outbound) -> Step {
        self.handle.kill.dequeued(out.bytes());
        match out {
            Outbound::Frame(f) => self.feed(f).await,
            Outbound::Msgs { room, frames, .. } => {
                for (seq, frame) in frames.iter() {
                    self.feed_msg(&room, *seq, frame).await?;
                }
                Ok(())
            }
            Outbound::Tip { room, tip } => {
                let behind = self.rooms.get(&room).is_some_and(|j| j.last_seq < tip);
                if behind {
                    // Boxed: a history read is rare, and inline it would make
                    // every connection's state as large as its future.
                    Box::pin(self.catch_up(&room, tip)).await?;
                }
                Ok(())
            }
        }
    }

    /// Write history up to `upto` (a gap, or a tip announced by the node).
    async fn catch_up(&mut self, room: &Arc<str>, upto: u64) -> Step {
        metrics::counter!("chorus_gap_fills_total", "level" => "connection").increment(1);
        match self.replay(room, upto).await {
            Ok(_) => Ok(()),
            Err(ReplayError::Socket) => Err(End::Gone),
            Err(ReplayError::Store(e)) => {
                warn!(room = %room, error = %e, "gap fill failed");
                Err(End::Close(CloseCode::Unavailable))
            }
        }
    }

    /// One live room message: skip what was already written, fill a gap from
    /// history first, then write it.
    async fn feed_msg(&mut self, room: &Arc<str>, seq: u64, frame: &Utf8Bytes) -> Step {
        let Some(last) = self.rooms.get(room).map(|j| j.last_seq) else {
            return Ok(()); // left the room meanwhile
        };
        if seq <= last {
            return Ok(()); // already written (replay overlap)
        }
        if seq > last + 1 {
            Box::pin(self.catch_up(room, seq - 1)).await?;
        }
        if let Some(j) = self.rooms.get_mut(room) {
            j.last_seq = seq;
        }
        self.feed(frame.clone()).await
    }

    async fn on_tick(&mut self) -> Step {
        if self.last_seen.elapsed() > self.node.cfg.idle_timeout() {
            return Err(End::Close(CloseCode::HeartbeatTimeout));
        }
        self.write(&ServerFrame::Ping {}).await
    }

    /// Shutdown: stop reading, let sends in flight finish (ack them), then ask
    /// the client to reconnect elsewhere and close with 4000.
    async fn drain(&mut self) -> End {
        // Each pending send ends within the send timeout with an ack or a
        // (retryable) error of its own; the slack lets the last one be written.
        let deadline =
            tokio::time::Instant::now() + self.node.cfg.send_timeout() + Duration::from_secs(1);
        // Requests the client already wrote are read and answered: every
        // `send` with a retryable error (it resends after reconnecting, with
        // the same cid), so none is met with silence.
        let reading = (tokio::time::Instant::now() + DRAIN_READ).min(deadline);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(
            reading.min(tokio::time::Instant::now() + DRAIN_QUIET),
            self.ws.recv(),
        )
        .await
        {
            let WsMessage::Text(t) = m else { continue };
            if let Ok(ClientFrame::Send { id, room, cid, .. }) = ClientFrame::decode(t.as_str()) {
                let refused = ServerFrame::Error {
                    id,
                    request: Some("send".into()),
                    code: ErrorCode::Unavailable,
                    message: "node is draining: resend after reconnecting".into(),
                    retryable: true,
                    retry_after_ms: Some(500),
                    cid: Some(cid),
                    room: Some(room),
                };
                if self.write(&refused).await.is_err() {
                    return End::Gone;
                }
            }
        }
        while !self.pending.is_empty() {
            match tokio::time::timeout_at(deadline, self.pending.next()).await {
                Ok(Some(done)) => {
                    if self.on_ack(done).await.is_err() {
                        return End::Gone;
                    }
                }
                _ => break,
            }
        }
        while let Some(o) = self.rx.0.try_pop() {
            if self.feed_outbound(o).await.is_err() {
                return End::Gone;
            }
        }
        let hint = ServerFrame::Reconnect {
            reason: "shutdown".into(),
            retry_after_ms: 500,
        };
        if self.write(&hint).await.is_err() {
            return End::Gone;
        }
        End::Close(CloseCode::Shutdown)
    }

    /// After the loop: close, leave the hub, start the presence grace.
    async fn finish(&mut self, end: End) {
        if let End::Close(code) = end {
            close(&mut self.ws, code, None).await;
        }
        let keys: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for key in &keys {
            self.drop_room(key).await;
        }
        if let Some(entry) = self.entry.take() {
            self.node
                .detach_session(self.session.clone(), self.generation, entry.user);
        }
    }

    /// Queue one frame on the socket, bounded by the write timeout like `flush`:
    /// once the socket's buffers are full, `feed` itself waits for room, and a
    /// client that stopped reading must not hold this task (deaf to its kill
    /// switch, its presence and its socket kept) forever.
    async fn feed(&mut self, frame: Utf8Bytes) -> Step {
        metrics::counter!("chorus_frames_out_total").increment(1);
        let feed = self.ws.feed(WsMessage::Text(frame));
        match tokio::time::timeout(self.node.cfg.write_timeout(), feed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(self.write_timed_out()),
        }
    }

    /// Flush, bounded by the write timeout: a client that does not read is slow.
    async fn flush(&mut self) -> Step {
        match tokio::time::timeout(self.node.cfg.write_timeout(), self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(self.write_timed_out()),
        }
    }

    /// A write blocked past the write timeout: the client is slow. Also trips the
    /// kill switch, so the loop closes with 4002 even where a caller turned the
    /// error into something else (a join's replay answers `Ok` on a socket error,
    /// which otherwise left the join hanging with the connection open).
    fn write_timed_out(&self) -> End {
        self.handle.kill.kill(CloseCode::SlowConsumer);
        End::Close(CloseCode::SlowConsumer)
    }

    async fn write(&mut self, frame: &ServerFrame) -> Step {
        self.feed(Utf8Bytes::from(frame.encode())).await?;
        self.flush().await
    }
}

enum ReplayError {
    Store(chorus_history::StoreError),
    Socket,
}

/// Longest a token timer sleeps before looking at the clock again.
const MAX_TIMER: Duration = Duration::from_secs(86_400);

/// `exp` (Unix seconds) in Unix milliseconds, saturating.
fn exp_ms(exp: u64) -> i64 {
    i64::try_from(exp.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// When a connection's token timers fire, from now.
#[derive(Debug, PartialEq, Eq)]
struct TokenTimers {
    /// The close 4502: at `exp` (at once if it has passed), capped at
    /// `MAX_TIMER` (the loop then looks again).
    expiry: Duration,
    /// `refresh_needed`: `hint_secs` before `exp`, or halfway through the
    /// remaining lifetime when that is shorter than twice `hint_secs` (so a
    /// short token is not hinted at once, and a client refreshing on every
    /// hint does not loop). `None` when hints are off or it is beyond the cap.
    hint: Option<Duration>,
}

fn token_timers(exp: u64, hint_secs: u64, now_ms: i64) -> TokenTimers {
    let remaining = exp_ms(exp).saturating_sub(now_ms).max(0) as u64;
    let cap = MAX_TIMER.as_millis() as u64;
    let before = hint_secs.saturating_mul(1000).min(remaining / 2);
    let hint_at = remaining - before;
    TokenTimers {
        expiry: Duration::from_millis(remaining.min(cap)),
        hint: (hint_secs > 0 && hint_at <= cap).then(|| Duration::from_millis(hint_at)),
    }
}

fn invalid_room() -> Fail {
    Fail::new(
        ErrorCode::InvalidRoom,
        "room names are 1-128 chars of A-Z a-z 0-9 _ - . : @ #",
    )
}

fn store_fail(e: chorus_history::StoreError) -> Fail {
    match e {
        chorus_history::StoreError::Unavailable(m) => Fail::new(ErrorCode::Unavailable, m),
        chorus_history::StoreError::Internal(m) => {
            warn!(error = %m, "store error");
            Fail::new(ErrorCode::Internal, "internal error")
        }
    }
}

fn send_fail(e: SendError) -> Fail {
    Fail {
        code: e.code(),
        message: e.to_string(),
        retry_after_ms: Some(100),
    }
}

/// A join that would create a durable membership beyond
/// `--max-memberships-per-user` is refused (`too_many_rooms`). Counted only
/// for a new membership; joins racing on several connections may pass the
/// bound by their number, no more.
async fn check_membership_cap(node: &Node, key: &str, user_key: &str) -> Result<(), Fail> {
    let store = &node.store;
    let cap = node.cfg.max_memberships_per_user;
    if store
        .membership(key, user_key)
        .await
        .map_err(store_fail)?
        .is_some()
    {
        return Ok(());
    }
    let held = store.memberships(user_key).await.map_err(store_fail)?.len() as u64;
    if held >= cap {
        return Err(Fail::new(
            ErrorCode::TooManyRooms,
            format!("at most {cap} room memberships per user; leave one first"),
        ));
    }
    Ok(())
}

/// The first users of a presence list whose JSON fits in `max_bytes`, and
/// whether any were left out.
fn fit_presence(users: Vec<PresenceUser>, max_bytes: u64) -> (Vec<PresenceUser>, bool) {
    let mut used: u64 = 2;
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        let size = serde_json::to_string(&u)
            .map(|t| t.len() as u64 + 1)
            .unwrap_or(u64::MAX);
        used = used.saturating_add(size);
        if used > max_bytes {
            return (out, true);
        }
        out.push(u);
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_timers_close_at_exp_and_hint_before_it() {
        let now = 1_700_000_000_000;
        let exp = 1_700_000_100; // 100 s from now
        let t = token_timers(exp, 30, now);
        assert_eq!(t.expiry, Duration::from_secs(100));
        assert_eq!(t.hint, Some(Duration::from_secs(70)));
        // Shorter than twice the hint: halfway.
        let t = token_timers(exp, 80, now);
        assert_eq!(t.hint, Some(Duration::from_secs(50)));
        // Hints off.
        assert_eq!(token_timers(exp, 0, now).hint, None);
        // Passed (accepted within the connect leeway): close and hint at once.
        let t = token_timers(exp - 103, 30, now);
        assert_eq!((t.expiry, t.hint), (Duration::ZERO, Some(Duration::ZERO)));
        // Far away (even u64::MAX): capped, never overflowing; no hint yet.
        let t = token_timers(u64::MAX, 30, now);
        assert_eq!((t.expiry, t.hint), (MAX_TIMER, None));
    }
}
