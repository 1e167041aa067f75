//! The node: everything one gateway process shares between its connections and
//! its HTTP API, wired from the configuration, plus the drain on shutdown.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use chorus_history::{
    HistoryStore, Position, PostgresOptions, PostgresStore, Retention, SqliteStore,
};
use chorus_protocol::{CloseCode, Receipt, ServerFrame};
use dashmap::DashMap;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::auth::Auth;
use crate::broker::redis::{RedisBroker, command_client};
use crate::broker::{Broker, MemoryBroker};
use crate::clock::now_ms;
use crate::config::Config;
use crate::fanout::FanOut;
use crate::hub::{ConnId, FanoutWindow, Hub};
use crate::inbox::{Inbox, InboxHandler};
use crate::names::public_name;
use crate::ownership::Ownership;
use crate::presence::{
    LiveSession, MemoryPresence, Presence, PresenceEntry, RedisPresence, Rejoined,
};
use crate::ratelimit::SendLimits;
use crate::router::{Forwarder, Router};
use crate::sequencer::{OnFenced, Sequencer, SequencerConfig};
use crate::shutdown::Shutdown;

/// What this node knows of a session it holds (a live connection, or one in
/// its presence grace period). The presence seam has the authoritative state,
/// shared by every node (generation, rooms); this copy is what the heartbeat
/// refreshes there, and re-creates if the seam lost it.
#[derive(Debug)]
struct SessionSlot {
    /// Generation of the newest connection of the session on this node.
    generation: u64,
    /// That connection's presence entry.
    entry: PresenceEntry,
    /// Rooms the newest connection of the session is in (plus, until it
    /// settles, those of the connection it resumed).
    rooms: HashSet<String>,
    /// The newest connection's kill switch: a resume of the session while it
    /// is still open takes the session over and closes it (4507).
    kill: Option<Arc<crate::hub::Kill>>,
}

/// The cluster-mode parts of a node.
pub struct ClusterParts {
    /// Other nodes' inboxes (the Redis broker): where sends are forwarded.
    pub inbox: Arc<dyn Inbox>,
    pub ownership: Arc<Ownership>,
    /// Rooms the writer must re-claim (shared with `ownership`).
    pub reclaim: Arc<DashMap<String, ()>>,
    /// Redis command client of the send limits: a connection of its own, so a
    /// send's limit check never queues behind fan-out publishes.
    pub limits_client: fred::prelude::Client,
}

/// Shared state of one gateway process.
pub struct Node {
    pub cfg: Config,
    /// This node's id, in presence entries and logs.
    pub id: String,
    pub auth: Auth,
    pub store: Arc<dyn HistoryStore>,
    pub hub: Arc<Hub>,
    /// Room traffic: local delivery, the broker to the other nodes, gap fill.
    pub fanout: Arc<FanOut>,
    pub presence: Arc<dyn Presence>,
    pub sequencer: Sequencer,
    /// Where sends go: the local writer, or the room's owner in cluster mode.
    pub router: Router,
    /// Cluster-mode parts (Redis broker, room ownership), if configured.
    pub cluster: Option<ClusterParts>,
    /// Per-user and per-tenant send limits (Redis in cluster mode, else in process).
    pub limits: SendLimits,
    /// Session id -> presence slot (see `SessionSlot`).
    sessions: DashMap<String, SessionSlot>,
    /// User key -> open connections on this node.
    user_conns: DashMap<String, u64>,
    /// Room key -> user -> coalesced positions waiting for the next broadcast.
    /// A std Mutex: touched briefly, never across `.await`.
    receipts: Mutex<HashMap<String, HashMap<String, Receipt>>>,
    /// Hot rooms whose online count changed since the last count broadcast.
    /// A std Mutex: touched briefly, never across `.await`.
    hot_dirty: Mutex<BTreeSet<String>>,
    next_conn: AtomicU64,
    connections: AtomicU64,
    draining: AtomicBool,
    /// Stops every background task of the node (and tracks them) at the drain.
    shutdown: Shutdown,
    writer_task: Mutex<Option<JoinHandle<()>>>,
}

