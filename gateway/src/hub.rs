//! The hub: which local connections are in which room, and fan-out to them.
//!
//! Frames arrive already serialised; the hub hands the same bytes to every
//! connection (a reference-count increment each). Each connection has one bounded
//! queue: a full queue marks the connection slow and closes it (4002); the hub
//! never waits on a connection, so one slow reader cannot slow a room.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use axum::extract::ws::Utf8Bytes;
use chorus_protocol::CloseCode;
use dashmap::DashMap;
use tokio::sync::{Notify, mpsc};

/// Process-unique connection id.
pub type ConnId = u64;

/// One queued outbound item.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame delivered as is (presence, typing, receipts).
    Frame(Utf8Bytes),
    /// A room message: the connection filters by seq (de-duplication, gap fill).
    Msg {
        room: Arc<str>,
        seq: u64,
        frame: Utf8Bytes,
    },
}

/// Lets other tasks tell a connection to close with a code.
#[derive(Debug, Default)]
pub struct Kill {
    code: AtomicU16,
    notify: Notify,
}

impl Kill {
    /// Ask the connection to close; the first code wins.
    pub fn kill(&self, code: CloseCode) {
        if self
            .code
            .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    /// The code asked for, if any.
    pub fn requested(&self) -> Option<CloseCode> {
        CloseCode::from_code(self.code.load(Ordering::Acquire))
    }

    /// Resolves once `kill` has been called.
    pub async fn wait(&self) -> CloseCode {
        loop {
            if let Some(c) = self.requested() {
                return c;
            }
            self.notify.notified().await;
        }
    }
}

/// A connection as the hub sees it: where to queue frames and how to stop it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    pub tx: mpsc::Sender<Outbound>,
    pub kill: Arc<Kill>,
}

impl ConnHandle {
    /// Queue without waiting; a full queue closes the connection as slow.
    pub fn offer(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("chorus_slow_consumer_closes_total").increment(1);
                self.kill.kill(CloseCode::SlowConsumer);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// Room key -> local connections in it.
///
/// DashMap shards the map so joins in one room do not contend with fan-out in
/// another; a shard lock is held only while queueing (`try_send`, never awaits).
#[derive(Debug, Default)]
pub struct Hub {
    rooms: DashMap<Arc<str>, HashMap<ConnId, ConnHandle>>,
}

impl Hub {
    /// Add a connection to a room; returns the interned room key and whether the
    /// room had no local connection before (the node should subscribe to it).
    pub fn subscribe(&self, room: &str, conn: ConnHandle) -> (Arc<str>, bool) {
        if let Some(mut entry) = self.rooms.get_mut(room) {
            let key = entry.key().clone();
            entry.insert(conn.id, conn);
            return (key, false);
        }
        let key: Arc<str> = Arc::from(room);
        let mut first = false;
        self.rooms
            .entry(key.clone())
            .or_insert_with(|| {
                first = true;
                HashMap::new()
            })
            .insert(conn.id, conn);
        (key, first)
    }

    /// Remove a connection from a room; returns true if the room has no local
    /// connection left (the node may unsubscribe).
    pub fn unsubscribe(&self, room: &str, conn: ConnId) -> bool {
        let mut empty = false;
        if let Some(mut entry) = self.rooms.get_mut(room) {
            entry.remove(&conn);
            empty = entry.is_empty();
        }
        if empty {
            // Re-check under the entry lock: a join may have raced in.
            self.rooms.remove_if(room, |_, conns| conns.is_empty());
        }
        empty
    }

    /// Deliver a room's messages, in seq order, to every local connection in it.
    pub fn deliver(&self, room: &str, msgs: &[(u64, Utf8Bytes)]) -> usize {
        let Some(entry) = self.rooms.get(room) else {
            return 0;
        };
        let key = entry.key().clone();
        let mut delivered = 0;
        for conn in entry.values() {
            for (seq, frame) in msgs {
                if !conn.offer(Outbound::Msg {
                    room: key.clone(),
                    seq: *seq,
                    frame: frame.clone(),
                }) {
                    break;
                }
                delivered += 1;
            }
        }
        metrics::counter!("chorus_deliveries_total").increment(delivered as u64);
        delivered
    }

    /// Queue a frame to every local connection in a room, except `except`.
    pub fn broadcast(&self, room: &str, frame: &Utf8Bytes, except: Option<ConnId>) {
        if let Some(entry) = self.rooms.get(room) {
            for conn in entry.values() {
                if Some(conn.id) != except {
                    conn.offer(Outbound::Frame(frame.clone()));
                }
            }
        }
    }

    /// How many local connections a room has.
    pub fn local_members(&self, room: &str) -> usize {
        self.rooms.get(room).map(|e| e.len()).unwrap_or(0)
    }

    /// Rooms with at least one local connection.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: ConnId, cap: usize) -> (ConnHandle, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(cap);
        (
            ConnHandle {
                id,
                tx,
                kill: Arc::new(Kill::default()),
            },
            rx,
        )
    }

    #[tokio::test]
    async fn deliver_reaches_members_in_order_and_full_queue_kills() {
        let hub = Hub::default();
        let (a, mut ra) = conn(1, 8);
        let (b, _rb) = conn(2, 1);
        assert!(hub.subscribe("r", a.clone()).1);
        assert!(!hub.subscribe("r", b.clone()).1);
        let msgs: Vec<(u64, Utf8Bytes)> = (1..=3)
            .map(|s| (s, Utf8Bytes::from(format!("m{s}"))))
            .collect();
        hub.deliver("r", &msgs);
        for s in 1..=3 {
            match ra.recv().await.unwrap() {
                Outbound::Msg { seq, .. } => assert_eq!(seq, s),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(b.kill.requested(), Some(CloseCode::SlowConsumer));
        assert_eq!(a.kill.requested(), None);
        assert!(!hub.unsubscribe("r", 1));
        assert!(hub.unsubscribe("r", 2));
        assert_eq!(hub.room_count(), 0);
    }
}
