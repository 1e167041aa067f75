//! The cluster backend: PostgreSQL through a sqlx connection pool.
//!
//! Durability: a commit returns once PostgreSQL has flushed it to its WAL
//! (with the server's default `synchronous_commit = on`), so an `append` that
//! returned `Ok` survives a crash of the database server and of every gateway
//! node.
//!
//! Single writer per room: the `rooms` row is the fence. `append` locks the
//! rows of every room it writes (`SELECT ... FOR UPDATE`) and compares their
//! epoch inside the same transaction; `claim_room` bumps the epoch with an
//! upsert that waits for that lock. So a claim and an append of the same room
//! are serialised by PostgreSQL itself: a writer whose epoch was bumped can
//! never commit again, however long it was paused.
//!
//! Bounded waits: every call is bounded three ways (see [`PostgresOptions`]),
//! because the failure that matters in a cluster is not a clean error but a
//! server (or a peer holding a lock) that stops answering:
//! - getting a connection (including connecting to a database that is down or
//!   restarting) is bounded by `acquire_timeout`;
//! - each statement, including waiting for another writer's row lock, by the
//!   server-side `statement_timeout`;
//! - the whole call, once it has a connection, by the client-side
//!   `call_timeout`, which also covers a server that is frozen and so cannot
//!   enforce its own timeouts.
//!
//! and the server ends sessions that sit idle inside a transaction for
//! `idle_in_transaction_timeout`, so a gateway node frozen mid-append (GC
//! pause, SIGSTOP, network partition) cannot hold a room's lock and block the
//! node that takes the room over.
//!
//! Ambiguous commits: if the connection is lost (or `call_timeout` fires)
//! after `COMMIT` was sent, the transaction may or may not have committed, and
//! `append` reports `Unavailable`. That is the one case where "on `Err` nothing
//! was written" cannot be known by any client of a networked database; the
//! writer's retry with the same `(sender, cid)` keys resolves it, because a
//! committed message comes back as a duplicate with its original seq.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::error::DatabaseError;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Transaction};

use crate::store::{
    Appended, HistoryStore, Membership, Position, ReadRange, Retention, RoomBatch, RoomClaim,
    RoomOutcome, StoreError, StoredMessage,
};

/// The schema, embedded at compile time so a binary never depends on files
/// next to it. sqlx holds a PostgreSQL advisory lock (keyed by the database
/// name) while it migrates, so N nodes starting together apply each migration
/// exactly once and the others wait for it.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Rows deleted per `trim` statement. Each chunk commits on its own, so no
/// single delete holds many row locks or bloats one transaction's WAL.
const TRIM_CHUNK: i64 = 5000;

/// How often `join` retries when a concurrent `leave` removes the membership
/// between its insert and its read-back. Each retry needs another such race,
/// so a few attempts are plenty.
const JOIN_ATTEMPTS: usize = 4;

/// Connection and timeout settings of a [`PostgresStore`].
///
/// A zero `statement_timeout`, `idle_in_transaction_timeout` or
/// `call_timeout` disables that bound (PostgreSQL's own meaning of 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Most connections the pool opens. Every node holds its own pool, so the
    /// database's `max_connections` must cover `nodes * max_connections`.
    pub max_connections: u32,
    /// How long a call waits for a pooled connection, including opening one to
    /// a database that is down, restarting or frozen. Past it the call fails
    /// with `Unavailable` instead of piling up.
    pub acquire_timeout: Duration,
    /// Server-side bound on one statement, including the wait for a room's row
    /// lock held by another writer.
    pub statement_timeout: Duration,
    /// The server closes a session that stays idle inside a transaction this
    /// long, releasing its locks: a frozen writer cannot block a room forever.
    pub idle_in_transaction_timeout: Duration,
    /// Client-side bound on one call once it holds a connection: the only
    /// bound that still holds when the server itself stops answering. A call
    /// that exceeds it fails with `Unavailable` and its connection is dropped.
    pub call_timeout: Duration,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(5),
            idle_in_transaction_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(10),
        }
    }
}