impl Node {
    /// Open the store, connect the seams the configuration asks for (embedded:
    /// SQLite and in-process; cluster: PostgreSQL and Redis), start the writer
    /// and the background tasks.
    pub async fn start(cfg: Config) -> anyhow::Result<Arc<Node>> {
        let id = cfg
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]));
        let hub = Arc::new(Hub::new(FanoutWindow {
            span: Duration::from_millis(cfg.fanout_window_ms),
            members: cfg.fanout_window_members,
        }));
        match (cfg.redis_url.clone(), cfg.database_url.clone()) {
            (Some(redis_url), Some(database_url)) => {
                let store: Arc<dyn HistoryStore> = Arc::new(
                    PostgresStore::connect_with(
                        &database_url,
                        PostgresOptions {
                            max_connections: cfg.database_pool,
                            ..Default::default()
                        },
                    )
                    .await?,
                );
                let (redis, client) =
                    RedisBroker::connect(&redis_url, cfg.redis_prefix.clone(), id.clone()).await?;
                let presence: Arc<dyn Presence> = Arc::new(RedisPresence::new(
                    command_client(&redis_url).await?,
                    cfg.redis_prefix.clone(),
                    cfg.presence_ttl(),
                ));
                let reclaim = Arc::new(DashMap::new());
                let ownership = Arc::new(Ownership::new(
                    client,
                    cfg.redis_prefix.clone(),
                    id.clone(),
                    cfg.owner_lease(),
                    reclaim.clone(),
                ));
                let cluster = ClusterParts {
                    inbox: redis.clone(),
                    ownership,
                    reclaim,
                    limits_client: command_client(&redis_url).await?,
                };
                Node::assemble(cfg, id, hub, store, redis, presence, Some(cluster))
            }
            _ => {
                let store: Arc<dyn HistoryStore> =
                    Arc::new(SqliteStore::open(&cfg.data_dir.join("chorus.db")).await?);
                let broker: Arc<dyn Broker> = MemoryBroker::alone(&id);
                let presence: Arc<dyn Presence> = Arc::new(MemoryPresence::default());
                Node::assemble(cfg, id, hub, store, broker, presence, None)
            }
        }
    }

    /// Wire a node from its seams and start its tasks.
    fn assemble(
        cfg: Config,
        id: String,
        hub: Arc<Hub>,
        store: Arc<dyn HistoryStore>,
        broker: Arc<dyn Broker>,
        presence: Arc<dyn Presence>,
        cluster: Option<ClusterParts>,
    ) -> anyhow::Result<Arc<Node>> {
        let auth = Auth::new(&cfg).map_err(anyhow::Error::msg)?;
        let shutdown = Shutdown::new();
        let fanout = FanOut::new(hub.clone(), store.clone(), broker.clone(), &shutdown);
        let on_fenced: Option<OnFenced> = cluster.as_ref().map(|c| {
            let ownership = c.ownership.clone();
            Arc::new(move |room: &str| ownership.invalidate(room)) as OnFenced
        });
        let (sequencer, writer_task) = Sequencer::spawn(
            SequencerConfig {
                batch_max: cfg.batch_max,
                queue: cfg.writer_queue,
                send_timeout: cfg.send_timeout(),
                idle_room: Duration::from_secs(600),
                reclaim: cluster
                    .as_ref()
                    .map(|c| c.reclaim.clone())
                    .unwrap_or_default(),
                on_fenced,
            },
            store.clone(),
            fanout.clone(),
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
                    cfg.writer_queue,
                    cfg.forward_timeout(),
                    cfg.send_timeout(),
                    &shutdown,
                );
                let inbox: Arc<dyn InboxHandler> = f.clone();
                (Router::Cluster(f), Some(inbox))
            }
        };
        shutdown.spawn(broker.run(fanout.clone(), inbox, shutdown.clone()));
        // The tip check finds what a lossy transport lost. An embedded node is
        // alone on its bus: every batch it receives it published itself, so
        // there is nothing to find and no reason to query the store each tick.
        if cluster.is_some() {
            shutdown.spawn(fanout.clone().run(cfg.tip_poll()));
        }
        let limits = match &cluster {
            Some(c) => SendLimits::redis(&cfg, c.limits_client.clone(), cfg.redis_prefix.clone()),
            None => SendLimits::local(&cfg),
        };
        let node = Arc::new(Node {
            cfg,
            id,
            auth,
            store,
            hub,
            fanout,
            presence,
            sequencer,
            router,
            limits,
            cluster,
            sessions: DashMap::new(),
            user_conns: DashMap::new(),
            receipts: Mutex::new(HashMap::new()),
            hot_dirty: Mutex::new(BTreeSet::new()),
            next_conn: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            shutdown,
            writer_task: Mutex::new(Some(writer_task)),
        });
        let tasks = &node.shutdown;
        tasks.spawn(receipt_loop(node.clone()));
        tasks.spawn(hot_count_loop(node.clone()));
        tasks.spawn(retention_loop(node.clone()));
        tasks.spawn(node.clone().run_presence_heartbeat());
        if node.cluster.is_some() {
            tasks.spawn(lease_loop(node.clone()));
        }
        Ok(node)
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

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// The node's shutdown: begins with the drain; background tasks are
    /// started through it.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Open connections on this node.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    /// Count a new connection of `user_key`, or the close code refusing it: a full
    /// node is worth retrying (elsewhere), a user over their limit is not.
    pub fn admit(&self, user_key: &str) -> Result<(), CloseCode> {
        if self.connections() >= self.cfg.max_connections {
            return Err(CloseCode::Unavailable);
        }
        let mut n = self.user_conns.entry(user_key.to_owned()).or_insert(0);
        if *n >= self.cfg.max_connections_per_user {
            return Err(CloseCode::TooManyConnections);
        }
        *n += 1;
        self.connections.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("chorus_connections").set(self.connections() as f64);
        Ok(())
    }

    /// Undo `admit`.
    pub fn release(&self, user_key: &str) {
        if let Some(mut n) = self.user_conns.get_mut(user_key) {
            *n = n.saturating_sub(1);
        }
        self.user_conns.remove_if(user_key, |_, n| *n == 0);
        self.connections.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("chorus_connections").set(self.connections() as f64);
    }

    /// Attach a connection to a session (new or resumed, from this node or any
    /// other); returns its generation. The session's rooms are kept: a resumed
    /// session stays present in them until `settle_session` says which ones the
    /// new connection re-joined.
    pub async fn attach_session(
        &self,
        entry: PresenceEntry,
        kill: Option<Arc<crate::hub::Kill>>,
    ) -> u64 {
        let generation = match self.presence.attach(entry.clone()).await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %e, "presence attach failed");
                // Above the generations the seam hands out before now (see
                // `presence/lua/attach.lua`), so the heartbeat's `refresh`
                // adopts it and registers the session once the seam is back.
                (now_ms().max(0) as u64).saturating_mul(1000)
            }
        };
        match self.sessions.entry(entry.session.clone()) {
            dashmap::Entry::Occupied(mut o) => {
                let slot = o.get_mut();
                slot.generation = generation;
                slot.entry = entry;
                // The connection this one resumes may still be open (a socket
                // its client gave up on): one session, one connection.
                if let Some(old) = std::mem::replace(&mut slot.kill, kill) {
                    old.kill(CloseCode::SessionTakenOver);
                }
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(SessionSlot {
                    generation,
                    entry,
                    rooms: HashSet::new(),
                    kill,
                });
            }
        }
        generation
    }

    /// A resumed connection finished re-joining `rooms`: the session leaves the
    /// rooms its previous connection had and this one did not take back (unless
    /// a newer connection attached meanwhile, which settles itself).
    pub async fn settle_session(
        &self,
        session: &str,
        generation: u64,
        rooms: &[String],
        user: &str,
    ) {
        if let Some(mut slot) = self.sessions.get_mut(session)
            && slot.generation == generation
        {
            slot.rooms = rooms.iter().cloned().collect();
        }
        match self.presence.settle(session, generation, rooms).await {
            Ok(offline) => {
                for room in offline {
                    self.broadcast_left(&room, user).await;
                }
            }
            Err(e) => warn!(error = %e, "presence settle failed"),
        }
    }

    /// A connection of `session` entered a room: presence join, diff if the user
    /// came online in it. Returns the room's online count when announcing
    /// needed it (the join reply reuses it instead of asking again).
    pub async fn presence_join(
        &self,
        room: &str,
        session: &str,
        entry: &PresenceEntry,
        conn: ConnId,
    ) -> Option<u64> {
        if let Some(mut slot) = self.sessions.get_mut(session) {
            slot.rooms.insert(room.to_owned());
        }
        match self.presence.join(room, session).await {
            Ok(true) => {
                let joined = vec![chorus_protocol::PresenceUser {
                    user: entry.user.clone(),
                    devices: vec![entry.device_info()],
                }];
                self.announce(room, joined, vec![], Some(conn)).await
            }
            Ok(false) => None,
            Err(e) => {
                warn!(error = %e, "presence join failed");
                None
            }
        }
    }

    /// A connection of `session` left a room explicitly: immediate presence leave.
    pub async fn presence_leave(&self, room: &str, session: &str, user: &str) {
        if let Some(mut slot) = self.sessions.get_mut(session) {
            slot.rooms.remove(room);
        }
        match self.presence.leave(room, session).await {
            Ok(true) => self.broadcast_left(room, user).await,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "presence leave failed"),
        }
    }

    async fn broadcast_left(&self, room: &str, user: &str) {
        self.broadcast_left_users(room, vec![user.to_owned()]).await;
    }

    async fn broadcast_left_users(&self, room: &str, users: Vec<String>) {
        let _ = self.announce(room, vec![], users, None).await;
    }

    /// Tell a room's members who came online and who went offline: a diff,
    /// or for a hot room (more than `--presence-hot-users` online) a mark to
    /// broadcast its online count at the next `hot_count_loop` tick (one
    /// frame per interval, whatever the churn). Returns the online count, if
    /// it could be read.
    async fn announce(
        &self,
        room: &str,
        joined: Vec<chorus_protocol::PresenceUser>,
        left: Vec<String>,
        except: Option<ConnId>,
    ) -> Option<u64> {
        let online = self.presence.room_count(room).await.ok();
        if online.is_some_and(|n| n > self.cfg.presence_hot_users) {
            self.hot_dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(room.to_owned());
            return online;
        }
        let frame = ServerFrame::PresenceDiff {
            room: public_name(room).to_owned(),
            joined,
            left,
            online: None,
        };
        self.broadcast(room, &frame, except).await;
        online
    }

    /// Broadcast the online count of every hot room that changed.
    async fn flush_hot_counts(&self) {
        let rooms = std::mem::take(&mut *self.hot_dirty.lock().unwrap_or_else(|e| e.into_inner()));
        for room in rooms {
            let Ok(online) = self.presence.room_count(&room).await else {
                continue;
            };
            let frame = ServerFrame::PresenceDiff {
                room: public_name(&room).to_owned(),
                joined: vec![],
                left: vec![],
                online: Some(online),
            };
            self.broadcast(&room, &frame, None).await;
        }
    }

    /// A connection of a session ended. After the grace period, unless the session
    /// was resumed meanwhile (a newer generation attached, on this node or any
    /// other, which settles the rooms itself), its presence goes.
    pub fn detach_session(self: &Arc<Self>, session: String, generation: u64, user: String) {
        let node = self.clone();
        let grace = self.cfg.presence_grace();
        self.shutdown.spawn(async move {
            // A draining node still removes presence, without waiting out the grace.
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = node.shutdown.cancelled() => {}
            }
            // Stop refreshing first: a heartbeat that already took its snapshot
            // finds the tombstone `expire_if` leaves and does not bring the
            // session back, and a resume attaching on this node meanwhile keeps
            // its slot (its generation differs).
            node.sessions
                .remove_if(&session, |_, s| s.generation == generation);
            match node.presence.expire_if(&session, generation).await {
                Ok(Some(offline)) => {
                    for room in offline {
                        node.broadcast_left(&room, &user).await;
                    }
                }
                Ok(None) => {}
                // Its entries expire by themselves; `sweep` announces the leaves.
                Err(e) => warn!(error = %e, "presence expire failed"),
            }
        });
    }

    /// One presence heartbeat: refresh this node's sessions in the seam (which
    /// puts back whatever it lost; users who thereby came back into a room are
    /// announced as joined), then sweep the rooms this node has sessions in and
    /// announce the users whose entries expired (another node died or stalled).
    pub async fn presence_heartbeat(&self) {
        let live: Vec<LiveSession> = self
            .sessions
            .iter()
            .map(|s| LiveSession {
                entry: s.entry.clone(),
                generation: s.generation,
                rooms: s.rooms.iter().cloned().collect(),
            })
            .collect();
        match self.presence.refresh(&live).await {
            Ok(rejoined) => {
                let entries: HashMap<&str, &PresenceEntry> = live
                    .iter()
                    .map(|s| (s.entry.session.as_str(), &s.entry))
                    .collect();
                let mut by_room: BTreeMap<String, Vec<chorus_protocol::PresenceUser>> =
                    BTreeMap::new();
                for Rejoined { room, session } in rejoined {
                    if let Some(e) = entries.get(session.as_str()) {
                        by_room
                            .entry(room)
                            .or_default()
                            .push(chorus_protocol::PresenceUser {
                                user: e.user.clone(),
                                devices: vec![e.device_info()],
                            });
                    }
                }
                for (room, joined) in by_room {
                    let _ = self.announce(&room, joined, vec![], None).await;
                }
            }
            Err(e) => warn!(error = %e, "presence refresh failed"),
        }
        let rooms: BTreeSet<String> = live.into_iter().flat_map(|s| s.rooms).collect();
        for room in rooms {
            match self.presence.sweep(&room).await {
                Ok(gone) if gone.is_empty() => {}
                Ok(gone) => self.broadcast_left_users(&room, gone).await,
                Err(e) => {
                    warn!(error = %e, "presence sweep failed");
                    break;
                }
            }
        }
    }

    /// Run `presence_heartbeat` every `Presence::refresh_interval` until the
    /// drain starts; returns at once for a presence whose entries never expire.
    pub async fn run_presence_heartbeat(self: Arc<Self>) {
        let Some(every) = self.presence.refresh_interval() else {
            return;
        };
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.presence_heartbeat().await,
                _ = self.shutdown.cancelled() => break,
            }
        }
    }

    /// Serialise a frame once and broadcast it to a room on every node.
    pub async fn broadcast(&self, room: &str, frame: &ServerFrame, except: Option<ConnId>) {
        let bytes = Utf8Bytes::from(frame.encode());
        if let Err(e) = self.fanout.broadcast(room, bytes, except).await {
            warn!(%room, error = %e, "broadcast failed");
        }
    }

    /// Persist a receipt position and queue it for the room's coalesced broadcast.
    pub async fn mark(
        &self,
        room: &str,
        user: &str,
        user_key: &str,
        position: Position,
        seq: u64,
    ) -> Result<(), chorus_history::StoreError> {
        let Some(moved) = self.store.mark(room, user_key, position, seq).await? else {
            return Ok(());
        };
        let mut pending = self.receipts.lock().unwrap_or_else(|e| e.into_inner());
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

    /// Begin the drain: refuse new connections and sends, tell clients to
    /// reconnect elsewhere, flush the writer; returns when done or at the deadline.
    pub async fn drain(&self) {
        if self.draining.swap(true, Ordering::AcqRel) {
            return;
        }
        info!(connections = self.connections(), "draining");
        self.hub.stop_holding();
        self.shutdown.begin();
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.cfg.drain_timeout_ms);
        while self.connections() > 0 && tokio::time::Instant::now() < deadline {
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
        self.flush_receipts().await;
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
        info!(connections = self.connections(), "drained");
    }

    async fn flush_receipts(&self) {
        let pending = std::mem::take(&mut *self.receipts.lock().unwrap_or_else(|e| e.into_inner()));
        for (room, users) in pending {
            let frame = ServerFrame::Receipt {
                room: public_name(&room).to_owned(),
                receipts: users.into_values().collect(),
            };
            self.broadcast(&room, &frame, None).await;
        }
    }

    /// Retention policy from the configuration, if any.
    fn retention(&self) -> Option<Retention> {
        let r = Retention {
            max_age_ms: (self.cfg.retention_max_age_secs > 0)
                .then(|| self.cfg.retention_max_age_secs * 1000),
            max_count: (self.cfg.retention_max_count > 0).then_some(self.cfg.retention_max_count),
        };
        (r.max_age_ms.is_some() || r.max_count.is_some()).then_some(r)
    }

    /// Run retention once now; returns the messages deleted.
    pub async fn trim_now(&self) -> Result<u64, chorus_history::StoreError> {
        match self.retention() {
            Some(r) => self.store.trim(r, now_ms()).await,
            None => Ok(0),
        }
    }
}

