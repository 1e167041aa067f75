//! [`Client`]: opening a connection (upgrade, `hello`, `welcome`), then
//! owning its event stream and cursors.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::frame::{ClientFrame, Resume, ServerFrame};

use super::event::Inbound;
use super::seq::SeqTracker;
use super::shared::{Pending, Shared};
use super::task::{PONG, Task, close_parts};
use super::{ClientConfig, ClientError, ClientHandle, Event, Welcome};

/// The raw WebSocket stream type returned by [`connect_ws`].
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Requests queued towards the socket task before `send` callers wait.
const OUTBOUND_CAPACITY: usize = 1024;
/// Write timeout when dead-connection detection is off.
const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Json;

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
}
