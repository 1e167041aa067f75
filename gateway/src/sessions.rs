//! Sessions and their presence: what this node holds of each session (a live
//! connection, or one in its grace period), attach / settle / detach with the
//! grace, presence joins and leaves with their diffs, the heartbeat that
//! refreshes this node's sessions in the presence seam and sweeps what
//! other nodes left, coalesced diffs of busy rooms and hot rooms' online
//! counts.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_protocol::{CloseCode, ServerFrame};
use dashmap::DashMap;
use tracing::warn;

use crate::clock::now_ms;
use crate::fanout::FanOut;
use crate::hub::{ConnId, Kill};
use crate::names::public_name;
use crate::presence::{LiveSession, Presence, PresenceEntry, Rejoined};
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
    kill: Option<Arc<Kill>>,
}

/// The part of the configuration sessions use.
#[derive(Debug, Clone)]
pub(crate) struct SessionsConfig {
    /// A room with more users online than this is hot: counts, not lists
    /// (`--presence-hot-users`).
    pub hot_users: u64,
    /// A room with more users online than this gets coalesced diffs
    /// (`--presence-coalesce-users`).
    pub coalesce_users: u64,
    /// How long a closed connection's session stays present (`--presence-grace-ms`).
    pub grace: Duration,
    /// How often hot rooms' changed counts and coalesced diffs go out
    /// (`--presence-count-interval-ms`).
    pub count_interval: Duration,
}

/// The sessions of one node (see the module docs).
pub(crate) struct Sessions {
    cfg: SessionsConfig,
    presence: Arc<dyn Presence>,
    fanout: Arc<FanOut>,
    shutdown: Shutdown,
    /// Session id -> what this node holds of it (see `SessionSlot`).
    slots: DashMap<String, SessionSlot>,
    /// Hot rooms whose online count changed since the last count broadcast.
    /// A std Mutex: touched briefly, never across `.await`.
    hot_dirty: Mutex<BTreeSet<String>>,
    /// Busy rooms' presence changes not yet announced: room -> user -> their
    /// last change (`Some`: came online, with their devices; `None`: went
    /// offline). A std Mutex, as `hot_dirty`.
    pending: Mutex<HashMap<String, BTreeMap<String, Option<chorus_protocol::PresenceUser>>>>,
}

impl Sessions {
    pub(crate) fn new(
        cfg: SessionsConfig,
        presence: Arc<dyn Presence>,
        fanout: Arc<FanOut>,
        shutdown: &Shutdown,
    ) -> Arc<Sessions> {
        Arc::new(Sessions {
            cfg,
            presence,
            fanout,
            shutdown: shutdown.clone(),
            slots: DashMap::new(),
            hot_dirty: Mutex::new(BTreeSet::new()),
            pending: Mutex::new(HashMap::new()),
        })
    }

    /// Start the sessions' loops (the presence heartbeat, hot counts) on the
    /// node's shutdown.
    pub(crate) fn start(self: &Arc<Self>) {
        self.shutdown.spawn(self.clone().run_presence_heartbeat());
        self.shutdown.spawn(self.clone().hot_count_loop());
    }

