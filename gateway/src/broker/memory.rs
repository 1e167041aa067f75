//! The in-process broker: a bus that the nodes of one process share.
//!
//! The embedded mode's node is alone on its bus: the fan-out delivers its
//! batches locally, and nothing comes back. Several nodes on one bus (the
//! broker contract suite, in-process multi-node tests) hear each other's
//! rooms as they would over Redis, without a network: each node has one
//! bounded receive queue, filled without waiting by the publishers and
//! emptied by the node's `run` in order. A full queue loses what does not
//! fit, and its node is told to resync, like a Redis subscriber that lagged.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tracing::warn;

use super::{Broker, BrokerError, BrokerHandler};
use crate::hub::MsgBatch;
use crate::inbox::InboxHandler;
use crate::shutdown::Shutdown;

/// Items a node's receive queue holds before it loses what comes next (the
/// same as a Redis subscriber's channel).
const RECEIVE_QUEUE: usize = 8_192;

/// What travels on the bus to one node.
enum Event {
    Batch {
        room: Arc<str>,
        first: u64,
        last: u64,
        frames: MsgBatch,
    },
    Ephemeral {
        room: Arc<str>,
        frame: Utf8Bytes,
    },
}

/// A node on the bus.
struct Member {
    /// Its receive queue.
    tx: mpsc::Sender<Event>,
    /// Set when its queue was full and something was lost.
    lagged: Arc<AtomicBool>,
    /// Rooms it subscribed to.
    rooms: HashSet<Arc<str>>,
}

/// The nodes of one process that hear each other.
#[derive(Default)]
pub struct MemoryBus {
    /// Node id -> its queue and rooms. A std Mutex: held for one map
    /// operation (queueing never waits), never across `.await`.
    nodes: Mutex<HashMap<String, Member>>,
}

impl MemoryBus {
    pub fn new() -> Arc<MemoryBus> {
        Arc::new(MemoryBus::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Member>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue `event` for every node but `from` subscribed to `room`.
    fn send(&self, from: &str, room: &str, event: impl Fn(Arc<str>) -> Event) {
        for (node, m) in self.lock().iter() {
            let Some(room) = m.rooms.get(room) else {
                continue;
            };
            if node == from {
                continue;
            }
            match m.tx.try_send(event(room.clone())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => m.lagged.store(true, Ordering::Release),
                // Its node stopped receiving.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

/// One node's broker on a [`MemoryBus`].
pub struct MemoryBroker {
    bus: Arc<MemoryBus>,
    /// This node's id on the bus.
    node: String,
    /// The receive queue, until `run` takes it.
    rx: Mutex<Option<mpsc::Receiver<Event>>>,
    /// Shared with the bus's `Member`: something was lost.
    lagged: Arc<AtomicBool>,
    /// On a bus of its own: no other node publishes to it.
    alone: bool,
}

impl MemoryBroker {
    /// Join `bus` as `node` (an id no other node on the bus has; a second
    /// broker with the same id takes the first one's place).
    pub fn on(bus: &Arc<MemoryBus>, node: &str) -> Arc<MemoryBroker> {
        MemoryBroker::join(bus, node, false)
    }

    /// A node alone on a bus of its own (the embedded mode).
    pub fn alone(node: &str) -> Arc<MemoryBroker> {
        MemoryBroker::join(&MemoryBus::new(), node, true)
    }

    fn join(bus: &Arc<MemoryBus>, node: &str, alone: bool) -> Arc<MemoryBroker> {
        let (tx, rx) = mpsc::channel(RECEIVE_QUEUE);
        let lagged = Arc::new(AtomicBool::new(false));
        bus.lock().insert(
            node.to_owned(),
            Member {
                tx,
                lagged: lagged.clone(),
                rooms: HashSet::new(),
            },
        );
        Arc::new(MemoryBroker {
            bus: bus.clone(),
            node: node.to_owned(),
            rx: Mutex::new(Some(rx)),
            lagged,
            alone,
        })
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        let mut nodes = self.bus.lock();
        // Unless another broker took this id meanwhile.
        if nodes
            .get(&self.node)
            .is_some_and(|m| Arc::ptr_eq(&m.lagged, &self.lagged))
        {
            nodes.remove(&self.node);
        }
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(
        &self,
        room: &str,
        first: u64,
        last: u64,
        frames: &MsgBatch,
    ) -> Result<(), BrokerError> {
        self.bus.send(&self.node, room, |room| Event::Batch {
            room,
            first,
            last,
            frames: frames.clone(),
        });
        Ok(())
    }

    async fn broadcast(&self, room: &str, frame: &Utf8Bytes) -> Result<(), BrokerError> {
        self.bus.send(&self.node, room, |room| Event::Ephemeral {
            room,
            frame: frame.clone(),
        });
        Ok(())
    }

    async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        if let Some(m) = self.bus.lock().get_mut(&self.node) {
            m.rooms.insert(Arc::from(room));
        }
        Ok(())
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError> {
        if let Some(m) = self.bus.lock().get_mut(&self.node) {
            m.rooms.remove(room);
        }
        Ok(())
    }

    fn has_peers(&self) -> bool {
        !self.alone
    }

    fn is_healthy(&self) -> bool {
        true
    }

    /// The bus carries no inbox (the cluster mode's forwarding needs Redis
    /// for ownership anyway): `_inbox` is never called.
    async fn run(
        self: Arc<Self>,
        handler: Arc<dyn BrokerHandler>,
        _inbox: Option<Arc<dyn InboxHandler>>,
        shutdown: Shutdown,
    ) {
        let Some(mut rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            warn!(node = %self.node, "memory broker started twice");
            return;
        };
        loop {
            let event = tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => e,
                    None => break,
                },
                _ = shutdown.cancelled() => break,
            };
            // Set while the queue was full: the queue holds what came before
            // the loss, so it is seen at the latest with the next item.
            if self.lagged.swap(false, Ordering::AcqRel) {
                warn!(node = %self.node, "bus receiver lagged; resyncing");
                handler.on_resync().await;
            }
            match event {
                Event::Batch {
                    room,
                    first,
                    last,
                    frames,
                } => handler.on_batch(&room, first, last, frames).await,
                Event::Ephemeral { room, frame } => handler.on_ephemeral(&room, frame).await,
            }
        }
    }
}
