//! The behaviour suite every [`HistoryStore`] backend must pass.
//!
//! Each case is a public async function that takes a FRESH, empty store and
//! panics (through `assert!`) when the backend breaks the contract written on
//! the trait in [`crate::store`]. Backends run them one `#[tokio::test]` per
//! case so failures are named, or all at once through [`run_all`]. Cases that
//! spawn tasks take an `Arc<dyn HistoryStore>`; they need a Tokio runtime, and
//! a multi-threaded one exercises them best.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed unwrap is a failed test

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

use crate::store::{
    Appended, HistoryStore, Membership, NewMessage, Position, ReadRange, Retention, RoomBatch,
    RoomClaim, RoomOutcome,
};

/// A message whose id and body are derived from its key, so reads can be
/// checked against what was appended.
fn message(sender: &str, cid: &str, ts: i64) -> NewMessage {
    NewMessage {
        id: format!("id-{sender}-{cid}-{ts}"),
        sender: sender.to_owned(),
        cid: cid.to_owned(),
        body: format!(r#"{{"text":"{sender} says {cid}"}}"#),
        meta: None,
        ts,
    }
}

fn batch(room: &str, epoch: u64, messages: Vec<NewMessage>) -> RoomBatch {
    RoomBatch {
        room: room.to_owned(),
        epoch,
        messages,
    }
}

/// Append and require every batch to commit; returns each batch's entries.
async fn committed(store: &dyn HistoryStore, batches: &[RoomBatch]) -> Vec<Vec<Appended>> {
    let outcomes = store.append(batches).await.expect("append failed");
    assert_eq!(
        outcomes.len(),
        batches.len(),
        "append must return one outcome per batch"
    );
    outcomes
        .into_iter()
        .zip(batches)
        .map(|(outcome, batch)| match outcome {
            RoomOutcome::Committed(appended) => {
                assert_eq!(
                    appended.len(),
                    batch.messages.len(),
                    "a committed batch has one entry per message (room {})",
                    batch.room
                );
                appended
            }
            RoomOutcome::Fenced { current_epoch } => panic!(
                "batch for {} at epoch {} was fenced (current epoch {current_epoch})",
                batch.room, batch.epoch
            ),
        })
        .collect()
}

fn seqs(appended: &[Appended]) -> Vec<u64> {
    appended.iter().map(|a| a.seq).collect()
}

/// Claim `room` and append `count` messages from `author` with cids `c1..` and
/// timestamps `1000, 2000, ...`; returns the epoch.
async fn fill(store: &dyn HistoryStore, room: &str, author: &str, count: u64) -> u64 {
    let claim = store.claim_room(room).await.expect("claim_room failed");
    let start = claim.last_seq + 1;
    let messages = (start..start + count)
        .map(|i| message(author, &format!("c{i}"), ts_of(i)))
        .collect();
    committed(store, &[batch(room, claim.epoch, messages)]).await;
    claim.epoch
}

fn ts_of(i: u64) -> i64 {
    i64::try_from(i).expect("small test index") * 1000
}

async fn read_seqs(store: &dyn HistoryStore, room: &str, range: ReadRange) -> Vec<u64> {
    store
        .read(room, range)
        .await
        .expect("read failed")
        .iter()
        .map(|m| m.seq)
        .collect()
}

async fn tip(store: &dyn HistoryStore, room: &str) -> u64 {
    store.tips(&[room.to_owned()]).await.expect("tips failed")[0]
}

async fn member(store: &dyn HistoryStore, room: &str, user: &str) -> Membership {
    store
        .membership(room, user)
        .await
        .expect("membership failed")
        .unwrap_or_else(|| panic!("{user} should be a member of {room}"))
}

/// Claims bump the epoch by one each time, start a new room at epoch 1 with
/// last_seq 0, report the committed tip, and are independent per room.
pub async fn claim_bumps_epoch(store: &dyn HistoryStore) {
    let first = store.claim_room("t/a").await.expect("claim_room failed");
    assert_eq!(
        first,
        RoomClaim {
            epoch: 1,
            last_seq: 0
        },
        "a new room starts at epoch 1 with no messages"
    );
    let second = store.claim_room("t/a").await.expect("claim_room failed");
    assert_eq!(
        second,
        RoomClaim {
            epoch: 2,
            last_seq: 0
        },
        "a second claim bumps the epoch"
    );

    committed(
        store,
        &[batch(
            "t/a",
            2,
            vec![message("u1", "c1", 1), message("u1", "c2", 2)],
        )],
    )
    .await;
    let third = store.claim_room("t/a").await.expect("claim_room failed");
    assert_eq!(
        third,
        RoomClaim {
            epoch: 3,
            last_seq: 2
        },
        "a claim reports the last committed seq"
    );

    let other = store.claim_room("t/b").await.expect("claim_room failed");
    assert_eq!(
        other,
        RoomClaim {
            epoch: 1,
            last_seq: 0
        },
        "epochs are per room"
    );
}

/// Concurrent claims of one room never return the same epoch.
pub async fn concurrent_claims_are_distinct(store: Arc<dyn HistoryStore>) {
    const CLAIMS: u64 = 16;
    let tasks: Vec<_> = (0..CLAIMS)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.claim_room("t/contested").await })
        })
        .collect();
    let mut epochs = Vec::new();
    for task in tasks {
        let claim = task
            .await
            .expect("claim task panicked")
            .expect("claim_room failed");
        assert_eq!(claim.last_seq, 0, "nothing was appended");
        epochs.push(claim.epoch);
    }
    epochs.sort_unstable();
    assert_eq!(
        epochs,
        (1..=CLAIMS).collect::<Vec<_>>(),
        "{CLAIMS} claims must return {CLAIMS} distinct epochs 1..={CLAIMS}"
    );
}

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