/// Broadcast coalesced receipts every `receipt_interval_ms`.
async fn receipt_loop(node: Arc<Node>) {
    let mut tick =
        tokio::time::interval(Duration::from_millis(node.cfg.receipt_interval_ms.max(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => node.flush_receipts().await,
            _ = node.shutdown.cancelled() => break,
        }
    }
}

/// Broadcast hot rooms' changed online counts every `presence_count_interval_ms`.
async fn hot_count_loop(node: Arc<Node>) {
    let mut tick = tokio::time::interval(Duration::from_millis(
        node.cfg.presence_count_interval_ms.max(1),
    ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => node.flush_hot_counts().await,
            _ = node.shutdown.cancelled() => break,
        }
    }
}

/// Renew this node's room leases (cluster mode); release rooms idle a minute.
async fn lease_loop(node: Arc<Node>) {
    let Some(c) = node.cluster.as_ref() else {
        return;
    };
    let ownership = c.ownership.clone();
    let mut tick = tokio::time::interval(node.cfg.owner_lease() / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => ownership.renew(Duration::from_secs(60)).await,
            _ = node.shutdown.cancelled() => break,
        }
    }
}

/// Trim history on an interval when a retention policy is configured.
async fn retention_loop(node: Arc<Node>) {
    if node.retention().is_none() {
        return;
    }
    let mut tick =
        tokio::time::interval(Duration::from_secs(node.cfg.retention_interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => match node.trim_now().await {
                Ok(n) if n > 0 => {
                    metrics::counter!("chorus_retention_deleted_total").increment(n);
                    info!(deleted = n, "retention trimmed history");
                }
                Ok(_) => {}
                Err(e) => warn!(error = %e, "retention failed"),
            },
            _ = node.shutdown.cancelled() => break,
        }
    }
}