/// Durable history in PostgreSQL, shared by every node of a cluster. Cloning
/// is cheap and shares the connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// `None` when disabled (zero in the options).
    call_timeout: Option<Duration>,
}

impl PostgresStore {
    /// Connect to the database at `url` (`postgres://user@host:port/db`) with
    /// default [`PostgresOptions`] and apply pending migrations.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    /// Connect to the database at `url` with `options` and apply pending
    /// migrations. Fails with `Unavailable` when the database cannot be
    /// reached within `acquire_timeout`, `Internal` for a bad URL or a failed
    /// migration.
    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        // sqlx accepts any scheme; a Redis URL or a SQLite path passed by
        // mistake should fail at once as a configuration error, not after
        // `acquire_timeout` of connection attempts.
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(StoreError::Internal(
                "a PostgreSQL URL starts with postgres:// or postgresql://".to_owned(),
            ));
        }
        let base = PgConnectOptions::from_str(url)
            .map_err(|err| StoreError::Internal(format!("invalid PostgreSQL URL: {err}")))?
            .application_name("chorus");

        migrate(&base, &options).await?;

        let pool_options = base.options([
            ("statement_timeout", millis(options.statement_timeout)),
            (
                "idle_in_transaction_session_timeout",
                millis(options.idle_in_transaction_timeout),
            ),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .acquire_timeout(options.acquire_timeout)
            // Open connections on demand: a node that only reads, or is idle,
            // does not hold a full pool's worth of server processes.
            .min_connections(0)
            .connect_lazy_with(pool_options);
        let store = Self {
            pool,
            call_timeout: Some(options.call_timeout).filter(|limit| !limit.is_zero()),
        };
        // Fail at start-up, not at the first message, if the pool's settings
        // are refused.
        store.ping().await?;
        tracing::info!(
            max_connections = options.max_connections,
            "history store connected to PostgreSQL"
        );
        Ok(store)
    }

    /// Close every connection, waiting for in-flight calls to finish. Later
    /// calls fail with `Unavailable`.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Run `work` on a pooled connection, bounded by `call_timeout`.
    ///
    /// When the bound fires the work is abandoned mid-protocol, so the
    /// connection is detached from the pool and dropped rather than handed to
    /// the next caller in an unknown state (sqlx would otherwise ping it on
    /// release, which hangs just as long on a frozen server).
    async fn with_conn<T>(
        &self,
        what: &'static str,
        work: impl AsyncFnOnce(&mut PgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(pg_error)?;
        let Some(limit) = self.call_timeout else {
            return work(&mut conn).await;
        };
        match tokio::time::timeout(limit, work(&mut conn)).await {
            Ok(result) => result,
            Err(_elapsed) => {
                drop(conn.detach());
                Err(StoreError::Unavailable(format!(
                    "{what}: PostgreSQL did not answer within {limit:?}"
                )))
            }
        }
    }
}

/// Apply pending migrations on a dedicated connection without a statement
/// timeout: a slow migration must not fail half-way, and the nodes waiting for
/// the migration lock must wait for it rather than give up. (A one-connection
/// pool rather than a bare connection: it retries a database that is still
/// starting up, within `acquire_timeout`, like the main pool.)
async fn migrate(base: &PgConnectOptions, options: &PostgresOptions) -> Result<(), StoreError> {
    let migration_options = base.clone().options([
        ("statement_timeout", "0".to_owned()),
        (
            "idle_in_transaction_session_timeout",
            millis(options.idle_in_transaction_timeout),
        ),
    ]);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(options.acquire_timeout)
        .connect_with(migration_options)
        .await
        .map_err(pg_error)?;
    let migrated = MIGRATOR
        .run(&pool)
        .await
        .map_err(|err| StoreError::Internal(format!("migrating the PostgreSQL schema: {err}")));
    // Closing ends the session (and with it any advisory lock) at once.
    pool.close().await;
    migrated
}

#[async_trait]
impl HistoryStore for PostgresStore {
    async fn claim_room(&self, room: &str) -> Result<RoomClaim, StoreError> {
        // One upsert is one transaction: atomic, durable when it returns, and
        // it waits for the row lock of an append in flight, so the returned
        // last_seq includes everything the previous writer committed.
        let (epoch, last_seq) = self
            .with_conn("claim_room", async |conn| {
                sqlx::query_as::<_, (i64, i64)>(
                    "INSERT INTO rooms (room, epoch, last_seq) VALUES ($1, 1, 0) \
                     ON CONFLICT (room) DO UPDATE SET epoch = rooms.epoch + 1 \
                     RETURNING epoch, last_seq",
                )
                .bind(room)
                .fetch_one(conn)
                .await
                .map_err(pg_error)
            })
            .await?;
        Ok(RoomClaim {
            epoch: to_u64(epoch, "rooms.epoch")?,
            last_seq: to_u64(last_seq, "rooms.last_seq")?,
        })
    }

    async fn append(&self, batches: &[RoomBatch]) -> Result<Vec<RoomOutcome>, StoreError> {
        if batches.is_empty() {
            return Ok(Vec::new());
        }
        self.with_conn("append", async |conn| {
            let mut tx = conn.begin().await.map_err(pg_error)?;
            let outcomes = append_in(&mut tx, batches).await?;
            tx.commit().await.map_err(pg_error)?;
            Ok(outcomes)
        })
        .await
    }

    async fn read(&self, room: &str, range: ReadRange) -> Result<Vec<StoredMessage>, StoreError> {
        let (sql, bound, limit, descending) = match range {
            ReadRange::After { after, limit } => (
                "SELECT room, seq, id, sender, cid, body, meta, ts FROM messages \
                 WHERE room = $1 AND seq > $2 ORDER BY seq ASC LIMIT $3",
                after,
                limit,
                false,
            ),
            ReadRange::Before { before, limit } => (
                "SELECT room, seq, id, sender, cid, body, meta, ts FROM messages \
                 WHERE room = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3",
                before,
                limit,
                true,
            ),
        };
        let rows = self
            .with_conn("read", async |conn| {
                sqlx::query_as::<_, MessageRow>(sql)
                    .bind(room)
                    .bind(saturating_i64(bound))
                    .bind(i64::from(limit))
                    .fetch_all(conn)
                    .await
                    .map_err(pg_error)
            })
            .await?;
        let mut messages = rows
            .into_iter()
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
        // One statement of fixed shape for any number of rooms: the LEFT JOIN
        // yields 0 for unknown rooms and the ordinality keeps the asked order,
        // repeats included.
        let tips = self
            .with_conn("tips", async |conn| {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COALESCE(r.last_seq, 0) \
                     FROM UNNEST($1::text[]) WITH ORDINALITY AS a(room, n) \
                     LEFT JOIN rooms AS r ON r.room = a.room ORDER BY a.n",
                )
                .bind(rooms)
                .fetch_all(conn)
                .await
                .map_err(pg_error)
            })
            .await?;
        if tips.len() != rooms.len() {
            return Err(StoreError::Internal(format!(
                "tips returned {} rows for {} rooms",
                tips.len(),
                rooms.len()
            )));
        }
        tips.into_iter()
            .map(|tip| to_u64(tip, "rooms.last_seq"))
            .collect()
    }

    async fn join(&self, room: &str, user: &str, now_ms: i64) -> Result<Membership, StoreError> {
        self.with_conn("join", async |conn| {
            for _ in 0..JOIN_ATTEMPTS {
                // Re-joining is the common case (every explicit join of an
                // existing member) and needs no write.
                if let Some(existing) = membership_of(conn, room, user).await? {
                    return Ok(existing);
                }
                // A new member starts with both positions at the tip. DO
                // NOTHING keeps a membership created concurrently since the
                // check; the loop then reads that one back.
                let inserted = sqlx::query_as::<_, (i64, i64)>(
                    "INSERT INTO members (room, user_id, joined_at, last_delivered, last_read) \
                     SELECT $1, $2, $3, t.tip, t.tip FROM \
                       (SELECT COALESCE((SELECT last_seq FROM rooms WHERE room = $1), 0) AS tip) AS t \
                     ON CONFLICT (room, user_id) DO NOTHING \
                     RETURNING last_read, joined_at",
                )
                .bind(room)
                .bind(user)
                .bind(now_ms)
                .fetch_optional(&mut *conn)
                .await
                .map_err(pg_error)?;
                if let Some((tip, joined_at)) = inserted {
                    let tip = to_u64(tip, "members.last_read")?;
                    return Ok(Membership {
                        room: room.to_owned(),
                        tip,
                        last_read: tip,
                        last_delivered: tip,
                        joined_at,
                    });
                }
            }
            Err(StoreError::Unavailable(format!(
                "join {room}: the membership of {user} kept changing concurrently"
            )))
        })
        .await
    }

    async fn leave(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        let done = self
            .with_conn("leave", async |conn| {
                sqlx::query("DELETE FROM members WHERE room = $1 AND user_id = $2")
                    .bind(room)
                    .bind(user)
                    .execute(conn)
                    .await
                    .map_err(pg_error)
            })
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn memberships(&self, user: &str) -> Result<Vec<Membership>, StoreError> {
        let rows = self
            .with_conn("memberships", async |conn| {
                sqlx::query_as::<_, MembershipRow>(
                    "SELECT m.room, COALESCE(r.last_seq, 0), m.last_read, m.last_delivered, \
                            m.joined_at \
                     FROM members AS m LEFT JOIN rooms AS r ON r.room = m.room \
                     WHERE m.user_id = $1 ORDER BY m.room",
                )
                .bind(user)
                .fetch_all(conn)
                .await
                .map_err(pg_error)
            })
            .await?;
        rows.into_iter().map(decode_membership).collect()
    }

    async fn membership(&self, room: &str, user: &str) -> Result<Option<Membership>, StoreError> {
        self.with_conn("membership", async |conn| {
            membership_of(conn, room, user).await
        })
        .await
    }

    async fn mark(
        &self,
        room: &str,
        user: &str,
        position: Position,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        // One statement: clamp to the tip, move only forward, and report the
        // new value only when a row actually changed. Two concurrent marks of
        // one member serialise on its row, and PostgreSQL re-checks the
        // `< target` condition against the row the first one left, so a
        // position never moves back.
        let sql = match position {
            Position::Delivered => {
                "UPDATE members SET last_delivered = t.target \
                 FROM (SELECT LEAST($3::bigint, \
                         COALESCE((SELECT last_seq FROM rooms WHERE room = $1), 0)) AS target) AS t \
                 WHERE members.room = $1 AND members.user_id = $2 \
                   AND members.last_delivered < t.target \
                 RETURNING members.last_delivered"
            }
            Position::Read => {
                "UPDATE members SET last_read = t.target, \
                     last_delivered = GREATEST(members.last_delivered, t.target) \
                 FROM (SELECT LEAST($3::bigint, \
                         COALESCE((SELECT last_seq FROM rooms WHERE room = $1), 0)) AS target) AS t \
                 WHERE members.room = $1 AND members.user_id = $2 \
                   AND members.last_read < t.target \
                 RETURNING members.last_read"
            }
        };
        let moved = self
            .with_conn("mark", async |conn| {
                sqlx::query_scalar::<_, i64>(sql)
                    .bind(room)
                    .bind(user)
                    .bind(saturating_i64(seq))
                    .fetch_optional(conn)
                    .await
                    .map_err(pg_error)
            })
            .await?;
        moved
            .map(|position| to_u64(position, "members position"))
            .transpose()
    }

    async fn trim(&self, retention: Retention, now_ms: i64) -> Result<u64, StoreError> {
        let mut deleted = 0;
        if let Some(max_age_ms) = retention.max_age_ms {
            let cutoff = now_ms.saturating_sub(saturating_i64(max_age_ms));
            deleted += self
                .delete_in_chunks(
                    "DELETE FROM messages WHERE (room, seq) IN \
                     (SELECT room, seq FROM messages WHERE ts < $1 LIMIT $2)",
                    cutoff,
                )
                .await?;
        }
        if let Some(max_count) = retention.max_count {
            // Counting from `last_seq` (not from the rows left) keeps the
            // newest `max_count` seqs; each room's oldest messages are a range
            // scan of its primary key.
            deleted += self
                .delete_in_chunks(
                    "DELETE FROM messages WHERE (room, seq) IN \
                     (SELECT m.room, m.seq FROM rooms AS r JOIN messages AS m \
                      ON m.room = r.room AND m.seq <= r.last_seq - $1 LIMIT $2)",
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
        self.with_conn("ping", async |conn| {
            sqlx::query("SELECT 1")
                .execute(conn)
                .await
                .map_err(pg_error)
                .map(drop)
        })
        .await
    }
}

impl PostgresStore {
    /// Run `sql` (binding `$1` = `param`, `$2` = the chunk size) until it
    /// deletes less than a full chunk; returns the total deleted. Each chunk is
    /// its own call, so a long trim never holds a connection past
    /// `call_timeout` and appends get connections in between.
    async fn delete_in_chunks(&self, sql: &'static str, param: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let done = self
                .with_conn("trim", async |conn| {
                    sqlx::query(sql)
                        .bind(param)
                        .bind(TRIM_CHUNK)
                        .execute(conn)
                        .await
                        .map_err(pg_error)
                })
                .await?;
            total += done.rows_affected();
            if done.rows_affected() < TRIM_CHUNK.unsigned_abs() {
                return Ok(total);
            }
        }
    }
}

/// A stored message as PostgreSQL returns it.
type MessageRow = (
    String,
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
);

/// `(room, tip, last_read, last_delivered, joined_at)`.
type MembershipRow = (String, i64, i64, i64, i64);

async fn membership_of(
    conn: &mut PgConnection,
    room: &str,
    user: &str,
) -> Result<Option<Membership>, StoreError> {
    let row = sqlx::query_as::<_, MembershipRow>(
        "SELECT m.room, COALESCE(r.last_seq, 0), m.last_read, m.last_delivered, m.joined_at \
         FROM members AS m LEFT JOIN rooms AS r ON r.room = m.room \
         WHERE m.room = $1 AND m.user_id = $2",
    )
    .bind(room)
    .bind(user)
    .fetch_optional(conn)
    .await
    .map_err(pg_error)?;
    row.map(decode_membership).transpose()
}

/// A room's fence row as locked by `append`, and its tip as this call moves it.
struct LockedRoom {
    epoch: i64,
    /// `last_seq` when the lock was taken.
    committed: u64,
    /// `last_seq` after the messages this call has assigned so far.
    last_seq: u64,
}

/// `(room, sender, cid)`: the idempotency key.
type Key<'a> = (&'a str, &'a str, &'a str);

/// The body of `append`, inside the caller's transaction: a fixed number of
/// round trips however many rooms and messages the call carries (lock, look
/// up duplicates, insert, move tips).
async fn append_in(
    tx: &mut Transaction<'_, Postgres>,
    batches: &[RoomBatch],
) -> Result<Vec<RoomOutcome>, StoreError> {
    // Lock every room of the call in one statement, in byte order of the
    // room key: two calls that share rooms lock them in the same order, so
    // group commits of overlapping rooms (a stale owner and a new one) queue
    // instead of deadlocking. The lock is held to the end of the transaction,
    // so a concurrent claim waits and then sees this call's last_seq.
    let mut room_keys: Vec<&str> = batches.iter().map(|b| b.room.as_str()).collect();
    room_keys.sort_unstable();
    room_keys.dedup();
    let locked_rows = sqlx::query_as::<_, (String, i64, i64)>(
        "SELECT room, epoch, last_seq FROM rooms WHERE room = ANY($1) ORDER BY room FOR UPDATE",
    )
    .bind(&room_keys)
    .fetch_all(&mut **tx)
    .await
    .map_err(pg_error)?;
    let mut locked: HashMap<String, LockedRoom> = HashMap::with_capacity(locked_rows.len());
    for (room, epoch, last_seq) in locked_rows {
        let last_seq = to_u64(last_seq, "rooms.last_seq")?;
        locked.insert(
            room,
            LockedRoom {
                epoch,
                committed: last_seq,
                last_seq,
            },
        );
    }

    // Which batches commit: the room exists and its epoch is the batch's. A
    // room nobody claimed has no writer, so any batch for it is stale.
    let mut fenced: Vec<Option<u64>> = Vec::with_capacity(batches.len());
    for batch in batches {
        fenced.push(match locked.get(batch.room.as_str()) {
            None => Some(0),
            Some(room) if i64::try_from(batch.epoch).ok() != Some(room.epoch) => {
                Some(to_u64(room.epoch, "rooms.epoch")?)
            }
            Some(_) => None,
        });
    }

    // Distinct keys of the committing batches that may already be stored (a
    // room that never committed a message has nothing to deduplicate
    // against), looked up in one statement.
    let mut lookup_slot: HashMap<Key<'_>, usize> = HashMap::new();
    let (mut lookup_rooms, mut lookup_senders, mut lookup_cids) =
        (Vec::new(), Vec::new(), Vec::new());
    for (batch, fence) in batches.iter().zip(&fenced) {
        let has_history = locked
            .get(batch.room.as_str())
            .is_some_and(|room| room.committed > 0);
        if fence.is_some() || !has_history {
            continue;
        }
        for message in &batch.messages {
            let key = (
                batch.room.as_str(),
                message.sender.as_str(),
                message.cid.as_str(),
            );
            let next = lookup_rooms.len();
            lookup_slot.entry(key).or_insert_with(|| {
                lookup_rooms.push(key.0);
                lookup_senders.push(key.1);
                lookup_cids.push(key.2);
                next
            });
        }
    }

    // What each key resolved to: (seq, id, ts) of the stored original, or of
    // the first occurrence in this call.
    let mut resolved: HashMap<Key<'_>, (u64, String, i64)> = HashMap::new();
    if !lookup_rooms.is_empty() {
        // Driving the join from the key list makes PostgreSQL probe the
        // (room, sender, cid) unique index once per key.
        let rows = sqlx::query_as::<_, (String, String, String, i64, String, i64)>(
            "SELECT m.room, m.sender, m.cid, m.seq, m.id, m.ts \
             FROM UNNEST($1::text[], $2::text[], $3::text[]) AS k(room, sender, cid) \
             JOIN messages AS m ON m.room = k.room AND m.sender = k.sender AND m.cid = k.cid",
        )
        .bind(&lookup_rooms)
        .bind(&lookup_senders)
        .bind(&lookup_cids)
        .fetch_all(&mut **tx)
        .await
        .map_err(pg_error)?;
        let keys: Vec<Key<'_>> = lookup_rooms
            .iter()
            .zip(&lookup_senders)
            .zip(&lookup_cids)
            .map(|((room, sender), cid)| (*room, *sender, *cid))
            .collect();
        for (room, sender, cid, seq, id, ts) in rows {
            if let Some(&slot) = lookup_slot.get(&(room.as_str(), sender.as_str(), cid.as_str())) {
                resolved.insert(keys[slot], (to_u64(seq, "messages.seq")?, id, ts));
            }
        }
    }

    // Assign seqs in batch order and collect the new rows column by column
    // for one multi-row insert.
    let mut rows = NewRows::default();
    let mut outcomes = Vec::with_capacity(batches.len());
    for (batch, fence) in batches.iter().zip(fenced) {
        if let Some(current_epoch) = fence {
            outcomes.push(RoomOutcome::Fenced { current_epoch });
            continue;
        }
        let Some(room) = locked.get_mut(batch.room.as_str()) else {
            return Err(StoreError::Internal(format!(
                "room {} committing without its lock",
                batch.room
            )));
        };
        let mut appended = Vec::with_capacity(batch.messages.len());
        for message in &batch.messages {
            let key = (
                batch.room.as_str(),
                message.sender.as_str(),
                message.cid.as_str(),
            );
            if let Some((seq, id, ts)) = resolved.get(&key) {
                appended.push(Appended {
                    seq: *seq,
                    id: id.clone(),
                    ts: *ts,
                    duplicate: true,
                });
                continue;
            }
            let seq = room.last_seq + 1;
            let Ok(seq_column) = i64::try_from(seq) else {
                return Err(StoreError::Internal(format!(
                    "seq {seq} of room {} does not fit PostgreSQL's BIGINT",
                    batch.room
                )));
            };
            room.last_seq = seq;
            resolved.insert(key, (seq, message.id.clone(), message.ts));
            rows.rooms.push(key.0);
            rows.seqs.push(seq_column);
            rows.ids.push(message.id.as_str());
            rows.senders.push(key.1);
            rows.cids.push(key.2);
            rows.bodies.push(message.body.as_str());
            rows.metas.push(message.meta.as_deref());
            rows.tss.push(message.ts);
            appended.push(Appended {
                seq,
                id: message.id.clone(),
                ts: message.ts,
                duplicate: false,
            });
        }
        outcomes.push(RoomOutcome::Committed(appended));
    }

    if rows.seqs.is_empty() {
        return Ok(outcomes);
    }
    sqlx::query(
        "INSERT INTO messages (room, seq, id, sender, cid, body, meta, ts) \
         SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
                              $6::text[], $7::text[], $8::int8[])",
    )
    .bind(&rows.rooms)
    .bind(&rows.seqs)
    .bind(&rows.ids)
    .bind(&rows.senders)
    .bind(&rows.cids)
    .bind(&rows.bodies)
    .bind(&rows.metas)
    .bind(&rows.tss)
    .execute(&mut **tx)
    .await
    .map_err(pg_error)?;

    let (mut tip_rooms, mut tips) = (Vec::new(), Vec::new());
    for (room, state) in &locked {
        if state.last_seq != state.committed {
            tip_rooms.push(room.as_str());
            // Fits: every assigned seq was checked against i64 above.
            tips.push(saturating_i64(state.last_seq));
        }
    }
    sqlx::query(
        "UPDATE rooms SET last_seq = u.last_seq \
         FROM UNNEST($1::text[], $2::int8[]) AS u(room, last_seq) WHERE rooms.room = u.room",
    )
    .bind(&tip_rooms)
    .bind(&tips)
    .execute(&mut **tx)
    .await
    .map_err(pg_error)?;
    Ok(outcomes)
}