/// A batch whose epoch is not the room's current one (older, newer, or for a
/// room nobody claimed) is fenced and writes nothing, while the other rooms
/// of the same call commit.
pub async fn stale_epoch_is_fenced_and_writes_nothing(store: &dyn HistoryStore) {
    let old = store
        .claim_room("t/a")
        .await
        .expect("claim_room failed")
        .epoch;
    let current = store
        .claim_room("t/a")
        .await
        .expect("claim_room failed")
        .epoch;
    assert!(current > old);
    let b = store
        .claim_room("t/b")
        .await
        .expect("claim_room failed")
        .epoch;

    let outcomes = store
        .append(&[
            batch("t/a", old, vec![message("ann", "c1", 1)]),
            batch("t/b", b, vec![message("ann", "c1", 2)]),
            batch("t/a", current + 1, vec![message("ann", "c2", 3)]),
            batch("t/ghost", 1, vec![message("ann", "c3", 4)]),
        ])
        .await
        .expect("append failed");
    assert_eq!(
        outcomes,
        [
            RoomOutcome::Fenced {
                current_epoch: current
            },
            RoomOutcome::Committed(vec![Appended {
                seq: 1,
                id: "id-ann-c1-2".to_owned(),
                ts: 2,
                duplicate: false
            }]),
            RoomOutcome::Fenced {
                current_epoch: current
            },
            RoomOutcome::Fenced { current_epoch: 0 },
        ],
        "stale, future and unclaimed epochs are fenced; other rooms commit"
    );
    let tips = store
        .tips(&["t/a".to_owned(), "t/b".to_owned(), "t/ghost".to_owned()])
        .await
        .expect("tips failed");
    assert_eq!(tips, [0, 1, 0], "a fenced batch does not move last_seq");
    assert!(
        store
            .read(
                "t/a",
                ReadRange::After {
                    after: 0,
                    limit: 10
                }
            )
            .await
            .expect("read failed")
            .is_empty(),
        "a fenced batch writes no message"
    );
    assert!(
        store
            .read(
                "t/ghost",
                ReadRange::After {
                    after: 0,
                    limit: 10
                }
            )
            .await
            .expect("read failed")
            .is_empty(),
        "a fenced batch for an unclaimed room writes no message"
    );

    // Nothing of the fenced batch was recorded: the same key from the current
    // writer is new, not a duplicate.
    let out = committed(
        store,
        &[batch("t/a", current, vec![message("ann", "c1", 5)])],
    )
    .await;
    assert_eq!(
        out[0],
        [Appended {
            seq: 1,
            id: "id-ann-c1-5".to_owned(),
            ts: 5,
            duplicate: false
        }],
        "a fenced message leaves no idempotency record"
    );
}

