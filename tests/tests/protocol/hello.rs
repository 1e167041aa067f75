//! hello / welcome

use chorus_protocol::client::{Client, ClientConfig, Event, dev_url, token_url};
use chorus_protocol::{ErrorCode, Json, Limits};
use chorus_tests::{GatewayProcess, text, token};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::support::*;

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
