//! The [`HistoryStore`] calls of [`PostgresStore`]: claiming rooms, reads,
//! memberships and positions, trimming, the health check. The body of
//! `append` is in `append`.

use async_trait::async_trait;
use sqlx::Connection;
use sqlx::postgres::PgConnection;

use super::PostgresStore;
use super::append::append_in;
use super::decode::{
    MembershipRow, MessageRow, decode_membership, decode_message, pg_error, saturating_i64, to_u64,
};
use crate::store::{
    HistoryStore, Membership, Position, ReadRange, Retention, RoomBatch, RoomClaim, RoomOutcome,
    StoreError, StoredMessage,
};

/// Rows deleted per `trim` statement. Each chunk commits on its own, so no
/// single delete holds many row locks or bloats one transaction's WAL.
const TRIM_CHUNK: i64 = 5000;

/// How often `join` retries when a concurrent `leave` removes the membership
/// between its insert and its read-back. Each retry needs another such race,
/// so a few attempts are plenty.
const JOIN_ATTEMPTS: usize = 4;

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
