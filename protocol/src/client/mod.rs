//! An async Rust client for the chorus gateway (feature `client`).
//!
//! Used by the integration tests, the chaos harness and the load generator, so
//! it stays small and cheap: one background task per connection, no
//! per-message allocation beyond decoding the frame.
//!
//! # Shape
//!
//! - [`Client::connect`] / [`Client::connect_resume`] open the WebSocket, send
//!   `hello` and return once `welcome` arrived.
//! - Requests ([`ClientHandle::join`], [`ClientHandle::send`],
//!   [`ClientHandle::history`], ...) live on [`ClientHandle`], which [`Client`]
//!   dereferences to. A handle is `Clone + Send + Sync`: get one with
//!   [`Client::handle`] to send from other tasks while the [`Client`] owner
//!   drains events.
//! - Everything the server sends that is not a reply (messages, receipts,
//!   typing, presence diffs, `reconnect` and `refresh_needed` hints, errors
//!   without a waiting request, the final close) arrives through
//!   [`Client::next_event`].
//!
//! # The application must drain events
//!
//! Events go through a bounded channel ([`ClientConfig::event_capacity`],
//! default 65536). When it is full the background task **waits** for room:
//! it then stops reading the socket, stops answering the server's `ping`s and
//! stops writing requests, so pending requests time out and the server will
//! eventually close the connection (4002 slow consumer or 4001 heartbeat
//! timeout). Keep calling [`Client::next_event`] (or drop the [`Client`]).
//!
//! # Ordering, de-duplication and cursors
//!
//! The task tracks the last `seq` per room. A `msg` with `seq <=` the last one
//! is dropped and counted ([`ClientHandle::duplicates_dropped`]); a `msg` with
//! `seq > last + 1` is delivered after an [`Event::Gap`] (a correct server never
//! causes one; counted in [`ClientHandle::gaps`]). [`Client::cursors`] is the last
//! seq per room *returned by [`Client::next_event`]* (not merely received), so a
//! [`Resume`] built from [`Client::resume_state`] never skips a message the
//! application has not seen.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Re-export of the WebSocket library, for [`ClientHandle::send_raw_message`]
/// and [`connect_ws`] users.
pub use tokio_tungstenite::tungstenite;

use crate::codes::ErrorCode;
use crate::frame::{
    ClientFrame, Json, Limits, Message, PROTOCOL_VERSION, PresenceUser, Receipt, Resume, RoomState,
    SUBPROTOCOL, ServerFrame,
};

/// The raw WebSocket stream type returned by [`connect_ws`].
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

const PONG: &str = r#"{"op":"pong"}"#;
/// Requests queued towards the socket task before `send` callers wait.
const OUTBOUND_CAPACITY: usize = 1024;
/// Frames written before one flush.
const MAX_WRITE_BATCH: usize = 128;
/// How long a graceful close waits for the server's close reply.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Write timeout when dead-connection detection is off.
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// How to connect. Build with [`ClientConfig::new`] / [`ClientConfig::dev`] and
/// the `with_*` methods, or with struct update syntax over `Default`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://host:port/ws`, may include `?access_token=` or `?user=` (see [`dev_url`]).
    pub url: String,
    /// JWT sent in `hello.token`.
    pub token: Option<String>,
    /// Device name sent in `hello.device`.
    pub device: Option<String>,
    /// Presence metadata sent in `hello.meta`.
    pub meta: Option<Json>,
    /// Timeout of one `send` attempt (until its `ack` or `error`). Default 10 s.
    pub send_timeout: Duration,
    /// Attempts made by [`ClientHandle::send_with_retry`]. Default 5.
    pub max_send_attempts: u32,
    /// Timeout of other requests (join, leave, history, presence, ping). Default 30 s.
    pub request_timeout: Duration,
    /// Timeout of the TCP connect + WebSocket upgrade, and separately of
    /// `hello` -> `welcome`. Default 10 s.
    pub connect_timeout: Duration,
    /// Capacity of the event channel. Default 65536. See the module docs: the
    /// application must drain it.
    pub event_capacity: usize,
    /// Extra HTTP headers on the upgrade request, e.g.
    /// `("Authorization".into(), format!("Bearer {jwt}"))`.
    pub headers: Vec<(String, String)>,
    /// Subprotocols offered in `Sec-WebSocket-Protocol`. Default `["chorus.v1"]`.
    /// Note: the WebSocket library fails the handshake if subprotocols are
    /// offered and the server does not echo one of them; use an empty list to
    /// offer none.
    pub subprotocols: Vec<String>,
    /// `hello.v`. Default 1 (tests set another value to get close 4506).
    pub protocol_version: u32,
    /// Answer the server's `{"op":"ping"}` with `{"op":"pong"}`. Default true
    /// (tests turn it off to provoke close 4001).
    pub auto_pong: bool,
    /// Treat the connection as dead when no frame arrives for
    /// [`ClientConfig::dead_after`]: it is dropped and [`Event::Closed`] with
    /// `code: None` is emitted. Default true.
    pub detect_dead: bool,
    /// Silence after which the connection is dead. `None` (default):
    /// `2 x welcome.heartbeat_ms + 1 s`.
    pub dead_after: Option<Duration>,
    /// First back-off step of [`ClientHandle::send_with_retry`]. Default 50 ms.
    pub retry_base: Duration,
    /// Largest back-off step of [`ClientHandle::send_with_retry`]. Default 2 s.
    pub retry_cap: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            url: String::new(),
            token: None,
            device: None,
            meta: None,
            send_timeout: Duration::from_secs(10),
            max_send_attempts: 5,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            event_capacity: 65536,
            headers: Vec::new(),
            subprotocols: vec![SUBPROTOCOL.to_owned()],
            protocol_version: PROTOCOL_VERSION,
            auto_pong: true,
            detect_dead: true,
            dead_after: None,
            retry_base: Duration::from_millis(50),
            retry_cap: Duration::from_secs(2),
        }
    }
}

