//! The `Presence` seam: who is connected where, per room and per user.
//!
//! Entries are per session (a connection, kept across resumes). A user is online
//! in a room while any of their sessions is in it. Implementations: [`memory`]
//! (one node); the cluster mode adds a Redis one with expiry.

pub mod memory;

use async_trait::async_trait;
use chorus_protocol::{DeviceInfo, PresenceUser};

pub use memory::MemoryPresence;

/// One session's presence entry.
#[derive(Debug, Clone, PartialEq)]
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

/// Presence errors are retryable by nature (a backend that is away).
#[derive(Debug, thiserror::Error)]
#[error("presence unavailable: {0}")]
pub struct PresenceError(pub String);

/// Where presence lives.
///
/// Contract: `connect` before any `join` of that session; `join`/`leave` report
/// user-level transitions (first session of a user entering a room, last one
/// leaving) so the caller can broadcast diffs exactly once per transition;
/// `disconnect` removes the session from every room and returns the rooms where
/// its user went offline.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Register (or refresh, on resume) a session.
    async fn connect(&self, entry: PresenceEntry) -> Result<(), PresenceError>;
    /// Put a session in a room; true if its user was not in the room before.
    async fn join(&self, room: &str, session: &str) -> Result<bool, PresenceError>;
    /// Take a session out of a room; true if its user is no longer in the room.
    async fn leave(&self, room: &str, session: &str) -> Result<bool, PresenceError>;
    /// Remove a session everywhere; the rooms (keys) where its user went offline.
    async fn disconnect(&self, session: &str) -> Result<Vec<String>, PresenceError>;
    /// Users online in a room, with their devices, sorted by user.
    async fn room(&self, room: &str) -> Result<Vec<PresenceUser>, PresenceError>;
    /// A user's devices (by user key).
    async fn user(&self, user_key: &str) -> Result<Vec<UserDevice>, PresenceError>;
    /// The entry of one session, if connected.
    async fn session(&self, session: &str) -> Result<Option<PresenceEntry>, PresenceError>;
}
