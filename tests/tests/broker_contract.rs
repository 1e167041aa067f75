//! The `Broker` contract, run against `MemoryBroker` (two nodes on one bus)
//! and `RedisBroker` (two nodes on one redis-server, each test its own key
//! prefix) with a handler that records what it is given: batches reach the
//! other subscribed node in order and never the publisher, nothing arrives
//! after an unsubscribe, a resubscribe receives again, subscribing is
//! idempotent, ephemeral frames travel like batches.
//!
//! Then the fan-out above either broker, with a real history store (SQLite in
//! a temporary directory) and one local connection: a gap filled from history
//! before the batch after it, old and overlapping batches dropped, a quiet
//! room behind its tip filled by the tip check, a refused subscription that
//! leaves nothing joined, and (Redis only, on a private server that is
//! restarted) the range lost while the link was down filled by the resync.
//!
//! Every test is bounded in time (`bounded`, and every wait has a deadline).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Utf8Bytes;
use chorus_gateway::broker::{
    Broker, BrokerError, BrokerHandler, MemoryBroker, MemoryBus, RedisBroker,
};
use chorus_gateway::fanout::FanOut;
use chorus_gateway::hub::{ConnHandle, FanoutWindow, Hub, Kill, MsgBatch, Outbound, Queue};
use chorus_gateway::inbox::InboxHandler;
use chorus_gateway::shutdown::Shutdown;
use chorus_history::{HistoryStore, NewMessage, RoomBatch, RoomOutcome, SqliteStore};
use chorus_tests::services::RedisServer;
use tokio::time::Instant;

/// The longest any one test may take.
const TEST_BOUND: Duration = Duration::from_secs(60);
/// The longest a wait for something expected may take.
const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched.
const QUIET: Duration = Duration::from_millis(300);

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_BOUND, test)
        .await
        .expect("test exceeded its time bound");
}

/// A prefix no other test uses.
fn prefix(test: &str) -> String {
    format!("t:{}:{test}:", uuid::Uuid::new_v4().simple())
}

fn text(s: &str) -> Utf8Bytes {
    Utf8Bytes::from(s.to_owned())
}

/// A batch of `first..=last` whose frames are `live-{seq}`.
fn batch(first: u64, last: u64) -> MsgBatch {
    (first..=last)
        .map(|seq| (seq, text(&format!("live-{seq}"))))
        .collect()
}

// ---------------------------------------------------------------------------
// A recording handler and a pair of nodes.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Batch {
        room: String,
        first: u64,
        last: u64,
        frames: Vec<(u64, String)>,
    },
    Ephemeral {
        room: String,
        frame: String,
    },
    Resync,
}

impl Event {
    fn room(&self) -> Option<&str> {
        match self {
            Event::Batch { room, .. } | Event::Ephemeral { room, .. } => Some(room),
            Event::Resync => None,
        }
    }
}

/// Records every call, in order; probes (see `probe`) apart.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Event>>,
    /// Rooms a probe was heard on.
    probed: Mutex<Vec<String>>,
}

#[async_trait]
impl BrokerHandler for Recorder {
    async fn on_batch(&self, room: &str, first: u64, last: u64, frames: MsgBatch) {
        let frames = frames
            .iter()
            .map(|(s, f)| (*s, f.as_str().to_owned()))
            .collect();
        self.push(Event::Batch {
            room: room.to_owned(),
            first,
            last,
            frames,
        });
    }

    async fn on_ephemeral(&self, room: &str, frame: Utf8Bytes) {
        if frame.as_str() == PROBE {
            self.probed.lock().unwrap().push(room.to_owned());
            return;
        }
        self.push(Event::Ephemeral {
            room: room.to_owned(),
            frame: frame.as_str().to_owned(),
        });
    }

    async fn on_resync(&self) {
        self.push(Event::Resync);
    }
}

impl Recorder {
    fn push(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }

