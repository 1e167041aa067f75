//! From PostgreSQL into the store's types: rows into messages and
//! memberships, BIGINT columns into `u64`, and sqlx errors into
//! [`StoreError`] (transient or not).

use sqlx::error::DatabaseError;

use crate::store::{Membership, StoreError, StoredMessage};

/// A stored message as PostgreSQL returns it.
pub(super) type MessageRow = (
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
pub(super) type MembershipRow = (String, i64, i64, i64, i64);

pub(super) fn decode_message(row: MessageRow) -> Result<StoredMessage, StoreError> {
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

pub(super) fn decode_membership(row: MembershipRow) -> Result<Membership, StoreError> {
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
pub(super) fn to_u64(value: i64, column: &str) -> Result<u64, StoreError> {
    u64::try_from(value)
        .map_err(|_| StoreError::Internal(format!("negative {column} in history: {value}")))
}

/// Caller-supplied bounds beyond BIGINT compare the same as `i64::MAX`
/// against any stored seq.
pub(super) fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Classify an sqlx error: a lost, refused, restarting, overloaded or timed
/// out database is `Unavailable` (a retry may succeed); everything else
/// (constraint violations the contract rules out, bad SQL, undecodable rows)
/// is `Internal`.
pub(super) fn pg_error(err: sqlx::Error) -> StoreError {
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
pub(super) fn is_transient_sqlstate(code: &str) -> bool {
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
