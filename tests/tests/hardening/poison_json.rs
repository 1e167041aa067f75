//! 2. Poison JSON

use chorus_tests::{API_KEY, GatewayProcess};
use std::path::Path;

use serde_json::{Value, json};

use super::support::*;

#[tokio::test]
async fn ws_sends_breaking_the_json_rules_are_refused_naming_the_rule_and_store_nothing() {
    let node = GatewayProcess::start(&[]);
    let (mut raw, _) = RawWs::hello(&node, "alice").await;
    let j = raw
        .request(json!({"op": "join", "id": 1, "room": "r"}))
        .await;
    assert_eq!(j["op"], "joined", "{j}");
    let cases: Vec<(String, &str)> = vec![
        (nested(200), "max_depth"),
        (nested(8000), "max_depth"),
        (r#"{"n":1e400}"#.to_owned(), "finite_numbers"),
        (r#"{"n":-1e400}"#.to_owned(), "finite_numbers"),
        (r#"{"s":"\ud800"}"#.to_owned(), "unicode_strings"),
        (
            r#"{"t":1,"$serde_json::private::RawValue":true}"#.to_owned(),
            "reserved_keys",
        ),
    ];
    let mut id = 10;
    for (body, rule) in &cases {
        id += 1;
        let frame = format!(r#"{{"op":"send","id":{id},"room":"r","cid":"poison","body":{body}}}"#);
        raw.text(frame).await;
        let v = raw.reply(id).await;
        assert_rule_error(&v, id, rule);
        assert!(v["message"].as_str().unwrap().starts_with("body: "), "{v}");
    }
    // meta too.
    id += 1;
    let frame = format!(
        r#"{{"op":"send","id":{id},"room":"r","cid":"poison","body":{{"t":1}},"meta":{}}}"#,
        nested(40)
    );
    raw.text(frame).await;
    let v = raw.reply(id).await;
    assert_rule_error(&v, id, "max_depth");
    assert!(v["message"].as_str().unwrap().starts_with("meta: "), "{v}");
    // Deep nesting outside body and meta (an unknown field) breaks nothing:
    // the frame is answered and the connection stays.
    id += 1;
    raw.text(format!(r#"{{"op":"ping","id":{id},"x":{}}}"#, nested(8000)))
        .await;
    let v = raw.reply(id).await;
    assert!(v["op"] == "pong" || v["op"] == "error", "{v}");
    // Nothing was stored: the same cid is new, and it is seq 1.
    let ack = raw
        .request(json!({"op": "send", "id": 99, "room": "r", "cid": "poison", "body": {"t": "ok"}}))
        .await;
    assert_eq!(ack["op"], "ack", "{ack}");
    assert_eq!(ack["seq"], 1, "{ack}");
    assert_eq!(ack["duplicate"], false, "{ack}");
    let msgs = stored(&node, "r").await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0]["body"], json!({"t": "ok"}));
    // The connection stays usable, and so does the node.
    let h = raw
        .request(json!({"op": "history", "id": 100, "room": "r", "after": 0}))
        .await;
    assert_eq!(h["op"], "history", "{h}");
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(1), "{h}");
    assert_node_serves(&node).await;
}

#[tokio::test]
async fn http_publish_breaking_the_json_rules_is_400_naming_the_rule() {
    let node = GatewayProcess::start(&[]);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!(r#"{{"sender":"svc","body":{}}}"#, nested(200)),
            "body",
            "max_depth",
        ),
        (
            format!(r#"{{"sender":"svc","body":{}}}"#, nested(8000)),
            "body",
            "max_depth",
        ),
        (
            r#"{"sender":"svc","body":{"n":1e400}}"#.to_owned(),
            "body",
            "finite_numbers",
        ),
        (
            r#"{"sender":"svc","body":{"s":"\ud800"}}"#.to_owned(),
            "body",
            "unicode_strings",
        ),
        (
            r#"{"sender":"svc","body":{"a":{"$serde_json::private::RawValue":"{}"}}}"#.to_owned(),
            "body",
            "reserved_keys",
        ),
        (
            format!(
                r#"{{"sender":"svc","body":{{"t":1}},"meta":{}}}"#,
                nested(40)
            ),
            "meta",
            "max_depth",
        ),
        (
            r#"{"sender":"svc","body":{"t":1},"meta":{"n":1e400}}"#.to_owned(),
            "meta",
            "finite_numbers",
        ),
    ];
    for (req, field, rule) in cases {
        let (status, v) = publish_raw(&node, "r", req).await;
        assert_eq!(status, 400, "{field} {rule}: {v}");
        assert_eq!(v["error"]["code"], "bad_request", "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.starts_with(&format!("{field}: ")), "{v}");
        assert!(msg.contains(&format!("(rule: {rule})")), "{v}");
    }
    assert!(stored(&node, "r").await.is_empty());
    // A valid publish still works, and is the room's first message.
    let (status, v) =
        publish_raw(&node, "r", r#"{"sender":"svc","body":{"t":[[1]]}}"#.into()).await;
    assert_eq!(status, 200, "{v}");
    let msgs = stored(&node, "r").await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["seq"], 1);
}

#[tokio::test]
async fn hello_with_meta_breaking_the_json_rules_is_refused() {
    let node = GatewayProcess::start(&[]);
    for meta in [nested(40), r#"{"n":1e400}"#.to_owned()] {
        let mut raw = RawWs::open(&node.url_for("alice")).await;
        raw.text(format!(r#"{{"op":"hello","meta":{meta}}}"#)).await;
        let (code, reason) = raw.close_frame().await;
        assert_eq!(code, 4500, "{reason}");
        assert!(reason.starts_with("protocol_violation"), "{reason}");
    }
    // 32 deep is allowed.
    let (_ok, w) = RawWs::hello_with(
        &node,
        "alice",
        json!({"meta": serde_json::from_str::<Value>(&nested(32)).unwrap()}),
    )
    .await;
    assert_eq!(w["user"], "alice");
}

/// Rewrite stored rows in the node's SQLite file (the node must be stopped).
async fn rewrite_rows(data_dir: &Path, room: &str, rows: &[(u64, &str, Option<&str>)]) {
    use sqlx::ConnectOptions;
    let mut db = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(data_dir.join("chorus.db"))
        .connect()
        .await
        .expect("open chorus.db");
    for (seq, body, meta) in rows {
        let done = sqlx::query("UPDATE messages SET body = ?, meta = ? WHERE room = ? AND seq = ?")
            .bind(*body)
            .bind(*meta)
            .bind(room)
            .bind(*seq as i64)
            .execute(&mut db)
            .await
            .expect("update row");
        assert_eq!(done.rows_affected(), 1, "row {room}#{seq}");
    }
    use sqlx::Connection;
    db.close().await.expect("close chorus.db");
}

#[tokio::test]
async fn stored_rows_breaking_the_json_rules_are_served_as_null_and_counted() {
    if GatewayProcess::single_node_only("edits the node's own SQLite file") {
        return;
    }
    let mut node = GatewayProcess::start(&[]);
    for i in 1..=6 {
        let (status, v) = publish_raw(
            &node,
            "r",
            format!(r#"{{"sender":"svc","body":{{"i":{i}}},"meta":{{"m":{i}}}}}"#),
        )
        .await;
        assert_eq!(status, 200, "{v}");
    }
    node.kill9();
    let deep = nested(40);
    let very_deep = nested(8000);
    rewrite_rows(
        &node.data_dir,
        "r",
        &[
            (2, &deep, None),
            (3, r#"{"n":1e400}"#, Some(r#"{"m":3}"#)),
            (4, r#"{"i":4}"#, Some(r#"{"s":"\udc00"}"#)),
            (5, &very_deep, Some(&very_deep)),
            (6, r#"{"not json"#, Some("[1,")),
        ],
    )
    .await;
    node.restart();
    // HTTP history: 200, every seq in place, broken bodies null, broken meta gone.
    let (status, page) = get_json(&node, "/v1/rooms/r/messages?after=0&limit=100").await;
    assert_eq!(status, 200, "{page}");
    let msgs = page["messages"].as_array().expect("messages");
    let seqs: Vec<u64> = msgs.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6], "{page}");
    assert_eq!(msgs[0]["body"], json!({"i": 1}));
    assert_eq!(msgs[1]["body"], Value::Null, "{}", msgs[1]);
    assert_eq!(msgs[2]["body"], Value::Null, "{}", msgs[2]);
    assert_eq!(msgs[3]["body"], json!({"i": 4}));
    assert!(
        msgs[3].get("meta").is_none_or(Value::is_null),
        "{}",
        msgs[3]
    );
    assert_eq!(msgs[4]["body"], Value::Null);
    assert_eq!(msgs[5]["body"], Value::Null, "{}", msgs[5]);
    // The newest page (no `after`) too.
    let (status, _) = get_json(&node, "/v1/rooms/r/messages").await;
    assert_eq!(status, 200);
    // WebSocket: join with replay and a `history` request.
    let (mut raw, _) = RawWs::hello(&node, "alice").await;
    raw.send(json!({"op": "join", "id": 1, "room": "r", "since": 0}))
        .await;
    let mut replayed = Vec::new();
    let joined = loop {
        let v = raw.recv().await;
        match v["op"].as_str() {
            Some("msg") => replayed.push(v),
            Some("joined") => break v,
            _ => panic!("unexpected during the replay: {v}"),
        }
    };
    assert_eq!(joined["replayed"], 6, "{joined}");
    let seqs: Vec<u64> = replayed.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5, 6]);
    assert_eq!(replayed[1]["body"], Value::Null);
    assert_eq!(replayed[3]["body"], json!({"i": 4}));
    let h = raw
        .request(json!({"op": "history", "id": 2, "room": "r", "after": 0}))
        .await;
    assert_eq!(h["op"], "history", "{h}");
    assert_eq!(h["messages"].as_array().map(Vec::len), Some(6), "{h}");
    assert_eq!(h["messages"][2]["body"], Value::Null, "{h}");
    assert_eq!(h["messages"][5]["body"], Value::Null, "{h}");
    // The connection still works; counted.
    let ack = raw
        .request(json!({"op": "send", "id": 3, "room": "r", "cid": "after", "body": {"i": 6}}))
        .await;
    assert_eq!(ack["seq"], 7, "{ack}");
    let m = metrics_text(&node, None).await;
    // Four reads (two HTTP pages, the replay, `history`), each meeting the
    // 7 broken fields; at least three of them certainly read every row.
    let n = metric(&m, "chorus_history_invalid_rows_total", &[]);
    assert!(n >= 21.0, "chorus_history_invalid_rows_total = {n}");
}

#[tokio::test]
async fn stored_rows_that_are_not_utf8_json_text_do_not_break_the_rooms_history() {
    if GatewayProcess::single_node_only("edits the node's own SQLite file") {
        return;
    }
    // Rows edited by hand, as SQLite's dynamic typing allows, one kind per
    // room (each room: seq 1 intact, seq 2 edited).
    let kinds = [
        ("text-not-utf8", "CAST(X'7B2278223A22FF227D' AS TEXT)"),
        ("blob", "X'7B7D'"),
        ("integer", "42"),
    ];
    let mut node = GatewayProcess::start(&[]);
    for (room, _) in kinds {
        for i in 1..=2 {
            let (status, v) = publish_raw(
                &node,
                room,
                format!(r#"{{"sender":"svc","body":{{"i":{i}}}}}"#),
            )
            .await;
            assert_eq!(status, 200, "{v}");
        }
    }
    node.kill9();
    {
        use sqlx::{ConnectOptions, Connection};
        let mut db = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(node.data_dir.join("chorus.db"))
            .connect()
            .await
            .expect("open chorus.db");
        for (room, value) in kinds {
            let sql = format!("UPDATE messages SET body = {value} WHERE room = ? AND seq = 2");
            // The values are this test's constants.
            let done = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(room)
                .execute(&mut db)
                .await
                .expect("update");
            assert_eq!(done.rows_affected(), 1);
        }
        db.close().await.expect("close chorus.db");
    }
    node.restart();
    let mut failures = Vec::new();
    for (room, _) in kinds {
        let resp = http()
            .get(format!(
                "{}/v1/rooms/{room}/messages?after=0",
                node.http_url()
            ))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        let page: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        let seqs: Vec<u64> = page["messages"]
            .as_array()
            .map(|a| a.iter().filter_map(|m| m["seq"].as_u64()).collect())
            .unwrap_or_default();
        if status != 200 || seqs != [1, 2] || page["messages"][0]["body"] != json!({"i": 1}) {
            failures.push(format!("{room}: GET history {status} {body}"));
        }
        // A join with replay completes too.
        let (mut raw, _) = RawWs::hello(&node, "alice").await;
        let j = raw
            .request(json!({"op": "join", "id": 1, "room": room, "since": 0}))
            .await;
        if j["op"] != "joined" || j["replayed"] != 2 {
            failures.push(format!("{room}: join with replay {j}"));
        }
    }
    assert!(
        failures.is_empty(),
        "hand-edited rows broke the history:\n{}",
        failures.join("\n")
    );
}
