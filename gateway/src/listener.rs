//! The accept loop: who may hold a socket on this node, and for how long.
//!
//! Every accepted TCP connection is first *pending*: it has not yet sent a
//! complete HTTP request (or, for a WebSocket, a `hello` that authenticated).
//! Pending connections cost a file descriptor and buffers while giving nothing
//! back, which is what a slowloris attack buys. [`Admission`] bounds them:
//!
//! - at most `--max-pending-connections` overall (never more than a quarter of
//!   the process's file limit); when full, the *oldest* pending connection is
//!   closed to make room, so a flood of stalled sockets cannot keep a real
//!   client (which finishes its handshake in milliseconds) out;
//! - at most `--max-pending-per-ip` from one source address, and at most
//!   `--accepts-per-ip-per-sec` new connections per second from it (burst
//!   `--accept-burst-per-ip`); addresses in `--per-ip-exempt` (by default the
//!   local host, where a load balancer or proxy would sit) skip the per-IP
//!   limits but not the overall one.
//!
//! HTTP/1 itself is served by hyper with its timer: request headers must
//! arrive within `--http-header-timeout-ms` of the accept or of the previous
//! response (so an idle keep-alive connection is closed after it too), and may
//! be at most `--max-header-bytes`. Request bodies are bounded in time by the
//! router (`http::router`).
//!
//! Sockets close lingering (see [`LingerStream`]): unread input is drained
//! after the last write, so the peer receives our final bytes (an HTTP error,
//! a WebSocket close frame) instead of a TCP reset that would discard them.

use std::collections::VecDeque;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use dashmap::DashMap;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tracing::{debug, warn};

use crate::config::HttpConfig;
use crate::shutdown::Shutdown;

/// How long a closing socket keeps reading (and dropping) what the peer
/// still sends, at most.
const LINGER: Duration = Duration::from_secs(2);
/// Bytes a closing socket reads and drops, at most.
const LINGER_BYTES: usize = 1 << 20;

/// The limits on pending connections and the per-IP accept rate.
pub struct Admission {
    max_pending: usize,
    max_pending_per_ip: usize,
    rate: f64,
    burst: f64,
    exempt: Vec<ipnet::IpNet>,
    /// Pending connections now.
    pending: AtomicUsize,
    /// Per source address: pending count and accept-rate bucket. An entry goes
    /// when its address has nothing pending and a full bucket (`sweep`).
    per_ip: DashMap<IpAddr, IpState>,
    /// Pending connections in accept order, oldest first, for eviction. Entries
    /// whose slot was released are skipped and compacted away; a std Mutex is
    /// right here: held for a few pointer moves, never across `.await`.
    order: Mutex<VecDeque<Weak<SlotInner>>>,
}

struct IpState {
    pending: usize,
    tokens: f64,
    refilled: Instant,
}

/// Why a connection was refused at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many new connections per second from this address.
    Rate,
    /// Too many pending connections from this address.
    PendingPerIp,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Rate => "accept_rate",
            Refusal::PendingPerIp => "pending_per_ip",
        }
    }
}

impl Admission {
    pub fn new(cfg: &HttpConfig) -> Arc<Admission> {
        let mut max_pending = cfg.max_pending_connections as usize;
        if let Some(files) = file_limit() {
            // Leave three quarters of the descriptors to live connections,
            // the store and the listener: pending ones can never starve them.
            max_pending = max_pending.min((files / 4).max(16));
        }
        Arc::new(Admission {
            max_pending: max_pending.max(1),
            max_pending_per_ip: cfg.max_pending_per_ip.max(1) as usize,
            rate: cfg.accepts_per_ip_per_sec as f64,
            burst: cfg.accept_burst_per_ip.max(1) as f64,
            exempt: cfg.per_ip_exempt_nets(),
            pending: AtomicUsize::new(0),
            per_ip: DashMap::new(),
            order: Mutex::new(VecDeque::new()),
        })
    }

    /// The overall pending bound in force (after the file-limit clamp).
    pub fn max_pending(&self) -> usize {
        self.max_pending
    }

    fn exempt(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.exempt.iter().any(|n| n.contains(&ip))
    }

