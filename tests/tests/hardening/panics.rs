//! 3. Panics

use chorus_protocol::client::{ClientError, Event, new_cid};
use chorus_tests::{API_KEY, GatewayProcess, text};

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::support::*;

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
