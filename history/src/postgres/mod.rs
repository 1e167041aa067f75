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
//!
//! Layout: this file holds the options, connecting (pool, migrations) and
//! the bounded call wrapper; `calls` the [`HistoryStore`] calls; `append` the
//! write path of `append` (fence, de-duplication, one multi-row insert);
//! `decode` rows into the store's types and sqlx errors into [`StoreError`];
//! `tests` what needs no server.

mod append;
mod calls;
mod decode;
#[cfg(test)]
mod tests;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use crate::store::{HistoryStore, StoreError};
use decode::pg_error;

/// The schema, embedded at compile time so a binary never depends on files
/// next to it. sqlx holds a PostgreSQL advisory lock (keyed by the database
/// name) while it migrates, so N nodes starting together apply each migration
/// exactly once and the others wait for it.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

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

/// A duration as PostgreSQL's millisecond setting value (0 disables).
fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}
