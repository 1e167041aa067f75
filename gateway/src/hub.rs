//! The hub: which local connections are in which room, and fan-out to them.
//!
//! Frames arrive already serialised; the hub hands the same bytes to every
//! connection (a reference-count increment each; a committed batch is one queue
//! item). Each connection has one queue bounded twice: in items and in bytes. A
//! connection over either bound is slow and is closed (4002); the hub never waits
//! on a connection, so one slow reader cannot slow a room.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use chorus_protocol::CloseCode;
use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Process-unique connection id.
pub type ConnId = u64;

/// Frames of one committed room batch: `(seq, msg frame)`, ascending.
pub type MsgBatch = Arc<[(u64, Utf8Bytes)]>;

/// One queued outbound item.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame delivered as is (presence, typing, receipts).
    Frame(Utf8Bytes),
    /// Room messages: the connection filters them by seq (de-duplication, gap fill).
    Msgs {
        room: Arc<str>,
        frames: MsgBatch,
        bytes: usize,
    },
    /// The room's history reaches `tip`: a connection behind it reads the rest
    /// from history itself, at the pace its socket allows (used for gaps too
    /// large to queue as frames).
    Tip { room: Arc<str>, tip: u64 },
}

impl Outbound {
    /// Bytes this item holds against the connection's budget.
    pub fn bytes(&self) -> usize {
        match self {
            Outbound::Frame(f) => f.len(),
            Outbound::Msgs { bytes, .. } => *bytes,
            Outbound::Tip { .. } => 0,
        }
    }
}

/// A connection's outbound queue: bounded in items, one consumer (the
/// connection's task), pushed to without waiting.
///
/// Unlike a channel, it holds no buffer while empty: an idle connection pays
/// for a lock, a waker and an empty deque (see BENCHMARKS.md, idle memory).
/// The deque grows with a burst and is released once drained.
#[derive(Debug)]
pub struct Queue {
    state: Mutex<QueueState>,
    waker: AtomicWaker,
    cap: usize,
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Outbound>,
    closed: bool,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds `cap` items.
    Full,
    /// The consumer is gone.
    Closed,
}

/// Slots a drained deque may keep; a larger one is released.
const QUEUE_KEEP: usize = 16;

