//! error codes

use chorus_protocol::ErrorCode;
use chorus_protocol::client::{Client, Event, token_url};
use chorus_tests::{GatewayProcess, text, token};
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::support::*;

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
    let node = GatewayProcess::start(&chorus_tests::unlimited(&["--writer-queue", "1"]));
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
