//! Read receipts: a member's `read` / `delivered` position stored, then
//! coalesced per room and user and broadcast to the room every
//! `--receipt-interval-ms` (and once more at the drain).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_history::{HistoryStore, Position, StoreError};
use chorus_protocol::{Receipt, ServerFrame};

use crate::fanout::FanOut;
use crate::names::public_name;
use crate::shutdown::Shutdown;

/// The receipts of one node.
pub(crate) struct Receipts {
    store: Arc<dyn HistoryStore>,
    fanout: Arc<FanOut>,
    interval: Duration,
    shutdown: Shutdown,
    /// Room key -> user -> coalesced positions waiting for the next broadcast.
    /// A std Mutex: touched briefly, never across `.await`.
    pending: Mutex<HashMap<String, HashMap<String, Receipt>>>,
}

impl Receipts {
    pub(crate) fn new(
        store: Arc<dyn HistoryStore>,
        fanout: Arc<FanOut>,
        interval: Duration,
        shutdown: &Shutdown,
    ) -> Arc<Receipts> {
        Arc::new(Receipts {
            store,
            fanout,
            interval: interval.max(Duration::from_millis(1)),
            shutdown: shutdown.clone(),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Start the broadcast loop on the node's shutdown.
    pub(crate) fn start(self: &Arc<Self>) {
        self.shutdown.spawn(self.clone().run());
    }

    /// Persist a receipt position and queue it for the room's coalesced broadcast.
    pub(crate) async fn mark(
        &self,
        room: &str,
        user: &str,
        user_key: &str,
        position: Position,
        seq: u64,
    ) -> Result<(), StoreError> {
        let Some(moved) = self.store.mark(room, user_key, position, seq).await? else {
            return Ok(());
        };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let r = pending
            .entry(room.to_owned())
            .or_default()
            .entry(user.to_owned())
            .or_insert_with(|| Receipt {
                user: user.to_owned(),
                read: None,
                delivered: None,
            });
        match position {
            // Read implies delivered. The stored delivered position may be higher
            // than `moved`; clients keep the maximum they have seen (PROTOCOL.md 6.7).
            Position::Read => {
                r.read = Some(r.read.unwrap_or(0).max(moved));
                r.delivered = Some(r.delivered.unwrap_or(0).max(moved));
            }
            Position::Delivered => r.delivered = Some(r.delivered.unwrap_or(0).max(moved)),
        }
        Ok(())
    }

    /// Broadcast what is pending, one `receipt` frame per room.
    pub(crate) async fn flush(&self) {
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for (room, users) in pending {
            let frame = ServerFrame::Receipt {
                room: public_name(&room).to_owned(),
                receipts: users.into_values().collect(),
            };
            self.fanout.announce(&room, &frame, None).await;
        }
    }

    /// Broadcast coalesced receipts every interval until the drain starts
    /// (the drain flushes once more itself).
    async fn run(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = tick.tick() => self.flush().await,
                _ = self.shutdown.cancelled() => break,
            }
        }
    }
}
