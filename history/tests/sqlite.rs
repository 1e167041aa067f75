//! The history contract against `SqliteStore`, plus what is specific to the
//! SQLite file: persistence across reopen and WAL mode.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chorus_history::{
    HistoryStore, NewMessage, Position, ReadRange, RoomBatch, RoomOutcome, SqliteStore, contract,
};
use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use tempfile::TempDir;

/// A fresh store in its own directory; the directory lives as long as the
/// returned guard.
async fn fresh() -> (TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(&dir.path().join("history.db"))
        .await
        .expect("open store");
    (dir, store)
}

/// One named test per contract case that takes `&dyn HistoryStore`.
macro_rules! contract_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let (_dir, store) = fresh().await;
            contract::$case(&store).await;
        }
    )*};
}

/// One named test per contract case that spawns tasks on a shared store; a
/// multi-threaded runtime makes the calls really overlap.
macro_rules! concurrent_contract_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $case() {
            let (_dir, store) = fresh().await;
            contract::$case(Arc::new(store)).await;
        }
    )*};
}

contract_cases!(
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

concurrent_contract_cases!(
    concurrent_claims_are_distinct,
    concurrent_appends_from_many_tasks
);

/// `run_all` itself: every case on its own file in one directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_all_contract_cases() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opened = AtomicUsize::new(0);
    contract::run_all(|| {
        let n = opened.fetch_add(1, Ordering::Relaxed);
        let path = dir.path().join(format!("case-{n}.db"));
        async move {
            let store = SqliteStore::open(&path).await.expect("open store");
            Box::new(store) as Box<dyn HistoryStore>
        }
    })
    .await;
    assert!(
        opened.load(Ordering::Relaxed) >= 13,
        "run_all ran every case"
    );
}

fn new_message(cid: &str, ts: i64) -> NewMessage {
    NewMessage {
        id: format!("id-{cid}"),
        sender: "ann".to_owned(),
        cid: cid.to_owned(),
        body: format!(r#"{{"text":"{cid}"}}"#),
        meta: Some(r#"{"k":1}"#.to_owned()),
        ts,
    }
}

/// Everything acked before a close is there after reopening the same file:
/// messages, tips, epochs, memberships and positions.
#[tokio::test]
async fn data_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.db");

    let store = SqliteStore::open(&path).await.expect("open store");
    let claim = store.claim_room("t/a").await.expect("claim");
    store.join("t/a", "u1", 7).await.expect("join");
    let outcomes = store
        .append(&[RoomBatch {
            room: "t/a".to_owned(),
            epoch: claim.epoch,
            messages: vec![new_message("c1", 1), new_message("c2", 2)],
        }])
        .await
        .expect("append");
    assert!(matches!(&outcomes[0], RoomOutcome::Committed(a) if a.len() == 2));
    let moved = store
        .mark("t/a", "u1", Position::Delivered, 1)
        .await
        .expect("mark");
    assert_eq!(moved, Some(1));
    store.close().await;
    drop(store);

    let store = SqliteStore::open(&path).await.expect("reopen store");
    let stored = store
        .read(
            "t/a",
            ReadRange::After {
                after: 0,
                limit: 10,
            },
        )
        .await
        .expect("read");
    assert_eq!(stored.len(), 2);
    assert_eq!(stored[1].id, "id-c2");
    assert_eq!(stored[1].body, r#"{"text":"c2"}"#);
    assert_eq!(stored[1].meta.as_deref(), Some(r#"{"k":1}"#));
    assert_eq!(store.tips(&["t/a".to_owned()]).await.expect("tips"), [2]);
    let membership = store
        .membership("t/a", "u1")
        .await
        .expect("membership")
        .expect("u1 is still a member");
    assert_eq!((membership.last_delivered, membership.joined_at), (1, 7));

    let reclaimed = store.claim_room("t/a").await.expect("claim");
    assert_eq!(
        (reclaimed.epoch, reclaimed.last_seq),
        (claim.epoch + 1, 2),
        "the epoch and the tip persist"
    );
    // The retried message is still recognised after the restart.
    let outcomes = store
        .append(&[RoomBatch {
            room: "t/a".to_owned(),
            epoch: reclaimed.epoch,
            messages: vec![new_message("c2", 99)],
        }])
        .await
        .expect("append");
    let RoomOutcome::Committed(appended) = &outcomes[0] else {
        panic!("fenced after reclaim: {outcomes:?}");
    };
    assert!(appended[0].duplicate);
    assert_eq!((appended[0].seq, appended[0].ts), (2, 2));
}

/// Reopening without a clean close (as after a crash) loses nothing either:
/// committed transactions are in the WAL, which the next open replays.
#[tokio::test]
async fn data_survives_reopen_without_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.db");

    let first = SqliteStore::open(&path).await.expect("open store");
    let claim = first.claim_room("t/a").await.expect("claim");
    first
        .append(&[RoomBatch {
            room: "t/a".to_owned(),
            epoch: claim.epoch,
            messages: vec![new_message("c1", 1)],
        }])
        .await
        .expect("append");

    // A second store on the same file while the first still has it open.
    let second = SqliteStore::open(&path).await.expect("second open");
    assert_eq!(second.tips(&["t/a".to_owned()]).await.expect("tips"), [1]);
    drop(first);
}

async fn journal_mode(path: &Path) -> String {
    let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(path))
        .await
        .expect("connect");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .expect("journal_mode");
    conn.close().await.expect("close");
    mode
}

/// The file is in WAL mode (a persistent property of the file, so any
/// connection sees it).
#[tokio::test]
async fn wal_mode_is_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.db");
    let store = SqliteStore::open(&path).await.expect("open store");
    assert_eq!(journal_mode(&path).await, "wal");
    store.close().await;
    assert_eq!(journal_mode(&path).await, "wal", "WAL persists after close");
}

/// Missing parent directories are created.
#[tokio::test]
async fn open_creates_parent_directories() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a/b/c/history.db");
    let store = SqliteStore::open(&path).await.expect("open store");
    store.ping().await.expect("ping");
    assert!(path.exists());
}

