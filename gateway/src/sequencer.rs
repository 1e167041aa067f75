//! The room writer: sequences sends of the rooms this node owns, commits them in
//! groups, publishes each committed batch once, then acks.
//!
//! One task owns every room's writer state (its fencing epoch): no lock, and a
//! single commit in flight, so seqs are published in commit order. While a commit
//! runs, new sends queue up and form the next group: batching grows with load
//! and costs no latency when idle.
//!
//! Order per group: claim unknown rooms (bump the durable epoch) -> one
//! transaction for every room's batch, epoch-checked per room -> publish each
//! room's new messages (serialised once) -> ack every sender. A sender is acked
//! only after its message is committed; a fenced room's senders get `not_owner`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use chorus_history::{HistoryStore, NewMessage, RoomBatch, RoomOutcome, StoreError};
use chorus_protocol::Message;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::clock::now_ms;
use crate::fanout::FanOut;
use crate::names::public_name;
use crate::send::{Acked, Reply, SendError, SendRequest};
use crate::shutdown::Shutdown;
use crate::wire::msg_frame;

/// Told the room of a fenced batch (cluster mode: forget the room's owner).
pub(crate) type OnFenced = Arc<dyn Fn(&str) + Send + Sync>;

/// Handle to the writer task.
#[derive(Clone)]
pub(crate) struct Sequencer {
    tx: mpsc::Sender<(SendRequest, Reply)>,
}

/// Tuning of the writer.
#[derive(Clone)]
pub(crate) struct SequencerConfig {
    /// Most messages per group commit.
    pub batch_max: usize,
    /// Pending sends before new ones are refused with `unavailable`.
    pub queue: usize,
    /// Forget (and later re-claim) rooms idle this long, bounding the epoch map.
    pub idle_room: Duration,
    /// Called with a room whose batch was fenced (another node writes it now).
    pub on_fenced: Option<OnFenced>,
}

impl Sequencer {
    /// Start the writer. It exits after `shutdown` begins and the queue is
    /// drained (every queued send gets its ack or error), or when every handle is gone.
    ///
    /// `reclaims` (cluster mode) names rooms whose epoch must be claimed again
    /// before the next commit there: this node took the room anew (see
    /// `ownership`). Each is applied before any send queued after it.
    pub(crate) fn spawn(
        cfg: SequencerConfig,
        store: Arc<dyn HistoryStore>,
        fanout: Arc<FanOut>,
        reclaims: Option<mpsc::Receiver<String>>,
        shutdown: &Shutdown,
    ) -> (Sequencer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(cfg.queue);
        let writer = Writer {
            cfg: cfg.clone(),
            store,
            fanout,
            rooms: HashMap::new(),
            reclaims,
        };
        let task = shutdown.spawn(writer.run(rx, shutdown.clone()));
        (Sequencer { tx }, task)
    }

    /// Queue one message without waiting. Calls in order are sequenced in order,
    /// so a connection can pipeline its sends and keep their order.
    pub(crate) fn enqueue(
        &self,
        req: SendRequest,
    ) -> Result<oneshot::Receiver<Result<Acked, SendError>>, SendError> {
        let (reply, rx) = oneshot::channel();
        self.enqueue_reply(req, reply)?;
        Ok(rx)
    }

    /// `enqueue` with the caller's reply channel.
    pub(crate) fn enqueue_reply(&self, req: SendRequest, reply: Reply) -> Result<(), SendError> {
        self.tx.try_send((req, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                SendError::Unavailable("writer queue full".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                SendError::Unavailable("node is draining".into())
            }
        })
    }