    /// What was recorded for `room`, in order.
    fn of(&self, room: &str) -> Vec<Event> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|e| e.room() == Some(room))
            .cloned()
            .collect()
    }

    /// Wait until `room` has `n` events recorded; returns them.
    async fn wait_for(&self, room: &str, n: usize) -> Vec<Event> {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = self.of(room);
            if events.len() >= n {
                return events;
            }
            assert!(
                Instant::now() < deadline,
                "{n} events of {room} not recorded within {WAIT:?}: {events:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A broker receiving into a recorder.
struct Peer {
    broker: Arc<dyn Broker>,
    rec: Arc<Recorder>,
}

impl Peer {
    fn start(broker: Arc<dyn Broker>, shutdown: &Shutdown) -> Peer {
        let rec = Arc::new(Recorder::default());
        let handler: Arc<dyn BrokerHandler> = rec.clone();
        shutdown.spawn(broker.clone().run(
            handler,
            None::<Arc<dyn InboxHandler>>,
            shutdown.clone(),
        ));
        Peer { broker, rec }
    }
}

/// Two nodes on one transport.
struct Pair {
    a: Peer,
    b: Peer,
    shutdown: Shutdown,
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.shutdown.begin();
    }
}

/// Two memory brokers on one bus.
fn memory_brokers() -> (Arc<dyn Broker>, Arc<dyn Broker>) {
    let bus = MemoryBus::new();
    (MemoryBroker::on(&bus, "a"), MemoryBroker::on(&bus, "b"))
}

/// Two Redis brokers on `url`, with a prefix of their own.
async fn redis_brokers(url: &str, test: &str) -> (Arc<dyn Broker>, Arc<dyn Broker>) {
    let prefix = prefix(test);
    let (a, _) = RedisBroker::connect(url, prefix.clone(), "a".into())
        .await
        .expect("connect a");
    let (b, _) = RedisBroker::connect(url, prefix, "b".into())
        .await
        .expect("connect b");
    (a, b)
}

impl Pair {
    async fn new((a, b): (Arc<dyn Broker>, Arc<dyn Broker>)) -> Pair {
        let shutdown = Shutdown::new();
        let pair = Pair {
            a: Peer::start(a, &shutdown),
            b: Peer::start(b, &shutdown),
            shutdown,
        };
        pair.ready().await;
        pair
    }

    /// Both receive loops are running (a loop that has not started yet would
    /// miss what comes).
    async fn ready(&self) {
        settled(&self.a, &self.b).await;
        settled(&self.b, &self.a).await;
    }
}

/// The ephemeral frame of `probe`, recorded apart.
const PROBE: &str = "probe";

/// `from` broadcasts probes on `room` until `to` hears one: `to`'s
/// subscription of `room` is in effect.
async fn probe(from: &Peer, to: &Peer, room: &str) {
    let deadline = Instant::now() + WAIT;
    while !to.rec.probed.lock().unwrap().iter().any(|r| r == room) {
        assert!(
            Instant::now() < deadline,
            "{room} not heard within {WAIT:?}"
        );
        from.broker.broadcast(room, &text(PROBE)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Everything `to` asked of its broker so far is in effect: it subscribes a
/// room of its own and `from` probes it. (A Redis client sends SUBSCRIBE and
/// UNSUBSCRIBE without waiting for the server's confirmation; the server
/// handles them in order.)
async fn settled(from: &Peer, to: &Peer) {
    let room = format!("_settle-{}", uuid::Uuid::new_v4().simple());
    to.broker.subscribe(&room).await.unwrap();
    probe(from, to, &room).await;
}

/// `from` broadcasts a marker on `room`; returns once `to` has it: whatever
/// `from` published before it has been received (or lost) by `to` by then.
async fn mark(from: &Peer, to: &Peer, room: &str) {
    let seen = to.rec.of(room).len();
    from.broker.broadcast(room, &text("mark")).await.unwrap();
    to.rec.wait_for(room, seen + 1).await;
}

// ---------------------------------------------------------------------------
// The contract, for every implementation.
// ---------------------------------------------------------------------------

/// Generates, for each contract function, a `memory` and a `redis` test.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::bounded(async {
                    super::$name(super::Pair::new(super::memory_brokers()).await).await
                })
                .await;
            }

            #[tokio::test]
            async fn redis() {
                super::bounded(async {
                    let url = super::RedisServer::shared().url();
                    let brokers = super::redis_brokers(&url, stringify!($name)).await;
                    super::$name(super::Pair::new(brokers).await).await
                })
                .await;
            }
        }
    )*};
}

contract!(
    batches_reach_the_other_subscriber_in_order_never_the_publisher,
    nothing_arrives_after_unsubscribe,
    a_resubscribe_receives_again,
    subscribing_twice_delivers_once_and_one_unsubscribe_ends_it,
    ephemeral_frames_reach_the_other_subscriber_never_the_publisher,
    rooms_are_kept_apart,
);

