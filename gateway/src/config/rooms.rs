//! Room settings: the writer and fan-out, presence, receipts and typing,
//! history paging and retention.

use std::time::Duration;

use clap::Args;

/// The room writer (group commit) and its fan-out.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Room writer and fan-out")]
pub struct WriterConfig {
    /// Most messages in one group commit.
    #[arg(long, env = "CHORUS_BATCH_MAX", default_value_t = 1024)]
    pub batch_max: usize,

    /// Pending sends queued for the writer before `unavailable` is returned.
    #[arg(long, env = "CHORUS_WRITER_QUEUE", default_value_t = 65_536)]
    pub writer_queue: usize,

    /// Fan-out coalescing window, milliseconds (0: off). In a room with at
    /// least `--fanout-window-members` local connections, a message committed
    /// within this long of the room's previous fan-out is held and fanned out
    /// with the others of the window: each connection then writes them with one
    /// system call instead of one each. A room that was quiet for the window
    /// fans out at once (no added latency). Off by default: a connection
    /// already writes everything queued for it with one vectored write, and
    /// a fixed window only added latency (BENCHMARKS.md, "The connection
    /// layer").
    #[arg(long, env = "CHORUS_FANOUT_WINDOW_MS", default_value_t = 0)]
    pub fanout_window_ms: u64,

    /// Local connections from which a room's fan-out is coalesced.
    #[arg(long, env = "CHORUS_FANOUT_WINDOW_MEMBERS", default_value_t = 100)]
    pub fanout_window_members: usize,
}

impl WriterConfig {
    pub(super) fn validate(&self, errs: &mut Vec<String>) {
        if self.batch_max == 0 || self.writer_queue == 0 {
            errs.push("--batch-max and --writer-queue must be positive".into());
        }
    }
}

/// Presence and the room events around it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Presence, receipts and typing")]
pub struct PresenceConfig {
    /// Delay before a disconnected user's presence leave is broadcast, milliseconds.
    #[arg(long, env = "CHORUS_PRESENCE_GRACE_MS", default_value_t = 5_000)]
    pub presence_grace_ms: u64,

    /// Users online in a room above which the room is "hot": a join reply
    /// carries the online count instead of the user list, and join/leave
    /// diffs give way to one coalesced count per
    /// `--presence-count-interval-ms` (every member hearing of every other
    /// member would cost the square of the room size).
    #[arg(long, env = "CHORUS_PRESENCE_HOT_USERS", default_value_t = 1_000)]
    pub presence_hot_users: u64,

    /// Users online in a room above which its presence diffs are coalesced:
    /// instead of one `presence_diff` per user coming online or going
    /// offline, members get at most one per `--presence-count-interval-ms`,
    /// listing every user whose presence changed (by their last change). A
    /// burst of joins then costs each member a frame per interval, not one per
    /// joiner. 0: every room; at least --presence-hot-users: never.
    #[arg(long, env = "CHORUS_PRESENCE_COALESCE_USERS", default_value_t = 50)]
    pub presence_coalesce_users: u64,

    /// How often a hot room's changed online count, and a busy room's
    /// coalesced diff, is broadcast, milliseconds.
    #[arg(
        long,
        env = "CHORUS_PRESENCE_COUNT_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub presence_count_interval_ms: u64,

    /// Largest presence list in one reply, bytes of JSON: a `joined` whose list
    /// would be larger carries the count only (as for a hot room); a `presence`
    /// reply is cut to the users that fit and marked `truncated`.
    #[arg(
        long,
        env = "CHORUS_MAX_PRESENCE_REPLY_BYTES",
        default_value_t = 262_144
    )]
    pub max_presence_reply_bytes: u64,

    /// Interval between coalesced receipt broadcasts, milliseconds.
    #[arg(long, env = "CHORUS_RECEIPT_INTERVAL_MS", default_value_t = 100)]
    pub receipt_interval_ms: u64,

    /// Minimum interval between typing events per room per connection, milliseconds.
    #[arg(long, env = "CHORUS_TYPING_INTERVAL_MS", default_value_t = 1_000)]
    pub typing_interval_ms: u64,
}

impl PresenceConfig {
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.presence_grace_ms)
    }
}

/// History paging, replay and retention.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "History")]
pub struct HistoryConfig {
    /// Largest history page.
    #[arg(long, env = "CHORUS_MAX_HISTORY_PAGE", default_value_t = 100)]
    pub max_history_page: u64,

    /// Messages replayed on join/resume before reporting `recovered: false`.
    #[arg(long, env = "CHORUS_MAX_REPLAY", default_value_t = 10_000)]
    pub max_replay: u64,

    /// Retention: delete messages older than this many seconds (0 keeps forever).
    #[arg(long, env = "CHORUS_RETENTION_MAX_AGE_SECS", default_value_t = 0)]
    pub retention_max_age_secs: u64,

    /// Retention: keep at most this many messages per room (0 keeps all).
    #[arg(long, env = "CHORUS_RETENTION_MAX_COUNT", default_value_t = 0)]
    pub retention_max_count: u64,

    /// How often retention runs, seconds.
    #[arg(long, env = "CHORUS_RETENTION_INTERVAL_SECS", default_value_t = 3_600)]
    pub retention_interval_secs: u64,
}

impl HistoryConfig {
    pub(super) fn validate(&self, errs: &mut Vec<String>) {
        if self.max_history_page == 0 {
            errs.push("--max-history-page must be positive".into());
        }
    }
}