impl ClientConfig {
    /// Defaults with this URL.
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            ..Default::default()
        }
    }

    /// Defaults with `dev_url(base, user)` (dev-mode authentication).
    pub fn dev(base: &str, user: &str) -> Self {
        ClientConfig::new(dev_url(base, user))
    }

    /// Set `hello.token`.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Set `hello.device`.
    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = Some(device.into());
        self
    }

    /// Set `hello.meta`.
    pub fn with_meta(mut self, meta: Json) -> Self {
        self.meta = Some(meta);
        self
    }

    /// Add an HTTP header to the upgrade request.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Send the JWT as `Authorization: Bearer <jwt>`.
    pub fn with_bearer(self, jwt: &str) -> Self {
        self.with_header("Authorization", format!("Bearer {jwt}"))
    }
}

/// `base` with `user=<user>` appended to the query (dev-mode authentication).
pub fn dev_url(base: &str, user: &str) -> String {
    with_query(base, "user", user)
}

/// `base` with `access_token=<jwt>` appended to the query.
pub fn token_url(base: &str, jwt: &str) -> String {
    with_query(base, "access_token", jwt)
}

/// `base` with `key=value` appended to the query, the value percent-encoded.
pub fn with_query(base: &str, key: &str, value: &str) -> String {
    let sep = if base.contains('?') {
        if base.ends_with('?') || base.ends_with('&') {
            ""
        } else {
            "&"
        }
    } else {
        "?"
    };
    let mut url = String::with_capacity(base.len() + key.len() + value.len() + 2);
    url.push_str(base);
    url.push_str(sep);
    url.push_str(key);
    url.push('=');
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            url.push(b as char);
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// A fresh client message id (UUID v7 text).
pub fn new_cid() -> String {
    uuid::Uuid::now_v7().to_string()
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// TCP connect or the WebSocket upgrade failed (not an HTTP rejection).
    #[error("connect failed: {0}")]
    Connect(String),
    /// The server answered the upgrade request with a non-101 status.
    #[error("websocket upgrade rejected: HTTP {status}: {body}")]
    Http { status: u16, body: String },
    /// The connection is closed (or closed while waiting). `code` is the
    /// WebSocket close code if a close frame arrived.
    #[error("connection closed (code {code:?}): {reason}")]
    Closed { code: Option<u16>, reason: String },
    /// The server answered the request with an `error` frame.
    #[error("server error {}: {message}", .code.as_str())]
    Server {
        code: ErrorCode,
        message: String,
        retryable: bool,
        retry_after_ms: Option<u64>,
    },
    /// No reply within the timeout.
    #[error("request timed out")]
    Timeout,
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether retrying the same request (same `cid`) on the same connection
    /// can succeed: retryable server errors and timeouts.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Server { retryable, .. } => *retryable,
            ClientError::Timeout => true,
            _ => false,
        }
    }

    /// The server error code, for [`ClientError::Server`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The WebSocket close code, for [`ClientError::Closed`].
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ClientError::Closed { code, .. } => *code,
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// Reply and event types
// ---------------------------------------------------------------------------

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

/// Something the server sent that is not a reply to a request.
#[derive(Debug, Clone)]
pub enum Event {
    /// A room message (already de-duplicated by seq).
    Msg(Message),
    /// The next `msg` of `room` has seq `got` but `expected` was due: messages
    /// were skipped. Emitted just before that [`Event::Msg`].
    Gap {
        room: String,
        expected: u64,
        got: u64,
    },
    /// A room re-joined by the server during a resume (a `joined` without id).
    Joined(Joined),
    /// Coalesced read/delivery positions.
    Receipt {
        room: String,
        receipts: Vec<Receipt>,
    },
    /// Someone else is typing.
    Typing {
        room: String,
        user: String,
        device: String,
        active: bool,
    },
    /// Users who came online in / went offline from a room; for a hot room,
    /// empty lists and the coalesced `online` count instead.
    PresenceDiff {
        room: String,
        joined: Vec<PresenceUser>,
        left: Vec<String>,
        online: Option<u64>,
    },
    /// The server asks to reconnect (usually followed by close 4000).
    Reconnect { reason: String, retry_after_ms: u64 },
    /// The connection's token expires at `exp` (Unix seconds): call
    /// [`ClientHandle::refresh`] with a fresh token before then, or the
    /// server closes with 4502.
    RefreshNeeded { exp: u64 },
    /// An `error` frame no request is waiting for (e.g. for `read`/`delivered`,
    /// or an unsolicited one).
    Error {
        code: ErrorCode,
        message: String,
        retryable: bool,
        retry_after_ms: Option<u64>,
        /// The `op` of the failed request, if the server said.
        request: Option<String>,
        cid: Option<String>,
        room: Option<String>,
    },
    /// A frame that is valid but unexpected here (e.g. an `ack` without id).
    Other(Box<ServerFrame>),
    /// A frame that could not be decoded (or a binary frame).
    Invalid { text: String, error: String },
    /// The connection ended; the last event. `code` is the WebSocket close
    /// code when a close frame arrived, `None` for a dropped or dead connection.
    Closed { code: Option<u16>, reason: String },
}

/// What flows through the event channel: events, and cursor updates kept in
/// order with them so [`Client::cursors`] matches what was returned.
enum Inbound {
    Event(Event),
    /// The room's cursor is now this (after a `joined`).
    Cursor(String, u64),
    /// The room was left: drop its cursor.
    Forget(String),
}

// ---------------------------------------------------------------------------
// Shared state between handles and the socket task
// ---------------------------------------------------------------------------

type Reply = Result<ServerFrame, ClientError>;

#[derive(Clone)]
struct CloseInfo {
    code: Option<u16>,
    reason: String,
}

impl CloseInfo {
    fn error(&self) -> ClientError {
        ClientError::Closed {
            code: self.code,
            reason: self.reason.clone(),
        }
    }
}

#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set once when the connection ends; later requests fail at once.
    closed: Option<CloseInfo>,
}

enum Outbound {
    /// An encoded frame.
    Text(String),
    /// An encoded `join`: the task resets the room's cursor to `since` before
    /// writing it (replayed messages follow).
    Join {
        room: String,
        since: Option<u64>,
        text: String,
    },
    /// Anything, as is.
    Raw(WsMessage),
}

