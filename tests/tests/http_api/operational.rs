//! Operational endpoints and the demo page

use chorus_protocol::client::{Client, ClientConfig, ClientError};
use chorus_tests::{GatewayProcess, signal, text};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

use super::support::*;

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
