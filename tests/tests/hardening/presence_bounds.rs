//! 8. Presence meta and reply bounds

use chorus_protocol::Json;
use chorus_protocol::client::{Client, ClientError};
use chorus_tests::GatewayProcess;

use serde_json::json;

use super::support::*;

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
        let (mut raw, _) =
            RawWs::hello_with(&node, &format!("user{i}"), json!({"meta": meta})).await;
        let j = raw
            .request(json!({"op": "join", "id": 1, "room": "big"}))
            .await;
        assert_eq!(j["op"], "joined", "{j}");
        members.push(raw);
    }
    let (mut late, _) = RawWs::hello(&node, "late").await;
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
    let (mut a, _) = RawWs::hello(&node, "a").await;
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
