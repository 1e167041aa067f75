//! The wire protocol end to end, through real sockets against a real `chorus`
//! process: every frame, every error code and every close code the gateway can
//! produce, plus ACLs, token expiry, limits and tenants.
//!
//! Two ways of talking to the node:
//! - the Rust [`Client`] for ordinary sessions (replies are matched by id,
//!   pushes arrive as [`Event`]s);
//! - [`Raw`], a bare WebSocket speaking JSON text by hand, where the exact
//!   frames on the wire matter (field presence, `id` echo, frame order,
//!   malformed input, binary and invalid UTF-8 frames, a reader that never reads).
//!
//! Every test starts its own node. Timeouts are generous: the machine is small
//! and other test binaries run at the same time.
//!
//! `timeout` and `unavailable` are provoked through configuration (a send
//! timeout of 0 ms; a writer queue of 1 under pipelined sends): they rely on an
//! SQLite commit never finishing within microseconds, which holds in practice.
//!
//! Not covered because the gateway cannot be made to produce them
//! deterministically from the outside: error codes `not_owner` (needs a second
//! writer fencing the room) and `internal` (needs a store fault), close codes
//! `4003 internal_error`, `4006 unavailable` and `4503 forbidden` (no code path
//! in the gateway sends 4003 or 4503; 4006 needs the history store to fail while
//! loading memberships or filling a gap).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use chorus_protocol::client::{
    Client, ClientConfig, ClientError, Event, connect_ws, dev_url, new_cid, token_url,
};
use chorus_protocol::{ErrorCode, Json, Limits};
use chorus_tests::{GatewayProcess, signal, text, token};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Generous upper bound for anything the server should do "soon".
const T: Duration = Duration::from_secs(20);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------

/// Client settings with the JWT in `hello.token` (nothing in the URL).
fn hello_token_cfg(node: &GatewayProcess, jwt: &str) -> ClientConfig {
    ClientConfig::new(node.ws_url()).with_token(jwt)
}

/// Connect with `cfg`, which must be refused with a close frame: its code and reason.
async fn refused(cfg: ClientConfig) -> (u16, String) {
    match Client::connect(cfg).await {
        Ok(c) => panic!("connection was accepted: {:?}", c.welcome()),
        Err(ClientError::Closed {
            code: Some(code),
            reason,
        }) => (code, reason),
        Err(e) => panic!("expected a close frame, got {e:?}"),
    }
}

/// Skip events until one matches; panics after `T`.
async fn wait_event(c: &mut Client, what: &str, pred: impl FnMut(&Event) -> bool) -> Event {
    c.wait_for(T, pred)
        .await
        .unwrap_or_else(|| panic!("no {what} within {T:?}"))
}

/// The `msg` with this seq in this room.
async fn wait_msg(c: &mut Client, room: &str, seq: u64) -> chorus_protocol::Message {
    match wait_event(
        c,
        &format!("msg {room}#{seq}"),
        |e| matches!(e, Event::Msg(m) if m.room == room && m.seq == seq),
    )
    .await
    {
        Event::Msg(m) => m,
        _ => unreachable!(),
    }
}

/// Wait for the end of the connection: its close code and reason.
async fn wait_closed(c: &mut Client) -> (Option<u16>, String) {
    match wait_event(c, "close", |e| matches!(e, Event::Closed { .. })).await {
        Event::Closed { code, reason } => (code, reason),
        _ => unreachable!(),
    }
}

/// Every event that arrives within `d`.
async fn events_for(c: &mut Client, d: Duration) -> Vec<Event> {
    let deadline = Instant::now() + d;
    let mut out = Vec::new();
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, c.next_event()).await {
        out.push(ev);
    }
    out
}

fn typing_events(evs: &[Event]) -> Vec<(String, String, bool)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Typing {
                user,
                device,
                active,
                ..
            } => Some((user.clone(), device.clone(), *active)),
            _ => None,
        })
        .collect()
}

