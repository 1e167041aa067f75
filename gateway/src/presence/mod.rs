//! The `Presence` seam: who is connected where, per room and per user.
//!
//! Entries are per session (a connection, kept across resumes). A user is online
//! in a room while any of their sessions is in it. Implementations: [`memory`]
//! (one node, nothing expires) and [`redis`] (cluster mode: entries shared by
//! every node, expiring unless their node's heartbeat refreshes them); both pass
//! `contract` (feature `contract`), the behaviour suite written from the trait.
//!
//! The seam also holds each session's resume bookkeeping (its attach
//! generation and its rooms), so a session that reconnects to another node
//! settles against the same state its previous node left.

#[cfg(feature = "contract")]
pub mod contract;
pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use chorus_protocol::{DeviceInfo, PresenceUser};
use serde::{Deserialize, Serialize};

pub use memory::MemoryPresence;
pub use redis::RedisPresence;

/// One session's presence entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub session: String,
    /// Public user id.
    pub user: String,
    /// Tenant-namespaced user key.
    pub user_key: String,
    pub device: String,
    pub node: String,
    /// Unix milliseconds.
    pub since: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<serde_json::Value>,
}

impl PresenceEntry {
    pub fn device_info(&self) -> DeviceInfo {
        DeviceInfo {
            device: self.device.clone(),
            node: self.node.clone(),
            since: self.since,
            meta: self.meta.clone(),
        }
    }
}

/// A user's devices with the rooms each is in (room keys).
#[derive(Debug, Clone, PartialEq)]
pub struct UserDevice {
    pub info: DeviceInfo,
    pub rooms: Vec<String>,
}

/// What a node knows of one session it holds (a live connection, or one in its
/// presence grace period), handed to [`Presence::refresh`] on every heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSession {
    /// The entry the session was attached with.
    pub entry: PresenceEntry,
    /// The generation `attach` returned for the connection this node holds.
    pub generation: u64,
    /// Rooms (keys) that connection is in.
    pub rooms: Vec<String>,
}

/// A session that `refresh` put back into a room its user was absent from
/// (after its entries expired and were swept, or were lost with a Redis
/// restart): the node announces the user as joined again.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rejoined {
    pub room: String,
    pub session: String,
}

/// Presence errors are retryable by nature (a backend that is away).
#[derive(Debug, thiserror::Error)]
#[error("presence unavailable: {0}")]
pub struct PresenceError(pub String);

/// Where presence lives.
///
/// Contract, for every implementation:
/// - **Sessions and generations.** `attach` registers a session (or replaces
///   the entry of a known one, keeping its rooms) and returns a generation
///   that is greater than every generation the session had while it was
///   known. Generations are compared for equality only: `settle` and
///   `expire_if` act only when called with the newest one, so a connection that
///   was superseded by a resume (on this node or another) cannot undo it.
/// - **User-level transitions, exactly once.** `join` reports the user coming
///   online in a room (no session of theirs was in it); `leave`, `settle`,
///   `expire_if` and `sweep` report the user going offline (their last session
///   left). Each operation is atomic, so across all callers on all nodes the
///   reports for one (room, user) alternate: online, offline, online, ... and a
///   node that broadcasts what it is told sends each presence diff exactly
///   once. (`refresh` reports re-joins after an expiry; a backend that lost its
///   data, a Redis restarted empty, cannot report the leaves it forgot.)
/// - **Expiry.** An implementation with expiry ([`RedisPresence`]) drops a
///   session from every query once `ttl` passed since the last `attach`,
///   `join` or `refresh` that covered it, with no node's help; the users that
///   went offline that way are handed out by `sweep`. Nodes call `refresh`
///   with all their sessions every [`Presence::refresh_interval`].
/// - **Queries** (`room`, `user`, `session`) see only live sessions.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Register a session's connection (new, or a resume on any node) and return
    /// its generation. A known session keeps its rooms: it stays present in them
    /// until `settle` says which ones the new connection took back.
    async fn attach(&self, entry: PresenceEntry) -> Result<u64, PresenceError>;

    /// Put an attached session in a room; true if its user was not in the room
    /// before (came online). An unknown session is an error.
    async fn join(&self, room: &str, session: &str) -> Result<bool, PresenceError>;

    /// Take a session out of a room; true if its user is no longer in the room
    /// (went offline). A session that is unknown or not in the room: false.
    async fn leave(&self, room: &str, session: &str) -> Result<bool, PresenceError>;

    /// A resumed connection (of `generation`) finished re-joining `rooms`: the
    /// session leaves every other room it was in. Returns the rooms where its
    /// user went offline. No-op (empty) unless `generation` is still the
    /// session's newest.
    async fn settle(
        &self,
        session: &str,
        generation: u64,
        rooms: &[String],
    ) -> Result<Vec<String>, PresenceError>;

    /// The grace period after a connection of `generation` ended ran out: if no
    /// newer connection attached meanwhile, remove the session everywhere and
    /// return `Some(rooms where its user went offline)`; otherwise (superseded
    /// or unknown) change nothing and return `None`.
    async fn expire_if(
        &self,
        session: &str,
        generation: u64,
    ) -> Result<Option<Vec<String>>, PresenceError>;

    /// Heartbeat: extend the expiry of the sessions this node holds, and put back
    /// whatever of them is missing (expired during a stall, or lost by a backend
    /// restart), unless a newer generation of the session attached elsewhere or
    /// the session was expired by `expire_if`. Returns where users came back.
    /// Never removes rooms: rooms a resumed session has not settled yet stay.
    async fn refresh(&self, live: &[LiveSession]) -> Result<Vec<Rejoined>, PresenceError>;

    /// Users (public ids) of a room whose every session expired: removed from the
    /// room atomically and returned, each to exactly one caller on any node.
    async fn sweep(&self, room: &str) -> Result<Vec<String>, PresenceError>;

    /// How often nodes must call `refresh` (and `sweep` their rooms); `None`
    /// when entries never expire.
    fn refresh_interval(&self) -> Option<Duration>;

    /// Users online in a room, with their devices (ordered by session id),
    /// sorted by user.
    async fn room(&self, room: &str) -> Result<Vec<PresenceUser>, PresenceError>;

    /// How many users `room` would list, without listing them.
    async fn room_count(&self, room: &str) -> Result<u64, PresenceError>;

    /// A user's devices (by user key), ordered by session id, each with its
    /// rooms sorted.
    async fn user(&self, user_key: &str) -> Result<Vec<UserDevice>, PresenceError>;

    /// The entry of one session, if attached and live.
    async fn session(&self, session: &str) -> Result<Option<PresenceEntry>, PresenceError>;
}
