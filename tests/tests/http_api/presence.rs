//! Presence

use chorus_protocol::Json;
use chorus_protocol::client::Client;
use chorus_tests::{API_KEY, GatewayProcess, now_secs};
use serde_json::json;
use std::time::Duration;

use super::support::*;

#[tokio::test]
async fn room_presence_lists_online_users_with_devices() {
    let node = GatewayProcess::start(&[]);
    let meta = Json::from_text(r#"{"status":"available"}"#).unwrap();
    let alice = Client::connect(node.config("alice").with_device("phone").with_meta(meta))
        .await
        .unwrap();
    let bob = node.connect("bob").await;
    let carol = node.connect("carol").await;
    alice.join("general", None).await.unwrap();
    bob.join("general", None).await.unwrap();
    carol.join("elsewhere", None).await.unwrap();

    let (s, b) = get_json(&node, "/v1/rooms/general/presence").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["room"], "general");
    assert_eq!(b["count"], 2);
    let users = b["users"].as_array().unwrap();
    let names: Vec<&str> = users.iter().map(|u| u["user"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "bob"], "sorted by user id");
    let dev = &users[0]["devices"][0];
    assert_eq!(dev["device"], "phone");
    assert_eq!(dev["node"], alice.welcome().node.as_str());
    assert_eq!(dev["meta"], json!({"status":"available"}));
    let since = dev["since"].as_i64().unwrap();
    assert!(
        (since - now_secs() as i64 * 1000).abs() < 60_000,
        "since is Unix ms: {since}"
    );
    assert_eq!(users[1]["devices"][0]["device"], "default");
    assert!(
        users[1]["devices"][0].get("meta").is_none(),
        "meta omitted when none: {b}"
    );
    assert!(
        users[0]["devices"][0].get("rooms").is_none(),
        "room presence lists no rooms"
    );

    // An explicit leave takes effect at once.
    bob.leave("general", false).await.unwrap();
    let (_, b) = get_json(&node, "/v1/rooms/general/presence").await;
    assert_eq!(b["count"], 1);
    assert_eq!(b["users"][0]["user"], "alice");

    // A room nobody is in; percent-encoded names with : and #.
    let (s, b) = get_json(&node, "/v1/rooms/empty-room/presence").await;
    assert_eq!(
        (s.as_u16(), b),
        (200, json!({"room":"empty-room","count":0,"users":[]}))
    );
    alice.join("team#a", None).await.unwrap();
    let (s, b) = get_json(&node, "/v1/rooms/team%23a/presence").await;
    assert_eq!(s, 200);
    assert_eq!(
        (b["room"].as_str(), b["count"].as_u64()),
        (Some("team#a"), Some(1))
    );
    alice.join("dm:alice:bob", None).await.unwrap();
    for path in [
        "/v1/rooms/dm:alice:bob/presence",
        "/v1/rooms/dm%3Aalice%3Abob/presence",
    ] {
        let (s, b) = get_json(&node, path).await;
        assert_eq!(
            (s.as_u16(), b["room"].as_str(), b["count"].as_u64()),
            (200, Some("dm:alice:bob"), Some(1))
        );
    }
    drop(carol);
}

