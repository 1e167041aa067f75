//! Room ownership in cluster mode: which node is a room's single writer.
//!
//! A short lease in Redis (`{prefix}own:{room}` = node id, with a TTL) is only a
//! routing hint. The truth is the epoch in the history store: a node that takes
//! a room bumps its epoch when its writer first commits there, and every commit
//! checks the epoch in the same transaction. So two nodes that both believe they
//! own a room (a paused owner waking up after its lease expired, Redis restarted
//! empty) never both commit: the older epoch is fenced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use fred::prelude::*;
use fred::types::scripts::Script;
use fred::types::{Expiration, SetOptions};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::shutdown::Shutdown;

const RENEW_LUA: &str = include_str!("lua/lease_renew.lua");
const RELEASE_LUA: &str = include_str!("lua/lease_release.lua");

/// Who writes a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// This node holds the lease.
    Me,
    /// Another node holds it.
    Other(String),
}

/// The lease keeper of one node.
pub(crate) struct Ownership {
    client: Client,
    prefix: String,
    node: String,
    lease: Duration,
    /// Rooms whose lease this node holds -> last use (idle rooms are released).
    owned: DashMap<String, Instant>,
    /// Recently seen owners of other rooms -> (node, when seen): saves a Redis
    /// round trip per forwarded send. Invalidated on any forwarding failure.
    seen: DashMap<String, (String, Instant)>,
    /// Tells the writer of rooms acquired anew: it must re-claim their epoch
    /// before it commits there again (its cached epoch may be from an earlier
    /// tenure). Sent before `resolve` returns, so before the send that asked.
    reclaims: mpsc::Sender<String>,
    renew: Script,
    release: Script,
}

impl Ownership {
    pub(crate) fn new(
        client: Client,
        prefix: String,
        node: String,
        lease: Duration,
        reclaims: mpsc::Sender<String>,
    ) -> Ownership {
        Ownership {
            client,
            prefix,
            node,
            lease,
            owned: DashMap::new(),
            seen: DashMap::new(),
            reclaims,
            renew: Script::from_lua(RENEW_LUA),
            release: Script::from_lua(RELEASE_LUA),
        }
    }

    fn key(&self, room: &str) -> String {
        format!("{}own:{room}", self.prefix)
    }

    /// Renew this node's leases three times per lease until the shutdown;
    /// rooms idle a minute are released.
    pub(crate) fn start(self: &Arc<Self>, shutdown: &Shutdown) {
        let (ownership, stop) = (self.clone(), shutdown.clone());
        shutdown.spawn(async move {
            let mut tick = tokio::time::interval(ownership.lease / 3);
            loop {
                tokio::select! {
                    _ = tick.tick() => ownership.renew(Duration::from_secs(60)).await,
                    _ = stop.cancelled() => break,
                }
            }
        });
    }

    /// Whether this node holds the room's lease (as far as it knows).
    pub(crate) fn owns(&self, room: &str) -> bool {
        match self.owned.get_mut(room) {
            Some(mut used) => {
                *used = Instant::now();
                true
            }
            None => false,
        }
    }

    /// The room's owner; takes the lease when nobody holds it.
    pub(crate) async fn resolve(&self, room: &str) -> Result<Owner, Error> {
        if self.owns(room) {
            return Ok(Owner::Me);
        }
        if let Some(seen) = self.seen.get(room)
            && seen.1.elapsed() < self.lease / 2
        {
            return Ok(Owner::Other(seen.0.clone()));
        }
        if !self.client.is_connected() {
            // Fail at once rather than after the command timeout: the caller
            // answers `unavailable` and the client retries.
            return Err(Error::new(ErrorKind::Unknown, "redis not connected"));
        }
        let key = self.key(room);
        for _ in 0..3 {
            let taken: Option<String> = self
                .client
                .set(
                    &key,
                    self.node.as_str(),
                    Some(Expiration::PX(self.lease.as_millis() as i64)),
                    Some(SetOptions::NX),
                    false,
                )
                .await?;
            if taken.is_some() {
                self.took(room);
                return Ok(Owner::Me);
            }
            let holder: Option<String> = self.client.get(&key).await?;
            match holder {
                Some(n) if n == self.node => {
                    // Ours from an earlier tenure this process forgot (or a
                    // restart with the same node id): use it, re-claiming the epoch.
                    self.took(room);
                    return Ok(Owner::Me);
                }
                Some(n) => {
                    self.seen
                        .insert(room.to_owned(), (n.clone(), Instant::now()));
                    return Ok(Owner::Other(n));
                }
                // Expired between SET and GET: try again.
                None => continue,
            }
        }
        Err(Error::new(
            ErrorKind::Unknown,
            "room lease kept changing hands",
        ))
    }

    fn took(&self, room: &str) {
        debug!(%room, "took room lease");
        metrics::counter!("chorus_owner_leases_taken_total").increment(1);
        self.owned.insert(room.to_owned(), Instant::now());
        self.seen.remove(room);
        if self.reclaims.try_send(room.to_owned()).is_err() {
            // The writer is far behind (or stopping). Still safe: the store's
            // epoch fences a commit on the stale epoch, which answers
            // `not_owner`, and the retry claims the room.
            metrics::counter!("chorus_reclaims_dropped_total").increment(1);
        }
    }

    /// Forget what is known about a room's owner (after a failed forward, or a
    /// fenced commit): the next `resolve` asks Redis.
    pub(crate) fn invalidate(&self, room: &str) {
        self.seen.remove(room);
        if self.owned.remove(room).is_some() {
            metrics::counter!("chorus_owner_leases_lost_total").increment(1);
        }
    }

    /// Renew the leases of rooms used within `idle`; release the others. Rooms
    /// whose lease is gone or held elsewhere are forgotten.
    pub(crate) async fn renew(&self, idle: Duration) {
        let rooms: Vec<(String, Instant)> = self
            .owned
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        for (room, used) in rooms {
            let key = self.key(&room);
            if used.elapsed() > idle {
                self.owned.remove(&room);
                let _ = self
                    .release
                    .evalsha_with_reload::<i64, _, _>(&self.client, key, self.node.as_str())
                    .await;
                continue;
            }
            let renewed: Result<i64, Error> = self
                .renew
                .evalsha_with_reload(
                    &self.client,
                    key,
                    vec![self.node.clone(), self.lease.as_millis().to_string()],
                )
                .await;
            match renewed {
                Ok(1) => {}
                Ok(_) => {
                    warn!(%room, "room lease lost to another node");
                    self.invalidate(&room);
                }
                Err(e) => {
                    // Redis away: keep believing we own it; the epoch check in the
                    // store protects the room if another node takes over meanwhile.
                    debug!(%room, error = %e, "renewing room lease failed");
                }
            }
        }
    }

    /// Give every lease up (drain): other nodes take the rooms at once.
    pub(crate) async fn release_all(&self) {
        let rooms: Vec<String> = self.owned.iter().map(|e| e.key().clone()).collect();
        self.owned.clear();
        for room in rooms {
            let _ = self
                .release
                .evalsha_with_reload::<i64, _, _>(&self.client, self.key(&room), self.node.as_str())
                .await;
        }
    }
}
