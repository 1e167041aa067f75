//! The history contract against `SqliteStore`, plus what is specific to the
//! SQLite file: persistence across reopen and WAL mode.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use chorus_history::{
    HistoryStore, Membership, NewMessage, Position, ReadRange, Retention, RoomBatch, RoomClaim,
    RoomOutcome, SqliteStore, StoreError, StoredMessage, contract,
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

chorus_history::history_contract_tests!(fresh);

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

/// Env var naming the database the child half of the kill test writes to.
const KILL_CHILD_DB: &str = "CHORUS_HISTORY_KILL_CHILD_DB";

/// Child half of `acked_appends_survive_kill_9`: appends one message at a
/// time and prints `acked <seq>` after each `Ok`, until it is killed. Without
/// the environment variable (a normal test run) it does nothing.
#[tokio::test]
async fn kill_child_appends_until_killed() {
    let Ok(path) = std::env::var(KILL_CHILD_DB) else {
        return;
    };
    let store = SqliteStore::open(Path::new(&path))
        .await
        .expect("open store");
    let claim = store.claim_room("t/a").await.expect("claim");
    for i in 1_u64.. {
        let outcomes = store
            .append(&[RoomBatch {
                room: "t/a".to_owned(),
                epoch: claim.epoch,
                messages: vec![new_message(&format!("c{i}"), 1)],
            }])
            .await
            .expect("append");
        let RoomOutcome::Committed(appended) = &outcomes[0] else {
            panic!("fenced: {outcomes:?}");
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "acked {}", appended[0].seq).expect("stdout");
        out.flush().expect("stdout");
    }
}

/// Kills the child when the parent test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Already dead after the deliberate kill; an error here is expected then.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every append acknowledged before a `kill -9` of the writing process is
/// in the file when it is opened again.
#[tokio::test]
async fn acked_appends_survive_kill_9() {
    const ACKS: u64 = 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.db");

    let child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "kill_child_appends_until_killed",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(KILL_CHILD_DB, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().expect("child stdout");

    // Blocking reads are fine here: nothing else runs on this test's runtime.
    let mut last_acked = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        if let Some(seq) = line.strip_prefix("acked ") {
            last_acked = seq.parse().expect("acked seq");
            if last_acked >= ACKS {
                break;
            }
        }
    }
    assert!(
        last_acked >= ACKS,
        "the child stopped after {last_acked} acks"
    );
    // SIGKILL mid-stream: no destructor, no close, no checkpoint.
    child.0.kill().expect("kill child");
    child.0.wait().expect("reap child");

    let store = SqliteStore::open(&path).await.expect("reopen store");
    let tip = store.tips(&["t/a".to_owned()]).await.expect("tips")[0];
    assert!(tip >= last_acked, "tip {tip} lost acked seq {last_acked}");
    let stored = store
        .read(
            "t/a",
            ReadRange::After {
                after: 0,
                limit: u32::try_from(last_acked).expect("small"),
            },
        )
        .await
        .expect("read");
    let cids: Vec<_> = stored.iter().map(|m| m.cid.clone()).collect();
    let expected: Vec<_> = (1..=last_acked).map(|i| format!("c{i}")).collect();
    assert_eq!(cids, expected, "every acked message is there, in order");
}

/// A second store opened on a file another store still has open (as a
/// restarted process would while the old one is dying) sees its commits.
#[tokio::test]
async fn a_second_store_on_the_same_file_sees_commits() {
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

    let second = SqliteStore::open(&path).await.expect("second open");
    assert_eq!(second.tips(&["t/a".to_owned()]).await.expect("tips"), [1]);
    let reclaimed = second.claim_room("t/a").await.expect("claim");
    let fenced = first
        .append(&[RoomBatch {
            room: "t/a".to_owned(),
            epoch: claim.epoch,
            messages: vec![new_message("c2", 2)],
        }])
        .await
        .expect("append");
    assert_eq!(
        fenced,
        [RoomOutcome::Fenced {
            current_epoch: reclaimed.epoch
        }],
        "the old store is fenced by the new one's claim"
    );
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

/// A store that misreports retries as new messages (every `duplicate` flag
/// false). Used to prove the suite catches a broken backend.
struct NoIdempotency(SqliteStore);

#[async_trait::async_trait]
impl HistoryStore for NoIdempotency {
    async fn claim_room(&self, room: &str) -> Result<RoomClaim, StoreError> {
        self.0.claim_room(room).await
    }
    async fn append(&self, batches: &[RoomBatch]) -> Result<Vec<RoomOutcome>, StoreError> {
        let mut outcomes = self.0.append(batches).await?;
        for outcome in &mut outcomes {
            if let RoomOutcome::Committed(appended) = outcome {
                for entry in appended {
                    entry.duplicate = false;
                }
            }
        }
        Ok(outcomes)
    }
    async fn read(&self, room: &str, range: ReadRange) -> Result<Vec<StoredMessage>, StoreError> {
        self.0.read(room, range).await
    }
    async fn tips(&self, rooms: &[String]) -> Result<Vec<u64>, StoreError> {
        self.0.tips(rooms).await
    }
    async fn join(&self, room: &str, user: &str, now_ms: i64) -> Result<Membership, StoreError> {
        self.0.join(room, user, now_ms).await
    }
    async fn leave(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        self.0.leave(room, user).await
    }
    async fn memberships(&self, user: &str) -> Result<Vec<Membership>, StoreError> {
        self.0.memberships(user).await
    }
    async fn membership(&self, room: &str, user: &str) -> Result<Option<Membership>, StoreError> {
        self.0.membership(room, user).await
    }
    async fn mark(
        &self,
        room: &str,
        user: &str,
        position: Position,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.0.mark(room, user, position, seq).await
    }
    async fn trim(&self, retention: Retention, now_ms: i64) -> Result<u64, StoreError> {
        self.0.trim(retention, now_ms).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.0.ping().await
    }
}

/// The suite catches a broken backend: the idempotency case fails on it.
#[tokio::test]
#[should_panic(expected = "duplicate")]
async fn the_contract_catches_a_store_that_misreports_retries() {
    let (_dir, store) = fresh().await;
    contract::append_is_idempotent_by_cid(&NoIdempotency(store)).await;
}
