//! Room claims and fencing: epochs, concurrent claims, stale writers.

use std::sync::Arc;

use super::*;
use crate::store::{Appended, HistoryStore, ReadRange, RoomClaim, RoomOutcome};

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
