//! join / leave

use chorus_protocol::Json;
use chorus_protocol::client::{Client, Event};
use chorus_tests::{GatewayProcess, text};
use serde_json::{Value, json};

use super::support::*;

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
