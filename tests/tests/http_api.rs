//! The HTTP surface of a real `chorus` process: the `/v1` JSON API (presence,
//! history, server-side publish), API-key authentication, the error shape and
//! statuses, tenants, health/readiness/metrics, the demo page, the upgrade's
//! origin check, and client JWTs signed with RS256/ES256 public keys.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chorus_protocol::Json;
use chorus_protocol::client::{Client, ClientConfig, ClientError, Event};
use chorus_tests::{API_KEY, GatewayProcess, now_secs, signal, text, token};
use reqwest::StatusCode;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(5);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

fn url(node: &GatewayProcess, path: &str) -> String {
    format!("{}{path}", node.http_url())
}

/// GET with the API key; status and JSON body.
async fn get_json(node: &GatewayProcess, path: &str) -> (StatusCode, Value) {
    let resp = http()
        .get(url(node, path))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .expect("GET");
    let status = resp.status();
    (status, resp.json().await.expect("JSON body"))
}

/// POST a JSON value with the API key; status and JSON body.
async fn post_json(node: &GatewayProcess, path: &str, body: &Value) -> (StatusCode, Value) {
    let resp = http()
        .post(url(node, path))
        .header("Authorization", format!("Bearer {API_KEY}"))
        .json(body)
        .send()
        .await
        .expect("POST");
    let status = resp.status();
    (status, resp.json().await.expect("JSON body"))
}

/// POST raw bytes as `application/json` with the API key.
///
/// A server that rejects a body it has not read to the end (413) may close the
/// connection while the body is still being written; the client then sees a
/// broken pipe instead of the response. Retry a few times for the response.
async fn post_raw(
    node: &GatewayProcess,
    path: &str,
    body: impl Into<Vec<u8>>,
) -> (StatusCode, Value) {
    let body: Vec<u8> = body.into();
    let mut last = None;
    for _ in 0..10 {
        let sent = http()
            .post(url(node, path))
            .header("X-Api-Key", API_KEY)
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(resp) => {
                let status = resp.status();
                return (status, resp.json().await.expect("JSON body"));
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("POST {path}: {last:?}");
}

/// The error body is exactly `{"error":{"code":C,"message":M}}`; returns C.
#[track_caller]
fn error_code(body: &Value) -> String {
    let obj = body
        .as_object()
        .unwrap_or_else(|| panic!("error body is not an object: {body}"));
    assert_eq!(obj.len(), 1, "only `error` at the top level: {body}");
    let err = obj["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {body}"));
    assert_eq!(err.len(), 2, "error has exactly code and message: {body}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message is a non-empty string: {body}"
    );
    err["code"].as_str().expect("code is a string").to_owned()
}

#[track_caller]
fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "status for {body}");
    assert_eq!(error_code(body), want_code, "code in {body}");
}

/// Wait for the next `msg` event.
async fn next_msg(c: &mut Client) -> chorus_protocol::Message {
    match c.wait_for(WAIT, |e| matches!(e, Event::Msg(_))).await {
        Some(Event::Msg(m)) => m,
        other => panic!("expected a msg, got {other:?}"),
    }
}

fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

