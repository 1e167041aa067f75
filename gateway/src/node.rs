//! The node: where one gateway process is wired. [`NodeBuilder`] takes the
//! seams (history store, broker, presence; the configuration supplies what
//! is not given), connects the cluster parts, starts the writer and each
//! service's loop; [`Node`] hands them to connections and the HTTP API, and
//! runs the drain on shutdown.
//!
//! The services each own their state and their loop: `sessions` (presence of
//! sessions, the heartbeat, hot-room counts), `receipts` (coalesced receipt
//! broadcasts), `admission` (connection counts), `retention` (history
//! trims), `ownership` (lease renewal), `fanout` (tip checks).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_history::{HistoryStore, PostgresOptions, PostgresStore, SqliteStore};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::admission::Connections;
use crate::auth::Auth;
use crate::broker::redis::RedisBroker;
use crate::broker::{Broker, MemoryBroker};
use crate::cluster::client::command_client;
use crate::cluster::ownership::Ownership;
use crate::cluster::{ClusterParts, RECLAIM_QUEUE};
use crate::config::Config;
use crate::fanout::FanOut;
use crate::hub::{FanoutWindow, Hub};
use crate::inbox::InboxHandler;
use crate::presence::{MemoryPresence, Presence, RedisPresence};
use crate::ratelimit::SendLimits;
use crate::receipts::Receipts;
use crate::retention::Trimmer;
use crate::router::{Forwarder, Router};
use crate::sequencer::{OnFenced, Sequencer, SequencerConfig};
use crate::sessions::{Sessions, SessionsConfig};
use crate::shutdown::Shutdown;

/// Shared state of one gateway process.
pub struct Node {
    pub cfg: Config,
    /// This node's id, in presence entries and logs.
    pub id: String,
    pub(crate) auth: Auth,
    pub(crate) store: Arc<dyn HistoryStore>,
    pub(crate) hub: Arc<Hub>,
    /// Room traffic: local delivery, the broker to the other nodes, gap fill.
    pub(crate) fanout: Arc<FanOut>,
    pub(crate) presence: Arc<dyn Presence>,
    /// Sessions held by this node and their presence.
    pub(crate) sessions: Arc<Sessions>,
    /// Receipt positions and their coalesced broadcasts.
    pub(crate) receipts: Arc<Receipts>,
    /// Open connections, bounded in all and per user.
    pub(crate) connections: Connections,
    pub(crate) sequencer: Sequencer,
    /// Where sends go: the local writer, or the room's owner in cluster mode.
    pub(crate) router: Router,
    /// Cluster-mode parts (Redis broker, room ownership), if configured.
    pub(crate) cluster: Option<ClusterParts>,
    /// Per-user and per-tenant send limits (Redis in cluster mode, else in process).
    pub(crate) limits: SendLimits,
    draining: AtomicBool,
    /// Stops every background task of the node (and tracks them) at the drain.
    shutdown: Shutdown,
    writer_task: Mutex<Option<JoinHandle<()>>>,
}

/// The seams a node is built from. What is not given comes from the
/// configuration: with `--redis-url` and `--database-url` (cluster mode)
/// PostgreSQL, Redis pub/sub and Redis presence; otherwise (embedded)
/// SQLite in `--data-dir`, a node alone on an in-process bus, in-process
/// presence. Tests inject a store or a broker that fails on demand.
pub struct NodeBuilder {
    cfg: Config,
    store: Option<Arc<dyn HistoryStore>>,
    broker: Option<Arc<dyn Broker>>,
    presence: Option<Arc<dyn Presence>>,
}

impl NodeBuilder {
    /// Use this history store.
    pub fn store(mut self, store: Arc<dyn HistoryStore>) -> NodeBuilder {
        self.store = Some(store);
        self
    }

    /// Use this broker for room traffic (embedded mode only: in cluster mode
    /// the Redis broker also carries the node-to-node inbox).
    pub fn broker(mut self, broker: Arc<dyn Broker>) -> NodeBuilder {
        self.broker = Some(broker);
        self
    }

    /// Use this presence seam.
    pub fn presence(mut self, presence: Arc<dyn Presence>) -> NodeBuilder {
        self.presence = Some(presence);
        self
    }

