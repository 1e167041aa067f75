//! Cluster mode: Redis and PostgreSQL shared by every node, leases and
//! node-to-node timings.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// Cluster mode: what every node of one cluster shares.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterConfig {
    /// Redis URL: switches on cluster mode (with --database-url).
    #[arg(long, env = "CHORUS_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// File holding the Redis URL (it may carry a password). Replaces --redis-url.
    #[arg(long, env = "CHORUS_REDIS_URL_FILE")]
    pub redis_url_file: Option<PathBuf>,

    /// PostgreSQL URL for history in cluster mode (with --redis-url).
    #[arg(long, env = "CHORUS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// File holding the PostgreSQL URL (it may carry a password). Replaces
    /// --database-url.
    #[arg(long, env = "CHORUS_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,

    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "CHORUS_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: u32,

    /// Prefix of every Redis key and channel (one cluster per prefix).
    #[arg(long, env = "CHORUS_REDIS_PREFIX", default_value = "chorus:")]
    pub redis_prefix: String,

    /// Room ownership lease in Redis, milliseconds: a dead owner's rooms move to
    /// another node within about this long.
    #[arg(long, env = "CHORUS_OWNER_LEASE_MS", default_value_t = 3_000)]
    pub owner_lease_ms: u64,

    /// Presence entries expire this long after their node's last refresh,
    /// milliseconds: a dead node's connections leave presence within it (4 s
    /// by default, guarantee 6). Nodes refresh every third of it and announce
    /// such leaves to the room at their next refresh after the expiry.
    #[arg(long, env = "CHORUS_PRESENCE_TTL_MS", default_value_t = 4_000)]
    pub presence_ttl_ms: u64,

    /// Time a send forwarded to the room's owner may take before it is retried, milliseconds.
    #[arg(long, env = "CHORUS_FORWARD_TIMEOUT_MS", default_value_t = 2_000)]
    pub forward_timeout_ms: u64,

    /// How often a node compares the tips of its subscribed rooms with what it
    /// delivered, to find messages lost at the end of a burst, milliseconds.
    #[arg(long, env = "CHORUS_TIP_POLL_MS", default_value_t = 1_000)]
    pub tip_poll_ms: u64,
}

impl ClusterConfig {
    /// Whether this node runs in cluster mode (Redis + PostgreSQL).
    pub fn enabled(&self) -> bool {
        self.redis_url.is_some()
    }
    pub fn owner_lease(&self) -> Duration {
        Duration::from_millis(self.owner_lease_ms)
    }
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.presence_ttl_ms)
    }
    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.forward_timeout_ms)
    }
    pub fn tip_poll(&self) -> Duration {
        Duration::from_millis(self.tip_poll_ms.max(50))
    }
}
