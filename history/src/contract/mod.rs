//! The behaviour suite every [`HistoryStore`] backend must pass (feature `contract`).
//!
//! Each case is a public async function that takes a FRESH, empty store and
//! panics (through `assert!`) when the backend breaks the contract written on
//! the trait in [`crate::store`]. A backend's test file runs every case as its
//! own named `#[tokio::test]` with one line, [`history_contract_tests!`]
//! (`crate::history_contract_tests`), so a case added here runs against every
//! backend at once. Cases that spawn tasks take an `Arc<dyn HistoryStore>` and
//! run on a multi-threaded runtime, which makes their calls really overlap.
//!
//! Layout: [`claims`] (epochs and fencing), [`append`] (seqs, idempotency,
//! concurrent writers), [`read`] (pages, tips, ping), [`membership`] (joins,
//! marks, unread counts), [`trim`] (retention); the shared builders below.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed unwrap is a failed test

pub mod append;
pub mod claims;
pub mod membership;
pub mod read;
pub mod trim;

pub use append::{
    append_assigns_consecutive_seqs, append_is_idempotent_by_cid,
    concurrent_appends_from_many_tasks,
};
pub use claims::{
    claim_bumps_epoch, concurrent_claims_are_distinct, stale_epoch_is_fenced_and_writes_nothing,
};
pub use membership::{marks_are_monotonic_and_clamped, membership_lifecycle, unread_counts};
pub use read::{ping_succeeds, read_after_and_before, tips_in_order_with_unknown_zero};
pub use trim::trim_by_count_and_age_keeps_last_seq;

use crate::store::{
    Appended, HistoryStore, Membership, NewMessage, ReadRange, RoomBatch, RoomOutcome,
};

/// One named `#[tokio::test]` per contract case, against the backend that
/// `$fresh().await` opens: an async fn of the calling test file that returns
/// `(guard, store)`, where `guard` lives as long as the test (a temporary
/// directory, or `()`) and `store` is a fresh, empty backend.
///
/// ```ignore
/// async fn fresh() -> ((), PostgresStore) { ((), PostgresStore::connect(&url).await.unwrap()) }
/// chorus_history::history_contract_tests!(fresh);
/// ```
#[macro_export]
macro_rules! history_contract_tests {
    ($fresh:ident) => {
        $crate::history_contract_tests!(@by_ref $fresh:
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
        $crate::history_contract_tests!(@shared $fresh:
            concurrent_claims_are_distinct,
            concurrent_appends_from_many_tasks,
        );
    };
    (@by_ref $fresh:ident: $($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let (_guard, store) = $fresh().await;
            $crate::contract::$case(&store).await;
        }
    )*};
    (@shared $fresh:ident: $($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let (_guard, store) = $fresh().await;
            $crate::contract::$case(::std::sync::Arc::new(store)).await;
        }
    )*};
}

/// A message whose id and body are derived from its key, so reads can be
/// checked against what was appended.
pub(crate) fn message(sender: &str, cid: &str, ts: i64) -> NewMessage {
    NewMessage {
        id: format!("id-{sender}-{cid}-{ts}"),
        sender: sender.to_owned(),
        cid: cid.to_owned(),
        body: format!(r#"{{"text":"{sender} says {cid}"}}"#),
        meta: None,
        ts,
    }
}

pub(crate) fn batch(room: &str, epoch: u64, messages: Vec<NewMessage>) -> RoomBatch {
    RoomBatch {
        room: room.to_owned(),
        epoch,
        messages,
    }
}

/// Append and require every batch to commit; returns each batch's entries.
pub(crate) async fn committed(
    store: &dyn HistoryStore,
    batches: &[RoomBatch],
) -> Vec<Vec<Appended>> {
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

pub(crate) fn seqs(appended: &[Appended]) -> Vec<u64> {
    appended.iter().map(|a| a.seq).collect()
}

/// Claim `room` and append `count` messages from `author` with cids `c1..` and
/// timestamps `1000, 2000, ...`; returns the epoch.
pub(crate) async fn fill(store: &dyn HistoryStore, room: &str, author: &str, count: u64) -> u64 {
    let claim = store.claim_room(room).await.expect("claim_room failed");
    let start = claim.last_seq + 1;
    let messages = (start..start + count)
        .map(|i| message(author, &format!("c{i}"), ts_of(i)))
        .collect();
    committed(store, &[batch(room, claim.epoch, messages)]).await;
    claim.epoch
}

pub(crate) fn ts_of(i: u64) -> i64 {
    i64::try_from(i).expect("small test index") * 1000
}

pub(crate) async fn read_seqs(store: &dyn HistoryStore, room: &str, range: ReadRange) -> Vec<u64> {
    store
        .read(room, range)
        .await
        .expect("read failed")
        .iter()
        .map(|m| m.seq)
        .collect()
}

pub(crate) async fn tip(store: &dyn HistoryStore, room: &str) -> u64 {
    store.tips(&[room.to_owned()]).await.expect("tips failed")[0]
}

pub(crate) async fn member(store: &dyn HistoryStore, room: &str, user: &str) -> Membership {
    store
        .membership(room, user)
        .await
        .expect("membership failed")
        .unwrap_or_else(|| panic!("{user} should be a member of {room}"))
}
