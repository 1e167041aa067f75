//! Where a send goes: this node's writer, or the room's owner elsewhere.
//!
//! Embedded mode: straight to the local writer. Cluster mode: one routing task
//! per node takes sends in submission order (so one connection's pipelined sends
//! keep their order), finds each room's owner (`ownership`), and either queues
//! the send on the local writer or forwards it to the owner's inbox (`inbox`).
//! Each pass of the routing task takes every send queued meanwhile and posts
//! one message per owner node (the forwards of a busy node are batched as its
//! commits are); the owner answers what is ready together in one message.
//! The owner sequences it and answers on this node's inbox; a forward that gets
//! `not_owner` or no answer in time is routed again (same `cid`, so a send that
//! did commit is acked as the original, never stored twice).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::cluster::ownership::{Owner, Ownership};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};

use crate::inbox::{Inbox, InboxHandler, InboxMessage, Outcome, forward_body};
use crate::send::{Acked, Reply, SendError, SendRequest, await_ack};
use crate::sequencer::Sequencer;
use crate::shutdown::Shutdown;

/// Routes sends to their room's writer.
#[derive(Clone)]
pub(crate) enum Router {
    /// Every room is written here.
    Local(Sequencer),
    /// Rooms are written by their owners.
    Cluster(Arc<Forwarder>),
}

impl Router {
    /// Queue a send without waiting; sends submitted in order are routed in order.
    pub(crate) fn submit(
        &self,
        req: SendRequest,
    ) -> Result<oneshot::Receiver<Result<Acked, SendError>>, SendError> {
        match self {
            Router::Local(s) => s.enqueue(req),
            Router::Cluster(f) => f.submit(req),
        }
    }
}

/// A send on its way, with its retry count.
struct Job {
    req: SendRequest,
    reply: Reply,
    attempts: u32,
    /// Give up (timeout) after this.
    deadline: Instant,
}

/// A forward waiting for the owner's answer.
struct InFlight {
    job: Job,
    sent: Instant,
}

/// Pause before routing a failed forward again: the owner's lease may need to
/// expire before another node can take the room.
const RETRY_PAUSE: Duration = Duration::from_millis(150);

/// Most sends one routing pass takes from the queue.
const ROUTE_BATCH: usize = 256;

/// The cluster router of one node.
pub(crate) struct Forwarder {
    /// The routing task's queue.
    tx: mpsc::Sender<Job>,
    /// This node's id: where owners send their answers.
    node: String,
    /// Posts forwards and answers to other nodes' inboxes.
    inbox: Arc<dyn Inbox>,
    ownership: Arc<Ownership>,
    sequencer: Sequencer,
    /// Forward id -> the send waiting for its owner's answer. A std Mutex: held
    /// for one map operation, never across `.await`.
    in_flight: Mutex<HashMap<u64, InFlight>>,
    next_id: AtomicU64,
    forward_timeout: Duration,
    send_timeout: Duration,
    /// Ends the routing task; tracks the tasks that answer forwards and retry.
    shutdown: Shutdown,
}