// ---------------------------------------------------------------------------
// Operational endpoints and the demo page
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_readiness_and_demo_page() {
    let node = GatewayProcess::start(&[]);
    let c = http();

    let r = c.get(url(&node, "/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ok");

    let r = c.get(url(&node, "/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ready");

    // No API key needed for any of these.
    let r = c.get(url(&node, "/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/html"), "content type {ct}");
    let html = r.text().await.unwrap();
    assert!(
        html.to_lowercase().starts_with("<!doctype html>"),
        "{}",
        &html[..40]
    );
    for id in ["name", "connect", "messages"] {
        assert!(
            html.contains(&format!("id=\"{id}\"")),
            "demo page lacks #{id}"
        );
    }
}

/// Every node serves the JavaScript SDK byte for byte as it is in the repository.
#[tokio::test]
async fn the_sdk_is_served_byte_identical_to_the_repository_file() {
    let node = GatewayProcess::start(&[]);
    let repo =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../protocol/js/chorus.js"))
            .expect("protocol/js/chorus.js");
    let r = http()
        .get(url(&node, "/sdk/chorus.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/javascript"), "content type {ct}");
    let served = r.bytes().await.unwrap();
    assert!(
        served.as_ref() == repo.as_slice(),
        "/sdk/chorus.js differs from protocol/js/chorus.js"
    );
    assert!(String::from_utf8_lossy(&served).contains("export class Chorus"));
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_chorus_series_after_traffic() {
    if GatewayProcess::single_node_only(
        "metrics are per process; the balancer may route /metrics to another node",
    ) {
        return;
    }
    let node = GatewayProcess::start(&[]);
    let mut alice = node.connect("alice").await;
    alice.join("general", None).await.unwrap();
    alice
        .send("general", "m-1", text("hi"), None)
        .await
        .unwrap();
    next_msg(&mut alice).await;
    let (s, _) = post_json(
        &node,
        "/v1/rooms/general/messages",
        &json!({"sender":"bot","body":1}),
    )
    .await;
    assert_eq!(s, 200);
    // An auth failure, to see its counter.
    let bad = Client::connect(ClientConfig::new(format!(
        "{}?access_token=garbage",
        node.ws_url()
    )))
    .await;
    assert_eq!(bad.unwrap_err().close_code(), Some(4501));

    let r = http().get(url(&node, "/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain"), "content type {ct}");
    let body = r.text().await.unwrap();
    let value = |name: &str| -> f64 {
        body.lines()
            .find(|l| l.split([' ', '{']).next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing in:\n{body}"))
    };
    // Counted after the handshake: join and send (hello is not counted).
    assert!(value("chorus_frames_in_total") >= 2.0, "join, send");
    // welcome, joined, msg, ack.
    assert!(value("chorus_frames_out_total") >= 3.0);
    assert_eq!(value("chorus_connections"), 1.0);
    assert_eq!(value("chorus_rooms_local"), 1.0);
    assert!(value("chorus_auth_failures_total") >= 1.0);
    assert!(
        body.contains("chorus_closes_total{code=\"unauthorized\"}"),
        "{body}"
    );
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        assert!(line.starts_with("chorus_"), "only chorus_ series: {line}");
        let v = line.rsplit(' ').next().unwrap();
        assert!(
            v.parse::<f64>().is_ok() || v == "+Inf" || v == "NaN",
            "sample value in {line}"
        );
    }
}

#[tokio::test]
async fn draining_node_is_not_ready_and_refuses_upgrades_and_publishes() {
    if GatewayProcess::single_node_only("readiness and drain are per process") {
        return;
    }
    // To keep the drain open long enough to observe: a client that never reads
    // while the server writes ~20 MB to it blocks its connection task in a
    // write (the write timeout is long); the drain then waits its full deadline.
    let node = GatewayProcess::start(&[
        "--max-message-bytes",
        "2000000",
        "--write-timeout-ms",
        "60000",
        "--drain-timeout-ms",
        "4000",
    ]);
    let mut ws = chorus_protocol::client::connect_ws(&node.config("stuck"))
        .await
        .unwrap();
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message as Ws;
        ws.send(Ws::Text(r#"{"op":"hello","v":1}"#.into()))
            .await
            .unwrap();
        ws.send(Ws::Text(r#"{"op":"join","id":1,"room":"flood"}"#.into()))
            .await
            .unwrap();
        // Read up to `joined`, then stop reading for good.
        loop {
            let m = tokio::time::timeout(WAIT, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if m.to_text().unwrap_or_default().contains("\"joined\"") {
                break;
            }
        }
    }
    let big = "x".repeat(1_000_000);
    for i in 0..20 {
        let (s, b) = post_json(
            &node,
            "/v1/rooms/flood/messages",
            &json!({"sender":"bot","cid":format!("f{i}"),"body":big}),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    signal(node.pid(), "TERM");
    let c = http();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let r = c
            .get(url(&node, "/readyz"))
            .send()
            .await
            .expect("node still serving while draining");
        if r.status() == 503 {
            assert_eq!(r.text().await.unwrap(), "draining");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "readyz never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Health stays 200: the process is alive.
    assert_eq!(
        c.get(url(&node, "/healthz")).send().await.unwrap().status(),
        200
    );
    let (s, b) = post_json(
        &node,
        "/v1/rooms/flood/messages",
        &json!({"sender":"bot","body":1}),
    )
    .await;
    assert_error(s, &b, 503, "draining");
    match Client::connect(node.config("late")).await {
        Err(ClientError::Http { status, body }) => {
            assert_eq!(status, 503);
            assert!(body.contains("draining"), "{body}");
        }
        other => panic!("upgrade during drain: {other:?}"),
    }
    drop(ws);
}

// ---------------------------------------------------------------------------
// Authentication and error shape
// ---------------------------------------------------------------------------

#[tokio::test]
async fn api_key_is_required_on_every_v1_endpoint() {
    let node = GatewayProcess::start(&[]);
    let c = http();
    let endpoints: [(&str, &str, Option<Value>); 5] = [
        ("GET", "/v1/rooms/general/presence", None),
        ("GET", "/v1/users/alice/presence", None),
        (
            "POST",
            "/v1/presence/query",
            Some(json!({"users":["alice"]})),
        ),
        ("GET", "/v1/rooms/general/messages", None),
        (
            "POST",
            "/v1/rooms/general/messages",
            Some(json!({"sender":"bot","body":1})),
        ),
    ];
    for (method, path, body) in &endpoints {
        let req = |auth: Option<(&str, String)>| {
            let mut r = c.request(method.parse().unwrap(), url(&node, path));
            if let Some(b) = body {
                r = r.json(b);
            }
            if let Some((k, v)) = auth {
                r = r.header(k, v);
            }
            r
        };
        let check = async |r: reqwest::RequestBuilder, want: u16, code: Option<&str>| {
            let resp = r.send().await.unwrap();
            let status = resp.status();
            let ct = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let b: Value = resp.json().await.unwrap();
            assert_eq!(status.as_u16(), want, "{method} {path}: {b}");
            assert_eq!(ct.as_deref(), Some("application/json"), "{method} {path}");
            if let Some(code) = code {
                assert_eq!(error_code(&b), code, "{method} {path}");
            }
        };
        check(req(None), 401, Some("unauthorized")).await;
        check(
            req(Some(("X-Api-Key", "wrong".into()))),
            403,
            Some("forbidden"),
        )
        .await;
        check(
            req(Some(("Authorization", "Bearer wrong".into()))),
            403,
            Some("forbidden"),
        )
        .await;
        // Same length as the real key, one byte off.
        let mut near = API_KEY.to_owned();
        near.pop();
        near.push('!');
        check(req(Some(("X-Api-Key", near))), 403, Some("forbidden")).await;
        check(req(Some(("X-Api-Key", API_KEY.into()))), 200, None).await;
        check(
            req(Some(("Authorization", format!("Bearer {API_KEY}")))),
            200,
            None,
        )
        .await;
        // A non-Bearer Authorization header is ignored in favour of X-Api-Key.
        let r =
            req(Some(("Authorization", "Basic Zm9vOmJhcg==".into()))).header("X-Api-Key", API_KEY);
        check(r, 200, None).await;
        // A Bearer key, when present, is the one checked.
        let r = req(Some(("Authorization", "Bearer wrong".into()))).header("X-Api-Key", API_KEY);
        check(r, 403, Some("forbidden")).await;
    }
    // Exactly the documented body.
    let b: Value = c
        .get(url(&node, "/v1/rooms/general/presence"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        b,
        json!({"error":{"code":"unauthorized","message":"missing API key"}})
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let node = GatewayProcess::start(&[]);
    let c = http();
    for path in [
        "/nope",
        "/v1",
        "/v1/rooms",
        "/v1/rooms/general",
        "/v1/rooms/general/members",
        "/v2/rooms/general/messages",
    ] {
        let r = c
            .get(url(&node, path))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .unwrap();
        let s = r.status();
        assert_error(s, &r.json().await.unwrap(), 404, "not_found");
    }
    // Without a key too: unknown routes are not an auth question.
    let r = c.get(url(&node, "/v1/whatever")).send().await.unwrap();
    let s = r.status();
    assert_error(s, &r.json().await.unwrap(), 404, "not_found");
    for (method, path) in [
        ("DELETE", "/v1/rooms/general/messages"),
        ("POST", "/v1/rooms/general/presence"),
        ("GET", "/v1/presence/query"),
        ("POST", "/healthz"),
    ] {
        let r = c
            .request(method.parse().unwrap(), url(&node, path))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .unwrap();
        let s = r.status();
        assert_error(s, &r.json().await.unwrap(), 405, "method_not_allowed");
    }
}

// ---------------------------------------------------------------------------
// Presence
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// History
// ---------------------------------------------------------------------------

#[tokio::test]
async fn history_pages_both_ways_with_has_more() {
    let node = GatewayProcess::start(&["--max-history-page", "5"]);
    let alice = node.connect("alice").await;
    alice.join("general", None).await.unwrap();
    for i in 1..=7 {
        let meta = (i == 2).then(|| Json::from_text(r#"{"reply_to":1}"#).unwrap());
        let ack = alice
            .send("general", &format!("c-{i}"), text(&format!("m{i}")), meta)
            .await
            .unwrap();
        assert_eq!(ack.seq, i);
    }
    let page = |q: &str| {
        let path = format!("/v1/rooms/general/messages{q}");
        let node = &node;
        async move {
            let (s, b) = get_json(node, &path).await;
            assert_eq!(s, 200, "{path}: {b}");
            assert_eq!(b["room"], "general");
            (seqs(&b), b["has_more"].as_bool().expect("has_more"), b)
        }
    };

    // Neither: the newest `limit`, ascending. Default limit 50, capped at the max page (5).
    let (s, more, b) = page("").await;
    assert_eq!((s, more), (vec![3, 4, 5, 6, 7], true));
    let m = &b["messages"][0];
    assert_eq!(m["room"], "general");
    assert_eq!(m["sender"], "alice");
    assert_eq!(m["cid"], "c-3");
    assert_eq!(m["body"], json!({"text":"m3"}));
    assert!(m["id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(m["ts"].as_i64().unwrap() > 0);
    assert!(m.get("meta").is_none(), "meta omitted when none");
    assert_eq!(page("?limit=2").await.0, vec![6, 7]);
    assert_eq!(
        page("?limit=100").await.0.len(),
        5,
        "clamped to --max-history-page"
    );
    assert_eq!(page("?limit=0").await.0, vec![7], "clamped up to 1");

    // Backwards: before = first seq of the previous page.
    assert_eq!(page("?limit=3").await.0, vec![5, 6, 7]);
    assert_eq!(page("?before=5&limit=3").await.0[..], [2, 3, 4]);
    let (s, more, b) = page("?before=2&limit=3").await;
    assert_eq!((s, more), (vec![1], false));
    assert_eq!(b["messages"][0]["seq"], 1);
    let (s, more, b2) = page("?before=3&limit=3").await;
    assert_eq!((s, more), (vec![1, 2], false));
    assert_eq!(b2["messages"][1]["meta"], json!({"reply_to":1}));
    assert!(
        !page("?before=4&limit=3").await.1,
        "exactly 3 older: no more"
    );
    assert_eq!(
        page("?before=1").await,
        (
            vec![],
            false,
            json!({"room":"general","messages":[],"has_more":false})
        )
    );

    // Forwards: after = last seq of the previous page.
    assert_eq!(page("?after=0&limit=3").await.0[..], [1, 2, 3]);
    assert!(page("?after=0&limit=3").await.1);
    assert_eq!(page("?after=3&limit=3").await.0[..], [4, 5, 6]);
    assert!(page("?after=3&limit=3").await.1);
    let (s, more, _) = page("?after=6&limit=3").await;
    assert_eq!((s, more), (vec![7], false));
    assert!(
        !page("?after=4&limit=3").await.1,
        "exactly 3 newer: no more"
    );
    assert_eq!(page("?after=7").await.0, Vec::<u64>::new());
    assert_eq!(page("?after=100").await.0, Vec::<u64>::new());

    // Both: `after` pages forwards, cut at `before`.
    assert_eq!(page("?after=2&before=5").await.0, vec![3, 4]);

    // A room never written to.
    let (s, b) = get_json(&node, "/v1/rooms/never-used/messages").await;
    assert_eq!(
        (s.as_u16(), b),
        (
            200,
            json!({"room":"never-used","messages":[],"has_more":false})
        )
    );

    // Garbage paging parameters are 400.
    for q in [
        "limit=abc",
        "limit=-1",
        "limit=",
        "limit=1.5",
        "limit=4294967296",
        "after=x",
        "before=-3",
        "after=1e3",
    ] {
        let (s, b) = get_json(&node, &format!("/v1/rooms/general/messages?{q}")).await;
        assert_error(s, &b, 400, "bad_request");
    }
    // Invalid room names are 400 (`/` percent-encoded, space, too long).
    for room in ["a%2Fb", "a%20b", "caf%C3%A9", &"r".repeat(129)] {
        let (s, b) = get_json(&node, &format!("/v1/rooms/{room}/messages")).await;
        assert_error(s, &b, 400, "bad_request");
        let (s, b) = get_json(&node, &format!("/v1/rooms/{room}/presence")).await;
        assert_error(s, &b, 400, "bad_request");
    }
    let (s, _) = get_json(&node, &format!("/v1/rooms/{}/messages", "r".repeat(128))).await;
    assert_eq!(s, 200, "128 characters is allowed");
}

// ---------------------------------------------------------------------------
// Server-side publish
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tenant_parameter_selects_the_namespace() {
    let node = GatewayProcess::start(&[]);
    let acme_url = format!(
        "{}?access_token={}",
        node.ws_url(),
        token("alice", 3600, None, Some("acme"))
    );
    let mut acme_alice = Client::connect(ClientConfig::new(acme_url)).await.unwrap();
    assert_eq!(acme_alice.welcome().tenant.as_deref(), Some("acme"));
    let mut bob = node.connect("bob").await;
    assert_eq!(bob.welcome().tenant, None);
    acme_alice.join("general", None).await.unwrap();
    bob.join("general", None).await.unwrap();

    let users = |b: &Value| -> Vec<String> {
        b["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["user"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, b) = get_json(&node, "/v1/rooms/general/presence?tenant=acme").await;
    assert_eq!(
        (b["room"].as_str(), users(&b)),
        (Some("general"), vec!["alice".to_owned()])
    );
    let (_, b) = get_json(&node, "/v1/rooms/general/presence").await;
    assert_eq!(users(&b), ["bob"]);
    let (_, b) = get_json(&node, "/v1/rooms/general/presence?tenant=other").await;
    assert_eq!(b["count"], 0);

    let (_, b) = get_json(&node, "/v1/users/alice/presence?tenant=acme").await;
    assert_eq!(
        (b["user"].as_str(), b["online"].as_bool()),
        (Some("alice"), Some(true))
    );
    assert_eq!(
        b["devices"][0]["rooms"],
        json!(["general"]),
        "public room names, no tenant prefix"
    );
    let (_, b) = get_json(&node, "/v1/users/alice/presence").await;
    assert_eq!(b["online"], false);
    let (_, b) = post_json(
        &node,
        "/v1/presence/query?tenant=acme",
        &json!({"users":["alice","bob"]}),
    )
    .await;
    assert_eq!(
        (
            b["users"]["alice"]["online"].as_bool(),
            b["users"]["bob"]["online"].as_bool()
        ),
        (Some(true), Some(false))
    );

    // Publishing into acme reaches acme's members only, with its own sequence.
    let (s, r) = post_json(
        &node,
        "/v1/rooms/general/messages?tenant=acme",
        &json!({"sender":"bot","cid":"t1","body":"for acme"}),
    )
    .await;
    assert_eq!(
        (s.as_u16(), r["room"].as_str(), r["seq"].as_u64()),
        (200, Some("general"), Some(1))
    );
    let m = next_msg(&mut acme_alice).await;
    assert_eq!(
        (m.room.as_str(), m.body.get()),
        ("general", r#""for acme""#)
    );
    assert!(
        bob.wait_for(Duration::from_millis(400), |e| matches!(e, Event::Msg(_)))
            .await
            .is_none()
    );
    let (_, r) = post_json(
        &node,
        "/v1/rooms/general/messages",
        &json!({"sender":"bot","cid":"t1","body":"default"}),
    )
    .await;
    assert_eq!(
        (r["seq"].as_u64(), r["duplicate"].as_bool()),
        (Some(1), Some(false)),
        "same cid, other tenant: new"
    );
    assert_eq!(next_msg(&mut bob).await.body.get(), r#""default""#);

    let (_, page) = get_json(&node, "/v1/rooms/general/messages?tenant=acme").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            page["messages"][0]["body"].as_str(),
            page["messages"][0]["room"].as_str()
        ),
        (Some("for acme"), Some("general"))
    );
    let (_, page) = get_json(&node, "/v1/rooms/general/messages").await;
    assert_eq!(page["messages"][0]["body"], "default");
    let (_, page) = get_json(&node, "/v1/rooms/general/messages?tenant=nobody").await;
    assert_eq!(page["messages"], json!([]));

    // A tenant follows the user-id rules.
    for q in ["tenant=a%2Fb", "tenant=a%20b", "tenant="] {
        for path in [
            "/v1/rooms/general/presence",
            "/v1/users/alice/presence",
            "/v1/rooms/general/messages",
        ] {
            let (s, b) = get_json(&node, &format!("{path}?{q}")).await;
            assert_error(s, &b, 400, "bad_request");
        }
        let (s, b) = post_json(
            &node,
            &format!("/v1/rooms/general/messages?{q}"),
            &json!({"sender":"bot","body":1}),
        )
        .await;
        assert_error(s, &b, 400, "bad_request");
        // Also when no user is asked for.
        for users in [json!(["alice"]), json!([])] {
            let (s, b) = post_json(
                &node,
                &format!("/v1/presence/query?{q}"),
                &json!({ "users": users }),
            )
            .await;
            assert_error(s, &b, 400, "bad_request");
        }
    }
}

// ---------------------------------------------------------------------------
// The WebSocket upgrade
// ---------------------------------------------------------------------------

#[tokio::test]
async fn disallowed_origin_is_refused_at_the_upgrade() {
    let node = GatewayProcess::start(&[
        "--allowed-origin",
        "https://chat.example.com,http://localhost:3000",
    ]);
    match Client::connect(
        node.config("alice")
            .with_header("Origin", "https://evil.example"),
    )
    .await
    {
        Err(ClientError::Http { status, body }) => {
            assert_eq!(status, 403);
            let b: Value = serde_json::from_str(&body).expect("JSON error body");
            assert_eq!(error_code(&b), "forbidden_origin");
        }
        other => panic!("expected HTTP 403, got {other:?}"),
    }
    // Case and exact match: a different port is another origin.
    let e = Client::connect(
        node.config("alice")
            .with_header("Origin", "http://localhost:3001"),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, ClientError::Http { status: 403, .. }), "{e:?}");
    for origin in ["https://chat.example.com", "http://localhost:3000"] {
        let c = Client::connect(node.config("alice").with_header("Origin", origin))
            .await
            .expect(origin);
        assert_eq!(c.welcome().user, "alice");
    }
    // Non-browser clients send no Origin: allowed.
    let c = node.connect("bob").await;
    assert_eq!(c.welcome().user, "bob");
}

#[tokio::test]
async fn bad_tokens_close_after_hello_not_at_the_upgrade() {
    let node = GatewayProcess::start(&[]);
    let close_code = |r: Result<Client, ClientError>| match r {
        Err(ClientError::Closed { code, reason }) => (code, reason),
        other => panic!("expected a close after hello, got {other:?}"),
    };
    let ws = node.ws_url();
    let (code, reason) =
        close_code(Client::connect(ClientConfig::new(format!("{ws}?access_token=garbage"))).await);
    assert_eq!(
        (code, reason.as_str()),
        (Some(4501), "unauthorized: invalid token")
    );
    let (code, reason) = close_code(
        Client::connect(ClientConfig::new(ws.clone()).with_token(token("alice", -60, None, None)))
            .await,
    );
    assert_eq!(
        (code, reason.as_str()),
        (Some(4502), "token_expired: token expired")
    );
    let (code, _) =
        close_code(Client::connect(ClientConfig::new(ws.clone()).with_bearer("x.y.z")).await);
    assert_eq!(code, Some(4501));
    // A valid token in the header wins over a bad one in hello.
    let c = Client::connect(
        ClientConfig::new(ws.clone())
            .with_bearer(&token("alice", 60, None, None))
            .with_token("garbage"),
    )
    .await
    .unwrap();
    assert_eq!(c.welcome().user, "alice");
}

// ---------------------------------------------------------------------------
// RS256 / ES256 client tokens
// ---------------------------------------------------------------------------

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private key (PKCS#8 PEM) and its public key (SPKI PEM) under `dir`.
fn keypair(dir: &Path, name: &str, algorithm: &[&str]) -> (Vec<u8>, String) {
    let private = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let private_s = private.to_str().unwrap();
    let mut args = vec!["genpkey"];
    args.extend_from_slice(algorithm);
    args.extend(["-out", private_s]);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        private_s,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (
        std::fs::read(&private).unwrap(),
        public.to_str().unwrap().to_owned(),
    )
}

fn signed(alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, key).expect("sign")
}

async fn public_key_tokens_work(alg: jsonwebtoken::Algorithm, algorithm: &[&str]) {
    use jsonwebtoken::EncodingKey;
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = keypair(dir.path(), "signer", algorithm);
    let (other_private, _) = keypair(dir.path(), "other", algorithm);
    let from_pem = |pem: &[u8]| match alg {
        jsonwebtoken::Algorithm::RS256 => EncodingKey::from_rsa_pem(pem).expect("RSA key"),
        _ => EncodingKey::from_ec_pem(pem).expect("EC key"),
    };
    let key = from_pem(&private);
    let other = from_pem(&other_private);
    let node = GatewayProcess::start(&["--jwt-public-key", &public]);
    let exp = now_secs() + 3600;
    let claims = json!({"sub":"alice","exp":exp,"rooms":["team-*"],"tenant":"acme"});

    // In hello.token.
    let jwt = signed(alg, &key, &claims);
    let alice = Client::connect(ClientConfig::new(node.ws_url()).with_token(&jwt))
        .await
        .expect("connect with signed token");
    assert_eq!(
        (
            alice.welcome().user.as_str(),
            alice.welcome().tenant.as_deref()
        ),
        ("alice", Some("acme"))
    );
    alice.join("team-a", None).await.unwrap();
    let e = alice.join("general", None).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(chorus_protocol::ErrorCode::Forbidden),
        "rooms claim applies"
    );
    // In the query string and the Authorization header.
    let c = Client::connect(ClientConfig::new(format!(
        "{}?access_token={jwt}",
        node.ws_url()
    )))
    .await
    .unwrap();
    assert_eq!(c.welcome().user, "alice");
    let c = Client::connect(ClientConfig::new(node.ws_url()).with_bearer(&jwt))
        .await
        .unwrap();
    assert_eq!(c.welcome().user, "alice");
    // The HTTP API sees the tenant's room.
    let (_, b) = get_json(&node, "/v1/rooms/team-a/presence?tenant=acme").await;
    assert_eq!(b["count"], 1);

    // Signed with another key: 4501 after hello.
    let forged = signed(alg, &other, &claims);
    let e = Client::connect(ClientConfig::new(node.ws_url()).with_token(&forged))
        .await
        .unwrap_err();
    assert_eq!(e.close_code(), Some(4501), "{e:?}");
    // Expired, signed with the right key: 4502.
    let old = signed(alg, &key, &json!({"sub":"alice","exp":now_secs() - 60}));
    let e = Client::connect(ClientConfig::new(node.ws_url()).with_token(&old))
        .await
        .unwrap_err();
    assert_eq!(e.close_code(), Some(4502), "{e:?}");
    // Missing exp, or a sub outside the user-id rules: 4501.
    for bad in [
        json!({"sub":"alice"}),
        json!({"sub":"a/b","exp":exp}),
        json!({"exp":exp}),
    ] {
        let t = signed(alg, &key, &bad);
        let e = Client::connect(ClientConfig::new(node.ws_url()).with_token(&t))
            .await
            .unwrap_err();
        assert_eq!(e.close_code(), Some(4501), "{bad}: {e:?}");
    }
    // HS256 (the harness's secret) keeps working next to the public key.
    let c = node.connect("bob").await;
    assert_eq!(c.welcome().user, "bob");
    drop(alice);
}

#[tokio::test]
async fn rs256_tokens_verify_against_the_public_key() {
    public_key_tokens_work(
        jsonwebtoken::Algorithm::RS256,
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    )
    .await;
}

#[tokio::test]
async fn es256_tokens_verify_against_the_public_key() {
    public_key_tokens_work(
        jsonwebtoken::Algorithm::ES256,
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    )
    .await;
}

#[tokio::test]
async fn a_token_for_the_other_algorithm_is_refused() {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let dir = tempfile::tempdir().unwrap();
    let (_, rsa_public) = keypair(
        dir.path(),
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (ec_private, _) = keypair(
        dir.path(),
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let node = GatewayProcess::start(&["--jwt-public-key", &rsa_public]);
    let t = signed(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(&ec_private).unwrap(),
        &json!({"sub":"alice","exp":now_secs() + 60}),
    );
    let e = Client::connect(ClientConfig::new(node.ws_url()).with_token(&t))
        .await
        .unwrap_err();
    assert_eq!(e.close_code(), Some(4501), "{e:?}");
}

// ---------------------------------------------------------------------------
// The OpenAPI document (protocol/openapi.json) against the router and the
// responses a real node sends
// ---------------------------------------------------------------------------

fn repo_file(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn openapi() -> Value {
    serde_json::from_slice(&repo_file("protocol/openapi.json")).expect("openapi.json is JSON")
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every `.route(PATH, METHOD_ROUTER)` of `gateway/src/http.rs`: the path and
/// the methods it serves.
fn served_routes() -> Vec<(String, Vec<&'static str>)> {
    let src = String::from_utf8(repo_file("gateway/src/http.rs")).unwrap();
    let mut out = Vec::new();
    let mut rest = src.as_str();
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + ".route(".len()..];
        let start = rest.find('"').expect("route path literal") + 1;
        let end = start + rest[start..].find('"').expect("end of route path");
        let path = rest[start..end].to_owned();
        let mut depth = 1;
        let mut close = end;
        for (k, c) in rest[end..].char_indices() {
            match c {
                '(' => depth += 1,
                ')' => {
                    depth -= 1;
                    if depth == 0 {
                        close = end + k;
                        break;
                    }
                }
                _ => {}
            }
        }
        let router = &rest[end..close];
        let methods = METHODS
            .into_iter()
            .filter(|m| router.contains(&format!(" {m}(")) || router.contains(&format!(".{m}(")))
            .collect();
        out.push((path, methods));
        rest = &rest[close..];
    }
    out
}

/// Follow a local `$ref` (`#/components/...`).
fn deref<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let target = doc
                .pointer(r.strip_prefix('#').expect("local $ref"))
                .unwrap_or_else(|| panic!("unresolved $ref {r}"));
            deref(doc, target)
        }
        None => v,
    }
}

/// The few regular expressions the document uses: `^[CLASS]+$` and literal
/// prefixes `^...`.
fn pattern_matches(pattern: &str, s: &str) -> bool {
    if let Some(class) = pattern
        .strip_prefix("^[")
        .and_then(|p| p.strip_suffix("]+$"))
    {
        let class: Vec<char> = class.chars().collect();
        let in_class = |c: char| {
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == '-' {
                    if (class[i]..=class[i + 2]).contains(&c) {
                        return true;
                    }
                    i += 3;
                } else {
                    if class[i] == c {
                        return true;
                    }
                    i += 1;
                }
            }
            false
        };
        return !s.is_empty() && s.chars().all(in_class);
    }
    let prefix = pattern
        .strip_prefix('^')
        .unwrap_or_else(|| panic!("unsupported pattern {pattern}"));
    assert!(
        !prefix
            .replace("\\.", "")
            .contains(['[', '(', '*', '+', '?', '$', '\\']),
        "unsupported pattern {pattern}"
    );
    s.starts_with(&prefix.replace("\\.", "."))
}

/// Validate `v` against `schema` (the JSON Schema subset the document uses);
/// a list of violations, empty when it conforms.
fn violations(doc: &Value, schema: &Value, v: &Value, at: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let Some(s) = schema.as_object() else {
        return errs;
    };
    let mut fail = |why: String| errs.push(format!("{at}: {why} (value {v})"));
    if let Some(r) = s.get("$ref") {
        let target = deref(doc, &json!({ "$ref": r })).clone();
        for e in violations(doc, &target, v, at) {
            fail(e);
        }
    }
    for sub in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for e in violations(doc, sub, v, at) {
            fail(e);
        }
    }
    if let Some(any) = s.get("anyOf").and_then(Value::as_array)
        && !any.iter().any(|sub| violations(doc, sub, v, at).is_empty())
    {
        fail("matches no anyOf branch".into());
    }
    if let Some(not) = s.get("not")
        && violations(doc, not, v, at).is_empty()
    {
        fail(format!("matches `not` {not}"));
    }
    if let Some(c) = s.get("const")
        && c != v
    {
        fail(format!("not the const {c}"));
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array)
        && !e.contains(v)
    {
        fail("not in the enum".into());
    }
    if let Some(t) = s.get("type").and_then(Value::as_str) {
        let ok = match t {
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "object" => v.is_object(),
            "array" => v.is_array(),
            "null" => v.is_null(),
            other => panic!("type {other}"),
        };
        if !ok {
            fail(format!("not of type {t}"));
        }
    }
    if let Some(n) = v.as_f64() {
        if let Some(min) = s.get("minimum").and_then(Value::as_f64)
            && n < min
        {
            fail(format!("below the minimum {min}"));
        }
        if let Some(max) = s.get("maximum").and_then(Value::as_f64)
            && n > max
        {
            fail(format!("above the maximum {max}"));
        }
    }
    if let Some(text) = v.as_str() {
        let len = text.chars().count() as u64;
        if s.get("minLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len < m)
        {
            fail("shorter than minLength".into());
        }
        if s.get("maxLength")
            .and_then(Value::as_u64)
            .is_some_and(|m| len > m)
        {
            fail("longer than maxLength".into());
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str)
            && !pattern_matches(p, text)
        {
            fail(format!("does not match {p}"));
        }
        if s.get("format").and_then(Value::as_str) == Some("uuid") {
            let ok = text.len() == 36
                && text.char_indices().all(|(i, c)| {
                    if [8, 13, 18, 23].contains(&i) {
                        c == '-'
                    } else {
                        c.is_ascii_hexdigit()
                    }
                });
            if !ok {
                fail("not a UUID".into());
            }
        }
    }
    if let Some(arr) = v.as_array() {
        if s.get("minItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| (arr.len() as u64) < m)
        {
            fail("fewer than minItems".into());
        }
        if s.get("maxItems")
            .and_then(Value::as_u64)
            .is_some_and(|m| arr.len() as u64 > m)
        {
            fail("more than maxItems".into());
        }
        if s.get("uniqueItems") == Some(&json!(true))
            && arr.iter().enumerate().any(|(i, a)| arr[..i].contains(a))
        {
            fail("items not unique".into());
        }
        if let Some(items) = s.get("items") {
            for (i, item) in arr.iter().enumerate() {
                for e in violations(doc, items, item, &format!("{at}[{i}]")) {
                    fail(e);
                }
            }
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(r.as_str().unwrap()) {
                fail(format!("lacks required {r}"));
            }
        }
        for (k, val) in obj {
            let here = format!("{at}.{k}");
            if let Some(p) = props.and_then(|p| p.get(k)) {
                for e in violations(doc, p, val, &here) {
                    fail(e);
                }
            } else {
                match s.get("additionalProperties") {
                    Some(Value::Bool(false)) => fail(format!("has the undocumented key {k}")),
                    Some(extra @ Value::Object(_)) => {
                        for e in violations(doc, extra, val, &here) {
                            fail(e);
                        }
                    }
                    _ => {}
                }
            }
            if let Some(names) = s.get("propertyNames") {
                for e in violations(doc, names, &json!(k), &here) {
                    fail(e);
                }
            }
        }
    }
    errs
}

/// The documented response of `method path` for `status`, resolved.
fn documented_response<'a>(doc: &'a Value, path: &str, method: &str, status: u16) -> &'a Value {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is not documented");
    let r = &op["responses"][status.to_string()];
    assert!(
        r.is_object(),
        "{method} {path}: status {status} is not documented"
    );
    deref(doc, r)
}

/// Send `req`; check that its status, content type, headers and body are
/// documented for `method path` (the body against the response's JSON
/// schema), and that the JSON is written with sorted keys (the raw text is
/// the compact, sorted re-encoding). Returns the status and body.
async fn conforms(
    doc: &Value,
    req: reqwest::RequestBuilder,
    path: &str,
    method: &str,
) -> (u16, Value) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let raw = resp.text().await.unwrap();
    let documented = documented_response(doc, path, method, status);
    check_response(
        doc,
        documented,
        status,
        &headers,
        &raw,
        &format!("{method} {path}"),
    )
}

fn check_response(
    doc: &Value,
    documented: &Value,
    status: u16,
    headers: &reqwest::header::HeaderMap,
    raw: &str,
    what: &str,
) -> (u16, Value) {
    for (name, h) in documented["headers"].as_object().into_iter().flatten() {
        let h = deref(doc, h);
        match headers.get(name.as_str()) {
            None => assert!(
                h["required"] != true,
                "{what} {status}: lacks the required header {name}"
            ),
            Some(value) => {
                let value = value.to_str().unwrap();
                let parsed: Value = value
                    .parse::<u64>()
                    .map(Value::from)
                    .unwrap_or(json!(value));
                let errs = violations(doc, &h["schema"], &parsed, name);
                assert!(errs.is_empty(), "{what} {status}: {errs:#?}");
            }
        }
    }
    let ct = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let media = ct.split(';').next().unwrap().trim().to_owned();
    let content = documented["content"].as_object();
    let Some(content) = content else {
        assert!(raw.is_empty(), "{what} {status}: undocumented body {raw:?}");
        return (status, Value::Null);
    };
    let (_, media_doc) = content
        .iter()
        .find(|(k, _)| k.split(';').next().unwrap().trim() == media)
        .unwrap_or_else(|| panic!("{what} {status}: content type {ct:?} is not documented"));
    if media != "application/json" {
        let errs = violations(doc, &media_doc["schema"], &json!(raw), "body");
        assert!(errs.is_empty(), "{what} {status}: {errs:#?}");
        return (status, json!(raw));
    }
    let body: Value = serde_json::from_str(raw).expect("JSON body");
    let errs = violations(doc, &media_doc["schema"], &body, "body");
    assert!(errs.is_empty(), "{what} {status}: {errs:#?}\n{raw}");
    assert_eq!(
        raw,
        serde_json::to_string(&body).unwrap(),
        "{what} {status}: keys not written in sorted order"
    );
    (status, body)
}

/// Every node serves `protocol/openapi.json` byte for byte; it is OpenAPI
/// 3.1, its `$ref`s resolve, and its paths are exactly the router's.
#[tokio::test]
async fn the_openapi_document_is_served_and_lists_every_route() {
    let node = GatewayProcess::start(&[]);
    let repo = repo_file("protocol/openapi.json");
    // No API key needed.
    let r = http()
        .get(url(&node, "/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let served = r.bytes().await.unwrap();
    assert!(
        served.as_ref() == repo.as_slice(),
        "/openapi.json differs from protocol/openapi.json"
    );
    let doc: Value = serde_json::from_slice(&served).expect("valid JSON");
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "openapi: {}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

    // Every $ref resolves.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(o) => {
                if let Some(r) = o.get("$ref").and_then(Value::as_str) {
                    out.push(r);
                }
                o.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 50, "{} $refs", all.len());
    for r in all {
        deref(&doc, &json!({ "$ref": r }));
    }

    // The router's routes and the document's paths are the same, method by method.
    let routes = served_routes();
    assert!(
        routes.iter().filter(|(p, _)| p.starts_with("/v1/")).count() >= 4,
        "{routes:?}"
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in &routes {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("{path} is served but not in openapi.json"));
        let documented: Vec<&str> = METHODS
            .into_iter()
            .filter(|m| item.get(*m).is_some())
            .collect();
        assert_eq!(&documented, methods, "methods of {path}");
        if path.starts_with("/v1/") {
            for m in methods {
                let op = &item[*m];
                assert!(op.get("security").is_none(), "{m} {path} needs the API key");
                let responses = op["responses"].as_object().unwrap();
                for status in ["200", "400", "401", "403", "404", "500", "503"] {
                    assert!(responses.contains_key(status), "{m} {path}: no {status}");
                }
                if *m == "post" {
                    for status in ["408", "413"] {
                        assert!(responses.contains_key(status), "{m} {path}: no {status}");
                    }
                }
            }
        }
    }
    for path in paths.keys() {
        assert!(
            routes.iter().any(|(p, _)| p == path),
            "{path} is in openapi.json but not served"
        );
    }
    let security = &doc["components"]["securitySchemes"];
    assert_eq!(security["bearerApiKey"]["scheme"], "bearer");
    assert_eq!(security["headerApiKey"]["name"], "X-Api-Key");
}

/// What a node really sends, successes and errors, conforms to the document
/// (status documented, body valid against its schema, required headers
/// present, keys sorted).
#[tokio::test]
async fn responses_conform_to_the_openapi_document() {
    let doc = openapi();
    let node = GatewayProcess::start(&["--max-message-bytes", "1000"]);
    let c = http();
    let key = |r: reqwest::RequestBuilder| r.header("X-Api-Key", API_KEY);
    let meta = Json::from_text(r#"{"status":"away"}"#).unwrap();
    let alice = Client::connect(node.config("alice").with_device("phone").with_meta(meta))
        .await
        .unwrap();
    let _idle = node.connect("bob").await;
    alice.join("general", None).await.unwrap();
    alice.join("dm:alice:bob", None).await.unwrap();

    let room_presence = "/v1/rooms/{room}/presence";
    let user_presence = "/v1/users/{user}/presence";
    let query = "/v1/presence/query";
    let messages = "/v1/rooms/{room}/messages";

    // Publishes: with and without cid and meta, a duplicate.
    for body in [
        json!({"sender":"bot","cid":"c-1","body":{"z":1,"a":[true,null]},"meta":{"y":"x","b":2}}),
        json!({"sender":"bot","cid":"c-1","body":"again"}),
        json!({"sender":"bot","body":"no cid","cid":null,"meta":null}),
    ] {
        let (s, b) = conforms(
            &doc,
            key(c.post(url(&node, "/v1/rooms/general/messages")).json(&body)),
            messages,
            "post",
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    alice
        .send("general", "ws-1", text("from ws"), None)
        .await
        .unwrap();

    let ok = [
        ("/v1/rooms/general/presence", room_presence),
        ("/v1/rooms/nobody-here/presence", room_presence),
        ("/v1/users/alice/presence", user_presence),
        ("/v1/users/bob/presence", user_presence),
        ("/v1/users/carol/presence", user_presence),
        ("/v1/rooms/general/messages", messages),
        ("/v1/rooms/general/messages?after=1&limit=1", messages),
        ("/v1/rooms/general/messages?before=2", messages),
        ("/v1/rooms/never/messages", messages),
    ];
    for (path, template) in ok {
        let (s, b) = conforms(&doc, key(c.get(url(&node, path))), template, "get").await;
        assert_eq!(s, 200, "{path}: {b}");
    }
    let (s, b) = conforms(
        &doc,
        key(c
            .post(url(&node, query))
            .json(&json!({"users":["alice","bob","carol","alice"]}))),
        query,
        "post",
    )
    .await;
    assert_eq!((s, b["users"].as_object().unwrap().len()), (200, 3));

    // Errors, each with its documented code.
    let cases: Vec<(reqwest::RequestBuilder, &str, &str, u16, &str)> = vec![
        (
            c.get(url(&node, "/v1/rooms/general/presence")),
            room_presence,
            "get",
            401,
            "unauthorized",
        ),
        (
            c.get(url(&node, "/v1/users/alice/presence"))
                .header("X-Api-Key", "wrong"),
            user_presence,
            "get",
            403,
            "forbidden",
        ),
        (
            key(c.get(url(&node, "/v1/rooms/a%20b/messages"))),
            messages,
            "get",
            400,
            "bad_request",
        ),
        (
            key(c.get(url(&node, "/v1/rooms/general/messages?limit=x"))),
            messages,
            "get",
            400,
            "bad_request",
        ),
        (
            key(c.get(url(&node, "/v1/users/a:b/presence"))),
            user_presence,
            "get",
            400,
            "bad_request",
        ),
        (
            key(c.post(url(&node, query)).json(&json!({"users":[1]}))),
            query,
            "post",
            400,
            "bad_request",
        ),
        (
            key(c
                .post(url(&node, "/v1/rooms/general/messages"))
                .json(&json!({"sender":"bot","body":"x".repeat(1000)}))),
            messages,
            "post",
            413,
            "message_too_large",
        ),
        (
            key(c
                .post(url(&node, "/v1/rooms/general/messages"))
                .json(&json!({"sender":"bot","body":null}))),
            messages,
            "post",
            400,
            "bad_request",
        ),
        // A room name that URL handling shortens: `/v1/rooms/presence`.
        (
            key(c.get(url(&node, "/v1/rooms/presence"))),
            room_presence,
            "get",
            404,
            "not_found",
        ),
    ];
    for (req, template, method, want, code) in cases {
        let (s, b) = conforms(&doc, req, template, method).await;
        assert_eq!(
            (s, error_code(&b).as_str()),
            (want, code),
            "{method} {template}"
        );
    }

    // 405 on every documented path for a method it does not list, with Allow.
    let not_allowed = deref(&doc, &doc["components"]["responses"]["MethodNotAllowed"]);
    for path in [
        "/v1/rooms/general/messages",
        "/v1/presence/query",
        "/openapi.json",
        "/healthz",
    ] {
        let r = key(c.delete(url(&node, path))).send().await.unwrap();
        let (s, h) = (r.status().as_u16(), r.headers().clone());
        let raw = r.text().await.unwrap();
        assert_eq!(s, 405, "DELETE {path}");
        let (_, b) = check_response(&doc, not_allowed, s, &h, &raw, &format!("DELETE {path}"));
        assert_eq!(error_code(&b), "method_not_allowed");
    }

    // The operational endpoints and the upgrade's plain-text refusal.
    for (path, want) in [
        ("/healthz", 200),
        ("/readyz", 200),
        ("/metrics", 200),
        ("/openapi.json", 200),
        ("/", 200),
        ("/sdk/chorus.js", 200),
        ("/favicon.ico", 204),
        ("/ws", 400),
    ] {
        let resp = c.get(url(&node, path)).send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let raw = resp.text().await.unwrap();
        assert_eq!(status, want, "GET {path}");
        let documented = documented_response(&doc, path, "get", status);
        if path == "/openapi.json" {
            // The document itself: not re-encoded with sorted keys.
            let body: Value = serde_json::from_str(&raw).unwrap();
            let schema = &documented["content"]["application/json"]["schema"];
            assert!(violations(&doc, schema, &body, "body").is_empty());
        } else {
            check_response(
                &doc,
                documented,
                status,
                &headers,
                &raw,
                &format!("GET {path}"),
            );
        }
    }

    // 429 with Retry-After: a sender over its limit.
    let node = GatewayProcess::start(&["--user-sends-per-sec", "1", "--user-send-burst", "1"]);
    let publish = || {
        key(c
            .post(url(&node, "/v1/rooms/r/messages"))
            .json(&json!({"sender":"bot","body":1})))
    };
    let (s, _) = conforms(&doc, publish(), messages, "post").await;
    assert_eq!(s, 200);
    let (s, b) = conforms(&doc, publish(), messages, "post").await;
    assert_eq!((s, error_code(&b).as_str()), (429, "rate_limited"));
}

/// A message sent over the WebSocket keeps its body's text verbatim in
/// history (key order and all), while the page around it is written with
/// sorted keys.
#[tokio::test]
async fn history_writes_sorted_keys_around_verbatim_bodies() {
    let node = GatewayProcess::start(&[]);
    let alice = node.connect("alice").await;
    alice.join("general", None).await.unwrap();
    let body = Json::from_text(r#"{"z":1,"a":{"y":2,"b":3}}"#).unwrap();
    let meta = Json::from_text(r#"{"k":"v","c":0}"#).unwrap();
    alice
        .send("general", "c-1", body, Some(meta))
        .await
        .unwrap();
    let raw = http()
        .get(url(&node, "/v1/rooms/general/messages"))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let page: Value = serde_json::from_str(&raw).unwrap();
    let m = &page["messages"][0];
    let expected = format!(
        r#"{{"has_more":false,"messages":[{{"body":{{"z":1,"a":{{"y":2,"b":3}}}},"cid":"c-1","id":"{}","meta":{{"k":"v","c":0}},"room":"general","sender":"alice","seq":1,"ts":{}}}],"room":"general"}}"#,
        m["id"].as_str().unwrap(),
        m["ts"]
    );
    assert_eq!(raw, expected);
}

/// The API key is checked before anything else about a request: a bad path
/// segment or query string without a key is a 401, not a 400. With the key,
/// those are JSON `400 bad_request` (a path segment that is not UTF-8 too).
#[tokio::test]
async fn the_api_key_is_checked_before_the_path_and_the_query() {
    let node = GatewayProcess::start(&[]);
    let c = http();
    let bad = [
        ("GET", "/v1/rooms/a%FFb/messages"),
        ("GET", "/v1/rooms/a%FFb/presence"),
        ("GET", "/v1/users/a%FFb/presence"),
        ("POST", "/v1/rooms/a%FFb/messages"),
        ("GET", "/v1/rooms/general/presence?tenant=a&tenant=b"),
        ("GET", "/v1/users/alice/presence?tenant=a&tenant=b"),
        ("GET", "/v1/rooms/general/messages?limit=1&limit=2"),
        ("POST", "/v1/rooms/general/messages?tenant=a&tenant=b"),
        ("POST", "/v1/presence/query?tenant=a&tenant=b"),
    ];
    for (method, path) in bad {
        let req = || {
            let r = c.request(method.parse().unwrap(), url(&node, path));
            if method == "POST" {
                r.json(&json!({"sender":"bot","body":1,"users":[]}))
            } else {
                r
            }
        };
        let r = req().send().await.unwrap();
        let s = r.status();
        assert_error(s, &r.json().await.unwrap(), 401, "unauthorized");
        let r = req().header("X-Api-Key", "wrong").send().await.unwrap();
        let s = r.status();
        assert_error(s, &r.json().await.unwrap(), 403, "forbidden");
        let r = req().header("X-Api-Key", API_KEY).send().await.unwrap();
        let s = r.status();
        assert_eq!(
            r.headers()["content-type"],
            "application/json",
            "{method} {path}"
        );
        assert_error(s, &r.json().await.unwrap(), 400, "bad_request");
    }
    // The Bearer scheme name is case-insensitive; a Bearer header with an
    // empty key is the key checked (not a fall-back to X-Api-Key).
    let get = |auth: &str| {
        c.get(url(&node, "/v1/users/alice/presence"))
            .header("Authorization", auth.to_owned())
    };
    for auth in [format!("bearer {API_KEY}"), format!("BEARER  {API_KEY} ")] {
        assert_eq!(get(&auth).send().await.unwrap().status(), 200, "{auth}");
    }
    for auth in ["Bearer", "Bearer ", "bearer  "] {
        let r = get(auth).header("X-Api-Key", API_KEY).send().await.unwrap();
        let s = r.status();
        assert_error(s, &r.json().await.unwrap(), 403, "forbidden");
    }
    // An empty Bearer header on the upgrade is no token: ?access_token counts.
    let c2 = Client::connect(node.config("alice").with_header("Authorization", "Bearer"))
        .await
        .unwrap();
    assert_eq!(c2.welcome().user, "alice");
}

/// `"cid": null` in a publish is an absent cid: the server generates one
/// (a retry is a second message).
#[tokio::test]
async fn a_null_cid_in_a_publish_is_absent() {
    let node = GatewayProcess::start(&[]);
    let path = "/v1/rooms/general/messages";
    for seq in [1, 2] {
        let (s, b) = post_json(&node, path, &json!({"sender":"bot","cid":null,"body":2})).await;
        assert_eq!(
            (s.as_u16(), b["seq"].as_u64(), b["duplicate"].as_bool()),
            (200, Some(seq), Some(false))
        );
    }
    let (_, page) = get_json(&node, path).await;
    let cids: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["cid"].as_str().unwrap())
        .collect();
    assert!(
        cids.len() == 2 && cids[0] != cids[1] && !cids[0].is_empty(),
        "{cids:?}"
    );
}
