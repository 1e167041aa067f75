//! The embedded backend: one SQLite file in WAL mode, through sqlx.
//!
//! Durability: the file runs in WAL mode with `synchronous=FULL`, so every
//! commit fsyncs the WAL before it returns. An `append` that returned `Ok` has
//! survived a `kill -9` of the process and a power loss of the machine.
//!
//! Concurrency: SQLite admits one writer at a time. Rather than letting several
//! connections race for the write lock (and fail with `SQLITE_BUSY` in the
//! middle of a transaction), every write goes through a pool of exactly one
//! connection: writers queue fairly on the pool, and a transaction never waits
//! on another connection of this process. Reads use a separate small pool; in
//! WAL mode readers see the last committed state and never block the writer.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::error::DatabaseError;
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};

use crate::store::{
    Appended, HistoryStore, Membership, NewMessage, Position, ReadRange, Retention, RoomBatch,
    RoomClaim, RoomOutcome, StoreError, StoredMessage,
};

/// The schema, embedded at compile time so a binary never depends on files
/// next to it.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a statement waits for a lock held by another process (a backup,
/// the `sqlite3` shell) before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a caller waits for a pooled connection. Past this the store is
/// effectively down: callers get `Unavailable` instead of piling up.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// Read connections. Reads are short index range scans; a few connections
/// keep them parallel without holding many file descriptors and page caches.
const READERS: u32 = 4;

/// Rows per multi-row `INSERT` (8 variables each) and keys per duplicate
/// lookup (2 variables each). Both stay far below SQLite's variable limit,
/// and bounding them bounds the number of distinct statement shapes the
/// writer keeps prepared (see [`WRITER_STATEMENT_CACHE`]).
const ROWS_PER_STATEMENT: usize = 64;

/// Large enough that every shape of the chunked statements (at most
/// [`ROWS_PER_STATEMENT`] per kind) plus the fixed ones stay prepared.
const WRITER_STATEMENT_CACHE: usize = 256;

/// Rows deleted per `trim` transaction. Each chunk commits on its own so the
/// writer connection goes back to the pool in between, and appends (the hot
/// path) are never stuck behind one huge delete.
const TRIM_CHUNK: i64 = 2000;

// Primary SQLite result codes (the low byte of an extended code) that mean
// "try again later" rather than "bug": see https://www.sqlite.org/rescode.html.
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_IOERR: i32 = 10;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;

/// Durable history in a single SQLite file. Cloning is cheap and shares the
/// connection pools.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    /// Exactly one connection: every write, serialised.
    writer: SqlitePool,
    /// Read-only (`query_only`) connections for reads.
    readers: SqlitePool,
}

impl SqliteStore {
    /// Open (creating it and its parent directories if missing) the database at
    /// `path`, switch it to WAL mode and apply pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|err| {
                StoreError::Unavailable(format!("creating {}: {err}", parent.display()))
            })?;
        }

        let base = SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Full);

        // WAL is a property of the file: the writer sets it once when it
        // connects, readers inherit it.
        let writer_options = base
            .clone()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .statement_cache_capacity(WRITER_STATEMENT_CACHE);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // Keep the one connection (and its prepared statements) for the
            // life of the store instead of recycling it under traffic.
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(writer_options)
            .await
            .map_err(sqlite_error)?;

        MIGRATOR
            .run(&writer)
            .await
            .map_err(|err| StoreError::Internal(format!("migrating {}: {err}", path.display())))?;

        // `query_only` makes an accidental write through a reader fail loudly
        // instead of racing the writer for the lock.
        let reader_options = base.pragma("query_only", "ON");
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(reader_options)
            .await
            .map_err(sqlite_error)?;

        tracing::info!(path = %path.display(), "history store opened");
        Ok(Self { writer, readers })
    }

    /// Close every connection, waiting for in-flight calls to finish. Later
    /// calls fail with `Unavailable`. Closing the last connection checkpoints
    /// the WAL into the main file.
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}

#[async_trait]
impl HistoryStore for SqliteStore {
    async fn claim_room(&self, room: &str) -> Result<RoomClaim, StoreError> {
        // One statement is one (autocommit) transaction on the single writer:
        // the bump is atomic and durable when it returns.
        let (epoch, last_seq) = sqlx::query_as::<_, (u64, u64)>(
            "INSERT INTO rooms (room, epoch, last_seq, created_at) VALUES (?1, 1, 0, ?2) \
             ON CONFLICT (room) DO UPDATE SET epoch = epoch + 1 \
             RETURNING epoch, last_seq",
        )
        .bind(room)
        .bind(unix_ms())
        .fetch_one(&self.writer)
        .await
        .map_err(sqlite_error)?;
        Ok(RoomClaim { epoch, last_seq })
    }

