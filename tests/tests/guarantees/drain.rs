//! 5. Graceful drain on SIGTERM

use chorus_protocol::client::{Ack, Client, ClientError, Event};
use chorus_tests::{GatewayProcess, text, unlimited};
use futures_util::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_without_losing_acked_messages() {
    const ROOM: &str = "drain";
    const CLIENTS: usize = 5;
    const DRAIN_MS: u64 = 10_000;
    let node = GatewayProcess::start(&unlimited(&["--drain-timeout-ms", "10000"]));
    let acked: Arc<Mutex<Vec<(String, Ack)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    let mut watchers = Vec::new();
    for i in 0..CLIENTS {
        let user = format!("w{i}");
        let mut c = Client::connect(patient(&node, &user))
            .await
            .expect("connect");
        c.join(ROOM, None).await.expect("join");
        let h = c.handle();
        let (acked, count) = (acked.clone(), count.clone());
        senders.push(tokio::spawn(async move {
            // Several sends in flight at any time, until the close.
            futures_util::stream::iter(0u64..)
                .map(|k| {
                    let (h, acked, count, user) =
                        (h.clone(), acked.clone(), count.clone(), user.clone());
                    async move {
                        let cid = format!("{user}-{k}");
                        match h.send_with_retry(ROOM, &cid, text(&cid)).await {
                            Ok(ack) => {
                                acked.lock().unwrap().push((user, ack));
                                count.fetch_add(1, Ordering::SeqCst);
                                true
                            }
                            Err(ClientError::Closed { .. }) => false,
                            // The writer refusing sends while draining is
                            // fine; the close follows.
                            Err(e) if e.is_retryable() => true,
                            Err(e) => panic!("send {cid}: {e}"),
                        }
                    }
                })
                .buffer_unordered(8)
                .take_while(|open| std::future::ready(*open))
                .for_each(|_| async {})
                .await;
        }));
        watchers.push(tokio::spawn(async move {
            // Everything until the close: the reconnect hint must come before it.
            let mut reconnect = None;
            let mut seen = Vec::new();
            loop {
                match c.next_event_timeout(Duration::from_secs(120)).await {
                    Some(Event::Reconnect { retry_after_ms, .. }) => {
                        reconnect = Some(retry_after_ms)
                    }
                    Some(Event::Msg(m)) => seen.push(m.seq),
                    Some(Event::Closed { code, reason }) => {
                        return (reconnect, code, reason, seen, c);
                    }
                    Some(_) => {}
                    None => return (reconnect, None, "no close event".to_owned(), seen, c),
                }
            }
        }));
    }

    // Let traffic flow, then SIGTERM in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(count.load(Ordering::SeqCst) >= 200, "traffic did not start");
    let t0 = Instant::now();
    let (mut node, status) = with_node_blocking(node, |n| n.sigterm()).await;
    let took = t0.elapsed();
    let status = status.expect("exit status");
    assert!(
        status.success(),
        "chorus exited with {status:?} after SIGTERM"
    );
    assert!(
        took < Duration::from_millis(DRAIN_MS),
        "drain took {took:?}, deadline {DRAIN_MS} ms"
    );

    let mut drained = Vec::new();
    for w in watchers {
        let (reconnect, code, reason, seen, c) = w.await.expect("watcher");
        assert!(
            reconnect.is_some(),
            "no reconnect frame before the close ({code:?} {reason})"
        );
        assert_eq!(code, Some(4000), "close code ({reason})");
        // Joined while others were already sending: contiguous from its join.
        let first = seen.first().copied().unwrap_or(1);
        let expected: Vec<u64> = (first..first + seen.len() as u64).collect();
        assert_eq!(seen, expected, "delivery before the close");
        assert_eq!((c.gaps(), c.duplicates_dropped()), (0, 0));
        drained.push(c);
    }
    for s in senders {
        tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .expect("sender did not stop")
            .expect("sender task");
    }

    node.restart();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let hist = node.history(ROOM).await;
    let by_cid = check_history(&hist);
    for (sender, ack) in &acked {
        let m = by_cid
            .get(&(sender.clone(), ack.cid.clone()))
            .unwrap_or_else(|| {
                panic!(
                    "acked {}/{} (seq {}) lost in the drain",
                    sender, ack.cid, ack.seq
                )
            });
        assert_eq!((m.seq, &m.id), (ack.seq, &ack.msg_id));
    }

    // The restarted node (same resume secret) resumes every session: each gets
    // exactly what it had not seen before the drain, up to the tip.
    let tip = hist.len() as u64;
    for c in drained {
        let state = c.resume_state();
        let last = state.rooms.get(ROOM).copied().expect("cursor");
        let user = c.welcome().user.clone();
        let mut c = Client::connect_resume(patient(&node, &user), state)
            .await
            .expect("resume after restart");
        assert!(c.welcome().resumed, "{user}: resume after restart refused");
        let mut replayed = Vec::new();
        let joined = loop {
            match c.next_event_timeout(Duration::from_secs(30)).await {
                Some(Event::Msg(m)) => replayed.push(m.seq),
                Some(Event::Joined(j)) => break j,
                Some(Event::PresenceDiff { .. }) => {}
                other => panic!("{user}: unexpected during replay: {other:?}"),
            }
        };
        assert_eq!(joined.tip, tip);
        assert_eq!(replayed, (last + 1..=tip).collect::<Vec<_>>(), "{user}");
    }
    eprintln!(
        "drain: {} acked, {} stored, exit {status:?} after {took:?}",
        acked.len(),
        hist.len()
    );
}
