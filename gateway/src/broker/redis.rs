//! Redis pub/sub fan-out between nodes (cluster mode).
//!
//! Channels: `{prefix}r:{room}` carries a room's committed batches and
//! ephemeral frames; `{prefix}n:{node}` is a node's inbox (forwarded sends and
//! their answers, see `router`). One subscriber connection per node; fred
//! re-subscribes after a reconnect.
//!
//! Pub/sub is lossy (a reconnect drops what was published meanwhile), so every
//! batch carries its seq range, and this node tracks, per subscribed room, the
//! last seq it delivered. A batch that starts past it is preceded by the missing
//! range read from history; a periodic tip check finds losses at the end of a
//! burst. Connections de-duplicate by seq, so an overlap costs nothing but bytes.
//!
//! Wire format (text; frames are compact JSON, which never contains a raw newline):
//! - `B {origin} {first} {last}\n{frame}\n{frame}...`: a committed batch.
//! - `E {origin} {except_conn|-}\n{frame}`: an ephemeral frame.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use chorus_history::{HistoryStore, ReadRange};
use fred::clients::SubscriberClient;
use fred::prelude::*;
use tracing::{debug, info, warn};

use super::{Broker, BrokerError};
use crate::auth::public_name;
use crate::hub::{ConnId, Hub, MsgBatch};
use crate::router::Forwarder;
use crate::shutdown::Shutdown;
use crate::wire::{msg_frame, to_message};

/// What this node delivered of a subscribed room.
struct Feed {
    /// Highest seq handed to the hub.
    last: u64,
    /// When `last` last moved (a tip check leaves fresh rooms alone: their
    /// batches may be in flight).
    moved: Instant,
}

/// Messages read from history per page when filling a gap.
const FILL_PAGE: u32 = 500;

/// Largest gap (in frame bytes) this node fills by queueing the frames on its
/// connections; larger gaps are announced as a tip instead.
const FILL_INLINE_BYTES: usize = 256 * 1024;

/// The Redis broker of one node.
pub struct RedisBroker {
    node: String,
    prefix: String,
    client: Client,
    subscriber: SubscriberClient,
    hub: Arc<Hub>,
    store: Arc<dyn HistoryStore>,
    /// Subscribed room -> delivery cursor. A std Mutex: one map operation at a
    /// time, never held across `.await`.
    feeds: Mutex<HashMap<String, Feed>>,
    /// Receives forwarded sends and their answers.
    forwarder: OnceLock<Arc<Forwarder>>,
    /// Whether the subscriber connection is up (for `/readyz`).
    connected: AtomicBool,
}

impl RedisBroker {
    /// Connect both Redis clients (publisher and subscriber) and subscribe to
    /// this node's inbox. Fails if Redis cannot be reached at start.
    pub async fn connect(
        url: &str,
        prefix: String,
        node: String,
        hub: Arc<Hub>,
        store: Arc<dyn HistoryStore>,
    ) -> Result<(Arc<RedisBroker>, Client), Error> {
        let client = builder(url, COMMAND_CHANNELS)?.build()?;
        client.init().await?;
        let subscriber = builder(url, SUBSCRIBER_CHANNELS)?.build_subscriber_client()?;
        subscriber.init().await?;
        let _resubscribe = subscriber.manage_subscriptions();
        subscriber
            .subscribe(Forwarder::inbox(&prefix, &node))
            .await?;
        let broker = Arc::new(RedisBroker {
            node,
            prefix,
            client: client.clone(),
            subscriber,
            hub,
            store,
            feeds: Mutex::new(HashMap::new()),
            forwarder: OnceLock::new(),
            connected: AtomicBool::new(true),
        });
        Ok((broker, client))
    }

    /// Where forwarded sends and answers go (set once, after the router exists).
    pub fn set_forwarder(&self, f: Arc<Forwarder>) {
        let _ = self.forwarder.set(f);
    }