#[tokio::test]
async fn user_presence_lists_devices_and_their_rooms() {
    let node = GatewayProcess::start(&["--presence-grace-ms", "200"]);
    let meta = Json::from_text(r#"{"status":"away"}"#).unwrap();
    let phone = Client::connect(node.config("alice").with_device("phone").with_meta(meta))
        .await
        .unwrap();
    let desk = Client::connect(node.config("alice").with_device("desktop"))
        .await
        .unwrap();
    phone.join("general", None).await.unwrap();
    phone.join("dm:alice:bob", None).await.unwrap();

    let (s, b) = get_json(&node, "/v1/users/alice/presence").await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(
        (b["user"].as_str(), b["online"].as_bool()),
        (Some("alice"), Some(true))
    );
    let mut devices = b["devices"].as_array().unwrap().clone();
    devices.sort_by_key(|d| d["device"].as_str().unwrap().to_owned());
    assert_eq!(devices.len(), 2, "{b}");
    // A connection with no room joined still counts as online.
    assert_eq!(devices[0]["device"], "desktop");
    assert_eq!(devices[0]["rooms"], json!([]));
    assert!(
        devices[0].get("meta").is_none(),
        "meta omitted, not null: {b}"
    );
    assert_eq!(devices[1]["meta"], json!({"status":"away"}));
    assert_eq!(devices[1]["device"], "phone");
    assert_eq!(devices[1]["rooms"], json!(["dm:alice:bob", "general"]));
    assert_eq!(devices[1]["node"], phone.welcome().node.as_str());
    assert!(devices[1]["since"].as_i64().unwrap() > 0);

    // Offline: exactly the documented shape.
    let (s, b) = get_json(&node, "/v1/users/carol/presence").await;
    assert_eq!(
        (s.as_u16(), b),
        (200, json!({"user":"carol","online":false,"devices":[]}))
    );

    // After disconnecting (and the presence grace), alice is offline.
    drop(phone);
    drop(desk);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, b) = get_json(&node, "/v1/users/alice/presence").await;
        if b["online"] == false {
            assert_eq!(b["devices"], json!([]));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice never went offline: {b}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // User ids: A-Z a-z 0-9 _ - . @ only.
    let (s, b) = get_json(&node, "/v1/users/a.b-c_d@e/presence").await;
    assert_eq!((s.as_u16(), b["online"].as_bool()), (200, Some(false)));
    for bad in ["a:b", "a%2Fb", "a%20b", &"u".repeat(129)] {
        let (s, b) = get_json(&node, &format!("/v1/users/{bad}/presence")).await;
        assert_error(s, &b, 400, "bad_request");
    }
}

#[tokio::test]
async fn presence_query_answers_for_many_users_at_once() {
    let node = GatewayProcess::start(&[]);
    let alice = Client::connect(node.config("alice").with_device("phone"))
        .await
        .unwrap();
    alice.join("general", None).await.unwrap();

    let (s, b) = post_json(
        &node,
        "/v1/presence/query",
        &json!({"users":["alice","carol"]}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let users = b["users"].as_object().unwrap();
    assert_eq!(users.len(), 2);
    assert_eq!(users["carol"], json!({"online":false,"devices":[]}));
    let a = users["alice"].as_object().unwrap();
    assert!(
        a.get("user").is_none(),
        "entries are keyed by user id, without `user`"
    );
    assert_eq!(a["online"], true);
    assert_eq!(a["devices"][0]["device"], "phone");
    assert_eq!(a["devices"][0]["rooms"], json!(["general"]));

    let (s, b) = post_json(&node, "/v1/presence/query", &json!({"users":[]})).await;
    assert_eq!((s.as_u16(), b), (200, json!({"users":{}})));
    // Duplicates collapse into one key.
    let (_, b) = post_json(
        &node,
        "/v1/presence/query",
        &json!({"users":["carol","carol"]}),
    )
    .await;
    assert_eq!(b["users"].as_object().unwrap().len(), 1);
    // At most 1000 users.
    let many: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    let (s, b) = post_json(&node, "/v1/presence/query", &json!({ "users": many })).await;
    assert_eq!(s, 200);
    assert_eq!(b["users"].as_object().unwrap().len(), 1000);
    let many: Vec<String> = (0..1001).map(|i| format!("u{i}")).collect();
    let (s, b) = post_json(&node, "/v1/presence/query", &json!({ "users": many })).await;
    assert_error(s, &b, 400, "bad_request");

    for bad in [
        &b"{\"users\":[\"a b\"]}"[..],
        b"{\"users\":[\"ok\",\"a:b\"]}",
        b"{\"users\":\"alice\"}",
        b"{\"users\":[1]}",
        b"{}",
        b"[]",
        b"{\"users\":[",
        b"",
    ] {
        let (s, b) = post_raw(&node, "/v1/presence/query", bad).await;
        assert_error(s, &b, 400, "bad_request");
    }
    // Wrong content type.
    let r = http()
        .post(url(&node, "/v1/presence/query"))
        .header("X-Api-Key", API_KEY)
        .body(r#"{"users":["alice"]}"#)
        .send()
        .await
        .unwrap();
    let s = r.status();
    assert_error(s, &r.json().await.unwrap(), 400, "bad_request");
}
