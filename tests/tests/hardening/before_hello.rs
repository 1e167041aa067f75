//! 11. Frames before hello

use chorus_tests::GatewayProcess;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::support::*;

#[tokio::test]
async fn more_than_eight_pings_before_hello_close_4004() {
    let node = GatewayProcess::start(&[]);
    // Eight are tolerated.
    let mut raw = RawWs::open(&node.url_for("alice")).await;
    for _ in 0..8 {
        raw.ws
            .send(WsMessage::Ping(b"p".to_vec().into()))
            .await
            .unwrap();
    }
    raw.send(json!({"op": "hello"})).await;
    let w = raw.recv().await;
    assert_eq!(w["op"], "welcome", "{w}");
    // The ninth closes.
    let mut raw = RawWs::open(&node.url_for("alice")).await;
    for _ in 0..9 {
        if raw
            .ws
            .send(WsMessage::Ping(b"p".to_vec().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, reason) = raw.close_frame().await;
    assert_eq!(code, 4004, "{reason}");
    assert!(reason.starts_with("flood"), "{reason}");
    // Pongs count too.
    let mut raw = RawWs::open(&node.url_for("alice")).await;
    for _ in 0..20 {
        if raw
            .ws
            .send(WsMessage::Pong(b"p".to_vec().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(raw.close_frame().await.0, 4004);
    assert_node_serves(&node).await;
}