impl Forwarder {
    /// Start the routing task; it ends when `shutdown` begins.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn spawn(
        node: String,
        inbox: Arc<dyn Inbox>,
        ownership: Arc<Ownership>,
        sequencer: Sequencer,
        queue: usize,
        forward_timeout: Duration,
        send_timeout: Duration,
        shutdown: &Shutdown,
    ) -> Arc<Forwarder> {
        let (tx, rx) = mpsc::channel(queue);
        let f = Arc::new(Forwarder {
            tx,
            node,
            inbox,
            ownership,
            sequencer,
            in_flight: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            forward_timeout,
            send_timeout,
            shutdown: shutdown.clone(),
        });
        shutdown.spawn(f.clone().run(rx));
        f
    }

    fn submit(
        &self,
        req: SendRequest,
    ) -> Result<oneshot::Receiver<Result<Acked, SendError>>, SendError> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            req,
            reply,
            attempts: 0,
            deadline: Instant::now() + self.send_timeout,
        };
        self.tx.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                SendError::Unavailable("router queue full".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                SendError::Unavailable("node is draining".into())
            }
        })?;
        Ok(rx)
    }

    async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<Job>) {
        let mut tick =
            tokio::time::interval((self.forward_timeout / 4).max(Duration::from_millis(20)));
        loop {
            tokio::select! {
                job = rx.recv() => match job {
                    Some(job) => {
                        // Everything queued meanwhile goes in the same pass:
                        // one inbox message per owner node.
                        let mut jobs = vec![job];
                        while jobs.len() < ROUTE_BATCH {
                            match rx.try_recv() {
                                Ok(j) => jobs.push(j),
                                Err(_) => break,
                            }
                        }
                        self.route(jobs).await;
                    }
                    None => break,
                },
                _ = tick.tick() => self.expire(),
                _ = self.shutdown.cancelled() => break,
            }
        }
        // Draining: what is still queued or in flight fails retryably; clients
        // retry on another node with the same cid.
        rx.close();
        while let Ok(job) = rx.try_recv() {
            let _ = job
                .reply
                .send(Err(SendError::Unavailable("node is draining".into())));
        }
        let left: Vec<InFlight> = self.lock().drain().map(|(_, f)| f).collect();
        for f in left {
            let _ = f
                .job
                .reply
                .send(Err(SendError::Unavailable("node is draining".into())));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, InFlight>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Route one pass of sends, in order: each to the local writer or, by
    /// owner node, into that node's forward message.
    async fn route(&self, jobs: Vec<Job>) {
        let mut forwards: Vec<(String, Vec<Job>)> = Vec::new();
        for job in jobs {
            let room = job.req.room.clone();
            match self.ownership.resolve(&room).await {
                Ok(Owner::Me) => {
                    if let Err(e) = self.sequencer.enqueue_reply(job.req, job.reply) {
                        debug!(%room, error = %e, "local writer refused a send");
                    }
                }
                Ok(Owner::Other(node)) => match forwards.iter_mut().find(|(n, _)| *n == node) {
                    Some((_, to)) => to.push(job),
                    None => forwards.push((node, vec![job])),
                },
                Err(e) => {
                    metrics::counter!("chorus_redis_errors_total", "op" => "resolve").increment(1);
                    let _ = job
                        .reply
                        .send(Err(SendError::Unavailable(format!("redis: {e}"))));
                }
            }
        }
        futures_util::future::join_all(
            forwards
                .into_iter()
                .map(|(node, jobs)| self.forward(node, jobs)),
        )
        .await;
    }

    /// Post one pass's sends for `node` to its inbox, in order, in as few
    /// messages as the wire format allows.
    async fn forward(&self, node: String, jobs: Vec<Job>) {
        let mut items = Vec::with_capacity(jobs.len());
        let mut rooms = Vec::with_capacity(jobs.len());
        {
            let mut in_flight = self.lock();
            for job in jobs {
                let body = match forward_body(&job.req) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = job.reply.send(Err(SendError::Internal(e.to_string())));
                        continue;
                    }
                };
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                items.push((id, body));
                rooms.push(job.req.room.clone());
                in_flight.insert(
                    id,
                    InFlight {
                        job,
                        sent: Instant::now(),
                    },
                );
            }
        }
        metrics::counter!("chorus_forwards_total").increment(items.len() as u64);
        let ids: Vec<u64> = items.iter().map(|(id, _)| *id).collect();
        let mut failed = None;
        let mut posted = 0;
        for (message, carried) in InboxMessage::forwards(&self.node, &items) {
            metrics::counter!("chorus_forward_messages_total").increment(1);
            failed = match self.inbox.post(&node, message).await {
                Ok(false) => Some(format!("owner {node} is not listening")),
                Ok(true) => None,
                Err(e) => Some(e.to_string()),
            };
            if failed.is_some() {
                break;
            }
            posted += carried;
        }
        // A failed post: its sends and the pass's later ones (which would
        // reach the owner out of order) are routed again; those posted before
        // wait for their answers as usual.
        if let Some(why) = failed {
            debug!(%node, %why, sends = ids.len() - posted, "forward not delivered");
            for room in &rooms[posted..] {
                self.ownership.invalidate(room);
            }
            for id in &ids[posted..] {
                if let Some(f) = self.lock().remove(id) {
                    self.retry(f.job, SendError::Unavailable(why.clone()));
                }
            }
        }
    }

    /// An owner answered a forward (from the inbox).
    fn on_answer(&self, id: u64, result: Result<Acked, SendError>) {
        let Some(f) = self.lock().remove(&id) else {
            return; // answered after it was retried: the retry decides
        };
        match result {
            Err(SendError::NotOwner) => {
                self.ownership.invalidate(&f.job.req.room);
                self.retry(f.job, SendError::NotOwner);
            }
            other => {
                let _ = f.job.reply.send(other);
            }
        }
    }

    /// Sends forwarded to this node (from the inbox), in order: sequence each
    /// whose room this node owns, and answer the sender's node as the
    /// outcomes come (those ready together in one message).
    async fn on_forwards(&self, from: String, items: Vec<(u64, SendRequest)>) {
        let timeout = self.send_timeout;
        let mut outcomes: FuturesUnordered<BoxFuture<'static, (u64, Outcome)>> =
            FuturesUnordered::new();
        for (id, req) in items {
            let owner = self.ownership.resolve(&req.room).await;
            let rx = match owner {
                Ok(Owner::Me) => self.sequencer.enqueue(req),
                Ok(Owner::Other(_)) => Err(SendError::NotOwner),
                Err(e) => Err(SendError::Unavailable(format!("redis: {e}"))),
            };
            outcomes.push(match rx {
                Ok(rx) => Box::pin(async move { (id, await_ack(rx, timeout).await) }),
                Err(e) => Box::pin(std::future::ready((id, Err(e)))),
            });
        }
        let inbox = self.inbox.clone();
        self.shutdown.spawn(async move {
            while let Some(first) = outcomes.next().await {
                let mut ready = vec![first];
                while let Some(Some(more)) = outcomes.next().now_or_never() {
                    ready.push(more);
                }
                metrics::counter!("chorus_forward_answer_messages_total").increment(1);
                if let Err(e) = inbox.post(&from, InboxMessage::answers(ready)).await {
                    // The sender's node retries after its forward timeout.
                    debug!(error = %e, "answering forwards failed");
                }
            }
        });
    }

    /// Route a failed forward again after a pause, until its deadline.
    fn retry(&self, mut job: Job, why: SendError) {
        job.attempts += 1;
        if Instant::now() + RETRY_PAUSE >= job.deadline {
            let _ = job.reply.send(Err(why));
            return;
        }
        metrics::counter!("chorus_forward_retries_total").increment(1);
        let tx = self.tx.clone();
        self.shutdown.spawn(async move {
            tokio::time::sleep(RETRY_PAUSE * job.attempts.min(4)).await;
            if let Err(e) = tx.try_send(job) {
                let job = match e {
                    mpsc::error::TrySendError::Full(j) | mpsc::error::TrySendError::Closed(j) => j,
                };
                let _ = job.reply.send(Err(why));
            }
        });
    }

    /// Forwards unanswered for `forward_timeout` are routed again.
    fn expire(&self) {
        let late: Vec<InFlight> = {
            let mut map = self.lock();
            let ids: Vec<u64> = map
                .iter()
                .filter(|(_, f)| f.sent.elapsed() >= self.forward_timeout)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| map.remove(&id)).collect()
        };
        for f in late {
            self.ownership.invalidate(&f.job.req.room);
            self.retry(f.job, SendError::Timeout);
        }
    }
}

#[async_trait]
impl InboxHandler for Forwarder {
    async fn on_inbox(&self, message: InboxMessage) {
        match message {
            InboxMessage::Forwards { from, items, .. } => self.on_forwards(from, items).await,
            InboxMessage::Answers(answers) => {
                for (id, result) in answers {
                    self.on_answer(id, result);
                }
            }
        }
    }
}
