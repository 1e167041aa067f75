//! The `HistoryStore` contract: what every durable backend guarantees.
//!
//! Keys are opaque strings: the gateway namespaces rooms and users by tenant
//! before they reach the store (`tenant/room`), so backends never parse them.

use async_trait::async_trait;

/// Errors of a store. `Unavailable` is retryable (connection lost, database
/// restarting, busy); `Internal` is a bug or a corrupt row.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not be reached or is busy; retrying may succeed.
    #[error("history store unavailable: {0}")]
    Unavailable(String),
    /// Anything else: constraint violations that the contract rules out,
    /// undecodable rows, migration failures.
    #[error("history store error: {0}")]
    Internal(String),
}

/// The result of claiming a room's writer role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomClaim {
    /// The new epoch, strictly greater than any earlier claim's.
    pub epoch: u64,
    /// The highest committed seq (0 for a new room).
    pub last_seq: u64,
}

/// A message to append; its seq is assigned by the store inside the commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Server-assigned unique id (UUID v7 text).
    pub id: String,
    pub sender: String,
    /// Client message id; `(room, sender, cid)` is unique.
    pub cid: String,
    /// Raw JSON text.
    pub body: String,
    /// Raw JSON text.
    pub meta: Option<String>,
    /// Unix milliseconds, set by the writer.
    pub ts: i64,
}

/// Messages for one room, committed by the writer holding `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomBatch {
    pub room: String,
    pub epoch: u64,
    pub messages: Vec<NewMessage>,
}

/// What happened to one appended message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    /// The stored id: the new one, or the original's for a duplicate.
    pub id: String,
    /// The stored timestamp (the original's for a duplicate).
    pub ts: i64,
    /// True when `(room, sender, cid)` was already stored (earlier or earlier
    /// in the same batch); nothing new was written for it.
    pub duplicate: bool,
}

/// The outcome of one room's batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomOutcome {
    /// Committed: one entry per message, in the batch's order.
    Committed(Vec<Appended>),
    /// The room's epoch moved past the batch's: another writer claimed it.
    /// Nothing of this batch was written.
    Fenced { current_epoch: u64 },
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub room: String,
    pub seq: u64,
    pub id: String,
    pub sender: String,
    pub cid: String,
    pub body: String,
    pub meta: Option<String>,
    pub ts: i64,
}

/// Which part of a room to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRange {
    /// `seq > after`, ascending, at most `limit`.
    After { after: u64, limit: u32 },
    /// `seq < before`, the `limit` highest, returned ascending.
    Before { before: u64, limit: u32 },
}

/// A user's durable membership of a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub room: String,
    /// The room's highest committed seq.
    pub tip: u64,
    pub last_read: u64,
    pub last_delivered: u64,
    /// Unix milliseconds.
    pub joined_at: i64,
}

impl Membership {
    /// Messages after the read position.
    pub fn unread(&self) -> u64 {
        self.tip.saturating_sub(self.last_read)
    }
}

/// Which per-member position a receipt moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Position {
    Delivered,
    Read,
}

/// Retention: what a trim removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Remove messages older than this many milliseconds.
    pub max_age_ms: Option<u64>,
    /// Keep at most this many of each room's newest messages.
    pub max_count: Option<u64>,
}

/// Durable history. Every method is safe to call concurrently.
#[async_trait]
pub trait HistoryStore: Send + Sync + 'static {
    /// Become the writer of `room`: durably bump its epoch (creating the room row
    /// at epoch 1, last_seq 0, if absent) and return the new epoch with the
    /// room's last committed seq. Every later `append` with an older epoch is
    /// fenced. Two claims never return the same epoch.
    async fn claim_room(&self, room: &str) -> Result<RoomClaim, StoreError>;

    /// Append several rooms' batches in ONE transaction (group commit).
    ///
    /// Per room, in the same transaction: if the room's epoch differs from the
    /// batch's, that room is `Fenced` and none of its messages is written (other
    /// rooms still commit). Otherwise each message whose `(room, sender, cid)` is
    /// already stored (or appears earlier in the batch) is a duplicate and gets the
    /// original's seq/id/ts; every other message gets the next seq after the room's
    /// `last_seq`, consecutive with no gap, and `last_seq` moves to the last one.
    /// The result has one outcome per batch, in order. On `Err` nothing was
    /// written (the whole transaction rolled back).
    async fn append(&self, batches: &[RoomBatch]) -> Result<Vec<RoomOutcome>, StoreError>;

    /// Read committed messages of a room, ascending by seq.
    async fn read(&self, room: &str, range: ReadRange) -> Result<Vec<StoredMessage>, StoreError>;

    /// The last committed seq of each room (0 for unknown rooms), in the order asked.
    async fn tips(&self, rooms: &[String]) -> Result<Vec<u64>, StoreError>;

    /// Make `user` a durable member of `room` (no-op if already one) and return the
    /// membership with the current tip. A new member starts with both positions at
    /// the current tip: messages before joining are not unread.
    async fn join(&self, room: &str, user: &str, now_ms: i64) -> Result<Membership, StoreError>;

    /// End a durable membership; true if there was one.
    async fn leave(&self, room: &str, user: &str) -> Result<bool, StoreError>;

    /// Every room `user` is a member of, with tips, ordered by room.
    async fn memberships(&self, user: &str) -> Result<Vec<Membership>, StoreError>;

    /// The membership of `user` in `room`, if any.
    async fn membership(&self, room: &str, user: &str) -> Result<Option<Membership>, StoreError>;

    /// Move a member's delivered or read position to `seq`, clamped to the room's
    /// tip. Positions are monotonic: a lower value never moves them back. Moving
    /// `Read` also moves `Delivered` to at least the same seq. Returns the new
    /// position if it moved, `None` if it did not (lower or equal, or not a member).
    async fn mark(
        &self,
        room: &str,
        user: &str,
        position: Position,
        seq: u64,
    ) -> Result<Option<u64>, StoreError>;

    /// Delete messages outside the retention policy; returns how many. Never
    /// changes a room's `last_seq` (seqs are never reused).
    async fn trim(&self, retention: Retention, now_ms: i64) -> Result<u64, StoreError>;

    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
}
