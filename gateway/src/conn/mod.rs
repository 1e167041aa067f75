//! One WebSocket connection: the socket loop, the handshake, delivery, the
//! drain and the close. The requests it answers are in `ops`.
//!
//! One task per connection owns the socket (reads and writes) and the
//! connection's room cursors; others reach it through its bounded outbound queue
//! and its kill switch (see `hub`). The task `select!`s over: inbound frames,
//! the outbound queue, acks of sends in flight, the heartbeat tick, token
//! expiry, the kill switch and the node's shutdown.
//!
//! Layout: `handshake` (the first frame, authentication, admission, close
//! frames), `welcome` (the session attached, resumed rooms re-joined),
//! `delivery` (the outbound queue, gap fill and replay from history, writes
//! bounded by the write timeout), `drain` (shutdown), `timers` (token expiry
//! and `refresh_needed`). The connection is generic over its socket
//! ([`Socket`]): axum's WebSocket in the node, any stream and sink of
//! WebSocket messages in a test.

mod delivery;
mod drain;
mod handshake;
mod timers;
mod welcome;

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Message as WsMessage;
use chorus_protocol::{ClientFrame, CloseCode, Json, Resume, ServerFrame};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Sink, Stream, StreamExt};

use crate::auth::Identity;
use crate::clock::now_ms;
use crate::hub::{ConnHandle, Kill, Queue};
use crate::listener::Slot;
use crate::node::Node;
use crate::presence::PresenceEntry;
use crate::ratelimit::TokenBucket;
use crate::send::{Acked, SendError};

pub(crate) use delivery::ReplayError;
use handshake::{Accepted, classify, close};
use timers::{MAX_TIMER, exp_ms, token_timers};

/// What a connection reads from and writes to: axum's WebSocket, or in a test
/// any stream and sink of WebSocket messages.
pub(crate) trait Socket:
    Stream<Item = Result<WsMessage, axum::Error>>
    + Sink<WsMessage, Error = axum::Error>
    + Unpin
    + Send
    + 'static
{
}

impl<T> Socket for T where
    T: Stream<Item = Result<WsMessage, axum::Error>>
        + Sink<WsMessage, Error = axum::Error>
        + Unpin
        + Send
        + 'static
{
}

/// Credentials found on the upgrade request.
#[derive(Debug, Default, Clone)]
pub(crate) struct UpgradeAuth {
    /// From `Authorization: Bearer` or `?access_token=`.
    pub token: Option<String>,
    /// From `?user=` (dev mode only).
    pub dev_user: Option<String>,
}

/// The connection's end of its outbound queue: closes it when dropped, so
/// the hub stops queueing to a connection that is gone.
pub(crate) struct QueueRx(pub(crate) Arc<Queue>);

impl Drop for QueueRx {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Why the loop ended.
pub(crate) enum End {
    /// Close with this code.
    Close(CloseCode),
    /// The client closed or the socket broke: nothing more to send.
    Gone,
}

/// A send waiting for its commit.
pub(crate) type PendingAck =
    Pin<Box<dyn Future<Output = (Option<u64>, String, String, Result<Acked, SendError>)> + Send>>;

/// Sends in flight, acked as their commits finish. Made by the first send:
/// a `FuturesUnordered` allocates as it is created, and most connections
/// only receive.
#[derive(Default)]
pub(crate) struct Pending(Option<FuturesUnordered<PendingAck>>);

impl Pending {
    pub(crate) fn push(&mut self, ack: PendingAck) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(ack);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(FuturesUnordered::is_empty)
    }

    /// The next send to finish; `None` when none is in flight.
    pub(crate) async fn next(
        &mut self,
    ) -> Option<(Option<u64>, String, String, Result<Acked, SendError>)> {
        self.0.as_mut()?.next().await
    }
}

/// A room this connection has joined.
pub(crate) struct Joined {
    /// Public room name (as the client wrote it).
    pub(crate) public: String,
    /// Highest seq written to the client: live frames at or below it are
    /// duplicates, above it + 1 a gap to fill from history.
    pub(crate) last_seq: u64,
    /// Last typing start relayed, for the typing rate limit.
    pub(crate) last_typing: Option<Instant>,
    /// Whether the last typing event relayed was a start (a stop then clears it).
    pub(crate) typing_shown: bool,
}

