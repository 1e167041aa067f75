//! Hardening that needs a node started in a particular way: secrets from
//! files, logs at trace level without secrets, `/metrics` behind the API key,
//! the durable-membership cap and the HTTP publish limit per sender. Every
//! test talks to a real `chorus` process over loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chorus_protocol::ErrorCode;
use chorus_protocol::client::{Client, ClientConfig, ClientError};
use chorus_tests::{API_KEY, GatewayProcess, JWT_SECRET, binary, text, token};

/// A node started by hand (not the harness's flags), its stderr in a file.
struct Node {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
    stderr: std::path::PathBuf,
}

impl Node {
    fn start(args: &[&str], log: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let stderr = dir.path().join("stderr.log");
        let mut child = Command::new(binary())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(args)
            .env("CHORUS_LOG", log)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("chorus listening on http://")
            .and_then(|r| r.split('/').next())
            .unwrap_or_else(|| panic!("did not start: {line:?}"))
            .to_owned();
        Node {
            child,
            addr,
            _dir: dir,
            stderr,
        }
    }

    fn ws(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    fn http(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Stop the node and return what it logged.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.stderr).unwrap()
    }
}

/// `CHORUS_LOG=trace` logs a great deal, but never a client's JWT or its
/// resume token (the WebSocket library's frame dumps are capped at debug).
#[tokio::test]
async fn trace_logs_carry_no_token_and_no_resume_token() {
    let node = Node::start(&["--jwt-secret", JWT_SECRET], "trace");
    let jwt = token("alice", 3600, None, None);
    let alice = Client::connect(ClientConfig::new(node.ws()).with_token(&jwt))
        .await
        .unwrap();
    let resume = alice.welcome().resume_token.clone();
    alice.join("r", None).await.unwrap();
    alice.send("r", "c-1", text("hello"), None).await.unwrap();
    alice.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = node.stop();
    assert!(
        log.lines().count() > 20 && log.contains("DEBUG"),
        "trace logging was on: {} lines",
        log.lines().count()
    );
    assert!(!log.contains(&jwt), "the JWT is in the log");
    assert!(!log.contains(&resume), "the resume token is in the log");
    let signature = jwt.rsplit('.').next().unwrap();
    assert!(
        !log.contains(signature),
        "the JWT's signature is in the log"
    );
}

/// Secrets can come from files (kept out of the process list), and `--help`
/// says so.
#[tokio::test]
async fn secrets_can_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt");
    std::fs::write(&secret, format!("{JWT_SECRET}\n")).unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# API keys\nfile-key-1\n\nfile-key-2\n").unwrap();
    let node = Node::start(
        &[
            "--jwt-secret-file",
            secret.to_str().unwrap(),
            "--api-keys-file",
            keys.to_str().unwrap(),
        ],
        "error",
    );
    let jwt = token("alice", 3600, None, None);
    let alice = Client::connect(ClientConfig::new(node.ws()).with_token(&jwt)).await;
    assert!(
        alice.is_ok(),
        "a token signed with the file's secret connects"
    );
    let http = reqwest::Client::new();
    for (key, status) in [("file-key-2", 200), ("nope", 403)] {
        let r = http
            .get(node.http("/v1/users/alice/presence"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "key {key}");
    }
    node.stop();
    let help = Command::new(binary()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--jwt-secret-file",
        "--resume-secret-file",
        "--api-keys-file",
        "--redis-url-file",
        "--database-url-file",
    ] {
        assert!(help.contains(flag), "--help lists {flag}");
    }
    assert!(help.contains("process list"), "--help says why");
    let missing = Command::new(binary())
        .args(["--jwt-secret-file", "/nonexistent/secret"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--jwt-secret-file"));
}

/// `--metrics-require-api-key` puts `/metrics` behind the API key.
#[tokio::test]
async fn metrics_can_require_the_api_key() {
    let node = GatewayProcess::start(&["--metrics-require-api-key"]);
    let http = reqwest::Client::new();
    let url = format!("{}/metrics", node.http_url());
    let open = http.get(&url).send().await.unwrap();
    assert_eq!(open.status().as_u16(), 401);
    let keyed = http
        .get(&url)
        .header("x-api-key", API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(keyed.status().as_u16(), 200);
    assert!(keyed.text().await.unwrap().contains("chorus_"));
    // Without the flag it stays open (scrapers on a private network).
    let plain = GatewayProcess::start(&[]);
    let r = http
        .get(format!("{}/metrics", plain.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

fn server_code(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Durable memberships per user are capped: a join that would add one more
/// is `too_many_rooms`; re-joining a room already held is not; leaving one
/// makes room.
#[tokio::test]
async fn durable_memberships_per_user_are_capped() {
    let node = GatewayProcess::start(&["--max-memberships-per-user", "3"]);
    let alice = node.connect("alice").await;
    for r in ["m1", "m2", "m3"] {
        alice.join(r, None).await.unwrap();
    }
    assert_eq!(
        server_code(alice.join("m4", None).await),
        ErrorCode::TooManyRooms
    );
    // Another connection of the same user counts the same memberships.
    let phone = node.connect("alice").await;
    assert_eq!(
        server_code(phone.join("m4", None).await),
        ErrorCode::TooManyRooms
    );
    phone
        .join("m2", None)
        .await
        .expect("a held membership re-joins");
    alice.leave("m1", false).await.unwrap();
    alice.join("m4", None).await.expect("room after a leave");
}

/// An HTTP publish takes from its sender's send bucket (the one that user's
/// WebSocket sends share): a backend cannot flood a room as one user.
#[tokio::test]
async fn http_publish_is_limited_per_sender() {
    let node = GatewayProcess::start(&["--user-sends-per-sec", "1", "--user-send-burst", "2"]);
    let http = reqwest::Client::new();
    let url = format!("{}/v1/rooms/r/messages", node.http_url());
    let publish = |sender: &'static str, cid: String| {
        http.post(&url)
            .header("x-api-key", API_KEY)
            .json(&serde_json::json!({"sender": sender, "cid": cid, "body": {"t": 1}}))
            .send()
    };
    for i in 0..2 {
        let r = publish("bot", format!("b-{i}")).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let limited = publish("bot", "b-2".into()).await.unwrap();
    assert_eq!(limited.status().as_u16(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    let body: serde_json::Value = limited.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let other = publish("other-bot", "o-1".into()).await.unwrap();
    assert_eq!(
        other.status().as_u16(),
        200,
        "another sender has its own bucket"
    );
}

/// Found by the `http_api` fuzz target: a path or query that axum cannot
/// extract gets the API's JSON error shape (`400 bad_request`), not plain text.
#[tokio::test]
async fn malformed_paths_and_queries_get_the_api_error_shape() {
    let node = GatewayProcess::start(&[]);
    let http = reqwest::Client::new();
    for path in [
        "/v1/rooms/bad%20room%FF/presence",
        "/v1/users/alice/presence?tenant=a&tenant=b",
        "/v1/users/%FF%FE/presence",
        "/v1/rooms/r/messages?limit=-1",
    ] {
        let r = http
            .get(format!("{}{path}", node.http_url()))
            .header("x-api-key", API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path}");
        let body: serde_json::Value = r.json().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(body["error"]["code"], "bad_request", "{path}: {body}");
    }
}