async fn batches_reach_the_other_subscriber_in_order_never_the_publisher(p: Pair) {
    assert!(p.a.broker.is_healthy() && p.b.broker.is_healthy());
    p.a.broker.subscribe("r").await.unwrap();
    p.b.broker.subscribe("r").await.unwrap();
    p.ready().await;
    for (first, last) in [(1, 2), (3, 3), (4, 6)] {
        p.a.broker
            .publish("r", first, last, &batch(first, last))
            .await
            .unwrap();
    }
    let got = p.b.rec.wait_for("r", 3).await;
    let want: Vec<Event> = [(1, 2), (3, 3), (4, 6)]
        .into_iter()
        .map(|(first, last)| Event::Batch {
            room: "r".into(),
            first,
            last,
            frames: (first..=last).map(|s| (s, format!("live-{s}"))).collect(),
        })
        .collect();
    assert_eq!(got, want);
    // b's marker comes after a's batches: had a heard its own, it would have
    // by the time it hears the marker.
    mark(&p.b, &p.a, "r").await;
    assert_eq!(
        p.a.rec.of("r"),
        vec![Event::Ephemeral {
            room: "r".into(),
            frame: "mark".into()
        }],
        "the publisher hears only the other node"
    );
}

async fn nothing_arrives_after_unsubscribe(p: Pair) {
    p.b.broker.subscribe("r").await.unwrap();
    p.b.broker.subscribe("sentinel").await.unwrap();
    settled(&p.a, &p.b).await;
    p.a.broker.publish("r", 1, 1, &batch(1, 1)).await.unwrap();
    p.b.rec.wait_for("r", 1).await;
    p.b.broker.unsubscribe("r").await.unwrap();
    settled(&p.a, &p.b).await;
    p.a.broker.publish("r", 2, 2, &batch(2, 2)).await.unwrap();
    p.a.broker.broadcast("r", &text("after")).await.unwrap();
    mark(&p.a, &p.b, "sentinel").await;
    assert_eq!(p.b.rec.of("r").len(), 1, "{:?}", p.b.rec.of("r"));
}

async fn a_resubscribe_receives_again(p: Pair) {
    p.b.broker.subscribe("sentinel").await.unwrap();
    p.b.broker.subscribe("r").await.unwrap();
    p.b.broker.unsubscribe("r").await.unwrap();
    settled(&p.a, &p.b).await;
    p.a.broker.publish("r", 1, 1, &batch(1, 1)).await.unwrap();
    mark(&p.a, &p.b, "sentinel").await;
    assert!(p.b.rec.of("r").is_empty());
    p.b.broker.subscribe("r").await.unwrap();
    settled(&p.a, &p.b).await;
    p.a.broker.publish("r", 2, 3, &batch(2, 3)).await.unwrap();
    let got = p.b.rec.wait_for("r", 1).await;
    assert!(
        matches!(
            &got[..],
            [Event::Batch {
                first: 2,
                last: 3,
                ..
            }]
        ),
        "{got:?}"
    );
}

async fn subscribing_twice_delivers_once_and_one_unsubscribe_ends_it(p: Pair) {
    p.b.broker.subscribe("sentinel").await.unwrap();
    p.b.broker.subscribe("r").await.unwrap();
    p.b.broker.subscribe("r").await.unwrap();
    settled(&p.a, &p.b).await;
    p.a.broker.publish("r", 1, 1, &batch(1, 1)).await.unwrap();
    p.a.broker.publish("r", 2, 2, &batch(2, 2)).await.unwrap();
    mark(&p.a, &p.b, "sentinel").await;
    let firsts: Vec<u64> =
        p.b.rec
            .of("r")
            .into_iter()
            .filter_map(|e| match e {
                Event::Batch { first, .. } => Some(first),
                _ => None,
            })
            .collect();
    assert_eq!(firsts, vec![1, 2]);
    p.b.broker.unsubscribe("r").await.unwrap();
    settled(&p.a, &p.b).await;
    p.a.broker.publish("r", 3, 3, &batch(3, 3)).await.unwrap();
    mark(&p.a, &p.b, "sentinel").await;
    assert_eq!(p.b.rec.of("r").len(), 2);
}