struct Shared {
    out: mpsc::Sender<Outbound>,
    // A std Mutex, not tokio's: it is only held for a HashMap insert/remove
    // (never across an .await), which is cheaper than an async lock, and it
    // must be usable from synchronous code: the `Drop` of a cancelled request
    // (WaiterGuard) and the `Drop` of an aborted socket task.
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    duplicates: AtomicU64,
    gaps: AtomicU64,
    send_timeout: Duration,
    request_timeout: Duration,
    max_send_attempts: u32,
    retry_base: Duration,
    retry_cap: Duration,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn closed_error(&self) -> ClientError {
        match &self.lock().closed {
            Some(info) => info.error(),
            None => ClientError::Closed {
                code: None,
                reason: "connection task ended".into(),
            },
        }
    }

    /// Route a reply to its waiter; gives the frame back if nobody waits.
    fn complete(&self, id: u64, reply: Reply) -> Option<Reply> {
        let waiter = self.lock().waiters.remove(&id);
        match waiter {
            Some(tx) => {
                // The receiver may have timed out meanwhile: nothing to do then.
                let _ = tx.send(reply);
                None
            }
            None => Some(reply),
        }
    }

    /// Mark the connection closed and fail every waiting request.
    fn fail_all(&self, info: &CloseInfo) {
        let (waiters, info) = {
            let mut p = self.lock();
            let info = p.closed.get_or_insert_with(|| info.clone()).clone();
            (std::mem::take(&mut p.waiters), info)
        };
        for (_, tx) in waiters {
            let _ = tx.send(Err(info.error()));
        }
    }
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

// ---------------------------------------------------------------------------
// ClientHandle: requests
// ---------------------------------------------------------------------------

/// The request side of a connection: cheap to clone, `Send + Sync`, usable
/// from any task. Fails with [`ClientError::Closed`] once the connection ended.
#[derive(Clone)]
pub struct ClientHandle {
    shared: Arc<Shared>,
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

// ---------------------------------------------------------------------------
// Client: connection owner and event consumer
// ---------------------------------------------------------------------------

/// One connection to the gateway. Dereferences to [`ClientHandle`] for
/// requests; owns the event stream and the cursors.
///
/// Dropping a `Client` closes the connection gracefully (close 1000) in the
/// background; [`Client::abort`] drops it abruptly.
pub struct Client {
    handle: ClientHandle,
    welcome: Welcome,
    events: mpsc::Receiver<Inbound>,
    cursors: BTreeMap<String, u64>,
    close_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("session", &self.welcome.session)
            .field("user", &self.welcome.user)
            .field("closed", &self.handle.is_closed())
            .finish()
    }
}

impl Deref for Client {
    type Target = ClientHandle;

    fn deref(&self) -> &ClientHandle {
        &self.handle
    }
}

impl Client {
    /// Connect, send `hello`, and return once `welcome` arrives.
    pub async fn connect(cfg: ClientConfig) -> Result<Client, ClientError> {
        Client::open(cfg, None).await
    }

    /// Connect with `hello.resume`. Check [`Welcome::resumed`]: when true the
    /// server re-joins the rooms (replay, then [`Event::Joined`] per room);
    /// when false the application must join them again (with `since`).
    /// The cursors start as `resume.rooms` either way.
    pub async fn connect_resume(cfg: ClientConfig, resume: Resume) -> Result<Client, ClientError> {
        Client::open(cfg, Some(resume)).await
    }

    async fn open(cfg: ClientConfig, resume: Option<Resume>) -> Result<Client, ClientError> {
        let mut ws = connect_ws(&cfg).await?;
        let hello = ClientFrame::Hello {
            v: cfg.protocol_version,
            token: cfg.token.clone(),
            device: cfg.device.clone(),
            meta: cfg.meta.clone(),
            resume: resume.clone(),
        }
        .encode();
        let (welcome, early) = match tokio::time::timeout(
            cfg.connect_timeout,
            handshake(&mut ws, hello, cfg.auto_pong),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => return Err(ClientError::Timeout),
        };

        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
        let (ev_tx, ev_rx) = mpsc::channel(cfg.event_capacity.max(1));
        let (close_tx, close_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            out: out_tx,
            pending: Mutex::new(Pending::default()),
            next_id: AtomicU64::new(1),
            duplicates: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            send_timeout: cfg.send_timeout,
            request_timeout: cfg.request_timeout,
            max_send_attempts: cfg.max_send_attempts,
            retry_base: cfg.retry_base,
            retry_cap: cfg.retry_cap,
        });
        let dead_after = if cfg.detect_dead
            && (cfg.dead_after.is_some() || welcome.heartbeat_ms > 0)
        {
            Some(cfg.dead_after.unwrap_or_else(|| {
                Duration::from_millis(welcome.heartbeat_ms.saturating_mul(2).saturating_add(1000))
            }))
        } else {
            None
        };
        let mut tracker = SeqTracker::default();
        let mut cursors = BTreeMap::new();
        if let Some(r) = &resume {
            for (room, &seq) in &r.rooms {
                tracker.seed(room, seq);
            }
            cursors = r.rooms.clone();
        }
        let task = Task {
            ws,
            shared: shared.clone(),
            out_rx,
            events: ev_tx,
            tracker,
            auto_pong: cfg.auto_pong,
            dead_after,
            write_timeout: dead_after.unwrap_or(DEFAULT_WRITE_TIMEOUT),
            last_rx: Instant::now(),
            close: None,
        };
        let task = tokio::spawn(task.run(close_rx, early));
        Ok(Client {
            handle: ClientHandle { shared },
            welcome,
            events: ev_rx,
            cursors,
            close_tx: Some(close_tx),
            task: Some(task),
        })
    }

    /// The `welcome` of this connection.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// A clonable request handle for other tasks.
    pub fn handle(&self) -> ClientHandle {
        self.handle.clone()
    }