    /// Whether Redis is reachable (as far as the subscriber knows).
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire) && self.client.is_connected()
    }

    fn room_channel(&self, room: &str) -> String {
        format!("{}r:{room}", self.prefix)
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

    /// The receive loop: room batches, ephemeral frames, the inbox, tip checks.
    /// Ends when `shutdown` begins.
    pub async fn run(self: Arc<Self>, tip_poll: Duration, shutdown: Shutdown) {
        let mut messages = self.subscriber.message_rx();
        let mut reconnects = self.subscriber.reconnect_rx();
        let mut errors = self.subscriber.error_rx();
        let mut tick = tokio::time::interval(tip_poll);
        let inbox = Forwarder::inbox(&self.prefix, &self.node);
        let room_prefix = format!("{}r:", self.prefix);
        loop {
            tokio::select! {
                m = messages.recv() => match m {
                    Ok(m) => {
                        let Some(text) = m.value.as_str() else { continue };
                        if m.channel == inbox.as_str() {
                            self.on_inbox(&text).await;
                        } else if let Some(room) = m.channel.strip_prefix(room_prefix.as_str()) {
                            self.on_room(room, &text).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "pub/sub receiver lagged; checking tips");
                        metrics::counter!("chorus_pubsub_lagged_total").increment(n);
                        self.check_tips(Duration::ZERO).await;
                    }
                    Err(_) => break,
                },
                r = reconnects.recv() => {
                    if r.is_err() { break; }
                    // Whatever was published while the link was down is lost:
                    // fill every subscribed room from history.
                    info!("redis reconnected; re-subscribing and filling gaps");
                    self.connected.store(true, Ordering::Release);
                    metrics::counter!("chorus_redis_reconnects_total").increment(1);
                    if let Err(e) = self.subscriber.resubscribe_all().await {
                        warn!(error = %e, "re-subscribing failed");
                    }
                    self.check_tips(Duration::ZERO).await;
                }
                e = errors.recv() => {
                    if let Ok((e, _)) = e {
                        debug!(error = %e, "redis subscriber error");
                        self.connected.store(false, Ordering::Release);
                    }
                }
                _ = tick.tick() => self.check_tips(tip_poll).await,
                _ = shutdown.cancelled() => break,
            }
        }
        let _ = self.subscriber.quit().await;
    }

    async fn on_inbox(&self, text: &str) {
        let Some(f) = self.forwarder.get() else {
            return;
        };
        let (head, body) = text.split_once('\n').unwrap_or((text, ""));
        let mut parts = head.split(' ');
        match (
            parts.next(),
            parts.next().and_then(|i| i.parse::<u64>().ok()),
        ) {
            (Some("F"), Some(id)) => {
                if let Some(from) = parts.next() {
                    f.on_forward(id, from.to_owned(), body).await;
                }
            }
            (Some("A"), Some(id)) => f.on_reply(id, body),
            _ => warn!("undecodable inbox message"),
        }
    }

    async fn on_room(&self, room: &str, text: &str) {
        let (head, body) = text.split_once('\n').unwrap_or((text, ""));
        let mut parts = head.split(' ');
        let kind = parts.next();
        let origin = parts.next();
        if origin == Some(self.node.as_str()) {
            return; // delivered locally when it was published
        }
        match kind {
            Some("B") => {
                let first = parts.next().and_then(|s| s.parse::<u64>().ok());
                let last = parts.next().and_then(|s| s.parse::<u64>().ok());
                let (Some(first), Some(last)) = (first, last) else {
                    warn!(%room, "undecodable batch");
                    return;
                };
                let frames: Vec<&str> = body.split('\n').collect();
                if frames.len() as u64 != last.saturating_sub(first) + 1 {
                    warn!(%room, first, last, "batch size does not match its range");
                    return;
                }
                self.on_batch(room, first, &frames).await;
            }
            Some("E") => {
                let except = parts.next().and_then(|s| s.parse::<ConnId>().ok());
                // `except` names a connection of the origin node, never of this one.
                let _ = except;
                self.hub
                    .broadcast(room, &Utf8Bytes::from(body.to_owned()), None);
            }
            _ => warn!(%room, "undecodable room message"),
        }
    }

    async fn on_batch(&self, room: &str, first: u64, frames: &[&str]) {
        let last = first + frames.len() as u64 - 1;
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
            .saturating_sub(first - 1);
        let batch: MsgBatch = frames
            .iter()
            .enumerate()
            .skip(skip as usize)
            .map(|(i, f)| (first + i as u64, Utf8Bytes::from((*f).to_owned())))
            .collect();
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

    /// Compare subscribed rooms' tips with what was delivered; fill rooms that
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

/// Capacity of the subscriber's broadcast channels. Room traffic arrives
/// through one: a lagging reader loses messages (then fills them from
/// history), so it gets room. Tokio allocates every slot of a broadcast
/// channel up front, and a fred client has several such channels, so this is
/// memory paid at start whatever the traffic (65,536 slots cost about 140 MiB
/// over the node's clients).
const SUBSCRIBER_CHANNELS: usize = 8_192;
/// Command clients never read their broadcast channels (pub/sub, keyspace
/// events): the smallest capacity.
const COMMAND_CHANNELS: usize = 16;

fn builder(url: &str, channel_capacity: usize) -> Result<Builder, Error> {
    let config = Config::from_url(url)?;
    let mut b = Builder::from_config(config);
    b.with_performance_config(|p| {
        p.broadcast_channel_capacity = channel_capacity;
        p.default_command_timeout = Duration::from_secs(2);
    })
    .with_connection_config(|c| {
        c.connection_timeout = Duration::from_secs(2);
        c.max_command_attempts = 2;
    })
    .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2));
    Ok(b)
}

