//! Cluster mode under dependency faults, on real servers: Redis killed and
//! restarted empty, PostgreSQL killed and restarted, PostgreSQL stalled
//! (SIGSTOP) shorter and longer than the send timeout. Each test owns the
//! server it breaks.
//!
//! What the gateway does, and these tests pin down:
//! - Redis down: the node stays up (`/healthz` 200) and says so on `/readyz`
//!   (503 `redis: ...`). A room this node already owns keeps being served: its
//!   writer commits to PostgreSQL and acks (the lease is only a routing hint;
//!   the PostgreSQL epoch is the fence, so this is safe). A send that needs
//!   another node (a forward) fails with the retryable `unavailable`. When
//!   Redis returns (empty), members get every message they missed (filled
//!   from history), leases and presence are rebuilt by the nodes.
//! - PostgreSQL down: no ack, `unavailable` (retryable) at once; `/readyz` 503
//!   `history: ...`; after the restart retries complete by themselves.
//! - PostgreSQL stalled: within the send timeout sends just take longer;
//!   past it they fail retryably (`timeout`), never with an ack, and the
//!   same-cid retries after the stall store each message once.
//! - A room's first join on a node cut from Redis: the join either works
//!   fully or fails with the retryable `unavailable` and is undone; it never
//!   succeeds deaf (joined, but hearing nothing from the other nodes).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use chorus_protocol::ErrorCode;
use chorus_protocol::client::{Client, ClientConfig, ClientError, Event};
use chorus_tests::StoredMsg as Stored;
use chorus_tests::cluster::{Cluster, RedisHandle, cluster_flags};
use chorus_tests::proxy::{Fault, FaultProxy};
use chorus_tests::services::{PostgresServer, RedisServer};
use chorus_tests::{API_KEY, GatewayProcess, text, unlimited};
use fred::prelude::*;

/// Client settings for `user` on one node: one attempt waits longer than the
/// server's send timeout (so the server's answer is what we see), retries are
/// patient enough for a database restart.
fn on(node: &GatewayProcess, user: &str) -> ClientConfig {
    ClientConfig {
        send_timeout: Duration::from_secs(20),
        request_timeout: Duration::from_secs(30),
        max_send_attempts: 60,
        detect_dead: false,
        ..node.config(user)
    }
}

/// A cluster on a PostgreSQL of the test's own (to kill or pause) and the
/// shared Redis.
struct PgCluster {
    cluster: Cluster,
    pg: PostgresServer,
}

impl PgCluster {
    fn start(n: usize, extra: &[&str]) -> PgCluster {
        let pg = PostgresServer::start();
        let redis = RedisHandle::Shared(RedisServer::shared());
        let cluster = Cluster::start_on(n, extra, redis, pg.create_database());
        PgCluster { cluster, pg }
    }
}

/// Seqs are exactly 1..=len, each (sender, cid) once; returns the cids.
fn assert_gap_free(stored: &[Stored]) -> BTreeSet<String> {
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "history is gap-free"
    );
    let keys: HashSet<(String, String)> = stored
        .iter()
        .map(|m| (m.sender.clone(), m.cid.clone().unwrap_or_default()))
        .collect();
    assert_eq!(keys.len(), stored.len(), "each (sender, cid) stored once");
    stored.iter().filter_map(|m| m.cid.clone()).collect()
}

/// Read events until `room`'s seqs `from..=to` arrived, in order, no gap.
async fn receive_all(client: &mut Client, room: &str, from: u64, to: u64, within: Duration) {
    let deadline = Instant::now() + within;
    let mut seqs = Vec::new();
    while seqs.last().is_none_or(|&s| s < to) {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.next_event_timeout(left).await {
            Some(Event::Msg(m)) if m.room == room => seqs.push(m.seq),
            Some(Event::Gap {
                room,
                expected,
                got,
            }) => panic!("gap in {room}: expected {expected}, got {got}"),
            Some(Event::Closed { code, reason }) => {
                panic!("closed {code:?} {reason} after {seqs:?}")
            }
            Some(_) => {}
            None => panic!("{room}: timed out with {seqs:?} of {from}..={to}"),
        }
    }
    assert_eq!(seqs, (from..=to).collect::<Vec<_>>(), "{room} in order");
}

/// `(status, body)` of a GET.
async fn get(node: &GatewayProcess, path: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!("{}{path}", node.http_url()))
        .header("x-api-key", API_KEY)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("GET");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Poll `/readyz` until `want(status, body)`; returns how long it took.