/// `After` pages forward from a seq, `Before` pages backward and still
/// returns ascending; limits and bounds at the edges behave.
pub async fn read_after_and_before(store: &dyn HistoryStore) {
    fill(store, "t/a", "ann", 10).await;
    fill(store, "t/b", "bob", 3).await;

    let after = |after, limit| ReadRange::After { after, limit };
    let before = |before, limit| ReadRange::Before { before, limit };
    assert_eq!(read_seqs(store, "t/a", after(0, 3)).await, [1, 2, 3]);
    assert_eq!(read_seqs(store, "t/a", after(3, 3)).await, [4, 5, 6]);
    assert_eq!(read_seqs(store, "t/a", after(8, 10)).await, [9, 10]);
    assert!(read_seqs(store, "t/a", after(10, 10)).await.is_empty());
    assert!(read_seqs(store, "t/a", after(0, 0)).await.is_empty());
    assert_eq!(
        read_seqs(store, "t/a", before(11, 3)).await,
        [8, 9, 10],
        "Before returns the highest seqs, ascending"
    );
    assert_eq!(read_seqs(store, "t/a", before(5, 10)).await, [1, 2, 3, 4]);
    assert_eq!(read_seqs(store, "t/a", before(u64::MAX, 2)).await, [9, 10]);
    assert!(read_seqs(store, "t/a", before(1, 10)).await.is_empty());
    assert!(read_seqs(store, "t/a", before(5, 0)).await.is_empty());
    assert!(
        read_seqs(store, "t/nowhere", after(0, 10)).await.is_empty(),
        "an unknown room reads empty"
    );

    let page = store.read("t/b", after(1, 1)).await.expect("read failed");
    let sent = message("bob", "c2", 2000);
    assert_eq!(page.len(), 1);
    let got = &page[0];
    assert_eq!(
        (
            got.room.as_str(),
            got.seq,
            got.id.as_str(),
            got.sender.as_str(),
            got.cid.as_str(),
            got.body.as_str(),
            got.ts
        ),
        (
            "t/b",
            2,
            sent.id.as_str(),
            "bob",
            "c2",
            sent.body.as_str(),
            2000
        ),
        "reads return every field of the stored message, only of that room"
    );
}

/// `tips` answers in the order asked, repeats included, with 0 for rooms
/// that are unknown or have no message yet.
pub async fn tips_in_order_with_unknown_zero(store: &dyn HistoryStore) {
    fill(store, "t/a", "ann", 3).await;
    fill(store, "t/b", "bob", 1).await;
    store.claim_room("t/c").await.expect("claim_room failed");

    let asked: Vec<String> = ["t/b", "t/unknown", "t/a", "t/c", "t/a"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        store.tips(&asked).await.expect("tips failed"),
        [1, 0, 3, 0, 3]
    );
    assert!(
        store.tips(&[]).await.expect("tips failed").is_empty(),
        "no rooms, no tips"
    );
}

