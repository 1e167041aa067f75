//! Hardening: the protocol exactly as PROTOCOL.md says

use chorus_tests::{GatewayProcess, signal};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::support::*;

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
