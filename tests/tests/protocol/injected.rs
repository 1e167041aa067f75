//! In-process, through the real wire protocol: a node built from injected
//! seams (`Node::builder(..).store(..)`) and served on 127.0.0.1:0 inside the
//! test, for the codes a `chorus` process cannot be made to produce from the
//! outside: a store that fences the room writer (`not_owner`), fails a commit
//! (`internal`), or cannot load a user's memberships at `hello` (close 4006).
//! The listener is the gateway's own (`listener::serve`, as `main` runs it).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chorus_gateway::shutdown::Shutdown;
use chorus_gateway::{Config, Node, http, listener};
use chorus_history::{
    HistoryStore, Membership, Position, ReadRange, Retention, RoomBatch, RoomClaim, RoomOutcome,
    SqliteStore, StoreError, StoredMessage,
};
use chorus_tests::raw::RawWs;
use serde_json::json;

/// SQLite history with faults switched on by the test, each for one call.
struct FaultyStore {
    inner: SqliteStore,
    /// The next `append` reports every room fenced (another writer's epoch).
    fence_next: AtomicBool,
    /// The next `append` fails as an internal store error.
    fail_next: AtomicBool,
    /// `memberships` fails while set.
    memberships_down: AtomicBool,
}

impl FaultyStore {
    async fn open(dir: &Path) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner: SqliteStore::open(&dir.join("faulty.db")).await.unwrap(),
            fence_next: AtomicBool::new(false),
            fail_next: AtomicBool::new(false),
            memberships_down: AtomicBool::new(false),
        })
    }
}

#[async_trait]
impl HistoryStore for FaultyStore {
    async fn claim_room(&self, room: &str) -> Result<RoomClaim, StoreError> {
        self.inner.claim_room(room).await
    }

