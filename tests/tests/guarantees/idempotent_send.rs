//! 2. Idempotent send

use chorus_protocol::client::{Ack, Event};
use chorus_tests::{GatewayProcess, text};
use std::time::Duration;

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_cid_is_stored_once_across_retries_and_connections() {
    const ROOM: &str = "idem";
    let node = GatewayProcess::start(&[]);
    let alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.join(ROOM, None).await.unwrap();
    bob.join(ROOM, None).await.unwrap();

    let first = alice
        .send(ROOM, "c-1", text("original"), None)
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.seq, 1);

    // Same connection, same cid (even with another body: the first stored wins).
    let second = alice
        .send(ROOM, "c-1", text("changed"), None)
        .await
        .unwrap();
    assert!(second.duplicate, "retry on the same connection: {second:?}");
    assert_eq!(
        (second.seq, &second.msg_id, second.ts),
        (first.seq, &first.msg_id, first.ts)
    );

    // New connection (after an abrupt drop), same cid.
    alice.abort();
    let alice = node.connect("alice").await;
    alice.join(ROOM, None).await.unwrap();
    let third = alice
        .send(ROOM, "c-1", text("original"), None)
        .await
        .unwrap();
    assert!(third.duplicate, "retry on a new connection: {third:?}");
    assert_eq!(
        (third.seq, &third.msg_id, third.ts),
        (first.seq, &first.msg_id, first.ts)
    );

    // A new cid after the retries gets the next seq: nothing was consumed by them.
    let next = alice.send(ROOM, "c-2", text("next"), None).await.unwrap();
    assert_eq!((next.seq, next.duplicate), (2, false));

    // The same cid raced: pipelined on one connection and at the same time on
    // a second connection of the same user (likely in one group commit).
    let alice2 = node.connect("alice").await;
    alice2.join(ROOM, None).await.unwrap();
    let racers = (0..10).map(|i| {
        let h = if i % 2 == 0 {
            alice.handle()
        } else {
            alice2.handle()
        };
        async move { h.send(ROOM, "c-3", text("raced"), None).await.unwrap() }
    });
    let raced = futures_util::future::join_all(racers).await;
    let originals: Vec<&Ack> = raced.iter().filter(|a| !a.duplicate).collect();
    assert_eq!(originals.len(), 1, "exactly one send stores c-3: {raced:?}");
    assert!(
        raced
            .iter()
            .all(|a| (a.seq, &a.msg_id) == (3, &originals[0].msg_id)),
        "every ack of c-3 names the stored message: {raced:?}"
    );

    // Bob got c-1 exactly once (first body), then c-2, then c-3 once.
    let msgs = collect_until(&mut bob, ROOM, 3, Duration::from_secs(30)).await;
    let got: Vec<(u64, Option<&str>)> = msgs.iter().map(|m| (m.seq, m.cid.as_deref())).collect();
    assert_eq!(
        got,
        vec![(1, Some("c-1")), (2, Some("c-2")), (3, Some("c-3"))]
    );
    assert_eq!(msgs[0].body.get(), r#"{"text":"original"}"#);
    assert_eq!(
        bob.duplicates_dropped(),
        0,
        "the server re-delivered a retried send"
    );
    let extra = drain_events(&mut bob, Duration::from_millis(500)).await;
    assert!(
        !extra.iter().any(|e| matches!(e, Event::Msg(_))),
        "unexpected messages: {extra:?}"
    );

    let hist = node.history(ROOM).await;
    let by_cid = check_history(&hist);
    assert_eq!(hist.len(), 3);
    let stored = &by_cid[&("alice".to_owned(), "c-1".to_owned())];
    assert_eq!((stored.seq, &stored.id), (1, &first.msg_id));
    assert_eq!(stored.body, serde_json::json!({"text": "original"}));
}