    async fn append(&self, batches: &[RoomBatch]) -> Result<Vec<RoomOutcome>, StoreError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        // IMMEDIATE takes the write lock up front, so a foreign process holding
        // it makes us wait (busy_timeout) before any work rather than fail
        // half-way. Dropping `tx` on an early `?` rolls everything back.
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sqlite_error)?;
        let mut outcomes = Vec::with_capacity(batches.len());
        for batch in batches {
            outcomes.push(append_batch(&mut tx, batch).await?);
        }
        tx.commit().await.map_err(sqlite_error)?;
        Ok(outcomes)
    }

    async fn read(&self, room: &str, range: ReadRange) -> Result<Vec<StoredMessage>, StoreError> {
        let (sql, bound, limit, descending) = match range {
            ReadRange::After { after, limit } => (
                "SELECT room, seq, id, sender, cid, body, meta, ts FROM messages \
                 WHERE room = ?1 AND seq > ?2 ORDER BY seq ASC LIMIT ?3",
                after,
                limit,
                false,
            ),
            ReadRange::Before { before, limit } => (
                "SELECT room, seq, id, sender, cid, body, meta, ts FROM messages \
                 WHERE room = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3",
                before,
                limit,
                true,
            ),
        };
        let rows = sqlx::query(sql)
            .bind(room)
            .bind(saturating_i64(bound))
            .bind(i64::from(limit))
            .fetch_all(&self.readers)
            .await
            .map_err(sqlite_error)?;
        let mut messages = rows
            .iter()
            .map(decode_message)
            .collect::<Result<Vec<_>, _>>()?;
        if descending {
            messages.reverse();
        }
        Ok(messages)
    }

    async fn tips(&self, rooms: &[String]) -> Result<Vec<u64>, StoreError> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        // The rooms travel as one JSON array: a single statement of fixed shape
        // for any number of rooms, whose LEFT JOIN yields 0 for unknown rooms
        // and whose `ORDER BY j.key` (the array index) keeps the asked order,
        // repeats included.
        let asked = serde_json::to_string(rooms)
            .map_err(|err| StoreError::Internal(format!("encoding room list: {err}")))?;
        let tips = sqlx::query_scalar::<_, u64>(
            "SELECT COALESCE(r.last_seq, 0) FROM json_each(?1) AS j \
             LEFT JOIN rooms AS r ON r.room = j.value ORDER BY j.key",
        )
        .bind(asked)
        .fetch_all(&self.readers)
        .await
        .map_err(sqlite_error)?;
        if tips.len() != rooms.len() {
            return Err(StoreError::Internal(format!(
                "tips returned {} rows for {} rooms",
                tips.len(),
                rooms.len()
            )));
        }
        Ok(tips)
    }

    async fn join(&self, room: &str, user: &str, now_ms: i64) -> Result<Membership, StoreError> {
        // Re-joining is common (every explicit join of an existing member) and
        // needs no write: answer it from a reader without queueing on the writer.
        if let Some(existing) = self.membership(room, user).await? {
            return Ok(existing);
        }
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sqlite_error)?;
        // DO NOTHING keeps a membership created concurrently since the check.
        sqlx::query(
            "INSERT INTO members (room, user, joined_at, last_delivered, last_read) \
             VALUES (?1, ?2, ?3, \
                     COALESCE((SELECT last_seq FROM rooms WHERE room = ?1), 0), \
                     COALESCE((SELECT last_seq FROM rooms WHERE room = ?1), 0)) \
             ON CONFLICT (room, user) DO NOTHING",
        )
        .bind(room)
        .bind(user)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(sqlite_error)?;
        let row = sqlx::query(MEMBERSHIP_OF_ROOM)
            .bind(room)
            .bind(user)
            .fetch_one(&mut *tx)
            .await
            .map_err(sqlite_error)?;
        let membership = decode_membership(&row)?;
        tx.commit().await.map_err(sqlite_error)?;
        Ok(membership)
    }

    async fn leave(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM members WHERE room = ?1 AND user = ?2")
            .bind(room)
            .bind(user)
            .execute(&self.writer)
            .await
            .map_err(sqlite_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn memberships(&self, user: &str) -> Result<Vec<Membership>, StoreError> {
        let rows = sqlx::query(
            "SELECT m.room, COALESCE(r.last_seq, 0), m.last_read, m.last_delivered, m.joined_at \
             FROM members AS m LEFT JOIN rooms AS r ON r.room = m.room \
             WHERE m.user = ?1 ORDER BY m.room",
        )
        .bind(user)
        .fetch_all(&self.readers)
        .await
        .map_err(sqlite_error)?;
        rows.iter().map(decode_membership).collect()
    }

    async fn membership(&self, room: &str, user: &str) -> Result<Option<Membership>, StoreError> {
        let row = sqlx::query(MEMBERSHIP_OF_ROOM)
            .bind(room)
            .bind(user)
            .fetch_optional(&self.readers)
            .await
            .map_err(sqlite_error)?;
        row.as_ref().map(decode_membership).transpose()
    }

    async fn mark(
        &self,
        room: &str,
        user: &str,
        position: Position,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        // One statement: clamp to the tip, move only forward, and report the
        // new value only when a row actually changed.
        let sql = match position {
            Position::Delivered => {
                "UPDATE members SET last_delivered = t.target \
                 FROM (SELECT MIN(?3, COALESCE((SELECT last_seq FROM rooms WHERE room = ?1), 0)) \
                       AS target) AS t \
                 WHERE members.room = ?1 AND members.user = ?2 \
                   AND members.last_delivered < t.target \
                 RETURNING last_delivered"
            }
            Position::Read => {
                "UPDATE members SET last_read = t.target, \
                     last_delivered = MAX(members.last_delivered, t.target) \
                 FROM (SELECT MIN(?3, COALESCE((SELECT last_seq FROM rooms WHERE room = ?1), 0)) \
                       AS target) AS t \
                 WHERE members.room = ?1 AND members.user = ?2 \
                   AND members.last_read < t.target \
                 RETURNING last_read"
            }
        };
        sqlx::query_scalar::<_, u64>(sql)
            .bind(room)
            .bind(user)
            .bind(saturating_i64(seq))
            .fetch_optional(&self.writer)
            .await
            .map_err(sqlite_error)
    }

    async fn trim(&self, retention: Retention, now_ms: i64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        if let Some(max_age_ms) = retention.max_age_ms {
            let cutoff = now_ms.saturating_sub(saturating_i64(max_age_ms));
            deleted += self
                .delete_in_chunks(
                    "DELETE FROM messages WHERE (room, seq) IN \
                     (SELECT room, seq FROM messages WHERE ts < ?1 LIMIT ?2)",
                    cutoff,
                )
                .await?;
        }
        if let Some(max_count) = retention.max_count {
            // Counting from `last_seq` (not from the rows left) keeps the newest
            // `max_count` seqs. CROSS JOIN makes SQLite walk rooms and range-scan
            // each room's oldest messages by primary key.
            deleted += self
                .delete_in_chunks(
                    "DELETE FROM messages WHERE (room, seq) IN \
                     (SELECT m.room, m.seq FROM rooms AS r CROSS JOIN messages AS m \
                      ON m.room = r.room AND m.seq <= r.last_seq - ?1 LIMIT ?2)",
                    saturating_i64(max_count),
                )
                .await?;
        }
        if deleted > 0 {
            tracing::debug!(deleted, "history trimmed");
        }
        Ok(deleted)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.readers)
            .await
            .map_err(sqlite_error)?;
        Ok(())
    }
}

