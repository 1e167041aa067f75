//! Cluster mode's Redis side that is not a seam: the Redis clients' settings
//! (`client`), room ownership leases (`ownership`), and the parts a node holds
//! only in cluster mode. The seams' Redis implementations live beside their
//! traits (`broker::redis`, which also carries the `inbox`; `presence::redis`;
//! the send limits' buckets in `ratelimit`), built on these clients.

pub(crate) mod client;
pub(crate) mod ownership;

use std::sync::Arc;

use crate::inbox::Inbox;
use ownership::Ownership;

/// Rooms taken anew that the writer has not yet re-claimed, at most (beyond,
/// the store's fence answers for them: see `Ownership`).
pub(crate) const RECLAIM_QUEUE: usize = 4_096;

/// The cluster-mode parts of a node.
pub(crate) struct ClusterParts {
    /// Other nodes' inboxes (the Redis broker): where sends are forwarded.
    pub inbox: Arc<dyn Inbox>,
    pub ownership: Arc<Ownership>,
    /// Redis command client of the send limits: a connection of its own, so a
    /// send's limit check never queues behind fan-out publishes.
    pub limits_client: fred::prelude::Client,
}
