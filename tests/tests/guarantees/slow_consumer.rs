//! 6. Slow consumer isolation

use chorus_protocol::Resume;
use chorus_protocol::client::{Ack, Client, ClientConfig, ClientHandle, Event};
use chorus_tests::{GatewayProcess, text, unlimited};
use futures_util::StreamExt;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::support::*;

/// A member that stops reading in a busy room: the node closes it with 4002
/// (the frames queued before the close are still delivered in order, then the
/// close frame), the others get everything in order, and the slow one resumes
/// and gets exactly the rest.
///
/// The slow client pauses (its 1-slot event channel fills, so its socket task
/// stops reading) until the node has given up on it, then reads at full speed
/// again: a client frozen for a while. A client that never reads again cannot
/// receive any close frame (its receive window is closed); that case is
/// `slow_consumer_that_never_reads_is_dropped_and_others_are_unaffected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_is_closed_with_4002_and_recovers_by_resume() {
    const ROOM: &str = "busy";
    const TOTAL: u64 = 2000;
    let node = GatewayProcess::start(&unlimited(&[
        "--outbound-queue",
        "64",
        "--outbound-bytes",
        "1000000",
        "--write-timeout-ms",
        "5000",
    ]));
    let mut alice = Client::connect(patient(&node, "alice")).await.unwrap();
    let mut bob = Client::connect(patient(&node, "bob")).await.unwrap();
    let slow_cfg = ClientConfig {
        event_capacity: 1,
        ..patient(&node, "slow")
    };
    let mut slow = Client::connect(slow_cfg).await.unwrap();
    for c in [&alice, &bob, &slow] {
        c.join(ROOM, None).await.unwrap();
    }

    // 2000 messages of ~8 KB: far more than the kernel's socket buffers hold.
    let t0 = Instant::now();
    let producer = tokio::spawn(produce(alice.handle(), ROOM, TOTAL, 8000));
    let fast = tokio::spawn(async move {
        let a = collect_until(&mut alice, ROOM, TOTAL, Duration::from_secs(300)).await;
        let b = collect_until(&mut bob, ROOM, TOTAL, Duration::from_secs(300)).await;
        let counters = [
            alice.gaps(),
            bob.gaps(),
            alice.duplicates_dropped(),
            bob.duplicates_dropped(),
        ];
        (a, b, counters, t0.elapsed())
    });

    // The node notices the full queue...
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&node, "chorus_slow_consumer_closes_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the slow consumer was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the slow client wakes up: it reads an in-order prefix, then 4002.
    let mut got = Vec::new();
    let close = loop {
        match slow.next_event_timeout(Duration::from_secs(60)).await {
            Some(Event::Msg(m)) => got.push(m.seq),
            Some(Event::Closed { code, reason }) => break (code, reason),
            Some(Event::Gap { expected, got, .. }) => panic!("slow: gap {expected} -> {got}"),
            Some(_) => {}
            None => panic!("slow: no close"),
        }
    };
    let prefix = got.len() as u64;
    assert_eq!(
        got,
        (1..=prefix).collect::<Vec<_>>(),
        "slow: not an in-order prefix"
    );
    assert!(
        prefix < TOTAL,
        "the slow consumer was not cut off: got everything"
    );
    assert_eq!(close.0, Some(4002), "slow consumer close: {close:?}");
    assert!(
        close.1.starts_with("slow_consumer"),
        "close reason: {close:?}"
    );

    // The others were not held back and got everything in order.
    let (a, b, counters, fast_in) = fast.await.expect("fast readers");
    for (who, msgs) in [("alice", &a), ("bob", &b)] {
        assert_eq!(seqs(msgs), (1..=TOTAL).collect::<Vec<_>>(), "{who}");
    }
    assert_eq!(counters, [0; 4], "gaps/duplicates of the fast readers");
    let acks = producer.await.unwrap();
    assert_eq!(acks.len() as u64, TOTAL);

    // It resumes and gets exactly the rest.
    let state = slow.resume_state();
    assert_eq!(state.rooms.get(ROOM), Some(&prefix));
    let mut slow = Client::connect_resume(patient(&node, "slow"), state)
        .await
        .unwrap();
    assert!(slow.welcome().resumed);
    let rest = collect_until(&mut slow, ROOM, TOTAL, Duration::from_secs(120)).await;
    assert_eq!(seqs(&rest), (prefix + 1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(slow.duplicates_dropped(), 0);
    eprintln!(
        "slow consumer: 4002 after {prefix} of {TOTAL} msgs; fast readers done in {fast_in:?}"
    );
}

/// `n` pipelined sends of `size`-byte bodies from `h`.
async fn produce(h: ClientHandle, room: &'static str, n: u64, size: usize) -> Vec<Ack> {
    let body = "x".repeat(size);
    futures_util::stream::iter(0..n)
        .map(|k| {
            let (h, body) = (h.clone(), body.clone());
            async move {
                h.send_with_retry(room, &format!("p-{k}"), text(&body))
                    .await
                    .unwrap_or_else(|e| panic!("send p-{k}: {e}"))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// A raw WebSocket that joins and then never reads again: the node drops it
/// (it cannot even deliver a close frame into a closed receive window) without
/// holding back the room, and the member recovers every message by resuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_that_never_reads_is_dropped_and_others_are_unaffected() {
    use chorus_protocol::client::{connect_ws, tungstenite::Message as WsMessage};
    use futures_util::SinkExt;

    const ROOM: &str = "busy2";
    const TOTAL: u64 = 2000;
    let node = GatewayProcess::start(&unlimited(&[
        "--outbound-queue",
        "64",
        "--outbound-bytes",
        "1000000",
        "--write-timeout-ms",
        "1000",
    ]));
    let mut alice = Client::connect(patient(&node, "alice")).await.unwrap();
    alice.join(ROOM, None).await.unwrap();

    // hello, join, read up to `joined`, and never read again.
    let mut ws = connect_ws(&patient(&node, "stuck")).await.unwrap();
    ws.send(WsMessage::Text(r#"{"op":"hello","v":1}"#.into()))
        .await
        .unwrap();
    ws.send(WsMessage::Text(
        format!(r#"{{"op":"join","id":1,"room":"{ROOM}"}}"#).into(),
    ))
    .await
    .unwrap();
    let mut resume_token = None;
    while let Some(m) = ws.next().await {
        let WsMessage::Text(t) = m.expect("ws") else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        match v["op"].as_str() {
            Some("welcome") => resume_token = v["resume_token"].as_str().map(str::to_owned),
            Some("joined") => break,
            _ => {}
        }
    }
    let resume_token = resume_token.expect("welcome");

    let t0 = Instant::now();
    let producer = tokio::spawn(produce(alice.handle(), ROOM, TOTAL, 8000));
    let a = collect_until(&mut alice, ROOM, TOTAL, Duration::from_secs(300)).await;
    assert_eq!(seqs(&a), (1..=TOTAL).collect::<Vec<_>>());
    assert_eq!((alice.gaps(), alice.duplicates_dropped()), (0, 0));
    assert_eq!(producer.await.unwrap().len() as u64, TOTAL);
    let fast_in = t0.elapsed();

    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&node, "chorus_closes_total{code=\"slow_consumer\"}").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stuck reader was never closed: {} slow-consumer kills, {} connections",
            metric(&node, "chorus_slow_consumer_closes_total").await,
            metric(&node, "chorus_connections ").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its connection is gone on the node's side: only alice's is left.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&node, "chorus_connections ").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stuck connection is still held"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ws);

    let resume = Resume {
        token: resume_token,
        rooms: BTreeMap::from([(ROOM.to_owned(), 0)]),
    };
    let mut stuck = Client::connect_resume(patient(&node, "stuck"), resume)
        .await
        .unwrap();
    assert!(stuck.welcome().resumed);
    let all = collect_until(&mut stuck, ROOM, TOTAL, Duration::from_secs(120)).await;
    assert_eq!(seqs(&all), (1..=TOTAL).collect::<Vec<_>>());
    eprintln!("stuck reader: dropped; the fast reader was done in {fast_in:?}");
}

/// A member that joins with a long replay and does not read it: the replay
/// blocks on the full socket, and the node must close the connection with 4002
/// (not leave the join hanging forever); the member then resumes from the last
/// seq it got and receives exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_during_a_replay_is_closed_and_resumes() {
    if GatewayProcess::single_node_only("it watches one process's /metrics for the close") {
        return;
    }
    const ROOM: &str = "backlog";
    const TOTAL: u64 = 1500;
    let node = GatewayProcess::start(&unlimited(&["--write-timeout-ms", "500"]));
    let alice = Client::connect(patient(&node, "alice")).await.unwrap();
    alice.join(ROOM, None).await.unwrap();
    assert_eq!(
        produce(alice.handle(), ROOM, TOTAL, 8000).await.len() as u64,
        TOTAL
    );

    let slow_cfg = ClientConfig {
        event_capacity: 1,
        ..patient(&node, "slow")
    };
    let mut slow = Client::connect(slow_cfg).await.unwrap();
    let h = slow.handle();
    let join = tokio::spawn(async move { h.join(ROOM, Some(0)).await });
    // Well within the 25 s heartbeat (whose ping write would notice the full
    // socket too): the blocked replay itself must end the connection.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&node, "chorus_closes_total{code=\"slow_consumer\"}").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "a replay into a full socket was not closed as slow within 15 s \
             (write timeout 500 ms)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut got = Vec::new();
    let close = loop {
        match slow.next_event_timeout(Duration::from_secs(30)).await {
            Some(Event::Msg(m)) => got.push(m.seq),
            Some(Event::Closed { code, reason }) => break (code, reason),
            Some(Event::Gap { expected, got, .. }) => panic!("slow: gap {expected} -> {got}"),
            Some(_) => {}
            None => panic!("slow: no close after {} replayed msgs", got.len()),
        }
    };
    let prefix = got.len() as u64;
    assert_eq!(got, (1..=prefix).collect::<Vec<_>>(), "replay out of order");
    assert!(prefix < TOTAL, "the replay was not held up");
    assert_eq!(close.0, Some(4002), "close: {close:?}");
    let err = join.await.unwrap().expect_err("join cannot succeed");
    assert_eq!(err.close_code(), Some(4002), "join: {err}");

    let resume = Resume {
        token: slow.welcome().resume_token.clone(),
        rooms: BTreeMap::from([(ROOM.to_owned(), prefix)]),
    };
    let mut slow = Client::connect_resume(patient(&node, "slow"), resume)
        .await
        .unwrap();
    assert!(slow.welcome().resumed);
    let rest = collect_until(&mut slow, ROOM, TOTAL, Duration::from_secs(120)).await;
    assert_eq!(seqs(&rest), (prefix + 1..=TOTAL).collect::<Vec<_>>());
    eprintln!("slow replay: 4002 after {prefix} of {TOTAL} replayed msgs");
}