impl SqliteStore {
    /// Run `sql` (binding `?1` = `param`, `?2` = the chunk size) until it
    /// deletes less than a full chunk; returns the total deleted.
    async fn delete_in_chunks(&self, sql: &'static str, param: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let done = sqlx::query(sql)
                .bind(param)
                .bind(TRIM_CHUNK)
                .execute(&self.writer)
                .await
                .map_err(sqlite_error)?;
            total += done.rows_affected();
            if done.rows_affected() < TRIM_CHUNK.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

/// A membership with its room's tip; binds `?1` = room, `?2` = user.
const MEMBERSHIP_OF_ROOM: &str = "SELECT m.room, COALESCE(r.last_seq, 0), m.last_read, m.last_delivered, m.joined_at \
     FROM members AS m LEFT JOIN rooms AS r ON r.room = m.room \
     WHERE m.room = ?1 AND m.user = ?2";

/// The part of `append` for one room, inside the caller's transaction.
async fn append_batch(
    conn: &mut SqliteConnection,
    batch: &RoomBatch,
) -> Result<RoomOutcome, StoreError> {
    let room = sqlx::query_as::<_, (u64, u64)>("SELECT epoch, last_seq FROM rooms WHERE room = ?1")
        .bind(&batch.room)
        .fetch_optional(&mut *conn)
        .await
        .map_err(sqlite_error)?;
    // A room nobody claimed has no writer: any batch for it is stale.
    let Some((epoch, last_seq)) = room else {
        return Ok(RoomOutcome::Fenced { current_epoch: 0 });
    };
    if epoch != batch.epoch {
        return Ok(RoomOutcome::Fenced {
            current_epoch: epoch,
        });
    }
    if batch.messages.is_empty() {
        return Ok(RoomOutcome::Committed(Vec::new()));
    }

    // Distinct (sender, cid) keys in first-seen order; every message points at
    // its key's slot, so a repeat within the batch resolves to the first one.
    let mut slot_of: HashMap<(&str, &str), usize> = HashMap::with_capacity(batch.messages.len());
    let mut keys: Vec<(&str, &str)> = Vec::with_capacity(batch.messages.len());
    let mut message_slots = Vec::with_capacity(batch.messages.len());
    for message in &batch.messages {
        let key = (message.sender.as_str(), message.cid.as_str());
        let next = keys.len();
        let slot = *slot_of.entry(key).or_insert_with(|| {
            keys.push(key);
            next
        });
        message_slots.push(slot);
    }

    // What each key resolved to: (seq, id, ts).
    let mut resolved: Vec<Option<(u64, String, i64)>> = vec![None; keys.len()];
    // A room that never committed a message has nothing to deduplicate against.
    if last_seq > 0 {
        for chunk in keys.chunks(ROWS_PER_STATEMENT) {
            // Driving the join from the VALUES list makes SQLite probe the
            // (room, sender, cid) unique index once per key instead of
            // scanning the room.
            let mut lookup =
                QueryBuilder::<Sqlite>::new("SELECT m.sender, m.cid, m.seq, m.id, m.ts FROM (");
            lookup.push_values(chunk, |mut row, (sender, cid)| {
                row.push_bind(*sender).push_bind(*cid);
            });
            lookup
                .push(") AS k JOIN messages AS m ON m.room = ")
                .push_bind(batch.room.as_str())
                .push(" AND m.sender = k.column1 AND m.cid = k.column2");
            let rows = lookup
                .build()
                .fetch_all(&mut *conn)
                .await
                .map_err(sqlite_error)?;
            for row in &rows {
                let sender: &str = row.try_get(0).map_err(decode_error)?;
                let cid: &str = row.try_get(1).map_err(decode_error)?;
                if let Some(&slot) = slot_of.get(&(sender, cid)) {
                    resolved[slot] = Some((
                        row.try_get(2).map_err(decode_error)?,
                        row.try_get(3).map_err(decode_error)?,
                        row.try_get(4).map_err(decode_error)?,
                    ));
                }
            }
        }
    }

    let mut next_seq = last_seq;
    let mut fresh: Vec<(u64, &NewMessage)> = Vec::with_capacity(batch.messages.len());
    let mut appended = Vec::with_capacity(batch.messages.len());
    for (message, &slot) in batch.messages.iter().zip(&message_slots) {
        match &resolved[slot] {
            Some((seq, id, ts)) => appended.push(Appended {
                seq: *seq,
                id: id.clone(),
                ts: *ts,
                duplicate: true,
            }),
            None => {
                next_seq += 1;
                resolved[slot] = Some((next_seq, message.id.clone(), message.ts));
                fresh.push((next_seq, message));
                appended.push(Appended {
                    seq: next_seq,
                    id: message.id.clone(),
                    ts: message.ts,
                    duplicate: false,
                });
            }
        }
    }

    if fresh.is_empty() {
        return Ok(RoomOutcome::Committed(appended));
    }
    // Every new seq is at most `next_seq`: once that fits SQLite's signed
    // INTEGER, all of them do.
    let Ok(tip) = i64::try_from(next_seq) else {
        return Err(StoreError::Internal(format!(
            "seq {next_seq} of room {} does not fit SQLite's INTEGER",
            batch.room
        )));
    };
    for chunk in fresh.chunks(ROWS_PER_STATEMENT) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO messages (room, seq, id, sender, cid, body, meta, ts) ",
        );
        insert.push_values(chunk, |mut row, (seq, message)| {
            row.push_bind(batch.room.as_str())
                .push_bind(saturating_i64(*seq))
                .push_bind(message.id.as_str())
                .push_bind(message.sender.as_str())
                .push_bind(message.cid.as_str())
                .push_bind(message.body.as_str())
                .push_bind(message.meta.as_deref())
                .push_bind(message.ts);
        });
        insert
            .build()
            .execute(&mut *conn)
            .await
            .map_err(sqlite_error)?;
    }
    sqlx::query("UPDATE rooms SET last_seq = ?1 WHERE room = ?2")
        .bind(tip)
        .bind(&batch.room)
        .execute(&mut *conn)
        .await
        .map_err(sqlite_error)?;
    Ok(RoomOutcome::Committed(appended))
}