/// Join (idempotent, starting at the tip), look up, list ordered by room,
/// and leave.
pub async fn membership_lifecycle(store: &dyn HistoryStore) {
    let epoch = fill(store, "t/zeta", "ann", 3).await;

    let joined = store.join("t/zeta", "u1", 1000).await.expect("join failed");
    assert_eq!(
        joined,
        Membership {
            room: "t/zeta".to_owned(),
            tip: 3,
            last_read: 3,
            last_delivered: 3,
            joined_at: 1000
        },
        "a new member starts at the tip"
    );
    assert_eq!(joined.unread(), 0, "history before joining is not unread");
    let again = store.join("t/zeta", "u1", 2000).await.expect("join failed");
    assert_eq!(again, joined, "joining again changes nothing");
    assert_eq!(member(store, "t/zeta", "u1").await, joined);

    // A room without any message (or any claim) can be joined at tip 0.
    let empty = store
        .join("t/alpha", "u1", 3000)
        .await
        .expect("join failed");
    assert_eq!(
        (empty.tip, empty.last_read, empty.last_delivered),
        (0, 0, 0)
    );
    store.join("t/zeta", "u2", 4000).await.expect("join failed");

    committed(
        store,
        &[batch("t/zeta", epoch, vec![message("bob", "x", 9)])],
    )
    .await;
    let listed = store.memberships("u1").await.expect("memberships failed");
    assert_eq!(
        listed.iter().map(|m| m.room.as_str()).collect::<Vec<_>>(),
        ["t/alpha", "t/zeta"],
        "memberships are ordered by room"
    );
    assert_eq!(listed[1].tip, 4, "memberships carry the current tip");
    assert_eq!(listed[1].unread(), 1);
    assert_eq!(
        store
            .join("t/zeta", "u1", 5000)
            .await
            .expect("join failed")
            .tip,
        4,
        "an existing membership is returned with the current tip"
    );

    assert!(
        store
            .membership("t/zeta", "nobody")
            .await
            .expect("membership failed")
            .is_none()
    );
    assert!(
        store
            .memberships("nobody")
            .await
            .expect("memberships failed")
            .is_empty()
    );

    assert!(
        store.leave("t/zeta", "u1").await.expect("leave failed"),
        "leaving a membership reports it"
    );
    assert!(
        !store.leave("t/zeta", "u1").await.expect("leave failed"),
        "leaving twice reports nothing the second time"
    );
    assert!(
        store
            .membership("t/zeta", "u1")
            .await
            .expect("membership failed")
            .is_none()
    );
    let listed = store.memberships("u1").await.expect("memberships failed");
    assert_eq!(
        listed.iter().map(|m| m.room.as_str()).collect::<Vec<_>>(),
        ["t/alpha"]
    );
    assert_eq!(
        member(store, "t/zeta", "u2").await.joined_at,
        4000,
        "other members are untouched"
    );

    let rejoined = store.join("t/zeta", "u1", 6000).await.expect("join failed");
    assert_eq!(
        (rejoined.last_read, rejoined.joined_at),
        (4, 6000),
        "joining after leaving starts afresh at the tip"
    );
}

