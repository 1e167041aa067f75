//! Server-side publish

use chorus_protocol::client::Event;
use chorus_tests::{API_KEY, GatewayProcess, text};
use serde_json::json;
use std::time::Duration;

use super::support::*;

#[tokio::test]
async fn publish_is_delivered_live_and_idempotent_by_cid() {
    let node = GatewayProcess::start(&[]);
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.join("general", None).await.unwrap();
    bob.join("general", None).await.unwrap();

    let req = json!({"sender":"deploy-bot","cid":"deploy-1","body":{"text":"v2.3 deployed"},"meta":{"kind":"notice"}});
    let (s, first) = post_json(&node, "/v1/rooms/general/messages", &req).await;
    assert_eq!(s, 200, "{first}");
    let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["duplicate", "id", "room", "seq", "ts"]);
    assert_eq!(
        (
            first["room"].as_str(),
            first["seq"].as_u64(),
            first["duplicate"].as_bool()
        ),
        (Some("general"), Some(1), Some(false))
    );
    let id = first["id"].as_str().unwrap().to_owned();
    for c in [&mut alice, &mut bob] {
        let m = next_msg(c).await;
        assert_eq!(
            (m.room.as_str(), m.seq, m.sender.as_str(), m.cid.as_deref()),
            ("general", 1, "deploy-bot", Some("deploy-1"))
        );
        assert_eq!(m.id, id);
        assert_eq!(m.ts, first["ts"].as_i64().unwrap());
        assert_eq!(m.body.get(), r#"{"text":"v2.3 deployed"}"#);
        assert_eq!(
            m.meta.as_ref().map(|j| j.get()),
            Some(r#"{"kind":"notice"}"#)
        );
    }

    // Same sender + cid: stored once, same seq/id/ts, duplicate:true, nothing delivered.
    let retry = json!({"sender":"deploy-bot","cid":"deploy-1","body":{"text":"different"}});
    let (s, dup) = post_json(&node, "/v1/rooms/general/messages", &retry).await;
    assert_eq!(s, 200);
    assert_eq!(dup["duplicate"], true);
    for k in ["room", "seq", "id", "ts"] {
        assert_eq!(dup[k], first[k], "{k}");
    }
    assert!(
        alice
            .wait_for(Duration::from_millis(500), |e| matches!(e, Event::Msg(_)))
            .await
            .is_none()
    );

    // The same cid from another sender is another message.
    let (_, other) = post_json(
        &node,
        "/v1/rooms/general/messages",
        &json!({"sender":"other-bot","cid":"deploy-1","body":2}),
    )
    .await;
    assert_eq!(
        (other["seq"].as_u64(), other["duplicate"].as_bool()),
        (Some(2), Some(false))
    );
    assert_eq!(next_msg(&mut bob).await.sender, "other-bot");

    // Without cid: the server makes one up; a retry is a second message.
    let plain = json!({"sender":"bot","body":"plain"});
    let (_, a) = post_json(&node, "/v1/rooms/general/messages", &plain).await;
    let (_, b) = post_json(&node, "/v1/rooms/general/messages", &plain).await;
    assert_eq!((a["seq"].as_u64(), b["seq"].as_u64()), (Some(3), Some(4)));
    assert_eq!(b["duplicate"], false);
    let m = next_msg(&mut bob).await;
    assert_eq!(m.seq, 3);
    assert!(
        m.cid.as_deref().is_some_and(|c| !c.is_empty()),
        "a generated cid: {m:?}"
    );
    assert!(m.meta.is_none());

    // WebSocket and HTTP sends share the room's sequence; history shows them all.
    let ack = alice
        .send("general", "ws-1", text("from ws"), None)
        .await
        .unwrap();
    assert_eq!(ack.seq, 5);
    let (_, page) = get_json(&node, "/v1/rooms/general/messages").await;
    assert_eq!(seqs(&page), [1, 2, 3, 4, 5]);
    assert_eq!(
        page["messages"][0]["body"],
        json!({"text":"v2.3 deployed"}),
        "first stored version wins"
    );
    assert_eq!(page["messages"][0]["meta"], json!({"kind":"notice"}));

    // Any JSON value except null is a body; sender may use the user-id characters.
    for body in [
        json!(0),
        json!("s"),
        json!([1, 2]),
        json!(false),
        json!({"nested":{"a":[null]}}),
    ] {
        let (s, r) = post_json(
            &node,
            "/v1/rooms/general/messages",
            &json!({"sender":"a.b-c_d@e","body":body}),
        )
        .await;
        assert_eq!(s, 200, "{body}: {r}");
    }
    // A publish to a room nobody has joined is stored too.
    let (s, r) = post_json(
        &node,
        "/v1/rooms/quiet/messages",
        &json!({"sender":"bot","body":1}),
    )
    .await;
    assert_eq!((s.as_u16(), r["seq"].as_u64()), (200, Some(1)));
}

#[tokio::test]
async fn publish_rejects_bad_input() {
    let node = GatewayProcess::start(&["--max-message-bytes", "1000"]);
    let path = "/v1/rooms/general/messages";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("invalid JSON", b"{\"sender\":".to_vec()),
        ("not an object", b"[1]".to_vec()),
        ("empty", b"".to_vec()),
        ("missing sender", br#"{"body":1}"#.to_vec()),
        ("missing body", br#"{"sender":"bot"}"#.to_vec()),
        ("null body", br#"{"sender":"bot","body":null}"#.to_vec()),
        ("bad sender", br#"{"sender":"a b","body":1}"#.to_vec()),
        ("sender with :", br#"{"sender":"a:b","body":1}"#.to_vec()),
        ("empty sender", br#"{"sender":"","body":1}"#.to_vec()),
        ("sender not a string", br#"{"sender":5,"body":1}"#.to_vec()),
        (
            "empty cid",
            br#"{"sender":"bot","cid":"","body":1}"#.to_vec(),
        ),
        (
            "cid not a string",
            br#"{"sender":"bot","cid":7,"body":1}"#.to_vec(),
        ),
    ];
    for (what, body) in cases {
        let (s, b) = post_raw(&node, path, body).await;
        assert_eq!(s, 400, "{what}: {b}");
        assert_eq!(error_code(&b), "bad_request", "{what}");
    }
    let long_cid = "c".repeat(129);
    let (s, b) = post_json(
        &node,
        path,
        &json!({"sender":"bot","cid":long_cid,"body":1}),
    )
    .await;
    assert_error(s, &b, 400, "bad_request");
    let (s, _) = post_json(
        &node,
        path,
        &json!({"sender":"bot","cid":"c".repeat(128),"body":1}),
    )
    .await;
    assert_eq!(s, 200);

    // Invalid room name.
    for room in ["a%2Fb", "has%20space", &"r".repeat(129)] {
        let (s, b) = post_json(
            &node,
            &format!("/v1/rooms/{room}/messages"),
            &json!({"sender":"bot","body":1}),
        )
        .await;
        assert_error(s, &b, 400, "bad_request");
    }
    // Missing content type.
    let r = http()
        .post(url(&node, path))
        .header("X-Api-Key", API_KEY)
        .body(r#"{"sender":"bot","body":1}"#)
        .send()
        .await
        .unwrap();
    let s = r.status();
    assert_error(s, &r.json().await.unwrap(), 400, "bad_request");

    // body + meta over --max-message-bytes: 413 message_too_large. The raw JSON
    // text counts: `"x…"` is its length + 2.
    let (s, b) = post_json(&node, path, &json!({"sender":"bot","body":"x".repeat(998)})).await;
    assert_eq!(s, 200, "exactly the limit: {b}");
    let (s, b) = post_json(&node, path, &json!({"sender":"bot","body":"x".repeat(999)})).await;
    assert_error(s, &b, 413, "message_too_large");
    let (s, b) = post_json(
        &node,
        path,
        &json!({"sender":"bot","body":"x".repeat(600),"meta":"y".repeat(600)}),
    )
    .await;
    assert_error(s, &b, 413, "message_too_large");
    // A request body over the HTTP body limit (2 MiB): 413 payload_too_large.
    let huge = serde_json::to_vec(&json!({"sender":"bot","body":"x".repeat(3 << 20)})).unwrap();
    let (s, b) = post_raw(&node, path, huge).await;
    assert_error(s, &b, 413, "payload_too_large");
    let huge = serde_json::to_vec(&json!({"users":vec!["u"; 1 << 20]})).unwrap();
    let (s, b) = post_raw(&node, "/v1/presence/query", huge).await;
    assert_error(s, &b, 413, "payload_too_large");

    // Nothing of the above was stored.
    let (_, page) = get_json(&node, path).await;
    assert_eq!(seqs(&page), [1, 2]);
}