fn decode_message(row: &SqliteRow) -> Result<StoredMessage, StoreError> {
    Ok(StoredMessage {
        room: row.try_get(0).map_err(decode_error)?,
        seq: row.try_get(1).map_err(decode_error)?,
        id: row.try_get(2).map_err(decode_error)?,
        sender: row.try_get(3).map_err(decode_error)?,
        cid: row.try_get(4).map_err(decode_error)?,
        body: json_text(row, 5)?.unwrap_or_default(),
        meta: json_text(row, 6)?,
        ts: row.try_get(7).map_err(decode_error)?,
    })
}

/// A `body`/`meta` column as text, whatever a hand edit left in it (a BLOB,
/// bytes that are not UTF-8): such a value comes back as `""`, which the
/// gateway's JSON check refuses and serves as `null` (counted and logged),
/// instead of failing the whole page.
fn json_text(row: &SqliteRow, idx: usize) -> Result<Option<String>, StoreError> {
    if let Ok(text) = row.try_get::<Option<String>, _>(idx) {
        return Ok(text);
    }
    let bytes: Option<Vec<u8>> = row.try_get(idx).map_err(decode_error)?;
    Ok(bytes.map(|b| String::from_utf8(b).unwrap_or_default()))
}

fn decode_membership(row: &SqliteRow) -> Result<Membership, StoreError> {
    Ok(Membership {
        room: row.try_get(0).map_err(decode_error)?,
        tip: row.try_get(1).map_err(decode_error)?,
        last_read: row.try_get(2).map_err(decode_error)?,
        last_delivered: row.try_get(3).map_err(decode_error)?,
        joined_at: row.try_get(4).map_err(decode_error)?,
    })
}

