//! The basic path through the real wire protocol: hello, join, send, ack, msg.

use std::time::Duration;

use chorus_protocol::client::Event;
use chorus_tests::{GatewayProcess, text};

#[tokio::test]
async fn send_is_acked_and_delivered_to_every_member() {
    let node = GatewayProcess::start(&[]);
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    assert_eq!(alice.welcome().user, "alice");
    alice.join("general", None).await.unwrap();
    bob.join("general", None).await.unwrap();
    let ack = alice
        .send("general", "c-1", text("hello"), None)
        .await
        .unwrap();
    assert_eq!(ack.seq, 1);
    assert!(!ack.duplicate);
    for c in [&mut alice, &mut bob] {
        let ev = c
            .wait_for(Duration::from_secs(5), |e| matches!(e, Event::Msg(_)))
            .await
            .expect("msg");
        let Event::Msg(m) = ev else { unreachable!() };
        assert_eq!(
            (m.seq, m.sender.as_str(), m.cid.as_deref()),
            (1, "alice", Some("c-1"))
        );
        assert_eq!(m.body.get(), r#"{"text":"hello"}"#);
    }
}

#[tokio::test]
async fn retention_trims_by_count_and_keeps_seqs() {
    let node = GatewayProcess::start(&[
        "--retention-max-count",
        "5",
        "--retention-interval-secs",
        "1",
    ]);
    let alice = node.connect("alice").await;
    alice.join("keep", None).await.unwrap();
    for i in 0..20 {
        alice
            .send("keep", &format!("c{i}"), text("x"), None)
            .await
            .unwrap();
    }
    // Retention runs every second; wait until the old messages are gone.
    let mut seqs = Vec::new();
    for _ in 0..50 {
        let page = alice
            .history("keep", None, Some(0), Some(100))
            .await
            .unwrap();
        seqs = page.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
        if seqs.len() == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(seqs, vec![16, 17, 18, 19, 20], "only the newest 5 are kept");
    // Seqs are never reused after a trim.
    let ack = alice
        .send("keep", "after-trim", text("y"), None)
        .await
        .unwrap();
    assert_eq!(ack.seq, 21);
}
