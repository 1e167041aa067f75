//! Helpers shared by this binary's test modules.

use chorus_protocol::ErrorCode;
use chorus_protocol::client::{Client, ClientConfig, ClientError, Event, new_cid};
pub(crate) use chorus_tests::raw::{Raw, RawWs};
pub(crate) use chorus_tests::wait::{events_for, wait_closed, wait_event, wait_msg};
use chorus_tests::{GatewayProcess, text};
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

/// Generous upper bound for anything the server should do "soon".
pub(crate) const T: Duration = Duration::from_secs(20);

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------

/// Client settings with the JWT in `hello.token` (nothing in the URL).
pub(crate) fn hello_token_cfg(node: &GatewayProcess, jwt: &str) -> ClientConfig {
    ClientConfig::new(node.ws_url()).with_token(jwt)
}

/// Connect with `cfg`, which must be refused with a close frame: its code and reason.
pub(crate) async fn refused(cfg: ClientConfig) -> (u16, String) {
    match Client::connect(cfg).await {
        Ok(c) => panic!("connection was accepted: {:?}", c.welcome()),
        Err(ClientError::Closed {
            code: Some(code),
            reason,
        }) => (code, reason),
        Err(e) => panic!("expected a close frame, got {e:?}"),
    }
}

pub(crate) fn typing_events(evs: &[Event]) -> Vec<(String, String, bool)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::Typing {
                user,
                device,
                active,
                ..
            } => Some((user.clone(), device.clone(), *active)),
            _ => None,
        })
        .collect()
}

pub(crate) fn presence_diffs(evs: &[Event]) -> Vec<(Vec<String>, Vec<String>)> {
    evs.iter()
        .filter_map(|e| match e {
            Event::PresenceDiff { joined, left, .. } => Some((
                joined.iter().map(|u| u.user.clone()).collect(),
                left.clone(),
            )),
            _ => None,
        })
        .collect()
}

/// The receipt entry for `user` in a `receipt` event, if any.
pub(crate) fn receipt_of(ev: &Event, room: &str, user: &str) -> Option<chorus_protocol::Receipt> {
    match ev {
        Event::Receipt { room: r, receipts } if r == room => {
            receipts.iter().find(|x| x.user == user).cloned()
        }
        _ => None,
    }
}

/// The server error of a failed request.
pub(crate) fn server_error(
    r: Result<impl std::fmt::Debug, ClientError>,
) -> (ErrorCode, bool, Option<u64>) {
    match r {
        Err(ClientError::Server {
            code,
            retryable,
            retry_after_ms,
            ..
        }) => (code, retryable, retry_after_ms),
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// A client that was connected before an incident still works: ping, then a
/// send in `room` (already joined) comes back as msg and ack.
pub(crate) async fn assert_client_works(c: &mut Client, room: &str) {
    c.ping().await.expect("ping after the incident");
    let cid = new_cid();
    let ack = c
        .send(room, &cid, text("still here"), None)
        .await
        .expect("send after the incident");
    let m = wait_msg(c, room, ack.seq).await;
    assert_eq!(m.cid.as_deref(), Some(cid.as_str()));
}

/// The node still serves new connections: connect, join, send, ping.
pub(crate) async fn assert_node_serves(node: &GatewayProcess) {
    let user = format!("probe-{}", new_cid());
    let mut c = node.connect(&user).await;
    c.join("probe-room", None).await.expect("probe join");
    assert_client_works(&mut c, "probe-room").await;
    c.close().await.unwrap();
}

/// A connected, joined bystander for the "other clients are unaffected" checks.
pub(crate) async fn bystander(node: &GatewayProcess) -> Client {
    let c = node.connect("bystander").await;
    c.join("bystanders", None).await.unwrap();
    c.ping().await.unwrap();
    c
}

// ---------------------------------------------------------------------------
// Raw WebSocket
// ---------------------------------------------------------------------------

/// A text frame with invalid UTF-8 in it, built by hand.
pub(crate) fn invalid_utf8_text_frame() -> WsMessage {
    WsMessage::Frame(Frame::message(
        vec![b'{', 0xff, 0xfe, b'}'],
        OpCode::Data(Data::Text),
        true,
    ))
}

/// Check an error frame's shape: code, retryable as the spec says, a message.
pub(crate) fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    let retryable = matches!(
        code,
        "rate_limited" | "unavailable" | "not_owner" | "timeout" | "internal"
    );
    assert_eq!(v["retryable"], retryable, "{v}");
}