    /// Attach a connection to a session (new or resumed, from this node or any
    /// other); returns its generation. The session's rooms are kept: a resumed
    /// session stays present in them until `settle` says which ones the
    /// new connection re-joined.
    pub(crate) async fn attach(&self, entry: PresenceEntry, kill: Option<Arc<Kill>>) -> u64 {
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
        match self.slots.entry(entry.session.clone()) {
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
    pub(crate) async fn settle(
        &self,
        session: &str,
        generation: u64,
        rooms: &[String],
        user: &str,
    ) {
        if let Some(mut slot) = self.slots.get_mut(session)
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
    pub(crate) async fn join(
        &self,
        room: &str,
        session: &str,
        entry: &PresenceEntry,
        conn: ConnId,
    ) -> Option<u64> {
        if let Some(mut slot) = self.slots.get_mut(session) {
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
    pub(crate) async fn leave(&self, room: &str, session: &str, user: &str) {
        if let Some(mut slot) = self.slots.get_mut(session) {
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

    /// Tell a room's members who came online and who went offline: a diff;
    /// for a busy room (more than `--presence-coalesce-users` online, or with
    /// changes still pending) the changes are kept for one coalesced diff at
    /// the next `hot_count_loop` tick; for a hot room (more than
    /// `--presence-hot-users` online) a mark to broadcast its online count at
    /// that tick (one frame per interval, whatever the churn). Returns the
    /// online count, if it could be read.
    async fn announce(
        &self,
        room: &str,
        joined: Vec<chorus_protocol::PresenceUser>,
        left: Vec<String>,
        except: Option<ConnId>,
    ) -> Option<u64> {
        let online = self.presence.room_count(room).await.ok();
        if online.is_some_and(|n| n > self.cfg.hot_users) {
            self.hot_dirty
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(room.to_owned());
            return online;
        }
        {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            // Once changes of a room wait, later ones wait behind them: a diff
            // sent now could overtake an older change of the same user.
            if online.is_some_and(|n| n > self.cfg.coalesce_users) || pending.contains_key(room) {
                let changes = pending.entry(room.to_owned()).or_default();
                for u in joined {
                    changes.insert(u.user.clone(), Some(u));
                }
                for u in left {
                    changes.insert(u, None);
                }
                return online;
            }
        }
        let frame = ServerFrame::PresenceDiff {
            room: public_name(room).to_owned(),
            joined,
            left,
            online: None,
        };
        self.fanout.announce(room, &frame, except).await;
        online
    }

    /// Send every busy room's pending changes as one diff each.
    async fn flush_pending_diffs(&self) {
        let rooms = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for (room, changes) in rooms {
            let (mut joined, mut left) = (Vec::new(), Vec::new());
            for (user, change) in changes {
                match change {
                    Some(u) => joined.push(u),
                    None => left.push(user),
                }
            }
            let frame = ServerFrame::PresenceDiff {
                room: public_name(&room).to_owned(),
                joined,
                left,
                online: None,
            };
            self.fanout.announce(&room, &frame, None).await;
        }
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
            self.fanout.announce(&room, &frame, None).await;
        }
    }

    /// A connection of a session ended. After the grace period, unless the session
    /// was resumed meanwhile (a newer generation attached, on this node or any
    /// other, which settles the rooms itself), its presence goes.
    pub(crate) fn detach(self: &Arc<Self>, session: String, generation: u64, user: String) {
        let sessions = self.clone();
        let grace = self.cfg.grace;
        self.shutdown.spawn(async move {
            // A draining node still removes presence, without waiting out the grace.
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = sessions.shutdown.cancelled() => {}
            }
            // Stop refreshing first: a heartbeat that already took its snapshot
            // finds the tombstone `expire_if` leaves and does not bring the
            // session back, and a resume attaching on this node meanwhile keeps
            // its slot (its generation differs).
            sessions
                .slots
                .remove_if(&session, |_, s| s.generation == generation);
            match sessions.presence.expire_if(&session, generation).await {
                Ok(Some(offline)) => {
                    for room in offline {
                        sessions.broadcast_left(&room, &user).await;
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
    pub(crate) async fn heartbeat(&self) {
        let live: Vec<LiveSession> = self
            .slots
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

    /// Run `heartbeat` every `Presence::refresh_interval` until the
    /// drain starts; returns at once for a presence whose entries never expire.
    async fn run_presence_heartbeat(self: Arc<Self>) {
        let Some(every) = self.presence.refresh_interval() else {
            return;
        };
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.heartbeat().await,
                _ = self.shutdown.cancelled() => break,
            }
        }
    }

    /// Broadcast busy rooms' coalesced diffs, then hot rooms' changed online
    /// counts, every `count_interval`; once more when the drain begins.
    async fn hot_count_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.cfg.count_interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.flush_pending_diffs().await;
                    self.flush_hot_counts().await;
                }
                _ = self.shutdown.cancelled() => {
                    self.flush_pending_diffs().await;
                    break;
                }
            }
        }
    }
}
