//! The OpenAPI document (protocol/openapi.json) against the router and the responses a real node sends

use chorus_protocol::Json;
use chorus_protocol::client::Client;
use chorus_tests::{API_KEY, GatewayProcess, text};
use serde_json::{Value, json};
use std::path::Path;

use super::support::*;

fn repo_file(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn openapi() -> Value {
    serde_json::from_slice(&repo_file("protocol/openapi.json")).expect("openapi.json is JSON")
}

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every `.route(PATH, METHOD_ROUTER)` of `gateway/src/http/mod.rs`: the path and
/// the methods it serves.
fn served_routes() -> Vec<(String, Vec<&'static str>)> {
    let src = String::from_utf8(repo_file("gateway/src/http/mod.rs")).unwrap();
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