/// Positions move forward only, are clamped to the tip, report only real
/// moves, and a read position drags the delivered one along.
pub async fn marks_are_monotonic_and_clamped(store: &dyn HistoryStore) {
    use Position::{Delivered, Read};

    let claim = store.claim_room("t/a").await.expect("claim_room failed");
    store.join("t/a", "u1", 1).await.expect("join failed");
    store.join("t/a", "u2", 1).await.expect("join failed");
    let messages = (1..=5)
        .map(|i| message("ann", &format!("c{i}"), ts_of(i)))
        .collect();
    committed(store, &[batch("t/a", claim.epoch, messages)]).await;

    let mark = |user: &'static str, position, seq| store.mark("t/a", user, position, seq);
    assert_eq!(
        mark("u1", Delivered, 3).await.expect("mark failed"),
        Some(3)
    );
    assert_eq!(
        mark("u1", Delivered, 2).await.expect("mark failed"),
        None,
        "a lower position never moves back"
    );
    assert_eq!(
        mark("u1", Delivered, 3).await.expect("mark failed"),
        None,
        "an equal position is not a move"
    );
    assert_eq!(
        mark("u1", Delivered, 100).await.expect("mark failed"),
        Some(5),
        "positions are clamped to the tip"
    );
    assert_eq!(
        mark("u1", Delivered, 6).await.expect("mark failed"),
        None,
        "clamped to an unchanged value is not a move"
    );
    let m = member(store, "t/a", "u1").await;
    assert_eq!(
        (m.last_delivered, m.last_read),
        (5, 0),
        "delivered does not move read"
    );

    assert_eq!(mark("u1", Read, 2).await.expect("mark failed"), Some(2));
    let m = member(store, "t/a", "u1").await;
    assert_eq!(
        (m.last_delivered, m.last_read),
        (5, 2),
        "read never lowers delivered"
    );
    assert_eq!(mark("u1", Read, 1).await.expect("mark failed"), None);
    assert_eq!(mark("u1", Read, 9).await.expect("mark failed"), Some(5));

    assert_eq!(mark("u2", Read, 3).await.expect("mark failed"), Some(3));
    let m = member(store, "t/a", "u2").await;
    assert_eq!(
        (m.last_delivered, m.last_read),
        (3, 3),
        "moving read moves delivered to at least the same seq"
    );
    assert_eq!(
        mark("u2", Delivered, 2).await.expect("mark failed"),
        None,
        "delivered was already raised by the read"
    );
    assert_eq!(
        mark("u2", Delivered, 4).await.expect("mark failed"),
        Some(4)
    );

    assert_eq!(
        mark("stranger", Read, 3).await.expect("mark failed"),
        None,
        "a non-member's mark does nothing"
    );
    assert!(
        store
            .membership("t/a", "stranger")
            .await
            .expect("membership failed")
            .is_none(),
        "marking does not create a membership"
    );
    store.join("t/empty", "u1", 1).await.expect("join failed");
    assert_eq!(
        store
            .mark("t/empty", "u1", Read, 3)
            .await
            .expect("mark failed"),
        None,
        "in a room without messages every position clamps to 0"
    );
}

/// Unread counts follow the tip and the read position; history from before
/// joining is never unread.
pub async fn unread_counts(store: &dyn HistoryStore) {
    let epoch = fill(store, "t/a", "ann", 2).await;
    store.join("t/a", "early", 1).await.expect("join failed");
    let messages = (3..=7)
        .map(|i| message("ann", &format!("c{i}"), ts_of(i)))
        .collect();
    committed(store, &[batch("t/a", epoch, messages)]).await;

    assert_eq!(member(store, "t/a", "early").await.unread(), 5);
    store
        .mark("t/a", "early", Position::Read, 4)
        .await
        .expect("mark failed");
    assert_eq!(member(store, "t/a", "early").await.unread(), 3);
    store
        .mark("t/a", "early", Position::Delivered, 7)
        .await
        .expect("mark failed");
    assert_eq!(
        member(store, "t/a", "early").await.unread(),
        3,
        "delivery does not count as reading"
    );

    let late = store.join("t/a", "late", 2).await.expect("join failed");
    assert_eq!(late.unread(), 0, "a new member has nothing unread");
    let listed = store
        .memberships("early")
        .await
        .expect("memberships failed");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].unread(), 3, "memberships report the same unread");
}

