//! heartbeats

use chorus_protocol::client::Event;
use chorus_tests::GatewayProcess;
use serde_json::json;
use tokio::time::Instant;

use super::support::*;

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
