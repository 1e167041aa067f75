//! The history contract against `PostgresStore` on a real PostgreSQL, plus
//! what only a networked, shared database has: nodes migrating at once, nodes
//! committing overlapping rooms, and a server that crashes, is down, or
//! freezes.
//!
//! Contract cases each get a fresh database on one PostgreSQL shared by this
//! test binary; tests that kill or pause the server start their own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_history::{
    HistoryStore, NewMessage, PostgresOptions, PostgresStore, ReadRange, RoomBatch, RoomOutcome,
    StoreError,
};
use chorus_tests::services::PostgresServer;
use sqlx::{Connection, PgConnection};

/// A store on a fresh database of the shared server.
async fn fresh_store() -> PostgresStore {
    let url = PostgresServer::shared().create_database();
    PostgresStore::connect(&url).await.expect("connect store")
}

/// The contract cases' fresh store (no guard: the database is dropped with the server).
async fn fresh() -> ((), PostgresStore) {
    ((), fresh_store().await)
}

chorus_history::history_contract_tests!(fresh);

/// Timeouts short enough for a test to see each bound fire.
fn fast_fail() -> PostgresOptions {
    PostgresOptions {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(1),
        statement_timeout: Duration::from_secs(3),
        idle_in_transaction_timeout: Duration::from_secs(3),
        call_timeout: Duration::from_secs(2),
    }
}

fn new_message(cid: &str) -> NewMessage {
    NewMessage {
        id: format!("id-{cid}"),
        sender: "ann".to_owned(),
        cid: cid.to_owned(),
        body: format!(r#"{{"text": "{cid}" }}"#),
        meta: None,
        ts: 1,
    }
}

fn batch(room: &str, epoch: u64, messages: Vec<NewMessage>) -> RoomBatch {
    RoomBatch {
        room: room.to_owned(),
        epoch,
        messages,
    }
}

/// Append one batch that must commit; returns its seqs.
async fn append_ok(store: &dyn HistoryStore, batch: RoomBatch) -> Vec<u64> {
    let outcomes = store.append(&[batch]).await.expect("append");
    match &outcomes[..] {
        [RoomOutcome::Committed(appended)] => appended.iter().map(|a| a.seq).collect(),
        other => panic!("not committed: {other:?}"),
    }
}

async fn read_all(store: &dyn HistoryStore, room: &str) -> Vec<(u64, String)> {
    store
        .read(
            room,
            ReadRange::After {
                after: 0,
                limit: u32::MAX,
            },
        )
        .await
        .expect("read")
        .into_iter()
        .map(|m| (m.seq, m.cid))
        .collect()
}

fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Unavailable(_)) => {}
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

/// Four nodes starting together on a fresh database: each migration is
/// applied exactly once (sqlx's advisory lock), none of them fails, and every
/// node can use the schema at once. Three rounds to give a race a chance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn migrations_are_safe_from_concurrent_connects() {
    const NODES: usize = 4;
    let migrations_dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../history/migrations/postgres");
    let migrations = std::fs::read_dir(&migrations_dir)
        .expect("migrations dir")
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sql"))
        .count();
    assert!(migrations > 0);

    for _ in 0..3 {
        let url = PostgresServer::shared().create_database();
        let barrier = Arc::new(tokio::sync::Barrier::new(NODES));
        let tasks: Vec<_> = (0..NODES)
            .map(|_| {
                let (url, barrier) = (url.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    PostgresStore::connect(&url).await
                })
            })
            .collect();
        let mut epochs = Vec::new();
        for task in tasks {
            let store = task
                .await
                .expect("connect task")
                .expect("a concurrent connect failed");
            epochs.push(store.claim_room("t/a").await.expect("claim").epoch);
        }
        epochs.sort_unstable();
        assert_eq!(epochs, [1, 2, 3, 4], "every node uses the one schema");

        let mut conn = PgConnection::connect(&url).await.expect("connect");
        let applied: Vec<(i64, bool)> =
            sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&mut conn)
                .await
                .expect("migration table");
        assert_eq!(applied.len(), migrations, "each migration recorded once");
        assert!(applied.iter().all(|(_, ok)| *ok), "{applied:?}");
        conn.close().await.expect("close");
    }
}