/// A batch far larger than one multi-row statement commits whole, with
/// duplicates spread across statement chunks still detected.
#[tokio::test]
async fn large_batches_span_statement_chunks() {
    let (_dir, store) = fresh().await;
    let claim = store.claim_room("t/big").await.expect("claim");
    let first: Vec<_> = (0..300).map(|i| new_message(&format!("c{i}"), i)).collect();
    let outcomes = store
        .append(&[RoomBatch {
            room: "t/big".to_owned(),
            epoch: claim.epoch,
            messages: first,
        }])
        .await
        .expect("append");
    let RoomOutcome::Committed(appended) = &outcomes[0] else {
        panic!("fenced: {outcomes:?}");
    };
    assert_eq!(
        appended.iter().map(|a| a.seq).collect::<Vec<_>>(),
        (1..=300).collect::<Vec<_>>()
    );

    // Half old keys (every other one), half new, across several chunks.
    let second: Vec<_> = (0..400)
        .map(|i| {
            if i % 2 == 0 {
                new_message(&format!("c{}", i / 2), 1_000 + i)
            } else {
                new_message(&format!("n{i}"), 1_000 + i)
            }
        })
        .collect();
    let outcomes = store
        .append(&[RoomBatch {
            room: "t/big".to_owned(),
            epoch: claim.epoch,
            messages: second,
        }])
        .await
        .expect("append");
    let RoomOutcome::Committed(appended) = &outcomes[0] else {
        panic!("fenced: {outcomes:?}");
    };
    for (i, a) in appended.iter().enumerate() {
        if i % 2 == 0 {
            assert!(a.duplicate, "entry {i} repeats c{}", i / 2);
            assert_eq!(a.seq, u64::try_from(i / 2).expect("small") + 1);
        } else {
            assert!(!a.duplicate, "entry {i} is new");
            assert_eq!(a.seq, 300 + u64::try_from(i / 2).expect("small") + 1);
        }
    }
    assert_eq!(
        store.tips(&["t/big".to_owned()]).await.expect("tips"),
        [500]
    );
}
