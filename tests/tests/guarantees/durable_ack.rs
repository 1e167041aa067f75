//! 4. Durable ack through kill -9

use chorus_protocol::client::{Ack, Client, ClientError};
use chorus_tests::{GatewayProcess, text, unlimited};
use futures_util::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::support::*;

/// What a crash round's senders did.
#[derive(Default)]
struct Ledger {
    /// (sender, cid) -> ack.
    acked: HashMap<(String, String), Ack>,
    /// Sends attempted but not acked when the node died.
    attempted: HashSet<(String, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_messages_survive_kill_9() {
    const ROOM: &str = "durable";
    const SENDERS: usize = 5;
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 500;
    let mut node = GatewayProcess::start(&unlimited(&[]));
    // Acks of every round, and sends cut off by a crash (resent next round).
    let mut all_acked: HashMap<(String, String), Ack> = HashMap::new();
    let mut in_doubt: Vec<(String, String)> = Vec::new();
    let mut next_cid = 0usize;

    for round in 0..ROUNDS {
        let mut handles = Vec::new();
        let mut clients = Vec::new();
        for s in 0..SENDERS {
            let c = Client::connect(patient(&node, &format!("d{s}")))
                .await
                .expect("connect");
            c.join(ROOM, None).await.expect("join");
            handles.push(c.handle());
            clients.push(c); // kept (not drained: the big event channel absorbs the msgs)
        }

        // Sends cut off by the previous crash come back as retries with their
        // cid: stored ones must answer duplicate with the seq history holds.
        if !in_doubt.is_empty() {
            let hist = check_history(&node.history(ROOM).await);
            for (sender, cid) in in_doubt.drain(..) {
                let s: usize = sender[1..].parse().unwrap();
                let ack = handles[s]
                    .send_with_retry(ROOM, &cid, text(&cid))
                    .await
                    .unwrap_or_else(|e| panic!("resend {cid}: {e}"));
                match hist.get(&(sender.clone(), cid.clone())) {
                    Some(m) => {
                        assert!(ack.duplicate, "{cid} was stored before the crash: {ack:?}");
                        assert_eq!((ack.seq, &ack.msg_id), (m.seq, &m.id));
                    }
                    None => assert!(!ack.duplicate, "{cid} was not stored: {ack:?}"),
                }
                all_acked.insert((sender, cid), ack);
            }
        }

        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let count = Arc::new(AtomicUsize::new(0));
        let reached = Arc::new(tokio::sync::Notify::new());
        let base = next_cid;
        next_cid += 100_000;
        let tasks: Vec<_> = handles
            .iter()
            .enumerate()
            .map(|(s, h)| {
                let (h, ledger, count, reached) =
                    (h.clone(), ledger.clone(), count.clone(), reached.clone());
                tokio::spawn(async move {
                    let sender = format!("d{s}");
                    // Senders keep going until the node dies under them.
                    futures_util::stream::iter(0..)
                        .map(|k: usize| {
                            let (h, ledger, count, reached, sender) = (
                                h.clone(),
                                ledger.clone(),
                                count.clone(),
                                reached.clone(),
                                sender.clone(),
                            );
                            async move {
                                let cid = format!("{sender}-{}", base + k);
                                let key = (sender.clone(), cid.clone());
                                ledger.lock().unwrap().attempted.insert(key.clone());
                                match h.send_with_retry(ROOM, &cid, text(&cid)).await {
                                    Ok(ack) => {
                                        assert!(
                                            !ack.duplicate,
                                            "fresh cid {cid} acked as duplicate"
                                        );
                                        let mut l = ledger.lock().unwrap();
                                        l.attempted.remove(&key);
                                        l.acked.insert(key, ack);
                                        drop(l);
                                        if count.fetch_add(1, Ordering::SeqCst) + 1 >= PER_ROUND {
                                            reached.notify_one();
                                        }
                                        true
                                    }
                                    Err(ClientError::Closed { .. }) => false,
                                    Err(e) => panic!("send {cid}: {e}"),
                                }
                            }
                        })
                        .buffer_unordered(8)
                        .take_while(|ok| std::future::ready(*ok))
                        .for_each(|_| async {})
                        .await;
                })
            })
            .collect();

        tokio::time::timeout(Duration::from_secs(300), reached.notified())
            .await
            .expect("senders stalled before the crash");
        // kill -9 right after the PER_ROUND-th ack, with sends still in flight.
        (node, ()) = with_node_blocking(node, |node| node.kill9()).await;
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("sender did not notice the crash")
                .expect("sender task");
        }
        drop(clients);
        let ledger = std::mem::take(&mut *ledger.lock().unwrap());
        assert!(ledger.acked.len() >= PER_ROUND);

        node.restart();
        let hist = node.history(ROOM).await;
        let by_cid = check_history(&hist);
        for ((sender, cid), ack) in all_acked.iter().chain(&ledger.acked) {
            let m = by_cid
                .get(&(sender.clone(), cid.clone()))
                .unwrap_or_else(|| {
                    panic!("round {round}: acked {sender}/{cid} (seq {}) lost", ack.seq)
                });
            assert_eq!(
                (m.seq, &m.id),
                (ack.seq, &ack.msg_id),
                "round {round}: {cid}"
            );
        }
        // Nothing in history that nobody sent.
        for key in by_cid.keys() {
            assert!(
                all_acked.contains_key(key)
                    || ledger.acked.contains_key(key)
                    || ledger.attempted.contains(key),
                "round {round}: {key:?} stored but never sent"
            );
        }
        eprintln!(
            "durability round {round}: {} acked, {} in flight at the kill ({} of them committed), history {}",
            ledger.acked.len(),
            ledger.attempted.len(),
            ledger
                .attempted
                .iter()
                .filter(|k| by_cid.contains_key(*k))
                .count(),
            hist.len()
        );
        all_acked.extend(ledger.acked);
        in_doubt.extend(ledger.attempted);
        in_doubt.sort();
    }
}
