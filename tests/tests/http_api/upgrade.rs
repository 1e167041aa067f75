//! The WebSocket upgrade

use chorus_protocol::client::{Client, ClientConfig, ClientError};
use chorus_tests::{GatewayProcess, token};
use serde_json::Value;

use super::support::*;

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