/// Entry point from the HTTP upgrade. `slot` is this connection's place among
/// the pending ones (see `listener`): released once `hello` authenticated,
/// closed with `handshake_timeout` if the listener evicts it before that.
///
/// A panic anywhere in the connection's work is caught here: counted, logged
/// once (by the panic hook), answered with close 4003 `internal_error`; the
/// node and every other connection carry on.
pub(crate) async fn serve<S: Socket>(
    node: Arc<Node>,
    ws: S,
    creds: UpgradeAuth,
    slot: Option<Slot>,
) {
    let mut ws = ws;
    // Boxed, and freed once done: authentication's future is large, and
    // inline it would stay part of every connection's state.
    let Some(Accepted {
        ident,
        device,
        meta,
        resume,
    }) = Box::pin(handshake::accept(&node, &mut ws, creds, slot)).await
    else {
        return;
    };
    let user_key = ident.user_key();
    let queue = Queue::new(node.cfg.conn.outbound_queue);
    let handle = ConnHandle {
        id: node.connections.next_id(),
        tx: queue.clone(),
        kill: Arc::new(Kill::default()),
        max_bytes: node.cfg.conn.outbound_bytes,
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
        sends: TokenBucket::new(node.cfg.send.sends_per_sec, node.cfg.send.send_burst),
        frames: TokenBucket::new(node.cfg.conn.frames_per_sec, node.cfg.conn.frame_burst),
        last_seen: Instant::now(),
        pending: Pending::default(),
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
    node.connections.release(&user_key);
}

pub(crate) struct Conn<S> {
    pub(crate) node: Arc<Node>,
    pub(crate) ws: S,
    pub(crate) handle: ConnHandle,
    pub(crate) rx: QueueRx,
    pub(crate) ident: Identity,
    pub(crate) user_key: String,
    /// Session id (kept across resumes).
    pub(crate) session: String,
    /// This connection's attach generation of the session (see `Sessions::detach`).
    pub(crate) generation: u64,
    /// This connection's presence entry, once attached.
    pub(crate) entry: Option<PresenceEntry>,
    /// Room key -> cursor.
    pub(crate) rooms: HashMap<Arc<str>, Joined>,
    /// Send rate limit.
    pub(crate) sends: TokenBucket,
    /// Inbound frame flood limit.
    pub(crate) frames: TokenBucket,
    /// Last inbound frame, for the idle timeout.
    pub(crate) last_seen: Instant,
    /// Sends in flight, acked as their commits finish.
    pub(crate) pending: Pending,
    /// Set when `refresh` replaced the token: the loop re-arms the expiry and
    /// `refresh_needed` timers for the new `exp`.
    pub(crate) token_changed: bool,
}

pub(crate) type Step = Result<(), End>;

impl<S: Socket> Conn<S> {
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
        let heartbeat = self.node.cfg.conn.heartbeat();
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
                let t = token_timers(exp, self.node.cfg.auth.refresh_hint_secs, now_ms());
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
                inbound = self.ws.next() => Box::pin(self.on_inbound(inbound)).await,
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

    pub(crate) async fn on_inbound(
        &mut self,
        inbound: Option<Result<WsMessage, axum::Error>>,
    ) -> Step {
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

    /// Forget a room locally (this connection's cursor, the hub, and the
    /// node's subscription if it was the last member here).
    pub(crate) async fn drop_room(&mut self, key: &Arc<str>) {
        self.rooms.remove(key);
        self.node.fanout.leave(key, self.handle.id).await;
    }

    pub(crate) async fn on_tick(&mut self) -> Step {
        if self.last_seen.elapsed() > self.node.cfg.conn.idle_timeout() {
            return Err(End::Close(CloseCode::HeartbeatTimeout));
        }
        self.write(&ServerFrame::Ping {}).await
    }

    /// After the loop: close, leave the hub, start the presence grace.
    pub(crate) async fn finish(&mut self, end: End) {
        if let End::Close(code) = end {
            close(&mut self.ws, code, None).await;
        }
        let keys: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
        for key in &keys {
            self.drop_room(key).await;
        }
        if let Some(entry) = self.entry.take() {
            self.node
                .sessions
                .detach(self.session.clone(), self.generation, entry.user);
        }
    }
}
