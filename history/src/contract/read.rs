//! Reads: history pages, tips, ping.

use super::*;
use crate::store::{HistoryStore, ReadRange};

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

/// A healthy store answers `ping`.
pub async fn ping_succeeds(store: &dyn HistoryStore) {
    store.ping().await.expect("ping failed on a fresh store");
}