/// Two nodes committing the same rooms in opposite orders at the same time
/// (a stale owner's group commit racing a new owner's) queue on the room
/// locks instead of deadlocking: every call succeeds and seqs stay gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_group_commits_do_not_deadlock() {
    const CALLS: u64 = 60;
    let url = PostgresServer::shared().create_database();
    let first = Arc::new(PostgresStore::connect(&url).await.expect("connect"));
    let second = Arc::new(PostgresStore::connect(&url).await.expect("connect"));
    let rooms = ["t/r1", "t/r2", "t/r3", "t/r4"];
    let mut epochs = Vec::new();
    for room in rooms {
        epochs.push((room, first.claim_room(room).await.expect("claim").epoch));
    }

    let run = |store: Arc<PostgresStore>, reversed: bool, node: &'static str| {
        let mut order = epochs.clone();
        if reversed {
            order.reverse();
        }
        tokio::spawn(async move {
            for call in 0..CALLS {
                let batches: Vec<_> = order
                    .iter()
                    .map(|(room, epoch)| {
                        batch(room, *epoch, vec![new_message(&format!("{node}-{call}"))])
                    })
                    .collect();
                let outcomes = store.append(&batches).await.expect("append");
                assert!(
                    outcomes
                        .iter()
                        .all(|o| matches!(o, RoomOutcome::Committed(_))),
                    "{outcomes:?}"
                );
            }
        })
    };
    let a = run(Arc::clone(&first), false, "a");
    let b = run(Arc::clone(&second), true, "b");
    a.await.expect("node a");
    b.await.expect("node b");

    for room in rooms {
        let seqs: Vec<u64> = read_all(&*first, room)
            .await
            .into_iter()
            .map(|(seq, _)| seq)
            .collect();
        assert_eq!(seqs, (1..=2 * CALLS).collect::<Vec<_>>(), "{room}");
    }
}

/// A claim through one node fences the writer on another: the old epoch's
/// batch writes nothing and reports the new epoch.
#[tokio::test]
async fn a_claim_on_another_node_fences_the_old_writer() {
    let url = PostgresServer::shared().create_database();
    let old = PostgresStore::connect(&url).await.expect("connect");
    let new = PostgresStore::connect(&url).await.expect("connect");
    let stale = old.claim_room("t/a").await.expect("claim");
    append_ok(&old, batch("t/a", stale.epoch, vec![new_message("c1")])).await;
    let current = new.claim_room("t/a").await.expect("claim");
    assert_eq!(
        current.last_seq, 1,
        "the claim sees the old writer's commit"
    );

    let outcomes = old
        .append(&[batch("t/a", stale.epoch, vec![new_message("c2")])])
        .await
        .expect("append");
    assert_eq!(
        outcomes,
        [RoomOutcome::Fenced {
            current_epoch: current.epoch
        }]
    );
    assert_eq!(
        append_ok(&new, batch("t/a", current.epoch, vec![new_message("c2")])).await,
        [2],
        "the fenced message left nothing behind"
    );
}

/// One call far larger than any statement parameter limit, half of whose
/// keys repeat earlier ones, commits whole through the array statements.
#[tokio::test]
async fn large_batches_commit_whole() {
    let store = fresh_store().await;
    let epoch = store.claim_room("t/big").await.expect("claim").epoch;
    let first: Vec<_> = (0..3000).map(|i| new_message(&format!("c{i}"))).collect();
    assert_eq!(
        append_ok(&store, batch("t/big", epoch, first)).await,
        (1..=3000).collect::<Vec<_>>()
    );
    let second: Vec<_> = (0..4000)
        .map(|i| {
            if i % 2 == 0 {
                new_message(&format!("c{}", i / 2))
            } else {
                new_message(&format!("n{i}"))
            }
        })
        .collect();
    let seqs = append_ok(&store, batch("t/big", epoch, second)).await;
    for (i, seq) in (0_u64..).zip(&seqs) {
        let expected = if i % 2 == 0 {
            i / 2 + 1
        } else {
            3000 + i / 2 + 1
        };
        assert_eq!(*seq, expected, "entry {i}");
    }
    assert_eq!(
        store.tips(&["t/big".to_owned()]).await.expect("tips"),
        [5000]
    );
}

