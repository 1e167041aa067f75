//! The `Broker` seam: the transport of room traffic between nodes.
//!
//! A broker moves bytes and calls back (centrifuge's `Broker` and
//! `BrokerEventHandler`): it does not fill gaps, build frames or look at the
//! hub. Delivery cursors, gap filling from history and the one local delivery
//! live above it in `fanout`, written once for both implementations:
//! [`memory`] (an in-process bus; the embedded mode's node is alone on it) and
//! [`redis`] (pub/sub between the processes of a cluster).

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;

use crate::hub::MsgBatch;
use crate::inbox::InboxHandler;
use crate::shutdown::Shutdown;

pub use memory::{MemoryBroker, MemoryBus};
pub use redis::RedisBroker;

/// A broker that could not take a publish or a subscription; receivers
/// recover by seq from history, a refused join is retried by its client.
#[derive(Debug, thiserror::Error)]
#[error("broker unavailable: {0}")]
pub struct BrokerError(pub String);

/// Moves a room's traffic from the node that has it to every other node
/// subscribed to the room.
///
/// Contract:
/// - Lossy: delivery is best effort (a pub/sub link drops what is published
///   while it is down, a receiver that falls behind loses messages). `Ok`
///   from `publish` or `broadcast` means handed over, not delivered. When
///   anything may have been lost, the broker tells its handler
///   ([`BrokerHandler::on_resync`]); receivers find the rest by seq.
/// - Seq ranges: every batch carries its range `first..=last`, one frame per
///   seq, so a receiver sees a gap at the next batch.
/// - Order: what one node publishes and broadcasts to a room reaches each
///   receiver in the order it was published (and a room's batches are
///   published by its single writer, one at a time, in seq order).
/// - Not to itself: a node never receives its own publishes (the fan-out
///   delivered them locally already).
/// - All or nothing: `subscribe` returning `Ok` means the subscription is
///   made: publishes of the room by any node reach this node's handler from
///   the moment the transport applies it (Redis: once the server has read
///   the SUBSCRIBE, which fred sends without awaiting its confirmation; a
///   publish racing it is lost like any other, and found by seq). `Err`
///   means it may not be, and the caller undoes its join. Subscribing is
///   idempotent (a subscribed room stays subscribed once), and one
///   `unsubscribe` ends it.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// Hand a room's committed batch (`(seq, msg frame)` for `first..=last`,
    /// ascending) to the other nodes subscribed to the room.
    async fn publish(
        &self,
        room: &str,
        first: u64,
        last: u64,
        frames: &MsgBatch,
    ) -> Result<(), BrokerError>;

    /// Hand an ephemeral frame (typing, presence diff, receipts) to the other
    /// nodes subscribed to the room.
    async fn broadcast(&self, room: &str, frame: &Utf8Bytes) -> Result<(), BrokerError>;

    /// Receive `room` from now on (see the contract: all or nothing).
    async fn subscribe(&self, room: &str) -> Result<(), BrokerError>;

    /// Stop receiving `room`.
    async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError>;

    /// Whether the transport is up as far as this node knows (for `/readyz`).
    fn is_healthy(&self) -> bool;
    /// Whether other nodes may publish to this one. A node alone on its
    /// transport receives only what it published itself (nothing to lose,
    /// so the fan-out's tip check has nothing to find and does not run).
    fn has_peers(&self) -> bool {
        true
    }

    /// Receive: hand every batch and ephemeral frame of the subscribed rooms
    /// to `handler`, one at a time in the order received, until `shutdown`
    /// begins. A broker that carries this node's inbox (`inbox`; Redis does)
    /// hands its messages to `inbox`, in the same loop. Started once per broker.
    async fn run(
        self: Arc<Self>,
        handler: Arc<dyn BrokerHandler>,
        inbox: Option<Arc<dyn InboxHandler>>,
        shutdown: Shutdown,
    );
}

/// What a broker hands over of what it receives from other nodes (the
/// fan-out implements it; the contract suite records it).
#[async_trait]
pub trait BrokerHandler: Send + Sync + 'static {
    /// A committed batch of a subscribed room: `frames` holds `(seq, frame)`
    /// for `first..=last`, ascending, as published.
    async fn on_batch(&self, room: &str, first: u64, last: u64, frames: MsgBatch);

    /// An ephemeral frame for a subscribed room's connections.
    async fn on_ephemeral(&self, room: &str, frame: Utf8Bytes);

    /// Anything may be missing from any subscribed room: the link was lost
    /// and is back (subscriptions restored), or the receiver lagged and
    /// dropped messages.
    async fn on_resync(&self);
}