    /// Connect what was not given, wire the node, start the writer and the
    /// services' loops.
    pub async fn start(self) -> anyhow::Result<Arc<Node>> {
        let NodeBuilder {
            cfg,
            store,
            broker,
            presence,
        } = self;
        let id = cfg
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        match (
            cfg.cluster.redis_url.clone(),
            cfg.cluster.database_url.clone(),
        ) {
            (Some(redis_url), Some(database_url)) => {
                if broker.is_some() {
                    anyhow::bail!(
                        "a broker is injected only in embedded mode: in cluster mode the \
                         Redis broker also carries the node inbox"
                    );
                }
                let store = match store {
                    Some(s) => s,
                    None => Arc::new(
                        PostgresStore::connect_with(
                            &database_url,
                            PostgresOptions {
                                max_connections: cfg.cluster.database_pool,
                                ..Default::default()
                            },
                        )
                        .await?,
                    ),
                };
                let (redis, client) =
                    RedisBroker::connect(&redis_url, cfg.cluster.redis_prefix.clone(), id.clone())
                        .await?;
                let presence = match presence {
                    Some(p) => p,
                    None => Arc::new(RedisPresence::new(
                        command_client(&redis_url).await?,
                        cfg.cluster.redis_prefix.clone(),
                        cfg.cluster.presence_ttl(),
                    )),
                };
                let (reclaims, reclaimed) = mpsc::channel(RECLAIM_QUEUE);
                let ownership = Arc::new(Ownership::new(
                    client,
                    cfg.cluster.redis_prefix.clone(),
                    id.clone(),
                    cfg.cluster.owner_lease(),
                    reclaims,
                ));
                let cluster = ClusterParts {
                    inbox: redis.clone(),
                    ownership,
                    limits_client: command_client(&redis_url).await?,
                };
                assemble(cfg, id, store, redis, presence, Some((cluster, reclaimed)))
            }
            _ => {
                let store = match store {
                    Some(s) => s,
                    None => Arc::new(SqliteStore::open(&cfg.data_dir.join("chorus.db")).await?),
                };
                let broker = broker.unwrap_or_else(|| MemoryBroker::alone(&id));
                let presence = presence.unwrap_or_else(|| Arc::new(MemoryPresence::default()));
                assemble(cfg, id, store, broker, presence, None)
            }
        }
    }
}

