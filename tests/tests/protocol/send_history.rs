//! send / ack / msg / history

use chorus_protocol::ErrorCode;
use chorus_protocol::client::{Client, Event};
use chorus_tests::{GatewayProcess, text, token};
use serde_json::{Value, json};

use super::support::*;

/// PROTOCOL.md 2.2: a room the token does not allow is `forbidden` for
/// `join`, `leave` and `history`, and `welcome.rooms` lists only rooms the
/// current token allows. The membership itself stays stored: a token that
/// allows the room again shows it again.
#[tokio::test]
async fn a_room_the_token_no_longer_allows_is_hidden_and_forbidden() {
    let node = GatewayProcess::start(&[]);
    let old = token("alice", 3600, Some(&["team-*"]), None);
    let alice = Client::connect(hello_token_cfg(&node, &old)).await.unwrap();
    alice.join("team-a", None).await.unwrap();
    alice.close().await.unwrap();
    let new = token("alice", 3600, Some(&["lobby"]), None);
    let alice = Client::connect(hello_token_cfg(&node, &new)).await.unwrap();
    assert!(
        alice.welcome().rooms.is_empty(),
        "welcome lists a room the token does not allow: {:?}",
        alice.welcome().rooms
    );
    assert_eq!(
        server_error(alice.join("team-a", None).await).0,
        ErrorCode::Forbidden
    );
    assert_eq!(
        server_error(alice.leave("team-a", false).await).0,
        ErrorCode::Forbidden
    );
    alice.close().await.unwrap();
    let alice = Client::connect(hello_token_cfg(&node, &old)).await.unwrap();
    let rooms: Vec<&str> = alice
        .welcome()
        .rooms
        .iter()
        .map(|r| r.room.as_str())
        .collect();
    assert_eq!(rooms, ["team-a"], "the membership is kept");
}