async fn ephemeral_frames_reach_the_other_subscriber_never_the_publisher(p: Pair) {
    p.a.broker.subscribe("r").await.unwrap();
    p.b.broker.subscribe("r").await.unwrap();
    p.ready().await;
    for f in ["typing", r#"{"type":"presence_diff"}"#] {
        p.a.broker.broadcast("r", &text(f)).await.unwrap();
    }
    // In order with the room's batches.
    p.a.broker.publish("r", 1, 1, &batch(1, 1)).await.unwrap();
    let got = p.b.rec.wait_for("r", 3).await;
    assert_eq!(
        got[..2],
        [
            Event::Ephemeral {
                room: "r".into(),
                frame: "typing".into()
            },
            Event::Ephemeral {
                room: "r".into(),
                frame: r#"{"type":"presence_diff"}"#.into()
            },
        ]
    );
    assert!(matches!(got[2], Event::Batch { first: 1, .. }));
    mark(&p.b, &p.a, "r").await;
    assert_eq!(
        p.a.rec.of("r").len(),
        1,
        "only b's marker: {:?}",
        p.a.rec.of("r")
    );
}

async fn rooms_are_kept_apart(p: Pair) {
    p.b.broker.subscribe("r1").await.unwrap();
    settled(&p.a, &p.b).await;
    p.a.broker.publish("r2", 1, 1, &batch(1, 1)).await.unwrap();
    p.a.broker.broadcast("r2", &text("x")).await.unwrap();
    p.a.broker.publish("r1", 1, 1, &batch(1, 1)).await.unwrap();
    p.b.rec.wait_for("r1", 1).await;
    mark(&p.a, &p.b, "r1").await;
    assert!(p.b.rec.of("r2").is_empty());
    assert_eq!(p.b.rec.of("r1").len(), 2);
}

// ---------------------------------------------------------------------------
// The fan-out above a broker: node B with one local connection, node A a bare
// broker that publishes crafted batches.
// ---------------------------------------------------------------------------

const ROOM: &str = "t/room";

struct Fan {
    /// The publishing node.
    a: Peer,
    fanout: Arc<FanOut>,
    hub: Arc<Hub>,
    store: Arc<dyn HistoryStore>,
    epoch: u64,
    /// The local connection's queue.
    queue: Arc<Queue>,
    shutdown: Shutdown,
    _dir: tempfile::TempDir,
}

impl Drop for Fan {
    fn drop(&mut self) {
        self.shutdown.begin();
    }
}

/// One delivered frame: its seq and whether it came from history (a `msg`
/// frame built from the stored row) or live (`live-{seq}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Live,
    History,
}

impl Fan {
    async fn new((a, b): (Arc<dyn Broker>, Arc<dyn Broker>), tip_poll: Duration) -> Fan {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn HistoryStore> =
            Arc::new(SqliteStore::open(&dir.path().join("h.db")).await.unwrap());
        let epoch = store.claim_room(ROOM).await.unwrap().epoch;
        let shutdown = Shutdown::new();
        let hub = Arc::new(Hub::new(FanoutWindow::default()));
        let fanout = FanOut::new(hub.clone(), store.clone(), b.clone(), &shutdown);
        shutdown.spawn(b.run(fanout.clone(), None, shutdown.clone()));
        shutdown.spawn(fanout.clone().run(tip_poll));
        let queue = Queue::new(1024);
        let conn = ConnHandle {
            id: 1,
            tx: queue.clone(),
            kill: Arc::new(Kill::default()),
            max_bytes: 1 << 24,
        };
        fanout.join(ROOM, conn).await.expect("join");
        let fan = Fan {
            a: Peer::start(a, &shutdown),
            fanout,
            hub,
            store,
            epoch,
            queue,
            shutdown,
            _dir: dir,
        };
        fan.greet().await;
        fan
    }