/// Wire a node from its seams and start its tasks.
fn assemble(
    cfg: Config,
    id: String,
    store: Arc<dyn HistoryStore>,
    broker: Arc<dyn Broker>,
    presence: Arc<dyn Presence>,
    cluster: Option<(ClusterParts, mpsc::Receiver<String>)>,
) -> anyhow::Result<Arc<Node>> {
    let (cluster, reclaims) = cluster.unzip();
    let auth = Auth::new(&cfg.auth, cfg.dev_auth()).map_err(anyhow::Error::msg)?;
    let shutdown = Shutdown::new();
    let hub = Arc::new(Hub::new(FanoutWindow {
        span: Duration::from_millis(cfg.writer.fanout_window_ms),
        members: cfg.writer.fanout_window_members,
    }));
    let fanout = FanOut::new(hub.clone(), store.clone(), broker.clone(), &shutdown);
    let on_fenced: Option<OnFenced> = cluster.as_ref().map(|c| {
        let ownership = c.ownership.clone();
        Arc::new(move |room: &str| ownership.invalidate(room)) as OnFenced
    });
    let (sequencer, writer_task) = Sequencer::spawn(
        SequencerConfig {
            batch_max: cfg.writer.batch_max,
            queue: cfg.writer.writer_queue,
            idle_room: Duration::from_secs(600),
            on_fenced,
        },
        store.clone(),
        fanout.clone(),
        reclaims,
        &shutdown,
    );
    let (router, inbox) = match &cluster {
        None => (Router::Local(sequencer.clone()), None),
        Some(c) => {
            let f = Forwarder::spawn(
                id.clone(),
                c.inbox.clone(),
                c.ownership.clone(),
                sequencer.clone(),
                cfg.writer.writer_queue,
                cfg.cluster.forward_timeout(),
                cfg.send.send_timeout(),
                &shutdown,
            );
            let inbox: Arc<dyn InboxHandler> = f.clone();
            (Router::Cluster(f), Some(inbox))
        }
    };
    shutdown.spawn(broker.clone().run(fanout.clone(), inbox, shutdown.clone()));
    // The tip check finds what a lossy transport lost; a node alone on its
    // transport has nothing to find (see `Broker::has_peers`).
    if broker.has_peers() {
        shutdown.spawn(fanout.clone().run(cfg.cluster.tip_poll()));
    }
    let limits = match &cluster {
        Some(c) => SendLimits::redis(
            &cfg.send,
            c.limits_client.clone(),
            cfg.cluster.redis_prefix.clone(),
        ),
        None => SendLimits::local(&cfg.send),
    };
    let sessions = Sessions::new(
        SessionsConfig {
            hot_users: cfg.presence.presence_hot_users,
            coalesce_users: cfg.presence.presence_coalesce_users,
            grace: cfg.presence.grace(),
            count_interval: Duration::from_millis(cfg.presence.presence_count_interval_ms),
        },
        presence.clone(),
        fanout.clone(),
        &shutdown,
    );
    sessions.start();
    let receipts = Receipts::new(
        store.clone(),
        fanout.clone(),
        Duration::from_millis(cfg.presence.receipt_interval_ms),
        &shutdown,
    );
    receipts.start();
    let retention = Arc::new(Trimmer::new(
        store.clone(),
        cfg.history.retention_max_age_secs,
        cfg.history.retention_max_count,
        Duration::from_secs(cfg.history.retention_interval_secs),
    ));
    retention.start(&shutdown);
    if let Some(c) = &cluster {
        c.ownership.start(&shutdown);
    }
    Ok(Arc::new(Node {
        connections: Connections::new(cfg.conn.max_connections, cfg.conn.max_connections_per_user),
        cfg,
        id,
        auth,
        store,
        hub,
        fanout,
        presence,
        sessions,
        receipts,
        sequencer,
        router,
        limits,
        cluster,
        draining: AtomicBool::new(false),
        shutdown,
        writer_task: Mutex::new(Some(writer_task)),
    }))
}

impl Node {
    /// A node built from the seams the configuration asks for.
    pub async fn start(cfg: Config) -> anyhow::Result<Arc<Node>> {
        Node::builder(cfg).start().await
    }

    /// A builder to inject seams (see [`NodeBuilder`]).
    pub fn builder(cfg: Config) -> NodeBuilder {
        NodeBuilder {
            cfg,
            store: None,
            broker: None,
            presence: None,
        }
    }

    /// Whether the node's dependencies answer (for `/readyz`): the history
    /// store, and Redis in cluster mode.
    pub async fn ready(&self) -> Result<(), String> {
        self.store
            .ping()
            .await
            .map_err(|e| format!("history: {e}"))?;
        if self.cluster.is_some() && !self.fanout.broker().is_healthy() {
            return Err("redis: not connected".into());
        }
        Ok(())
    }

    /// The node's shutdown: begins with the drain; background tasks are
    /// started through it.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Begin the drain: refuse new connections and sends, tell clients to
    /// reconnect elsewhere, flush the writer; returns when done or at the deadline.
    pub async fn drain(&self) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        info!(connections = self.connections.count(), "draining");
        self.hub.stop_holding();
        self.shutdown.begin();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.cfg.drain_timeout_ms);
        while self.connections.count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let task = self
            .writer_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task
            && tokio::time::timeout_at(deadline, task).await.is_err()
        {
            warn!("writer did not finish before the drain deadline");
        }
        self.receipts.flush().await;
        if let Some(c) = &self.cluster {
            // Hand the rooms over at once instead of after the lease expires.
            c.ownership.release_all().await;
        }
        // What is left: presence removals of closed sessions, answers to
        // forwarded sends, loops on their way out.
        if !self.shutdown.wait_until(deadline).await {
            warn!(
                tasks = self.shutdown.running(),
                "background tasks did not finish before the drain deadline"
            );
        }
        info!(connections = self.connections.count(), "drained");
    }
}