/// Every append acknowledged before a kill -9 of PostgreSQL (postmaster and
/// backends, mid-stream) is there, at its acked seq, after a restart; the
/// in-flight append fails as `Unavailable`, and seqs stay gap-free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_appends_survive_kill9_and_restart() {
    const ACKS: usize = 200;
    let mut server = PostgresServer::start();
    let url = server.create_database();
    let store = Arc::new(
        PostgresStore::connect_with(&url, fast_fail())
            .await
            .expect("connect"),
    );
    let claim = store.claim_room("t/a").await.expect("claim");

    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let appender = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for call in 0_u64.. {
                // Two messages per call, so a commit is a multi-row insert.
                let messages = vec![
                    new_message(&format!("c{call}-0")),
                    new_message(&format!("c{call}-1")),
                ];
                match store
                    .append(&[batch("t/a", claim.epoch, messages.clone())])
                    .await
                {
                    Ok(outcomes) => {
                        let [RoomOutcome::Committed(appended)] = &outcomes[..] else {
                            panic!("fenced: {outcomes:?}");
                        };
                        for (message, appended) in messages.into_iter().zip(appended) {
                            let _ = acks_tx.send((message.cid, appended.seq));
                        }
                    }
                    Err(err) => return err,
                }
            }
            unreachable!("the appender only ends on an error")
        })
    };

    let mut acked = Vec::new();
    while acked.len() < ACKS {
        acked.push(acks.recv().await.expect("the appender stopped early"));
    }
    tokio::task::block_in_place(|| server.kill9());
    let err = appender.await.expect("appender task");
    assert!(
        matches!(err, StoreError::Unavailable(_)),
        "an append against a crashed server is retryable: {err:?}"
    );
    while let Ok(ack) = acks.try_recv() {
        acked.push(ack);
    }

    tokio::task::block_in_place(|| server.restart());
    let store = PostgresStore::connect(&url).await.expect("reconnect");
    let stored = read_all(&store, "t/a").await;
    let tip = store.tips(&["t/a".to_owned()]).await.expect("tips")[0];
    assert_eq!(
        stored.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        (1..=tip).collect::<Vec<_>>(),
        "stored seqs are gap-free up to the tip"
    );
    for (cid, seq) in &acked {
        let index = usize::try_from(*seq - 1).expect("small seq");
        assert_eq!(
            stored.get(index).map(|(_, c)| c),
            Some(cid),
            "acked {cid} at seq {seq} is lost"
        );
    }
    let reclaimed = store.claim_room("t/a").await.expect("claim");
    assert_eq!(
        (reclaimed.epoch, reclaimed.last_seq),
        (claim.epoch + 1, tip),
        "the epoch and the tip survive the crash"
    );
}

/// With the server down, calls fail with `Unavailable` within the acquire
/// timeout (no panic, no hang); after a restart the same store works again
/// at once, and the writer's epoch is still valid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_while_down_are_unavailable_and_recover_after_restart() {
    let mut server = PostgresServer::start();
    let url = server.create_database();
    let store = PostgresStore::connect_with(&url, fast_fail())
        .await
        .expect("connect");
    let claim = store.claim_room("t/a").await.expect("claim");
    append_ok(&store, batch("t/a", claim.epoch, vec![new_message("c1")])).await;

    tokio::task::block_in_place(|| server.kill9());
    let started = Instant::now();
    assert_unavailable(
        store
            .append(&[batch("t/a", claim.epoch, vec![new_message("c2")])])
            .await,
        "append while down",
    );
    let waited = started.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "append waited {waited:?} for a down server"
    );
    assert_unavailable(store.ping().await, "ping while down");
    assert_unavailable(store.claim_room("t/b").await, "claim while down");
    assert_unavailable(store.tips(&["t/a".to_owned()]).await, "tips while down");

    tokio::task::block_in_place(|| server.restart());
    assert_eq!(
        append_ok(&store, batch("t/a", claim.epoch, vec![new_message("c2")])).await,
        [2],
        "the same store and epoch work again after the restart"
    );
    let retried = store
        .append(&[batch("t/a", claim.epoch, vec![new_message("c1")])])
        .await
        .expect("append");
    let [RoomOutcome::Committed(appended)] = &retried[..] else {
        panic!("fenced: {retried:?}");
    };
    assert!(
        appended[0].duplicate && appended[0].seq == 1,
        "{appended:?}"
    );
}

