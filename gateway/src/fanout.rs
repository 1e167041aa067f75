//! The fan-out: a room's traffic between the writer, the broker and the hub,
//! written once for both modes.
//!
//! It owns, per room this node receives, a delivery cursor (the last seq
//! handed to the hub). Publishing delivers to the local connections first (the
//! one local delivery, no broker round trip), then hands the batch to the
//! broker for the other nodes. What the broker brings from other nodes
//! ([`BrokerHandler`]) is checked against the cursor: a batch that starts past
//! it is preceded by the missing range read from history, an old one is
//! dropped, and a periodic tip check (and every resync the broker asks for)
//! finds losses at the end of a burst. Connections de-duplicate by seq, so an
//! overlap costs nothing but bytes.
//!
//! Joining and leaving a room are one operation each here: the hub and the
//! broker subscription together, undone together when the subscription fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use chorus_history::{HistoryStore, ReadRange, StoreError};
use chorus_protocol::ServerFrame;
use tracing::{debug, warn};

use crate::broker::{Broker, BrokerError, BrokerHandler};
use crate::hub::{ConnHandle, ConnId, Hub, MsgBatch};
use crate::names::public_name;
use crate::shutdown::Shutdown;
use crate::wire::{msg_frame, to_message};

/// Messages read from history per page when filling a gap.
const FILL_PAGE: u32 = 500;

/// Largest gap (in frame bytes) this node fills by queueing the frames on its
/// connections; larger gaps are announced as a tip instead.
const FILL_INLINE_BYTES: usize = 256 * 1024;

/// What this node delivered of a room it receives.
struct Feed {
    /// Highest seq handed to the hub.
    last: u64,
    /// When `last` last moved (a tip check leaves fresh rooms alone: their
    /// batches may be in flight).
    moved: Instant,
}

/// Why a join could not make this node receive the room.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The room's tip, where its cursor starts, could not be read.
    #[error("reading the room's tip: {0}")]
    History(#[from] StoreError),
}

/// The fan-out of one node.
pub struct FanOut {
    /// Local connections per room.
    hub: Arc<Hub>,
    /// Where gaps are filled from.
    store: Arc<dyn HistoryStore>,
    /// The transport to and from the other nodes.
    broker: Arc<dyn Broker>,
    /// Received room -> delivery cursor. A std Mutex: one map operation at a
    /// time, never held across `.await`.
    feeds: Mutex<HashMap<String, Feed>>,
    /// Held by each batch received, resync and tip check for its whole run
    /// (history reads included): one at a time, as the broker hands them
    /// over, so that two of them never fill the same range. A tokio Mutex
    /// because it is held across `.await`; publishing does not take it.
    receiving: tokio::sync::Mutex<()>,
    /// Ends the tip check; tracks the unsubscribes after refused joins.
    shutdown: Shutdown,
}

impl FanOut {
    pub fn new(
        hub: Arc<Hub>,
        store: Arc<dyn HistoryStore>,
        broker: Arc<dyn Broker>,
        shutdown: &Shutdown,
    ) -> Arc<FanOut> {
        Arc::new(FanOut {
            hub,
            store,
            broker,
            feeds: Mutex::new(HashMap::new()),
            receiving: tokio::sync::Mutex::new(()),
            shutdown: shutdown.clone(),
        })
    }

