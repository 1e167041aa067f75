//! Redis pub/sub between nodes (cluster mode): the transport only.
//!
//! Channels: `{prefix}r:{room}` carries a room's committed batches and
//! ephemeral frames; `{prefix}n:{node}` is a node's inbox (forwarded sends and
//! their answers, in the format of `inbox`). One subscriber connection per node; fred
//! re-subscribes after a reconnect, and the handler is told to resync then
//! (and when the receiver lagged): pub/sub drops what is published while the
//! link is down. Cursors and gap filling are the fan-out's.
//!
//! Wire format (text; frames are compact JSON, which never contains a raw newline):
//! - `B {origin} {first} {last}\n{frame}\n{frame}...`: a committed batch.
//! - `E {origin} {conn|-}\n{frame}`: an ephemeral frame. The connection field
//!   is ignored on receipt (it could only name a connection of the origin);
//!   this node writes `-`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::*;
use tracing::{debug, info, warn};

use super::{Broker, BrokerError, BrokerHandler};
use crate::cluster::client;
use crate::hub::MsgBatch;
use crate::inbox::{self, Encoded, Inbox, InboxError, InboxHandler};
use crate::shutdown::Shutdown;

/// The Redis broker of one node.
pub struct RedisBroker {
    /// This node's id: the origin written on what it publishes, so that it
    /// skips its own messages.
    node: String,
    /// Namespaces every channel (several deployments may share a Redis).
    prefix: String,
    /// Publishes (and, shared with `ownership`, runs commands).
    client: Client,
    /// The one connection that receives every subscribed channel, this
    /// node's inbox included.
    subscriber: SubscriberClient,
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
    ) -> Result<(Arc<RedisBroker>, Client), Error> {
        let client = client::command_client(url).await?;
        let subscriber = client::subscriber_client(url).await?;
        let _resubscribe = subscriber.manage_subscriptions();
        subscriber.subscribe(inbox_channel(&prefix, &node)).await?;
        let broker = Arc::new(RedisBroker {
            node,
            prefix,
            client: client.clone(),
            subscriber,
            connected: AtomicBool::new(true),
        });
        Ok((broker, client))
    }

    fn room_channel(&self, room: &str) -> String {
        format!("{}r:{room}", self.prefix)
    }

    /// A message on a room channel: decode it and hand it over, unless this
    /// node published it.
    async fn on_room(&self, handler: &dyn BrokerHandler, room: &str, text: &str) {
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
                if first == 0 || frames.len() as u64 != last.saturating_sub(first) + 1 {
                    warn!(%room, first, last, "batch size does not match its range");
                    return;
                }
                let frames: MsgBatch = frames
                    .into_iter()
                    .enumerate()
                    .map(|(i, f)| (first + i as u64, Utf8Bytes::from(f.to_owned())))
                    .collect();
                handler.on_batch(room, first, last, frames).await;
            }
            // The connection field names a connection of the origin node,
            // never of this one: skipped.
            Some("E") => {
                handler
                    .on_ephemeral(room, Utf8Bytes::from(body.to_owned()))
                    .await;
            }
            _ => warn!(%room, "undecodable room message"),
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(
        &self,
        room: &str,
        first: u64,
        last: u64,
        frames: &MsgBatch,
    ) -> Result<(), BrokerError> {
        let mut payload =
            String::with_capacity(64 + frames.iter().map(|(_, f)| f.len() + 1).sum::<usize>());
        payload.push_str(&format!("B {} {first} {last}", self.node));
        for (_, f) in frames.iter() {
            payload.push('\n');
            payload.push_str(f.as_str());
        }
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

    async fn broadcast(&self, room: &str, frame: &Utf8Bytes) -> Result<(), BrokerError> {
        // Ephemeral and best effort: with Redis away, drop it at once rather
        // than hold the caller (a connection's loop) for the command timeout.
        if !self.client.is_connected() {
            return Err(BrokerError("redis not connected".into()));
        }
        let payload = format!("E {} -\n{}", self.node, frame.as_str());
        let sent: Result<i64, Error> = self.client.publish(self.room_channel(room), payload).await;
        sent.map(|_| ()).map_err(|e| BrokerError(e.to_string()))
    }

    async fn subscribe(&self, room: &str) -> Result<(), BrokerError> {
        let failed = |e: String| {
            metrics::counter!("chorus_redis_errors_total", "op" => "subscribe").increment(1);
            BrokerError(e)
        };
        // Redis known to be away: answer at once rather than hold the join
        // for the command timeout; the client retries.
        if !self.is_healthy() {
            return Err(failed("redis not connected".into()));
        }
        self.subscriber
            .subscribe(self.room_channel(room))
            .await
            .map_err(|e| failed(e.to_string()))
    }

    async fn unsubscribe(&self, room: &str) -> Result<(), BrokerError> {
        self.subscriber
            .unsubscribe(self.room_channel(room))
            .await
            .map_err(|e| BrokerError(e.to_string()))
    }

    /// Whether Redis is reachable (as far as the subscriber knows).
    fn is_healthy(&self) -> bool {
        self.connected.load(Ordering::Acquire) && self.client.is_connected()
    }

    /// The receive loop: room batches, ephemeral frames, the inbox; a lag or
    /// a reconnect tells the handler to resync.
    async fn run(
        self: Arc<Self>,
        handler: Arc<dyn BrokerHandler>,
        inbox_handler: Option<Arc<dyn InboxHandler>>,
        shutdown: Shutdown,
    ) {
        let mut messages = self.subscriber.message_rx();
        let mut reconnects = self.subscriber.reconnect_rx();
        let mut errors = self.subscriber.error_rx();
        let own_inbox = inbox_channel(&self.prefix, &self.node);
        let room_prefix = format!("{}r:", self.prefix);
        loop {
            tokio::select! {
                m = messages.recv() => match m {
                    Ok(m) => {
                        let Some(text) = m.value.as_str() else { continue };
                        if m.channel == own_inbox.as_str() {
                            if let Some(h) = &inbox_handler {
                                inbox::dispatch(&**h, &text).await;
                            }
                        } else if let Some(room) = m.channel.strip_prefix(room_prefix.as_str()) {
                            self.on_room(&*handler, room, &text).await;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        warn!(missed = n, "pub/sub receiver lagged; checking tips");
                        metrics::counter!("chorus_pubsub_lagged_total").increment(n);
                        handler.on_resync().await;
                    }
                    Err(_) => break,
                },
                r = reconnects.recv() => {
                    if r.is_err() { break; }
                    // Whatever was published while the link was down is lost:
                    // the handler fills every subscribed room from history.
                    info!("redis reconnected; re-subscribing and filling gaps");
                    self.connected.store(true, Ordering::Release);
                    metrics::counter!("chorus_redis_reconnects_total").increment(1);
                    if let Err(e) = self.subscriber.resubscribe_all().await {
                        warn!(error = %e, "re-subscribing failed");
                    }
                    handler.on_resync().await;
                }
                e = errors.recv() => {
                    if let Ok((e, _)) = e {
                        debug!(error = %e, "redis subscriber error");
                        self.connected.store(false, Ordering::Release);
                    }
                }
                _ = shutdown.cancelled() => break,
            }
        }
        let _ = self.subscriber.quit().await;
    }
}

/// A node's inbox channel.
fn inbox_channel(prefix: &str, node: &str) -> String {
    format!("{prefix}n:{node}")
}

#[async_trait]
impl Inbox for RedisBroker {
    async fn post(&self, node: &str, message: Encoded) -> Result<bool, InboxError> {
        let receivers: Result<i64, Error> = self
            .client
            .publish(inbox_channel(&self.prefix, node), message.into_string())
            .await;
        receivers
            .map(|n| n > 0)
            .map_err(|e| InboxError(format!("redis: {e}")))
    }
}