#[tokio::test]
async fn send_is_acked_after_msg_and_a_repeated_cid_is_a_duplicate() {
    let node = GatewayProcess::start(&[]);
    let mut bob = node.connect("bob").await;
    bob.join("r", None).await.unwrap();
    let (mut alice, _) = RawWs::hello(&node, "alice").await;
    alice.join(1, "r").await;
    // Body and meta are raw JSON text, kept verbatim (key order, spacing).
    let body = r#"{"text":"hi", "n":[1, 2]}"#;
    alice
        .text(format!(
            r#"{{"op":"send","id":2,"room":"r","cid":"c-1","body":{body},"meta":{{"reply_to":0}}}}"#
        ))
        .await;
    // The sender gets its own msg, and the ack.
    let mut msg = None;
    let mut ack = None;
    while msg.is_none() || ack.is_none() {
        let t = alice.next_text().await;
        let v: Value = serde_json::from_str(&t).unwrap();
        match v["op"].as_str() {
            Some("msg") => {
                assert!(
                    t.contains(&format!(r#""body":{body}"#)),
                    "verbatim body: {t}"
                );
                msg = Some(v);
            }
            Some("ack") => ack = Some(v),
            Some("ping") => {}
            _ => panic!("unexpected {v}"),
        }
    }
    let (msg, ack) = (msg.unwrap(), ack.unwrap());
    assert_eq!(ack["id"], 2);
    assert_eq!(ack["room"], "r");
    assert_eq!(ack["cid"], "c-1");
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["duplicate"], false);
    assert!(
        ack["msg_id"].as_str().is_some_and(|s| s.len() == 36),
        "{ack}"
    );
    assert!(
        ack["ts"].as_i64().is_some_and(|t| t > 1_600_000_000_000),
        "{ack}"
    );
    assert_eq!(msg["seq"], 1);
    assert_eq!(msg["id"], ack["msg_id"]);
    assert_eq!(msg["ts"], ack["ts"]);
    assert_eq!(msg["sender"], "alice");
    assert_eq!(msg["cid"], "c-1");
    assert_eq!(msg["body"], json!({"text": "hi", "n": [1, 2]}));
    assert_eq!(msg["meta"], json!({"reply_to": 0}));
    // Other members get the same msg.
    let m = wait_msg(&mut bob, "r", 1).await;
    assert_eq!(m.id, ack["msg_id"].as_str().unwrap());
    assert_eq!(
        m.body.parse::<Value>().unwrap(),
        json!({"text": "hi", "n": [1, 2]})
    );
    assert_eq!(m.meta.as_ref().map(|m| m.get()), Some(r#"{"reply_to":0}"#));

    // The same cid again: stored once, original seq/id/ts, no new msg.
    let dup = alice
        .request(
            json!({"op": "send", "id": 3, "room": "r", "cid": "c-1", "body": {"text": "other"}}),
        )
        .await;
    assert_eq!(dup["op"], "ack", "{dup}");
    assert_eq!(dup["duplicate"], true);
    assert_eq!(dup["seq"], 1);
    assert_eq!(dup["msg_id"], ack["msg_id"]);
    assert_eq!(dup["ts"], ack["ts"]);
    // A different cid is a new message.
    let next = bob.send("r", "c-1-bob", text("mine"), None).await.unwrap();
    assert_eq!(
        (next.seq, next.duplicate),
        (2, false),
        "cids are per sender"
    );
    let evs = events_for(&mut bob, ms(500)).await;
    let seqs: Vec<u64> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Msg(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, [2], "the duplicate was not delivered again");
    let page = bob.history("r", None, None, None).await.unwrap();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(
        page.messages[0].body.parse::<Value>().unwrap(),
        json!({"text": "hi", "n": [1, 2]}),
        "the first version wins"
    );
}

#[tokio::test]
async fn history_pages_backwards_forwards_and_newest() {
    let node = GatewayProcess::start(&["--max-history-page", "4"]);
    let alice = node.connect("alice").await;
    alice.join("r", None).await.unwrap();
    let mut acks = Vec::new();
    for i in 1..=10 {
        acks.push(
            alice
                .send("r", &format!("a-{i}"), text(&i.to_string()), None)
                .await
                .unwrap(),
        );
    }
    // History does not need the room joined.
    let carol = node.connect("carol").await;
    let seqs = |p: &chorus_protocol::client::HistoryPage| -> Vec<u64> {
        p.messages.iter().map(|m| m.seq).collect()
    };
    // (before, after, limit) -> (seqs, has_more)
    type Case = (Option<u64>, Option<u64>, Option<u32>, &'static [u64], bool);
    let cases: [Case; 9] = [
        (None, None, None, &[7, 8, 9, 10], true),
        (None, None, Some(2), &[9, 10], true),
        (Some(7), None, Some(2), &[5, 6], true),
        (Some(3), None, Some(4), &[1, 2], false),
        (None, Some(8), None, &[9, 10], false),
        (None, Some(2), Some(3), &[3, 4, 5], true),
        (None, Some(6), Some(4), &[7, 8, 9, 10], false),
        (None, Some(0), Some(100), &[1, 2, 3, 4], true),
        (None, Some(10), None, &[], false),
    ];
    for (before, after, limit, want, more) in cases {
        let p = carol.history("r", before, after, limit).await.unwrap();
        assert_eq!(p.room, "r");
        assert_eq!(
            (seqs(&p), p.has_more),
            (want.to_vec(), more),
            "before={before:?} after={after:?} limit={limit:?}"
        );
    }
    // Messages are the stored ones.
    let p = carol.history("r", Some(2), None, None).await.unwrap();
    let m = &p.messages[0];
    assert_eq!(
        (m.id.as_str(), m.ts, m.sender.as_str(), m.cid.as_deref()),
        (acks[0].msg_id.as_str(), acks[0].ts, "alice", Some("a-1"))
    );
    assert_eq!(m.body.get(), r#"{"text":"1"}"#);
    // An empty room.
    let p = carol.history("empty", None, None, None).await.unwrap();
    assert!(p.messages.is_empty() && !p.has_more);
    // On the wire the reply echoes the id.
    let (mut raw, _) = RawWs::hello(&node, "dave").await;
    let h = raw
        .request(json!({"op": "history", "id": 41, "room": "r", "after": 9}))
        .await;
    assert_eq!(h["op"], "history");
    assert_eq!(h["room"], "r");
    assert_eq!(h["has_more"], false);
    assert_eq!(h["messages"][0]["seq"], 10);
    assert_eq!(h["messages"][0]["room"], "r");
}
