//! One connection's settings (heartbeats and timeouts, frame and room
//! bounds, its outbound queue) and the send limits.

use std::time::Duration;

use clap::Args;

/// One WebSocket connection: its timers, bounds and outbound queue.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connections")]
pub struct ConnectionConfig {
    /// Server ping interval, milliseconds.
    #[arg(long, env = "CHORUS_HEARTBEAT_MS", default_value_t = 25_000)]
    pub heartbeat_ms: u64,

    /// Close a connection silent for this long, milliseconds.
    #[arg(long, env = "CHORUS_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Time allowed between the upgrade and `hello`, milliseconds.
    #[arg(long, env = "CHORUS_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// Largest inbound WebSocket frame, bytes.
    #[arg(long, env = "CHORUS_MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: u64,

    /// Rooms one connection may join.
    #[arg(long, env = "CHORUS_MAX_ROOMS", default_value_t = 100)]
    pub max_rooms: u64,

    /// Connections this node accepts in total.
    #[arg(long, env = "CHORUS_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: u64,

    /// Connections one user may hold on this node.
    #[arg(long, env = "CHORUS_MAX_CONNECTIONS_PER_USER", default_value_t = 32)]
    pub max_connections_per_user: u64,

    /// Durable room memberships one user may hold (over all connections and
    /// devices); a join that would create one more is refused with `too_many_rooms`.
    #[arg(long, env = "CHORUS_MAX_MEMBERSHIPS_PER_USER", default_value_t = 1_000)]
    pub max_memberships_per_user: u64,

    /// Largest presence `meta` a connection may give in `hello`, bytes of JSON
    /// text; a larger one is refused with close 4504.
    #[arg(long, env = "CHORUS_MAX_PRESENCE_META_BYTES", default_value_t = 1_024)]
    pub max_presence_meta_bytes: u64,

    /// Sustained inbound frames per second per connection before closing 4004 (flood).
    #[arg(long, env = "CHORUS_FRAMES_PER_SEC", default_value_t = 200)]
    pub frames_per_sec: u64,

    /// Inbound frame burst per connection.
    #[arg(long, env = "CHORUS_FRAME_BURST", default_value_t = 400)]
    pub frame_burst: u64,

    /// Outbound items (frames, or one committed batch of a room) queued per
    /// connection before it is closed as slow (4002).
    #[arg(long, env = "CHORUS_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Outbound bytes queued per connection before it is closed as slow (4002).
    #[arg(long, env = "CHORUS_OUTBOUND_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub outbound_bytes: usize,

    /// Time a write to a client may block before it is closed as slow, milliseconds.
    #[arg(long, env = "CHORUS_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,
}

impl ConnectionConfig {
    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }

    pub(super) fn validate(&self, errs: &mut Vec<String>) {
        if self.heartbeat_ms == 0 || self.idle_timeout_ms <= self.heartbeat_ms {
            errs.push("--idle-timeout-ms must be greater than --heartbeat-ms > 0".into());
        }
        for (name, v) in [
            ("--max-frame-bytes", self.max_frame_bytes),
            ("--max-rooms", self.max_rooms),
            ("--frames-per-sec", self.frames_per_sec),
            ("--frame-burst", self.frame_burst),
        ] {
            if v == 0 {
                errs.push(format!("{name} must be positive"));
            }
        }
        if self.outbound_queue == 0 || self.outbound_bytes == 0 {
            errs.push("--outbound-queue and --outbound-bytes must be positive".into());
        }
    }
}

/// Sends: size, rates (per connection, user, tenant) and the commit wait.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Sends")]
pub struct SendConfig {
    /// Largest message body + meta, bytes.
    #[arg(long, env = "CHORUS_MAX_MESSAGE_BYTES", default_value_t = 16_384)]
    pub max_message_bytes: u64,

    /// Sustained sends per second per connection.
    #[arg(long, env = "CHORUS_SENDS_PER_SEC", default_value_t = 50)]
    pub sends_per_sec: u64,

    /// Send burst per connection.
    #[arg(long, env = "CHORUS_SEND_BURST", default_value_t = 100)]
    pub send_burst: u64,

    /// Sustained sends per second per user, over all their connections (on every
    /// node in cluster mode: a Redis token bucket). 0: no per-user limit.
    #[arg(long, env = "CHORUS_USER_SENDS_PER_SEC", default_value_t = 100)]
    pub user_sends_per_sec: u64,

    /// Send burst per user (at least 1).
    #[arg(long, env = "CHORUS_USER_SEND_BURST", default_value_t = 200)]
    pub user_send_burst: u64,

    /// Sustained sends per second per tenant, over all its users and HTTP
    /// publishes (on every node in cluster mode). 0: no per-tenant limit.
    #[arg(long, env = "CHORUS_TENANT_SENDS_PER_SEC", default_value_t = 0)]
    pub tenant_sends_per_sec: u64,

    /// Send burst per tenant (at least 1). Default: twice --tenant-sends-per-sec.
    #[arg(long, env = "CHORUS_TENANT_SEND_BURST")]
    pub tenant_send_burst: Option<u64>,

    /// Time a send may wait for its commit before `timeout`, milliseconds.
    #[arg(long, env = "CHORUS_SEND_TIMEOUT_MS", default_value_t = 10_000)]
    pub send_timeout_ms: u64,
}

impl SendConfig {
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }

    pub(super) fn validate(&self, errs: &mut Vec<String>) {
        for (name, v) in [
            ("--max-message-bytes", self.max_message_bytes),
            ("--sends-per-sec", self.sends_per_sec),
            ("--send-burst", self.send_burst),
        ] {
            if v == 0 {
                errs.push(format!("{name} must be positive"));
            }
        }
    }
}
