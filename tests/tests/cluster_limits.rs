//! Per-user and per-tenant send limits: shared by every connection of a user
//! (or every user of a tenant) across the nodes of a cluster (a Redis Lua
//! token bucket), and across the connections of one embedded node; the HTTP
//! publish API answers the tenant limit with 429. When Redis is away the
//! shared limits fail open.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use chorus_gateway::Config;
use chorus_gateway::ratelimit::{Scope, SendLimits};
use chorus_protocol::ErrorCode;
use chorus_protocol::client::{Client, ClientConfig, ClientError};
use chorus_tests::cluster::{Cluster, RedisHandle};
use chorus_tests::services::RedisServer;
use chorus_tests::{API_KEY, GatewayProcess, text, token};
use fred::prelude::*;

/// Per-connection limits far above the shared ones, so whatever refuses a
/// send in these tests is a shared limit.
const CONN_UNLIMITED: &[&str] = &[
    "--sends-per-sec",
    "10000",
    "--send-burst",
    "10000",
    "--frames-per-sec",
    "10000",
    "--frame-burst",
    "10000",
];

fn flags<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    CONN_UNLIMITED.iter().chain(extra.iter()).copied().collect()
}

/// Client settings for `user` (of `tenant`, if given) on one node.
fn on(node: &GatewayProcess, user: &str, tenant: Option<&str>) -> ClientConfig {
    ClientConfig {
        detect_dead: false,
        ..ClientConfig::new(format!(
            "ws://{}/ws?access_token={}",
            node.addr,
            token(user, 3600, None, tenant)
        ))
    }
}

/// What one send attempt came to.
#[derive(Debug)]
enum Outcome {
    Acked,
    /// `rate_limited`: its message and `retry_after_ms`.
    Limited(String, u64),
}

async fn send_once(c: &Client, room: &str, cid: &str) -> Outcome {
    match c.handle().send(room, cid, text("x"), None).await {
        Ok(_) => Outcome::Acked,
        Err(ClientError::Server {
            code: ErrorCode::RateLimited,
            message,
            retryable,
            retry_after_ms,
        }) => {
            assert!(retryable, "rate_limited is retryable");
            let wait = retry_after_ms.expect("rate_limited carries retry_after_ms");
            Outcome::Limited(message, wait)
        }
        Err(e) => panic!("send {cid}: unexpected {e:?}"),
    }
}

