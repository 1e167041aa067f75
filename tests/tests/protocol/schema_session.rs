//! A captured session against the JSON Schemas (protocol/schema/*.json)

use chorus_tests::{GatewayProcess, signal, token};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::support::*;

/// The two schemas, compiled once.
fn schemas() -> &'static (jsonschema::Validator, jsonschema::Validator) {
    static S: std::sync::OnceLock<(jsonschema::Validator, jsonschema::Validator)> =
        std::sync::OnceLock::new();
    S.get_or_init(|| {
        let compile = |text: &str| {
            let v: Value = serde_json::from_str(text).expect("schema is JSON");
            jsonschema::draft202012::new(&v).expect("schema compiles")
        };
        (
            compile(include_str!("../../../protocol/schema/client-frame.json")),
            compile(include_str!("../../../protocol/schema/server-frame.json")),
        )
    })
}

/// The schema's complaints about `frame`, one per line (empty when valid).
fn schema_errors(v: &jsonschema::Validator, frame: &Value) -> String {
    v.iter_errors(frame)
        .map(|e| format!("  {e} at {}", e.instance_path()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A raw WebSocket on which every frame sent is checked against
/// client-frame.json and every frame received against server-frame.json.
/// Server pings are answered at once (with a checked `pong`); other frames
/// wait in `pending` until a `recv_where` asks for them, so none is lost.
struct Captured {
    raw: RawWs,
    who: &'static str,
    pending: std::collections::VecDeque<Value>,
    /// Ops sent and received, for the coverage check at the end.
    sent: std::collections::BTreeSet<String>,
    received: std::collections::BTreeSet<String>,
    frames: usize,
}

impl Captured {
    async fn open(url: &str, who: &'static str) -> Captured {
        Captured {
            raw: RawWs::open(url).await,
            who,
            pending: Default::default(),
            sent: Default::default(),
            received: Default::default(),
            frames: 0,
        }
    }

    /// Send a frame that must be a valid client frame.
    async fn send(&mut self, v: Value) {
        let e = schema_errors(&schemas().0, &v);
        assert!(
            e.is_empty(),
            "{}: sending an invalid frame {v}:\n{e}",
            self.who
        );
        self.sent.insert(v["op"].as_str().unwrap().to_owned());
        self.frames += 1;
        self.raw.send(v).await;
    }

    /// Send a frame the client schema must refuse (to provoke an error).
    async fn send_invalid(&mut self, text: &str) {
        let v: Value = serde_json::from_str(text).unwrap();
        assert!(
            !schemas().0.is_valid(&v),
            "{}: the client schema accepts {text}",
            self.who
        );
        self.frames += 1;
        self.raw.text(text).await;
    }

    /// Read one frame from the socket and check it; answer a server ping.
    async fn read_one(&mut self) -> Option<Value> {
        let text = self.raw.next_text().await;
        let v: Value = serde_json::from_str(&text).expect("server sent JSON");
        let e = schema_errors(&schemas().1, &v);
        assert!(
            e.is_empty(),
            "{}: received an invalid frame {text}:\n{e}",
            self.who
        );
        self.received.insert(v["op"].as_str().unwrap().to_owned());
        self.frames += 1;
        if v["op"] == "ping" {
            self.send(json!({"op": "pong"})).await;
            return None;
        }
        Some(v)
    }

    /// The first frame (in arrival order) that matches, within `T`.
    async fn recv_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = Instant::now() + T;
        loop {
            let v = tokio::time::timeout_at(deadline, self.read_one())
                .await
                .unwrap_or_else(|_| panic!("{}: no {what} within {T:?}", self.who));
            match v {
                Some(v) if pred(&v) => return v,
                Some(v) => self.pending.push_back(v),
                None => {}
            }
        }
    }

    async fn recv_op(&mut self, op: &str) -> Value {
        self.recv_where(op, |v| v["op"] == op).await
    }

    /// Send a request; the frame echoing its id.
    async fn request(&mut self, v: Value) -> Value {
        let id = v["id"].as_u64().expect("request with id");
        self.send(v).await;
        self.recv_where(&format!("reply to id {id}"), |r| r["id"] == id)
            .await
    }

    /// Read (checking every text frame) until the close frame.
    async fn close_frame(&mut self) -> (u16, String) {
        let deadline = Instant::now() + T;
        loop {
            let m = tokio::time::timeout_at(deadline, self.raw.ws.next())
                .await
                .expect("no close frame in time");
            match m {
                Some(Ok(WsMessage::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).unwrap();
                    let e = schema_errors(&schemas().1, &v);
                    assert!(
                        e.is_empty(),
                        "{}: received an invalid frame {t}:\n{e}",
                        self.who
                    );
                    self.received.insert(v["op"].as_str().unwrap().to_owned());
                    self.frames += 1;
                    self.pending.push_back(v);
                }
                Some(Ok(WsMessage::Close(Some(cf)))) => {
                    return (u16::from(cf.code), cf.reason.as_str().to_owned());
                }
                Some(Ok(_)) => {}
                other => panic!("{}: no close frame: {other:?}", self.who),
            }
        }
    }
}

/// A whole session, every frame of it checked against the schemas: hello
/// (token in the frame, device, meta), join with replay, presence snapshot
/// and diffs, send/msg/ack and a duplicate, history both ways, read,
/// delivered and receipts, typing, presence, client and server pings,
/// refresh_needed and refresh (which leaves a room with an error frame),
/// error frames of several kinds, leave, a resume, and the reconnect of a
/// drain. Every op of both directions is seen.
#[tokio::test]
async fn a_captured_session_matches_the_json_schemas() {
    let node = GatewayProcess::start(&[
        "--node-id",
        "gw-schema",
        "--heartbeat-ms",
        "400",
        "--refresh-hint-secs",
        "30",
    ]);
    let room = "schema-room";
    let side = "schema-side";

    // Bob: JWT in the URL, a device and presence meta; three messages.
    let mut bob = Captured::open(&node.url_for("bob"), "bob").await;
    bob.send(json!({"op": "hello", "v": 1, "device": "desk", "meta": {"status": "busy"}}))
        .await;
    let w = bob.recv_op("welcome").await;
    assert_eq!((&w["user"], &w["device"]), (&json!("bob"), &json!("desk")));
    let j = bob
        .request(json!({"op": "join", "id": 1, "room": room}))
        .await;
    assert_eq!(j["op"], "joined", "{j}");
    for (i, meta) in [(1, None), (2, Some(json!({"kind": "note"}))), (3, None)] {
        let mut f = json!({"op": "send", "id": 10 + i, "room": room, "cid": format!("b-{i}"), "body": {"text": format!("m{i}")}});
        if let Some(m) = meta {
            f["meta"] = m;
        }
        let ack = bob.request(f).await;
        assert_eq!(
            (&ack["op"], &ack["seq"]),
            (&json!("ack"), &json!(i)),
            "{ack}"
        );
        let m = bob.recv_op("msg").await;
        assert_eq!(m["seq"], i, "{m}");
    }

    // Alice: the JWT in hello.token, short-lived so that refresh_needed
    // comes soon (halfway through its 8 s).
    let mut alice = Captured::open(&node.ws_url(), "alice").await;
    alice
        .send(json!({"op": "hello", "v": 1, "token": token("alice", 8, None, None), "device": "phone", "meta": {"status": "available"}}))
        .await;
    let w = alice.recv_op("welcome").await;
    assert_eq!(
        (&w["user"], &w["resumed"]),
        (&json!("alice"), &json!(false))
    );
    let resume_token = w["resume_token"].as_str().unwrap().to_owned();
    // Join with replay: msg 2 and 3, then joined.
    alice
        .send(json!({"op": "join", "id": 1, "room": room, "since": 1}))
        .await;
    for seq in [2, 3] {
        let m = alice.recv_op("msg").await;
        assert_eq!(m["seq"], seq, "{m}");
    }
    let j = alice.recv_op("joined").await;
    assert_eq!(
        (&j["id"], &j["replayed"], &j["recovered"], &j["online"]),
        (&json!(1), &json!(2), &json!(true), &json!(2)),
        "{j}"
    );
    let d = bob.recv_op("presence_diff").await;
    assert_eq!(d["joined"][0]["user"], "alice", "{d}");
    let j = alice
        .request(json!({"op": "join", "id": 2, "room": side}))
        .await;
    assert_eq!(j["op"], "joined", "{j}");

    // refresh_needed, then a refresh whose token no longer allows `side`:
    // an error frame without id for it, then refreshed.
    let hint = alice.recv_op("refresh_needed").await;
    assert!(hint["exp"].as_u64().unwrap() > 0, "{hint}");
    let exp = chorus_tests::now_secs() + 3600;
    let fresh = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": exp, "rooms": [room]}),
        &jsonwebtoken::EncodingKey::from_secret(chorus_tests::JWT_SECRET.as_bytes()),
    )
    .unwrap();
    alice
        .send(json!({"op": "refresh", "id": 3, "token": fresh}))
        .await;
    let e = alice.recv_op("error").await;
    assert_eq!(
        (&e["request"], &e["code"], &e["room"], e.get("id")),
        (&json!("refresh"), &json!("forbidden"), &json!(side), None),
        "{e}"
    );
    let r = alice.recv_op("refreshed").await;
    assert_eq!((&r["id"], &r["exp"]), (&json!(3), &json!(exp)), "{r}");

    // send: own msg, then ack; bob gets the msg; a retry is a duplicate.
    let send = json!({"op": "send", "id": 4, "room": room, "cid": "a-1", "body": {"text": "hi"}, "meta": {"reply_to": 3}});
    alice.send(send.clone()).await;
    let m = alice.recv_op("msg").await;
    let ack = alice.recv_op("ack").await;
    assert_eq!(
        (&m["seq"], &ack["seq"], &ack["duplicate"]),
        (&json!(4), &json!(4), &json!(false))
    );
    assert_eq!(m["id"], ack["msg_id"]);
    let m = bob
        .recv_where("msg 4", |v| v["op"] == "msg" && v["seq"] == 4)
        .await;
    assert_eq!(m["meta"], json!({"reply_to": 3}), "{m}");
    let mut retry = send;
    retry["id"] = json!(5);
    let dup = alice.request(retry).await;
    assert_eq!(
        (&dup["duplicate"], &dup["seq"]),
        (&json!(true), &json!(4)),
        "{dup}"
    );

    // history, backwards and forwards.
    let h = alice
        .request(json!({"op": "history", "id": 6, "room": room, "before": 4, "limit": 2}))
        .await;
    let seqs: Vec<&Value> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["seq"])
        .collect();
    assert_eq!(
        (seqs, &h["has_more"]),
        (vec![&json!(2), &json!(3)], &json!(true)),
        "{h}"
    );
    let h = alice
        .request(json!({"op": "history", "id": 7, "room": room, "after": 3}))
        .await;
    assert_eq!(
        (h["messages"].as_array().unwrap().len(), &h["has_more"]),
        (1, &json!(false)),
        "{h}"
    );

    // read and delivered: no reply, receipts to both.
    alice
        .send(json!({"op": "read", "room": room, "seq": 4}))
        .await;
    bob.send(json!({"op": "delivered", "id": 8, "room": room, "seq": 4}))
        .await;
    // Bob's receipts name both users (in one coalesced frame or two).
    let mut named = std::collections::BTreeSet::new();
    while named.len() < 2 {
        let r = bob.recv_op("receipt").await;
        for e in r["receipts"].as_array().unwrap() {
            named.insert(e["user"].as_str().unwrap().to_owned());
        }
    }
    let r = alice.recv_op("receipt").await;
    assert_eq!(r["room"], room, "{r}");

    // typing: to the others only.
    alice
        .send(json!({"op": "typing", "room": room, "active": true}))
        .await;
    let t = bob.recv_op("typing").await;
    assert_eq!(
        (&t["user"], &t["device"], &t["active"]),
        (&json!("alice"), &json!("phone"), &json!(true))
    );
    alice
        .send(json!({"op": "typing", "room": room, "active": false}))
        .await;
    let t = bob.recv_op("typing").await;
    assert_eq!(t["active"], false, "{t}");

    // presence snapshot; pings both ways.
    let p = alice
        .request(json!({"op": "presence", "id": 9, "room": room}))
        .await;
    let mut users: Vec<&str> = p["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user"].as_str().unwrap())
        .collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob"], "{p}");
    assert_eq!(
        alice.request(json!({"op": "ping", "id": 10})).await,
        json!({"op": "pong", "id": 10})
    );
    alice.send(json!({"op": "ping"})).await;
    assert_eq!(alice.recv_op("pong").await, json!({"op": "pong"}));

    // Error frames: of a valid request (forbidden, not_joined with cid and
    // room), and of frames the client schema refuses (unknown_op,
    // bad_request, invalid_room).
    let e = alice
        .request(json!({"op": "join", "id": 11, "room": side}))
        .await;
    assert_eq!(
        (&e["code"], &e["room"]),
        (&json!("forbidden"), &json!(side)),
        "{e}"
    );
    let e = alice
        .request(
            json!({"op": "send", "id": 12, "room": "schema-elsewhere", "cid": "a-2", "body": 1}),
        )
        .await;
    assert_eq!(
        (&e["code"], &e["cid"], &e["room"]),
        (
            &json!("not_joined"),
            &json!("a-2"),
            &json!("schema-elsewhere")
        ),
        "{e}"
    );
    alice.send_invalid(r#"{"op":"frobnicate","id":13}"#).await;
    let e = alice.recv_where("error 13", |v| v["id"] == 13).await;
    assert_eq!(
        (&e["code"], &e["request"]),
        (&json!("unknown_op"), &json!("frobnicate")),
        "{e}"
    );
    alice
        .send_invalid(r#"{"op":"join","id":14,"room":5}"#)
        .await;
    let e = alice.recv_where("error 14", |v| v["id"] == 14).await;
    assert_eq!(
        (&e["code"], &e["request"]),
        (&json!("bad_request"), &json!("join")),
        "{e}"
    );
    alice
        .send_invalid(r#"{"op":"join","id":15,"room":"a/b"}"#)
        .await;
    let e = alice.recv_where("error 15", |v| v["id"] == 15).await;
    assert_eq!(
        (&e["code"], &e["room"]),
        (&json!("invalid_room"), &json!("a/b")),
        "{e}"
    );

    // leave, keeping the membership: bob sees alice go offline.
    let l = alice
        .request(json!({"op": "leave", "id": 16, "room": room, "keep_membership": true}))
        .await;
    assert_eq!(l, json!({"op": "left", "id": 16, "room": room}));
    bob.recv_where("alice offline", |v| {
        v["op"] == "presence_diff" && v["left"] == json!(["alice"])
    })
    .await;

    // A resume on a new connection: the server re-joins the room, replaying
    // what came since (joined without id).
    let ack = bob
        .request(json!({"op": "send", "id": 17, "room": room, "cid": "b-4", "body": "while away"}))
        .await;
    assert_eq!(ack["seq"], 5, "{ack}");
    alice.raw.ws.close(None).await.unwrap();
    let mut again = Captured::open(&node.url_for("alice"), "alice (resumed)").await;
    again
        .send(json!({"op": "hello", "device": "phone", "resume": {"token": resume_token, "rooms": {room: 4}}}))
        .await;
    let w = again.recv_op("welcome").await;
    assert_eq!(w["resumed"], true, "{w}");
    let m = again.recv_op("msg").await;
    assert_eq!(m["seq"], 5, "{m}");
    let j = again.recv_op("joined").await;
    assert!(j.get("id").is_none(), "{j}");
    assert_eq!(
        (&j["room"], &j["replayed"]),
        (&json!(room), &json!(1)),
        "{j}"
    );

    // The drain: reconnect, then close 4000, on every connection.
    for pid in node.pids() {
        signal(pid, "TERM");
    }
    for c in [&mut again, &mut bob] {
        let (code, _) = c.close_frame().await;
        assert_eq!(code, 4000, "{}", c.who);
        let frames: Vec<Value> = c.pending.drain(..).collect();
        assert!(
            frames.iter().any(|v| v["op"] == "reconnect"),
            "{}: {frames:?}",
            c.who
        );
    }

    // Every op of both directions went through the schemas.
    let (mut sent, mut received) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    let mut frames = 0;
    for c in [&mut alice, &mut again, &mut bob] {
        sent.extend(c.sent.iter().cloned());
        received.extend(c.received.iter().cloned());
        frames += c.frames;
    }
    let all = |ops: &[&str]| {
        ops.iter()
            .map(|s| s.to_string())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert_eq!(
        sent,
        all(&[
            "hello",
            "join",
            "leave",
            "send",
            "history",
            "read",
            "delivered",
            "typing",
            "presence",
            "ping",
            "pong",
            "refresh"
        ])
    );
    assert_eq!(
        received,
        all(&[
            "welcome",
            "joined",
            "left",
            "ack",
            "msg",
            "history",
            "receipt",
            "typing",
            "presence",
            "presence_diff",
            "ping",
            "pong",
            "error",
            "reconnect",
            "refreshed",
            "refresh_needed"
        ])
    );
    eprintln!("{frames} frames checked against the schemas");
}

/// PROTOCOL.md 1.4 and 14.5: a cid is 1-128 characters, not bytes (a cid of
/// 128 two-byte characters is fine), on the WebSocket and over HTTP.
#[tokio::test]
async fn cids_are_counted_in_characters_not_bytes() {
    let node = GatewayProcess::start(&[]);
    let (mut alice, _) = RawWs::hello(&node, "alice").await;
    alice.join(1, "r").await;
    let ok = "é".repeat(128);
    let ack = alice
        .request(json!({"op": "send", "id": 2, "room": "r", "cid": ok, "body": 1}))
        .await;
    assert_eq!(
        (&ack["op"], &ack["cid"]),
        (&json!("ack"), &json!(ok)),
        "{ack}"
    );
    let long = "é".repeat(129);
    let e = alice
        .request(json!({"op": "send", "id": 3, "room": "r", "cid": long, "body": 1}))
        .await;
    assert_error(&e, "bad_request");
    assert_eq!(e["cid"], long, "{e}");

    let http = reqwest::Client::new();
    let url = format!("{}/v1/rooms/r/messages", node.http_url());
    for (cid, status) in [("ü".repeat(128), 200), ("ü".repeat(129), 400)] {
        let resp = http
            .post(&url)
            .bearer_auth(chorus_tests::API_KEY)
            .json(&json!({"sender": "bot", "cid": cid, "body": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{cid}");
    }
}