/// The new messages of one `append`, one vector per column (the shape
/// `UNNEST` takes).
#[derive(Default)]
struct NewRows<'a> {
    rooms: Vec<&'a str>,
    seqs: Vec<i64>,
    ids: Vec<&'a str>,
    senders: Vec<&'a str>,
    cids: Vec<&'a str>,
    bodies: Vec<&'a str>,
    metas: Vec<Option<&'a str>>,
    tss: Vec<i64>,
}

fn decode_message(row: MessageRow) -> Result<StoredMessage, StoreError> {
    let (room, seq, id, sender, cid, body, meta, ts) = row;
    Ok(StoredMessage {
        room,
        seq: to_u64(seq, "messages.seq")?,
        id,
        sender,
        cid,
        body,
        meta,
        ts,
    })
}

fn decode_membership(row: MembershipRow) -> Result<Membership, StoreError> {
    let (room, tip, last_read, last_delivered, joined_at) = row;
    Ok(Membership {
        room,
        tip: to_u64(tip, "rooms.last_seq")?,
        last_read: to_u64(last_read, "members.last_read")?,
        last_delivered: to_u64(last_delivered, "members.last_delivered")?,
        joined_at,
    })
}

/// Seqs and epochs are stored as BIGINT and written only from `u64`s that fit;
/// a negative one is a corrupt or foreign row, not something to retry.
fn to_u64(value: i64, column: &str) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Internal(format!("negative {column} in history: {value}")))
}

