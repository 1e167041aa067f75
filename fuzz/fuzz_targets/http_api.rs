//! The HTTP API: the real router (`chorus_gateway::http::router`) over one
//! embedded node (SQLite history in a temporary directory, in-process broker
//! and presence, one API key), driven request by request with
//! `tower::ServiceExt::oneshot`. State persists across inputs: messages
//! published by one input are paged by the next.
//!
//! An input is an HTTP request as text: `METHOD URI` on the first line, then
//! `Name: value` header lines up to an empty line, then the body.
//!
//! Asserts: no panic; no 500 (the store is a local SQLite file, so no
//! internal error is expected); a history page answers JSON whose messages
//! are in ascending seq order within the requested bounds and no longer than
//! the limit; a publish answers a seq >= 1. With the `pending-http` feature
//! also: every 4xx/5xx under `/v1/` has the API error shape
//! `{"error":{"code","message"}}`, and every body in a page passes
//! `check_app_json`. With `legacy-rows`, the store starts with hand-written
//! legacy rows (room `legacy`: `1e400`, 100-deep nesting, a lone surrogate)
//! that paging must survive. `pending` turns on both.
#![no_main]

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use chorus_gateway::{Config, Node, http};
use chorus_history::SqliteStore;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokio::runtime::Runtime;
use tower::ServiceExt;

/// The API key the seed corpus (fuzz/corpus/http_api) sends.
const API_KEY: &str = "fuzz-key";

struct Fixture {
    rt: Runtime,
    router: Router,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let data = dir.path().to_str().expect("utf-8 temp path").to_owned();
        let cfg = Config::from_args([
            "chorus",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data,
            "--api-key",
            API_KEY,
            "--jwt-secret",
            "fuzz-jwt-secret",
        ])
        .expect("fuzz config");
        // The node's store, opened here so that legacy rows can be written
        // into it first (the node is built on it: `Node::builder(..).store`).
        let store = rt
            .block_on(SqliteStore::open(&dir.path().join("chorus.db")))
            .expect("store opens");
        #[cfg(feature = "legacy-rows")]
        rt.block_on(legacy_rows(&store));
        let node = rt
            .block_on(Node::builder(cfg).store(Arc::new(store)).start())
            .expect("node starts");
        Fixture {
            router: http::router(node),
            rt,
            _dir: dir,
        }
    })
}

/// Rows an earlier version (or a hand edit) may have left in the store.
#[cfg(feature = "legacy-rows")]
async fn legacy_rows(store: &SqliteStore) {
    use chorus_history::{HistoryStore, NewMessage, RoomBatch};
    let room = "legacy";
    let claim = store.claim_room(room).await.expect("claim");
    let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
    let bodies = [r#"{"n":1e400}"#.to_owned(), deep, r#""\ud800""#.to_owned()];
    let messages = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| NewMessage {
            id: format!("00000000-0000-7000-8000-00000000000{i}"),
            sender: "old".into(),
            cid: format!("legacy-{i}"),
            body: b.clone(),
            meta: None,
            ts: 1,
        })
        .collect();
    store
        .append(&[RoomBatch {
            room: room.into(),
            epoch: claim.epoch,
            messages,
        }])
        .await
        .expect("append");
}

/// Parse the input format above; `None` when it does not make a request.
fn request(data: &[u8]) -> Option<Request<Body>> {
    let line_end = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let line = data[..line_end]
        .strip_suffix(b"\r")
        .unwrap_or(&data[..line_end]);
    let sp = line.iter().position(|&b| b == b' ')?;
    let method = Method::from_bytes(&line[..sp]).ok()?;
    let uri = Uri::try_from(&line[sp + 1..]).ok()?;
    let mut rest = data.get(line_end + 1..).unwrap_or(&[]);
    let mut req = Request::builder().method(method).uri(uri);
    loop {
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let h = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        rest = rest.get(end + 1..).unwrap_or(&[]);
        if h.is_empty() {
            break;
        }
        if let Some(c) = h.iter().position(|&b| b == b':')
            && let Ok(name) = HeaderName::from_bytes(&h[..c])
            && let Ok(value) = HeaderValue::from_bytes(h[c + 1..].trim_ascii())
        {
            req = req.header(name, value);
        }
    }
    req.body(Body::from(rest.to_vec())).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some(req) = request(data) else {
        return;
    };
    let f = fixture();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let (status, body) = f.rt.block_on(async {
        let resp = f.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        (
            status,
            to_bytes(resp.into_body(), usize::MAX).await.expect("body"),
        )
    });
    let what = || {
        format!(
            "{method} {uri} -> {status} {}",
            String::from_utf8_lossy(&body)
        )
    };
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{}", what());
    let path = uri.path();
    #[cfg(feature = "pending-http")]
    if path.starts_with("/v1/") && (status.is_client_error() || status.is_server_error()) {
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "error shape: {}",
            what()
        );
    }
    if status != StatusCode::OK {
        return;
    }
    let is_messages = path.starts_with("/v1/rooms/") && path.ends_with("/messages");
    if is_messages && method == Method::GET {
        let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {}", what()));
        check_page(&uri, &v, &what);
    } else if is_messages && method == Method::POST {
        let v: Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {}", what()));
        assert!(v["seq"].as_u64().is_some_and(|s| s >= 1), "{}", what());
    }
});

/// A history page: ascending, within `after`/`before`, at most `limit`.
fn check_page(uri: &Uri, v: &Value, what: &dyn Fn() -> String) {
    let messages = v["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("{}", what()));
    assert!(v["has_more"].is_boolean(), "{}", what());
    let mut after = None;
    let mut before = None;
    let mut limit = None;
    for pair in uri.query().unwrap_or("").split('&') {
        let (k, val) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "after" => after = val.parse::<u64>().ok(),
            "before" => before = val.parse::<u64>().ok(),
            "limit" => limit = val.parse::<u32>().ok(),
            _ => {}
        }
    }
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| {
            m["seq"]
                .as_u64()
                .unwrap_or_else(|| panic!("seq: {}", what()))
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "order: {}", what());
    if let Some(a) = after {
        assert!(seqs.iter().all(|&s| s > a), "after: {}", what());
    }
    if let Some(b) = before {
        assert!(seqs.iter().all(|&s| s < b), "before: {}", what());
    }
    if let Some(l) = limit {
        assert!(seqs.len() <= l.max(1) as usize, "limit: {}", what());
    }
    #[cfg(feature = "pending-http")]
    for m in messages {
        let body = serde_json::to_string(&m["body"]).expect("serialises");
        assert_eq!(
            chorus_protocol::check_app_json(&body),
            Ok(()),
            "stored body breaks the app-JSON rules: {}",
            what()
        );
    }
}
