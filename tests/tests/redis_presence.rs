//! The `Presence` contract, run against `MemoryPresence` and against
//! `RedisPresence` on a real `redis-server` (each test its own key prefix),
//! then the Redis-only behaviour: expiry without any node's help, `sweep`
//! handing out each expired user exactly once, two nodes sharing presence,
//! resume on another node, and a Redis that restarts empty being refilled by
//! `refresh`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chorus_gateway::presence::contract::{entry, live, room_view, strs, user_view};
use chorus_gateway::presence::{LiveSession, MemoryPresence, Presence, RedisPresence, Rejoined};
use chorus_tests::services::RedisServer;
use fred::prelude::{Builder, Client, ClientLike, Config, KeysInterface, ReconnectPolicy};
use fred::types::{ClusterHash, CustomCommand};

/// Long enough that nothing expires during a contract test.
const LONG_TTL: Duration = Duration::from_secs(60);
/// Short, for the expiry tests.
const TTL: Duration = Duration::from_secs(1);
/// Slack on top of the ttl for "gone within the bound": scheduling, round trips.
const MARGIN: Duration = Duration::from_millis(400);

/// A connected client with the reconnect policy a node would use.
async fn client(url: &str) -> Client {
    let client = Builder::from_config(Config::from_url(url).expect("redis url"))
        .with_connection_config(|c| c.connection_timeout = Duration::from_secs(2))
        .set_policy(ReconnectPolicy::new_constant(0, 50))
        .build()
        .expect("redis client");
    client.init().await.expect("connect to redis");
    client
}

/// A prefix no other test uses.
fn prefix(test: &str) -> String {
    format!("t:{}:{test}:", uuid::Uuid::new_v4().simple())
}

async fn redis_on(url: &str, prefix: &str, ttl: Duration) -> RedisPresence {
    RedisPresence::new(client(url).await, prefix.to_owned(), ttl)
}

// ---------------------------------------------------------------------------
// The contract (chorus_gateway::presence::contract), for every implementation.
// ---------------------------------------------------------------------------

mod memory {
    async fn fresh(_case: &str) -> chorus_gateway::presence::MemoryPresence {
        chorus_gateway::presence::MemoryPresence::default()
    }
    chorus_gateway::presence_contract_tests!(fresh);
}

mod redis {
    async fn fresh(case: &str) -> chorus_gateway::presence::RedisPresence {
        let url = chorus_tests::services::RedisServer::shared().url();
        super::redis_on(&url, &super::prefix(case), super::LONG_TTL).await
    }
    chorus_gateway::presence_contract_tests!(fresh);
}

// ---------------------------------------------------------------------------
// Redis only: several nodes, expiry, restarts.
// ---------------------------------------------------------------------------

/// Two "nodes": two clients, two `RedisPresence` on one prefix.
async fn two_nodes(test: &str, ttl: Duration) -> (RedisPresence, RedisPresence) {
    let url = RedisServer::shared().url();
    let prefix = prefix(test);
    (
        redis_on(&url, &prefix, ttl).await,
        redis_on(&url, &prefix, ttl).await,
    )
}

/// Refresh `sessions` on `p` every `ttl / 3` until the returned sender is dropped.
fn heartbeat(
    p: Arc<RedisPresence>,
    sessions: Vec<LiveSession>,
) -> tokio::sync::oneshot::Sender<()> {
    let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let every = p.refresh_interval().expect("redis presence expires");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => { p.refresh(&sessions).await.expect("refresh"); }
                _ = &mut stopped => break,
            }
        }
    });
    stop
}