/// Caller-supplied bounds beyond BIGINT compare the same as `i64::MAX`
/// against any stored seq.
fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A duration as PostgreSQL's millisecond setting value (0 disables).
fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

/// Classify an sqlx error: a lost, refused, restarting, overloaded or timed
/// out database is `Unavailable` (a retry may succeed); everything else
/// (constraint violations the contract rules out, bad SQL, undecodable rows)
/// is `Internal`.
fn pg_error(err: sqlx::Error) -> StoreError {
    let transient = match &err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
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
    err.code().is_some_and(|code| is_transient_sqlstate(&code))
}

/// SQLSTATEs that mean "not now" rather than "never"; see
/// <https://www.postgresql.org/docs/current/errcodes-appendix.html>.
fn is_transient_sqlstate(code: &str) -> bool {
    // Whole classes: connection exception, insufficient resources (too many
    // connections, disk full, out of memory), system error (I/O).
    if code.starts_with("08") || code.starts_with("53") || code.starts_with("58") {
        return true;
    }
    matches!(
        code,
        // serialization_failure, deadlock_detected: the transaction was rolled
        // back and can simply run again.
        "40001" | "40P01"
        // lock_not_available, query_canceled (statement_timeout fired).
        | "55P03" | "57014"
        // admin_shutdown, crash_shutdown, cannot_connect_now (starting up or
        // in recovery), idle_session_timeout.
        | "57P01" | "57P02" | "57P03" | "57P05"
        // idle_in_transaction_session_timeout ended the session.
        | "25P03"
        // read_only_sql_transaction: connected to a standby during a failover.
        | "25006"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for transient in [
            "08006", "08001", "53300", "53100", "58030", "40001", "40P01", "55P03", "57014",
            "57P01", "57P02", "57P03", "25P03", "25006",
        ] {
            assert!(is_transient_sqlstate(transient), "{transient}");
        }
        for permanent in [
            "23505", "23503", "42P01", "42601", "22P02", "XX000", "22021",
        ] {
            assert!(!is_transient_sqlstate(permanent), "{permanent}");
        }
    }

    #[test]
    fn client_errors_are_classified() {
        assert!(matches!(
            pg_error(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            pg_error(sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset
            ))),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            pg_error(sqlx::Error::RowNotFound),
            StoreError::Internal(_)
        ));
    }

    #[test]
    fn options_render_as_milliseconds() {
        assert_eq!(millis(Duration::from_millis(1500)), "1500");
        assert_eq!(millis(Duration::ZERO), "0");
    }

    /// A malformed URL is a configuration error, reported before any I/O.
    #[tokio::test]
    async fn a_bad_url_is_internal() {
        for url in ["redis://127.0.0.1:6379", "postgres://h:notaport/db"] {
            let err = PostgresStore::connect(url)
                .await
                .expect_err("not a PostgreSQL URL");
            assert!(matches!(err, StoreError::Internal(_)), "{url}: {err:?}");
        }
    }
}
