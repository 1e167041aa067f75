//! 10. Dev authentication rules

use chorus_protocol::client::{Client, ClientConfig};
use chorus_tests::{API_KEY, GatewayProcess, binary};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::support::*;

#[tokio::test]
async fn dev_insecure_auth_refuses_to_start_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(binary())
        .args(["--listen", "0.0.0.0:0", "--dev-insecure-auth", "--data-dir"])
        .arg(dir.path())
        .env("CHORUS_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chorus");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chorus started with --dev-insecure-auth on 0.0.0.0");
        }
        std::thread::sleep(ms(50));
    };
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("--dev-insecure-auth"), "{stderr}");
    assert!(stderr.contains("loopback"), "{stderr}");
    assert!(!stdout.contains("listening"), "{stdout}");
}

#[tokio::test]
async fn the_http_api_needs_a_key_when_jwt_and_dev_auth_are_both_on() {
    let secret = "test-secret-0123456789";
    let node = GatewayProcess::start_args(&[
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        secret,
        "--dev-insecure-auth",
    ]);
    let get = http()
        .get(format!("{}/v1/rooms/r/messages", node.http_url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(get.status(), 401);
    let v: Value = get.json().await.expect("JSON error");
    assert!(v["error"]["code"].is_string(), "{v}");
    let post = http()
        .post(format!("{}/v1/rooms/r/messages", node.http_url()))
        .json(&json!({"sender": "svc", "body": {"t": 1}}))
        .send()
        .await
        .expect("POST");
    assert_eq!(post.status(), 401);
    // Any key is wrong: none is configured.
    let keyed = http()
        .get(format!("{}/v1/rooms/r/messages", node.http_url()))
        .header("X-Api-Key", API_KEY)
        .send()
        .await
        .expect("GET");
    assert_eq!(keyed.status(), 401);
    // Nothing was published; WebSocket clients still connect (JWT and dev).
    let c = Client::connect(ClientConfig::dev(&node.ws_url(), "devuser"))
        .await
        .expect("dev identity");
    c.join("r", None).await.unwrap();
    let tip = c.history("r", None, None, None).await.unwrap();
    assert!(tip.messages.is_empty());
    // Pure dev mode (no JWT key) keeps its open API, as before.
    let dev = GatewayProcess::start_args(&["--listen", "127.0.0.1:0", "--dev-insecure-auth"]);
    let open = http()
        .get(format!("{}/v1/rooms/r/messages", dev.http_url()))
        .send()
        .await
        .expect("GET");
    assert_eq!(open.status(), 200);
}
