//! The basic path through the real wire protocol: hello, join, send, ack, msg.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

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

/// A resume that takes back only some rooms: the user leaves the others at
/// once (no grace needed: the client chose), and stays, without flicker, in the
/// ones it took back.
#[tokio::test]
async fn resume_leaves_the_rooms_not_taken_back() {
    use chorus_protocol::client::Client;
    let node = GatewayProcess::start(&["--presence-grace-ms", "60000"]);
    let alice = node.connect("alice").await;
    alice.join("kept", None).await.unwrap();
    alice.join("dropped", None).await.unwrap();
    let mut in_kept = node.connect("bob").await;
    in_kept.join("kept", None).await.unwrap();
    let mut in_dropped = node.connect("carol").await;
    in_dropped.join("dropped", None).await.unwrap();
    let mut state = alice.resume_state();
    state.rooms = [("kept".to_string(), 0)].into();
    alice.abort();
    let alice = Client::connect_resume(node.config("alice"), state)
        .await
        .unwrap();
    assert!(alice.welcome().resumed);
    let left = in_dropped
        .wait_for(
            Duration::from_secs(5),
            |e| matches!(e, Event::PresenceDiff { left, .. } if left == &["alice".to_string()]),
        )
        .await;
    assert!(
        left.is_some(),
        "carol sees alice leave the room the resume dropped"
    );
    let diff = in_kept
        .wait_for(Duration::from_secs(1), |e| {
            matches!(e, Event::PresenceDiff { .. })
        })
        .await;
    assert!(
        diff.is_none(),
        "bob sees no flicker in the room alice took back: {diff:?}"
    );
    let users = in_kept.presence("kept").await.unwrap();
    assert!(users.iter().any(|u| u.user == "alice"));
}
