//! 7. Oversized inbound frames

use chorus_tests::GatewayProcess;

use super::support::*;

#[tokio::test]
async fn a_frame_over_max_frame_bytes_is_answered_with_close_4504_every_time() {
    let node = GatewayProcess::start(&[]);
    let (_probe, w) = RawWs::hello(&node, "probe").await;
    let max = w["limits"]["max_frame_bytes"]
        .as_u64()
        .expect("max_frame_bytes");
    assert!(max < 70_000, "default max_frame_bytes {max}");
    let head = r#"{"op":"ping","id":1,"pad":""#;
    let big = format!("{head}{}\"}}", "p".repeat(70_000 - head.len() - 2));
    assert_eq!(big.len(), 70_000);
    let mut codes = Vec::new();
    for i in 0..20 {
        let (mut raw, _) = RawWs::hello(&node, &format!("u{i}")).await;
        raw.text(big.clone()).await;
        codes.push(raw.close_frame().await);
    }
    // Also as the first frame (still pending, before hello).
    for i in 0..10 {
        let mut raw = RawWs::open(&node.url_for(&format!("v{i}"))).await;
        raw.text(big.clone()).await;
        codes.push(raw.close_frame().await);
    }
    for (code, reason) in &codes {
        assert_eq!(*code, 4504, "{codes:?}");
        assert!(reason.starts_with("message_too_big"), "{reason}");
    }
    assert_node_serves(&node).await;
}
