//! Helpers shared by this binary's test modules.

use chorus_protocol::client::{Event, new_cid};
pub(crate) use chorus_tests::raw::{Raw, RawWs};
pub(crate) use chorus_tests::wait::wait_closed;
use chorus_tests::{API_KEY, GatewayProcess, text};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Generous upper bound for anything the server should do "soon".
pub(crate) const T: Duration = Duration::from_secs(20);

/// A second loopback source address (Linux routes all of 127.0.0.0/8 to `lo`).
pub(crate) const OTHER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------
// Raw TCP / HTTP
// ---------------------------------------------------------------------------

/// The node's own listen address.
pub(crate) fn sock_addr(node: &GatewayProcess) -> SocketAddr {
    node.addr.parse().expect("node address")
}

/// A TCP connection to the node, from `from` (port chosen by the kernel) or
/// from the default source address.
pub(crate) async fn tcp_from(node: &GatewayProcess, from: Option<IpAddr>) -> TcpStream {
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
pub(crate) async fn stalled(node: &GatewayProcess, from: Option<IpAddr>) -> TcpStream {
    let mut s = tcp_from(node, from).await;
    // A write to a connection the server already refused can fail: the
    // caller checks the connection's fate by reading.
    let _ = s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").await;
    s
}

/// How the server ended a connection we keep silent on.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// FIN (after the bytes shown, maybe none).
    Closed(String),
    /// A reset or another read error.
    Reset(String),
    /// Still open after the wait.
    Open,
}

/// Read (and keep) what the server sends until it ends the connection or
/// `within` passes.
pub(crate) async fn fate(s: &mut TcpStream, within: Duration) -> Fate {
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
pub(crate) async fn ended_within(s: &mut TcpStream, within: Duration) -> bool {
    !matches!(fate(s, within).await, Fate::Open)
}

/// Read one HTTP/1.1 response (head, then a `Content-Length` body) within
/// `within`: status and body. `None` if the connection ended before a head.
pub(crate) async fn read_response(s: &mut TcpStream, within: Duration) -> Option<(u16, String)> {
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
pub(crate) async fn exchange(node: &GatewayProcess, request: &[u8]) -> Option<(u16, String)> {
    let mut s = tcp_from(node, None).await;
    s.write_all(request).await.expect("write request");
    read_response(&mut s, T).await
}

/// A complete WebSocket upgrade request for `/ws` with these extra header
/// lines (each ending in `\r\n`).
pub(crate) fn upgrade_request(host: &str, extra: &[u8]) -> Vec<u8> {
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

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

/// An HTTP client whose connections come from `ip`.
pub(crate) fn http_from(ip: IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .local_address(ip)
        .build()
        .expect("http client")
}

/// GET with the API key; status and JSON body.
pub(crate) async fn get_json(node: &GatewayProcess, path: &str) -> (u16, Value) {
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
pub(crate) async fn publish_raw(node: &GatewayProcess, room: &str, body: String) -> (u16, Value) {
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
pub(crate) async fn stored(node: &GatewayProcess, room: &str) -> Vec<Value> {
    let (status, page) = get_json(
        node,
        &format!("/v1/rooms/{room}/messages?after=0&limit=100"),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page["messages"].as_array().expect("messages").clone()
}

/// `GET /metrics` (from `from`, default source address otherwise).
pub(crate) async fn metrics_text(node: &GatewayProcess, from: Option<IpAddr>) -> String {
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
pub(crate) fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
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

/// A WebSocket session for `user` over a connection from `from`: upgrade,
/// `hello`, `welcome`.
pub(crate) async fn ws_from(node: &GatewayProcess, from: IpAddr, user: &str) -> Raw<TcpStream> {
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
pub(crate) async fn raw_join_send<S: AsyncRead + AsyncWrite + Unpin>(r: &mut Raw<S>, room: &str) {
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
pub(crate) async fn assert_node_serves_within(node: &GatewayProcess, within: Duration) -> Duration {
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

pub(crate) async fn assert_node_serves(node: &GatewayProcess) {
    assert_node_serves_within(node, T).await;
}

/// JSON arrays nested `depth` deep: `[[[...]]]`.
pub(crate) fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// An error frame with this code whose message names `rule`.
pub(crate) fn assert_rule_error(v: &Value, id: u64, rule: &str) {
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["code"], "bad_request", "{v}");
    let msg = v["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("(rule: {rule})")), "{v}");
}