    fn note(&mut self, item: Inbound) -> Option<Event> {
        match item {
            Inbound::Event(ev) => {
                if let Event::Msg(m) = &ev {
                    match self.cursors.get_mut(m.room.as_str()) {
                        Some(c) => *c = m.seq,
                        None => {
                            self.cursors.insert(m.room.clone(), m.seq);
                        }
                    }
                }
                Some(ev)
            }
            Inbound::Cursor(room, seq) => {
                self.cursors.insert(room, seq);
                None
            }
            Inbound::Forget(room) => {
                self.cursors.remove(&room);
                None
            }
        }
    }

    /// The next event; `None` after [`Event::Closed`] has been returned.
    /// Cancel-safe (fine inside `select!` or `tokio::time::timeout`).
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            let item = self.events.recv().await?;
            if let Some(ev) = self.note(item) {
                return Some(ev);
            }
        }
    }

    /// The next event if one is already queued.
    pub fn try_next_event(&mut self) -> Option<Event> {
        loop {
            let item = self.events.try_recv().ok()?;
            if let Some(ev) = self.note(item) {
                return Some(ev);
            }
        }
    }

    /// The next event, or `None` if none arrives within `timeout` (or the
    /// stream ended).
    pub async fn next_event_timeout(&mut self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.next_event())
            .await
            .ok()
            .flatten()
    }

    /// Skip events until one matches `pred` (returned), the stream ends or
    /// `timeout` passes (`None`). Skipped events are dropped (cursors still
    /// advance).
    pub async fn wait_for(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Event) -> bool,
    ) -> Option<Event> {
        let find = async {
            while let Some(ev) = self.next_event().await {
                if pred(&ev) {
                    return Some(ev);
                }
            }
            None
        };
        tokio::time::timeout(timeout, find).await.ok().flatten()
    }

    /// Last seq returned by [`Client::next_event`] per room (after
    /// de-duplication), plus joined rooms with no message yet (at their tip).
    pub fn cursors(&self) -> BTreeMap<String, u64> {
        self.cursors.clone()
    }

    /// This connection's resume token with [`Client::cursors`]: pass to
    /// [`Client::connect_resume`].
    pub fn resume_state(&self) -> Resume {
        Resume {
            token: self.welcome.resume_token.clone(),
            rooms: self.cursors.clone(),
        }
    }

    /// Close normally (1000), waiting for the server's close reply (at most
    /// 5 s). Queued events are discarded; pending requests fail with
    /// [`ClientError::Closed`].
    pub async fn close(mut self) -> Result<(), ClientError> {
        // Drop the events first so the task never blocks on a full channel.
        self.events.close();
        while self.events.try_recv().is_ok() {}
        if let Some(tx) = self.close_tx.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await
                .map_err(|e| ClientError::Protocol(format!("socket task failed: {e}")))?;
        }
        Ok(())
    }

    /// Drop the socket abruptly, without a close frame (simulates a network
    /// drop: the server sees the TCP connection end). Pending requests fail
    /// with [`ClientError::Closed`].
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        // `close_tx` is dropped with `self`, which tells the task to close
        // gracefully; `abort` takes the task first.
        self.events.close();
    }
}

/// The WebSocket upgrade only (URL, headers, subprotocols from `cfg`), with
/// `connect_timeout`: for tests that speak the protocol by hand (e.g. a first
/// frame that is not `hello`).
pub async fn connect_ws(cfg: &ClientConfig) -> Result<WsStream, ClientError> {
    let mut req = cfg
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| ClientError::Connect(format!("bad url {:?}: {e}", cfg.url)))?;
    let headers = req.headers_mut();
    if !cfg.subprotocols.is_empty() {
        let v = HeaderValue::from_str(&cfg.subprotocols.join(", "))
            .map_err(|e| ClientError::Connect(format!("bad subprotocol: {e}")))?;
        headers.insert("Sec-WebSocket-Protocol", v);
    }
    for (k, v) in &cfg.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| ClientError::Connect(format!("bad header name {k:?}: {e}")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|e| ClientError::Connect(format!("bad header value for {k}: {e}")))?;
        headers.append(name, value);
    }
    // Small read buffer: hundreds of clients per process, small frames.
    let ws_cfg = WebSocketConfig::default().read_buffer_size(16 * 1024);
    let connect = tokio_tungstenite::connect_async_with_config(req, Some(ws_cfg), true);
    match tokio::time::timeout(cfg.connect_timeout, connect).await {
        Err(_) => Err(ClientError::Timeout),
        Ok(Ok((ws, _resp))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(ClientError::Http {
            status: resp.status().as_u16(),
            body: resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        }),
        Ok(Err(e)) => Err(ClientError::Connect(e.to_string())),
    }
}

/// Send `hello`, read until `welcome`. Frames other than `welcome`/`ping`
/// that arrive first are kept for the task.
async fn handshake(
    ws: &mut WsStream,
    hello: String,
    auto_pong: bool,
) -> Result<(Welcome, Vec<ServerFrame>), ClientError> {
    let closed = |e: tungstenite::Error| ClientError::Closed {
        code: None,
        reason: e.to_string(),
    };
    ws.send(WsMessage::Text(hello.into()))
        .await
        .map_err(closed)?;
    let mut early = Vec::new();
    loop {
        let msg = match ws.next().await {
            None => {
                return Err(ClientError::Closed {
                    code: None,
                    reason: "connection closed before welcome".into(),
                });
            }
            Some(Err(e)) => return Err(closed(e)),
            Some(Ok(m)) => m,
        };
        match msg {
            WsMessage::Text(t) => match ServerFrame::decode(t.as_str()) {
                Ok(ServerFrame::Welcome {
                    v,
                    session,
                    user,
                    tenant,
                    device,
                    node,
                    resume_token,
                    resume_ttl_ms,
                    heartbeat_ms,
                    idle_timeout_ms,
                    limits,
                    rooms,
                    resumed,
                }) => {
                    let w = Welcome {
                        v,
                        session,
                        user,
                        tenant,
                        device,
                        node,
                        resume_token,
                        resume_ttl_ms,
                        heartbeat_ms,
                        idle_timeout_ms,
                        limits,
                        rooms,
                        resumed,
                    };
                    return Ok((w, early));
                }
                Ok(ServerFrame::Ping {}) => {
                    if auto_pong {
                        ws.send(WsMessage::Text(Utf8Bytes::from_static(PONG)))
                            .await
                            .map_err(closed)?;
                    }
                }
                Ok(ServerFrame::Error {
                    code,
                    message,
                    retryable,
                    retry_after_ms,
                    ..
                }) => {
                    return Err(ClientError::Server {
                        code,
                        message,
                        retryable,
                        retry_after_ms,
                    });
                }
                Ok(other) => early.push(other),
                Err(e) => {
                    return Err(ClientError::Protocol(format!(
                        "undecodable frame before welcome: {e}: {}",
                        t.as_str()
                    )));
                }
            },
            WsMessage::Close(cf) => {
                let (code, reason) = close_parts(cf);
                return Err(ClientError::Closed { code, reason });
            }
            WsMessage::Binary(_) => {
                return Err(ClientError::Protocol("binary frame before welcome".into()));
            }
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
        }
    }
}

