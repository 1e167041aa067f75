//! 1. Per-room total order under concurrency

use chorus_protocol::client::{Ack, Client, ClientHandle, Event};
use chorus_tests::{GatewayProcess, text, unlimited};
use futures_util::StreamExt;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn total_order_under_concurrent_senders() {
    total_order(50, 200, &[]).await;
}

/// The same with every fan-out coalesced (a room of 2+ local members holds
/// batches committed within 20 ms of its previous fan-out): held batches go out
/// in order, none lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn total_order_with_coalesced_fan_out() {
    total_order(
        20,
        100,
        &["--fanout-window-members", "2", "--fanout-window-ms", "20"],
    )
    .await;
}

async fn total_order(n_clients: usize, per_client: usize, extra: &[&str]) {
    let total = (n_clients * per_client) as u64;
    const ROOM: &str = "order";
    let mut flags = vec![
        "--outbound-queue",
        "65536",
        "--outbound-bytes",
        "268435456",
        "--send-timeout-ms",
        "60000",
    ];
    flags.extend_from_slice(extra);
    let node = GatewayProcess::start(&unlimited(&flags));

    let mut clients = Vec::new();
    for i in 0..n_clients {
        let c = Client::connect(patient(&node, &format!("u{i:02}")))
            .await
            .expect("connect");
        let j = c.join(ROOM, None).await.expect("join");
        assert_eq!(j.tip, 0);
        clients.push(c);
    }

    // Everyone is joined before anyone sends: every client must see 1..=total.
    let handles: Vec<ClientHandle> = clients.iter().map(|c| c.handle()).collect();
    let receivers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let msgs = collect_until(&mut c, ROOM, total, Duration::from_secs(600)).await;
                // Anything after the last seq would be a duplicate or a stray.
                let extra = drain_events(&mut c, Duration::from_millis(300)).await;
                assert!(
                    !extra
                        .iter()
                        .any(|e| matches!(e, Event::Msg(_) | Event::Gap { .. })),
                    "{}: messages after seq {total}: {extra:?}",
                    c.welcome().user
                );
                assert_eq!(c.gaps(), 0, "{}: gaps", c.welcome().user);
                (c.welcome().user.clone(), c.duplicates_dropped(), msgs)
            })
        })
        .collect();

    let start = Arc::new(tokio::sync::Barrier::new(n_clients));
    let t0 = Instant::now();
    let senders: Vec<_> = handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                futures_util::stream::iter(0..per_client)
                    .map(|k| {
                        let h = h.clone();
                        async move {
                            let cid = format!("u{i:02}-{k:03}");
                            let ack = h
                                .send_with_retry(ROOM, &cid, text(&format!("{i}/{k}")))
                                .await
                                .unwrap_or_else(|e| panic!("send {cid}: {e}"));
                            assert_eq!(ack.cid, cid);
                            (format!("u{i:02}"), ack)
                        }
                    })
                    .buffer_unordered(16)
                    .collect::<Vec<_>>()
                    .await
            })
        })
        .collect();

    let mut acks: Vec<(String, Ack)> = Vec::new();
    for s in senders {
        acks.extend(s.await.expect("sender task"));
    }
    let sent_in = t0.elapsed();
    assert_eq!(acks.len(), total as usize);
    assert!(
        acks.iter().all(|(_, a)| !a.duplicate),
        "a first send was acked as duplicate"
    );
    let ack_seqs: BTreeSet<u64> = acks.iter().map(|(_, a)| a.seq).collect();
    assert_eq!(ack_seqs.len(), total as usize, "ack seqs must be unique");
    assert_eq!(ack_seqs, (1..=total).collect::<BTreeSet<u64>>());

    // History: each (sender, cid) once, seqs 1..=total, matching the acks.
    let hist = node.history(ROOM).await;
    assert_eq!(hist.len(), total as usize);
    let by_cid = check_history(&hist);
    for (sender, a) in &acks {
        let m = &by_cid[&(sender.clone(), a.cid.clone())];
        assert_eq!(
            (m.seq, &m.id),
            (a.seq, &a.msg_id),
            "ack vs history for {}",
            a.cid
        );
    }

    // Every client saw the same total order: 1..=total, each seq the stored message.
    let expected: Vec<u64> = (1..=total).collect();
    for r in receivers {
        let (user, dups, msgs) = r.await.expect("receiver task");
        assert_eq!(
            seqs(&msgs),
            expected,
            "{user}: seqs out of order or missing"
        );
        assert_eq!(dups, 0, "{user}: the server sent duplicates");
        for m in &msgs {
            let h = &hist[(m.seq - 1) as usize];
            assert_eq!(
                (&m.id, &m.sender, &m.cid),
                (&h.id, &h.sender, &h.cid),
                "{user}: seq {} differs from history",
                m.seq
            );
        }
    }
    eprintln!(
        "total order: {total} messages from {n_clients} senders acked in {sent_in:?}, all delivered in {:?}",
        t0.elapsed()
    );
}