async fn wait_ready(
    node: &GatewayProcess,
    within: Duration,
    what: &str,
    want: impl Fn(u16, &str) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = get(node, "/readyz").await;
        if want(status, &body) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "/readyz not {what} within {within:?}: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Users listed in a room's presence by one node's HTTP API.
async fn present(node: &GatewayProcess, room: &str) -> BTreeSet<String> {
    let (status, body) = get(node, &format!("/v1/rooms/{room}/presence")).await;
    if status != 200 {
        return BTreeSet::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["user"].as_str().map(str::to_owned))
        .collect()
}

/// One send attempt: the ack's seq, or the error's code (checked retryable).
async fn attempt(c: &Client, room: &str, cid: &str) -> Result<u64, ErrorCode> {
    match c.handle().send(room, cid, text(cid), None).await {
        Ok(a) => Ok(a.seq),
        Err(ClientError::Server {
            code, retryable, ..
        }) => {
            assert!(retryable, "{cid}: {code:?} must be retryable");
            Err(code)
        }
        Err(e) => panic!("{cid}: unexpected {e:?}"),
    }
}

async fn owner_of(redis_url: &str, prefix: &str, room: &str) -> Option<String> {
    let c = Builder::from_config(fred::prelude::Config::from_url(redis_url).unwrap())
        .build()
        .unwrap();
    c.init().await.unwrap();
    let owner = c.get(format!("{prefix}own:{room}")).await.unwrap();
    let _ = c.quit().await;
    owner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_then_back() {
    let mut cluster = Cluster::start_own_redis(2, &unlimited(&["--presence-ttl-ms", "3000"]));
    let url = cluster.redis.server().url();
    let (n0, n1) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut alice = Client::connect(on(n0, "alice")).await.unwrap();
    let mut bob = Client::connect(on(n1, "bob")).await.unwrap();
    // "home" is written by n0 (alice's node), "away" by n1 (bob's).
    alice.join("home", None).await.unwrap();
    bob.join("away", None).await.unwrap();
    alice
        .handle()
        .send_with_retry("home", "h-first", text("x"))
        .await
        .unwrap();
    bob.handle()
        .send_with_retry("away", "a-first", text("x"))
        .await
        .unwrap();
    bob.join("home", None).await.unwrap();
    alice.join("away", None).await.unwrap();
    assert_eq!(
        owner_of(&url, &cluster.prefix, "home").await.as_deref(),
        Some("n0")
    );
    assert_eq!(
        owner_of(&url, &cluster.prefix, "away").await.as_deref(),
        Some("n1")
    );

    let RedisHandle::Owned(redis) = &mut cluster.redis else {
        unreachable!("own redis")
    };
    redis.kill9();
    let killed = Instant::now();
    assert_eq!(get(n0, "/healthz").await.0, 200, "the node stays alive");
    let not_ready = wait_ready(n0, Duration::from_secs(5), "503 redis", |s, b| {
        s == 503 && b.contains("redis")
    })
    .await;
    wait_ready(n1, Duration::from_secs(5), "503 redis", |s, b| {
        s == 503 && b.contains("redis")
    })
    .await;
    eprintln!("redis down: /readyz 503 after {not_ready:?}");

    // The owner keeps serving its room: committed to PostgreSQL, acked. (Until
    // the Redis client's first reconnect attempt, a few hundred ms, it still
    // counts as connected and a publish waits for the command timeout, 2 s.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut home_acked = vec!["h-first".to_string()];
    for i in 0..5 {
        let cid = format!("h-down{i}");
        let t = Instant::now();
        let seq = attempt(&alice, "home", &cid)
            .await
            .unwrap_or_else(|e| panic!("{cid} to a room owned here: {e:?}"));
        let took = t.elapsed();
        eprintln!("redis down: {cid} acked (seq {seq}) in {took:?}");
        // The commit does not wait for the (impossible) publish.
        assert!(took < Duration::from_secs(1), "{cid} took {took:?}");
        home_acked.push(cid);
    }
    let stored: Vec<String> = n0
        .history("home")
        .await
        .into_iter()
        .filter_map(|m| m.cid)
        .collect();
    assert_eq!(stored, home_acked, "acked while redis was down = committed");

    // Sends that need the other node fail fast and retryably, never acked.
    let send_timeout = Duration::from_secs(10);
    for (c, room, cid) in [(&alice, "away", "a-down"), (&bob, "home", "h-bob-down")] {
        let t = Instant::now();
        let code = attempt(c, room, cid)
            .await
            .expect_err("a forward cannot be delivered without redis");
        let took = t.elapsed();
        eprintln!("redis down: forward {cid} -> {code:?} in {took:?}");
        assert_eq!(code, ErrorCode::Unavailable, "{cid}");
        assert!(
            took < send_timeout,
            "{cid} failed within the send timeout: {took:?}"
        );
    }

    redis.restart();
    let restarted = Instant::now();
    let r0 = wait_ready(n0, Duration::from_secs(10), "200", |s, _| s == 200).await;
    let r1 = wait_ready(n1, Duration::from_secs(10), "200", |s, _| s == 200).await;
    eprintln!(
        "redis back after {:?} down: /readyz 200 after {r0:?} (n0), {r1:?} (n1, polled after n0)",
        restarted - killed
    );
    // Everything works again; the failed sends go through with their cids.
    let t = Instant::now();
    bob.handle()
        .send_with_retry("home", "h-bob-down", text("x"))
        .await
        .unwrap();
    alice
        .handle()
        .send_with_retry("away", "a-down", text("x"))
        .await
        .unwrap();
    for i in 0..5 {
        alice
            .handle()
            .send_with_retry("home", &format!("h-up{i}"), text("x"))
            .await
            .unwrap();
        bob.handle()
            .send_with_retry("away", &format!("a-up{i}"), text("x"))
            .await
            .unwrap();
    }
    eprintln!("redis back: 12 sends took {:?}", t.elapsed());
    let home = n1.history("home").await;
    let away = n0.history("away").await;
    let home_cids = assert_gap_free(&home);
    assert_gap_free(&away);
    assert_eq!(home.len(), 12);
    assert_eq!(away.len(), 7);
    assert!(home_cids.contains("h-bob-down"));
    // Members got every message since they joined (after each room's first),
    // including those committed while pub/sub was down (filled from history),
    // in order.
    receive_all(&mut bob, "home", 2, 12, Duration::from_secs(20)).await;
    receive_all(&mut alice, "away", 2, 7, Duration::from_secs(20)).await;
    // Presence is rebuilt by the nodes' refresh (every ttl/3 = 1 s).
    let both: BTreeSet<String> = ["alice".to_string(), "bob".to_string()].into();
    for room in ["home", "away"] {
        for node in [n0, n1] {
            let deadline = restarted + Duration::from_secs(10);
            while present(node, room).await != both {
                assert!(
                    Instant::now() < deadline,
                    "{room} presence not rebuilt: {:?}",
                    present(node, room).await
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    eprintln!(
        "redis back: presence rebuilt within {:?}",
        restarted.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_then_back() {
    let mut cluster = PgCluster::start(2, &unlimited(&[]));
    let (n0, n1) = (&cluster.cluster.nodes[0], &cluster.cluster.nodes[1]);
    let mut alice = Client::connect(on(n0, "alice")).await.unwrap();
    let mut bob = Client::connect(on(n1, "bob")).await.unwrap();
    alice.join("pg", None).await.unwrap();
    bob.join("pg", None).await.unwrap();
    // n0 writes the room; bob's sends are forwarded to it.
    alice
        .handle()
        .send_with_retry("pg", "first", text("x"))
        .await
        .unwrap();

    cluster.pg.kill9();
    let killed = Instant::now();
    let not_ready = wait_ready(n0, Duration::from_secs(10), "503 history", |s, b| {
        s == 503 && b.contains("history")
    })
    .await;
    eprintln!("postgres down: /readyz 503 after {not_ready:?}");
    assert_eq!(get(n0, "/healthz").await.0, 200);
    // The owner's commit fails once the pool gives up connecting (its
    // acquire timeout, 5 s): `unavailable`. A forwarded send waits for that
    // answer longer than the forward timeout (2 s), so the sender's node
    // re-forwards it and drops the late answer; the owner's writer is busy
    // failing each copy for 5 s, so the send ends at the send timeout (10 s)
    // with `timeout`. Both are retryable; neither is ever an ack.
    for (c, cid, want, within) in [
        (
            &alice,
            "a-down",
            ErrorCode::Unavailable,
            Duration::from_secs(7),
        ),
        (&bob, "b-down", ErrorCode::Timeout, Duration::from_secs(12)),
    ] {
        let t = Instant::now();
        let code = attempt(c, "pg", cid)
            .await
            .expect_err("no ack without history");
        let took = t.elapsed();
        eprintln!("postgres down: {cid} -> {code:?} in {took:?}");
        assert_eq!(code, want, "{cid}");
        assert!(took < within, "{cid} answered in {took:?}");
    }
    // Retries (same cids, and new sends) run while it is down and complete
    // by themselves once it is back.
    let mut tasks = Vec::new();
    for (h, who) in [(alice.handle(), "a"), (bob.handle(), "b")] {
        tasks.push(tokio::spawn(async move {
            let mut cids = vec![format!("{who}-down")];
            cids.extend((0..5).map(|i| format!("{who}-{i}")));
            for cid in &cids {
                h.send_with_retry("pg", cid, text("x"))
                    .await
                    .unwrap_or_else(|e| panic!("{cid}: {e:?}"));
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.pg.restart();
    eprintln!("postgres back after {:?}", killed.elapsed());
    let back = Instant::now();
    for t in tasks {
        t.await.unwrap();
    }
    eprintln!(
        "postgres back: retries completed {:?} after the restart",
        back.elapsed()
    );
    wait_ready(n0, Duration::from_secs(10), "200", |s, _| s == 200).await;
    wait_ready(n1, Duration::from_secs(10), "200", |s, _| s == 200).await;
    let stored = n1.history("pg").await;
    let cids = assert_gap_free(&stored);
    assert_eq!(stored.len(), 13);
    assert!(cids.contains("a-down") && cids.contains("b-down"));
    receive_all(&mut alice, "pg", 1, 13, Duration::from_secs(20)).await;
    receive_all(&mut bob, "pg", 1, 13, Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_stall_shorter_and_longer_than_the_send_timeout() {
    const SEND_TIMEOUT: Duration = Duration::from_secs(4);
    let cluster = PgCluster::start(2, &unlimited(&["--send-timeout-ms", "4000"]));
    let (n0, n1) = (&cluster.cluster.nodes[0], &cluster.cluster.nodes[1]);
    let mut alice = Client::connect(on(n0, "alice")).await.unwrap();
    let bob = Client::connect(on(n1, "bob")).await.unwrap();
    alice.join("st", None).await.unwrap();
    bob.join("st", None).await.unwrap();
    alice
        .handle()
        .send_with_retry("st", "first", text("x"))
        .await
        .unwrap();

    // Shorter: the sends just wait for the database.
    cluster.pg.pause();
    let paused = Instant::now();
    let mut pending = Vec::new();
    for (h, cid) in [(alice.handle(), "a-short"), (bob.handle(), "b-short")] {
        pending.push(tokio::spawn(async move {
            (cid, h.send("st", cid, text("x"), None).await)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.pg.resume();
    for p in pending {
        let (cid, r) = p.await.unwrap();
        let ack = r.unwrap_or_else(|e| panic!("{cid} after a short stall: {e:?}"));
        eprintln!(
            "postgres stalled 1.5 s: {cid} acked (seq {}) {:?} after the pause began",
            ack.seq,
            paused.elapsed()
        );
    }

    // Longer: retryable errors, no ack; nothing lost after the resume.
    cluster.pg.pause();
    let paused = Instant::now();
    let mut pending = Vec::new();
    for (h, who) in [(alice.handle(), "a"), (bob.handle(), "b")] {
        for i in 0..3 {
            let h = h.clone();
            let cid = format!("{who}-long{i}");
            pending.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = h.send("st", &cid, text("x"), None).await;
                (cid, r, t.elapsed())
            }));
        }
    }
    let mut failed = BTreeMap::new();
    for p in pending {
        let (cid, r, took) = p.await.unwrap();
        match r {
            Ok(a) => panic!("{cid} acked (seq {}) while the database was stalled", a.seq),
            Err(ClientError::Server {
                code, retryable, ..
            }) => {
                assert!(retryable, "{cid}: {code:?}");
                assert!(
                    took < SEND_TIMEOUT + Duration::from_secs(2),
                    "{cid} answered within the send timeout: {took:?}"
                );
                eprintln!("postgres stalled: {cid} -> {code:?} after {took:?}");
                failed.insert(cid, code);
            }
            Err(e) => panic!("{cid}: {e:?}"),
        }
    }
    assert!(
        failed.values().all(|c| *c == ErrorCode::Timeout),
        "a stall past the send timeout is `timeout`: {failed:?}"
    );
    let stall = Duration::from_secs(8).saturating_sub(paused.elapsed());
    tokio::time::sleep(stall).await;
    cluster.pg.resume();
    let resumed = Instant::now();
    for cid in failed.keys() {
        let h = if cid.starts_with('a') {
            alice.handle()
        } else {
            bob.handle()
        };
        h.send_with_retry("st", cid, text("x"))
            .await
            .unwrap_or_else(|e| panic!("{cid} after the resume: {e:?}"));
    }
    eprintln!("postgres resumed: retries done in {:?}", resumed.elapsed());
    let stored = n1.history("st").await;
    let cids = assert_gap_free(&stored);
    assert_eq!(stored.len(), 9, "first + 2 short + 6 long, each once");
    for cid in failed.keys() {
        assert!(cids.contains(cid), "{cid} stored");
    }
    receive_all(&mut alice, "st", 1, 9, Duration::from_secs(20)).await;
}

/// Two nodes on the shared Redis and PostgreSQL; node 1 reaches Redis through
/// a fault proxy (node 0 directly).
struct CutCluster {
    nodes: Vec<GatewayProcess>,
    link: FaultProxy,
    _dirs: Vec<tempfile::TempDir>,
}

impl CutCluster {
    async fn start() -> CutCluster {
        let redis = RedisServer::shared();
        let database_url = PostgresServer::shared().create_database();
        let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
        let redis_addr = redis
            .url()
            .trim_start_matches("redis://")
            .parse()
            .expect("redis address");
        let link = FaultProxy::start(redis_addr).await.expect("proxy");
        let urls = [redis.url(), format!("redis://{}", link.addr())];
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for (i, url) in urls.iter().enumerate() {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut f = cluster_flags(url, &database_url, &prefix);
            f.extend(unlimited(&[]).iter().map(|s| s.to_string()));
            f.extend(["--node-id".to_string(), format!("n{i}")]);
            let refs: Vec<&str> = f.iter().map(String::as_str).collect();
            nodes.push(GatewayProcess::start_in(dir.path(), &refs, None));
            dirs.push(dir);
        }
        CutCluster {
            nodes,
            link,
            _dirs: dirs,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_join_on_a_node_cut_from_redis_is_refused_never_deaf() {
    let c = CutCluster::start().await;
    let (n0, n1) = (&c.nodes[0], &c.nodes[1]);
    let alice = Client::connect(on(n0, "alice")).await.unwrap();
    let mut bob = Client::connect(on(n1, "bob")).await.unwrap();
    // n0 writes the room; n1 has no member in it yet.
    alice.join("cut", None).await.unwrap();
    alice
        .handle()
        .send_with_retry("cut", "first", text("x"))
        .await
        .unwrap();

    // n1 loses Redis (its connections reset, new ones refused), and knows it;
    // bob's join is the room's first on n1, so n1 must subscribe for it.
    c.link.set(Fault::Refuse);
    wait_ready(n1, Duration::from_secs(10), "503 redis", |s, b| {
        s == 503 && b.contains("redis")
    })
    .await;
    let t = Instant::now();
    let first = bob.join("cut", None).await;
    let took = t.elapsed();
    c.link.set(Fault::Pass);
    eprintln!("join while cut from redis: {first:?} after {took:?}");
    let back = Instant::now();
    wait_ready(n1, Duration::from_secs(15), "200", |s, _| s == 200).await;
    match first {
        Ok(_) => {}
        Err(ClientError::Server {
            code, retryable, ..
        }) => {
            assert_eq!(code, ErrorCode::Unavailable, "a refused join says why");
            assert!(retryable, "a refused join may be retried");
            // Undone: the connection is not in the room.
            let r = bob.handle().send("cut", "early", text("x"), None).await;
            assert!(
                matches!(
                    r,
                    Err(ClientError::Server {
                        code: ErrorCode::NotJoined,
                        ..
                    })
                ),
                "a refused join leaves the connection out of the room: {r:?}"
            );
            // The client retries (bounded); with the link back it works.
            let mut joined = false;
            for attempt in 0..40 {
                match bob.join("cut", None).await {
                    Ok(_) => {
                        eprintln!("join retried: ok at attempt {}", attempt + 1);
                        joined = true;
                        break;
                    }
                    Err(e) => {
                        assert!(e.is_retryable(), "retry {attempt}: {e:?}");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
            assert!(joined, "the join works again once redis is reachable");
        }
        Err(e) => panic!("join while cut from redis: {e:?}"),
    }
    // Messages written on n0 from now on reach bob on n1.
    for i in 0..3 {
        alice
            .handle()
            .send_with_retry("cut", &format!("after{i}"), text("x"))
            .await
            .unwrap();
    }
    receive_all(&mut bob, "cut", 2, 4, Duration::from_secs(10)).await;
    eprintln!(
        "after the cut: bob got seqs 2..=4 {:?} after redis was back",
        back.elapsed()
    );
    // Leaving (n1 unsubscribes) and joining again still works.
    bob.leave("cut", true).await.unwrap();
    bob.join("cut", Some(4)).await.unwrap();
    alice
        .handle()
        .send_with_retry("cut", "again", text("x"))
        .await
        .unwrap();
    receive_all(&mut bob, "cut", 5, 5, Duration::from_secs(10)).await;
}