    /// The transport (to start its receive loop, to ask if it is up).
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Feed>> {
        self.feeds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Record that `room` was delivered up to `seq` (only forward).
    fn advance(&self, room: &str, seq: u64) {
        if let Some(f) = self.lock().get_mut(room)
            && seq > f.last
        {
            f.last = seq;
            f.moved = Instant::now();
        }
    }

    /// The tip check: every `tip_poll`, fill the received rooms that are
    /// behind their tip and have been quiet that long. Ends when the shutdown
    /// begins.
    pub async fn run(self: Arc<Self>, tip_poll: Duration) {
        let mut tick = tokio::time::interval(tip_poll);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let _one = self.receiving.lock().await;
                    self.check_tips(tip_poll).await;
                }
                _ = self.shutdown.cancelled() => break,
            }
        }
    }

    /// Publish a room's committed messages (`(seq, msg frame)` for
    /// `first..=last`, ascending): to this node's connections, then through
    /// the broker to the other nodes. `Err`: the other nodes may not get it
    /// (they find the gap by seq); the local delivery happened.
    pub async fn publish(
        &self,
        room: &str,
        first: u64,
        last: u64,
        frames: Vec<(u64, Utf8Bytes)>,
    ) -> Result<(), BrokerError> {
        let frames: MsgBatch = frames.into();
        // Local members first (no broker round trip), then everyone else.
        self.hub.deliver(room, frames.clone());
        self.advance(room, last);
        self.broker.publish(room, first, last, &frames).await
    }

    /// Deliver an ephemeral frame (typing, presence diff, receipts) to every
    /// connection in the room, on this node except `except`, and on the others.
    pub async fn broadcast(
        &self,
        room: &str,
        frame: Utf8Bytes,
        except: Option<ConnId>,
    ) -> Result<(), BrokerError> {
        self.hub.broadcast(room, &frame, except);
        self.broker.broadcast(room, &frame).await
    }

    /// Encode a frame once and [`broadcast`](Self::broadcast) it; a broker
    /// failure is logged (ephemeral frames are not retried).
    pub async fn announce(&self, room: &str, frame: &ServerFrame, except: Option<ConnId>) {
        let bytes = Utf8Bytes::from(frame.encode());
        if let Err(e) = self.broadcast(room, bytes, except).await {
            warn!(%room, error = %e, "broadcast failed");
        }
    }

    /// A connection of this node joins `room`: into the hub, and this node
    /// receives the room. Returns the hub's interned room key.
    ///
    /// All or nothing: `Ok` means the room is subscribed and has a delivery
    /// cursor (every later batch is delivered or its gap filled from
    /// history); `Err` means the connection is out of the hub again, and the
    /// room unsubscribed if it has no other local member. Done on every
    /// join, not only the room's first here, so it is cheap when the room is
    /// received already. A join never succeeds on a node that cannot hear
    /// the room.
    pub async fn join(
        self: &Arc<Self>,
        room: &str,
        conn: ConnHandle,
    ) -> Result<Arc<str>, JoinError> {
        let id = conn.id;
        let (key, _first) = self.hub.subscribe(room, conn);
        let Err(e) = self.subscribe(&key).await else {
            return Ok(key);
        };
        warn!(room = %key, error = %e, "subscribe failed; join refused");
        if self.hub.unsubscribe(&key, id) {
            // The broker is likely away: answer now rather than after the
            // unsubscribe's command timeout. The room stays subscribed if a
            // member joins meanwhile (see `unsubscribe`).
            let (this, room) = (self.clone(), key.clone());
            self.shutdown.spawn(async move {
                if let Err(e) = this.unsubscribe(&room).await {
                    debug!(%room, error = %e, "unsubscribe after a refused join failed");
                }
            });
        }
        Err(e)
    }

    /// A connection of this node leaves `room`: out of the hub; the last
    /// local member out ends the subscription and the cursor.
    pub async fn leave(&self, room: &str, conn: ConnId) {
        if self.hub.unsubscribe(room, conn)
            && let Err(e) = self.unsubscribe(room).await
        {
            warn!(%room, error = %e, "unsubscribe failed");
        }
    }

    /// Make sure this node receives `room` (it has a local member already).
    async fn subscribe(&self, room: &str) -> Result<(), JoinError> {
        if self.lock().contains_key(room) {
            return Ok(()); // subscribed, with a cursor
        }
        self.broker.subscribe(room).await?;
        // Everything committed before the subscription is in history: start the
        // cursor at the tip so a later gap is measured from there. Without a
        // cursor, batches of the room are dropped and tip checks skip it, so
        // a failure here fails the join (the caller unsubscribes).
        let tip = self
            .store
            .tips(&[room.to_owned()])
            .await?
            .first()
            .copied()
            .unwrap_or(0);
        self.lock().entry(room.to_owned()).or_insert(Feed {
            last: tip,
            moved: Instant::now(),
        });
        Ok(())
    }

    /// This node has no local member left in `room`. A member that joins
    /// meanwhile keeps the room received.
    async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError> {
        {
            // Checked and removed under the map's lock: a join that finds the
            // cursor (and so skips subscribing) is in the hub before it looks,
            // so it is seen here and the room stays subscribed.
            let mut feeds = self.lock();
            if self.hub.local_members(room) > 0 {
                return Ok(()); // a member joined meanwhile: stay subscribed
            }
            feeds.remove(room);
        }
        let result = self.broker.unsubscribe(room).await;
        // A join that came in after the check subscribed on its own; its
        // subscription may have reached the broker before this unsubscribe.
        // Put it back (subscribing twice is harmless).
        if self.hub.local_members(room) > 0
            && let Err(e) = self.broker.subscribe(room).await
        {
            warn!(%room, error = %e, "re-subscribing after a racing unsubscribe failed");
        }
        result
    }

    /// A batch from another node: fill the gap before it, skip what was
    /// delivered, deliver the rest.
    async fn receive(&self, room: &str, first: u64, last: u64, frames: MsgBatch) {
        let Some(known) = self.lock().get(room).map(|f| f.last) else {
            return; // not subscribed (any more)
        };
        if last <= known {
            return;
        }
        if first > known + 1 {
            metrics::counter!("chorus_gap_fills_total", "level" => "node").increment(1);
            if !self.fill(room, known, first - 1).await {
                // History unreachable: deliver what arrived; connections see the
                // gap and fill it themselves (or close 4006 and resume later).
                warn!(%room, from = known + 1, to = first - 1, "could not fill gap");
            }
        }
        let skip = self
            .lock()
            .get(room)
            .map(|f| f.last)
            .unwrap_or(known)
            .saturating_sub(first - 1) as usize;
        let batch: MsgBatch = match skip {
            0 => frames,
            n => frames.get(n..).unwrap_or_default().into(),
        };
        if !batch.is_empty() {
            self.hub.deliver(room, batch);
        }
        self.advance(room, last);
    }

    /// Deliver `from+1..=to` of a room from history. False if the store failed.
    async fn fill(&self, room: &str, from: u64, to: u64) -> bool {
        let public = public_name(room).to_owned();
        let mut after = from;
        while after < to {
            let page = match self
                .store
                .read(
                    room,
                    ReadRange::After {
                        after,
                        limit: FILL_PAGE,
                    },
                )
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    warn!(%room, error = %e, "reading history to fill a gap failed");
                    return false;
                }
            };
            let batch: MsgBatch = page
                .into_iter()
                .take_while(|m| m.seq <= to)
                .map(|m| (m.seq, msg_frame(to_message(&public, m))))
                .collect();
            let Some(&(top, _)) = batch.last() else {
                break; // trimmed: nothing more to fill
            };
            let bytes: usize = batch.iter().map(|(_, f)| f.len()).sum();
            if after != from || top < to || bytes > FILL_INLINE_BYTES {
                // Too large to queue on every connection at once (it could
                // exceed their byte budgets and close them all as slow): each
                // connection behind the tip reads the rest itself, paced by its
                // own socket.
                self.hub.announce_tip(room, to);
                break;
            }
            self.hub.deliver(room, batch);
            self.advance(room, top);
            after = top;
        }
        self.advance(room, to);
        true
    }

    /// Compare received rooms' tips with what was delivered; fill rooms that
    /// are behind and have been quiet for at least `quiet`.
    async fn check_tips(&self, quiet: Duration) {
        let rooms: Vec<(String, u64)> = self
            .lock()
            .iter()
            .filter(|(_, f)| f.moved.elapsed() >= quiet)
            .map(|(r, f)| (r.clone(), f.last))
            .collect();
        if rooms.is_empty() {
            return;
        }
        let names: Vec<String> = rooms.iter().map(|(r, _)| r.clone()).collect();
        let tips = match self.store.tips(&names).await {
            Ok(t) => t,
            Err(e) => {
                debug!(error = %e, "tip check failed");
                return;
            }
        };
        for ((room, last), tip) in rooms.into_iter().zip(tips) {
            if tip > last {
                metrics::counter!("chorus_gap_fills_total", "level" => "tip").increment(1);
                self.fill(&room, last, tip).await;
            }
        }
    }
}

#[async_trait]
impl BrokerHandler for FanOut {
    async fn on_batch(&self, room: &str, first: u64, last: u64, frames: MsgBatch) {
        let _one = self.receiving.lock().await;
        self.receive(room, first, last, frames).await;
    }

    async fn on_ephemeral(&self, room: &str, frame: Utf8Bytes) {
        self.hub.broadcast(room, &frame, None);
    }

    async fn on_resync(&self) {
        let _one = self.receiving.lock().await;
        self.check_tips(Duration::ZERO).await;
    }
}