    /// Sends waiting for the writer (a gauge for metrics).
    pub(crate) fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Writer state of one owned room.
struct Owned {
    epoch: u64,
    last_used: Instant,
}

struct Writer {
    cfg: SequencerConfig,
    store: Arc<dyn HistoryStore>,
    /// Delivers committed batches here and publishes them to the other nodes.
    fanout: Arc<FanOut>,
    /// Rooms this node is the fenced writer of.
    rooms: HashMap<String, Owned>,
    /// Rooms to forget before the next commit (see `Sequencer::spawn`).
    reclaims: Option<mpsc::Receiver<String>>,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<(SendRequest, Reply)>, shutdown: Shutdown) {
        let mut sweep = tokio::time::interval(self.cfg.idle_room.max(Duration::from_secs(1)));
        let mut draining = false;
        loop {
            let first = tokio::select! {
                biased;
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                _ = shutdown.cancelled(), if !draining => {
                    // Refuse new sends; the loop drains what is queued, then
                    // `recv` returns None and the task ends.
                    draining = true;
                    rx.close();
                    continue;
                }
                _ = sweep.tick() => {
                    self.take_reclaims();
                    let idle = self.cfg.idle_room;
                    self.rooms.retain(|_, o| o.last_used.elapsed() < idle);
                    continue;
                }
            };
            // A reclaim sent before any send of the group is seen here.
            self.take_reclaims();
            let mut group = vec![first];
            while group.len() < self.cfg.batch_max {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            self.commit(group).await;
        }
        debug!("writer stopped");
    }

    async fn commit(&mut self, group: Vec<(SendRequest, Reply)>) {
        let started = Instant::now();
        metrics::histogram!("chorus_batch_size").record(group.len() as f64);
        // Group by room, keeping each room's send order.
        let mut order: Vec<String> = Vec::new();
        let mut by_room: HashMap<String, Vec<(SendRequest, Reply)>> = HashMap::new();
        for (req, reply) in group {
            if !by_room.contains_key(&req.room) {
                order.push(req.room.clone());
            }
            by_room
                .entry(req.room.clone())
                .or_default()
                .push((req, reply));
        }
        let ts = now_ms();
        let mut batches = Vec::with_capacity(order.len());
        let mut waiting: Vec<(String, Vec<(SendRequest, Reply)>)> = Vec::with_capacity(order.len());
        for room in order {
            let reqs = by_room.remove(&room).unwrap_or_default();
            let epoch = match self.epoch(&room).await {
                Ok(e) => e,
                Err(e) => {
                    warn!(%room, error = %e, "claiming room failed");
                    fail_all(reqs, SendError::from(e));
                    continue;
                }
            };
            batches.push(RoomBatch {
                room: room.clone(),
                epoch,
                messages: reqs
                    .iter()
                    .map(|(r, _)| NewMessage {
                        id: uuid::Uuid::now_v7().to_string(),
                        sender: r.sender.clone(),
                        cid: r.cid.clone(),
                        body: r.body.get().to_owned(),
                        meta: r.meta.as_ref().map(|m| m.get().to_owned()),
                        ts,
                    })
                    .collect(),
            });
            waiting.push((room, reqs));
        }
        if batches.is_empty() {
            return;
        }
        let outcomes = match self.store.append(&batches).await {
            Ok(o) => o,
            Err(e) => {
                metrics::counter!("chorus_commit_errors_total").increment(1);
                warn!(error = %e, "group commit failed");
                let err = SendError::from(e);
                for (_, reqs) in waiting {
                    fail_all(reqs, err.clone());
                }
                return;
            }
        };
        metrics::histogram!("chorus_commit_seconds").record(started.elapsed().as_secs_f64());
        // Each committed room is published, then its senders acked. The rooms
        // of a group go out concurrently (their publishes share the Redis
        // connection's writes instead of waiting a round trip each); the next
        // group waits for all of them, so each room's batches stay in order.
        let mut jobs = Vec::with_capacity(waiting.len());
        for (((room, reqs), batch), outcome) in waiting.into_iter().zip(&batches).zip(outcomes) {
            match outcome {
                RoomOutcome::Fenced { current_epoch } => {
                    metrics::counter!("chorus_fenced_batches_total").increment(1);
                    warn!(%room, current_epoch, "room writer fenced");
                    self.rooms.remove(&room);
                    if let Some(hook) = &self.cfg.on_fenced {
                        hook(&room);
                    }
                    fail_all(reqs, SendError::NotOwner);
                }
                RoomOutcome::Committed(appended) => {
                    let public = public_name(&room);
                    let frames: Vec<(u64, Utf8Bytes)> = appended
                        .iter()
                        .zip(&batch.messages)
                        .zip(&reqs)
                        .filter(|((a, _), _)| !a.duplicate)
                        .map(|((a, m), (r, _))| {
                            let frame = msg_frame(Message {
                                room: public.to_owned(),
                                seq: a.seq,
                                id: a.id.clone(),
                                sender: m.sender.clone(),
                                cid: Some(m.cid.clone()),
                                body: r.body.clone(),
                                meta: r.meta.clone(),
                                ts: a.ts,
                            });
                            (a.seq, frame)
                        })
                        .collect();
                    let fanout = self.fanout.clone();
                    jobs.push(async move {
                        if let Some(&(last, _)) = frames.last() {
                            let first = frames[0].0;
                            let publishing = Instant::now();
                            let published = fanout.publish(&room, first, last, frames).await;
                            metrics::histogram!("chorus_fanout_seconds")
                                .record(publishing.elapsed().as_secs_f64());
                            if let Err(e) = published {
                                // Committed is what counts: receivers find the gap by
                                // seq and fill it from history.
                                warn!(%room, error = %e, "publish failed after commit");
                            }
                        }
                        for (a, (_, reply)) in appended.into_iter().zip(reqs) {
                            let _ = reply.send(Ok(Acked {
                                seq: a.seq,
                                id: a.id,
                                ts: a.ts,
                                duplicate: a.duplicate,
                            }));
                        }
                    });
                }
            }
        }
        futures_util::future::join_all(jobs).await;
        metrics::histogram!("chorus_group_seconds").record(started.elapsed().as_secs_f64());
    }

    /// Forget the rooms this node took anew: their epoch is claimed again.
    fn take_reclaims(&mut self) {
        let Some(rx) = &mut self.reclaims else {
            return;
        };
        while let Ok(room) = rx.try_recv() {
            self.rooms.remove(&room);
        }
    }

    /// The epoch of a room this node writes, claiming it first if needed.
    async fn epoch(&mut self, room: &str) -> Result<u64, StoreError> {
        if let Some(o) = self.rooms.get_mut(room) {
            o.last_used = Instant::now();
            return Ok(o.epoch);
        }
        let claim = self.store.claim_room(room).await?;
        metrics::counter!("chorus_room_claims_total").increment(1);
        debug!(%room, epoch = claim.epoch, last_seq = claim.last_seq, "claimed room");
        self.rooms.insert(
            room.to_owned(),
            Owned {
                epoch: claim.epoch,
                last_used: Instant::now(),
            },
        );
        Ok(claim.epoch)
    }
}

fn fail_all(reqs: Vec<(SendRequest, Reply)>, err: SendError) {
    for (_, reply) in reqs {
        let _ = reply.send(Err(err.clone()));
    }
}
