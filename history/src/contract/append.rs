//! Appends: consecutive seqs, idempotency by cid, many writers at once.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::*;
use crate::store::{Appended, HistoryStore, ReadRange, RoomOutcome};

/// New messages get consecutive seqs after the room's last one, per room,
/// across calls and across batches of the same call; the store echoes ids and
/// timestamps and keeps bodies and metadata verbatim.
pub async fn append_assigns_consecutive_seqs(store: &dyn HistoryStore) {
    assert!(
        store
            .append(&[])
            .await
            .expect("empty append failed")
            .is_empty(),
        "no batches, no outcomes"
    );
    let a = store.claim_room("t/a").await.expect("claim_room failed");
    let b = store.claim_room("t/b").await.expect("claim_room failed");

    let mut fancy = message("ann", "fancy", 7);
    fancy.body = r#"{"text":"h\u00e9llo \"quoted\" \n é 🎉","n":[1,2.5,null]}"#.to_owned();
    fancy.meta = Some(r#"{"reply_to":1,"tags":["x"]}"#.to_owned());
    let first_a = vec![
        message("ann", "c1", 1),
        fancy.clone(),
        message("bob", "c1", 3),
    ];
    let out = committed(
        store,
        &[
            batch("t/a", a.epoch, first_a.clone()),
            batch(
                "t/b",
                b.epoch,
                vec![message("ann", "c1", 4), message("ann", "c2", 5)],
            ),
            // The same room twice in one call: its batches apply in order.
            batch("t/a", a.epoch, vec![message("cat", "c1", 6)]),
        ],
    )
    .await;
    assert_eq!(seqs(&out[0]), [1, 2, 3], "first seqs of a room are 1, 2, 3");
    assert_eq!(seqs(&out[1]), [1, 2], "seqs are per room");
    assert_eq!(
        seqs(&out[2]),
        [4],
        "a later batch of the same room continues after the earlier one"
    );
    for (appended, sent) in out[0].iter().zip(&first_a) {
        assert_eq!(appended.id, sent.id, "a new message keeps its id");
        assert_eq!(appended.ts, sent.ts, "a new message keeps its ts");
        assert!(!appended.duplicate, "a new message is not a duplicate");
    }

    let out = committed(
        store,
        &[
            batch(
                "t/a",
                a.epoch,
                vec![message("dan", "c1", 8), message("dan", "c2", 9)],
            ),
            batch("t/b", b.epoch, Vec::new()),
        ],
    )
    .await;
    assert_eq!(seqs(&out[0]), [5, 6], "a later call continues the sequence");
    assert!(out[1].is_empty(), "an empty batch commits nothing");
    let tips = store
        .tips(&["t/a".to_owned(), "t/b".to_owned()])
        .await
        .expect("tips failed");
    assert_eq!(tips, [6, 2], "last_seq moves to the last new seq");

    let stored = store
        .read(
            "t/a",
            ReadRange::After {
                after: 0,
                limit: 100,
            },
        )
        .await
        .expect("read failed");
    assert_eq!(
        stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    let fancy_stored = &stored[1];
    assert_eq!(fancy_stored.room, "t/a");
    assert_eq!(fancy_stored.id, fancy.id);
    assert_eq!(fancy_stored.sender, fancy.sender);
    assert_eq!(fancy_stored.cid, fancy.cid);
    assert_eq!(fancy_stored.body, fancy.body, "bodies are stored verbatim");
    assert_eq!(fancy_stored.meta, fancy.meta, "meta is stored verbatim");
    assert_eq!(fancy_stored.ts, fancy.ts);
    assert_eq!(stored[0].meta, None, "absent meta stays absent");
}

/// `(room, sender, cid)` is the idempotency key: a repeat (within the batch,
/// or in a later call) gets the original's seq, id and ts and writes nothing;
/// the same cid from another sender or in another room is a new message.
pub async fn append_is_idempotent_by_cid(store: &dyn HistoryStore) {
    let epoch = store
        .claim_room("t/a")
        .await
        .expect("claim_room failed")
        .epoch;
    let other = store
        .claim_room("t/b")
        .await
        .expect("claim_room failed")
        .epoch;

    let mut retry_in_batch = message("ann", "c1", 30);
    retry_in_batch.id = "id-retry-in-batch".to_owned();
    retry_in_batch.body = r#"{"text":"retried"}"#.to_owned();
    let out = committed(
        store,
        &[batch(
            "t/a",
            epoch,
            vec![
                message("ann", "c1", 10),
                message("ann", "c2", 20),
                retry_in_batch,
            ],
        )],
    )
    .await;
    assert_eq!(
        out[0],
        [
            Appended {
                seq: 1,
                id: "id-ann-c1-10".to_owned(),
                ts: 10,
                duplicate: false
            },
            Appended {
                seq: 2,
                id: "id-ann-c2-20".to_owned(),
                ts: 20,
                duplicate: false
            },
            Appended {
                seq: 1,
                id: "id-ann-c1-10".to_owned(),
                ts: 10,
                duplicate: true
            },
        ],
        "a repeat within the batch resolves to the first occurrence"
    );

    let out = committed(
        store,
        &[
            batch(
                "t/a",
                epoch,
                vec![
                    message("ann", "c2", 40),
                    message("bob", "c1", 50),
                    message("ann", "c3", 60),
                    message("bob", "c1", 70),
                ],
            ),
            batch("t/b", other, vec![message("ann", "c1", 80)]),
        ],
    )
    .await;
    assert_eq!(
        out[0],
        [
            Appended {
                seq: 2,
                id: "id-ann-c2-20".to_owned(),
                ts: 20,
                duplicate: true
            },
            Appended {
                seq: 3,
                id: "id-bob-c1-50".to_owned(),
                ts: 50,
                duplicate: false
            },
            Appended {
                seq: 4,
                id: "id-ann-c3-60".to_owned(),
                ts: 60,
                duplicate: false
            },
            Appended {
                seq: 3,
                id: "id-bob-c1-50".to_owned(),
                ts: 50,
                duplicate: true
            },
        ],
        "a repeat from an earlier call is a duplicate; the same cid from \
         another sender is new and duplicates take no seq"
    );
    assert_eq!(
        out[1],
        [Appended {
            seq: 1,
            id: "id-ann-c1-80".to_owned(),
            ts: 80,
            duplicate: false
        }],
        "the same sender and cid in another room is new"
    );

    assert_eq!(
        tip(store, "t/a").await,
        4,
        "duplicates do not move last_seq"
    );
    let stored = store
        .read(
            "t/a",
            ReadRange::After {
                after: 0,
                limit: 100,
            },
        )
        .await
        .expect("read failed");
    let keys: Vec<_> = stored
        .iter()
        .map(|m| (m.seq, m.sender.as_str(), m.cid.as_str(), m.ts))
        .collect();
    assert_eq!(
        keys,
        [
            (1, "ann", "c1", 10),
            (2, "ann", "c2", 20),
            (3, "bob", "c1", 50),
            (4, "ann", "c3", 60)
        ],
        "exactly one row per key, holding the original"
    );
    assert_eq!(
        stored[0].body,
        message("ann", "c1", 10).body,
        "a duplicate never overwrites the original body"
    );
}

/// Many tasks appending to one room with the same epoch at once: the store
/// serialises them into seqs 1..=N with no gap and no repeat, and concurrent
/// retries of one key resolve to a single message.
pub async fn concurrent_appends_from_many_tasks(store: Arc<dyn HistoryStore>) {
    const TASKS: u64 = 24;
    const CALLS: u64 = 5;
    const PER_CALL: u64 = 2;
    const TOTAL: u64 = TASKS * CALLS * PER_CALL;
    let epoch = store
        .claim_room("t/busy")
        .await
        .expect("claim_room failed")
        .epoch;

    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let sender = format!("u{task}");
                let mut got = Vec::new();
                for call in 0..CALLS {
                    let messages: Vec<_> = (0..PER_CALL)
                        .map(|i| message(&sender, &format!("c{call}-{i}"), 1))
                        .collect();
                    let outcomes = store
                        .append(&[batch("t/busy", epoch, messages.clone())])
                        .await
                        .expect("append failed");
                    let RoomOutcome::Committed(appended) = &outcomes[0] else {
                        panic!("an append with the current epoch was fenced: {outcomes:?}");
                    };
                    for (sent, appended) in messages.into_iter().zip(appended) {
                        assert!(!appended.duplicate, "every key is new");
                        got.push((sent.cid, appended.seq));
                    }
                }
                (sender, got)
            })
        })
        .collect();

    let mut assigned = HashMap::new();
    for task in tasks {
        let (sender, got) = task.await.expect("append task panicked");
        let own: Vec<u64> = got.iter().map(|(_, seq)| *seq).collect();
        assert!(
            own.windows(2).all(|w| w[0] < w[1]),
            "one task's successive appends get increasing seqs: {own:?}"
        );
        for (cid, seq) in got {
            assert!(
                assigned.insert(seq, (sender.clone(), cid)).is_none(),
                "seq {seq} was assigned twice"
            );
        }
    }
    assert_eq!(
        assigned.keys().copied().collect::<BTreeSet<_>>(),
        (1..=TOTAL).collect::<BTreeSet<_>>(),
        "concurrent appends fill 1..={TOTAL} without a gap"
    );
    assert_eq!(tip(&*store, "t/busy").await, TOTAL);
    let stored = store
        .read(
            "t/busy",
            ReadRange::After {
                after: 0,
                limit: u32::try_from(TOTAL).expect("small") + 10,
            },
        )
        .await
        .expect("read failed");
    assert_eq!(stored.len(), usize::try_from(TOTAL).expect("small"));
    for m in &stored {
        assert_eq!(
            assigned.get(&m.seq),
            Some(&(m.sender.clone(), m.cid.clone())),
            "the stored message at seq {} is the one that was acked with it",
            m.seq
        );
    }

    // The same key from many tasks at once (a client retrying on several
    // connections): exactly one wins, the others are its duplicates.
    const RACERS: usize = 8;
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let outcomes = store
                    .append(&[batch("t/busy", epoch, vec![message("racer", "same", 5)])])
                    .await
                    .expect("append failed");
                match outcomes.into_iter().next() {
                    Some(RoomOutcome::Committed(mut appended)) if appended.len() == 1 => {
                        appended.remove(0)
                    }
                    other => panic!("unexpected outcome {other:?}"),
                }
            })
        })
        .collect();
    let mut results = Vec::new();
    for racer in racers {
        results.push(racer.await.expect("racer task panicked"));
    }
    assert_eq!(
        results.iter().filter(|a| !a.duplicate).count(),
        1,
        "exactly one racer writes the message"
    );
    assert!(
        results.iter().all(|a| a.seq == TOTAL + 1),
        "every racer gets the one seq: {results:?}"
    );
    assert_eq!(tip(&*store, "t/busy").await, TOTAL + 1);
}
