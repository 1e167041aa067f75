//! The node's connections: how many are open, each user's share of them, and
//! their ids. A connection is counted once its `hello` authenticated (the
//! listener bounds the ones still pending).

use std::sync::atomic::{AtomicU64, Ordering};

use chorus_protocol::CloseCode;
use dashmap::DashMap;

use crate::hub::ConnId;

/// Open connections of one node, bounded in all and per user.
pub(crate) struct Connections {
    max: u64,
    max_per_user: u64,
    /// User key -> open connections on this node.
    per_user: DashMap<String, u64>,
    open: AtomicU64,
    next_id: AtomicU64,
}

impl Connections {
    /// At most `max` connections, `max_per_user` of them for one user.
    pub(crate) fn new(max: u64, max_per_user: u64) -> Connections {
        Connections {
            max,
            max_per_user,
            per_user: DashMap::new(),
            open: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        }
    }

    /// A fresh connection id.
    pub(crate) fn next_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Open connections on this node.
    pub(crate) fn count(&self) -> u64 {
        self.open.load(Ordering::Acquire)
    }

    /// Count a new connection of `user_key`, or the close code refusing it: a full
    /// node is worth retrying (elsewhere), a user over their limit is not.
    pub(crate) fn admit(&self, user_key: &str) -> Result<(), CloseCode> {
        if self.count() >= self.max {
            return Err(CloseCode::Unavailable);
        }
        let mut n = self.per_user.entry(user_key.to_owned()).or_insert(0);
        if *n >= self.max_per_user {
            return Err(CloseCode::TooManyConnections);
        }
        *n += 1;
        self.open.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("chorus_connections").set(self.count() as f64);
        Ok(())
    }

    /// Undo `admit`.
    pub(crate) fn release(&self, user_key: &str) {
        if let Some(mut n) = self.per_user.get_mut(user_key) {
            *n = n.saturating_sub(1);
        }
        self.per_user.remove_if(user_key, |_, n| *n == 0);
        self.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("chorus_connections").set(self.count() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_the_node_and_each_user() {
        let c = Connections::new(3, 2);
        assert_eq!(c.admit("a"), Ok(()));
        assert_eq!(c.admit("a"), Ok(()));
        assert_eq!(c.admit("a"), Err(CloseCode::TooManyConnections));
        assert_eq!(c.admit("b"), Ok(()));
        assert_eq!(c.admit("c"), Err(CloseCode::Unavailable));
        c.release("a");
        assert_eq!(c.count(), 2);
        assert_eq!(c.admit("c"), Ok(()));
        assert_ne!(c.next_id(), c.next_id());
    }
}