/// Retention deletes by count per room and by age, reports how many, and
/// never lowers `last_seq`: seqs are not reused after a trim.
pub async fn trim_by_count_and_age_keeps_last_seq(store: &dyn HistoryStore) {
    // t/a: seqs 1..=10 at ts 1000..=10000; t/b: 3 messages at ts 1000..=3000.
    let epoch = fill(store, "t/a", "ann", 10).await;
    fill(store, "t/b", "bob", 3).await;

    assert_eq!(
        store
            .trim(Retention::default(), 1_000_000)
            .await
            .expect("trim failed"),
        0,
        "an empty policy trims nothing"
    );

    let by_count = Retention {
        max_age_ms: None,
        max_count: Some(4),
    };
    assert_eq!(
        store.trim(by_count, 0).await.expect("trim failed"),
        6,
        "keeping 4 of t/a's 10 deletes 6; t/b has fewer than 4"
    );
    let all = ReadRange::After {
        after: 0,
        limit: 100,
    };
    assert_eq!(read_seqs(store, "t/a", all).await, [7, 8, 9, 10]);
    assert_eq!(read_seqs(store, "t/b", all).await, [1, 2, 3]);
    assert_eq!(
        store.trim(by_count, 0).await.expect("trim failed"),
        0,
        "trimming is idempotent"
    );

    let by_age = Retention {
        max_age_ms: Some(1_500),
        max_count: None,
    };
    // Cutoff 10000 - 1500 = 8500: t/a's ts 7000 and 8000 go, and all of t/b.
    assert_eq!(store.trim(by_age, 10_000).await.expect("trim failed"), 5);
    assert_eq!(read_seqs(store, "t/a", all).await, [9, 10]);
    assert!(read_seqs(store, "t/b", all).await.is_empty());
    assert_eq!(
        store
            .tips(&["t/a".to_owned(), "t/b".to_owned()])
            .await
            .expect("tips failed"),
        [10, 3],
        "trimming never lowers last_seq"
    );

    let out = committed(
        store,
        &[batch("t/a", epoch, vec![message("ann", "new", 20_000)])],
    )
    .await;
    assert_eq!(seqs(&out[0]), [11], "seqs are not reused after a trim");
    let claim = store.claim_room("t/b").await.expect("claim_room failed");
    assert_eq!(
        claim.last_seq, 3,
        "a claim after trimming everything still reports the old tip"
    );

    let both = Retention {
        max_age_ms: Some(5_000),
        max_count: Some(1),
    };
    // Age (cutoff 15000) removes seqs 9 and 10, count then keeps only 11.
    assert_eq!(store.trim(both, 20_000).await.expect("trim failed"), 2);
    assert_eq!(read_seqs(store, "t/a", all).await, [11]);
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

/// A healthy store answers `ping`.
pub async fn ping_succeeds(store: &dyn HistoryStore) {
    store.ping().await.expect("ping failed on a fresh store");
}

/// Run every case, each on a fresh store from `make`, one after the other.
/// Panics naming the first case that fails. Needs a Tokio runtime: each case
/// runs as a spawned task so its panic can be caught and named.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Box<dyn HistoryStore>>,
{
    macro_rules! by_ref {
        ($($case:ident),* $(,)?) => {$(
            let store: Arc<dyn HistoryStore> = Arc::from(make().await);
            run_case(stringify!($case), async move { $case(&*store).await }).await;
        )*};
    }
    macro_rules! shared {
        ($($case:ident),* $(,)?) => {$(
            let store: Arc<dyn HistoryStore> = Arc::from(make().await);
            run_case(stringify!($case), $case(store)).await;
        )*};
    }
    by_ref!(
        claim_bumps_epoch,
        append_assigns_consecutive_seqs,
        append_is_idempotent_by_cid,
        stale_epoch_is_fenced_and_writes_nothing,
        read_after_and_before,
        tips_in_order_with_unknown_zero,
        membership_lifecycle,
        marks_are_monotonic_and_clamped,
        unread_counts,
        trim_by_count_and_age_keeps_last_seq,
        ping_succeeds,
    );
    shared!(
        concurrent_claims_are_distinct,
        concurrent_appends_from_many_tasks
    );
}

async fn run_case<Fut>(name: &str, case: Fut)
where
    Fut: Future<Output = ()> + Send + 'static,
{
    if let Err(err) = tokio::spawn(case).await {
        let reason = if err.is_panic() {
            panic_message(err.into_panic().as_ref())
        } else {
            err.to_string()
        };
        panic!("history contract case `{name}` failed: {reason}");
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panicked with a non-text payload".to_owned()
    }
}