/// A frozen (SIGSTOPped) server cannot hang the store: a call already in
/// flight fails at `call_timeout`, a new call at `acquire_timeout`, both as
/// `Unavailable`; the abandoned append commits nothing, and everything works
/// again once the server continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_fails_calls_within_the_timeouts() {
    let server = PostgresServer::start();
    let url = server.create_database();
    let options = fast_fail();
    let store = Arc::new(
        PostgresStore::connect_with(&url, options)
            .await
            .expect("connect"),
    );
    let claim = store.claim_room("t/a").await.expect("claim");
    append_ok(&*store, batch("t/a", claim.epoch, vec![new_message("c1")])).await;

    // Hold the room's lock from another session so the next append is
    // surely in flight (waiting inside the server) when the server freezes.
    let mut locker = PgConnection::connect(&url).await.expect("connect");
    let mut locked = locker.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM rooms WHERE room = 't/a' FOR UPDATE")
        .execute(&mut *locked)
        .await
        .expect("lock the room");
    let in_flight = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let started = Instant::now();
            let result = store
                .append(&[batch("t/a", claim.epoch, vec![new_message("c2")])])
                .await;
            (result, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.pause();

    let (result, waited) = in_flight.await.expect("append task");
    assert_unavailable(result, "append in flight when the server froze");
    assert!(
        waited >= options.call_timeout && waited < options.call_timeout + Duration::from_secs(2),
        "the in-flight append ended after {waited:?}, not at call_timeout"
    );

    let started = Instant::now();
    assert_unavailable(
        store
            .append(&[batch("t/a", claim.epoch, vec![new_message("c3")])])
            .await,
        "append while frozen",
    );
    let waited = started.elapsed();
    assert!(
        waited < options.acquire_timeout + Duration::from_secs(2),
        "a new append waited {waited:?} on a frozen server"
    );

    server.resume();
    locked.rollback().await.expect("release the lock");
    assert_eq!(
        append_ok(&*store, batch("t/a", claim.epoch, vec![new_message("c2")])).await,
        [2],
        "the abandoned append committed nothing, and the store works again"
    );
}

/// A writer waiting for a room lock that another session holds (a peer
/// frozen mid-commit) gives up at `statement_timeout` with `Unavailable`,
/// and claims the room once the lock is released.
#[tokio::test]
async fn lock_waits_are_bounded_by_the_statement_timeout() {
    let url = PostgresServer::shared().create_database();
    let options = PostgresOptions {
        statement_timeout: Duration::from_millis(500),
        ..fast_fail()
    };
    let store = PostgresStore::connect_with(&url, options)
        .await
        .expect("connect");
    store.claim_room("t/a").await.expect("claim");

    let mut locker = PgConnection::connect(&url).await.expect("connect");
    let mut locked = locker.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM rooms WHERE room = 't/a' FOR UPDATE")
        .execute(&mut *locked)
        .await
        .expect("lock the room");
    let started = Instant::now();
    assert_unavailable(store.claim_room("t/a").await, "claim behind a held lock");
    let waited = started.elapsed();
    assert!(
        waited >= options.statement_timeout && waited < Duration::from_secs(2),
        "the claim gave up after {waited:?}"
    );

    locked.rollback().await.expect("release the lock");
    let claim = store.claim_room("t/a").await.expect("claim");
    assert_eq!(claim.epoch, 2, "the timed-out claim did not bump the epoch");
}
