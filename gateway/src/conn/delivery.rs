//! Delivery: the outbound queue written in batches, live room messages
//! checked against the room's cursor (duplicates skipped, gaps filled from
//! history), replay from history, and every write bounded by the write
//! timeout (a client that does not read is slow: close 4002).

use std::sync::Arc;

use axum::extract::ws::{Message as WsMessage, Utf8Bytes};
use chorus_history::ReadRange;
use chorus_protocol::{CloseCode, ServerFrame};
use futures_util::SinkExt;
use tracing::{debug, warn};

use super::{Conn, End, Socket, Step};
use crate::hub::Outbound;
use crate::wire::{msg_frame, to_message};

/// Frames written per flush when draining the outbound queue.
const WRITE_BATCH: usize = 256;
/// Messages read from history per page during replay and gap fill.
const REPLAY_PAGE: u32 = 500;

impl<S: Socket> Conn<S> {
    /// Write history from the room's cursor up to `upto` (inclusive). Returns how
    /// many were written and whether the range was complete (no trimmed hole).
    pub(crate) async fn replay(
        &mut self,
        key: &Arc<str>,
        upto: u64,
    ) -> Result<(u64, bool), ReplayError> {
        let mut written = 0;
        let mut complete = true;
        loop {
            let Some(after) = self.rooms.get(key).map(|j| j.last_seq) else {
                return Ok((written, complete));
            };
            if after >= upto {
                return Ok((written, complete));
            }
            let page = self
                .node
                .store
                .read(
                    key,
                    ReadRange::After {
                        after,
                        limit: REPLAY_PAGE,
                    },
                )
                .await
                .map_err(ReplayError::Store)?;
            if page.first().is_none_or(|m| m.seq > upto) {
                // Trimmed by retention (or not yet visible): report and move on.
                complete = false;
                if let Some(j) = self.rooms.get_mut(key) {
                    j.last_seq = upto;
                }
                return Ok((written, complete));
            }
            let public = self
                .rooms
                .get(key)
                .map(|j| j.public.clone())
                .unwrap_or_default();
            for m in page {
                if m.seq > upto {
                    break;
                }
                let expected = self.rooms.get(key).map(|j| j.last_seq + 1).unwrap_or(m.seq);
                if m.seq != expected {
                    complete = false;
                }
                let seq = m.seq;
                if self.feed(msg_frame(to_message(&public, m))).await.is_err() {
                    return Err(ReplayError::Socket);
                }
                written += 1;
                if let Some(j) = self.rooms.get_mut(key) {
                    j.last_seq = seq;
                }
            }
            if self.flush().await.is_err() {
                return Err(ReplayError::Socket);
            }
        }
    }

    /// Before the ack of `seq`, the sender's own `msg` (PROTOCOL.md 7.1: msg,
    /// then ack), if this connection is joined to the room: what is queued is
    /// written first, and if the message has not arrived yet (it comes from
    /// another node, or the fan-out window holds it) it is read from history.
    /// The live copy is then dropped as a duplicate.
    pub(crate) async fn deliver_upto(&mut self, room: &str, seq: u64) -> Step {
        let key = self.ident.room_key(room);
        let behind = |c: &Self| c.rooms.get(key.as_str()).is_some_and(|j| j.last_seq < seq);
        if !behind(self) {
            return Ok(());
        }
        while let Some(o) = self.rx.0.try_pop() {
            self.feed_outbound(o).await?;
        }
        if !behind(self) {
            return Ok(());
        }
        let Some((key, _)) = self.rooms.get_key_value(key.as_str()) else {
            return Ok(());
        };
        let key = key.clone();
        match self.replay(&key, seq).await {
            Ok(_) => Ok(()),
            Err(ReplayError::Socket) => Err(End::Gone),
            // The ack still goes out; the gap is filled by the tip check.
            Err(ReplayError::Store(e)) => {
                debug!(error = %e, "reading the sender's own message before its ack");
                Ok(())
            }
        }
    }