fn close_parts(cf: Option<CloseFrame>) -> (Option<u16>, String) {
    match cf {
        Some(cf) => (Some(u16::from(cf.code)), cf.reason.as_str().to_owned()),
        None => (None, String::new()),
    }
}

// ---------------------------------------------------------------------------
// The socket task
// ---------------------------------------------------------------------------

struct Task {
    ws: WsStream,
    shared: Arc<Shared>,
    out_rx: mpsc::Receiver<Outbound>,
    events: mpsc::Sender<Inbound>,
    tracker: SeqTracker,
    auto_pong: bool,
    dead_after: Option<Duration>,
    write_timeout: Duration,
    last_rx: Instant,
    /// Why the connection ended, once known (used by `Drop`).
    close: Option<CloseInfo>,
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
    async fn run(mut self, mut close_rx: oneshot::Receiver<()>, early: Vec<ServerFrame>) {
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

// ---------------------------------------------------------------------------
// Per-room seq tracking (pure)
// ---------------------------------------------------------------------------

#[derive(Debug, Default, Clone, Copy)]
struct RoomTrack {
    /// Last seq delivered for the room.
    last: Option<u64>,
    /// Whether a `joined` arrived (and no `left` since) on this connection.
    joined: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Deliver,
    Duplicate,
    /// Deliver, but `expected` was due first.
    Gap {
        expected: u64,
    },
}

/// De-duplication and gap detection per room.
#[derive(Debug, Default)]
struct SeqTracker {
    rooms: HashMap<String, RoomTrack>,
}

impl SeqTracker {
    #[allow(clippy::expect_used, reason = "inserted just above")]
    fn entry(&mut self, room: &str) -> &mut RoomTrack {
        // Look up by &str first: no allocation on the hot path.
        if !self.rooms.contains_key(room) {
            self.rooms.insert(room.to_owned(), RoomTrack::default());
        }
        self.rooms.get_mut(room).expect("just inserted")
    }

    /// Cursor from a resume: replay starts after `seq`.
    fn seed(&mut self, room: &str, seq: u64) {
        self.entry(room).last = Some(seq);
    }

    /// A `join` is being written. With `since` on a room not joined here,
    /// the replay starts after `since`.
    fn join_sent(&mut self, room: &str, since: Option<u64>) {
        if let Some(since) = since {
            let t = self.entry(room);
            if !t.joined {
                t.last = Some(since);
            }
        }
    }

    /// `joined` arrived: live messages follow the tip. Returns the cursor.
    fn joined(&mut self, room: &str, tip: u64) -> u64 {
        let t = self.entry(room);
        t.joined = true;
        let last = t.last.map_or(tip, |l| l.max(tip));
        t.last = Some(last);
        last
    }

    fn left(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    fn msg(&mut self, room: &str, seq: u64) -> Verdict {
        if let Some(t) = self.rooms.get_mut(room) {
            return Self::judge(t, seq);
        }
        Self::judge(self.entry(room), seq)
    }

    fn judge(t: &mut RoomTrack, seq: u64) -> Verdict {
        match t.last {
            Some(last) if seq <= last => Verdict::Duplicate,
            Some(last) if seq > last + 1 => {
                t.last = Some(seq);
                Verdict::Gap { expected: last + 1 }
            }
            _ => {
                t.last = Some(seq);
                Verdict::Deliver
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Back-off
// ---------------------------------------------------------------------------

/// A random u64 (from the OS, via UUID v4) for jitter.
pub fn random_u64() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().0
}

/// Exponential back-off with "equal jitter": the step is
/// `min(cap, base * 2^attempt)` and the delay is uniform in `[step/2, step]`
/// (`rand` picks the point). `attempt` starts at 0.
pub fn backoff_delay(attempt: u32, base: Duration, cap: Duration, rand: u64) -> Duration {
    let base_ms = base.as_millis().min(u64::MAX as u128) as u64;
    let cap_ms = cap.as_millis().min(u64::MAX as u128) as u64;
    let step = base_ms.saturating_mul(1u64 << attempt.min(32)).min(cap_ms);
    let half = step / 2;
    Duration::from_millis(half + rand % (step - half + 1))
}

/// The wait before retry number `attempt + 1`: `retry_after_ms` plus up to
/// 10 % (at least 10 ms) of jitter when the server gave it, else
/// [`backoff_delay`].
pub fn retry_delay(
    attempt: u32,
    retry_after_ms: Option<u64>,
    base: Duration,
    cap: Duration,
    rand: u64,
) -> Duration {
    match retry_after_ms {
        Some(ms) => {
            let spread = (ms / 10).max(10);
            Duration::from_millis(ms.saturating_add(rand % (spread + 1)))
        }
        None => backoff_delay(attempt, base, cap, rand),
    }
}

/// Reconnect back-off state for harnesses: [`Backoff::next_delay`] grows
/// exponentially (with jitter) up to `cap`; [`Backoff::reset`] after success.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First step.
    pub base: Duration,
    /// Largest step.
    pub cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A back-off from `base` up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next delay (jittered), advancing the attempt count.
    pub fn next_delay(&mut self) -> Duration {
        let d = backoff_delay(self.attempt, self.base, self.cap, random_u64());
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Back to the first step.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Delays handed out since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(2);
        for attempt in 0..40 {
            let step = (100u64 << attempt.min(20)).min(2000);
            for rand in [0, 1, 7, 12345, u64::MAX] {
                let d = backoff_delay(attempt, base, cap, rand).as_millis() as u64;
                assert!(
                    d >= step / 2 && d <= step,
                    "attempt {attempt}: {d} not in [{}, {step}]",
                    step / 2
                );
            }
        }
        assert_eq!(backoff_delay(0, base, cap, 0), Duration::from_millis(50));
        assert_eq!(backoff_delay(3, base, cap, 400), Duration::from_millis(800));
        // Zero base never panics.
        assert_eq!(backoff_delay(5, Duration::ZERO, cap, 99), Duration::ZERO);
    }

    #[test]
    fn retry_delay_honours_retry_after() {
        let base = Duration::from_millis(50);
        let cap = Duration::from_secs(2);
        for rand in [0, 3, 999, u64::MAX] {
            let d = retry_delay(4, Some(500), base, cap, rand).as_millis() as u64;
            assert!((500..=550).contains(&d), "{d}");
            let d = retry_delay(0, Some(0), base, cap, rand).as_millis() as u64;
            assert!(d <= 10, "{d}");
        }
        assert_eq!(
            retry_delay(1, None, base, cap, 0),
            Duration::from_millis(50)
        );
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(40));
        let ds: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert!(ds.iter().all(|&d| d <= 40), "{ds:?}");
        assert_eq!(b.attempts(), 6);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(10));
    }

    #[test]
    fn urls() {
        assert_eq!(dev_url("ws://h:1/ws", "alice"), "ws://h:1/ws?user=alice");
        assert_eq!(
            dev_url("ws://h:1/ws?x=1", "a b&c"),
            "ws://h:1/ws?x=1&user=a%20b%26c"
        );
        assert_eq!(dev_url("ws://h:1/ws?", "u"), "ws://h:1/ws?user=u");
        assert_eq!(
            token_url("ws://h/ws", "a.b-c_d"),
            "ws://h/ws?access_token=a.b-c_d"
        );
        assert_eq!(
            ClientConfig::dev("ws://h/ws", "bob").url,
            "ws://h/ws?user=bob"
        );
    }

    #[test]
    fn tracker_dedups_and_reports_gaps() {
        let mut t = SeqTracker::default();
        // First message of an unknown room is accepted as is.
        assert_eq!(t.msg("r", 5), Verdict::Deliver);
        assert_eq!(t.msg("r", 6), Verdict::Deliver);
        assert_eq!(t.msg("r", 6), Verdict::Duplicate);
        assert_eq!(t.msg("r", 3), Verdict::Duplicate);
        assert_eq!(t.msg("r", 9), Verdict::Gap { expected: 7 });
        assert_eq!(t.msg("r", 10), Verdict::Deliver);
        // Rooms are independent.
        assert_eq!(t.msg("s", 1), Verdict::Deliver);
        assert_eq!(t.msg("s", 1), Verdict::Duplicate);
    }

    #[test]
    fn tracker_join_since_and_tip() {
        let mut t = SeqTracker::default();
        // join since=3: replay 4, 5, then joined tip=5, live 6.
        t.join_sent("r", Some(3));
        assert_eq!(t.msg("r", 4), Verdict::Deliver);
        assert_eq!(t.msg("r", 5), Verdict::Deliver);
        assert_eq!(t.joined("r", 5), 5);
        assert_eq!(t.msg("r", 6), Verdict::Deliver);
        // Re-join of a joined room with an older since: replays are duplicates.
        t.join_sent("r", Some(0));
        assert_eq!(t.msg("r", 1), Verdict::Duplicate);
        assert_eq!(t.joined("r", 6), 6);
        // Join without since: live starts after the tip, no false gap.
        assert_eq!(t.joined("n", 40), 40);
        assert_eq!(t.msg("n", 41), Verdict::Deliver);
        // Not recovered (too many missed): nothing replayed, cursor jumps to tip.
        t.join_sent("big", Some(1));
        assert_eq!(t.joined("big", 50_000), 50_000);
        assert_eq!(t.msg("big", 50_001), Verdict::Deliver);
        // Leave forgets; a later join since resets.
        t.left("r");
        t.join_sent("r", Some(2));
        assert_eq!(t.msg("r", 3), Verdict::Deliver);
        // Resume seed.
        t.seed("z", 7);
        assert_eq!(t.msg("z", 7), Verdict::Duplicate);
        assert_eq!(t.msg("z", 8), Verdict::Deliver);
    }

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

    #[allow(dead_code, clippy::let_underscore_future)]
    fn futures_are_send(c: &Client, h: ClientHandle, cfg: ClientConfig, r: Resume) {
        fn send<T: Send>(_: T) {}
        fn sync<T: Send + Sync>() {}
        sync::<ClientHandle>();
        send(Client::connect(cfg.clone()));
        send(Client::connect_resume(cfg, r));
        send(h.join("r", None));
        send(h.send_with_retry("r", "c", Json::from_value(&1)));
        send(h.history("r", None, None, None));
        send(h.presence("r"));
        send(h.ping());
        send(h.read("r", 1));
        send(c.handle().leave("r", false));
    }

    #[test]
    fn error_helpers() {
        let e = ClientError::Server {
            code: ErrorCode::RateLimited,
            message: "slow".into(),
            retryable: true,
            retry_after_ms: Some(5),
        };
        assert!(e.is_retryable());
        assert_eq!(e.code(), Some(ErrorCode::RateLimited));
        assert!(e.to_string().contains("rate_limited"), "{e}");
        assert!(ClientError::Timeout.is_retryable());
        let c = ClientError::Closed {
            code: Some(4002),
            reason: "slow_consumer".into(),
        };
        assert!(!c.is_retryable());
        assert_eq!(c.close_code(), Some(4002));
    }

    /// A scripted in-process server: exercises the socket task end to end.
    mod fake_server {
        use super::*;
        use tokio::net::TcpListener;
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

        type ServerWs = WebSocketStream<TcpStream>;

        fn welcome(resumed: bool) -> String {
            ServerFrame::Welcome {
                v: 1,
                session: "s1".into(),
                user: "alice".into(),
                tenant: None,
                device: "default".into(),
                node: "n1".into(),
                resume_token: "rt".into(),
                resume_ttl_ms: 300_000,
                heartbeat_ms: 25_000,
                idle_timeout_ms: 60_000,
                limits: Limits {
                    max_frame_bytes: 65536,
                    max_message_bytes: 16384,
                    max_rooms: 100,
                    sends_per_sec: 50,
                    send_burst: 100,
                    max_history_page: 100,
                    max_replay: 10000,
                },
                rooms: vec![],
                resumed,
            }
            .encode()
        }

        fn msg(room: &str, seq: u64) -> String {
            ServerFrame::Msg(Message {
                room: room.into(),
                seq,
                id: format!("m{seq}"),
                sender: "bob".into(),
                cid: None,
                body: Json::from_text("1").unwrap(),
                meta: None,
                ts: 0,
            })
            .encode()
        }

        async fn recv(ws: &mut ServerWs) -> ClientFrame {
            loop {
                match ws.next().await.expect("client frame").expect("ws ok") {
                    WsMessage::Text(t) => {
                        return ClientFrame::decode(t.as_str()).expect("valid frame");
                    }
                    _ => continue,
                }
            }
        }

        async fn put(ws: &mut ServerWs, text: String) {
            ws.send(WsMessage::Text(text.into())).await.unwrap();
        }

        // The callback's error type is tungstenite's (large) HTTP response.
        #[allow(clippy::result_large_err)]
        async fn accept(listener: &TcpListener) -> ServerWs {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, mut resp: Response| {
                assert_eq!(req.uri().query(), Some("user=alice"));
                let proto = req.headers().get("Sec-WebSocket-Protocol").cloned();
                assert_eq!(
                    proto.as_ref().and_then(|v| v.to_str().ok()),
                    Some(SUBPROTOCOL)
                );
                resp.headers_mut()
                    .insert("Sec-WebSocket-Protocol", proto.unwrap());
                Ok(resp)
            })
            .await
            .unwrap()
        }

        #[tokio::test]
        async fn session_against_scripted_server() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("ws://{}/ws", listener.local_addr().unwrap());
            let server = tokio::spawn(async move {
                let mut ws = accept(&listener).await;
                match recv(&mut ws).await {
                    ClientFrame::Hello {
                        v, device, resume, ..
                    } => {
                        assert_eq!(v, 1);
                        assert_eq!(device.as_deref(), Some("phone"));
                        assert!(resume.is_none());
                    }
                    other => panic!("{other:?}"),
                }
                put(&mut ws, welcome(false)).await;
                // join since=1: replay 2, a duplicate 2, then 4 (gap), then joined tip=4.
                let ClientFrame::Join { id, room, since } = recv(&mut ws).await else {
                    panic!()
                };
                assert_eq!((room.as_str(), since), ("r", Some(1)));
                put(&mut ws, msg("r", 2)).await;
                put(&mut ws, msg("r", 2)).await;
                put(&mut ws, msg("r", 4)).await;
                let joined = ServerFrame::Joined {
                    id,
                    room: "r".into(),
                    tip: 4,
                    last_read: 0,
                    recovered: true,
                    replayed: 3,
                    presence: vec![],
                    online: 0,
                };
                put(&mut ws, joined.encode()).await;
                // send: rate limited once, then acked; both attempts carry the same cid.
                let ClientFrame::Send { id, cid, .. } = recv(&mut ws).await else {
                    panic!()
                };
                let mut err = ServerFrame::error(ErrorCode::RateLimited, "slow down");
                if let ServerFrame::Error {
                    id: eid,
                    retry_after_ms,
                    ..
                } = &mut err
                {
                    *eid = id;
                    *retry_after_ms = Some(5);
                }
                put(&mut ws, err.encode()).await;
                let ClientFrame::Send {
                    id,
                    cid: cid2,
                    body,
                    ..
                } = recv(&mut ws).await
                else {
                    panic!()
                };
                assert_eq!(cid, cid2);
                assert_eq!(body.get(), r#"{"t":"x"}"#);
                let ack = ServerFrame::Ack {
                    id,
                    room: "r".into(),
                    cid,
                    seq: 5,
                    msg_id: "m5".into(),
                    ts: 1,
                    duplicate: false,
                };
                put(&mut ws, ack.encode()).await;
                put(&mut ws, msg("r", 5)).await;
                // Server heartbeat is answered; client ping is answered.
                put(&mut ws, r#"{"op":"ping"}"#.into()).await;
                let mut got_pong = false;
                for _ in 0..2 {
                    match recv(&mut ws).await {
                        ClientFrame::Pong {} => got_pong = true,
                        ClientFrame::Ping { id } => {
                            put(&mut ws, ServerFrame::Pong { id }.encode()).await
                        }
                        other => panic!("{other:?}"),
                    }
                }
                assert!(got_pong);
                // An error without id becomes an event; a history request stays
                // unanswered and must fail when the connection closes.
                put(
                    &mut ws,
                    ServerFrame::error(ErrorCode::NotJoined, "no").encode(),
                )
                .await;
                assert!(matches!(recv(&mut ws).await, ClientFrame::History { .. }));
                put(
                    &mut ws,
                    r#"{"op":"reconnect","reason":"drain","retry_after_ms":7}"#.into(),
                )
                .await;
                let close = CloseFrame {
                    code: WsCloseCode::from(4002),
                    reason: "slow_consumer".into(),
                };
                ws.close(Some(close)).await.unwrap();
                while let Some(Ok(_)) = ws.next().await {}

                // Second connection: resume, then the client aborts.
                let mut ws = accept(&listener).await;
                let ClientFrame::Hello {
                    resume: Some(r), ..
                } = recv(&mut ws).await
                else {
                    panic!()
                };
                assert_eq!(r.token, "rt");
                assert_eq!(r.rooms.get("r"), Some(&5));
                put(&mut ws, welcome(true)).await;
                put(&mut ws, msg("r", 5)).await; // duplicate of what the client saw
                put(&mut ws, msg("r", 6)).await;
                let joined = ServerFrame::Joined {
                    id: None,
                    room: "r".into(),
                    tip: 6,
                    last_read: 0,
                    recovered: true,
                    replayed: 1,
                    presence: vec![],
                    online: 0,
                };
                put(&mut ws, joined.encode()).await;
                // The abort ends the stream without a close frame.
                let mut saw_close_frame = false;
                while let Some(Ok(m)) = ws.next().await {
                    saw_close_frame |= matches!(m, WsMessage::Close(_));
                }
                assert!(!saw_close_frame);
            });

            let cfg = ClientConfig::dev(&base, "alice").with_device("phone");
            let mut c = Client::connect(cfg.clone()).await.unwrap();
            assert_eq!(c.welcome().session, "s1");
            assert!(!c.welcome().resumed);
            let j = c.join("r", Some(1)).await.unwrap();
            assert_eq!((j.tip, j.replayed), (4, 3));
            let body = Json::from_text(r#"{"t":"x"}"#).unwrap();
            let ack = c.send_with_retry("r", "cid-1", body).await.unwrap();
            assert_eq!(ack.seq, 5);
            assert!(c.ping().await.unwrap() < Duration::from_secs(5));
            let h = c.handle();
            let hist = tokio::spawn(async move { h.history("r", None, Some(0), None).await });

            let mut seen = Vec::new();
            let mut gaps = Vec::new();
            let mut other = Vec::new();
            while let Some(ev) = c.next_event_timeout(Duration::from_secs(5)).await {
                match ev {
                    Event::Msg(m) => seen.push(m.seq),
                    Event::Gap { expected, got, .. } => gaps.push((expected, got)),
                    Event::Closed { code, reason } => {
                        assert_eq!(code, Some(4002));
                        assert_eq!(reason, "slow_consumer");
                        break;
                    }
                    ev => other.push(ev),
                }
            }
            assert_eq!(seen, vec![2, 4, 5]);
            assert_eq!(gaps, vec![(3, 4)]);
            assert_eq!(c.duplicates_dropped(), 1);
            assert_eq!(c.gaps(), 1);
            assert!(
                matches!(
                    other[0],
                    Event::Error {
                        code: ErrorCode::NotJoined,
                        ..
                    }
                ),
                "{other:?}"
            );
            assert!(
                matches!(
                    other[1],
                    Event::Reconnect {
                        retry_after_ms: 7,
                        ..
                    }
                ),
                "{other:?}"
            );
            assert_eq!(c.cursors().get("r"), Some(&5));
            let err = hist.await.unwrap().unwrap_err();
            assert_eq!(err.close_code(), Some(4002));
            assert_eq!(
                c.send_raw("x".into()).await.unwrap_err().close_code(),
                Some(4002)
            );
            assert!(c.next_event().await.is_none());

            let resume = c.resume_state();
            let mut c = Client::connect_resume(cfg, resume).await.unwrap();
            assert!(c.welcome().resumed);
            match c.next_event_timeout(Duration::from_secs(5)).await {
                Some(Event::Msg(m)) => assert_eq!(m.seq, 6),
                other => panic!("{other:?}"),
            }
            match c.next_event_timeout(Duration::from_secs(5)).await {
                Some(Event::Joined(j)) => assert_eq!(j.tip, 6),
                other => panic!("{other:?}"),
            }
            assert_eq!(c.duplicates_dropped(), 1);
            assert_eq!(c.cursors().get("r"), Some(&6));
            let h = c.handle();
            c.abort();
            server.await.unwrap();
            // Requests on a handle of an aborted client fail at once.
            let e = tokio::time::timeout(Duration::from_secs(5), h.ping())
                .await
                .unwrap();
            assert!(matches!(e, Err(ClientError::Closed { .. })), "{e:?}");
        }

        #[tokio::test]
        async fn close_and_drop_send_normal_close() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("ws://{}/ws", listener.local_addr().unwrap());
            let server = tokio::spawn(async move {
                for _ in 0..2 {
                    let mut ws = accept(&listener).await;
                    recv(&mut ws).await;
                    put(&mut ws, welcome(false)).await;
                    let mut code = None;
                    while let Some(Ok(m)) = ws.next().await {
                        if let WsMessage::Close(Some(cf)) = m {
                            code = Some(u16::from(cf.code));
                        }
                    }
                    assert_eq!(code, Some(1000));
                }
            });
            let c = Client::connect(ClientConfig::dev(&base, "alice"))
                .await
                .unwrap();
            c.close().await.unwrap();
            let c = Client::connect(ClientConfig::dev(&base, "alice"))
                .await
                .unwrap();
            let h = c.handle();
            drop(c);
            server.await.unwrap();
            // Fails (without hanging) whether or not the task has ended yet.
            assert!(matches!(h.ping().await, Err(ClientError::Closed { .. })));
            assert!(h.is_closed());
            assert_eq!(h.close_info().unwrap().0, Some(1000));
        }

        #[tokio::test]
        async fn handshake_close_is_reported() {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("ws://{}/ws", listener.local_addr().unwrap());
            let server = tokio::spawn(async move {
                let mut ws = accept(&listener).await;
                recv(&mut ws).await;
                let close = CloseFrame {
                    code: WsCloseCode::from(4501),
                    reason: "unauthorized".into(),
                };
                ws.close(Some(close)).await.unwrap();
                while let Some(Ok(_)) = ws.next().await {}
            });
            let err = Client::connect(ClientConfig::dev(&base, "alice"))
                .await
                .unwrap_err();
            assert_eq!(
                err,
                ClientError::Closed {
                    code: Some(4501),
                    reason: "unauthorized".into()
                }
            );
            server.await.unwrap();
        }
    }
}