#[tokio::test]
async fn a_dead_nodes_entries_vanish_within_the_ttl_and_are_swept_once() {
    let (a, b) = two_nodes("dead_node", TTL).await;
    let b = Arc::new(b);
    // Node A: alice (two devices) in r, alice also in q. Node B: bob in r.
    let phone = entry("s1", "alice", "phone", "A");
    let laptop = entry("s3", "alice", "laptop", "A");
    let g1 = a.attach(phone.clone()).await.unwrap();
    let g3 = a.attach(laptop.clone()).await.unwrap();
    a.join("r", "s1").await.unwrap();
    a.join("q", "s1").await.unwrap();
    a.join("r", "s3").await.unwrap();
    let bob = entry("s2", "bob", "web", "B");
    let g2 = b.attach(bob.clone()).await.unwrap();
    b.join("r", "s2").await.unwrap();
    // A refreshes once more, then dies (never again).
    a.refresh(&[live(&phone, g1, &["r", "q"]), live(&laptop, g3, &["r"])])
        .await
        .unwrap();
    let died = Instant::now();
    let _beat = heartbeat(b.clone(), vec![live(&bob, g2, &["r"])]);

    tokio::time::sleep(TTL / 2).await;
    assert_eq!(
        room_view(&*b, "r").await,
        vec!["alice:phone,laptop", "bob:web"],
        "still live half a ttl later"
    );
    assert!(
        b.sweep("r").await.unwrap().is_empty(),
        "nothing expired yet"
    );

    let gone = loop {
        if room_view(&*b, "r").await == vec!["bob:web"] {
            break died.elapsed();
        }
        assert!(
            died.elapsed() < TTL + MARGIN,
            "alice still in r after {:?}",
            died.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(gone >= TTL - MARGIN, "gone too early: {gone:?}");
    assert_eq!(
        b.room_count("r").await.unwrap(),
        1,
        "expired users are not counted, swept or not"
    );
    assert!(b.user("alice").await.unwrap().is_empty());
    assert!(b.session("s1").await.unwrap().is_none());
    assert!(b.room("q").await.unwrap().is_empty());

    // Both nodes (and a second call of one) sweep at once: alice is handed out
    // exactly once per room, bob never.
    let (x, y, z) = tokio::join!(a.sweep("r"), b.sweep("r"), b.sweep("r"));
    let mut all: Vec<String> = [x.unwrap(), y.unwrap(), z.unwrap()].concat();
    all.sort();
    assert_eq!(all, strs(&["alice"]));
    assert!(a.sweep("r").await.unwrap().is_empty());
    assert_eq!(b.sweep("q").await.unwrap(), strs(&["alice"]));
    assert_eq!(room_view(&a, "r").await, vec!["bob:web"]);
    // The dead node's late expire_if finds nobody left to announce (or, past
    // 2 * ttl, nothing at all).
    assert!(
        a.expire_if("s1", g1)
            .await
            .unwrap()
            .unwrap_or_default()
            .is_empty()
    );
}

#[tokio::test]
async fn two_nodes_share_presence_and_transitions() {
    let (a, b) = two_nodes("two_nodes", LONG_TTL).await;
    a.attach(entry("s1", "alice", "phone", "A")).await.unwrap();
    assert!(a.join("r", "s1").await.unwrap());
    assert_eq!(room_view(&b, "r").await, vec!["alice:phone"]);
    assert_eq!(b.room("r").await.unwrap()[0].devices[0].node, "A");
    b.attach(entry("s2", "alice", "desktop", "B"))
        .await
        .unwrap();
    assert!(
        !b.join("r", "s2").await.unwrap(),
        "alice already online via A"
    );
    assert_eq!(room_view(&a, "r").await, vec!["alice:phone,desktop"]);
    assert_eq!(
        user_view(&a, "alice").await,
        vec!["phone@A[r]", "desktop@B[r]"]
    );
    assert!(!a.leave("r", "s1").await.unwrap(), "desktop on B remains");
    assert!(b.leave("r", "s2").await.unwrap(), "last device");
    assert!(a.room("r").await.unwrap().is_empty());

    // Joins and leaves racing from both nodes: one report each way per round.
    for round in 0..30 {
        let (x, y) = tokio::join!(a.join("r", "s1"), b.join("r", "s2"));
        let joins = [x.unwrap(), y.unwrap()];
        assert_eq!(joins.iter().filter(|j| **j).count(), 1, "round {round}");
        let (x, y) = tokio::join!(a.leave("r", "s1"), b.leave("r", "s2"));
        let leaves = [x.unwrap(), y.unwrap()];
        assert_eq!(leaves.iter().filter(|l| **l).count(), 1, "round {round}");
    }
}

#[tokio::test]
async fn a_session_resumes_on_another_node_without_flicker() {
    let (a, b) = two_nodes("resume", LONG_TTL).await;
    let on_a = entry("s1", "alice", "phone", "A");
    let g1 = a.attach(on_a.clone()).await.unwrap();
    a.join("x", "s1").await.unwrap();
    a.join("y", "s1").await.unwrap();
    // The connection drops from A and the client resumes on B.
    let g2 = b.attach(entry("s1", "alice", "phone", "B")).await.unwrap();
    assert!(g2 > g1);
    assert_eq!(
        room_view(&b, "y").await,
        vec!["alice:phone"],
        "kept until settled"
    );
    assert!(!b.join("x", "s1").await.unwrap(), "no leave/join flicker");
    assert_eq!(
        b.settle("s1", g2, &strs(&["x"])).await.unwrap(),
        strs(&["y"])
    );
    // A's grace timer and heartbeat for the old connection change nothing.
    assert!(a.settle("s1", g1, &[]).await.unwrap().is_empty());
    assert!(
        a.refresh(&[live(&on_a, g1, &["x", "y"])])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(a.expire_if("s1", g1).await.unwrap(), None);
    assert_eq!(user_view(&a, "alice").await, vec!["phone@B[x]"]);
    assert!(a.room("y").await.unwrap().is_empty());
    assert_eq!(b.expire_if("s1", g2).await.unwrap(), Some(strs(&["x"])));
}

#[tokio::test]
async fn a_stalled_node_comes_back_with_its_sessions() {
    let (a, b) = two_nodes("stalled", TTL).await;
    let e = entry("s1", "alice", "phone", "A");
    let g = a.attach(e.clone()).await.unwrap();
    a.join("r", "s1").await.unwrap();
    tokio::time::sleep(TTL + MARGIN).await;
    assert_eq!(
        b.sweep("r").await.unwrap(),
        strs(&["alice"]),
        "announced gone"
    );
    // A wakes up: its heartbeat puts alice back and says so (to announce).
    assert_eq!(
        a.refresh(&[live(&e, g, &["r"])]).await.unwrap(),
        vec![Rejoined {
            room: "r".into(),
            session: "s1".into()
        }]
    );
    assert_eq!(room_view(&b, "r").await, vec!["alice:phone"]);
    assert!(!a.join("r", "s1").await.unwrap());
    assert!(b.sweep("r").await.unwrap().is_empty());
    assert_eq!(a.expire_if("s1", g).await.unwrap(), Some(strs(&["r"])));
}

#[tokio::test]
async fn refresh_adopts_a_generation_whose_attach_never_reached_redis() {
    let (a, b) = two_nodes("adopt", LONG_TTL).await;
    let g1 = a.attach(entry("s1", "alice", "phone", "A")).await.unwrap();
    a.join("r", "s1").await.unwrap();
    // B's attach failed (Redis away), so B made up a newer generation.
    let on_b = entry("s1", "alice", "phone", "B");
    let made_up = g1 + 1_000;
    assert!(
        b.refresh(&[live(&on_b, made_up, &["r"])])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(b.session("s1").await.unwrap(), Some(on_b));
    assert_eq!(a.expire_if("s1", g1).await.unwrap(), None);
    assert_eq!(
        b.expire_if("s1", made_up).await.unwrap(),
        Some(strs(&["r"]))
    );
}

#[tokio::test]
async fn every_key_expires_by_itself() {
    let url = RedisServer::shared().url();
    let prefix = prefix("keys");
    let p = redis_on(&url, &prefix, LONG_TTL).await;
    let g = p.attach(entry("s1", "alice", "phone", "A")).await.unwrap();
    let g2 = p.attach(entry("s2", "bob", "web", "A")).await.unwrap();
    p.join("dm:alice:bob", "s1").await.unwrap();
    p.join("dm:alice:bob", "s2").await.unwrap();
    p.join("acme/r", "s1").await.unwrap();
    p.settle("s1", g, &strs(&["dm:alice:bob"])).await.unwrap();
    p.expire_if("s2", g2).await.unwrap();
    let c = client(&url).await;
    let keys: Vec<String> = c
        .custom(
            CustomCommand::new_static("KEYS", ClusterHash::Random, false),
            vec![format!("{prefix}*")],
        )
        .await
        .unwrap();
    let kinds: BTreeSet<&str> = keys
        .iter()
        .map(|k| k[prefix.len()..].split(':').take(2).last().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        ["g", "r", "ru", "s", "sr", "u"].into_iter().collect(),
        "the documented layout: {keys:?}"
    );
    for key in &keys {
        let ttl: i64 = c.pttl(key.as_str()).await.unwrap();
        assert!(
            ttl > 0 && ttl <= 2 * LONG_TTL.as_millis() as i64,
            "{key} has no expiry ({ttl})"
        );
    }
}

#[tokio::test]
async fn a_redis_restarted_empty_is_refilled_by_refresh() {
    let mut server = RedisServer::start();
    let prefix = prefix("restart");
    let a = redis_on(&server.url(), &prefix, Duration::from_secs(5)).await;
    let b = redis_on(&server.url(), &prefix, Duration::from_secs(5)).await;
    let alice = entry("s1", "alice", "phone", "A");
    let bob = entry("s2", "bob", "web", "B");
    let ga = a.attach(alice.clone()).await.unwrap();
    let gb = b.attach(bob.clone()).await.unwrap();
    a.join("r", "s1").await.unwrap();
    a.join("q", "s1").await.unwrap();
    b.join("r", "s2").await.unwrap();

    server.restart();
    // Until the clients have reconnected, calls fail (retryable); then the
    // presence is empty and the scripts are gone from Redis' cache.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b.room("r").await {
            Ok(users) => {
                assert!(users.is_empty(), "restarted empty");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no reconnect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let back_a = a
        .refresh(&[live(&alice, ga, &["r", "q"])])
        .await
        .expect("refresh after restart");
    let back_b = b.refresh(&[live(&bob, gb, &["r"])]).await.unwrap();
    let rejoined = |room: &str, session: &str| Rejoined {
        room: room.into(),
        session: session.into(),
    };
    assert_eq!(back_a, vec![rejoined("q", "s1"), rejoined("r", "s1")]);
    assert_eq!(back_b, vec![rejoined("r", "s2")]);
    assert_eq!(room_view(&b, "r").await, vec!["alice:phone", "bob:web"]);
    assert_eq!(user_view(&b, "alice").await, vec!["phone@A[q,r]"]);
    assert_eq!(a.session("s1").await.unwrap(), Some(alice.clone()));

    // The restored generation still governs the session...
    assert_eq!(
        a.expire_if("s1", ga).await.unwrap(),
        Some(strs(&["q", "r"]))
    );
    // ...and a new attach outranks any generation handed out before the restart.
    let again = b.attach(entry("s2", "bob", "web", "B")).await.unwrap();
    assert!(again > gb, "{again} after {gb}");
    assert_eq!(a.expire_if("s2", gb).await.unwrap(), None);
}

/// The memory implementation never expires anything: its heartbeat is off.
#[test]
fn memory_presence_needs_no_heartbeat() {
    assert_eq!(MemoryPresence::default().refresh_interval(), None);
}