    /// Admit a new connection from `ip` as pending, or refuse it.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let ip = canonical(ip);
        let per_ip = !self.exempt(ip);
        if per_ip {
            let now = Instant::now();
            let mut st = self.per_ip.entry(ip).or_insert_with(|| IpState {
                pending: 0,
                tokens: self.burst,
                refilled: now,
            });
            if self.rate > 0.0 {
                let dt = now.duration_since(st.refilled).as_secs_f64();
                st.tokens = (st.tokens + dt * self.rate).min(self.burst);
                st.refilled = now;
                if st.tokens < 1.0 {
                    return Err(Refusal::Rate);
                }
                st.tokens -= 1.0;
            }
            if st.pending >= self.max_pending_per_ip {
                return Err(Refusal::PendingPerIp);
            }
            st.pending += 1;
        }
        // Overall: make room by closing the oldest pending connection.
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max_pending {
            self.evict_oldest("pending connections at their bound");
        }
        metrics::gauge!("chorus_pending_connections").increment(1.0);
        let inner = Arc::new(SlotInner {
            admission: self.clone(),
            ip: per_ip.then_some(ip),
            released: AtomicBool::new(false),
            evict: CancellationToken::new(),
        });
        if let Ok(mut order) = self.order.lock() {
            order.push_back(Arc::downgrade(&inner));
            // Compact released entries so the queue stays near `pending` long.
            if order.len() > 2 * self.max_pending + 64 {
                order.retain(|w| w.upgrade().is_some_and(|s| !s.is_released()));
            }
        }
        Ok(Slot(inner))
    }

    /// Close the oldest pending connection (at the bound, or when the process
    /// is out of file descriptors). Returns whether one was found.
    pub fn evict_oldest(&self, why: &'static str) -> bool {
        loop {
            let next = match self.order.lock() {
                Ok(mut order) => order.pop_front(),
                Err(_) => None,
            };
            let Some(weak) = next else { return false };
            if let Some(slot) = weak.upgrade()
                && !slot.is_released()
            {
                metrics::counter!("chorus_pending_evicted_total").increment(1);
                debug!(why, "closing the oldest pending connection");
                slot.evict.cancel();
                slot.release();
                return true;
            }
        }
    }

    fn release(&self, ip: Option<IpAddr>) {
        self.pending.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("chorus_pending_connections").decrement(1.0);
        if let Some(ip) = ip
            && let Some(mut st) = self.per_ip.get_mut(&ip)
        {
            st.pending = st.pending.saturating_sub(1);
        }
    }

    /// Forget addresses with nothing pending and a full bucket.
    pub fn sweep(&self) {
        let now = Instant::now();
        let (rate, burst) = (self.rate, self.burst);
        self.per_ip.retain(|_, st| {
            let tokens = st.tokens + now.duration_since(st.refilled).as_secs_f64() * rate;
            st.pending > 0 || (rate > 0.0 && tokens < burst)
        });
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The soft limit on open files of this process, if known.
fn file_limit() -> Option<usize> {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    lim.current.map(|c| c.min(usize::MAX as u64) as usize)
}

/// Raise the soft file limit to the hard one (as Go's runtime does): a
/// gateway's capacity is its descriptors.
pub fn raise_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            debug!(error = %e, "could not raise the open file limit");
        }
    }
}

/// A connection's place among the pending ones. Released when the connection
/// stops being pending (its first HTTP request is read, or its WebSocket
/// `hello` authenticated) or when the last handle drops.
#[derive(Clone)]
pub struct Slot(Arc<SlotInner>);

struct SlotInner {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
    released: AtomicBool,
    /// Cancelled when this connection is evicted.
    evict: CancellationToken,
}

impl SlotInner {
    fn is_released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }
    fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.admission.release(self.ip);
        }
    }
}

impl Drop for SlotInner {
    fn drop(&mut self) {
        self.release();
    }
}

impl Slot {
    /// The connection is no longer pending.
    pub fn release(&self) {
        self.0.release();
    }

    /// Resolves when this connection was evicted while pending.
    pub async fn evicted(&self) {
        self.0.evict.cancelled().await
    }

    /// Whether this connection was evicted.
    pub fn is_evicted(&self) -> bool {
        self.0.evict.is_cancelled()
    }
}

/// A TCP stream that closes lingering: when dropped, it shuts its write side
/// (flushing what was written, then FIN) and reads and drops what the peer
/// still sends, for at most [`LINGER`] or [`LINGER_BYTES`], before the
/// descriptor is closed. Closing a socket with unread input makes the kernel
/// send a reset, and a reset makes the peer's kernel discard data the peer has
/// not read yet, such as our close frame (nginx's `lingering_close`).
///
/// A connection that was never written to has no final bytes to protect and
/// closes at once: a stalled pending connection that is evicted (or timed
/// out) must give its descriptor back now, not after [`LINGER`], or a flood
/// of them keeps the process at its file limit and real clients wait.
///
/// Nor does a connection evicted while pending (see [`LingerStream::abort_on`]).
pub struct LingerStream {
    stream: Option<TcpStream>,
    /// Whether any byte was written: only then is the close lingering.
    wrote: bool,
    /// Cancelled when the connection was evicted: then it closes at once.
    abort: Option<CancellationToken>,
}

