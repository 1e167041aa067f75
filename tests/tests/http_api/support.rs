//! Helpers shared by this binary's test modules.

use chorus_protocol::client::{Client, Event};
use chorus_tests::{API_KEY, GatewayProcess};
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

pub(crate) const WAIT: Duration = Duration::from_secs(5);

pub(crate) fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

pub(crate) fn url(node: &GatewayProcess, path: &str) -> String {
    format!("{}{path}", node.http_url())
}

/// GET with the API key; status and JSON body.
pub(crate) async fn get_json(node: &GatewayProcess, path: &str) -> (StatusCode, Value) {
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
pub(crate) async fn post_json(
    node: &GatewayProcess,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
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
pub(crate) async fn post_raw(
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
pub(crate) fn error_code(body: &Value) -> String {
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
pub(crate) fn assert_error(status: StatusCode, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status.as_u16(), want_status, "status for {body}");
    assert_eq!(error_code(body), want_code, "code in {body}");
}

/// Wait for the next `msg` event.
pub(crate) async fn next_msg(c: &mut Client) -> chorus_protocol::Message {
    match c.wait_for(WAIT, |e| matches!(e, Event::Msg(_))).await {
        Some(Event::Msg(m)) => m,
        other => panic!("expected a msg, got {other:?}"),
    }
}

pub(crate) fn seqs(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}
