//! close codes

use chorus_protocol::Json;
use chorus_protocol::client::{Client, ClientConfig, token_url};
use chorus_tests::{GatewayProcess, token};
use serde_json::json;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::support::*;

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
    let node = GatewayProcess::start(&chorus_tests::unlimited(&[
        "--outbound-queue",
        "64",
        "--write-timeout-ms",
        "1000",
    ]));
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