    async fn append(&self, batches: &[RoomBatch]) -> Result<Vec<RoomOutcome>, StoreError> {
        if self.fence_next.swap(false, Ordering::SeqCst) {
            return Ok(batches
                .iter()
                .map(|b| RoomOutcome::Fenced {
                    current_epoch: b.epoch + 1,
                })
                .collect());
        }
        if self.fail_next.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Internal("injected: constraint violated".into()));
        }
        self.inner.append(batches).await
    }

    async fn read(&self, room: &str, range: ReadRange) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.read(room, range).await
    }

    async fn tips(&self, rooms: &[String]) -> Result<Vec<u64>, StoreError> {
        self.inner.tips(rooms).await
    }

    async fn join(&self, room: &str, user: &str, now_ms: i64) -> Result<Membership, StoreError> {
        self.inner.join(room, user, now_ms).await
    }

    async fn leave(&self, room: &str, user: &str) -> Result<bool, StoreError> {
        self.inner.leave(room, user).await
    }

    async fn memberships(&self, user: &str) -> Result<Vec<Membership>, StoreError> {
        if self.memberships_down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "injected: connection refused".into(),
            ));
        }
        self.inner.memberships(user).await
    }

    async fn membership(&self, room: &str, user: &str) -> Result<Option<Membership>, StoreError> {
        self.inner.membership(room, user).await
    }

    async fn mark(
        &self,
        room: &str,
        user: &str,
        position: Position,
        seq: u64,
    ) -> Result<Option<u64>, StoreError> {
        self.inner.mark(room, user, position, seq).await
    }

    async fn trim(&self, retention: Retention, now_ms: i64) -> Result<u64, StoreError> {
        self.inner.trim(retention, now_ms).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// A node on `store`, served in this process; its `ws://` URL for a dev user.
struct InProcess {
    node: Arc<Node>,
    addr: std::net::SocketAddr,
    stop: Shutdown,
    _dir: tempfile::TempDir,
}

impl InProcess {
    async fn start(store: Arc<FaultyStore>, dir: tempfile::TempDir) -> InProcess {
        let data = dir.path().to_str().unwrap().to_owned();
        let cfg =
            Config::from_args(["chorus", "--listen", "127.0.0.1:0", "--data-dir", &data]).unwrap();
        cfg.validate().unwrap();
        let node = Node::builder(cfg).store(store).start().await.unwrap();
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let (app, http_cfg, stop) = (
            http::router(node.clone()),
            node.cfg.http.clone(),
            Shutdown::new(),
        );
        let served = stop.clone();
        tokio::spawn(async move {
            listener::serve(tcp, app, &http_cfg, served, Duration::from_secs(1)).await;
        });
        InProcess {
            node,
            addr,
            stop,
            _dir: dir,
        }
    }

    fn url(&self, user: &str) -> String {
        format!("ws://{}/ws?user={user}", self.addr)
    }

    async fn stop(self) {
        self.node.drain().await;
        self.stop.begin();
    }
}

async fn faulty() -> (Arc<FaultyStore>, InProcess) {
    let dir = tempfile::tempdir().unwrap();
    let store = FaultyStore::open(dir.path()).await;
    let node = InProcess::start(store.clone(), dir).await;
    (store, node)
}

/// A fenced commit answers `not_owner` (retryable); the writer claims the
/// room again, and the same send retried with its cid is acked once.
#[tokio::test]
async fn not_owner_when_the_store_fences_the_writer() {
    let (store, node) = faulty().await;
    let (mut raw, _) = RawWs::open(&node.url("alice")).await.into_hello().await;
    raw.join(1, "r").await;
    let ok = raw
        .request(json!({"op": "send", "id": 2, "room": "r", "cid": "c1", "body": "first"}))
        .await;
    assert_eq!(ok["op"], "ack", "{ok}");
    assert_eq!(ok["seq"], 1, "{ok}");

    store.fence_next.store(true, Ordering::SeqCst);
    let e = raw
        .request(json!({"op": "send", "id": 3, "room": "r", "cid": "c2", "body": "second"}))
        .await;
    assert_eq!(e["op"], "error", "{e}");
    assert_eq!(e["code"], "not_owner", "{e}");
    assert_eq!(e["room"], "r", "{e}");
    assert_eq!(e["cid"], "c2", "{e}");
    assert_eq!(e["retryable"], true, "{e}");

    // The retry is fanned out (to the sender too, before its ack) once.
    raw.send(json!({"op": "send", "id": 4, "room": "r", "cid": "c2", "body": "second"}))
        .await;
    let msg = raw
        .recv_where("the retried message", |v| v["op"] == "msg")
        .await;
    assert_eq!(
        msg["seq"], 2,
        "nothing of the fenced batch was stored: {msg}"
    );
    assert_eq!(msg["body"], "second", "{msg}");
    let again = raw.reply(4).await;
    assert_eq!(again["op"], "ack", "{again}");
    assert_eq!(again["seq"], 2, "{again}");
    node.stop().await;
}

/// A commit that fails inside the store answers `internal` with a generic
/// message (the cause is logged, not shown); the node and the connection
/// carry on, and the retry is acked.
#[tokio::test]
async fn internal_when_the_store_fails_a_commit() {
    let (store, node) = faulty().await;
    let (mut raw, _) = RawWs::open(&node.url("bob")).await.into_hello().await;
    raw.join(1, "r").await;

    store.fail_next.store(true, Ordering::SeqCst);
    let e = raw
        .request(json!({"op": "send", "id": 2, "room": "r", "cid": "c1", "body": 1}))
        .await;
    assert_eq!(e["op"], "error", "{e}");
    assert_eq!(e["code"], "internal", "{e}");
    assert_eq!(e["retryable"], true, "{e}");
    let text = e["message"].as_str().unwrap();
    assert!(
        !text.contains("constraint"),
        "the store's words stay in the log: {e}"
    );

    let ok = raw
        .request(json!({"op": "send", "id": 3, "room": "r", "cid": "c1", "body": 1}))
        .await;
    assert_eq!(ok["op"], "ack", "{ok}");
    assert_eq!(ok["seq"], 1, "{ok}");
    // Another connection is untouched by the fault.
    let (mut other, _) = RawWs::open(&node.url("carol")).await.into_hello().await;
    let j = other.join(1, "r").await;
    assert_eq!(j["tip"], 1, "{j}");
    node.stop().await;
}

/// `hello` needs the user's memberships (the rooms to resume): when the store
/// cannot give them the connection closes 4006 (retry later), and a client
/// that comes back once the store answers is welcomed with its rooms.
#[tokio::test]
async fn close_4006_when_memberships_cannot_be_loaded() {
    let (store, node) = faulty().await;
    let (mut raw, _) = RawWs::open(&node.url("dave")).await.into_hello().await;
    raw.join(1, "r").await;
    drop(raw);

    store.memberships_down.store(true, Ordering::SeqCst);
    let mut raw = RawWs::open(&node.url("dave")).await;
    raw.send(json!({"op": "hello"})).await;
    let (code, reason) = raw.close_frame().await;
    assert_eq!(code, 4006, "{reason}");

    store.memberships_down.store(false, Ordering::SeqCst);
    let (_, welcome) = RawWs::open(&node.url("dave")).await.into_hello().await;
    let rooms: Vec<&str> = welcome["rooms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["room"].as_str().unwrap())
        .collect();
    assert_eq!(rooms, ["r"], "{welcome}");
    node.stop().await;
}
