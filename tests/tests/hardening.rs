//! Hardening regressions, through real sockets against a real `chorus`
//! process: slow and oversized HTTP input (slowloris), the pending-connection
//! and per-IP bounds of the accept loop, application-JSON rules ("poison
//! JSON") at every entry point and on stored rows, panics contained per
//! connection and per request, oversized frames answered with a close frame,
//! presence meta and reply bounds, the dev-mode origin check, the dev-auth
//! configuration rules and control frames before `hello`.
//!
//! Every test starts its own node on 127.0.0.1 (clients may bind 127.0.0.2,
//! which is loopback too, to stand for a second source address). Every wait
//! is bounded; the bounds are generous because the machine is small and other
//! test binaries run at the same time, but each one is far below what the
//! behaviour before the fix would take (a connection held forever).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use chorus_protocol::Json;
use chorus_protocol::client::{Client, ClientConfig, ClientError, Event, connect_ws, new_cid};
use chorus_tests::{API_KEY, GatewayProcess, binary, text};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Generous upper bound for anything the server should do "soon".
const T: Duration = Duration::from_secs(20);

/// A second loopback source address (Linux routes all of 127.0.0.0/8 to `lo`).
const OTHER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------
// Raw TCP / HTTP
// ---------------------------------------------------------------------------

/// The node's own listen address.
fn sock_addr(node: &GatewayProcess) -> SocketAddr {
    node.addr.parse().expect("node address")
}

/// A TCP connection to the node, from `from` (port chosen by the kernel) or
/// from the default source address.
async fn tcp_from(node: &GatewayProcess, from: Option<IpAddr>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    if let Some(ip) = from {
        socket
            .bind(SocketAddr::new(ip, 0))
            .expect("bind the client socket");
    }
    tokio::time::timeout(T, socket.connect(sock_addr(node)))
        .await
        .expect("connect in time")
        .expect("connect")
}

/// A connection that starts a WebSocket upgrade request and never finishes
/// its head (the slowloris pattern).
async fn stalled(node: &GatewayProcess, from: Option<IpAddr>) -> TcpStream {
    let mut s = tcp_from(node, from).await;
    // A write to a connection the server already refused can fail: the
    // caller checks the connection's fate by reading.
    let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
    s
}

/// How the server ended a connection we keep silent on.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// FIN (after the bytes shown, maybe none).
    Closed(String),
    /// A reset or another read error.
    Reset(String),
    /// Still open after the wait.
    Open,
}

/// Read (and keep) what the server sends until it ends the connection or
/// `within` passes.
async fn fate(s: &mut TcpStream, within: Duration) -> Fate {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return Fate::Open,
            Ok(Ok(0)) => return Fate::Closed(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Fate::Reset(e.to_string()),
        }
    }
}

/// Whether the server ended the connection within `within`.
async fn ended_within(s: &mut TcpStream, within: Duration) -> bool {
    !matches!(fate(s, within).await, Fate::Open)
}

/// Read one HTTP/1.1 response (head, then a `Content-Length` body) within
/// `within`: status and body. `None` if the connection ended before a head.
async fn read_response(s: &mut TcpStream, within: Duration) -> Option<(u16, String)> {
    let deadline = Instant::now() + within;
    let mut got: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!(
                "no response head within {within:?}: {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())
                .flatten()
        })
        .unwrap_or(0);
    while got.len() < head_end + len {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let end = got.len().min(head_end + len);
    Some((
        status,
        String::from_utf8_lossy(&got[head_end..end]).into_owned(),
    ))
}

/// Send a raw request on a fresh connection and read the response.
async fn exchange(node: &GatewayProcess, request: &[u8]) -> Option<(u16, String)> {
    let mut s = tcp_from(node, None).await;
    s.write_all(request).await.expect("write request");
    read_response(&mut s, T).await
}

/// A complete WebSocket upgrade request for `/ws` with these extra header
/// lines (each ending in `\r\n`).
fn upgrade_request(host: &str, extra: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "GET /ws?user=alice HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n"
    )
    .into_bytes();
    r.extend_from_slice(extra);
    r.extend_from_slice(b"\r\n");
    r
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// An HTTP client whose connections come from `ip`.
fn http_from(ip: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .local_address(ip)
        .build()
        .expect("http client")
}

/// GET with the API key; status and JSON body.
async fn get_json(node: &GatewayProcess, path: &str) -> (u16, Value) {
    let resp = http()
        .get(format!("{}{path}", node.http_url()))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    let body = resp.text().await.expect("body");
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"));
    (status, v)
}

/// POST raw JSON text to a room's messages with the API key.
async fn publish_raw(node: &GatewayProcess, room: &str, body: String) -> (u16, Value) {
    let resp = http()
        .post(format!("{}/v1/rooms/{room}/messages", node.http_url()))
        .header("X-Api-Key", API_KEY)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    (status, v)
}