impl LingerStream {
    pub fn new(s: TcpStream) -> LingerStream {
        LingerStream {
            stream: Some(s),
            wrote: false,
            abort: None,
        }
    }

    /// Close at once, without lingering, once `evicted` is cancelled.
    pub fn abort_on(mut self, evicted: CancellationToken) -> LingerStream {
        self.abort = Some(evicted);
        self
    }

    fn inner(self: Pin<&mut Self>) -> io::Result<Pin<&mut TcpStream>> {
        match self.get_mut().stream.as_mut() {
            Some(s) => Ok(Pin::new(s)),
            None => Err(io::Error::from(io::ErrorKind::NotConnected)),
        }
    }

    /// Note a write's outcome: bytes went out.
    fn note(self: Pin<&mut Self>, r: &Poll<io::Result<usize>>) {
        if matches!(r, Poll::Ready(Ok(n)) if *n > 0) {
            self.get_mut().wrote = true;
        }
    }
}

impl Drop for LingerStream {
    fn drop(&mut self) {
        let Some(mut s) = self.stream.take() else {
            return;
        };
        if !self.wrote || self.abort.as_ref().is_some_and(|a| a.is_cancelled()) {
            // Nothing of ours to deliver, or evicted: close now.
            drop(s);
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            let _ = tokio::time::timeout(LINGER, async {
                let _ = s.shutdown().await;
                let mut buf = [0u8; 4096];
                let mut left = LINGER_BYTES;
                while left > 0 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            })
            .await;
        });
    }
}

impl AsyncRead for LingerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for LingerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = match self.as_mut().inner() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        };
        self.note(&r);
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = match self.as_mut().inner() {
            Ok(s) => s.poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        };
        self.note(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// Serve HTTP/1 (with WebSocket upgrades) on `listener` until `stop` begins,
/// then let in-flight requests finish (they are told to close) within
/// `grace`. Each HTTP connection's task is started through `stop`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    cfg: &HttpConfig,
    stop: Shutdown,
    grace: Duration,
) {
    let admission = Admission::new(cfg);
    debug!(max_pending = admission.max_pending(), "accepting");
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(cfg.http_header_timeout_ms.max(1)))
        .max_buf_size((cfg.max_header_bytes as usize).max(8192));
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    accept_error(&admission, e).await;
                    continue;
                }
            },
            _ = sweep.tick() => {
                admission.sweep();
                continue;
            }
            _ = stop.cancelled() => break,
        };
        let slot = match admission.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                metrics::counter!("chorus_connections_refused_total", "reason" => why.as_str())
                    .increment(1);
                debug!(%peer, reason = why.as_str(), "connection refused");
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = http
            .serve_connection(
                TokioIo::new(LingerStream::new(tcp).abort_on(slot.0.evict.clone())),
                hyper::service::service_fn({
                    let (app, slot) = (app.clone(), slot.clone());
                    move |mut req: hyper::Request<Incoming>| {
                        // The WebSocket route takes the slot along and releases
                        // it at `hello`; every other request ends pending here.
                        if req.uri().path() != "/ws" {
                            slot.release();
                        }
                        req.extensions_mut().insert(ConnectInfo(peer));
                        req.extensions_mut().insert(slot.clone());
                        app.clone().oneshot(req.map(axum::body::Body::new))
                    }
                }),
            )
            .with_upgrades();
        let stopped = stop.cancelled_owned();
        stop.spawn(async move {
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        debug!(%peer, error = %e, "http connection ended");
                    }
                }
                _ = slot.evicted() => {}
                _ = stopped => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.as_mut().await;
                }
            }
            drop(slot);
        });
    }
    drop(listener);
    stop.wait_until(tokio::time::Instant::now() + grace).await;
}

/// A failed accept. Out of file descriptors, close the oldest pending
/// connection, and back off briefly either way (the error repeats at once).
async fn accept_error(admission: &Admission, e: io::Error) {
    let out_of_files = matches!(e.raw_os_error(), Some(23 | 24));
    metrics::counter!("chorus_accept_errors_total").increment(1);
    if out_of_files {
        if !admission.evict_oldest("out of file descriptors") {
            warn!(error = %e, "accept failed: out of file descriptors");
        }
    } else {
        debug!(error = %e, "accept failed");
    }
    tokio::time::sleep(Duration::from_millis(if out_of_files { 20 } else { 5 })).await;
}
