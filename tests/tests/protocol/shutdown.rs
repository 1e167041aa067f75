//! shutdown

use chorus_protocol::client::Event;
use chorus_tests::{GatewayProcess, signal};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::support::*;

#[tokio::test]
async fn sigterm_sends_reconnect_then_closes_4000() {
    let node = GatewayProcess::start(&[]);
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.join("r", None).await.unwrap();
    bob.join("r", None).await.unwrap();
    for pid in node.pids() {
        signal(pid, "TERM");
    }
    for c in [&mut alice, &mut bob] {
        let mut reconnect = None;
        let (code, reason) = loop {
            let ev = tokio::time::timeout(T, c.next_event())
                .await
                .expect("close in time")
                .expect("events until Closed");
            match ev {
                Event::Reconnect {
                    reason,
                    retry_after_ms,
                } => reconnect = Some((reason, retry_after_ms)),
                Event::Closed { code, reason } => break (code, reason),
                _ => {}
            }
        };
        let (why, after) = reconnect.expect("a reconnect frame precedes the close");
        assert!(!why.is_empty());
        assert!(after > 0);
        assert_eq!(code, Some(4000));
        assert!(reason.starts_with("shutdown"), "{reason}");
    }
    // The drain ends with the process: the port stops answering.
    let t0 = Instant::now();
    for addr in node.node_addrs() {
        while TcpStream::connect(&addr).await.is_ok() {
            assert!(t0.elapsed() < T, "the node did not exit after draining");
            tokio::time::sleep(ms(100)).await;
        }
    }
}