/// The room's messages through `GET /v1/rooms/{room}/messages?after=0`.
async fn stored(node: &GatewayProcess, room: &str) -> Vec<Value> {
    let (status, page) = get_json(
        node,
        &format!("/v1/rooms/{room}/messages?after=0&limit=100"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["messages"].as_array().expect("messages").clone()
}

/// `GET /metrics` (from `from`, default source address otherwise).
async fn metrics_text(node: &GatewayProcess, from: Option<IpAddr>) -> String {
    let client = match from {
        Some(ip) => http_from(ip),
        None => http(),
    };
    let resp = client
        .get(format!("{}/metrics", node.http_url()))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    resp.text().await.expect("metrics text")
}

/// The sum of a metric's samples whose line contains every one of `labels`
/// (`reason="accept_rate"`), 0 when there are none.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---------------------------------------------------------------------------
// Raw WebSocket
// ---------------------------------------------------------------------------

/// A bare WebSocket: JSON text frames written and read by hand.
struct Raw<S> {
    ws: WebSocketStream<S>,
}

type RawWs = Raw<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

impl RawWs {
    /// Upgrade only (no hello).
    async fn open(url: &str) -> RawWs {
        let ws = connect_ws(&ClientConfig::new(url))
            .await
            .expect("websocket upgrade");
        Raw { ws }
    }

    /// Upgrade as `user` (JWT in the URL), `hello` with `extra` fields, `welcome`.
    async fn hello(node: &GatewayProcess, user: &str, extra: Value) -> (RawWs, Value) {
        let mut r = RawWs::open(&node.url_for(user)).await;
        let mut hello = json!({"op": "hello"});
        if let (Some(h), Some(e)) = (hello.as_object_mut(), extra.as_object()) {
            h.extend(e.clone());
        }
        r.send(hello).await;
        let w = r.recv().await;
        assert_eq!(w["op"], "welcome", "{w}");
        (r, w)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Raw<S> {
    async fn send(&mut self, v: Value) {
        self.text(v.to_string()).await;
    }

    async fn text(&mut self, s: impl Into<String>) {
        self.ws
            .send(WsMessage::Text(s.into().into()))
            .await
            .expect("write");
    }

    /// The next JSON text frame that is not a server `ping`, within `T`.
    async fn recv(&mut self) -> Value {
        loop {
            let m = tokio::time::timeout(T, self.ws.next())
                .await
                .expect("no frame from the server in time")
                .expect("stream ended")
                .expect("read failed");
            if let WsMessage::Text(t) = m {
                let v: Value = serde_json::from_str(t.as_str()).expect("server sent JSON");
                if v["op"] != "ping" {
                    return v;
                }
            } else if let WsMessage::Close(cf) = m {
                panic!("unexpected close: {cf:?}");
            }
        }
    }

    /// Skip frames until one carries this id.
    async fn reply(&mut self, id: u64) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let v = tokio::time::timeout_at(deadline, self.recv())
                .await
                .unwrap_or_else(|_| panic!("no reply to id {id} within {T:?}"));
            if v["id"] == id {
                return v;
            }
        }
    }

    /// Send a request and wait for the frame echoing its id.
    async fn request(&mut self, v: Value) -> Value {
        let id = v["id"].as_u64().expect("request with id");
        self.send(v).await;
        self.reply(id).await
    }

    /// Read until the close frame: its code and reason. Panics on a reset or
    /// an end without a close frame.
    async fn close_frame(&mut self) -> (u16, String) {
        let deadline = Instant::now() + T;
        loop {
            let m = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("no close frame in time");
            match m {
                Some(Ok(WsMessage::Close(Some(cf)))) => {
                    return (u16::from(cf.code), cf.reason.as_str().to_owned());
                }
                Some(Ok(WsMessage::Close(None))) => panic!("close frame without a code"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("read failed before the close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }
}

/// A WebSocket session for `user` over a connection from `from`: upgrade,
/// `hello`, `welcome`.
async fn ws_from(node: &GatewayProcess, from: IpAddr, user: &str) -> Raw<TcpStream> {
    let tcp = tcp_from(node, Some(from)).await;
    let req = node.url_for(user).into_client_request().expect("request");
    let (ws, _) = tokio::time::timeout(T, tokio_tungstenite::client_async(req, tcp))
        .await
        .expect("upgrade in time")
        .expect("websocket upgrade");
    let mut r = Raw { ws };
    r.send(json!({"op": "hello"})).await;
    let w = r.recv().await;
    assert_eq!(w["op"], "welcome", "{w}");
    r
}

/// A raw session joins `room`, sends one message and sees it back with its ack.
async fn raw_join_send<S: AsyncRead + AsyncWrite + Unpin>(r: &mut Raw<S>, room: &str) {
    let j = r
        .request(json!({"op": "join", "id": 1, "room": room}))
        .await;
    assert_eq!(j["op"], "joined", "{j}");
    let cid = new_cid();
    let ack = r
        .request(json!({"op": "send", "id": 2, "room": room, "cid": cid, "body": {"text": "hi"}}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
}

/// The node serves a new client: connect, join, send, and the message comes
/// back; within `within`.
async fn assert_node_serves_within(node: &GatewayProcess, within: Duration) -> Duration {
    let t0 = Instant::now();
    tokio::time::timeout(within, async {
        let user = format!("probe-{}", new_cid());
        let mut c = node.connect(&user).await;
        c.join("probe-room", None).await.expect("probe join");
        let cid = new_cid();
        let ack = c
            .send("probe-room", &cid, text("probe"), None)
            .await
            .expect("probe send");
        c.wait_for(T, |e| matches!(e, Event::Msg(m) if m.seq == ack.seq))
            .await
            .expect("probe msg back");
        c.close().await.expect("close");
    })
    .await
    .unwrap_or_else(|_| panic!("a normal client was not served within {within:?}"));
    t0.elapsed()
}

async fn assert_node_serves(node: &GatewayProcess) {
    assert_node_serves_within(node, T).await;
}

/// Wait for the end of the connection: its close code and reason.
async fn wait_closed(c: &mut Client) -> (Option<u16>, String) {
    match c.wait_for(T, |e| matches!(e, Event::Closed { .. })).await {
        Some(Event::Closed { code, reason }) => (code, reason),
        _ => panic!("no close within {T:?}"),
    }
}

/// JSON arrays nested `depth` deep: `[[[...]]]`.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// An error frame with this code whose message names `rule`.
fn assert_rule_error(v: &Value, id: u64, rule: &str) {
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["code"], "bad_request", "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("(rule: {rule})")), "{v}");
}

// ===========================================================================
// 1. Slowloris: pending connections, header and body timeouts, header size
// ===========================================================================

#[tokio::test]
async fn stalled_heads_beyond_the_file_limit_do_not_lock_out_a_real_client() {
    // 256 descriptors: the pending bound is clamped to 64. 300 stalled heads
    // are more than the process could hold open at all.
    let node = GatewayProcess::start_with_file_limit(256, &[]);
    let mut stalls = Vec::new();
    for _ in 0..300 {
        stalls.push(stalled(&node, None).await);
    }
    let took = assert_node_serves_within(&node, Duration::from_secs(10)).await;
    eprintln!("client served in {took:?} with 300 stalled heads open");
    // Promptly: evicted stalls give their descriptors back at once (they
    // were never written to, so they do not linger), so accepts do not fail
    // with EMFILE until lingering closes time out (2 s).
    assert!(
        took < ms(1500),
        "a normal client took {took:?} with 300 stalled heads open"
    );
    // Most of the stalled ones were closed to make room (oldest first).
    let mut ended = 0;
    for s in stalls.iter_mut().take(200) {
        if ended_within(s, ms(50)).await {
            ended += 1;
        }
    }
    assert!(
        ended >= 100,
        "only {ended} of the 200 oldest stalled heads were closed"
    );
    let m = metrics_text(&node, None).await;
    eprintln!(
        "evicted {}, accept errors {}",
        metric(&m, "chorus_pending_evicted_total", &[]),
        metric(&m, "chorus_accept_errors_total", &[]) + 0.0
    );
    assert!(
        metric(&m, "chorus_pending_evicted_total", &[]) >= 100.0,
        "{m}"
    );
    // And again, with the stalls still open.
    assert_node_serves_within(&node, Duration::from_secs(10)).await;
}

#[tokio::test]
async fn silent_upgraded_websockets_beyond_the_file_limit_do_not_lock_out_a_real_client() {
    // As above, with connections that finish the upgrade (101) and then never
    // send `hello`: pending too, and written to (the 101, the close frame).
    let node = GatewayProcess::start_with_file_limit(256, &[]);
    let mut silent = Vec::new();
    let req = upgrade_request(&node.addr, b"");
    for _ in 0..300 {
        let mut s = tcp_from(&node, None).await;
        let _ = s.write_all(&req).await;
        silent.push(s);
    }
    let took = assert_node_serves_within(&node, Duration::from_secs(10)).await;
    eprintln!("client served in {took:?} with 300 silent upgraded websockets open");
    // Evicted ones close at once: no closing handshake wait (2 s) and no
    // lingering (2 s) while the descriptor is what is short. The bound leaves
    // room for a loaded machine (300 upgrades in a debug build).
    assert!(
        took < ms(2500),
        "a normal client took {took:?} with 300 silent websockets open"
    );
    let m = metrics_text(&node, None).await;
    eprintln!(
        "evicted {}, accept errors {}",
        metric(&m, "chorus_pending_evicted_total", &[]),
        metric(&m, "chorus_accept_errors_total", &[]) + 0.0
    );
    assert!(
        metric(&m, "chorus_pending_evicted_total", &[]) >= 100.0,
        "{m}"
    );
}

#[tokio::test]
async fn at_the_pending_bound_the_oldest_pending_connection_is_closed() {
    if GatewayProcess::single_node_only(
        "the pending bound is per node; a balancer spreads connections over nodes",
    ) {
        return;
    }
    // 127.0.0.1 is exempt from the per-IP limits but not from the overall bound.
    let node = GatewayProcess::start(&["--max-pending-connections", "10"]);
    let mut stalls = Vec::new();
    for _ in 0..10 {
        stalls.push(stalled(&node, None).await);
        // Accept order is connection order.
        tokio::time::sleep(ms(20)).await;
    }
    for s in &mut stalls {
        assert!(!ended_within(s, ms(50)).await, "closed below the bound");
    }
    let mut newest = stalled(&node, None).await;
    assert!(
        ended_within(&mut stalls[0], Duration::from_secs(2)).await,
        "the oldest pending connection was not closed at the bound"
    );
    for (i, s) in stalls.iter_mut().enumerate().skip(1) {
        assert!(
            !ended_within(s, ms(20)).await,
            "pending connection {i} was closed, not the oldest"
        );
    }
    assert!(
        !ended_within(&mut newest, ms(50)).await,
        "the newest was closed"
    );
    // A real client gets through (its own connection displaces the next oldest).
    assert_node_serves(&node).await;
    assert!(ended_within(&mut stalls[1], Duration::from_secs(2)).await);
    let m = metrics_text(&node, None).await;
    assert!(
        metric(&m, "chorus_pending_evicted_total", &[]) >= 2.0,
        "{m}"
    );
}

#[tokio::test]
async fn the_pending_bound_is_a_quarter_of_the_file_limit() {
    // 256 descriptors: at most 64 pending (the default 4096 is clamped).
    let node = GatewayProcess::start_with_file_limit(256, &[]);
    let mut stalls = Vec::new();
    for _ in 0..64 {
        stalls.push(stalled(&node, None).await);
        tokio::time::sleep(ms(5)).await;
    }
    let mut held = 0;
    for s in &mut stalls {
        if !ended_within(s, ms(20)).await {
            held += 1;
        }
    }
    assert_eq!(held, 64, "below the bound every stall is held");
    let _65th = stalled(&node, None).await;
    assert!(
        ended_within(&mut stalls[0], Duration::from_secs(2)).await,
        "the 65th pending connection did not displace the oldest"
    );
    assert!(!ended_within(&mut stalls[1], ms(50)).await);
}

#[tokio::test]
async fn an_evicted_websocket_before_hello_gets_close_4005() {
    if GatewayProcess::single_node_only("the pending bound is per node") {
        return;
    }
    let node = GatewayProcess::start(&["--max-pending-connections", "3"]);
    let mut first = RawWs::open(&node.url_for("alice")).await;
    tokio::time::sleep(ms(50)).await;
    let _second = RawWs::open(&node.url_for("bob")).await;
    let _third = stalled(&node, None).await;
    tokio::time::sleep(ms(50)).await;
    let t0 = Instant::now();
    let _fourth = stalled(&node, None).await;
    let (code, reason) = first.close_frame().await;
    assert_eq!(code, 4005, "{reason}");
    assert!(reason.starts_with("handshake_timeout"), "{reason}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // Then the stream ends.
    let end = tokio::time::timeout(ms(1000), first.ws.next()).await;
    assert!(
        matches!(end, Ok(None) | Ok(Some(Err(_)))),
        "the evicted stream did not end: {end:?}"
    );
}

#[tokio::test]
async fn a_stalled_request_head_is_closed_after_the_header_timeout() {
    if GatewayProcess::single_node_only("timeouts of one node's sockets, not of the balancer's") {
        return;
    }
    let node = GatewayProcess::start(&["--http-header-timeout-ms", "500"]);
    let t0 = Instant::now();
    let mut s = stalled(&node, None).await;
    let f = fate(&mut s, Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert_ne!(f, Fate::Open, "a stalled head was still open after 5 s");
    assert!(took >= ms(400), "closed before the timeout: {took:?} {f:?}");
    assert!(took <= ms(1500), "closed only after {took:?} {f:?}");
    // A head that trickles in byte by byte is bounded by the same deadline.
    let t0 = Instant::now();
    let mut s = tcp_from(&node, None).await;
    let mut closed = false;
    for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(ms(50)).await;
        if t0.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    if !closed {
        closed = ended_within(&mut s, Duration::from_secs(2)).await;
    }
    assert!(
        closed,
        "a trickling head was still open after {:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() <= Duration::from_secs(4), "{:?}", t0.elapsed());
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    if GatewayProcess::single_node_only("timeouts of one node's sockets, not of the balancer's") {
        return;
    }
    let node = GatewayProcess::start(&["--http-header-timeout-ms", "500"]);
    let mut s = tcp_from(&node, None).await;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = read_response(&mut s, T).await.expect("a response");
    assert_eq!((status, body.as_str()), (200, "ok"));
    // Keep-alive: a second request on the same connection is served...
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, _) = read_response(&mut s, T).await.expect("a second response");
    assert_eq!(status, 200);
    // ...then nothing: closed after about the header timeout.
    let t0 = Instant::now();
    let f = fate(&mut s, Duration::from_secs(5)).await;
    let took = t0.elapsed();
    assert_ne!(
        f,
        Fate::Open,
        "an idle keep-alive connection was still open after 5 s"
    );
    assert!(took <= ms(1500), "closed only after {took:?}");
}

#[tokio::test]
async fn an_oversized_header_line_gets_431_or_a_close() {
    if GatewayProcess::single_node_only("one node's HTTP parser, not the balancer's") {
        return;
    }
    let node = GatewayProcess::start(&[]);
    let mut s = tcp_from(&node, None).await;
    let mut req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 380_000));
    req.extend_from_slice(b"\r\n\r\n");
    let t0 = Instant::now();
    // The server may stop reading (and close) before all of it is written.
    let write = tokio::time::timeout(T, s.write_all(&req)).await;
    assert!(
        write.is_ok(),
        "the server held the connection without reading"
    );
    let f = fate(&mut s, Duration::from_secs(5)).await;
    eprintln!(
        "380 kB header: write {write:?}, then {f:?} after {:?}",
        t0.elapsed()
    );
    match &f {
        Fate::Closed(bytes) => assert!(
            bytes.is_empty() || bytes.starts_with("HTTP/1.1 431"),
            "{bytes:?}"
        ),
        Fate::Reset(_) => {}
        Fate::Open => panic!("a 380 kB header was held open"),
    }
    // Just under the default 16 KiB bound is fine.
    let mut ok = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    ok.extend(std::iter::repeat_n(b'a', 12_000));
    ok.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    assert_eq!(exchange(&node, &ok).await.map(|r| r.0), Some(200));
    assert_node_serves(&node).await;
    // The flag moves the bound (8192 is its floor).
    let node = GatewayProcess::start(&["--max-header-bytes", "8192"]);
    let r = exchange(&node, &ok).await;
    assert!(matches!(r, None | Some((431, _))), "{r:?}");
    let mut small = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    small.extend(std::iter::repeat_n(b'a', 6_000));
    small.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    assert_eq!(exchange(&node, &small).await.map(|r| r.0), Some(200));
}

#[tokio::test]
async fn a_request_body_that_never_arrives_is_answered_within_the_body_timeout() {
    if GatewayProcess::single_node_only("timeouts of one node's sockets, not of the balancer's") {
        return;
    }
    let node = GatewayProcess::start(&["--http-body-timeout-ms", "1000"]);
    for declared in ["1000000000000", "100"] {
        let mut s = tcp_from(&node, None).await;
        let head = format!(
            "POST /v1/rooms/r/messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n{{\"sender\":"
        );
        assert_eq!(head.len() - head.find("\r\n\r\n").unwrap() - 4, 10);
        let t0 = Instant::now();
        s.write_all(head.as_bytes()).await.unwrap();
        let f = fate(&mut s, Duration::from_secs(5)).await;
        let took = t0.elapsed();
        eprintln!("Content-Length {declared}, 10 bytes sent: {f:?} after {took:?}");
        match &f {
            // A timeout is the client's slowness, not a malformed request:
            // 408 (or 413 for the declared size), not 400.
            Fate::Closed(bytes) => {
                assert!(
                    bytes.is_empty()
                        || bytes.starts_with("HTTP/1.1 413")
                        || bytes.starts_with("HTTP/1.1 408"),
                    "{bytes:?}"
                );
                if bytes.starts_with("HTTP/1.1 408") {
                    assert!(bytes.contains(r#""code":"request_timeout""#), "{bytes:?}");
                }
            }
            Fate::Reset(_) => {}
            Fate::Open => panic!("Content-Length {declared} with 10 bytes was held 5 s"),
        }
        assert!(took <= ms(2500), "answered only after {took:?}");
    }
    // The presence query reads a body too.
    let mut s = tcp_from(&node, None).await;
    let head = format!(
        "POST /v1/presence/query HTTP/1.1\r\nHost: x\r\nX-Api-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"users\":"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let t0 = Instant::now();
    let f = fate(&mut s, Duration::from_secs(5)).await;
    assert!(
        matches!(&f, Fate::Closed(b) if b.starts_with("HTTP/1.1 408")),
        "{f:?} after {:?}",
        t0.elapsed()
    );
    assert!(stored(&node, "r").await.is_empty());
}

#[tokio::test]
async fn the_sixth_stalled_connection_from_one_address_is_closed_and_others_are_served() {
    if GatewayProcess::single_node_only(
        "per-IP bounds see the source address; a TCP balancer replaces it",
    ) {
        return;
    }
    let node = GatewayProcess::start(&["--per-ip-exempt", "none", "--max-pending-per-ip", "5"]);
    let mut five = Vec::new();
    for _ in 0..5 {
        five.push(stalled(&node, None).await);
    }
    // The five are held (pending, within the header timeout).
    for s in &mut five {
        assert!(
            !ended_within(s, ms(100)).await,
            "one of the first five was closed"
        );
    }
    let t0 = Instant::now();
    let mut sixth = stalled(&node, None).await;
    assert!(
        ended_within(&mut sixth, Duration::from_secs(1)).await,
        "the sixth stalled connection from 127.0.0.1 was not closed"
    );
    eprintln!("sixth closed after {:?}", t0.elapsed());
    // Another address is not affected: HTTP and a WebSocket session.
    let r = http_from(OTHER_IP)
        .get(format!("{}/healthz", node.http_url()))
        .send()
        .await
        .expect("GET /healthz from 127.0.0.2");
    assert_eq!(r.status(), 200);
    let mut other = ws_from(&node, OTHER_IP, "other").await;
    raw_join_send(&mut other, "r").await;
    let m = metrics_text(&node, Some(OTHER_IP)).await;
    assert!(
        metric(
            &m,
            "chorus_connections_refused_total",
            &[r#"reason="pending_per_ip""#]
        ) >= 1.0,
        "{m}"
    );
    // Once the stalled ones go, 127.0.0.1 is served again.
    drop(five);
    drop(sixth);
    let deadline = Instant::now() + T;
    loop {
        let mut s = tcp_from(&node, None).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        if read_response(&mut s, T).await.map(|r| r.0) == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "127.0.0.1 not served again after its stalls closed"
        );
        tokio::time::sleep(ms(100)).await;
    }
}

#[tokio::test]
async fn authenticated_and_ended_connections_stop_counting_as_pending() {
    if GatewayProcess::single_node_only(
        "per-IP bounds see the source address; a TCP balancer replaces it",
    ) {
        return;
    }
    let node = GatewayProcess::start(&[
        "--per-ip-exempt",
        "none",
        "--max-pending-per-ip",
        "3",
        "--accepts-per-ip-per-sec",
        "0",
    ]);
    // Connections that ended every way, one phase at a time (a connection
    // stops being pending a moment after the client saw its end): refused at
    // hello, HTTP answered, WebSocket sessions closed, stalls dropped.
    for _ in 0..3 {
        let mut raw = RawWs::open(&format!("{}?access_token=bad", node.ws_url())).await;
        raw.send(json!({"op": "hello"})).await;
        assert_eq!(raw.close_frame().await.0, 4501);
    }
    wait_no_pending(&node, "after hellos refused with 4501").await;
    for _ in 0..5 {
        let r = exchange(
            &node,
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert_eq!(r.map(|r| r.0), Some(404));
    }
    wait_no_pending(&node, "after HTTP requests").await;
    for _ in 0..3 {
        let c = node.connect("alice").await;
        c.close().await.unwrap();
    }
    wait_no_pending(&node, "after closed sessions").await;
    for _ in 0..3 {
        drop(stalled(&node, None).await);
    }
    wait_no_pending(&node, "after dropped stalls").await;
    // Authenticated sessions are not pending: five of them stay open...
    let mut live = Vec::new();
    for i in 0..5 {
        let c = node.connect(&format!("live{i}")).await;
        c.join("r", None).await.unwrap();
        live.push(c);
    }
    wait_no_pending(&node, "with five live sessions").await;
    // ...and three stalls are admitted (the bound is 3), the fourth not.
    let mut three = Vec::new();
    for _ in 0..3 {
        three.push(stalled(&node, None).await);
    }
    for s in &mut three {
        assert!(
            !ended_within(s, ms(100)).await,
            "a stall within the bound was closed"
        );
    }
    let mut fourth = stalled(&node, None).await;
    assert!(
        ended_within(&mut fourth, Duration::from_secs(1)).await,
        "the fourth stall was held"
    );
    for c in &live {
        c.ping().await.expect("live session");
    }
    drop(three);
    drop(fourth);
    wait_no_pending(&node, "after the last stalls").await;
}

/// Wait until `chorus_pending_connections` is 0 (read from 127.0.0.2, whose
/// own request is no longer pending when the gauge is rendered).
async fn wait_no_pending(node: &GatewayProcess, when: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = metrics_text(node, Some(OTHER_IP)).await;
        let n = metric(&m, "chorus_pending_connections", &[]);
        if n == 0.0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{when}: chorus_pending_connections stays at {n}"
        );
        tokio::time::sleep(ms(50)).await;
    }
}

#[tokio::test]
async fn the_header_timeout_spares_websocket_sessions_and_bodies_in_progress() {
    if GatewayProcess::single_node_only("timeouts of one node's sockets, not of the balancer's") {
        return;
    }
    let node = GatewayProcess::start(&[
        "--http-header-timeout-ms",
        "500",
        "--http-body-timeout-ms",
        "10000",
    ]);
    let mut c = node.connect("alice").await;
    c.join("r", None).await.unwrap();
    // Idle for three header timeouts: the session is not an idle HTTP connection.
    tokio::time::sleep(ms(1500)).await;
    c.ping().await.expect("ping after 1.5 s idle");
    let ack = c
        .send("r", &new_cid(), text("still here"), None)
        .await
        .unwrap();
    assert!(
        c.wait_for(T, |e| matches!(e, Event::Msg(m) if m.seq == ack.seq))
            .await
            .is_some()
    );
    // A body that takes 1.5 s to arrive (headers were on time) is served.
    let body = br#"{"sender":"svc","body":{"t":"slow"}}"#;
    let mut s = tcp_from(&node, None).await;
    let head = format!(
        "POST /v1/rooms/r/messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(body.len() / 3 + 1) {
        tokio::time::sleep(ms(500)).await;
        s.write_all(chunk)
            .await
            .expect("the server kept reading the body");
    }
    let (status, text) = read_response(&mut s, T).await.expect("a response");
    assert_eq!(status, 200, "{text}");
}

#[tokio::test]
async fn connections_beyond_the_per_ip_accept_burst_are_closed_and_counted() {
    if GatewayProcess::single_node_only(
        "per-IP bounds see the source address; a TCP balancer replaces it",
    ) {
        return;
    }
    let node = GatewayProcess::start(&[
        "--per-ip-exempt",
        "none",
        "--accepts-per-ip-per-sec",
        "5",
        "--accept-burst-per-ip",
        "5",
    ]);
    // Wait for the burst to be whole again (the harness's start-up probe).
    tokio::time::sleep(ms(1200)).await;
    let t0 = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..20 {
        let mut s = tcp_from(&node, None).await;
        let _ = s
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        conns.push(s);
    }
    let opened_in = t0.elapsed();
    let mut served = 0;
    let mut refused = 0;
    for s in &mut conns {
        match fate(s, Duration::from_secs(5)).await {
            Fate::Closed(b) if b.starts_with("HTTP/1.1 200") => served += 1,
            Fate::Closed(b) if b.is_empty() => refused += 1,
            Fate::Reset(_) => refused += 1,
            other => panic!("unexpected: {other:?}"),
        }
    }
    eprintln!("20 connections in {opened_in:?}: {served} served, {refused} refused");
    // The burst, plus what the rate refilled while the 20 were opened.
    let refill = (opened_in.as_secs_f64() * 5.0).ceil() as usize;
    assert!(served >= 5, "{served} served");
    assert!(served <= 5 + refill, "{served} served (refill {refill})");
    assert!(refused >= 10, "{refused} refused");
    let m = metrics_text(&node, Some(OTHER_IP)).await;
    let counted = metric(
        &m,
        "chorus_connections_refused_total",
        &[r#"reason="accept_rate""#],
    );
    assert!(
        counted >= refused as f64,
        "counted {counted}, refused {refused}: {m}"
    );
    // Another address has its own bucket.
    let mut other = ws_from(&node, OTHER_IP, "other").await;
    raw_join_send(&mut other, "r").await;
}

// ===========================================================================
// 2. Poison JSON
// ===========================================================================

#[tokio::test]
async fn ws_sends_breaking_the_json_rules_are_refused_naming_the_rule_and_store_nothing() {
    let node = GatewayProcess::start(&[]);
    let (mut raw, _) = RawWs::hello(&node, "alice", json!({})).await;
    let j = raw
        .request(json!({"op": "join", "id": 1, "room": "r"}))
        .await;
    assert_eq!(j["op"], "joined", "{j}");
    let cases: Vec<(String, &str)> = vec![
        (nested(200), "max_depth"),
        (nested(8000), "max_depth"),
        (r#"{"n":1e400}"#.to_owned(), "finite_numbers"),
        (r#"{"n":-1e400}"#.to_owned(), "finite_numbers"),
        (r#"{"s":"\ud800"}"#.to_owned(), "unicode_strings"),
    ];
    let mut id = 10;
    for (body, rule) in &cases {
        id += 1;
        let frame = format!(r#"{{"op":"send","id":{id},"room":"r","cid":"poison","body":{body}}}"#);
        raw.text(frame).await;
        let v = raw.reply(id).await;
        assert_rule_error(&v, id, rule);
        assert!(v["message"].as_str().unwrap().starts_with("body: "), "{v}");
    }
    // meta too.
    id += 1;
    let frame = format!(
        r#"{{"op":"send","id":{id},"room":"r","cid":"poison","body":{{"t":1}},"meta":{}}}"#,
        nested(40)
    );
    raw.text(frame).await;
    let v = raw.reply(id).await;
    assert_rule_error(&v, id, "max_depth");
    assert!(v["message"].as_str().unwrap().starts_with("meta: "), "{v}");
    // Deep nesting outside body and meta (an unknown field) breaks nothing:
    // the frame is answered and the connection stays.
    id += 1;
    raw.text(format!(r#"{{"op":"ping","id":{id},"x":{}}}"#, nested(8000)))
        .await;
    let v = raw.reply(id).await;
    assert!(v["op"] == "pong" || v["op"] == "error", "{v}");
    // Nothing was stored: the same cid is new, and it is seq 1.
    let ack = raw
        .request(json!({"op": "send", "id": 99, "room": "r", "cid": "poison", "body": {"t": "ok"}}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    assert_eq!(ack["seq"], 1, "{ack}");
    assert_eq!(ack["duplicate"], false, "{ack}");
    let msgs = stored(&node, "r").await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["body"], json!({"t": "ok"}));
    // The connection stays usable, and so does the node.
    let h = raw
        .request(json!({"op": "history", "id": 100, "room": "r", "after": 0}))
        .await;
    assert_eq!(h["op"], "history", "{h}");
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(1), "{h}");
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn http_publish_breaking_the_json_rules_is_400_naming_the_rule() {
    let node = GatewayProcess::start(&[]);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!(r#"{{"sender":"svc","body":{}}}"#, nested(200)),
            "body",
            "max_depth",
        ),
        (
            format!(r#"{{"sender":"svc","body":{}}}"#, nested(8000)),
            "body",
            "max_depth",
        ),
        (
            r#"{"sender":"svc","body":{"n":1e400}}"#.to_owned(),
            "body",
            "finite_numbers",
        ),
        (
            r#"{"sender":"svc","body":{"s":"\ud800"}}"#.to_owned(),
            "body",
            "unicode_strings",
        ),
        (
            format!(
                r#"{{"sender":"svc","body":{{"t":1}},"meta":{}}}"#,
                nested(40)
            ),
            "meta",
            "max_depth",
        ),
        (
            r#"{"sender":"svc","body":{"t":1},"meta":{"n":1e400}}"#.to_owned(),
            "meta",
            "finite_numbers",
        ),
    ];
    for (req, field, rule) in cases {
        let (status, v) = publish_raw(&node, "r", req).await;
        assert_eq!(status, 400, "{field} {rule}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.starts_with(&format!("{field}: ")), "{v}");
        assert!(msg.contains(&format!("(rule: {rule})")), "{v}");
    }
    assert!(stored(&node, "r").await.is_empty());
    // A valid publish still works, and is the room's first message.
    let (status, v) =
        publish_raw(&node, "r", r#"{"sender":"svc","body":{"t":[[1]]}}"#.into()).await;
    assert_eq!(status, 200, "{v}");
    let msgs = stored(&node, "r").await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["seq"], 1);
}

#[tokio::test]
async fn hello_with_meta_breaking_the_json_rules_is_refused() {
    let node = GatewayProcess::start(&[]);
    for meta in [nested(40), r#"{"n":1e400}"#.to_owned()] {
        let mut raw = RawWs::open(&node.url_for("alice")).await;
        raw.text(format!(r#"{{"op":"hello","meta":{meta}}}"#)).await;
        let (code, reason) = raw.close_frame().await;
        assert_eq!(code, 4500, "{reason}");
        assert!(reason.starts_with("protocol_violation"), "{reason}");
    }
    // 32 deep is allowed.
    let (_ok, w) = RawWs::hello(
        &node,
        "alice",
        json!({"meta": serde_json::from_str::<Value>(&nested(32)).unwrap()}),
    )
    .await;
    assert_eq!(w["user"], "alice");
}

/// Rewrite stored rows in the node's SQLite file (the node must be stopped).
async fn rewrite_rows(data_dir: &Path, room: &str, rows: &[(u64, &str, Option<&str>)]) {
    use sqlx::ConnectOptions;
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("chorus.db"))
        .connect()
        .await
        .expect("open chorus.db");
    for (seq, body, meta) in rows {
        let done = sqlx::query("UPDATE messages SET body = ?, meta = ? WHERE room = ? AND seq = ?")
            .bind(*body)
            .bind(*meta)
            .bind(room)
            .bind(*seq as i64)
            .execute(&mut db)
            .await
            .expect("update row");
        assert_eq!(done.rows_affected(), 1, "row {room}#{seq}");
    }
    use sqlx::Connection;
    db.close().await.expect("close chorus.db");
}

#[tokio::test]
async fn stored_rows_breaking_the_json_rules_are_served_as_null_and_counted() {
    if GatewayProcess::single_node_only("edits the node's own SQLite file") {
        return;
    }
    let mut node = GatewayProcess::start(&[]);
    for i in 1..=6 {
        let (status, v) = publish_raw(
            &node,
            "r",
            format!(r#"{{"sender":"svc","body":{{"i":{i}}},"meta":{{"m":{i}}}}}"#),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    node.kill9();
    let deep = nested(40);
    let very_deep = nested(8000);
    rewrite_rows(
        &node.data_dir,
        "r",
        &[
            (2, &deep, None),
            (3, r#"{"n":1e400}"#, Some(r#"{"m":3}"#)),
            (4, r#"{"i":4}"#, Some(r#"{"s":"\udc00"}"#)),
            (5, &very_deep, Some(&very_deep)),
            (6, r#"{"not json"#, Some("[1,")),
        ],
    )
    .await;
    node.restart();
    // HTTP history: 200, every seq in place, broken bodies null, broken meta gone.
    let (status, page) = get_json(&node, "/v1/rooms/r/messages?after=0&limit=100").await;
    assert_eq!(status, 200, "{page}");
    let msgs = page["messages"].as_array().expect("messages");
    let seqs: Vec<u64> = msgs.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6], "{page}");
    assert_eq!(msgs[0]["body"], json!({"i": 1}));
    assert_eq!(msgs[1]["body"], Value::Null, "{}", msgs[1]);
    assert_eq!(msgs[2]["body"], Value::Null, "{}", msgs[2]);
    assert_eq!(msgs[3]["body"], json!({"i": 4}));
    assert!(
        msgs[3].get("meta").is_none_or(Value::is_null),
        "{}",
        msgs[3]
    );
    assert_eq!(msgs[4]["body"], Value::Null);
    assert_eq!(msgs[5]["body"], Value::Null, "{}", msgs[5]);
    // The newest page (no `after`) too.
    let (status, _) = get_json(&node, "/v1/rooms/r/messages").await;
    assert_eq!(status, 200);
    // WebSocket: join with replay and a `history` request.
    let (mut raw, _) = RawWs::hello(&node, "alice", json!({})).await;
    raw.send(json!({"op": "join", "id": 1, "room": "r", "since": 0}))
        .await;
    let mut replayed = Vec::new();
    let joined = loop {
        let v = raw.recv().await;
        match v["op"].as_str() {
            Some("msg") => replayed.push(v),
            Some("joined") => break v,
            _ => panic!("unexpected during the replay: {v}"),
        }
    };
    assert_eq!(joined["replayed"], 6, "{joined}");
    let seqs: Vec<u64> = replayed.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(replayed[1]["body"], Value::Null);
    assert_eq!(replayed[3]["body"], json!({"i": 4}));
    let h = raw
        .request(json!({"op": "history", "id": 2, "room": "r", "after": 0}))
        .await;
    assert_eq!(h["op"], "history", "{h}");
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(6), "{h}");
    assert_eq!(h["messages"][2]["body"], Value::Null, "{h}");
    assert_eq!(h["messages"][5]["body"], Value::Null, "{h}");
    // The connection still works; counted.
    let ack = raw
        .request(json!({"op": "send", "id": 3, "room": "r", "cid": "after", "body": {"i": 6}}))
        .await;
    assert_eq!(ack["seq"], 7, "{ack}");
    let m = metrics_text(&node, None).await;
    // Four reads (two HTTP pages, the replay, `history`), each meeting the
    // 7 broken fields; at least three of them certainly read every row.
    let n = metric(&m, "chorus_history_invalid_rows_total", &[]);
    assert!(n >= 21.0, "chorus_history_invalid_rows_total = {n}");
}

#[tokio::test]
async fn stored_rows_that_are_not_utf8_json_text_do_not_break_the_rooms_history() {
    if GatewayProcess::single_node_only("edits the node's own SQLite file") {
        return;
    }
    // Rows edited by hand, as SQLite's dynamic typing allows, one kind per
    // room (each room: seq 1 intact, seq 2 edited).
    let kinds = [
        ("text-not-utf8", "CAST(X'7B2278223A22FF227D' AS TEXT)"),
        ("blob", "X'7B7D'"),
        ("integer", "42"),
    ];
    let mut node = GatewayProcess::start(&[]);
    for (room, _) in kinds {
        for i in 1..=2 {
            let (status, v) = publish_raw(
                &node,
                room,
                format!(r#"{{"sender":"svc","body":{{"i":{i}}}}}"#),
            )
            .await;
            assert_eq!(status, 200, "{v}");
        }
    }
    node.kill9();
    {
        use sqlx::{ConnectOptions, Connection};
        let mut db = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(node.data_dir.join("chorus.db"))
            .connect()
            .await
            .expect("open chorus.db");
        for (room, value) in kinds {
            let sql = format!("UPDATE messages SET body = {value} WHERE room = ? AND seq = 2");
            // The values are this test's constants.
            let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(room)
                .execute(&mut db)
                .await
                .expect("update");
            assert_eq!(done.rows_affected(), 1);
        }
        db.close().await.expect("close chorus.db");
    }
    node.restart();
    let mut failures = Vec::new();
    for (room, _) in kinds {
        let resp = http()
            .get(format!(
                "{}/v1/rooms/{room}/messages?after=0",
                node.http_url()
            ))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let page: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let seqs: Vec<u64> = page["messages"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["seq"].as_u64()).collect())
            .unwrap_or_default();
        if status != 200 || seqs != [1, 2] || page["messages"][0]["body"] != json!({"i": 1}) {
            failures.push(format!("{room}: GET history {status} {body}"));
        }
        // A join with replay completes too.
        let (mut raw, _) = RawWs::hello(&node, "alice", json!({})).await;
        let j = raw
            .request(json!({"op": "join", "id": 1, "room": room, "since": 0}))
            .await;
        if j["op"] != "joined" || j["replayed"] != 2 {
            failures.push(format!("{room}: join with replay {j}"));
        }
    }
    assert!(
        failures.is_empty(),
        "hand-edited rows broke the history:\n{}",
        failures.join("\n")
    );
}

// ===========================================================================
// 3. Panics
// ===========================================================================

#[tokio::test]
async fn a_join_that_panics_closes_4003_and_other_connections_carry_on() {
    if GatewayProcess::single_node_only("reads one node's panic counter") {
        return;
    }
    let node = GatewayProcess::start(&["--test-panic-room", "boom"]);
    let mut bob = node.connect("bob").await;
    bob.join("ok", None).await.unwrap();
    let carol = node.connect("carol").await;
    carol.join("ok", None).await.unwrap();
    let mut alice = node.connect("alice").await;
    alice.join("ok", None).await.unwrap();
    let err = alice
        .join("boom", None)
        .await
        .expect_err("the join panicked");
    let (code, reason) = match err {
        ClientError::Closed { code, reason } => (code, reason),
        _ => wait_closed(&mut alice).await,
    };
    assert_eq!(code, Some(4003), "{reason}");
    assert!(reason.starts_with("internal_error"), "{reason}");
    // Others: carol sends, bob receives.
    let ack = carol
        .send("ok", &new_cid(), text("after the panic"), None)
        .await
        .expect("send after the panic");
    let got = bob
        .wait_for(
            T,
            |e| matches!(e, Event::Msg(m) if m.room == "ok" && m.seq == ack.seq),
        )
        .await;
    assert!(got.is_some(), "bob did not receive carol's message");
    // Its presence was cleaned up (finish ran after the panic)...
    let deadline = Instant::now() + T;
    loop {
        let (status, p) = get_json(&node, "/v1/rooms/ok/presence").await;
        assert_eq!(status, 200, "{p}");
        let users: Vec<&str> = p["users"]
            .as_array()
            .map(|a| a.iter().filter_map(|u| u["user"].as_str()).collect())
            .unwrap_or_default();
        if !users.contains(&"alice") {
            assert!(users.contains(&"bob") && users.contains(&"carol"), "{p}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alice still present after the panic: {p}"
        );
        tokio::time::sleep(ms(100)).await;
    }
    // ...and the user can come back.
    let again = node.connect("alice").await;
    again.join("ok", None).await.unwrap();
    assert_node_serves(&node).await;
    let m = metrics_text(&node, None).await;
    assert!(
        metric(&m, "chorus_panics_total", &[r#"site="connection""#]) >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn an_http_handler_that_panics_answers_500_and_the_next_request_works() {
    if GatewayProcess::single_node_only("reads one node's panic counter") {
        return;
    }
    let node = GatewayProcess::start(&["--test-panic-room", "boom"]);
    let client = http();
    for _ in 0..3 {
        let resp = client
            .get(format!("{}/v1/rooms/boom/messages", node.http_url()))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .expect("GET boom");
        assert_eq!(resp.status(), 500);
        let v: Value = resp.json().await.expect("JSON error");
        assert_eq!(v["error"]["code"], "internal", "{v}");
        // The same client (its pooled connection) is served next.
        let resp = client
            .get(format!("{}/v1/rooms/ok/messages", node.http_url()))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .expect("GET ok");
        assert_eq!(resp.status(), 200);
    }
    // Also on one raw keep-alive connection.
    let mut s = tcp_from(&node, None).await;
    let req =
        format!("GET /v1/rooms/boom/messages HTTP/1.1\r\nHost: x\r\nX-Api-Key: {API_KEY}\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut s, T).await.map(|r| r.0), Some(500));
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut s, T).await.map(|r| r.0), Some(200));
    let m = metrics_text(&node, None).await;
    assert!(
        metric(&m, "chorus_panics_total", &[r#"site="http""#]) >= 4.0,
        "{m}"
    );
    assert_node_serves(&node).await;
}

// ===========================================================================
// 7. Oversized inbound frames
// ===========================================================================

#[tokio::test]
async fn a_frame_over_max_frame_bytes_is_answered_with_close_4504_every_time() {
    let node = GatewayProcess::start(&[]);
    let (_probe, w) = RawWs::hello(&node, "probe", json!({})).await;
    let max = w["limits"]["max_frame_bytes"]
        .as_u64()
        .expect("max_frame_bytes");
    assert!(max < 70_000, "default max_frame_bytes {max}");
    let head = r#"{"op":"ping","id":1,"pad":""#;
    let big = format!("{head}{}\"}}", "p".repeat(70_000 - head.len() - 2));
    assert_eq!(big.len(), 70_000);
    let mut codes = Vec::new();
    for i in 0..20 {
        let (mut raw, _) = RawWs::hello(&node, &format!("u{i}"), json!({})).await;
        raw.text(big.clone()).await;
        codes.push(raw.close_frame().await);
    }
    // Also as the first frame (still pending, before hello).
    for i in 0..10 {
        let mut raw = RawWs::open(&node.url_for(&format!("v{i}"))).await;
        raw.text(big.clone()).await;
        codes.push(raw.close_frame().await);
    }
    for (code, reason) in &codes {
        assert_eq!(*code, 4504, "{codes:?}");
        assert!(reason.starts_with("message_too_big"), "{reason}");
    }
    assert_node_serves(&node).await;
}

// ===========================================================================
// 8. Presence meta and reply bounds
// ===========================================================================

#[tokio::test]
async fn hello_meta_over_max_presence_meta_bytes_is_closed_4504_naming_the_flag() {
    let node = GatewayProcess::start(&[]);
    let big = json!({"pad": "x".repeat(2000)});
    let (code, reason) =
        match Client::connect(node.config("alice").with_meta(Json::from_value(&big))).await {
            Ok(c) => panic!("accepted: {:?}", c.welcome()),
            Err(ClientError::Closed { code, reason }) => (code, reason),
            Err(e) => panic!("expected a close frame, got {e:?}"),
        };
    assert_eq!(code, Some(4504), "{reason}");
    assert!(reason.starts_with("message_too_big"), "{reason}");
    assert!(reason.contains("--max-presence-meta-bytes"), "{reason}");
    // At the bound it is fine (1024 bytes of JSON text).
    let pad = 1024 - r#"{"pad":""}"#.len();
    let at = Json::from_value(&json!({"pad": "x".repeat(pad)}));
    assert_eq!(at.get().len(), 1024);
    let c = Client::connect(node.config("alice").with_meta(at))
        .await
        .expect("1024-byte meta is allowed");
    c.join("r", None).await.unwrap();
    // The flag moves the bound.
    let node = GatewayProcess::start(&["--max-presence-meta-bytes", "100"]);
    let r = Client::connect(
        node.config("alice")
            .with_meta(Json::from_value(&json!({"pad": "x".repeat(200)}))),
    )
    .await;
    assert_eq!(r.err().and_then(|e| e.close_code()), Some(4504));
}

#[tokio::test]
async fn presence_lists_over_the_reply_bound_give_the_count_or_are_truncated() {
    let node = GatewayProcess::start(&["--max-presence-reply-bytes", "2000"]);
    let mut members = Vec::new();
    for i in 0..10 {
        let meta = json!({"pad": "m".repeat(890)});
        let (mut raw, _) = RawWs::hello(&node, &format!("user{i}"), json!({"meta": meta})).await;
        let j = raw
            .request(json!({"op": "join", "id": 1, "room": "big"}))
            .await;
        assert_eq!(j["op"], "joined", "{j}");
        members.push(raw);
    }
    let (mut late, _) = RawWs::hello(&node, "late", json!({})).await;
    let j = late
        .request(json!({"op": "join", "id": 1, "room": "big"}))
        .await;
    assert_eq!(j["op"], "joined", "{j}");
    assert_eq!(j["presence"], json!([]), "{j}");
    assert_eq!(j["online"], 11, "{j}");
    let p = late
        .request(json!({"op": "presence", "id": 2, "room": "big"}))
        .await;
    assert_eq!(p["op"], "presence", "{p}");
    assert_eq!(p["truncated"], true, "{p}");
    let users = p["users"].as_array().expect("users");
    assert!(
        !users.is_empty() && users.len() < 11,
        "{} users",
        users.len()
    );
    assert!(
        p.to_string().len() < 2000 + 200,
        "{} bytes",
        p.to_string().len()
    );
    // A room that fits is listed in full, without `truncated`.
    let (mut a, _) = RawWs::hello(&node, "a", json!({})).await;
    let j = a
        .request(json!({"op": "join", "id": 1, "room": "small"}))
        .await;
    assert_eq!(j["presence"].as_array().map(Vec::len), Some(1), "{j}");
    let p = a
        .request(json!({"op": "presence", "id": 2, "room": "small"}))
        .await;
    assert!(p.get("truncated").is_none(), "{p}");
    assert_eq!(p["users"].as_array().map(Vec::len), Some(1), "{p}");
}

// ===========================================================================
// 9. Origin check of the upgrade in dev mode
// ===========================================================================

/// The status of an upgrade request with these extra header lines.
async fn upgrade_status(node: &GatewayProcess, host: &str, extra: &[u8]) -> (u16, String) {
    exchange(node, &upgrade_request(host, extra))
        .await
        .expect("a response to the upgrade")
}

#[tokio::test]
async fn dev_mode_upgrades_accept_only_the_nodes_own_origin() {
    let node = GatewayProcess::start(&[]);
    let own = node.addr.clone();
    let port = sock_addr(&node).port();
    let refused = |(status, body): (u16, String)| {
        assert_eq!(status, 403, "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON error");
        assert_eq!(v["error"]["code"], "forbidden_origin", "{v}");
    };
    // No Origin (not a browser): passes.
    assert_eq!(upgrade_status(&node, &own, b"").await.0, 101);
    // The node's own origin, by address and by localhost.
    let o = format!("Origin: http://{own}\r\n");
    assert_eq!(upgrade_status(&node, &own, o.as_bytes()).await.0, 101);
    let o = format!("Origin: http://localhost:{port}\r\n");
    assert_eq!(
        upgrade_status(&node, &format!("localhost:{port}"), o.as_bytes())
            .await
            .0,
        101
    );
    // Another site.
    refused(upgrade_status(&node, &own, b"Origin: http://evil.example\r\n").await);
    let o = format!("Origin: http://evil.example:{port}\r\n");
    refused(upgrade_status(&node, &own, o.as_bytes()).await);
    // DNS rebinding: evil.example resolves to 127.0.0.1, Host and Origin agree.
    refused(upgrade_status(&node, &format!("evil.example:{port}"), o.as_bytes()).await);
    // Own host, other port or scheme.
    let o = format!("Origin: http://127.0.0.1:{}\r\n", port.wrapping_add(1));
    refused(upgrade_status(&node, &own, o.as_bytes()).await);
    let o = format!("Origin: https://{own}\r\n");
    refused(upgrade_status(&node, &own, o.as_bytes()).await);
    // A refused upgrade leaves the node serving.
    assert_node_serves(&node).await;
    // Without dev identities (JWT only) and without --allowed-origin, any
    // origin passes as before: the check is the dev mode's.
    let jwt_only = GatewayProcess::start_args(&[
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        "test-secret-0123456789",
        "--api-key",
        API_KEY,
    ]);
    let (status, body) = upgrade_status(
        &jwt_only,
        &jwt_only.addr,
        b"Origin: http://evil.example\r\n",
    )
    .await;
    assert_eq!(status, 101, "{body}");
}

#[tokio::test]
async fn allowed_origins_compare_normalised_and_refuse_malformed_origins() {
    let node = GatewayProcess::start(&["--allowed-origin", "https://app.example"]);
    let own = node.addr.clone();
    for ok in [
        "https://app.example",
        "https://app.example:443",
        "HTTPS://App.Example",
        "https://app.example/",
    ] {
        let o = format!("Origin: {ok}\r\n");
        let (status, body) = upgrade_status(&node, &own, o.as_bytes()).await;
        assert_eq!(status, 101, "{ok}: {body}");
    }
    let mut bad: Vec<Vec<u8>> = vec![
        b"Origin: https://app.example:8443\r\n".to_vec(),
        b"Origin: http://app.example\r\n".to_vec(),
        b"Origin: https://evil.example\r\n".to_vec(),
        b"Origin: null\r\n".to_vec(),
        // Two Origin headers, even both allowed.
        b"Origin: https://app.example\r\nOrigin: https://app.example\r\n".to_vec(),
        b"Origin: https://evil.example\r\nOrigin: https://app.example\r\n".to_vec(),
    ];
    // Not ASCII.
    let mut non_ascii = b"Origin: https://app.example".to_vec();
    non_ascii.extend_from_slice(&[0xc3, 0xa9, 0xff]);
    non_ascii.extend_from_slice(b"\r\n");
    bad.push(non_ascii);
    for b in bad {
        let (status, body) = upgrade_status(&node, &own, &b).await;
        assert_eq!(status, 403, "{:?}: {body}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_str(&body).expect("JSON error");
        assert_eq!(v["error"]["code"], "forbidden_origin", "{v}");
    }
    // Without an Origin header (not a browser) it passes.
    assert_eq!(upgrade_status(&node, &own, b"").await.0, 101);
}

// ===========================================================================
// 10. Dev authentication rules
// ===========================================================================

#[tokio::test]
async fn dev_insecure_auth_refuses_to_start_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(binary())
        .args(["--listen", "0.0.0.0:0", "--dev-insecure-auth", "--data-dir"])
        .arg(dir.path())
        .env("CHORUS_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chorus");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chorus started with --dev-insecure-auth on 0.0.0.0");
        }
        std::thread::sleep(ms(50));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("--dev-insecure-auth"), "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
}

#[tokio::test]
async fn the_http_api_needs_a_key_when_jwt_and_dev_auth_are_both_on() {
    let secret = "test-secret-0123456789";
    let node = GatewayProcess::start_args(&[
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        secret,
        "--dev-insecure-auth",
    ]);
    let get = http()
        .get(format!("{}/v1/rooms/r/messages", node.http_url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(get.status(), 401);
    let v: Value = get.json().await.expect("JSON error");
    assert!(v["error"]["code"].is_string(), "{v}");
    let post = http()
        .post(format!("{}/v1/rooms/r/messages", node.http_url()))
        .json(&json!({"sender": "svc", "body": {"t": 1}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(post.status(), 401);
    // Any key is wrong: none is configured.
    let keyed = http()
        .get(format!("{}/v1/rooms/r/messages", node.http_url()))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .expect("GET");
    assert_eq!(keyed.status(), 401);
    // Nothing was published; WebSocket clients still connect (JWT and dev).
    let c = Client::connect(ClientConfig::dev(&node.ws_url(), "devuser"))
        .await
        .expect("dev identity");
    c.join("r", None).await.unwrap();
    let tip = c.history("r", None, None, None).await.unwrap();
    assert!(tip.messages.is_empty());
    // Pure dev mode (no JWT key) keeps its open API, as before.
    let dev = GatewayProcess::start_args(&["--listen", "127.0.0.1:0", "--dev-insecure-auth"]);
    let open = http()
        .get(format!("{}/v1/rooms/r/messages", dev.http_url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(open.status(), 200);
}

// ===========================================================================
// 11. Frames before hello
// ===========================================================================

#[tokio::test]
async fn more_than_eight_pings_before_hello_close_4004() {
    let node = GatewayProcess::start(&[]);
    // Eight are tolerated.
    let mut raw = RawWs::open(&node.url_for("alice")).await;
    for _ in 0..8 {
        raw.ws
            .send(WsMessage::Ping(b"p".to_vec().into()))
            .await
            .unwrap();
    }
    raw.send(json!({"op": "hello"})).await;
    let w = raw.recv().await;
    assert_eq!(w["op"], "welcome", "{w}");
    // The ninth closes.
    let mut raw = RawWs::open(&node.url_for("alice")).await;
    for _ in 0..9 {
        if raw
            .ws
            .send(WsMessage::Ping(b"p".to_vec().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, reason) = raw.close_frame().await;
    assert_eq!(code, 4004, "{reason}");
    assert!(reason.starts_with("flood"), "{reason}");
    // Pongs count too.
    let mut raw = RawWs::open(&node.url_for("alice")).await;
    for _ in 0..20 {
        if raw
            .ws
            .send(WsMessage::Pong(b"p".to_vec().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(raw.close_frame().await.0, 4004);
    assert_node_serves(&node).await;
}