fn presence_diffs(evs: &[Event]) -> Vec<(Vec<String>, Vec<String>)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::PresenceDiff { joined, left, .. } => Some((
                joined.iter().map(|u| u.user.clone()).collect(),
                left.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// The receipt entry for `user` in a `receipt` event, if any.
fn receipt_of(ev: &Event, room: &str, user: &str) -> Option<chorus_protocol::Receipt> {
    match ev {
        Event::Receipt { room: r, receipts } if r == room => {
            receipts.iter().find(|x| x.user == user).cloned()
        }
        _ => None,
    }
}

/// The server error of a failed request.
fn server_error(r: Result<impl std::fmt::Debug, ClientError>) -> (ErrorCode, bool, Option<u64>) {
    match r {
        Err(ClientError::Server {
            code,
            retryable,
            retry_after_ms,
            ..
        }) => (code, retryable, retry_after_ms),
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// A client that was connected before an incident still works: ping, then a
/// send in `room` (already joined) comes back as msg and ack.
async fn assert_client_works(c: &mut Client, room: &str) {
    c.ping().await.expect("ping after the incident");
    let cid = new_cid();
    let ack = c
        .send(room, &cid, text("still here"), None)
        .await
        .expect("send after the incident");
    let m = wait_msg(c, room, ack.seq).await;
    assert_eq!(m.cid.as_deref(), Some(cid.as_str()));
}

/// The node still serves new connections: connect, join, send, ping.
async fn assert_node_serves(node: &GatewayProcess) {
    let user = format!("probe-{}", new_cid());
    let mut c = node.connect(&user).await;
    c.join("probe-room", None).await.expect("probe join");
    assert_client_works(&mut c, "probe-room").await;
    c.close().await.unwrap();
}

/// A connected, joined bystander for the "other clients are unaffected" checks.
async fn bystander(node: &GatewayProcess) -> Client {
    let c = node.connect("bystander").await;
    c.join("bystanders", None).await.unwrap();
    c.ping().await.unwrap();
    c
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

    /// Upgrade with a JWT for `user` in the URL, send `hello`, read `welcome`.
    async fn hello(node: &GatewayProcess, user: &str) -> (RawWs, Value) {
        let mut r = RawWs::open(&node.url_for(user)).await;
        r.send(json!({"op": "hello"})).await;
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

    async fn message(&mut self, m: WsMessage) {
        self.ws.send(m).await.expect("write");
    }

    /// The next text frame as JSON (server pings included), within `T`.
    async fn next_any(&mut self) -> Value {
        let t = self.next_text().await;
        let v: Value = serde_json::from_str(&t).expect("server sent JSON");
        assert!(v.is_object(), "{v}");
        assert_no_nulls(&v);
        v
    }

    /// The next text frame as sent, within `T`.
    async fn next_text(&mut self) -> String {
        loop {
            let m = tokio::time::timeout(T, self.ws.next())
                .await
                .expect("no frame from the server in time")
                .expect("stream ended")
                .expect("read failed");
            match m {
                WsMessage::Text(t) => return t.as_str().to_owned(),
                WsMessage::Close(cf) => panic!("unexpected close: {cf:?}"),
                WsMessage::Binary(_) => panic!("the server sent a binary frame"),
                _ => {}
            }
        }
    }

    /// The next frame that is not a server `ping`.
    async fn recv(&mut self) -> Value {
        loop {
            let v = self.next_any().await;
            if v["op"] != "ping" {
                return v;
            }
        }
    }

    /// Skip frames until one matches.
    async fn recv_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + T;
        loop {
            let v = tokio::time::timeout_at(deadline, self.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {T:?}"));
            if pred(&v) {
                return v;
            }
        }
    }

    /// The reply (or error) carrying this id.
    async fn reply(&mut self, id: u64) -> Value {
        self.recv_where(&format!("reply to id {id}"), |v| v["id"] == id)
            .await
    }

    /// Send a request and wait for the frame echoing its id.
    async fn request(&mut self, v: Value) -> Value {
        let id = v["id"].as_u64().expect("request with id");
        self.send(v).await;
        self.reply(id).await
    }

    /// The next error frame.
    async fn error(&mut self) -> Value {
        self.recv_where("error", |v| v["op"] == "error").await
    }

    /// Frames other than pings arriving within `d`.
    async fn frames_for(&mut self, d: Duration) -> Vec<Value> {
        let deadline = Instant::now() + d;
        let mut out = Vec::new();
        while let Ok(v) = tokio::time::timeout_at(deadline, self.recv()).await {
            out.push(v);
        }
        out
    }

    /// Read (skipping data frames) until the close frame: its code and reason.
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

    /// A `join` by hand, returning the `joined` frame.
    async fn join(&mut self, id: u64, room: &str) -> Value {
        let j = self
            .request(json!({"op": "join", "id": id, "room": room}))
            .await;
        assert_eq!(j["op"], "joined", "{j}");
        j
    }
}

/// The spec: the server never sends `null`.
fn assert_no_nulls(v: &Value) {
    match v {
        Value::Null => panic!("the server sent a null"),
        Value::Array(a) => a.iter().for_each(assert_no_nulls),
        Value::Object(o) => o.values().for_each(assert_no_nulls),
        _ => {}
    }
}

/// A text frame with invalid UTF-8 in it, built by hand.
fn invalid_utf8_text_frame() -> WsMessage {
    WsMessage::Frame(Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(Data::Text),
        true,
    ))
}

/// Check an error frame's shape: code, retryable as the spec says, a message.
fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let retryable = matches!(
        code,
        "rate_limited" | "unavailable" | "not_owner" | "timeout" | "internal"
    );
    assert_eq!(v["retryable"], retryable, "{v}");
}

// ===========================================================================
// hello / welcome
// ===========================================================================

#[tokio::test]
async fn welcome_announces_identity_settings_and_limits() {
    let node = GatewayProcess::start(&[
        "--heartbeat-ms",
        "7000",
        "--idle-timeout-ms",
        "21000",
        "--resume-ttl-ms",
        "45000",
        "--max-frame-bytes",
        "32768",
        "--max-message-bytes",
        "4096",
        "--max-rooms",
        "7",
        "--sends-per-sec",
        "20",
        "--send-burst",
        "30",
        "--max-history-page",
        "40",
        "--max-replay",
        "500",
        "--node-id",
        "gw-test-1",
    ]);
    let meta = Json::from_text(r#"{"status":"available"}"#).unwrap();
    let cfg = node
        .config("alice")
        .with_device("phone")
        .with_meta(meta.clone());
    let alice = Client::connect(cfg).await.unwrap();
    let w = alice.welcome().clone();
    assert_eq!(w.v, 1);
    assert_eq!(w.user, "alice");
    assert_eq!(w.tenant, None);
    assert_eq!(w.device, "phone");
    // In cluster mode (CHORUS_TEST_CLUSTER=1) the nodes are gw-test-1, gw-test-1-1.
    assert!(w.node.starts_with("gw-test-1"), "{}", w.node);
    assert!(!w.session.is_empty());
    assert!(!w.resume_token.is_empty());
    assert_eq!(w.resume_ttl_ms, 45000);
    assert_eq!(w.heartbeat_ms, 7000);
    assert_eq!(w.idle_timeout_ms, 21000);
    assert_eq!(
        w.limits,
        Limits {
            max_frame_bytes: 32768,
            max_message_bytes: 4096,
            max_rooms: 7,
            sends_per_sec: 20,
            send_burst: 30,
            max_history_page: 40,
            max_replay: 500,
        }
    );
    assert!(w.rooms.is_empty(), "{:?}", w.rooms);
    assert!(!w.resumed, "a fresh session is not resumed");

    // A second connection of the same user: its own session, default device.
    let alice2 = node.connect("alice").await;
    let w2 = alice2.welcome();
    assert_eq!(w2.device, "default");
    assert_ne!(w2.session, w.session);
    assert!(!w2.resumed);

    // On the wire: exactly the documented fields, optional ones omitted.
    let (_raw, wire) = RawWs::hello(&node, "bob").await;
    let mut keys: Vec<&str> = wire
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "device",
            "heartbeat_ms",
            "idle_timeout_ms",
            "limits",
            "node",
            "op",
            "resume_token",
            "resume_ttl_ms",
            "resumed",
            "rooms",
            "session",
            "user",
            "v"
        ],
        "no tenant key without a tenant: {wire}"
    );
    assert_eq!(wire["limits"]["max_rooms"], 7);
    assert_eq!(wire["resumed"], false);
}

#[tokio::test]
async fn welcome_rooms_report_tips_positions_and_unread() {
    let node = GatewayProcess::start(&[]);
    let mut alice = node.connect("alice").await;
    let bob = node.connect("bob").await;
    alice.join("general", None).await.unwrap();
    alice.join("quiet", None).await.unwrap();
    bob.join("general", None).await.unwrap();
    for i in 1..=3 {
        bob.send("general", &format!("b-{i}"), text("hi"), None)
            .await
            .unwrap();
    }
    wait_msg(&mut alice, "general", 3).await;
    alice.read("general", 1).await.unwrap();
    // Frames are handled in order: the pong proves the read was processed.
    alice.ping().await.unwrap();
    alice.close().await.unwrap();

    let mut again = node.connect("alice").await;
    let w = again.welcome().clone();
    assert!(!w.resumed);
    let mut rooms = w.rooms.clone();
    rooms.sort_by(|a, b| a.room.cmp(&b.room));
    assert_eq!(rooms.len(), 2, "{rooms:?}");
    let general = &rooms[0];
    assert_eq!(general.room, "general");
    assert_eq!(
        (
            general.tip,
            general.last_read,
            general.last_delivered,
            general.unread
        ),
        (3, 1, 1, 2)
    );
    let quiet = &rooms[1];
    assert_eq!(quiet.room, "quiet");
    assert_eq!((quiet.tip, quiet.last_read, quiet.unread), (0, 0, 0));

    // Listed is not joined: nothing is delivered, and sending needs a join.
    bob.send("general", "b-4", text("anyone?"), None)
        .await
        .unwrap();
    let evs = events_for(&mut again, ms(800)).await;
    assert!(
        !evs.iter().any(|e| matches!(e, Event::Msg(_))),
        "a room listed in welcome is not joined: {evs:?}"
    );
    let err = again.send("general", "a-1", text("x"), None).await;
    assert_eq!(server_error(err).0, ErrorCode::NotJoined);

    // Bob's own messages count as unread for him (he never read).
    bob.close().await.unwrap();
    let bob2 = node.connect("bob").await;
    let g = bob2
        .welcome()
        .rooms
        .iter()
        .find(|r| r.room == "general")
        .cloned()
        .expect("bob is a member");
    assert_eq!((g.tip, g.last_read, g.unread), (4, 0, 4));
}

#[tokio::test]
async fn subprotocol_chorus_v1_is_echoed_only_when_offered() {
    let node = GatewayProcess::start(&[]);
    // Offered: echoed.
    for offer in ["chorus.v1", "other.v9, chorus.v1"] {
        let mut req = dev_url(&node.ws_url(), "alice")
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", offer.parse().unwrap());
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("chorus.v1"),
            "offer {offer:?}"
        );
        ws.close(None).await.unwrap();
    }

    // Nothing offered: accepted, v1 anyway.
    let cfg = ClientConfig {
        subprotocols: vec![],
        ..ClientConfig::dev(&node.ws_url(), "alice")
    };
    let c = Client::connect(cfg).await.unwrap();
    assert_eq!(c.welcome().v, 1);

    // Only something else offered: accepted without selecting one, v1 anyway.
    // (tungstenite refuses that answer as a client, so the upgrade is by hand.)
    let mut tcp = TcpStream::connect(&node.addr).await.unwrap();
    let req = format!(
        "GET /ws?user=alice HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: other.v9\r\n\r\n",
        node.addr
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let head = read_http_head(&mut tcp).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("sec-websocket-protocol"),
        "no subprotocol selected: {head}"
    );
    let ws = WebSocketStream::from_raw_socket(tcp, Role::Client, None).await;
    let mut raw = Raw { ws };
    raw.send(json!({"op": "hello"})).await;
    let w = raw.recv().await;
    assert_eq!(
        (w["op"].as_str(), w["v"].as_u64()),
        (Some("welcome"), Some(1))
    );
    assert_eq!(w["user"], "alice");
}

/// Read an HTTP response head byte by byte (nothing after it is consumed).
async fn read_http_head(tcp: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(T, tcp.read(&mut b))
            .await
            .expect("response in time")
            .expect("read");
        assert_eq!(n, 1, "connection closed during the upgrade");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test]
async fn token_sources_follow_the_documented_precedence() {
    let node = GatewayProcess::start(&[]);
    let alice = token("alice", 3600, None, None);
    let bob = token("bob", 3600, None, None);
    let forged = format!("{}x", &alice[..alice.len() - 1]);

    // hello.token alone.
    let c = Client::connect(hello_token_cfg(&node, &alice))
        .await
        .unwrap();
    assert_eq!(c.welcome().user, "alice");
    // ?access_token= beats hello.token.
    let cfg = ClientConfig::new(token_url(&node.ws_url(), &bob)).with_token(alice.clone());
    assert_eq!(Client::connect(cfg).await.unwrap().welcome().user, "bob");
    let cfg = ClientConfig::new(token_url(&node.ws_url(), &forged)).with_token(alice.clone());
    assert_eq!(
        refused(cfg).await.0,
        4501,
        "the query token wins, and it is bad"
    );
    // Authorization: Bearer beats both.
    let cfg = ClientConfig::new(token_url(&node.ws_url(), &alice))
        .with_bearer(&bob)
        .with_token(alice.clone());
    assert_eq!(Client::connect(cfg).await.unwrap().welcome().user, "bob");
    // Dev mode: ?user= without a token; with a token the token is verified.
    let c = Client::connect(ClientConfig::dev(&node.ws_url(), "dave"))
        .await
        .unwrap();
    assert_eq!(c.welcome().user, "dave");
    let cfg = ClientConfig::dev(&node.ws_url(), "dave").with_token(alice.clone());
    assert_eq!(Client::connect(cfg).await.unwrap().welcome().user, "alice");
    let cfg = ClientConfig::dev(&node.ws_url(), "dave").with_token(forged);
    assert_eq!(refused(cfg).await.0, 4501);
}

// ===========================================================================
// join / leave
// ===========================================================================

#[tokio::test]
async fn join_replays_since_before_joined_with_a_presence_snapshot() {
    let node = GatewayProcess::start(&["--node-id", "gw-join"]);
    let bob_cfg = node
        .config("bob")
        .with_device("desk")
        .with_meta(Json::from_text(r#"{"status":"busy"}"#).unwrap());
    let mut bob = Client::connect(bob_cfg).await.unwrap();
    bob.join("general", None).await.unwrap();
    let mut acks = Vec::new();
    for i in 1..=5 {
        acks.push(
            bob.send("general", &format!("b-{i}"), text(&format!("m{i}")), None)
                .await
                .unwrap(),
        );
    }

    let (mut alice, _) = RawWs::hello(&node, "alice").await;
    let before = chorus_tests::now_secs() as i64 * 1000;
    alice
        .send(json!({"op": "join", "id": 7, "room": "general", "since": 2}))
        .await;
    // On the wire: msg 3, 4, 5, then joined.
    for seq in 3..=5u64 {
        let m = alice.recv().await;
        assert_eq!(m["op"], "msg", "{m}");
        assert_eq!(m["room"], "general");
        assert_eq!(m["seq"], seq);
        assert_eq!(m["sender"], "bob");
        assert_eq!(m["cid"], format!("b-{seq}"));
        assert_eq!(m["body"], json!({"text": format!("m{seq}")}));
        let ack = &acks[seq as usize - 1];
        assert_eq!(m["id"], ack.msg_id.as_str());
        assert_eq!(m["ts"], ack.ts);
        assert!(m.get("meta").is_none(), "absent meta is omitted: {m}");
    }
    let j = alice.recv().await;
    assert_eq!(j["op"], "joined", "{j}");
    assert_eq!(j["id"], 7);
    assert_eq!(j["room"], "general");
    assert_eq!(j["tip"], 5);
    // A new member starts with what was sent before its first join read.
    assert_eq!(j["last_read"], 5);
    assert_eq!(j["recovered"], true);
    assert_eq!(j["replayed"], 3);
    let presence = j["presence"].as_array().unwrap();
    let mut users: Vec<&str> = presence
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob"]);
    let bob_entry = presence.iter().find(|u| u["user"] == "bob").unwrap();
    let dev = &bob_entry["devices"][0];
    assert_eq!(dev["device"], "desk");
    assert!(
        dev["node"].as_str().unwrap().starts_with("gw-join"),
        "{dev}"
    );
    assert_eq!(dev["meta"], json!({"status": "busy"}));
    let alice_dev = &presence.iter().find(|u| u["user"] == "alice").unwrap()["devices"][0];
    assert_eq!(alice_dev["device"], "default");
    assert!(
        alice_dev.get("meta").is_none(),
        "no meta, no key: {alice_dev}"
    );
    let since = alice_dev["since"].as_i64().unwrap();
    assert!(
        since >= before - 1000 && since <= before + 60_000,
        "{since}"
    );

    // Bob saw alice come online.
    let ev = wait_event(&mut bob, "presence_diff", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    let Event::PresenceDiff {
        room,
        joined,
        left,
        online,
    } = ev
    else {
        unreachable!()
    };
    assert_eq!(room, "general");
    assert_eq!(online, None, "a room below the hot threshold gets lists");
    assert!(left.is_empty());
    assert_eq!(joined.len(), 1);
    assert_eq!(joined[0].user, "alice");
    assert_eq!(joined[0].devices[0].device, "default");

    // Live messages follow joined.
    bob.send("general", "b-6", text("live"), None)
        .await
        .unwrap();
    let m = alice.recv_where("msg 6", |v| v["op"] == "msg").await;
    assert_eq!(m["seq"], 6);

    // The Rust client sees the same: replayed msgs are queued before join returns.
    let mut carol = node.connect("carol").await;
    let j = carol.join("general", Some(4)).await.unwrap();
    assert_eq!((j.tip, j.replayed, j.recovered), (6, 2, true));
    let mut seqs = Vec::new();
    while let Some(ev) = carol.try_next_event() {
        if let Event::Msg(m) = ev {
            seqs.push(m.seq);
        }
    }
    assert_eq!(seqs, [5, 6]);
    // Without since: nothing replayed, tip reported.
    let mut dave = node.connect("dave").await;
    let j = dave.join("general", None).await.unwrap();
    assert_eq!((j.tip, j.replayed, j.recovered), (6, 0, true));
    assert!(dave.try_next_event().is_none());
}

#[tokio::test]
async fn join_beyond_max_replay_is_not_recovered() {
    let node = GatewayProcess::start(&["--max-replay", "3"]);
    let bob = node.connect("bob").await;
    bob.join("r", None).await.unwrap();
    for i in 1..=6 {
        bob.send("r", &format!("b-{i}"), text("x"), None)
            .await
            .unwrap();
    }
    // 5 missed > 3: nothing replayed, live starts after the tip.
    let mut alice = node.connect("alice").await;
    let j = alice.join("r", Some(1)).await.unwrap();
    assert_eq!((j.tip, j.replayed, j.recovered), (6, 0, false));
    bob.send("r", "b-7", text("live"), None).await.unwrap();
    let ev = wait_event(&mut alice, "msg", |e| matches!(e, Event::Msg(_))).await;
    let Event::Msg(m) = ev else { unreachable!() };
    assert_eq!(m.seq, 7, "nothing replayed; the first msg is live");
    // The client backfills with history.
    let page = alice.history("r", None, Some(1), None).await.unwrap();
    let seqs: Vec<u64> = page.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [2, 3, 4, 5, 6, 7]);

    // Exactly max_replay missed: replayed.
    let carol = node.connect("carol").await;
    let j = carol.join("r", Some(4)).await.unwrap();
    assert_eq!((j.tip, j.replayed, j.recovered), (7, 3, true));
}

#[tokio::test]
async fn join_is_idempotent_and_replays_again_with_since() {
    let node = GatewayProcess::start(&[]);
    let (mut alice, _) = RawWs::hello(&node, "alice").await;
    alice.join(1, "r").await;
    let bob = node.connect("bob").await;
    bob.join("r", None).await.unwrap();
    bob.send("r", "b-1", text("1"), None).await.unwrap();
    bob.send("r", "b-2", text("2"), None).await.unwrap();
    for seq in 1..=2 {
        let m = alice.recv_where("msg", |v| v["op"] == "msg").await;
        assert_eq!(m["seq"], seq);
    }
    // Join again without since: joined again, no replay.
    let j = alice.join(2, "r").await;
    assert_eq!(
        (j["tip"].as_u64(), j["replayed"].as_u64()),
        (Some(2), Some(0))
    );
    // Join again with since=0: replays everything again, then joined.
    alice
        .send(json!({"op": "join", "id": 3, "room": "r", "since": 0}))
        .await;
    let frames: Vec<Value> = vec![alice.recv().await, alice.recv().await, alice.recv().await];
    assert_eq!(frames[0]["seq"], 1, "{frames:?}");
    assert_eq!(frames[1]["seq"], 2, "{frames:?}");
    assert_eq!(frames[2]["op"], "joined");
    assert_eq!(frames[2]["id"], 3);
    assert_eq!(frames[2]["replayed"], 2);
    // A null optional field counts as absent.
    let j = alice
        .request(json!({"op": "join", "id": 4, "room": "r", "since": null}))
        .await;
    assert_eq!(
        (j["op"].as_str(), j["replayed"].as_u64()),
        (Some("joined"), Some(0))
    );
    // Still one membership of one connection: one live copy of each new msg.
    bob.send("r", "b-3", text("3"), None).await.unwrap();
    let frames = alice.frames_for(ms(800)).await;
    let msgs: Vec<&Value> = frames.iter().filter(|v| v["op"] == "msg").collect();
    assert_eq!(msgs.len(), 1, "{frames:?}");
    assert_eq!(msgs[0]["seq"], 3);
}

#[tokio::test]
async fn leave_stops_delivery_and_ends_membership_unless_kept() {
    let node = GatewayProcess::start(&[]);
    let bob = node.connect("bob").await;
    bob.join("keep", None).await.unwrap();
    bob.join("drop", None).await.unwrap();
    let (mut alice, _) = RawWs::hello(&node, "alice").await;
    alice.join(1, "keep").await;
    alice.join(2, "drop").await;
    let left = alice
        .request(json!({"op": "leave", "id": 3, "room": "keep", "keep_membership": true}))
        .await;
    assert_eq!(left, json!({"op": "left", "id": 3, "room": "keep"}));
    let left = alice
        .request(json!({"op": "leave", "id": 4, "room": "drop"}))
        .await;
    assert_eq!(left, json!({"op": "left", "id": 4, "room": "drop"}));
    // Leaving a room that is not joined is fine too.
    let left = alice
        .request(json!({"op": "leave", "id": 5, "room": "never"}))
        .await;
    assert_eq!(left["op"], "left");

    bob.send("keep", "b-1", text("x"), None).await.unwrap();
    bob.send("drop", "b-2", text("x"), None).await.unwrap();
    let frames = alice.frames_for(ms(800)).await;
    assert!(
        !frames.iter().any(|v| v["op"] == "msg"),
        "nothing after leave: {frames:?}"
    );
    // Sending needs the room joined again.
    let e = alice
        .request(json!({"op": "send", "id": 6, "room": "keep", "cid": "a-1", "body": 1}))
        .await;
    assert_error(&e, "not_joined");

    let (_again, w) = RawWs::hello(&node, "alice").await;
    let rooms: Vec<&str> = w["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap())
        .collect();
    assert_eq!(
        rooms,
        ["keep"],
        "keep_membership keeps it, a plain leave ends it"
    );
    let keep = &w["rooms"][0];
    assert_eq!(
        (keep["tip"].as_u64(), keep["unread"].as_u64()),
        (Some(1), Some(1))
    );
}

// ===========================================================================
// send / ack / msg / history
// ===========================================================================

/// PROTOCOL.md 2.2: a room the token does not allow is `forbidden` for
/// `join`, `leave` and `history`, and `welcome.rooms` lists only rooms the
/// current token allows. The membership itself stays stored: a token that
/// allows the room again shows it again.
#[tokio::test]
async fn a_room_the_token_no_longer_allows_is_hidden_and_forbidden() {
    let node = GatewayProcess::start(&[]);
    let old = token("alice", 3600, Some(&["team-*"]), None);
    let alice = Client::connect(hello_token_cfg(&node, &old)).await.unwrap();
    alice.join("team-a", None).await.unwrap();
    alice.close().await.unwrap();
    let new = token("alice", 3600, Some(&["lobby"]), None);
    let alice = Client::connect(hello_token_cfg(&node, &new)).await.unwrap();
    assert!(
        alice.welcome().rooms.is_empty(),
        "welcome lists a room the token does not allow: {:?}",
        alice.welcome().rooms
    );
    assert_eq!(
        server_error(alice.join("team-a", None).await).0,
        ErrorCode::Forbidden
    );
    assert_eq!(
        server_error(alice.leave("team-a", false).await).0,
        ErrorCode::Forbidden
    );
    alice.close().await.unwrap();
    let alice = Client::connect(hello_token_cfg(&node, &old)).await.unwrap();
    let rooms: Vec<&str> = alice
        .welcome()
        .rooms
        .iter()
        .map(|r| r.room.as_str())
        .collect();
    assert_eq!(rooms, ["team-a"], "the membership is kept");
}

#[tokio::test]
async fn send_is_acked_after_msg_and_a_repeated_cid_is_a_duplicate() {
    let node = GatewayProcess::start(&[]);
    let mut bob = node.connect("bob").await;
    bob.join("r", None).await.unwrap();
    let (mut alice, _) = RawWs::hello(&node, "alice").await;
    alice.join(1, "r").await;
    // Body and meta are raw JSON text, kept verbatim (key order, spacing).
    let body = r#"{"text":"hi", "n":[1, 2]}"#;
    alice
        .text(format!(
            r#"{{"op":"send","id":2,"room":"r","cid":"c-1","body":{body},"meta":{{"reply_to":0}}}}"#
        ))
        .await;
    // The sender gets its own msg, and the ack.
    let mut msg = None;
    let mut ack = None;
    while msg.is_none() || ack.is_none() {
        let t = alice.next_text().await;
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["op"].as_str() {
            Some("msg") => {
                assert!(
                    t.contains(&format!(r#""body":{body}"#)),
                    "verbatim body: {t}"
                );
                msg = Some(v);
            }
            Some("ack") => ack = Some(v),
            Some("ping") => {}
            _ => panic!("unexpected {v}"),
        }
    }
    let (msg, ack) = (msg.unwrap(), ack.unwrap());
    assert_eq!(ack["id"], 2);
    assert_eq!(ack["room"], "r");
    assert_eq!(ack["cid"], "c-1");
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["duplicate"], false);
    assert!(
        ack["msg_id"].as_str().is_some_and(|s| s.len() == 36),
        "{ack}"
    );
    assert!(
        ack["ts"].as_i64().is_some_and(|t| t > 1_600_000_000_000),
        "{ack}"
    );
    assert_eq!(msg["seq"], 1);
    assert_eq!(msg["id"], ack["msg_id"]);
    assert_eq!(msg["ts"], ack["ts"]);
    assert_eq!(msg["sender"], "alice");
    assert_eq!(msg["cid"], "c-1");
    assert_eq!(msg["body"], json!({"text": "hi", "n": [1, 2]}));
    assert_eq!(msg["meta"], json!({"reply_to": 0}));
    // Other members get the same msg.
    let m = wait_msg(&mut bob, "r", 1).await;
    assert_eq!(m.id, ack["msg_id"].as_str().unwrap());
    assert_eq!(
        m.body.parse::<Value>().unwrap(),
        json!({"text": "hi", "n": [1, 2]})
    );
    assert_eq!(m.meta.as_ref().map(|m| m.get()), Some(r#"{"reply_to":0}"#));

    // The same cid again: stored once, original seq/id/ts, no new msg.
    let dup = alice
        .request(
            json!({"op": "send", "id": 3, "room": "r", "cid": "c-1", "body": {"text": "other"}}),
        )
        .await;
    assert_eq!(dup["op"], "ack", "{dup}");
    assert_eq!(dup["duplicate"], true);
    assert_eq!(dup["seq"], 1);
    assert_eq!(dup["msg_id"], ack["msg_id"]);
    assert_eq!(dup["ts"], ack["ts"]);
    // A different cid is a new message.
    let next = bob.send("r", "c-1-bob", text("mine"), None).await.unwrap();
    assert_eq!(
        (next.seq, next.duplicate),
        (2, false),
        "cids are per sender"
    );
    let evs = events_for(&mut bob, ms(500)).await;
    let seqs: Vec<u64> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Msg(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [2], "the duplicate was not delivered again");
    let page = bob.history("r", None, None, None).await.unwrap();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(
        page.messages[0].body.parse::<Value>().unwrap(),
        json!({"text": "hi", "n": [1, 2]}),
        "the first version wins"
    );
}

#[tokio::test]
async fn history_pages_backwards_forwards_and_newest() {
    let node = GatewayProcess::start(&["--max-history-page", "4"]);
    let alice = node.connect("alice").await;
    alice.join("r", None).await.unwrap();
    let mut acks = Vec::new();
    for i in 1..=10 {
        acks.push(
            alice
                .send("r", &format!("a-{i}"), text(&i.to_string()), None)
                .await
                .unwrap(),
        );
    }
    // History does not need the room joined.
    let carol = node.connect("carol").await;
    let seqs = |p: &chorus_protocol::client::HistoryPage| -> Vec<u64> {
        p.messages.iter().map(|m| m.seq).collect()
    };
    // (before, after, limit) -> (seqs, has_more)
    type Case = (Option<u64>, Option<u64>, Option<u32>, &'static [u64], bool);
    let cases: [Case; 9] = [
        (None, None, None, &[7, 8, 9, 10], true),
        (None, None, Some(2), &[9, 10], true),
        (Some(7), None, Some(2), &[5, 6], true),
        (Some(3), None, Some(4), &[1, 2], false),
        (None, Some(8), None, &[9, 10], false),
        (None, Some(2), Some(3), &[3, 4, 5], true),
        (None, Some(6), Some(4), &[7, 8, 9, 10], false),
        (None, Some(0), Some(100), &[1, 2, 3, 4], true),
        (None, Some(10), None, &[], false),
    ];
    for (before, after, limit, want, more) in cases {
        let p = carol.history("r", before, after, limit).await.unwrap();
        assert_eq!(p.room, "r");
        assert_eq!(
            (seqs(&p), p.has_more),
            (want.to_vec(), more),
            "before={before:?} after={after:?} limit={limit:?}"
        );
    }
    // Messages are the stored ones.
    let p = carol.history("r", Some(2), None, None).await.unwrap();
    let m = &p.messages[0];
    assert_eq!(
        (m.id.as_str(), m.ts, m.sender.as_str(), m.cid.as_deref()),
        (acks[0].msg_id.as_str(), acks[0].ts, "alice", Some("a-1"))
    );
    assert_eq!(m.body.get(), r#"{"text":"1"}"#);
    // An empty room.
    let p = carol.history("empty", None, None, None).await.unwrap();
    assert!(p.messages.is_empty() && !p.has_more);
    // On the wire the reply echoes the id.
    let (mut raw, _) = RawWs::hello(&node, "dave").await;
    let h = raw
        .request(json!({"op": "history", "id": 41, "room": "r", "after": 9}))
        .await;
    assert_eq!(h["op"], "history");
    assert_eq!(h["room"], "r");
    assert_eq!(h["has_more"], false);
    assert_eq!(h["messages"][0]["seq"], 10);
    assert_eq!(h["messages"][0]["room"], "r");
}

// ===========================================================================
// receipts
// ===========================================================================

#[tokio::test]
async fn receipts_reach_every_member_are_monotonic_clamped_and_set_unread() {
    let node = GatewayProcess::start(&["--receipt-interval-ms", "700"]);
    let mut phone = Client::connect(node.config("alice").with_device("phone"))
        .await
        .unwrap();
    let mut laptop = Client::connect(node.config("alice").with_device("laptop"))
        .await
        .unwrap();
    let mut bob = node.connect("bob").await;
    let mut carol = node.connect("carol").await;
    for c in [&mut phone, &mut laptop, &mut bob, &mut carol] {
        c.join("r", None).await.unwrap();
    }
    for i in 1..=3 {
        bob.send("r", &format!("b-{i}"), text("x"), None)
            .await
            .unwrap();
    }
    for c in [&mut phone, &mut laptop, &mut bob, &mut carol] {
        wait_msg(c, "r", 3).await;
    }

    // delivered: broadcast to everyone in the room, the sender's connection and
    // the user's other device included.
    phone.delivered("r", 2).await.unwrap();
    for c in [&mut phone, &mut laptop, &mut bob, &mut carol] {
        let ev = wait_event(c, "receipt delivered=2", |e| {
            receipt_of(e, "r", "alice").is_some()
        })
        .await;
        let r = receipt_of(&ev, "r", "alice").unwrap();
        assert_eq!((r.read, r.delivered), (None, Some(2)), "{ev:?}");
    }
    // read implies delivered.
    phone.read("r", 3).await.unwrap();
    for c in [&mut phone, &mut laptop, &mut bob, &mut carol] {
        let ev = wait_event(c, "receipt read=3", |e| {
            receipt_of(e, "r", "alice").is_some()
        })
        .await;
        let r = receipt_of(&ev, "r", "alice").unwrap();
        assert_eq!((r.read, r.delivered), (Some(3), Some(3)), "{ev:?}");
    }
    // Lower positions (from any device) are ignored: no receipt.
    laptop.read("r", 1).await.unwrap();
    laptop.delivered("r", 2).await.unwrap();
    laptop.ping().await.unwrap();
    let evs = events_for(&mut bob, ms(1500)).await;
    assert!(
        !evs.iter().any(|e| receipt_of(e, "r", "alice").is_some()),
        "a lower position is ignored: {evs:?}"
    );
    // Clamped to the tip.
    bob.read("r", 99).await.unwrap();
    let ev = wait_event(&mut carol, "bob's receipt", |e| {
        receipt_of(e, "r", "bob").is_some()
    })
    .await;
    let r = receipt_of(&ev, "r", "bob").unwrap();
    assert_eq!((r.read, r.delivered), (Some(3), Some(3)));

    // Coalesced: a burst in one room becomes fewer broadcasts with the last state.
    for i in 4..=6 {
        bob.send("r", &format!("b-{i}"), text("x"), None)
            .await
            .unwrap();
    }
    wait_msg(&mut phone, "r", 6).await;
    // Drain carol of everything so far, then burst.
    events_for(&mut carol, ms(300)).await;
    phone.delivered("r", 4).await.unwrap();
    phone.delivered("r", 5).await.unwrap();
    phone.read("r", 6).await.unwrap();
    phone.ping().await.unwrap();
    let evs = events_for(&mut carol, ms(2500)).await;
    let alice_receipts: Vec<_> = evs
        .iter()
        .filter_map(|e| receipt_of(e, "r", "alice"))
        .collect();
    assert!(
        !alice_receipts.is_empty() && alice_receipts.len() < 3,
        "3 frames within a few ms are coalesced: {alice_receipts:?}"
    );
    let last = alice_receipts.last().unwrap();
    assert_eq!((last.read, last.delivered), (Some(6), Some(6)));

    // The next welcome carries the positions and unread counts.
    phone.close().await.unwrap();
    let again = node.connect("alice").await;
    let st = again.welcome().rooms[0].clone();
    assert_eq!(
        (
            st.room.as_str(),
            st.tip,
            st.last_read,
            st.last_delivered,
            st.unread
        ),
        ("r", 6, 6, 6, 0)
    );
    carol.close().await.unwrap();
    let carol2 = node.connect("carol").await;
    let st = carol2.welcome().rooms[0].clone();
    assert_eq!(
        (st.tip, st.last_read, st.last_delivered, st.unread),
        (6, 0, 0, 6)
    );
}

// ===========================================================================
// typing / presence
// ===========================================================================

#[tokio::test]
async fn typing_reaches_other_connections_only_and_is_rate_limited() {
    let node = GatewayProcess::start(&["--typing-interval-ms", "1500"]);
    let mut phone = Client::connect(node.config("alice").with_device("phone"))
        .await
        .unwrap();
    let mut laptop = Client::connect(node.config("alice").with_device("laptop"))
        .await
        .unwrap();
    let mut bob = node.connect("bob").await;
    for c in [&mut phone, &mut laptop, &mut bob] {
        c.join("r", None).await.unwrap();
    }
    events_for(&mut bob, ms(300)).await; // presence diffs

    // A burst of starts: one is forwarded, the rest dropped silently.
    let started = Instant::now();
    for _ in 0..5 {
        phone.typing("r", true).await.unwrap();
    }
    phone.ping().await.unwrap();
    let to_bob = typing_events(&events_for(&mut bob, ms(1000)).await);
    assert_eq!(to_bob, [("alice".to_string(), "phone".to_string(), true)]);
    let to_laptop = typing_events(&events_for(&mut laptop, ms(300)).await);
    assert_eq!(
        to_laptop,
        [("alice".to_string(), "phone".to_string(), true)],
        "the user's other device gets it too"
    );
    let to_self = typing_events(&events_for(&mut phone, ms(300)).await);
    assert!(
        to_self.is_empty(),
        "never echoed to its sender: {to_self:?}"
    );

    // After the interval a start goes through again; a stop goes through.
    tokio::time::sleep_until(started + ms(1700)).await;
    let second = Instant::now();
    phone.typing("r", true).await.unwrap();
    let ev = wait_event(&mut bob, "typing", |e| matches!(e, Event::Typing { .. })).await;
    assert!(matches!(ev, Event::Typing { active: true, .. }), "{ev:?}");
    phone.typing("r", false).await.unwrap();
    let ev = wait_event(&mut bob, "typing stop", |e| {
        matches!(e, Event::Typing { .. })
    })
    .await;
    let Event::Typing {
        room,
        user,
        device,
        active,
    } = ev
    else {
        unreachable!()
    };
    assert_eq!(
        (room.as_str(), user.as_str(), device.as_str(), active),
        ("r", "alice", "phone", false)
    );
    // `active` defaults to true (once the interval since the last start is over).
    tokio::time::sleep_until(second + ms(1700)).await;
    phone
        .send_raw(r#"{"op":"typing","room":"r"}"#.into())
        .await
        .unwrap();
    let ev = wait_event(&mut bob, "typing", |e| matches!(e, Event::Typing { .. })).await;
    assert!(matches!(ev, Event::Typing { active: true, .. }), "{ev:?}");
    // Never stored: a later joiner sees nothing of it.
    let mut carol = node.connect("carol").await;
    carol.join("r", Some(0)).await.unwrap();
    let evs = events_for(&mut carol, ms(500)).await;
    assert!(typing_events(&evs).is_empty(), "{evs:?}");
}

/// Stops must not reset the start limit: alternating start/stop as fast as
/// possible forwards one start per interval (and the stop that clears it), not
/// every frame.
#[tokio::test]
async fn typing_alternating_start_and_stop_stays_rate_limited() {
    let node = GatewayProcess::start(&["--typing-interval-ms", "1500"]);
    let alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.join("r", None).await.unwrap();
    bob.join("r", None).await.unwrap();
    events_for(&mut bob, ms(300)).await;
    for _ in 0..10 {
        alice.typing("r", true).await.unwrap();
        alice.typing("r", false).await.unwrap();
    }
    alice.ping().await.unwrap();
    let got = typing_events(&events_for(&mut bob, ms(1000)).await);
    let starts = got.iter().filter(|(_, _, active)| *active).count();
    assert_eq!(starts, 1, "one start per interval: {got:?}");
    assert!(
        got.len() <= 2,
        "20 frames in, at most start+stop out: {got:?}"
    );
    assert!(
        !got.last().unwrap().2,
        "the indicator ends cleared: {got:?}"
    );
    // Stops with no start shown are not forwarded either.
    for _ in 0..5 {
        alice.typing("r", false).await.unwrap();
    }
    alice.ping().await.unwrap();
    let got = typing_events(&events_for(&mut bob, ms(600)).await);
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test]
async fn presence_snapshots_and_diffs_on_join_leave_and_disconnect() {
    let node = GatewayProcess::start(&["--presence-grace-ms", "4000", "--node-id", "gw-p"]);
    let mut bob = node.connect("bob").await;
    bob.join("r", None).await.unwrap();

    // First device joins: diff joined.
    let phone = Client::connect(
        node.config("alice")
            .with_device("phone")
            .with_meta(Json::from_text(r#"{"mood":"ok"}"#).unwrap()),
    )
    .await
    .unwrap();
    phone.join("r", None).await.unwrap();
    let ev = wait_event(&mut bob, "diff", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    let Event::PresenceDiff {
        room, joined, left, ..
    } = ev
    else {
        unreachable!()
    };
    assert_eq!(room, "r");
    assert!(left.is_empty());
    assert_eq!(joined[0].user, "alice");
    let d = &joined[0].devices[0];
    assert_eq!(
        (d.device.as_str(), d.meta.clone()),
        ("phone", Some(json!({"mood": "ok"})))
    );
    assert!(d.node.starts_with("gw-p"), "{}", d.node);

    // A second device: no diff (user-level changes only); the snapshot lists both.
    let laptop = Client::connect(node.config("alice").with_device("laptop"))
        .await
        .unwrap();
    laptop.join("r", None).await.unwrap();
    let users = phone.presence("r").await.unwrap();
    let mut summary: Vec<(String, Vec<String>)> = users
        .iter()
        .map(|u| {
            let mut d: Vec<String> = u.devices.iter().map(|d| d.device.clone()).collect();
            d.sort();
            (u.user.clone(), d)
        })
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        [
            (
                "alice".to_string(),
                vec!["laptop".to_string(), "phone".to_string()]
            ),
            ("bob".to_string(), vec!["default".to_string()]),
        ]
    );
    // The wire reply echoes the id.
    let reply = bob
        .request(chorus_protocol::ClientFrame::Presence {
            id: None,
            room: "r".into(),
        })
        .await
        .unwrap();
    assert!(
        matches!(&reply, chorus_protocol::ServerFrame::Presence { id: Some(_), room, users, .. } if room == "r" && users.len() == 2),
        "{reply:?}"
    );
    laptop.leave("r", true).await.unwrap();
    let evs = events_for(&mut bob, ms(800)).await;
    assert!(
        presence_diffs(&evs).is_empty(),
        "alice is still online: {evs:?}"
    );

    // Last device leaves explicitly: diff left at once (long before the grace).
    let t0 = Instant::now();
    phone.leave("r", false).await.unwrap();
    let ev = wait_event(&mut bob, "diff left", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    assert!(t0.elapsed() < ms(3000), "explicit leave is immediate");
    assert_eq!(presence_diffs(&[ev]), [(vec![], vec!["alice".to_string()])]);
    let users = bob.presence("r").await.unwrap();
    assert_eq!(users.len(), 1);

    // Back, then the connection drops: offline only after the grace period.
    phone.join("r", None).await.unwrap();
    let ev = wait_event(&mut bob, "diff joined", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    assert_eq!(presence_diffs(&[ev]), [(vec!["alice".to_string()], vec![])]);
    laptop.close().await.unwrap();
    let t0 = Instant::now();
    phone.abort();
    let evs = events_for(&mut bob, ms(2500)).await;
    assert!(
        presence_diffs(&evs).is_empty(),
        "not before the grace: {evs:?}"
    );
    let ev = wait_event(&mut bob, "diff left", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    let waited = t0.elapsed();
    assert!(
        waited >= ms(3600),
        "left after the grace, not after {waited:?}"
    );
    assert_eq!(presence_diffs(&[ev]), [(vec![], vec!["alice".to_string()])]);
    let users = bob.presence("r").await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].user, "bob");
}

// ===========================================================================
// heartbeats
// ===========================================================================

#[tokio::test]
async fn client_ping_gets_pong_with_or_without_id() {
    let node = GatewayProcess::start(&[]);
    let (mut raw, _) = RawWs::hello(&node, "alice").await;
    raw.send(json!({"op": "ping", "id": 8})).await;
    assert_eq!(raw.recv().await, json!({"op": "pong", "id": 8}));
    raw.send(json!({"op": "ping"})).await;
    assert_eq!(raw.recv().await, json!({"op": "pong"}));
    // A large id (u64) is echoed exactly.
    raw.text(r#"{"op":"ping","id":18446744073709551615}"#).await;
    let v = raw.recv().await;
    assert_eq!(v["id"].as_u64(), Some(u64::MAX), "{v}");
    // A client pong has no reply.
    raw.send(json!({"op": "pong"})).await;
    raw.send(json!({"op": "ping", "id": 9})).await;
    assert_eq!(raw.recv().await, json!({"op": "pong", "id": 9}));
}

#[tokio::test]
async fn server_pings_keep_answering_clients_connected() {
    let node = GatewayProcess::start(&["--heartbeat-ms", "300", "--idle-timeout-ms", "1500"]);
    // By hand: pings arrive every heartbeat_ms; answering keeps the connection open.
    let (mut raw, w) = RawWs::hello(&node, "alice").await;
    assert_eq!(w["heartbeat_ms"], 300);
    assert_eq!(w["idle_timeout_ms"], 1500);
    let t0 = Instant::now();
    let mut pings = 0;
    while t0.elapsed() < ms(3000) {
        let v = raw.next_any().await;
        assert_eq!(v, json!({"op": "ping"}));
        pings += 1;
        raw.send(json!({"op": "pong"})).await;
    }
    assert!((5..=15).contains(&pings), "{pings} pings in 3 s at 300 ms");
    let p = raw.request(json!({"op": "ping", "id": 1})).await;
    assert_eq!(p["op"], "pong");

    // The Rust client answers pings itself: idle for twice the idle timeout, still open.
    let mut c = node.connect("bob").await;
    let evs = events_for(&mut c, ms(3200)).await;
    assert!(
        !evs.iter().any(|e| matches!(e, Event::Closed { .. })),
        "{evs:?}"
    );
    c.ping().await.expect("still connected");
}

// ===========================================================================
// shutdown
// ===========================================================================

#[tokio::test]
async fn sigterm_sends_reconnect_then_closes_4000() {
    let node = GatewayProcess::start(&[]);
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.join("r", None).await.unwrap();
    bob.join("r", None).await.unwrap();
    for pid in node.pids() {
        signal(pid, "TERM");
    }
    for c in [&mut alice, &mut bob] {
        let mut reconnect = None;
        let (code, reason) = loop {
            let ev = tokio::time::timeout(T, c.next_event())
                .await
                .expect("close in time")
                .expect("events until Closed");
            match ev {
                Event::Reconnect {
                    reason,
                    retry_after_ms,
                } => reconnect = Some((reason, retry_after_ms)),
                Event::Closed { code, reason } => break (code, reason),
                _ => {}
            }
        };
        let (why, after) = reconnect.expect("a reconnect frame precedes the close");
        assert!(!why.is_empty());
        assert!(after > 0);
        assert_eq!(code, Some(4000));
        assert!(reason.starts_with("shutdown"), "{reason}");
    }
    // The drain ends with the process: the port stops answering.
    let t0 = Instant::now();
    for addr in node.node_addrs() {
        while TcpStream::connect(&addr).await.is_ok() {
            assert!(t0.elapsed() < T, "the node did not exit after draining");
            tokio::time::sleep(ms(100)).await;
        }
    }
}

// ===========================================================================
// error codes
// ===========================================================================

#[tokio::test]
async fn malformed_frames_get_bad_request_and_the_connection_stays_open() {
    let node = GatewayProcess::start(&[]);
    let (mut raw, _) = RawWs::hello(&node, "alice").await;
    raw.join(1, "r").await;

    // Cases where the id cannot be read: no id in the error.
    for bad in [
        "{not json",
        "[1,2]",
        "\"hello\"",
        "42",
        "",
        r#"{"op":"ping","id":-1}"#,
        r#"{"op":"ping","id":1.5}"#,
        r#"{"op":"ping","id":"7"}"#,
    ] {
        raw.text(bad).await;
        let e = raw.error().await;
        assert_error(&e, "bad_request");
        assert!(e.get("id").is_none(), "{bad}: {e}");
    }
    // Cases with a readable id: echoed.
    for (id, bad) in [
        (4, r#"{"op":"join","id":4,"room":5}"#),
        (5, r#"{"op":"send","id":5,"room":"r","cid":"x"}"#),
        (6, r#"{"id":6}"#),
        (7, r#"{"op":"read","id":7,"room":"r"}"#),
        (8, r#"{"op":"join","id":8}"#),
        (9, r#"{"op":"ping","id":9,"room":5}"#),
        (
            10,
            r#"{"op":"leave","id":10,"room":"r","keep_membership":"yes"}"#,
        ),
        (
            11,
            r#"{"op":"send","id":11,"room":"r","cid":"x","body":null}"#,
        ),
        (12, r#"{"op":"history","id":12,"room":"r","limit":-1}"#),
    ] {
        raw.text(bad).await;
        let e = raw.error().await;
        assert_error(&e, "bad_request");
        assert_eq!(e["id"], id, "{bad}: {e}");
    }
    // cid out of range on a send to a joined room: the error names cid and room.
    let long = "c".repeat(129);
    let e = raw
        .request(json!({"op": "send", "id": 20, "room": "r", "cid": long, "body": 1}))
        .await;
    assert_error(&e, "bad_request");
    assert_eq!(
        (e["cid"].as_str(), e["room"].as_str()),
        (Some(long.as_str()), Some("r"))
    );
    let e = raw
        .request(json!({"op": "send", "id": 21, "room": "r", "cid": "", "body": 1}))
        .await;
    assert_error(&e, "bad_request");
    assert_eq!(
        (e["cid"].as_str(), e["room"].as_str()),
        (Some(""), Some("r"))
    );
    // A 128-character cid is fine; unknown fields are ignored.
    let ok = raw
        .request(json!({"op": "send", "id": 22, "room": "r", "cid": "c".repeat(128), "body": 1, "x": {"y": 1}}))
        .await;
    assert_eq!(ok["op"], "ack", "{ok}");
    // Nothing bad was stored.
    let h = raw
        .request(json!({"op": "history", "id": 23, "room": "r"}))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1, "{h}");
    let p = raw.request(json!({"op": "ping", "id": 24})).await;
    assert_eq!(p, json!({"op": "pong", "id": 24}));
}

/// Spec 1.3: the id is echoed "in any error frame caused by that request";
/// only a negative or non-integer id is not. Here the id is fine but `op` has
/// the wrong type.
#[tokio::test]
async fn bad_request_with_a_non_string_op_still_echoes_a_valid_id() {
    let node = GatewayProcess::start(&[]);
    let (mut raw, _) = RawWs::hello(&node, "alice").await;
    raw.text(r#"{"op":7,"id":13}"#).await;
    let e = raw.error().await;
    assert_error(&e, "bad_request");
    assert_eq!(e["id"], 13, "the id was readable: {e}");
}

#[tokio::test]
async fn unknown_op_echoes_the_id() {
    let node = GatewayProcess::start(&[]);
    let (mut raw, _) = RawWs::hello(&node, "alice").await;
    let e = raw.request(json!({"op": "frobnicate", "id": 3})).await;
    assert_error(&e, "unknown_op");
    raw.send(json!({"op": "welcome"})).await;
    let e = raw.error().await;
    assert_error(&e, "unknown_op");
    assert!(e.get("id").is_none());
    let p = raw.request(json!({"op": "ping", "id": 4})).await;
    assert_eq!(p["op"], "pong");
}

#[tokio::test]
async fn invalid_room_names_are_refused_by_every_room_request() {
    let node = GatewayProcess::start(&[]);
    let (mut raw, _) = RawWs::hello(&node, "alice").await;
    let too_long = "x".repeat(129);
    for (id, room) in [
        (1u64, "a/b"),
        (2, ""),
        (3, too_long.as_str()),
        (4, "sp ace"),
        (5, "é"),
    ] {
        let e = raw
            .request(json!({"op": "join", "id": id, "room": room}))
            .await;
        assert_error(&e, "invalid_room");
        assert_eq!(e["room"], room, "{e}");
    }
    let e = raw
        .request(json!({"op": "leave", "id": 10, "room": "a/b"}))
        .await;
    assert_error(&e, "invalid_room");
    let e = raw
        .request(json!({"op": "history", "id": 11, "room": "a/b"}))
        .await;
    assert_error(&e, "invalid_room");
    let e = raw
        .request(json!({"op": "presence", "id": 12, "room": "a/b"}))
        .await;
    assert_error(&e, "invalid_room");
    for (id, op) in [(13u64, "read"), (14, "delivered")] {
        let e = raw
            .request(json!({"op": op, "id": id, "room": "a/b", "seq": 1}))
            .await;
        assert_error(&e, "invalid_room");
        assert_eq!(e["room"], "a/b");
    }
    let e = raw
        .request(json!({"op": "send", "id": 15, "room": "a/b", "cid": "c1", "body": 1}))
        .await;
    assert_error(&e, "invalid_room");
    assert_eq!(
        (e["cid"].as_str(), e["room"].as_str()),
        (Some("c1"), Some("a/b"))
    );
    raw.send(json!({"op": "typing", "room": "a/b"})).await;
    let e = raw.error().await;
    assert_error(&e, "invalid_room");
    assert!(e.get("id").is_none());
    assert_eq!(e["room"], "a/b");

    // Every allowed character, and the longest name, are fine.
    raw.join(20, "Az09_-.:@#").await;
    raw.join(21, &"y".repeat(128)).await;
}

#[tokio::test]
async fn token_room_patterns_forbid_other_rooms() {
    let node = GatewayProcess::start(&[]);
    let jwt = token("alice", 3600, Some(&["team-*", "lobby"]), None);
    let alice = Client::connect(hello_token_cfg(&node, &jwt)).await.unwrap();
    alice.join("team-red", None).await.unwrap();
    alice.join("team-", None).await.unwrap();
    alice.join("lobby", None).await.unwrap();
    for room in ["lobby2", "random", "team", "xteam-red"] {
        let r = alice.join(room, None).await;
        assert_eq!(server_error(r).0, ErrorCode::Forbidden, "{room}");
        let r = alice.history(room, None, None, None).await;
        assert_eq!(server_error(r).0, ErrorCode::Forbidden, "history {room}");
    }
    // Not joined, so not sendable either.
    let r = alice.send("random", "c-1", text("x"), None).await;
    assert_eq!(server_error(r).0, ErrorCode::NotJoined);
    // On the wire: id and room echoed.
    let (mut raw, _) = RawWs::open(&token_url(&node.ws_url(), &jwt))
        .await
        .into_hello()
        .await;
    let e = raw
        .request(json!({"op": "join", "id": 5, "room": "random"}))
        .await;
    assert_error(&e, "forbidden");
    assert_eq!(e["room"], "random");
    // An empty list allows nothing; "*" allows everything.
    let none = token("bob", 3600, Some(&[]), None);
    let bob = Client::connect(hello_token_cfg(&node, &none))
        .await
        .unwrap();
    assert_eq!(
        server_error(bob.join("lobby", None).await).0,
        ErrorCode::Forbidden
    );
    let all = token("carol", 3600, Some(&["*"]), None);
    let carol = Client::connect(hello_token_cfg(&node, &all)).await.unwrap();
    carol.join("random", None).await.unwrap();
    carol.join("team-red", None).await.unwrap();
    // Forbidden joins leave no membership behind.
    alice.close().await.unwrap();
    let again = Client::connect(hello_token_cfg(&node, &jwt)).await.unwrap();
    let mut rooms: Vec<String> = again
        .welcome()
        .rooms
        .iter()
        .map(|r| r.room.clone())
        .collect();
    rooms.sort();
    assert_eq!(rooms, ["lobby", "team-", "team-red"]);
}

impl RawWs {
    /// `hello` on an already upgraded socket (credentials in the URL).
    async fn into_hello(mut self) -> (RawWs, Value) {
        self.send(json!({"op": "hello"})).await;
        let w = self.recv().await;
        assert_eq!(w["op"], "welcome", "{w}");
        (self, w)
    }
}

#[tokio::test]
async fn direct_rooms_admit_only_their_two_members() {
    let node = GatewayProcess::start(&[]);
    let room = chorus_protocol::direct_room("bob", "alice");
    assert_eq!(room, "dm:alice:bob");
    let alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.join(&room, None).await.unwrap();
    bob.join(&room, None).await.unwrap();
    let ack = alice.send(&room, "a-1", text("psst"), None).await.unwrap();
    let m = wait_msg(&mut bob, &room, ack.seq).await;
    assert_eq!(m.sender, "alice");
    // A third user is refused whatever the token says.
    for jwt in [
        token("carol", 3600, None, None),
        token("carol", 3600, Some(&["*"]), None),
        token("carol", 3600, Some(&["dm:*"]), None),
    ] {
        let carol = Client::connect(hello_token_cfg(&node, &jwt)).await.unwrap();
        assert_eq!(
            server_error(carol.join(&room, None).await).0,
            ErrorCode::Forbidden
        );
        let h = carol.history(&room, None, None, None).await;
        assert_eq!(server_error(h).0, ErrorCode::Forbidden);
    }
    // Members with a token covering dm:* get in.
    let jwt = token("alice", 3600, Some(&["dm:*"]), None);
    let a2 = Client::connect(hello_token_cfg(&node, &jwt)).await.unwrap();
    let j = a2.join(&room, None).await.unwrap();
    assert_eq!(j.tip, 1);
}

#[tokio::test]
async fn room_requests_on_a_room_not_joined_get_not_joined() {
    let node = GatewayProcess::start(&[]);
    let (mut raw, _) = RawWs::hello(&node, "alice").await;
    let e = raw
        .request(json!({"op": "send", "id": 1, "room": "r", "cid": "c-1", "body": {"t": 1}}))
        .await;
    assert_error(&e, "not_joined");
    assert_eq!(
        (e["cid"].as_str(), e["room"].as_str()),
        (Some("c-1"), Some("r"))
    );
    for (id, op) in [(2u64, "read"), (3, "delivered")] {
        let e = raw
            .request(json!({"op": op, "id": id, "room": "r", "seq": 1}))
            .await;
        assert_error(&e, "not_joined");
        assert_eq!(e["room"], "r");
    }
    let e = raw
        .request(json!({"op": "presence", "id": 4, "room": "r"}))
        .await;
    assert_error(&e, "not_joined");
    raw.send(json!({"op": "typing", "room": "r", "active": true}))
        .await;
    let e = raw.error().await;
    assert_error(&e, "not_joined");
    assert!(e.get("id").is_none());
    // read/delivered without id: the error has none either.
    raw.send(json!({"op": "read", "room": "r", "seq": 1})).await;
    let e = raw.error().await;
    assert_error(&e, "not_joined");
    assert!(e.get("id").is_none());
    // After join it works, after leave it fails again.
    raw.join(5, "r").await;
    let a = raw
        .request(json!({"op": "send", "id": 6, "room": "r", "cid": "c-1", "body": {"t": 1}}))
        .await;
    assert_eq!(a["op"], "ack");
    raw.request(json!({"op": "leave", "id": 7, "room": "r", "keep_membership": true}))
        .await;
    let e = raw
        .request(json!({"op": "presence", "id": 8, "room": "r"}))
        .await;
    assert_error(&e, "not_joined");
    // The Rust client reports a not_joined read as an event.
    let mut c = node.connect("bob").await;
    c.read("nowhere", 3).await.unwrap();
    let ev = wait_event(&mut c, "error event", |e| matches!(e, Event::Error { .. })).await;
    assert!(
        matches!(&ev, Event::Error { code: ErrorCode::NotJoined, room: Some(r), retryable: false, .. } if r == "nowhere"),
        "{ev:?}"
    );
}

#[tokio::test]
async fn joins_beyond_max_rooms_get_too_many_rooms() {
    let node = GatewayProcess::start(&["--max-rooms", "2"]);
    let (mut raw, w) = RawWs::hello(&node, "alice").await;
    assert_eq!(w["limits"]["max_rooms"], 2);
    raw.join(1, "a").await;
    raw.join(2, "b").await;
    let e = raw
        .request(json!({"op": "join", "id": 3, "room": "c"}))
        .await;
    assert_error(&e, "too_many_rooms");
    assert_eq!(e["room"], "c");
    // Re-joining a joined room is not a new room.
    raw.join(4, "a").await;
    // Leaving (even keeping the membership) frees a slot.
    raw.request(json!({"op": "leave", "id": 5, "room": "b", "keep_membership": true}))
        .await;
    raw.join(6, "c").await;
    // The limit is per connection.
    let other = node.connect("alice").await;
    other.join("d", None).await.unwrap();
    other.join("e", None).await.unwrap();
    assert_eq!(
        server_error(other.join("f", None).await).0,
        ErrorCode::TooManyRooms
    );
}

#[tokio::test]
async fn oversized_messages_get_message_too_large() {
    let node = GatewayProcess::start(&["--max-message-bytes", "64"]);
    let (mut raw, w) = RawWs::hello(&node, "alice").await;
    assert_eq!(w["limits"]["max_message_bytes"], 64);
    raw.join(1, "r").await;
    // Exactly 64 bytes of raw body: accepted.
    let body64 = json!("x".repeat(62));
    assert_eq!(body64.to_string().len(), 64);
    let a = raw
        .request(json!({"op": "send", "id": 2, "room": "r", "cid": "ok", "body": body64}))
        .await;
    assert_eq!(a["op"], "ack", "{a}");
    // 65 bytes.
    let body65 = json!("x".repeat(63));
    let e = raw
        .request(json!({"op": "send", "id": 3, "room": "r", "cid": "big", "body": body65}))
        .await;
    assert_error(&e, "message_too_large");
    assert_eq!(
        (e["cid"].as_str(), e["room"].as_str()),
        (Some("big"), Some("r"))
    );
    // body + meta counts.
    let e = raw
        .request(json!({"op": "send", "id": 4, "room": "r", "cid": "meta",
                        "body": "x".repeat(38), "meta": {"k": "y".repeat(20)}}))
        .await;
    assert_error(&e, "message_too_large");
    assert_eq!(e["cid"], "meta");
    let h = raw
        .request(json!({"op": "history", "id": 5, "room": "r"}))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1, "{h}");
}

#[tokio::test]
async fn sends_above_the_rate_get_rate_limited_with_retry_after() {
    let node = GatewayProcess::start(&["--sends-per-sec", "1", "--send-burst", "2"]);
    let (mut raw, _) = RawWs::hello(&node, "alice").await;
    raw.join(1, "r").await;
    for i in 1..=3 {
        raw.send(
            json!({"op": "send", "id": 10 + i, "room": "r", "cid": format!("c-{i}"), "body": i}),
        )
        .await;
    }
    let mut acks = Vec::new();
    let mut errors = Vec::new();
    while acks.len() + errors.len() < 3 {
        let v = raw.recv().await;
        match v["op"].as_str() {
            Some("ack") => acks.push(v),
            Some("error") => errors.push(v),
            Some("msg") => {}
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(acks.len(), 2, "the burst is 2: {acks:?} {errors:?}");
    let e = &errors[0];
    assert_error(e, "rate_limited");
    assert_eq!(e["id"], 13);
    assert_eq!(
        (e["cid"].as_str(), e["room"].as_str()),
        (Some("c-3"), Some("r"))
    );
    let wait = e["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((1..=1100).contains(&wait), "{wait}");
    // Nothing was stored; after the wait the same cid goes through.
    tokio::time::sleep(ms(wait + 50)).await;
    let a = raw
        .request(json!({"op": "send", "id": 20, "room": "r", "cid": "c-3", "body": 3}))
        .await;
    assert_eq!(a["op"], "ack", "{a}");
    assert_eq!(
        (a["seq"].as_u64(), a["duplicate"].as_bool()),
        (Some(3), Some(false))
    );
    // The Rust client's retry honours retry_after_ms.
    let c = node.connect("bob").await;
    c.join("r", None).await.unwrap();
    for i in 0..4 {
        c.send_with_retry("r", &format!("b-{i}"), text("x"))
            .await
            .expect("retried until accepted");
    }
    let h = c.history("r", None, None, None).await.unwrap();
    assert_eq!(h.messages.len(), 7);
}

#[tokio::test]
async fn second_hello_is_invalid_state() {
    let node = GatewayProcess::start(&[]);
    let (mut raw, w) = RawWs::hello(&node, "alice").await;
    let jwt = token("mallory", 3600, None, None);
    raw.send(json!({"op": "hello", "token": jwt})).await;
    let e = raw.error().await;
    assert_error(&e, "invalid_state");
    assert!(e.get("id").is_none(), "hello has no id: {e}");
    // Still alice, same session, connection open.
    raw.join(1, "r").await;
    // The ack and the msg may come in either order (the msg is published
    // before the ack is sent; on one node the ack often overtakes it).
    raw.send(json!({"op": "send", "id": 2, "room": "r", "cid": "c", "body": 1}))
        .await;
    let (mut ack, mut msg) = (None, None);
    while ack.is_none() || msg.is_none() {
        let v = raw.recv().await;
        match v["op"].as_str() {
            Some("ack") => ack = Some(v),
            Some("msg") => msg = Some(v),
            _ => {}
        }
    }
    assert_eq!(ack.unwrap()["id"], 2);
    assert_eq!(msg.unwrap()["sender"], "alice");
    assert!(w["session"].is_string());
    // The client sees it as an error event.
    let mut c = node.connect("bob").await;
    c.send_raw(r#"{"op":"hello"}"#.into()).await.unwrap();
    let ev = wait_event(&mut c, "error", |e| matches!(e, Event::Error { .. })).await;
    assert!(
        matches!(
            ev,
            Event::Error {
                code: ErrorCode::InvalidState,
                retryable: false,
                ..
            }
        ),
        "{ev:?}"
    );
}

/// `timeout`: with a send timeout of 0 ms no commit can finish in time (the
/// writer is another task doing an SQLite transaction), so every send times
/// out — yet the message is committed and delivered, and stored once.
#[tokio::test]
async fn send_commit_timeout_is_retryable_and_the_retry_stores_nothing_new() {
    let node = GatewayProcess::start(&["--send-timeout-ms", "0"]);
    let mut bob = node.connect("bob").await;
    bob.join("r", None).await.unwrap();
    let (mut raw, _) = RawWs::hello(&node, "alice").await;
    raw.join(1, "r").await;
    let e = raw
        .request(json!({"op": "send", "id": 2, "room": "r", "cid": "c-1", "body": 1}))
        .await;
    assert_error(&e, "timeout");
    assert_eq!(
        (e["cid"].as_str(), e["room"].as_str()),
        (Some("c-1"), Some("r"))
    );
    assert!(e["retry_after_ms"].as_u64().is_some(), "{e}");
    // It was committed after all.
    wait_msg(&mut bob, "r", 1).await;
    // Retry with the same cid: stored once whatever the reply.
    let r = raw
        .request(json!({"op": "send", "id": 3, "room": "r", "cid": "c-1", "body": 1}))
        .await;
    match r["op"].as_str() {
        Some("ack") => assert_eq!(
            (r["seq"].as_u64(), r["duplicate"].as_bool()),
            (Some(1), Some(true))
        ),
        _ => assert_error(&r, "timeout"),
    }
    tokio::time::sleep(ms(500)).await;
    let h = bob.history("r", None, None, None).await.unwrap();
    assert_eq!(h.messages.len(), 1);
    let evs = events_for(&mut bob, ms(300)).await;
    assert!(!evs.iter().any(|e| matches!(e, Event::Msg(_))), "{evs:?}");
}

/// `unavailable`: a writer queue of 1 overflows when sends are pipelined while
/// a group commit runs.
#[tokio::test]
async fn writer_queue_overflow_is_unavailable_and_retryable() {
    let node = GatewayProcess::start(&[
        "--writer-queue",
        "1",
        "--sends-per-sec",
        "100000",
        "--send-burst",
        "100000",
        "--frames-per-sec",
        "100000",
        "--frame-burst",
        "100000",
        "--user-sends-per-sec",
        "0",
    ]);
    let (mut raw, _) = RawWs::hello(&node, "alice").await;
    raw.join(1, "r").await;
    const N: u64 = 200;
    let frames: Vec<WsMessage> = (0..N)
        .map(|i| {
            let f = json!({"op": "send", "id": 100 + i, "room": "r", "cid": format!("c-{i}"), "body": i});
            WsMessage::Text(f.to_string().into())
        })
        .collect();
    let mut stream = futures_util::stream::iter(frames.into_iter().map(Ok));
    raw.ws.send_all(&mut stream).await.unwrap();
    let mut acked = Vec::new();
    let mut unavailable = Vec::new();
    while (acked.len() + unavailable.len()) < N as usize {
        let v = raw.recv().await;
        match v["op"].as_str() {
            Some("ack") => acked.push(v["cid"].as_str().unwrap().to_owned()),
            Some("error") => {
                assert_error(&v, "unavailable");
                assert_eq!(v["room"], "r");
                assert!(v["retry_after_ms"].as_u64().is_some(), "{v}");
                unavailable.push(v["cid"].as_str().unwrap().to_owned());
            }
            Some("msg") => {}
            _ => panic!("unexpected {v}"),
        }
    }
    assert!(
        !unavailable.is_empty(),
        "{N} pipelined sends never overflowed a writer queue of 1"
    );
    // Retrying the refused ones with the same cid stores each once.
    for (i, cid) in unavailable.iter().enumerate() {
        let a = loop {
            let a = raw
                .request(json!({"op": "send", "id": 1000 + i, "room": "r", "cid": cid, "body": 0}))
                .await;
            if a["op"] == "ack" {
                break a;
            }
            assert_error(&a, "unavailable");
            tokio::time::sleep(ms(100)).await;
        };
        assert_eq!(a["duplicate"], false, "{a}");
    }
    let h = raw
        .request(json!({"op": "history", "id": 5000, "room": "r", "after": N - 1}))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);
    assert_eq!(h["messages"][0]["seq"], N, "{N} sends, {N} messages");
}

// ===========================================================================
// close codes
// ===========================================================================

#[tokio::test]
async fn close_4001_when_pongs_stop() {
    let node = GatewayProcess::start(&["--heartbeat-ms", "200", "--idle-timeout-ms", "1000"]);
    let mut by = bystander(&node).await;
    let cfg = ClientConfig {
        auto_pong: false,
        ..node.config("alice")
    };
    let t0 = Instant::now();
    let mut alice = Client::connect(cfg).await.unwrap();
    let (code, reason) = wait_closed(&mut alice).await;
    assert_eq!(code, Some(4001));
    assert!(reason.starts_with("heartbeat_timeout"), "{reason}");
    assert!(t0.elapsed() >= ms(900), "not before the idle timeout");
    // The bystander answers pings and stays.
    assert_client_works(&mut by, "bystanders").await;
    assert_node_serves(&node).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_4002_slow_consumer_spares_everyone_else() {
    if GatewayProcess::single_node_only(
        "it watches one process's /metrics; tests/tests/guarantees.rs covers slow consumers in both modes",
    ) {
        return;
    }
    let node = GatewayProcess::start(&[
        "--outbound-queue",
        "64",
        "--write-timeout-ms",
        "1000",
        "--sends-per-sec",
        "100000",
        "--send-burst",
        "100000",
        "--frames-per-sec",
        "100000",
        "--frame-burst",
        "100000",
        "--user-sends-per-sec",
        "0",
    ]);
    // The slow one: a socket with a small receive buffer that stops reading.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock.connect(node.addr.parse().unwrap()).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(node.url_for("slow"), tcp)
        .await
        .unwrap();
    let mut slow = Raw { ws };
    slow.send(json!({"op": "hello"})).await;
    assert_eq!(slow.recv().await["op"], "welcome");
    slow.join(1, "r").await;

    let mut reader = node.connect("reader").await;
    reader.join("r", None).await.unwrap();
    let flooder = node.connect("flooder").await;
    flooder.join("r", None).await.unwrap();

    let http = reqwest::Client::new();
    let metrics_url = format!("{}/metrics", node.http_url());
    let body = Json::from_value(&json!({"pad": "p".repeat(8000)}));
    let mut sent = 0u64;
    let mut killed = false;
    let t0 = Instant::now();
    while !killed {
        assert!(
            t0.elapsed() < ms(90_000),
            "no slow-consumer close after {sent} messages"
        );
        // Pipelined rounds, short enough that the slow reader starts reading
        // well within the 2 s the server gives its close frame.
        // Rounds stay well below the queue: a burst published at once must fit
        // the queue of a reader that does read.
        let round = (sent + 1..=sent + 20).map(|i| {
            let h = flooder.handle();
            let body = body.clone();
            async move { h.send("r", &format!("f-{i}"), body, None).await }
        });
        for ack in futures_util::future::join_all(round).await {
            ack.expect("the flooder is unaffected");
        }
        sent += 20;
        let text = http
            .get(&metrics_url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        killed = text.lines().any(|l| {
            l.starts_with("chorus_slow_consumer_closes_total")
                || (l.starts_with("chorus_closes_total") && l.contains("slow_consumer"))
        });
    }
    // Now read: what was queued, then the close.
    let (code, reason) = slow.close_frame().await;
    assert_eq!(code, 4002);
    assert!(reason.starts_with("slow_consumer"), "{reason}");

    // The reader got every message, in order, without a gap.
    for seq in 1..=sent {
        let m = wait_msg(&mut reader, "r", seq).await;
        assert_eq!(m.sender, "flooder");
    }
    assert_eq!(reader.gaps(), 0);
    assert_client_works(&mut reader, "r").await;
    // Nothing is lost for the slow one: a new connection replays it all.
    let slow2 = node.connect("slow").await;
    let page = slow2
        .history("r", None, Some(sent - 3), None)
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 3 + 1);
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn close_4004_on_flood() {
    let node = GatewayProcess::start(&["--frames-per-sec", "5", "--frame-burst", "10"]);
    let mut by = bystander(&node).await;
    let mut alice = node.connect("alice").await;
    for _ in 0..40 {
        if alice.send_raw(r#"{"op":"ping"}"#.into()).await.is_err() {
            break;
        }
    }
    let (code, reason) = wait_closed(&mut alice).await;
    assert_eq!(code, Some(4004));
    assert!(reason.starts_with("flood"), "{reason}");
    // Below the limit is fine.
    let ok = node.connect("alice").await;
    for _ in 0..5 {
        ok.ping().await.unwrap();
    }
    assert_client_works(&mut by, "bystanders").await;
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn close_4005_without_hello_in_time() {
    let node = GatewayProcess::start(&["--handshake-timeout-ms", "500"]);
    let mut by = bystander(&node).await;
    let t0 = Instant::now();
    let mut raw = RawWs::open(&node.url_for("alice")).await;
    let (code, reason) = raw.close_frame().await;
    assert_eq!(code, 4005);
    assert!(reason.starts_with("handshake_timeout"), "{reason}");
    assert!(t0.elapsed() >= ms(400));
    assert_client_works(&mut by, "bystanders").await;
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn close_4500_on_binary_frames() {
    let node = GatewayProcess::start(&[]);
    let mut by = bystander(&node).await;
    // As the first frame.
    let mut raw = RawWs::open(&node.url_for("alice")).await;
    raw.message(WsMessage::Binary(br#"{"op":"hello"}"#.to_vec().into()))
        .await;
    let (code, reason) = raw.close_frame().await;
    assert_eq!(code, 4500);
    assert!(reason.starts_with("protocol_violation"), "{reason}");
    // After welcome.
    let mut alice = node.connect("alice").await;
    alice
        .send_raw_message(WsMessage::Binary(
            br#"{"op":"ping","id":1}"#.to_vec().into(),
        ))
        .await
        .unwrap();
    assert_eq!(wait_closed(&mut alice).await.0, Some(4500));
    assert_client_works(&mut by, "bystanders").await;
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn close_4500_when_the_first_frame_is_not_hello() {
    let node = GatewayProcess::start(&[]);
    let mut by = bystander(&node).await;
    for first in [
        r#"{"op":"ping","id":1}"#,
        r#"{"op":"join","id":1,"room":"r"}"#,
        "{not json",
        r#"{"op":"hello","v":"one"}"#,
        r#"{"op":"frobnicate"}"#,
    ] {
        let mut raw = RawWs::open(&node.url_for("alice")).await;
        raw.text(first).await;
        let (code, reason) = raw.close_frame().await;
        assert_eq!(code, 4500, "first frame {first}");
        assert!(reason.starts_with("protocol_violation"), "{reason}");
    }
    assert_client_works(&mut by, "bystanders").await;
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn close_4500_on_invalid_utf8() {
    let node = GatewayProcess::start(&[]);
    let mut by = bystander(&node).await;
    // As the first frame.
    let mut raw = RawWs::open(&node.url_for("alice")).await;
    raw.message(invalid_utf8_text_frame()).await;
    let (code, _) = raw.close_frame().await;
    assert_eq!(code, 4500);
    // After welcome.
    let (mut raw, _) = RawWs::hello(&node, "alice").await;
    raw.join(1, "r").await;
    raw.message(invalid_utf8_text_frame()).await;
    let (code, reason) = raw.close_frame().await;
    assert_eq!(code, 4500);
    assert!(reason.starts_with("protocol_violation"), "{reason}");
    assert_client_works(&mut by, "bystanders").await;
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn close_4501_on_bad_or_missing_token() {
    let node = GatewayProcess::start(&[]);
    let mut by = bystander(&node).await;
    let good = token("alice", 3600, None, None);
    let wrong_key = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": chorus_tests::now_secs() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
    )
    .unwrap();
    let bad_sub = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "a/b", "exp": chorus_tests::now_secs() + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(chorus_tests::JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let no_exp = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice"}),
        &jsonwebtoken::EncodingKey::from_secret(chorus_tests::JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let cases = [
        ("garbage in hello", hello_token_cfg(&node, "garbage")),
        ("wrong key", hello_token_cfg(&node, &wrong_key)),
        ("invalid sub", hello_token_cfg(&node, &bad_sub)),
        ("no exp", hello_token_cfg(&node, &no_exp)),
        ("tampered", hello_token_cfg(&node, &format!("{good}x"))),
        (
            "bad bearer header",
            ClientConfig::new(node.ws_url()).with_bearer("garbage"),
        ),
        (
            "bad access_token",
            ClientConfig::new(token_url(&node.ws_url(), "garbage")),
        ),
        ("no token at all", ClientConfig::new(node.ws_url())),
        ("invalid dev user", ClientConfig::dev(&node.ws_url(), "a b")),
    ];
    for (what, cfg) in cases {
        let (code, reason) = refused(cfg).await;
        assert_eq!(code, 4501, "{what}");
        assert!(reason.starts_with("unauthorized"), "{what}: {reason}");
    }
    assert_client_works(&mut by, "bystanders").await;
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn close_4502_on_an_expired_token_at_connect() {
    let node = GatewayProcess::start(&[]);
    let mut by = bystander(&node).await;
    let expired = token("alice", -60, None, None);
    let (code, reason) = refused(hello_token_cfg(&node, &expired)).await;
    assert_eq!(code, 4502);
    assert!(reason.starts_with("token_expired"), "{reason}");
    let (code, _) = refused(ClientConfig::new(token_url(&node.ws_url(), &expired))).await;
    assert_eq!(code, 4502);
    let cfg = ClientConfig::new(node.ws_url()).with_bearer(&expired);
    assert_eq!(refused(cfg).await.0, 4502);
    assert_client_works(&mut by, "bystanders").await;
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn close_4502_when_the_token_expires_during_the_connection() {
    let node = GatewayProcess::start(&[]);
    let mut by = bystander(&node).await;
    let jwt = token("alice", 2, None, None);
    let t0 = Instant::now();
    let mut alice = Client::connect(hello_token_cfg(&node, &jwt)).await.unwrap();
    alice.join("r", None).await.unwrap();
    alice.ping().await.unwrap();
    let (code, reason) = wait_closed(&mut alice).await;
    assert_eq!(code, Some(4502));
    assert!(reason.starts_with("token_expired"), "{reason}");
    assert!(t0.elapsed() < ms(10_000), "closed at exp, not much later");
    // A fresh token for the same user works.
    let again = Client::connect(hello_token_cfg(&node, &token("alice", 3600, None, None)))
        .await
        .unwrap();
    again.ping().await.unwrap();
    assert_client_works(&mut by, "bystanders").await;
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn close_4504_on_a_frame_above_max_frame_bytes() {
    let node = GatewayProcess::start(&["--max-frame-bytes", "1024"]);
    let mut by = bystander(&node).await;
    assert_eq!(by.welcome().limits.max_frame_bytes, 1024);
    // At the limit: fine.
    let mut alice = node.connect("alice").await;
    alice.join("r", None).await.unwrap();
    let head = r#"{"op":"ping","id":1,"pad":""#;
    let at_limit = format!("{head}{}\"}}", "p".repeat(1024 - head.len() - 2));
    assert_eq!(at_limit.len(), 1024);
    alice.send_raw(at_limit).await.unwrap();
    alice.ping().await.expect("1024 bytes is allowed");
    // Above it: closed.
    let big = format!("{head}{}\"}}", "p".repeat(2000));
    alice.send_raw(big).await.unwrap();
    let (code, reason) = wait_closed(&mut alice).await;
    assert_eq!(code, Some(4504));
    assert!(reason.starts_with("message_too_big"), "{reason}");
    // Also as the first frame.
    let mut raw = RawWs::open(&node.url_for("alice")).await;
    raw.send(json!({"op": "hello", "device": "d".repeat(3000)}))
        .await;
    assert_eq!(raw.close_frame().await.0, 4504);
    assert_client_works(&mut by, "bystanders").await;
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn close_4505_beyond_max_connections_per_user() {
    if GatewayProcess::single_node_only(
        "the connection limit is per node; a balancer spreads a user over nodes",
    ) {
        return;
    }
    let node = GatewayProcess::start(&["--max-connections-per-user", "2"]);
    let mut by = bystander(&node).await;
    let first = node.connect("alice").await;
    let mut second = node.connect("alice").await;
    second.join("r", None).await.unwrap();
    let (code, reason) = refused(node.config("alice")).await;
    assert_eq!(code, 4505);
    assert!(reason.starts_with("too_many_connections"), "{reason}");
    // Other users are not limited by alice's count.
    let bob = node.connect("bob").await;
    bob.ping().await.unwrap();
    // The existing connections are untouched.
    assert_client_works(&mut second, "r").await;
    // Closing one frees a slot (released when the server has finished with it).
    first.close().await.unwrap();
    let t0 = Instant::now();
    let third = loop {
        match Client::connect(node.config("alice")).await {
            Ok(c) => break c,
            Err(e) => {
                assert_eq!(e.close_code(), Some(4505), "{e:?}");
                assert!(t0.elapsed() < T, "slot never freed");
                tokio::time::sleep(ms(100)).await;
            }
        }
    };
    third.ping().await.unwrap();
    assert_client_works(&mut by, "bystanders").await;
}

#[tokio::test]
async fn close_4506_on_an_unsupported_version() {
    let node = GatewayProcess::start(&[]);
    let mut by = bystander(&node).await;
    for v in [0, 2] {
        let cfg = ClientConfig {
            protocol_version: v,
            ..node.config("alice")
        };
        let (code, reason) = refused(cfg).await;
        assert_eq!(code, 4506, "v={v}");
        assert!(reason.starts_with("unsupported_version"), "{reason}");
    }
    // v omitted means 1.
    let (raw, w) = RawWs::open(&node.url_for("alice")).await.into_hello().await;
    assert_eq!(w["v"], 1);
    drop(raw);
    assert_client_works(&mut by, "bystanders").await;
    assert_node_serves(&node).await;
}

// ===========================================================================
// tenants
// ===========================================================================

#[tokio::test]
async fn tenants_never_see_each_other() {
    let node = GatewayProcess::start(&[]);
    let acme = token("alice", 3600, None, Some("acme"));
    let globex = token("bob", 3600, None, Some("globex"));
    let mut alice = Client::connect(hello_token_cfg(&node, &acme))
        .await
        .unwrap();
    let mut bob = Client::connect(hello_token_cfg(&node, &globex))
        .await
        .unwrap();
    let mut plain = node.connect("carol").await;
    assert_eq!(alice.welcome().tenant.as_deref(), Some("acme"));
    assert_eq!(bob.welcome().tenant.as_deref(), Some("globex"));
    assert_eq!(plain.welcome().tenant, None);

    let ja = alice.join("general", None).await.unwrap();
    let jb = bob.join("general", None).await.unwrap();
    let jc = plain.join("general", None).await.unwrap();
    for j in [&ja, &jb, &jc] {
        assert_eq!(j.presence.len(), 1, "only oneself: {:?}", j.presence);
    }
    // Each tenant's "general" is its own room: both start at seq 1.
    let a = alice
        .send("general", "x", text("acme"), None)
        .await
        .unwrap();
    let b = bob
        .send("general", "x", text("globex"), None)
        .await
        .unwrap();
    assert_eq!(
        (a.seq, a.duplicate, b.seq, b.duplicate),
        (1, false, 1, false)
    );
    alice.typing("general", true).await.unwrap();
    alice.read("general", 1).await.unwrap();
    for (c, own) in [(&mut alice, "acme"), (&mut bob, "globex")] {
        let evs = events_for(c, ms(1000)).await;
        let msgs: Vec<String> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Msg(m) => Some(m.body.get().to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(msgs, [format!(r#"{{"text":"{own}"}}"#)]);
        assert!(presence_diffs(&evs).is_empty(), "{evs:?}");
        if own == "globex" {
            assert!(typing_events(&evs).is_empty(), "{evs:?}");
            assert!(
                !evs.iter().any(|e| matches!(e, Event::Receipt { .. })),
                "{evs:?}"
            );
        }
    }
    let evs = events_for(&mut plain, ms(300)).await;
    assert!(
        !evs.iter().any(|e| matches!(
            e,
            Event::Msg(_)
                | Event::Typing { .. }
                | Event::Receipt { .. }
                | Event::PresenceDiff { .. }
        )),
        "{evs:?}"
    );
    let h = bob.history("general", None, None, None).await.unwrap();
    assert_eq!(h.messages.len(), 1);
    assert_eq!(h.messages[0].sender, "bob");
    assert!(
        plain
            .history("general", None, None, None)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert_eq!(alice.presence("general").await.unwrap().len(), 1);

    // The same user id in another tenant is another user.
    let alice_globex = token("alice", 3600, None, Some("globex"));
    let other = Client::connect(hello_token_cfg(&node, &alice_globex))
        .await
        .unwrap();
    assert!(
        other.welcome().rooms.is_empty(),
        "{:?}",
        other.welcome().rooms
    );
    let j = other.join("general", None).await.unwrap();
    let mut users: Vec<String> = j.presence.iter().map(|u| u.user.clone()).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"], "globex's alice meets globex's bob");
    assert_eq!(j.tip, 1);
    alice.close().await.unwrap();
    let again = Client::connect(hello_token_cfg(&node, &acme))
        .await
        .unwrap();
    let st = &again.welcome().rooms[0];
    assert_eq!((st.room.as_str(), st.tip, st.last_read), ("general", 1, 1));
}

#[tokio::test]
async fn hot_rooms_send_counts_instead_of_lists() {
    // Above 2 users online the room is hot: a joiner gets the count, not the
    // list, and members get one coalesced count instead of a diff per user.
    let node = GatewayProcess::start(&[
        "--presence-hot-users",
        "2",
        "--presence-count-interval-ms",
        "200",
        "--presence-grace-ms",
        "0",
    ]);
    let mut a = node.connect("hot-a").await;
    let j = a.join("big", None).await.unwrap();
    assert_eq!((j.online, j.presence.len()), (1, 1));
    let mut b = node.connect("hot-b").await;
    let j = b.join("big", None).await.unwrap();
    assert_eq!(
        (j.online, j.presence.len()),
        (2, 2),
        "at the threshold: lists"
    );
    let ev = wait_event(&mut a, "diff for b", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    assert!(
        matches!(&ev, Event::PresenceDiff { joined, online: None, .. } if joined[0].user == "hot-b"),
        "{ev:?}"
    );

    let c = node.connect("hot-c").await;
    let j = c.join("big", None).await.unwrap();
    assert_eq!(j.online, 3);
    assert!(j.presence.is_empty(), "a hot room's join reply has no list");
    for member in [&mut a, &mut b] {
        let ev = wait_event(member, "count", |e| matches!(e, Event::PresenceDiff { .. })).await;
        let Event::PresenceDiff {
            room,
            joined,
            left,
            online,
        } = ev
        else {
            unreachable!()
        };
        assert_eq!(room, "big");
        assert!(joined.is_empty() && left.is_empty(), "no per-user diff");
        assert_eq!(online, Some(3));
    }
    // The explicit presence request still lists everyone.
    let all = a.presence("big").await.unwrap();
    assert_eq!(all.len(), 3);

    // Back at the threshold, diffs name users again.
    c.leave("big", false).await.unwrap();
    let ev = wait_event(&mut a, "leave diff", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    assert!(
        matches!(&ev, Event::PresenceDiff { left, online: None, .. } if left == &["hot-c".to_string()]),
        "{ev:?}"
    );
}

// ===========================================================================
// Hardening: the protocol exactly as PROTOCOL.md says
// ===========================================================================

/// 6.13: a frame without `op` is answered with `request: ""` (and its id).
#[tokio::test]
async fn an_error_for_a_frame_without_op_carries_an_empty_request() {
    let node = GatewayProcess::start(&[]);
    let (mut alice, _) = RawWs::hello(&node, "alice").await;
    alice.text(r#"{"id":5,"room":"r"}"#).await;
    let e = alice.error().await;
    assert_eq!(e["request"], "", "{e}");
    assert_eq!(e["id"], 5, "{e}");
    assert_eq!(e["code"], "bad_request", "{e}");
}

/// 7.1: on the sending connection, each send's own `msg` arrives before its
/// `ack` — also when many sends are pipelined.
#[tokio::test]
async fn own_msg_arrives_before_its_ack_for_pipelined_sends() {
    let node = GatewayProcess::start(&[]);
    let (mut alice, _) = RawWs::hello(&node, "alice").await;
    alice.join(1, "r").await;
    let n = 30u64;
    for i in 0..n {
        alice
            .send(json!({"op": "send", "id": 100 + i, "room": "r", "cid": format!("c-{i}"), "body": i}))
            .await;
    }
    let mut seen_msg = std::collections::HashSet::new();
    let mut acks = 0;
    while acks < n {
        let v = alice.recv().await;
        match v["op"].as_str() {
            Some("msg") => {
                seen_msg.insert(v["cid"].as_str().unwrap_or_default().to_owned());
            }
            Some("ack") => {
                let cid = v["cid"].as_str().unwrap_or_default().to_owned();
                assert!(seen_msg.contains(&cid), "ack of {cid} before its msg: {v}");
                acks += 1;
            }
            _ => panic!("unexpected frame {v}"),
        }
    }
}

/// 3.3/6.14: at SIGTERM, every send the node has read gets an answer (an
/// `ack`, or a retryable error), and every acked send is stored.
#[tokio::test]
async fn a_drain_answers_every_send_it_has_read() {
    if GatewayProcess::single_node_only("restarts the node") {
        return;
    }
    let mut node = GatewayProcess::start(&[]);
    let (mut alice, _) = RawWs::hello(&node, "alice").await;
    alice.join(1, "r").await;
    let n = 20u64;
    for i in 0..n {
        alice
            .send(json!({"op": "send", "id": 100 + i, "room": "r", "cid": format!("d-{i}"), "body": i}))
            .await;
    }
    // Let the node read them (they are in its socket buffer), then stop it.
    tokio::time::sleep(ms(50)).await;
    signal(node.pid(), "TERM");
    let mut acked = Vec::new();
    let mut refused = Vec::new();
    loop {
        let m = tokio::time::timeout(T, alice.ws.next())
            .await
            .expect("the drain ends in a close");
        let Some(Ok(m)) = m else { break };
        let WsMessage::Text(t) = m else {
            if matches!(m, WsMessage::Close(_)) {
                break;
            }
            continue;
        };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        match v["op"].as_str() {
            Some("ack") => acked.push(v["cid"].as_str().unwrap().to_owned()),
            Some("error") => {
                assert_eq!(v["retryable"], true, "a drain error must be retryable: {v}");
                refused.push(v["cid"].as_str().unwrap().to_owned());
            }
            _ => {}
        }
    }
    assert_eq!(
        acked.len() + refused.len(),
        n as usize,
        "every send is answered: acked {acked:?}, refused {refused:?}"
    );
    node.restart();
    let stored: Vec<String> = node
        .history("r")
        .await
        .into_iter()
        .filter_map(|m| m.cid)
        .collect();
    for cid in &acked {
        assert!(stored.contains(cid), "{cid} was acked but not stored");
    }
}

/// 9.2: a resume token used while its session's connection is still open
/// takes the session over; the old connection is closed with 4507.
#[tokio::test]
async fn a_resume_while_the_session_is_still_connected_takes_it_over() {
    if GatewayProcess::single_node_only("the takeover closes a connection on the same node") {
        return;
    }
    let node = GatewayProcess::start(&[]);
    let (mut old, w) = RawWs::hello(&node, "alice").await;
    let rt = w["resume_token"].as_str().unwrap().to_owned();
    let mut new = RawWs::open(&node.url_for("alice")).await;
    new.send(json!({"op": "hello", "resume": {"token": rt, "rooms": {}}}))
        .await;
    let w2 = new.recv().await;
    assert_eq!(w2["resumed"], true, "{w2}");
    assert_eq!(w2["session"], w["session"], "{w2}");
    let (code, reason) = old.close_frame().await;
    assert_eq!((code, reason.as_str()), (4507, "session_taken_over"));
    assert_eq!(
        new.request(json!({"op": "ping", "id": 9})).await["op"],
        "pong"
    );
}

/// 1.4: `dm:A:A` is A's room with itself; nobody else gets in.
#[tokio::test]
async fn a_direct_room_with_oneself_admits_only_that_user() {
    let node = GatewayProcess::start(&[]);
    let (mut alice, _) = RawWs::hello(&node, "alice").await;
    alice.join(1, "dm:alice:alice").await;
    let (mut bob, _) = RawWs::hello(&node, "bob").await;
    let e = bob
        .request(json!({"op": "join", "id": 2, "room": "dm:alice:alice"}))
        .await;
    assert_eq!(e["code"], "forbidden", "{e}");
}

// ===========================================================================
// A captured session against the JSON Schemas (protocol/schema/*.json)
// ===========================================================================

/// The two schemas, compiled once.
fn schemas() -> &'static (jsonschema::Validator, jsonschema::Validator) {
    static S: std::sync::OnceLock<(jsonschema::Validator, jsonschema::Validator)> =
        std::sync::OnceLock::new();
    S.get_or_init(|| {
        let compile = |text: &str| {
            let v: Value = serde_json::from_str(text).expect("schema is JSON");
            jsonschema::draft202012::new(&v).expect("schema compiles")
        };
        (
            compile(include_str!("../../protocol/schema/client-frame.json")),
            compile(include_str!("../../protocol/schema/server-frame.json")),
        )
    })
}

/// The schema's complaints about `frame`, one per line (empty when valid).
fn schema_errors(v: &jsonschema::Validator, frame: &Value) -> String {
    v.iter_errors(frame)
        .map(|e| format!("  {e} at {}", e.instance_path()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A raw WebSocket on which every frame sent is checked against
/// client-frame.json and every frame received against server-frame.json.
/// Server pings are answered at once (with a checked `pong`); other frames
/// wait in `pending` until a `recv_where` asks for them, so none is lost.
struct Captured {
    raw: RawWs,
    who: &'static str,
    pending: std::collections::VecDeque<Value>,
    /// Ops sent and received, for the coverage check at the end.
    sent: std::collections::BTreeSet<String>,
    received: std::collections::BTreeSet<String>,
    frames: usize,
}

impl Captured {
    async fn open(url: &str, who: &'static str) -> Captured {
        Captured {
            raw: RawWs::open(url).await,
            who,
            pending: Default::default(),
            sent: Default::default(),
            received: Default::default(),
            frames: 0,
        }
    }

    /// Send a frame that must be a valid client frame.
    async fn send(&mut self, v: Value) {
        let e = schema_errors(&schemas().0, &v);
        assert!(
            e.is_empty(),
            "{}: sending an invalid frame {v}:\n{e}",
            self.who
        );
        self.sent.insert(v["op"].as_str().unwrap().to_owned());
        self.frames += 1;
        self.raw.send(v).await;
    }

    /// Send a frame the client schema must refuse (to provoke an error).
    async fn send_invalid(&mut self, text: &str) {
        let v: Value = serde_json::from_str(text).unwrap();
        assert!(
            !schemas().0.is_valid(&v),
            "{}: the client schema accepts {text}",
            self.who
        );
        self.frames += 1;
        self.raw.text(text).await;
    }

    /// Read one frame from the socket and check it; answer a server ping.
    async fn read_one(&mut self) -> Option<Value> {
        let text = self.raw.next_text().await;
        let v: Value = serde_json::from_str(&text).expect("server sent JSON");
        let e = schema_errors(&schemas().1, &v);
        assert!(
            e.is_empty(),
            "{}: received an invalid frame {text}:\n{e}",
            self.who
        );
        self.received.insert(v["op"].as_str().unwrap().to_owned());
        self.frames += 1;
        if v["op"] == "ping" {
            self.send(json!({"op": "pong"})).await;
            return None;
        }
        Some(v)
    }

    /// The first frame (in arrival order) that matches, within `T`.
    async fn recv_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = Instant::now() + T;
        loop {
            let v = tokio::time::timeout_at(deadline, self.read_one())
                .await
                .unwrap_or_else(|_| panic!("{}: no {what} within {T:?}", self.who));
            match v {
                Some(v) if pred(&v) => return v,
                Some(v) => self.pending.push_back(v),
                None => {}
            }
        }
    }

    async fn recv_op(&mut self, op: &str) -> Value {
        self.recv_where(op, |v| v["op"] == op).await
    }

    /// Send a request; the frame echoing its id.
    async fn request(&mut self, v: Value) -> Value {
        let id = v["id"].as_u64().expect("request with id");
        self.send(v).await;
        self.recv_where(&format!("reply to id {id}"), |r| r["id"] == id)
            .await
    }

    /// Read (checking every text frame) until the close frame.
    async fn close_frame(&mut self) -> (u16, String) {
        let deadline = Instant::now() + T;
        loop {
            let m = tokio::time::timeout_at(deadline, self.raw.ws.next())
                .await
                .expect("no close frame in time");
            match m {
                Some(Ok(WsMessage::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    let e = schema_errors(&schemas().1, &v);
                    assert!(
                        e.is_empty(),
                        "{}: received an invalid frame {t}:\n{e}",
                        self.who
                    );
                    self.received.insert(v["op"].as_str().unwrap().to_owned());
                    self.frames += 1;
                    self.pending.push_back(v);
                }
                Some(Ok(WsMessage::Close(Some(cf)))) => {
                    return (u16::from(cf.code), cf.reason.as_str().to_owned());
                }
                Some(Ok(_)) => {}
                other => panic!("{}: no close frame: {other:?}", self.who),
            }
        }
    }
}

/// A whole session, every frame of it checked against the schemas: hello
/// (token in the frame, device, meta), join with replay, presence snapshot
/// and diffs, send/msg/ack and a duplicate, history both ways, read,
/// delivered and receipts, typing, presence, client and server pings,
/// refresh_needed and refresh (which leaves a room with an error frame),
/// error frames of several kinds, leave, a resume, and the reconnect of a
/// drain. Every op of both directions is seen.
#[tokio::test]
async fn a_captured_session_matches_the_json_schemas() {
    let node = GatewayProcess::start(&[
        "--node-id",
        "gw-schema",
        "--heartbeat-ms",
        "400",
        "--refresh-hint-secs",
        "30",
    ]);
    let room = "schema-room";
    let side = "schema-side";

    // Bob: JWT in the URL, a device and presence meta; three messages.
    let mut bob = Captured::open(&node.url_for("bob"), "bob").await;
    bob.send(json!({"op": "hello", "v": 1, "device": "desk", "meta": {"status": "busy"}}))
        .await;
    let w = bob.recv_op("welcome").await;
    assert_eq!((&w["user"], &w["device"]), (&json!("bob"), &json!("desk")));
    let j = bob
        .request(json!({"op": "join", "id": 1, "room": room}))
        .await;
    assert_eq!(j["op"], "joined", "{j}");
    for (i, meta) in [(1, None), (2, Some(json!({"kind": "note"}))), (3, None)] {
        let mut f = json!({"op": "send", "id": 10 + i, "room": room, "cid": format!("b-{i}"), "body": {"text": format!("m{i}")}});
        if let Some(m) = meta {
            f["meta"] = m;
        }
        let ack = bob.request(f).await;
        assert_eq!(
            (&ack["op"], &ack["seq"]),
            (&json!("ack"), &json!(i)),
            "{ack}"
        );
        let m = bob.recv_op("msg").await;
        assert_eq!(m["seq"], i, "{m}");
    }

    // Alice: the JWT in hello.token, short-lived so that refresh_needed
    // comes soon (halfway through its 8 s).
    let mut alice = Captured::open(&node.ws_url(), "alice").await;
    alice
        .send(json!({"op": "hello", "v": 1, "token": token("alice", 8, None, None), "device": "phone", "meta": {"status": "available"}}))
        .await;
    let w = alice.recv_op("welcome").await;
    assert_eq!(
        (&w["user"], &w["resumed"]),
        (&json!("alice"), &json!(false))
    );
    let resume_token = w["resume_token"].as_str().unwrap().to_owned();
    // Join with replay: msg 2 and 3, then joined.
    alice
        .send(json!({"op": "join", "id": 1, "room": room, "since": 1}))
        .await;
    for seq in [2, 3] {
        let m = alice.recv_op("msg").await;
        assert_eq!(m["seq"], seq, "{m}");
    }
    let j = alice.recv_op("joined").await;
    assert_eq!(
        (&j["id"], &j["replayed"], &j["recovered"], &j["online"]),
        (&json!(1), &json!(2), &json!(true), &json!(2)),
        "{j}"
    );
    let d = bob.recv_op("presence_diff").await;
    assert_eq!(d["joined"][0]["user"], "alice", "{d}");
    let j = alice
        .request(json!({"op": "join", "id": 2, "room": side}))
        .await;
    assert_eq!(j["op"], "joined", "{j}");

    // refresh_needed, then a refresh whose token no longer allows `side`:
    // an error frame without id for it, then refreshed.
    let hint = alice.recv_op("refresh_needed").await;
    assert!(hint["exp"].as_u64().unwrap() > 0, "{hint}");
    let exp = chorus_tests::now_secs() + 3600;
    let fresh = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": exp, "rooms": [room]}),
        &jsonwebtoken::EncodingKey::from_secret(chorus_tests::JWT_SECRET.as_bytes()),
    )
    .unwrap();
    alice
        .send(json!({"op": "refresh", "id": 3, "token": fresh}))
        .await;
    let e = alice.recv_op("error").await;
    assert_eq!(
        (&e["request"], &e["code"], &e["room"], e.get("id")),
        (&json!("refresh"), &json!("forbidden"), &json!(side), None),
        "{e}"
    );
    let r = alice.recv_op("refreshed").await;
    assert_eq!((&r["id"], &r["exp"]), (&json!(3), &json!(exp)), "{r}");

    // send: own msg, then ack; bob gets the msg; a retry is a duplicate.
    let send = json!({"op": "send", "id": 4, "room": room, "cid": "a-1", "body": {"text": "hi"}, "meta": {"reply_to": 3}});
    alice.send(send.clone()).await;
    let m = alice.recv_op("msg").await;
    let ack = alice.recv_op("ack").await;
    assert_eq!(
        (&m["seq"], &ack["seq"], &ack["duplicate"]),
        (&json!(4), &json!(4), &json!(false))
    );
    assert_eq!(m["id"], ack["msg_id"]);
    let m = bob
        .recv_where("msg 4", |v| v["op"] == "msg" && v["seq"] == 4)
        .await;
    assert_eq!(m["meta"], json!({"reply_to": 3}), "{m}");
    let mut retry = send;
    retry["id"] = json!(5);
    let dup = alice.request(retry).await;
    assert_eq!(
        (&dup["duplicate"], &dup["seq"]),
        (&json!(true), &json!(4)),
        "{dup}"
    );

    // history, backwards and forwards.
    let h = alice
        .request(json!({"op": "history", "id": 6, "room": room, "before": 4, "limit": 2}))
        .await;
    let seqs: Vec<&Value> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["seq"])
        .collect();
    assert_eq!(
        (seqs, &h["has_more"]),
        (vec![&json!(2), &json!(3)], &json!(true)),
        "{h}"
    );
    let h = alice
        .request(json!({"op": "history", "id": 7, "room": room, "after": 3}))
        .await;
    assert_eq!(
        (h["messages"].as_array().unwrap().len(), &h["has_more"]),
        (1, &json!(false)),
        "{h}"
    );

    // read and delivered: no reply, receipts to both.
    alice
        .send(json!({"op": "read", "room": room, "seq": 4}))
        .await;
    bob.send(json!({"op": "delivered", "id": 8, "room": room, "seq": 4}))
        .await;
    // Bob's receipts name both users (in one coalesced frame or two).
    let mut named = std::collections::BTreeSet::new();
    while named.len() < 2 {
        let r = bob.recv_op("receipt").await;
        for e in r["receipts"].as_array().unwrap() {
            named.insert(e["user"].as_str().unwrap().to_owned());
        }
    }
    let r = alice.recv_op("receipt").await;
    assert_eq!(r["room"], room, "{r}");

    // typing: to the others only.
    alice
        .send(json!({"op": "typing", "room": room, "active": true}))
        .await;
    let t = bob.recv_op("typing").await;
    assert_eq!(
        (&t["user"], &t["device"], &t["active"]),
        (&json!("alice"), &json!("phone"), &json!(true))
    );
    alice
        .send(json!({"op": "typing", "room": room, "active": false}))
        .await;
    let t = bob.recv_op("typing").await;
    assert_eq!(t["active"], false, "{t}");

    // presence snapshot; pings both ways.
    let p = alice
        .request(json!({"op": "presence", "id": 9, "room": room}))
        .await;
    let mut users: Vec<&str> = p["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob"], "{p}");
    assert_eq!(
        alice.request(json!({"op": "ping", "id": 10})).await,
        json!({"op": "pong", "id": 10})
    );
    alice.send(json!({"op": "ping"})).await;
    assert_eq!(alice.recv_op("pong").await, json!({"op": "pong"}));

    // Error frames: of a valid request (forbidden, not_joined with cid and
    // room), and of frames the client schema refuses (unknown_op,
    // bad_request, invalid_room).
    let e = alice
        .request(json!({"op": "join", "id": 11, "room": side}))
        .await;
    assert_eq!(
        (&e["code"], &e["room"]),
        (&json!("forbidden"), &json!(side)),
        "{e}"
    );
    let e = alice
        .request(
            json!({"op": "send", "id": 12, "room": "schema-elsewhere", "cid": "a-2", "body": 1}),
        )
        .await;
    assert_eq!(
        (&e["code"], &e["cid"], &e["room"]),
        (
            &json!("not_joined"),
            &json!("a-2"),
            &json!("schema-elsewhere")
        ),
        "{e}"
    );
    alice.send_invalid(r#"{"op":"frobnicate","id":13}"#).await;
    let e = alice.recv_where("error 13", |v| v["id"] == 13).await;
    assert_eq!(
        (&e["code"], &e["request"]),
        (&json!("unknown_op"), &json!("frobnicate")),
        "{e}"
    );
    alice
        .send_invalid(r#"{"op":"join","id":14,"room":5}"#)
        .await;
    let e = alice.recv_where("error 14", |v| v["id"] == 14).await;
    assert_eq!(
        (&e["code"], &e["request"]),
        (&json!("bad_request"), &json!("join")),
        "{e}"
    );
    alice
        .send_invalid(r#"{"op":"join","id":15,"room":"a/b"}"#)
        .await;
    let e = alice.recv_where("error 15", |v| v["id"] == 15).await;
    assert_eq!(
        (&e["code"], &e["room"]),
        (&json!("invalid_room"), &json!("a/b")),
        "{e}"
    );

    // leave, keeping the membership: bob sees alice go offline.
    let l = alice
        .request(json!({"op": "leave", "id": 16, "room": room, "keep_membership": true}))
        .await;
    assert_eq!(l, json!({"op": "left", "id": 16, "room": room}));
    bob.recv_where("alice offline", |v| {
        v["op"] == "presence_diff" && v["left"] == json!(["alice"])
    })
    .await;

    // A resume on a new connection: the server re-joins the room, replaying
    // what came since (joined without id).
    let ack = bob
        .request(json!({"op": "send", "id": 17, "room": room, "cid": "b-4", "body": "while away"}))
        .await;
    assert_eq!(ack["seq"], 5, "{ack}");
    alice.raw.ws.close(None).await.unwrap();
    let mut again = Captured::open(&node.url_for("alice"), "alice (resumed)").await;
    again
        .send(json!({"op": "hello", "device": "phone", "resume": {"token": resume_token, "rooms": {room: 4}}}))
        .await;
    let w = again.recv_op("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    let m = again.recv_op("msg").await;
    assert_eq!(m["seq"], 5, "{m}");
    let j = again.recv_op("joined").await;
    assert!(j.get("id").is_none(), "{j}");
    assert_eq!(
        (&j["room"], &j["replayed"]),
        (&json!(room), &json!(1)),
        "{j}"
    );

    // The drain: reconnect, then close 4000, on every connection.
    for pid in node.pids() {
        signal(pid, "TERM");
    }
    for c in [&mut again, &mut bob] {
        let (code, _) = c.close_frame().await;
        assert_eq!(code, 4000, "{}", c.who);
        let frames: Vec<Value> = c.pending.drain(..).collect();
        assert!(
            frames.iter().any(|v| v["op"] == "reconnect"),
            "{}: {frames:?}",
            c.who
        );
    }

    // Every op of both directions went through the schemas.
    let (mut sent, mut received) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    let mut frames = 0;
    for c in [&mut alice, &mut again, &mut bob] {
        sent.extend(c.sent.iter().cloned());
        received.extend(c.received.iter().cloned());
        frames += c.frames;
    }
    let all = |ops: &[&str]| {
        ops.iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        sent,
        all(&[
            "hello",
            "join",
            "leave",
            "send",
            "history",
            "read",
            "delivered",
            "typing",
            "presence",
            "ping",
            "pong",
            "refresh"
        ])
    );
    assert_eq!(
        received,
        all(&[
            "welcome",
            "joined",
            "left",
            "ack",
            "msg",
            "history",
            "receipt",
            "typing",
            "presence",
            "presence_diff",
            "ping",
            "pong",
            "error",
            "reconnect",
            "refreshed",
            "refresh_needed"
        ])
    );
    eprintln!("{frames} frames checked against the schemas");
}

/// PROTOCOL.md 1.4 and 14.5: a cid is 1-128 characters, not bytes (a cid of
/// 128 two-byte characters is fine), on the WebSocket and over HTTP.
#[tokio::test]
async fn cids_are_counted_in_characters_not_bytes() {
    let node = GatewayProcess::start(&[]);
    let (mut alice, _) = RawWs::hello(&node, "alice").await;
    alice.join(1, "r").await;
    let ok = "é".repeat(128);
    let ack = alice
        .request(json!({"op": "send", "id": 2, "room": "r", "cid": ok, "body": 1}))
        .await;
    assert_eq!(
        (&ack["op"], &ack["cid"]),
        (&json!("ack"), &json!(ok)),
        "{ack}"
    );
    let long = "é".repeat(129);
    let e = alice
        .request(json!({"op": "send", "id": 3, "room": "r", "cid": long, "body": 1}))
        .await;
    assert_error(&e, "bad_request");
    assert_eq!(e["cid"], long, "{e}");

    let http = reqwest::Client::new();
    let url = format!("{}/v1/rooms/r/messages", node.http_url());
    for (cid, status) in [("ü".repeat(128), 200), ("ü".repeat(129), 400)] {
        let resp = http
            .post(&url)
            .bearer_auth(chorus_tests::API_KEY)
            .json(&json!({"sender": "bot", "cid": cid, "body": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{cid}");
    }
}