/// A row that does not decode is corrupt or from a foreign schema: not retryable.
fn decode_error(err: sqlx::Error) -> StoreError {
    StoreError::Internal(format!("undecodable history row: {err}"))
}

/// Classify an sqlx error: lost, closed, busy or I/O-failing databases are
/// `Unavailable` (a retry may succeed); everything else is `Internal`.
fn sqlite_error(err: sqlx::Error) -> StoreError {
    let transient = match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => is_transient(db.as_ref()),
        _ => false,
    };
    if transient {
        StoreError::Unavailable(err.to_string())
    } else {
        StoreError::Internal(err.to_string())
    }
}

fn is_transient(err: &dyn DatabaseError) -> bool {
    // sqlx reports SQLite's extended result code as decimal text.
    let Some(code) = err.code().and_then(|code| code.parse::<i32>().ok()) else {
        return false;
    };
    matches!(
        code & 0xff,
        SQLITE_BUSY | SQLITE_LOCKED | SQLITE_IOERR | SQLITE_FULL | SQLITE_CANTOPEN
    )
}

/// SQLite integers are signed 64-bit; caller-supplied bounds beyond that
/// compare the same as `i64::MAX` against any stored seq.
fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Wall-clock Unix milliseconds, for the informational `rooms.created_at`.
fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The durability settings are per connection: check the writer really
    /// runs with them, and that readers cannot write.
    #[tokio::test]
    async fn writer_is_wal_full_and_readers_are_query_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("h.db"))
            .await
            .expect("open");

        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&store.writer)
            .await
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        // 2 = FULL: the WAL is fsynced at every commit.
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&store.writer)
            .await
            .expect("synchronous");
        assert_eq!(synchronous, 2);
        let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&store.writer)
            .await
            .expect("busy_timeout");
        assert_eq!(busy, 5000);

        let write = sqlx::query("INSERT INTO rooms (room, epoch, last_seq) VALUES ('x', 1, 0)")
            .execute(&store.readers)
            .await;
        assert!(write.is_err(), "a reader connection accepted a write");
    }

    /// A busy database is retryable, a constraint violation is not.
    #[tokio::test]
    async fn errors_are_classified() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("h.db"))
            .await
            .expect("open");
        store.claim_room("x").await.expect("claim");
        let err = sqlx::query("INSERT INTO rooms (room, epoch, last_seq) VALUES ('x', 1, 0)")
            .execute(&store.writer)
            .await
            .expect_err("second insert violates the primary key");
        assert!(matches!(sqlite_error(err), StoreError::Internal(_)));

        store.close().await;
        let err = store.ping().await.expect_err("closed store");
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    }
}