/// A plain command client with the same settings (ownership, presence).
pub async fn command_client(url: &str) -> Result<Client, Error> {
    let client = builder(url, COMMAND_CHANNELS)?.build()?;
    client.init().await?;
    Ok(client)
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(
        &self,
        room: &str,
        first: u64,
        last: u64,
        frames: Vec<(u64, Utf8Bytes)>,
    ) -> Result<(), BrokerError> {
        let mut payload =
            String::with_capacity(64 + frames.iter().map(|(_, f)| f.len() + 1).sum::<usize>());
        payload.push_str(&format!("B {} {first} {last}", self.node));
        for (_, f) in &frames {
            payload.push('\n');
            payload.push_str(f.as_str());
        }
        // Local members first (no Redis round trip), then everyone else.
        self.hub.deliver(room, frames.into());
        self.advance(room, last);
        // Redis away: do not wait for it. fred would queue the publish until the
        // command timeout, holding the writer (and every ack of the batch) that
        // long while the batch is already committed. Other nodes find the
        // missing range by seq (next batch, tip check, reconnect) and read it
        // from history.
        if !self.client.is_connected() {
            metrics::counter!("chorus_redis_errors_total", "op" => "publish").increment(1);
            return Err(BrokerError("redis not connected".into()));
        }
        let sent: Result<i64, Error> = self.client.publish(self.room_channel(room), payload).await;
        sent.map(|_| ()).map_err(|e| {
            metrics::counter!("chorus_redis_errors_total", "op" => "publish").increment(1);
            BrokerError(e.to_string())
        })
    }

    async fn broadcast(
        &self,
        room: &str,
        frame: Utf8Bytes,
        except: Option<ConnId>,
    ) -> Result<(), BrokerError> {
        self.hub.broadcast(room, &frame, except);
        // Ephemeral and best effort: with Redis away, drop it at once rather
        // than hold the caller (a connection's loop) for the command timeout.
        if !self.client.is_connected() {
            return Err(BrokerError("redis not connected".into()));
        }
        let except = except.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        let payload = format!("E {} {except}\n{}", self.node, frame.as_str());
        let sent: Result<i64, Error> = self.client.publish(self.room_channel(room), payload).await;
        sent.map(|_| ()).map_err(|e| BrokerError(e.to_string()))
    }

    async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        if self.lock().contains_key(room) {
            return Ok(()); // subscribed, with a cursor
        }
        let failed = |e: String| {
            metrics::counter!("chorus_redis_errors_total", "op" => "subscribe").increment(1);
            BrokerError(e)
        };
        // Redis known to be away: answer at once rather than hold the join
        // for the command timeout; the client retries.
        if !self.is_connected() {
            return Err(failed("redis not connected".into()));
        }
        self.subscriber
            .subscribe(self.room_channel(room))
            .await
            .map_err(|e| failed(e.to_string()))?;
        // Everything committed before the subscription is in history: start the
        // cursor at the tip so a later gap is measured from there. Without a
        // cursor, batches of the room are dropped and tip checks skip it, so
        // a failure here fails the join (the caller unsubscribes).
        let tip = self
            .store
            .tips(&[room.to_owned()])
            .await
            .map_err(|e| BrokerError(e.to_string()))?
            .first()
            .copied()
            .unwrap_or(0);
        self.lock().entry(room.to_owned()).or_insert(Feed {
            last: tip,
            moved: Instant::now(),
        });
        Ok(())
    }

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
        let channel = self.room_channel(room);
        let result = self
            .subscriber
            .unsubscribe(channel.clone())
            .await
            .map_err(|e| BrokerError(e.to_string()));
        // A join that came in after the check subscribed on its own; its
        // SUBSCRIBE may have reached Redis before this UNSUBSCRIBE. Put the
        // channel back (subscribing twice is harmless).
        if self.hub.local_members(room) > 0
            && let Err(e) = self.subscriber.subscribe(channel).await
        {
            warn!(%room, error = %e, "re-subscribing after a racing unsubscribe failed");
        }
        result
    }
}
