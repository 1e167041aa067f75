//! Retention: trimming by count and age.

use super::*;
use crate::store::{HistoryStore, ReadRange, Retention};

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