impl Queue {
    pub fn new(cap: usize) -> Arc<Queue> {
        Arc::new(Queue {
            state: Mutex::new(QueueState::default()),
            waker: AtomicWaker::new(),
            cap: cap.max(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queue an item and wake the consumer.
    pub fn push(&self, item: Outbound) -> Result<(), Refused> {
        {
            let mut st = self.lock();
            if st.closed {
                return Err(Refused::Closed);
            }
            if st.items.len() >= self.cap {
                return Err(Refused::Full);
            }
            st.items.push_back(item);
        }
        self.waker.wake();
        Ok(())
    }

    /// The next item, if one is queued.
    pub fn try_pop(&self) -> Option<Outbound> {
        let mut st = self.lock();
        let item = st.items.pop_front();
        if st.items.is_empty() && st.items.capacity() > QUEUE_KEEP {
            st.items = VecDeque::new();
        }
        item
    }

    /// The next item, waiting for one; `None` once closed and drained.
    pub async fn pop(&self) -> Option<Outbound> {
        std::future::poll_fn(|cx| {
            if let Some(item) = self.try_pop() {
                return Poll::Ready(Some(item));
            }
            // Register, then look again: a push between the two is not lost.
            self.waker.register(cx.waker());
            match self.try_pop() {
                Some(item) => Poll::Ready(Some(item)),
                None if self.lock().closed => Poll::Ready(None),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Refuse further pushes and drop what is queued (the consumer is gone).
    pub fn close(&self) {
        let dropped = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.items)
        };
        drop(dropped);
        self.waker.wake();
    }
}

/// Lets other tasks tell a connection to close with a code.
#[derive(Debug, Default)]
pub struct Kill {
    code: AtomicU16,
    notify: Notify,
    /// Bytes queued for the connection and not yet written (its byte budget).
    queued: AtomicUsize,
}

impl Kill {
    /// Ask the connection to close; the first code wins.
    pub fn kill(&self, code: CloseCode) {
        if self
            .code
            .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    /// The connection wrote an item of `bytes` (or dropped it).
    pub fn dequeued(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The code asked for, if any.
    pub fn requested(&self) -> Option<CloseCode> {
        CloseCode::from_code(self.code.load(Ordering::Acquire))
    }

    /// Resolves once `kill` has been called.
    pub async fn wait(&self) -> CloseCode {
        loop {
            if let Some(c) = self.requested() {
                return c;
            }
            self.notify.notified().await;
        }
    }
}

/// A connection as the hub sees it: where to queue frames and how to stop it.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    pub tx: Arc<Queue>,
    pub kill: Arc<Kill>,
    /// Byte budget of the queue.
    pub max_bytes: usize,
}

impl ConnHandle {
    /// Queue without waiting; a queue over its item or byte bound closes the
    /// connection as slow (the client resumes from its last seq).
    pub fn offer(&self, item: Outbound) -> bool {
        let bytes = item.bytes();
        let before = self.kill.queued.fetch_add(bytes, Ordering::AcqRel);
        if before + bytes > self.max_bytes {
            self.kill.dequeued(bytes);
            self.slow();
            return false;
        }
        match self.tx.push(item) {
            Ok(()) => true,
            Err(Refused::Full) => {
                self.kill.dequeued(bytes);
                self.slow();
                false
            }
            Err(Refused::Closed) => {
                self.kill.dequeued(bytes);
                false
            }
        }
    }

    fn slow(&self) {
        if self.kill.requested().is_none() {
            metrics::counter!("chorus_slow_consumer_closes_total").increment(1);
        }
        self.kill.kill(CloseCode::SlowConsumer);
    }
}

/// When a room's fan-out is coalesced (see `WriterConfig::fanout_window_ms`).
#[derive(Debug, Clone, Copy, Default)]
pub struct FanoutWindow {
    /// Zero: never.
    pub span: Duration,
    /// Rooms with fewer local connections fan out at once.
    pub members: usize,
}

/// Bytes held in a window above which it is fanned out early.
const WINDOW_MAX_BYTES: usize = 64 * 1024;

/// A room's local connections and its coalescing window.
///
/// A large room fans out a batch at once when its previous fan-out is at least
/// `span` old; a batch committed sooner is held until `span` after it, and goes
/// out with everything else held by then. Under load, each connection thus
/// writes a window's messages with one system call; a quiet room adds no
/// latency.
#[derive(Debug, Default)]
struct Room {
    conns: HashMap<ConnId, ConnHandle>,
    /// Frames held for the window's end, ascending seq.
    held: Vec<(u64, Utf8Bytes)>,
    held_bytes: usize,
    /// When the room last fanned out.
    last_fanout: Option<Instant>,
}

/// Room key -> local connections in it.
///
/// DashMap shards the map so joins in one room do not contend with fan-out in
/// another; a shard lock is held only while queueing (`try_send`, never awaits).
#[derive(Debug, Default)]
pub struct Hub {
    rooms: DashMap<Arc<str>, Room>,
    window: FanoutWindow,
    /// Set by the node's drain: nothing is held any more.
    no_hold: AtomicBool,
}

impl Hub {
    pub fn new(window: FanoutWindow) -> Hub {
        Hub {
            rooms: DashMap::new(),
            window,
            no_hold: AtomicBool::new(false),
        }
    }

    /// Add a connection to a room; returns the interned room key and whether the
    /// room had no local connection before (the node should subscribe to it).
    pub fn subscribe(&self, room: &str, conn: ConnHandle) -> (Arc<str>, bool) {
        if let Some(mut entry) = self.rooms.get_mut(room) {
            let key = entry.key().clone();
            entry.conns.insert(conn.id, conn);
            return (key, false);
        }
        let key: Arc<str> = Arc::from(room);
        let mut first = false;
        self.rooms
            .entry(key.clone())
            .or_insert_with(|| {
                first = true;
                Room::default()
            })
            .conns
            .insert(conn.id, conn);
        (key, first)
    }

    /// Remove a connection from a room; returns true if the room has no local
    /// connection left (the node may unsubscribe).
    pub fn unsubscribe(&self, room: &str, conn: ConnId) -> bool {
        let mut empty = false;
        if let Some(mut entry) = self.rooms.get_mut(room) {
            entry.conns.remove(&conn);
            empty = entry.conns.is_empty();
        }
        if empty {
            // Re-check under the entry lock: a join may have raced in.
            self.rooms.remove_if(room, |_, r| r.conns.is_empty());
        }
        empty
    }

    /// Deliver a committed batch of a room to every local connection in it: one
    /// queue item per connection, the frames shared. A large room's batch may
    /// wait for the end of its window (see `Room`); nothing passes frames held
    /// before it.
    pub fn deliver(self: &Arc<Self>, room: &str, frames: MsgBatch) -> usize {
        let Some(mut entry) = self.rooms.get_mut(room) else {
            return 0;
        };
        let (key, r) = entry.pair_mut();
        let w = self.window;
        let small =
            w.span.is_zero() || r.conns.len() < w.members || self.no_hold.load(Ordering::Acquire);
        if small && r.held.is_empty() {
            return fan_out(key, &r.conns, frames);
        }
        let now = Instant::now();
        let open = r.last_fanout.is_some_and(|t| now < t + w.span);
        if small || !open {
            // Out now, after anything still held (a room that shrank below
            // the threshold, or a window whose timer is late).
            if r.held.is_empty() {
                r.last_fanout = Some(now);
                return fan_out(key, &r.conns, frames);
            }
            hold(r, &frames);
            return flush(key, r);
        }
        let arm = r.held.is_empty();
        hold(r, &frames);
        if r.held_bytes >= WINDOW_MAX_BYTES {
            return flush(key, r);
        }
        if arm {
            let at = r.last_fanout.map_or(now, |t| t + w.span);
            let hub = Arc::downgrade(self);
            let key = key.clone();
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                if let Some(hub) = hub.upgrade() {
                    hub.window_end(&key);
                }
            });
        }
        0
    }

    /// Stop holding batches and send everything held (the node is draining:
    /// connections write what is queued, then close).
    pub fn stop_holding(&self) {
        self.no_hold.store(true, Ordering::Release);
        for mut entry in self.rooms.iter_mut() {
            let (key, r) = entry.pair_mut();
            flush(key, r);
        }
    }

    /// Fan out what a room's window holds.
    fn window_end(&self, room: &str) {
        if let Some(mut entry) = self.rooms.get_mut(room) {
            let (key, r) = entry.pair_mut();
            flush(key, r);
        }
    }

    /// Tell every local connection in a room that history reaches `tip`.
    pub fn announce_tip(&self, room: &str, tip: u64) {
        if let Some(mut entry) = self.rooms.get_mut(room) {
            let (key, r) = entry.pair_mut();
            // What the window holds comes before the tip.
            flush(key, r);
            for conn in r.conns.values() {
                conn.offer(Outbound::Tip {
                    room: key.clone(),
                    tip,
                });
            }
        }
    }

    /// Queue a frame to every local connection in a room, except `except`.
    /// Messages held in the room's window go first: a receipt or presence
    /// change never arrives before the messages committed ahead of it.
    pub fn broadcast(&self, room: &str, frame: &Utf8Bytes, except: Option<ConnId>) {
        if let Some(mut entry) = self.rooms.get_mut(room) {
            let (key, r) = entry.pair_mut();
            flush(key, r);
            for conn in r.conns.values() {
                if Some(conn.id) != except {
                    conn.offer(Outbound::Frame(frame.clone()));
                }
            }
        }
    }

    /// How many local connections a room has.
    pub fn local_members(&self, room: &str) -> usize {
        self.rooms.get(room).map(|e| e.conns.len()).unwrap_or(0)
    }

    /// Rooms with at least one local connection.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

/// Add frames to a room's window.
fn hold(r: &mut Room, frames: &MsgBatch) {
    r.held_bytes += frames.iter().map(|(_, f)| f.len()).sum::<usize>();
    r.held.extend(frames.iter().cloned());
}

/// Fan out the frames a room's window holds, if any.
fn flush(key: &Arc<str>, room: &mut Room) -> usize {
    if room.held.is_empty() {
        return 0;
    }
    room.last_fanout = Some(Instant::now());
    room.held_bytes = 0;
    let frames: MsgBatch = std::mem::take(&mut room.held).into();
    fan_out(key, &room.conns, frames)
}

/// One queue item per connection, the frames shared.
fn fan_out(key: &Arc<str>, conns: &HashMap<ConnId, ConnHandle>, frames: MsgBatch) -> usize {
    let bytes = frames.iter().map(|(_, f)| f.len()).sum();
    let mut delivered = 0;
    for conn in conns.values() {
        if conn.offer(Outbound::Msgs {
            room: key.clone(),
            frames: frames.clone(),
            bytes,
        }) {
            delivered += frames.len();
        }
    }
    metrics::counter!("chorus_deliveries_total").increment(delivered as u64);
    delivered
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: ConnId, cap: usize, max_bytes: usize) -> (ConnHandle, Rx) {
        let tx = Queue::new(cap);
        (
            ConnHandle {
                id,
                tx: tx.clone(),
                kill: Arc::new(Kill::default()),
                max_bytes,
            },
            Rx(tx),
        )
    }

    /// The consumer's side, with the calls the tests make.
    struct Rx(Arc<Queue>);

    impl Rx {
        async fn recv(&mut self) -> Option<Outbound> {
            self.0.pop().await
        }
        fn try_recv(&mut self) -> Result<Outbound, ()> {
            self.0.try_pop().ok_or(())
        }
    }

    fn batch(seqs: std::ops::RangeInclusive<u64>) -> MsgBatch {
        seqs.map(|s| (s, Utf8Bytes::from(format!("m{s}"))))
            .collect()
    }

    #[tokio::test]
    async fn deliver_shares_one_batch_and_bounds_kill_slow_readers() {
        let hub = Arc::new(Hub::default());
        let (a, mut ra) = conn(1, 8, 1 << 20);
        let (b, _rb) = conn(2, 1, 1 << 20);
        let (c, _rc) = conn(3, 8, 4);
        assert!(hub.subscribe("r", a.clone()).1);
        assert!(!hub.subscribe("r", b.clone()).1);
        hub.subscribe("r", c.clone());
        hub.deliver("r", batch(1..=3));
        hub.deliver("r", batch(4..=4));
        match ra.recv().await.unwrap() {
            Outbound::Msgs { frames, bytes, .. } => {
                assert_eq!(
                    frames.iter().map(|f| f.0).collect::<Vec<_>>(),
                    vec![1, 2, 3]
                );
                assert_eq!(bytes, 6);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(a.kill.queued_bytes(), 6 + 2, "both batches still counted");
        assert_eq!(
            b.kill.requested(),
            Some(CloseCode::SlowConsumer),
            "item bound"
        );
        assert_eq!(
            c.kill.requested(),
            Some(CloseCode::SlowConsumer),
            "byte bound"
        );
        assert_eq!(a.kill.requested(), None);
        assert!(!hub.unsubscribe("r", 1));
        assert!(!hub.unsubscribe("r", 2));
        assert!(hub.unsubscribe("r", 3));
        assert_eq!(hub.room_count(), 0);
    }

    #[tokio::test]
    async fn a_tip_announcement_costs_no_byte_budget() {
        let hub = Arc::new(Hub::default());
        let (a, mut ra) = conn(1, 8, 1);
        hub.subscribe("r", a.clone());
        hub.announce_tip("r", 500);
        match ra.recv().await.unwrap() {
            Outbound::Tip { tip, .. } => assert_eq!(tip, 500),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            a.kill.requested(),
            None,
            "a tip never trips the byte budget"
        );
    }

    fn seqs_of(o: Outbound) -> Vec<u64> {
        match o {
            Outbound::Msgs { frames, .. } => frames.iter().map(|f| f.0).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_large_room_holds_batches_within_its_window_and_sends_them_together() {
        let span = Duration::from_millis(200);
        let hub = Arc::new(Hub::new(FanoutWindow { span, members: 2 }));
        let (a, mut ra) = conn(1, 64, 1 << 20);
        let (b, mut rb) = conn(2, 64, 1 << 20);
        hub.subscribe("big", a.clone());
        hub.subscribe("big", b.clone());
        let (c, mut rc) = conn(3, 64, 1 << 20);
        hub.subscribe("small", c.clone());

        let t0 = Instant::now();
        assert_eq!(hub.deliver("big", batch(1..=1)), 2, "a quiet room: at once");
        assert_eq!(
            hub.deliver("big", batch(2..=3)),
            0,
            "within the window: held"
        );
        assert_eq!(hub.deliver("big", batch(4..=4)), 0);
        assert_eq!(seqs_of(ra.recv().await.unwrap()), vec![1]);
        assert_eq!(seqs_of(ra.recv().await.unwrap()), vec![2, 3, 4]);
        assert!(
            t0.elapsed() >= span - Duration::from_millis(5),
            "held to the window's end"
        );
        assert_eq!(seqs_of(rb.recv().await.unwrap()), vec![1]);
        assert_eq!(seqs_of(rb.recv().await.unwrap()), vec![2, 3, 4]);

        // A room under the member threshold is never held.
        hub.deliver("small", batch(1..=1));
        hub.deliver("small", batch(2..=2));
        assert_eq!(seqs_of(rc.try_recv().unwrap()), vec![1]);
        assert_eq!(seqs_of(rc.try_recv().unwrap()), vec![2]);

        // A tip announcement sends what is held first.
        hub.deliver("big", batch(5..=5));
        hub.announce_tip("big", 9);
        assert_eq!(seqs_of(ra.try_recv().unwrap()), vec![5]);
        assert!(matches!(
            ra.try_recv().unwrap(),
            Outbound::Tip { tip: 9, .. }
        ));
        assert!(ra.try_recv().is_err(), "nothing sent twice");
    }

    #[tokio::test]
    async fn the_queue_is_bounded_wakes_its_consumer_and_lets_go_of_a_drained_burst() {
        let q = Queue::new(40);
        let frame = |i: u64| Outbound::Frame(Utf8Bytes::from(format!("f{i}")));
        // A waiting consumer is woken by a push from another task.
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.pop().await })
        };
        tokio::task::yield_now().await;
        q.push(frame(0)).unwrap();
        assert!(matches!(waiter.await.unwrap(), Some(Outbound::Frame(f)) if f.as_str() == "f0"));

        for i in 1..=40 {
            q.push(frame(i)).unwrap();
        }
        assert_eq!(q.push(frame(41)), Err(Refused::Full), "bounded in items");
        for i in 1..=40 {
            match q.try_pop() {
                Some(Outbound::Frame(f)) => assert_eq!(f.as_str(), format!("f{i}"), "in order"),
                other => panic!("{other:?}"),
            }
        }
        assert!(q.try_pop().is_none());
        assert_eq!(q.lock().items.capacity(), 0, "a drained burst is released");

        q.push(frame(1)).unwrap();
        q.close();
        assert_eq!(q.push(frame(2)), Err(Refused::Closed));
        assert!(
            q.pop().await.is_none(),
            "closed: what was queued is dropped"
        );
    }

    #[tokio::test]
    async fn held_batches_go_first_when_the_room_shrinks_a_broadcast_follows_or_the_node_drains() {
        let span = Duration::from_secs(30);
        let hub = Arc::new(Hub::new(FanoutWindow { span, members: 2 }));
        let (a, mut ra) = conn(1, 64, 1 << 20);
        let (b, _rb) = conn(2, 64, 1 << 20);
        hub.subscribe("r", a.clone());
        hub.subscribe("r", b.clone());
        hub.deliver("r", batch(1..=1));
        hub.deliver("r", batch(2..=2));
        assert_eq!(seqs_of(ra.try_recv().unwrap()), vec![1]);
        assert!(ra.try_recv().is_err(), "2 is held");
        // Below the threshold now: the next batch goes out at once, after 2.
        hub.unsubscribe("r", 2);
        hub.deliver("r", batch(3..=3));
        assert_eq!(seqs_of(ra.try_recv().unwrap()), vec![2, 3]);

        hub.subscribe("r", b.clone());
        hub.deliver("r", batch(4..=4));
        assert!(ra.try_recv().is_err(), "4 is held");
        hub.broadcast("r", &Utf8Bytes::from_static("receipt"), None);
        assert_eq!(
            seqs_of(ra.try_recv().unwrap()),
            vec![4],
            "messages before the receipt"
        );
        assert!(matches!(ra.try_recv().unwrap(), Outbound::Frame(f) if f.as_str() == "receipt"));

        hub.deliver("r", batch(5..=5));
        assert!(ra.try_recv().is_err(), "5 is held");
        hub.stop_holding();
        assert_eq!(
            seqs_of(ra.try_recv().unwrap()),
            vec![5],
            "a drain sends what is held"
        );
        hub.deliver("r", batch(6..=6));
        assert_eq!(
            seqs_of(ra.try_recv().unwrap()),
            vec![6],
            "and holds nothing after"
        );
    }

    #[tokio::test]
    async fn closing_the_queue_wakes_a_waiting_consumer() {
        let q = Queue::new(4);
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.pop().await })
        };
        tokio::task::yield_now().await;
        q.close();
        assert!(waiter.await.unwrap().is_none());
    }
}