/// Most sends a bucket of `rate`/`burst` can give in `elapsed` (plus one for
/// rounding at the edges).
fn allowance(rate: u64, burst: u64, elapsed: Duration) -> u64 {
    burst + (rate as f64 * elapsed.as_secs_f64()).ceil() as u64 + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_limit_holds_across_nodes() {
    const RATE: u64 = 5;
    const BURST: u64 = 10;
    let cluster = Cluster::start(
        2,
        &flags(&["--user-sends-per-sec", "5", "--user-send-burst", "10"]),
    );
    let a = Client::connect(on(&cluster.nodes[0], "alice", None))
        .await
        .unwrap();
    let b = Client::connect(on(&cluster.nodes[1], "alice", None))
        .await
        .unwrap();
    a.join("lim", None).await.unwrap();
    b.join("lim", None).await.unwrap();
    // 15 sends per connection, alternating: each connection alone stays far
    // below its own limit (10000/s) and its burst, the user goes over theirs.
    let started = Instant::now();
    let (mut acked, mut limited) = (0u64, Vec::new());
    for i in 0..30 {
        let c = if i % 2 == 0 { &a } else { &b };
        match send_once(c, "lim", &format!("m{i}")).await {
            Outcome::Acked => acked += 1,
            Outcome::Limited(msg, wait) => limited.push((i % 2, msg, wait)),
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "user limit across 2 nodes: {acked} acked, {} limited in {elapsed:?}",
        limited.len()
    );
    assert!(acked >= BURST, "the burst goes through ({acked})");
    assert!(
        acked <= allowance(RATE, BURST, elapsed),
        "{acked} acked in {elapsed:?} is over {RATE}/s with burst {BURST}"
    );
    for conn in [0, 1] {
        assert!(
            limited.iter().any(|(c, _, _)| *c == conn),
            "the connection on node {conn} was limited too: {limited:?}"
        );
    }
    for (_, msg, wait) in &limited {
        assert!(msg.contains("per user"), "{msg}");
        // One token takes 1/RATE s = 200 ms.
        assert!((1..=200).contains(wait), "retry_after_ms {wait}");
    }
    // Waiting `retry_after_ms` is enough (nobody else spends alice's tokens).
    if let Outcome::Limited(_, wait) = send_once(&b, "lim", "after-wait").await {
        tokio::time::sleep(Duration::from_millis(wait + 5)).await;
        assert!(matches!(
            send_once(&b, "lim", "after-wait").await,
            Outcome::Acked
        ));
    }
    // Another user was never limited.
    let bob = Client::connect(on(&cluster.nodes[0], "bob", None))
        .await
        .unwrap();
    bob.join("lim", None).await.unwrap();
    for i in 0..5 {
        assert!(matches!(
            send_once(&bob, "lim", &format!("bob{i}")).await,
            Outcome::Acked
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_limit_holds_across_users_nodes_and_http() {
    const RATE: u64 = 4;
    const BURST: u64 = 8;
    let cluster = Cluster::start(
        2,
        &flags(&["--tenant-sends-per-sec", "4", "--tenant-send-burst", "8"]),
    );
    let mut acme = Vec::new();
    for i in 0..4 {
        let c = Client::connect(on(&cluster.nodes[i % 2], &format!("u{i}"), Some("acme")))
            .await
            .unwrap();
        c.join("t", None).await.unwrap();
        acme.push(c);
    }
    let started = Instant::now();
    let (mut acked, mut limited) = (0u64, Vec::new());
    for i in 0..20 {
        match send_once(&acme[i % 4], "t", &format!("m{i}")).await {
            Outcome::Acked => acked += 1,
            Outcome::Limited(msg, wait) => limited.push((msg, wait)),
        }
    }
    let elapsed = started.elapsed();
    assert!(acked >= BURST, "the burst goes through ({acked})");
    assert!(
        acked <= allowance(RATE, BURST, elapsed),
        "{acked} acked in {elapsed:?} is over {RATE}/s with burst {BURST}"
    );
    assert!(!limited.is_empty());
    for (msg, wait) in &limited {
        assert!(msg.contains("per tenant"), "{msg}");
        assert!((1..=250).contains(wait), "retry_after_ms {wait}");
    }
    // Another tenant has its own bucket.
    let other = Client::connect(on(&cluster.nodes[1], "u0", Some("globex")))
        .await
        .unwrap();
    other.join("t", None).await.unwrap();
    for i in 0..5 {
        assert!(matches!(
            send_once(&other, "t", &format!("g{i}")).await,
            Outcome::Acked
        ));
    }
    // The HTTP publish API shares the tenant's bucket: drain it, get a 429.
    let http = reqwest::Client::new();
    let publish = |node: usize, tenant: &str, cid: String| {
        let url = format!(
            "{}/v1/rooms/t/messages?tenant={tenant}",
            cluster.nodes[node].http_url()
        );
        let req = http
            .post(url)
            .header("x-api-key", API_KEY)
            .json(&serde_json::json!({"sender": "backend", "cid": cid, "body": {"n": 1}}));
        async move { req.send().await.expect("publish") }
    };
    let mut refused = None;
    for i in 0..(BURST + 10) {
        let resp = publish(i as usize % 2, "acme", format!("h{i}")).await;
        if resp.status() == reqwest::StatusCode::TOO_MANY_REQUESTS {
            refused = Some(resp);
            break;
        }
        assert_eq!(resp.status(), reqwest::StatusCode::OK);
    }
    let resp = refused.expect("the tenant's HTTP publishes are limited too");
    let retry_after: u64 = resp
        .headers()
        .get("retry-after")
        .expect("429 carries Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1, "seconds, rounded up");
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(
        publish(0, "globex", "hg".into()).await.status(),
        reqwest::StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_user_limit_spans_connections() {
    let dir = tempfile::tempdir().unwrap();
    let node = GatewayProcess::start_in(
        dir.path(),
        &flags(&[
            "--user-sends-per-sec",
            "5",
            "--user-send-burst",
            "10",
            "--tenant-sends-per-sec",
            "5",
            "--tenant-send-burst",
            "12",
        ]),
        None,
    );
    let a = Client::connect(on(&node, "alice", None)).await.unwrap();
    let b = Client::connect(on(&node, "alice", None)).await.unwrap();
    a.join("e", None).await.unwrap();
    b.join("e", None).await.unwrap();
    let started = Instant::now();
    let (mut acked, mut limited) = (0u64, Vec::new());
    for i in 0..30 {
        let c = if i % 2 == 0 { &a } else { &b };
        match send_once(c, "e", &format!("m{i}")).await {
            Outcome::Acked => acked += 1,
            Outcome::Limited(msg, wait) => limited.push((i % 2, msg, wait)),
        }
    }
    let elapsed = started.elapsed();
    assert!(acked >= 10, "the burst goes through ({acked})");
    assert!(
        acked <= allowance(5, 10, elapsed),
        "{acked} acked in {elapsed:?}"
    );
    for conn in [0, 1] {
        assert!(limited.iter().any(|(c, _, _)| *c == conn), "{limited:?}");
    }
    for (_, msg, wait) in &limited {
        assert!(msg.contains("per user"), "{msg}");
        assert!((1..=200).contains(wait), "retry_after_ms {wait}");
    }
    // Users of a tenant share its bucket here too (5/s, burst 12): x and y
    // each stay within their own user burst (10), together they exceed the
    // tenant's.
    let x = Client::connect(on(&node, "x", Some("acme"))).await.unwrap();
    let y = Client::connect(on(&node, "y", Some("acme"))).await.unwrap();
    x.join("e", None).await.unwrap();
    y.join("e", None).await.unwrap();
    let started = Instant::now();
    let (mut acked, mut limited) = (0u64, Vec::new());
    for i in 0..20 {
        let c = if i % 2 == 0 { &x } else { &y };
        match send_once(c, "e", &format!("t{i}")).await {
            Outcome::Acked => acked += 1,
            Outcome::Limited(msg, wait) => limited.push((msg, wait)),
        }
    }
    let elapsed = started.elapsed();
    assert!(acked >= 12, "the tenant's burst goes through ({acked})");
    assert!(acked <= allowance(5, 12, elapsed), "{acked} in {elapsed:?}");
    assert!(!limited.is_empty());
    for (msg, wait) in &limited {
        assert!(msg.contains("per tenant"), "{msg}");
        assert!((1..=200).contains(wait), "retry_after_ms {wait}");
    }
}

/// The script itself, through the gateway's `SendLimits` on a real Redis:
/// user and tenant buckets are taken together or not at all, the keys are
/// where the docs say, and they expire once their bucket has refilled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_buckets_are_atomic_and_expire() {
    let redis = RedisServer::shared();
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    let cfg = Config::from_args([
        "chorus",
        "--user-sends-per-sec",
        "2",
        "--user-send-burst",
        "3",
        "--tenant-sends-per-sec",
        "10",
        "--tenant-send-burst",
        "4",
    ])
    .unwrap();
    let client = Builder::from_config(fred::prelude::Config::from_url(&redis.url()).unwrap())
        .build()
        .unwrap();
    client.init().await.unwrap();
    let limits = SendLimits::redis(&cfg.send, client.clone(), prefix.clone());
    for _ in 0..3 {
        limits.check(Some("acme/al"), Some("acme")).await.unwrap();
    }
    let r = limits
        .check(Some("acme/al"), Some("acme"))
        .await
        .unwrap_err();
    assert_eq!(r.scope, Scope::User);
    assert!(
        (400..=500).contains(&r.retry_after_ms()),
        "half a second per token at 2/s: {r:?}"
    );
    // That refusal took nothing from the tenant: one token is left for bo.
    limits.check(Some("acme/bo"), Some("acme")).await.unwrap();
    let r = limits
        .check(Some("acme/cy"), Some("acme"))
        .await
        .unwrap_err();
    assert_eq!(r.scope, Scope::Tenant);
    assert!((1..=100).contains(&r.retry_after_ms()), "{r:?}");
    // Without a user (HTTP publish) only the tenant counts.
    assert_eq!(
        limits.check(None, Some("acme")).await.unwrap_err().scope,
        Scope::Tenant
    );
    limits.check(None, Some("other")).await.unwrap();
    let user_key = format!("{prefix}rl:u:acme/al");
    let tokens: Option<String> = client.hget(&user_key, "tk").await.unwrap();
    assert!(tokens.is_some_and(|t| t.parse::<f64>().unwrap() < 1.0));
    let ttl: i64 = client.pttl(&user_key).await.unwrap();
    assert!(
        (1000..=2600).contains(&ttl),
        "expires once refilled (1.5 s) + 1 s: {ttl}"
    );
    let ttl: i64 = client.pttl(format!("{prefix}rl:t:acme")).await.unwrap();
    assert!(ttl > 0 && ttl <= 1400, "{ttl}");
}

/// Redis away: the shared limits fail open (the owner of a room keeps
/// accepting sends past the user limit), counted in a metric; once Redis is
/// back the limit holds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shared_limits_fail_open_while_redis_is_down() {
    let mut cluster = Cluster::start_own_redis(
        1,
        &flags(&["--user-sends-per-sec", "1", "--user-send-burst", "2"]),
    );
    let node = &cluster.nodes[0];
    let c = Client::connect(on(node, "alice", None)).await.unwrap();
    c.join("fo", None).await.unwrap();
    assert!(matches!(send_once(&c, "fo", "a").await, Outcome::Acked));
    assert!(matches!(send_once(&c, "fo", "b").await, Outcome::Acked));
    assert!(matches!(
        send_once(&c, "fo", "c").await,
        Outcome::Limited(..)
    ));
    let RedisHandle::Owned(redis) = &mut cluster.redis else {
        unreachable!("own redis")
    };
    redis.kill9();
    // Past the Redis clients' first reconnect attempt: before it they still
    // count as connected, and a check waits for its 250 ms bound (the owner's
    // publish for the 2 s command timeout).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    for i in 0..6 {
        match send_once(&c, "fo", &format!("down{i}")).await {
            Outcome::Acked => {}
            other => panic!("send {i} while redis is down: {other:?}"),
        }
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "fail open is fast: {took:?}");
    eprintln!("redis down: 6 sends over the user limit acked in {took:?}");
    assert!(node.metric("chorus_send_limit_fail_open_total").await >= 6.0);
    redis.restart();
    let restarted = Instant::now();
    // The limit is back once the node has reconnected (bounded by the
    // reconnect back-off and the limiter's 1 s skip after a failure).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 0;
    loop {
        i += 1;
        if let Outcome::Limited(msg, _) = send_once(&c, "fo", &format!("up{i}")).await {
            assert!(msg.contains("per user"), "{msg}");
            break;
        }
        assert!(Instant::now() < deadline, "the user limit never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "user limit enforced again {:?} after the restart",
        restarted.elapsed()
    );
}

/// Nodes spend the shared buckets from leases: a user well below their rate
/// costs a Redis call per half a lease of sends, not one per send, and two
/// nodes spending one user's bucket together still never get more than the
/// bucket gives (leased tokens are taken from Redis before they are spent).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_spend_locally_and_never_overspend() {
    // rate 100, burst 40: a lease is 10 tokens (a tenth of a second).
    const RATE: u64 = 100;
    const BURST: u64 = 40;
    let cluster = Cluster::start(
        2,
        &flags(&["--user-sends-per-sec", "100", "--user-send-burst", "40"]),
    );
    let a = Client::connect(on(&cluster.nodes[0], "carol", None))
        .await
        .unwrap();
    a.join("lease", None).await.unwrap();
    let before = cluster.nodes[0]
        .metric("chorus_send_limit_requests_total")
        .await;
    for i in 0..30 {
        assert!(matches!(
            send_once(&a, "lease", &format!("slow{i}")).await,
            Outcome::Acked
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = cluster.nodes[0]
        .metric("chorus_send_limit_requests_total")
        .await
        - before;
    eprintln!("30 sends below the rate: {asked} lease requests");
    assert!(
        (1.0..=10.0).contains(&asked),
        "one request per half lease (5 sends), not per send: {asked}"
    );

    // Over the limit from both nodes at once: each connection pipelines its
    // sends, so both nodes lease from the same bucket concurrently.
    let b = Client::connect(on(&cluster.nodes[1], "dave", None))
        .await
        .unwrap();
    let c = Client::connect(on(&cluster.nodes[0], "dave", None))
        .await
        .unwrap();
    b.join("lease", None).await.unwrap();
    c.join("lease", None).await.unwrap();
    // Let the bucket refill to its burst after the joins.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let burst = |client: &Client, tag: &'static str| {
        let h = client.handle();
        async move {
            let sends = (0..60).map(|i| {
                let h = h.clone();
                async move { h.send("lease", &format!("{tag}{i}"), text("x"), None).await }
            });
            futures_util::future::join_all(sends).await
        }
    };
    let (rb, rc) = tokio::join!(burst(&b, "b"), burst(&c, "c"));
    let elapsed = started.elapsed();
    let mut acked = 0u64;
    let mut limited = 0u64;
    for r in rb.iter().chain(rc.iter()) {
        match r {
            Ok(_) => acked += 1,
            Err(ClientError::Server {
                code: ErrorCode::RateLimited,
                ..
            }) => limited += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    eprintln!("120 sends from 2 nodes in {elapsed:?}: {acked} acked, {limited} limited");
    assert!(
        acked <= allowance(RATE, BURST, elapsed),
        "{acked} acked in {elapsed:?} is over {RATE}/s with burst {BURST}"
    );
    // What a node holds unspent is at most a lease: the other still gets the rest.
    assert!(acked + 20 >= BURST, "{acked} acked of a burst of {BURST}");
    assert!(limited > 0);
}