    /// Write queued frames: this one and whatever else is queued, one flush.
    ///
    /// Stops once the connection was declared slow: it is closed with 4002 next
    /// (the client resumes from its last seq), so writing more to it, or filling
    /// the gap its dropped batch left from history, is wasted work and memory.
    pub(super) async fn on_outbound(&mut self, first: Outbound) -> Step {
        let mut next = Some(first);
        for _ in 0..WRITE_BATCH {
            let Some(o) = next.take() else { break };
            if let Some(code) = self.handle.kill.requested() {
                return Err(End::Close(code));
            }
            self.feed_outbound(o).await?;
            next = self.rx.0.try_pop();
        }
        self.flush().await
    }

    pub(super) async fn feed_outbound(&mut self, out: Outbound) -> Step {
        self.handle.kill.dequeued(out.bytes());
        match out {
            Outbound::Frame(f) => self.feed(f).await,
            Outbound::Msgs { room, frames, .. } => {
                for (seq, frame) in frames.iter() {
                    self.feed_msg(&room, *seq, frame).await?;
                }
                Ok(())
            }
            Outbound::Tip { room, tip } => {
                let behind = self.rooms.get(&room).is_some_and(|j| j.last_seq < tip);
                if behind {
                    // Boxed: a history read is rare, and inline it would make
                    // every connection's state as large as its future.
                    Box::pin(self.catch_up(&room, tip)).await?;
                }
                Ok(())
            }
        }
    }

    /// Write history up to `upto` (a gap, or a tip announced by the node).
    async fn catch_up(&mut self, room: &Arc<str>, upto: u64) -> Step {
        metrics::counter!("chorus_gap_fills_total", "level" => "connection").increment(1);
        match self.replay(room, upto).await {
            Ok(_) => Ok(()),
            Err(ReplayError::Socket) => Err(End::Gone),
            Err(ReplayError::Store(e)) => {
                warn!(room = %room, error = %e, "gap fill failed");
                Err(End::Close(CloseCode::Unavailable))
            }
        }
    }

    /// One live room message: skip what was already written, fill a gap from
    /// history first, then write it.
    async fn feed_msg(&mut self, room: &Arc<str>, seq: u64, frame: &Utf8Bytes) -> Step {
        let Some(last) = self.rooms.get(room).map(|j| j.last_seq) else {
            return Ok(()); // left the room meanwhile
        };
        if seq <= last {
            return Ok(()); // already written (replay overlap)
        }
        if seq > last + 1 {
            Box::pin(self.catch_up(room, seq - 1)).await?;
        }
        if let Some(j) = self.rooms.get_mut(room) {
            j.last_seq = seq;
        }
        self.feed(frame.clone()).await
    }

    /// Queue one frame on the socket, bounded by the write timeout like `flush`:
    /// once the socket's buffers are full, `feed` itself waits for room, and a
    /// client that stopped reading must not hold this task (deaf to its kill
    /// switch, its presence and its socket kept) forever.
    pub(crate) async fn feed(&mut self, frame: Utf8Bytes) -> Step {
        metrics::counter!("chorus_frames_out_total").increment(1);
        let feed = self.ws.feed(WsMessage::Text(frame));
        match tokio::time::timeout(self.node.cfg.conn.write_timeout(), feed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(self.write_timed_out()),
        }
    }

    /// Flush, bounded by the write timeout: a client that does not read is slow.
    pub(crate) async fn flush(&mut self) -> Step {
        match tokio::time::timeout(self.node.cfg.conn.write_timeout(), self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => Err(self.write_timed_out()),
        }
    }

    /// A write blocked past the write timeout: the client is slow. Also trips the
    /// kill switch, so the loop closes with 4002 even where a caller turned the
    /// error into something else (a join's replay answers `Ok` on a socket error,
    /// which otherwise left the join hanging with the connection open).
    fn write_timed_out(&self) -> End {
        self.handle.kill.kill(CloseCode::SlowConsumer);
        End::Close(CloseCode::SlowConsumer)
    }

    pub(crate) async fn write(&mut self, frame: &ServerFrame) -> Step {
        self.feed(Utf8Bytes::from(frame.encode())).await?;
        self.flush().await
    }
}

pub(crate) enum ReplayError {
    Store(chorus_history::StoreError),
    Socket,
}