    /// A greets B's connection until it hears: B's receive loop runs and its
    /// subscription of the room is in effect.
    async fn greet(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            // Refused for a moment by a Redis link coming back.
            let _ = self.a.broker.broadcast(ROOM, &text("hi")).await;
            if let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_millis(50), self.queue.pop()).await
            {
                assert!(matches!(item, Outbound::Frame(_)), "{item:?}");
                break;
            }
            assert!(Instant::now() < deadline, "B does not hear A");
        }
        while self.queue.try_pop().is_some() {}
    }

    /// Commit `n` messages to history (as the room's writer would, without
    /// publishing them); returns the last seq.
    async fn commit(&self, n: usize) -> u64 {
        let messages = (0..n)
            .map(|_| {
                let id = uuid::Uuid::now_v7().to_string();
                NewMessage {
                    id: id.clone(),
                    sender: "alice".into(),
                    cid: id,
                    body: r#"{"text":"hi"}"#.into(),
                    meta: None,
                    ts: 1_700_000_000_000,
                }
            })
            .collect();
        let outcome = self
            .store
            .append(&[RoomBatch {
                room: ROOM.into(),
                epoch: self.epoch,
                messages,
            }])
            .await
            .unwrap();
        match &outcome[..] {
            [RoomOutcome::Committed(a)] => a.last().unwrap().seq,
            other => panic!("{other:?}"),
        }
    }

    async fn publish(&self, first: u64, last: u64) {
        let deadline = Instant::now() + WAIT;
        // A Redis link coming back refuses publishes for a moment.
        while let Err(BrokerError(e)) = self
            .a
            .broker
            .publish(ROOM, first, last, &batch(first, last))
            .await
        {
            assert!(Instant::now() < deadline, "publish failed: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// What the connection is given, until seq `upto` arrived.
    async fn delivered_until(&self, upto: u64) -> Vec<(u64, Source)> {
        let deadline = Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.last().is_none_or(|&(s, _)| s < upto) {
            let item = tokio::time::timeout_at(deadline, self.queue.pop())
                .await
                .unwrap_or_else(|_| panic!("seq {upto} not delivered; got {got:?}"))
                .expect("queue closed");
            got.extend(frames(item));
        }
        got
    }

    /// Nothing more reaches the connection for a while.
    async fn assert_quiet(&self) {
        let until = Instant::now() + QUIET;
        while let Ok(Some(item)) = tokio::time::timeout_at(until, self.queue.pop()).await {
            assert!(frames(item).is_empty(), "unexpected delivery");
        }
    }
}

fn frames(item: Outbound) -> Vec<(u64, Source)> {
    match item {
        // A late greeting of `Fan::new`.
        Outbound::Frame(f) if f.as_str() == "hi" => Vec::new(),
        Outbound::Msgs { frames, .. } => frames
            .iter()
            .map(|(seq, f)| {
                let from = if f.as_str() == format!("live-{seq}") {
                    Source::Live
                } else {
                    assert!(f.as_str().contains(&format!(r#""seq":{seq}"#)), "{f}");
                    Source::History
                };
                (*seq, from)
            })
            .collect(),
        other => panic!("expected room messages, got {other:?}"),
    }
}

/// Long enough that the tip check never runs during a test.
const NO_TIP_CHECK: Duration = Duration::from_secs(3600);

/// Generates, for each fan-out function, a `memory` and a `redis` test.
macro_rules! fanout {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::bounded(async {
                    super::$name(super::memory_brokers()).await
                })
                .await;
            }

            #[tokio::test]
            async fn redis() {
                super::bounded(async {
                    let url = super::RedisServer::shared().url();
                    super::$name(super::redis_brokers(&url, stringify!($name)).await).await
                })
                .await;
            }
        }
    )*};
}

fanout!(
    a_gap_is_filled_from_history_before_the_next_batch,
    old_and_overlapping_batches_are_dropped,
    a_quiet_room_behind_its_tip_is_filled_by_the_tip_check,
);

async fn a_gap_is_filled_from_history_before_the_next_batch(
    brokers: (Arc<dyn Broker>, Arc<dyn Broker>),
) {
    let f = Fan::new(brokers, NO_TIP_CHECK).await;
    assert_eq!(f.commit(3).await, 3);
    f.publish(1, 1).await;
    // Batch 2 is lost on the way.
    f.publish(3, 3).await;
    assert_eq!(
        f.delivered_until(3).await,
        vec![(1, Source::Live), (2, Source::History), (3, Source::Live)]
    );
    f.assert_quiet().await;
}

async fn old_and_overlapping_batches_are_dropped(brokers: (Arc<dyn Broker>, Arc<dyn Broker>)) {
    let f = Fan::new(brokers, NO_TIP_CHECK).await;
    f.publish(1, 2).await;
    f.publish(3, 3).await;
    // Late duplicates: older than what was delivered.
    f.publish(2, 2).await;
    f.publish(1, 3).await;
    // Overlapping: only 4 and 5 are new.
    f.publish(3, 5).await;
    assert_eq!(
        f.delivered_until(5).await,
        (1..=5).map(|s| (s, Source::Live)).collect::<Vec<_>>()
    );
    f.assert_quiet().await;
}

async fn a_quiet_room_behind_its_tip_is_filled_by_the_tip_check(
    brokers: (Arc<dyn Broker>, Arc<dyn Broker>),
) {
    let f = Fan::new(brokers, Duration::from_millis(100)).await;
    f.commit(2).await;
    f.publish(1, 1).await;
    // The last batch of a burst is lost: no later batch shows the gap.
    assert_eq!(
        f.delivered_until(2).await,
        vec![(1, Source::Live), (2, Source::History)]
    );
    f.assert_quiet().await;
}

/// A broker that refuses every subscription.
struct Refusing;

#[async_trait]
impl Broker for Refusing {
    async fn publish(&self, _: &str, _: u64, _: u64, _: &MsgBatch) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn broadcast(&self, _: &str, _: &Utf8Bytes) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn subscribe(&self, _: &str) -> Result<(), BrokerError> {
        Err(BrokerError("refused".into()))
    }
    async fn unsubscribe(&self, _: &str) -> Result<(), BrokerError> {
        Ok(())
    }
    fn is_healthy(&self) -> bool {
        false
    }
    async fn run(
        self: Arc<Self>,
        _: Arc<dyn BrokerHandler>,
        _: Option<Arc<dyn InboxHandler>>,
        _: Shutdown,
    ) {
    }
}

#[tokio::test]
async fn a_refused_subscription_leaves_nothing_joined() {
    bounded(async {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn HistoryStore> =
            Arc::new(SqliteStore::open(&dir.path().join("h.db")).await.unwrap());
        let shutdown = Shutdown::new();
        let hub = Arc::new(Hub::new(FanoutWindow::default()));
        let fanout = FanOut::new(hub.clone(), store, Arc::new(Refusing), &shutdown);
        let conn = ConnHandle {
            id: 1,
            tx: Queue::new(16),
            kill: Arc::new(Kill::default()),
            max_bytes: 1 << 20,
        };
        assert!(fanout.join(ROOM, conn).await.is_err());
        assert_eq!(hub.local_members(ROOM), 0, "the join is undone");
        // A batch of the room is not delivered anywhere (no cursor).
        fanout.on_batch(ROOM, 1, 1, batch(1, 1)).await;
        shutdown.begin();
        assert!(shutdown.wait_until(Instant::now() + WAIT).await);
    })
    .await;
}

#[tokio::test]
async fn a_redis_restart_is_resynced_from_history() {
    bounded(async {
        let mut redis = RedisServer::start();
        let brokers = redis_brokers(&redis.url(), "restart").await;
        let f = Fan::new(brokers, NO_TIP_CHECK).await;
        assert!(f.fanout.broker().is_healthy());
        f.commit(1).await;
        f.publish(1, 1).await;
        assert_eq!(f.delivered_until(1).await, vec![(1, Source::Live)]);
        // Redis dies (coming back empty, its subscriptions gone); what is
        // committed meanwhile never reaches pub/sub.
        let mut redis = tokio::task::spawn_blocking(move || {
            redis.kill9();
            redis
        })
        .await
        .unwrap();
        let deadline = Instant::now() + WAIT;
        while f.fanout.broker().is_healthy() {
            assert!(Instant::now() < deadline, "the loss is not noticed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        f.commit(2).await;
        let redis = tokio::task::spawn_blocking(move || {
            redis.restart();
            redis
        })
        .await
        .unwrap();
        // Back: re-subscribed, and the resync reads 2..=3 from history (the
        // tip check is off).
        assert_eq!(
            f.delivered_until(3).await,
            vec![(2, Source::History), (3, Source::History)]
        );
        assert_eq!(f.hub.local_members(ROOM), 1);
        // The other node's link came back too, and said so.
        let deadline = Instant::now() + WAIT;
        while !f.a.rec.events.lock().unwrap().contains(&Event::Resync) {
            assert!(
                Instant::now() < deadline,
                "the other node was not told to resync"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // And live again.
        f.greet().await;
        f.commit(1).await;
        f.publish(4, 4).await;
        assert_eq!(f.delivered_until(4).await, vec![(4, Source::Live)]);
        f.assert_quiet().await;
        drop(f);
        drop(redis);
    })
    .await;
}
