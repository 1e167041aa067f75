//! The `Broker` seam: room fan-out between nodes.
//!
//! Implementations: [`memory`] (one node: straight into the hub); the cluster
//! mode adds Redis pub/sub.

pub mod memory;
pub mod redis;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;

use crate::hub::ConnId;

pub use memory::MemoryBroker;

/// A broker that could not take a publish; receivers recover by seq from history.
#[derive(Debug, thiserror::Error)]
#[error("broker unavailable: {0}")]
pub struct BrokerError(pub String);

/// Moves room traffic to every node with local members of the room.
///
/// Contract: batches of one room are published by its single writer in seq order;
/// a node delivers each batch to its local connections in that order. Delivery
/// is best effort (a pub/sub link may drop), so every batch carries its seq range
/// `first..=last` and receivers fill gaps from history; `publish` returning `Ok`
/// means handed over, not delivered.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Publish a room's committed messages (`(seq, msg frame)`, ascending).
    async fn publish(
        &self,
        room: &str,
        first: u64,
        last: u64,
        frames: Vec<(u64, Utf8Bytes)>,
    ) -> Result<(), BrokerError>;

    /// Deliver an ephemeral frame (typing, presence diff, receipts) to every
    /// connection in the room, except `except` on this node.
    async fn broadcast(
        &self,
        room: &str,
        frame: Utf8Bytes,
        except: Option<ConnId>,
    ) -> Result<(), BrokerError>;

    /// A connection of this node joins `room` (it is in the hub already):
    /// make sure this node receives the room. Called on every local join, not
    /// only the first, so it must be cheap when the room is received already.
    ///
    /// All or nothing: `Ok` means the room is subscribed and has a delivery
    /// cursor (every later batch is delivered or its gap filled from history);
    /// `Err` means neither may be relied on, and the caller undoes its join
    /// (which unsubscribes once the room has no local member). A join never
    /// succeeds on a node that cannot hear the room.
    async fn subscribe(&self, room: &str) -> Result<(), BrokerError>;

    /// This node has no local member left in `room`. A member that joins
    /// meanwhile keeps the room received.
    async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError>;
}
