//! The chaos harness: a real cluster (its own Redis, its own PostgreSQL, N
//! `chorus` nodes whose Redis and PostgreSQL links each go through a
//! [`FaultProxy`]), a workload of simulated clients, a seeded fault schedule,
//! and a checker that counts every loss. `tests/CHAOS.md` explains each fault
//! and each invariant; the `chorus-chaos` binary is the command line.
//!
//! Layout:
//! - [`schedule`]: fault kinds and the seeded schedule.
//! - [`workload`]: the simulated clients and what they write down.
//! - [`check`]: the verdict from client logs and the PostgreSQL history.
//! - this file: starting and breaking things, and the run itself.

pub mod check;
pub mod schedule;
pub mod workload;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::proxy::{Fault, FaultProxy};
use crate::services::{PostgresServer, RedisServer};
use crate::{API_KEY, GatewayProcess};
use check::{Acked, Measured, Report, StoredRow};
use schedule::{FaultKind, Step, Timing};
use workload::{Command, SharedLog, lock, now_ms};

/// The room every client joins.
pub const HOT_ROOM: &str = "hot";
/// The room of the slow-consumer bursts (every tenth client).
pub const BULK_ROOM: &str = "bulk";

/// Node settings: short lease, ttl and heartbeats so faults resolve within
/// seconds; small outbound budgets so a stalled reader is closed as slow.
pub const NODE_FLAGS: &[&str] = &[
    "--owner-lease-ms",
    "1500",
    "--presence-ttl-ms",
    "3000",
    "--heartbeat-ms",
    "2000",
    "--idle-timeout-ms",
    "6000",
    "--presence-grace-ms",
    "1000",
    "--forward-timeout-ms",
    "1000",
    "--tip-poll-ms",
    "500",
    "--send-timeout-ms",
    "4000",
    "--drain-timeout-ms",
    "3000",
    "--write-timeout-ms",
    "2000",
    "--outbound-queue",
    "256",
    "--outbound-bytes",
    "262144",
    "--database-pool",
    "6",
];
/// How long `--quick` (CI's run) injects faults: long enough for the first
/// round, every fault kind once, with seed 42.
pub const QUICK_DURATION: Duration = Duration::from_secs(100);
/// The quick run's seed.
pub const QUICK_SEED: u64 = 42;
/// Quiet time after each fault, unless told otherwise.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(3);
const LEASE: Duration = Duration::from_millis(1500);
const PRESENCE_TTL: Duration = Duration::from_millis(3000);
const SEND_TIMEOUT: Duration = Duration::from_millis(4000);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub seed: u64,
    /// How long faults are injected (the final checks come after).
    pub duration: Duration,
    pub nodes: usize,
    pub clients: usize,
    /// Ordinary rooms (besides the hot and the bulk room).
    pub rooms: usize,
    /// Mean time between one client's sends.
    pub send_every: Duration,
    /// Share of sends that go to the hot room.
    pub hot_share: f64,
    /// Bytes published into the bulk room while its readers stall.
    pub burst_bytes: usize,
    /// Quiet time after each fault.
    pub settle: Duration,
    /// Where the JSON report goes.
    pub report: Option<PathBuf>,
    /// Delete one acknowledged message from PostgreSQL before checking: the
    /// checker must then fail (a check of the checker).
    pub sabotage: bool,
}

/// One gateway node and its two faulty links.
struct Node {
    id: String,
    process: GatewayProcess,
    redis_link: FaultProxy,
    pg_link: FaultProxy,
    /// The harness stopped it (kill -9, drain) and has not started it again.
    down: bool,
    _dir: tempfile::TempDir,
}

/// Numbers gathered by background tasks while the run goes on.
#[derive(Default)]
struct Side {
    presence_queries: BTreeMap<String, u64>,
    peak_writer_queue: BTreeMap<String, u64>,
    presence_convergence: Vec<(String, Option<Duration>)>,
}

struct Harness {
    opts: Options,
    redis: RedisServer,
    pg: PostgresServer,
    /// Direct (not proxied) URL of the history database, for the checker.
    database_url: String,
    nodes: Vec<Node>,
    addrs: workload::Nodes,
    clients: Vec<(
        mpsc::Sender<Command>,
        SharedLog,
        tokio::task::JoinHandle<()>,
    )>,
    side: Arc<Mutex<Side>>,
    measured: Measured,
    http: reqwest::Client,
    rng: StdRng,
    started: Instant,
    stop: watch::Sender<bool>,
    /// Fresh rooms made so far (`fresh-K`).
    fresh_rooms: u64,
}

/// Run the whole thing: start, inject the schedule, heal, check.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    anyhow::ensure!(opts.nodes >= 3, "the harness needs at least 3 nodes");
    let timing = Timing {
        lease: LEASE,
        send_timeout: SEND_TIMEOUT,
        settle: opts.settle,
    };
    let steps = schedule::build(opts.seed, opts.duration, opts.nodes, timing);
    println!(
        "chaos: seed {} | {} nodes | {} clients | {} rooms | {} faults over {:?}",
        opts.seed,
        opts.nodes,
        opts.clients,
        opts.rooms + 2,
        steps.len(),
        opts.duration
    );
    let mut h = tokio::task::block_in_place(|| Harness::start(opts.clone()))?;
    h.start_side_tasks();
    h.start_clients();
    h.started = Instant::now();
    for step in &steps {
        h.idle_until(h.started + step.at).await;
        h.inject(step).await;
    }
    h.idle(opts.settle).await;
    h.finish().await
}

impl Harness {
    fn start(opts: Options) -> anyhow::Result<Harness> {
        let redis = RedisServer::start();
        let pg = PostgresServer::start();
        let database_url = pg.create_database();
        let db = database_url
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let redis_addr: std::net::SocketAddr =
            redis
                .url()
                .trim_start_matches("redis://")
                .parse()
                .map_err(|e| anyhow::anyhow!("redis address: {e}"))?;
        let pg_addr: std::net::SocketAddr = database_url
            .trim_start_matches("postgres://postgres@")
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|e| anyhow::anyhow!("postgres address: {e}"))?;
        let rt = tokio::runtime::Handle::current();
        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            let id = format!("n{i}");
            let redis_link = rt.block_on(FaultProxy::start(redis_addr))?;
            let pg_link = rt.block_on(FaultProxy::start(pg_addr))?;
            let dir = tempfile::tempdir()?;
            let mut flags: Vec<String> = vec![
                "--redis-url".into(),
                format!("redis://{}", redis_link.addr()),
                "--database-url".into(),
                format!("postgres://postgres@{}/{db}", pg_link.addr()),
                "--redis-prefix".into(),
                "chaos:".into(),
                "--node-id".into(),
                id.clone(),
            ];
            flags.extend(NODE_FLAGS.iter().map(|s| s.to_string()));
            let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            let process = GatewayProcess::start_in(dir.path(), &refs, None);
            nodes.push(Node {
                id,
                process,
                redis_link,
                pg_link,
                down: false,
                _dir: dir,
            });
        }
        let addrs = Arc::new(nodes.iter().map(|n| n.process.addr.clone()).collect());
        let (stop, _) = watch::channel(false);
        Ok(Harness {
            rng: StdRng::seed_from_u64(opts.seed ^ 0x5eed),
            measured: Measured {
                presence_bound: PRESENCE_TTL + Duration::from_secs(1),
                seed: opts.seed,
                nodes: opts.nodes,
                clients: opts.clients,
                ..Default::default()
            },
            opts,
            redis,
            pg,
            database_url,
            nodes,
            addrs,
            clients: Vec::new(),
            side: Arc::new(Mutex::new(Side::default())),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()?,
            started: Instant::now(),
            stop,
            fresh_rooms: 0,
        })
    }

    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Presence queries from the side, and the writer queue depth from
    /// `/metrics`, until the run stops.
    fn start_side_tasks(&self) {
        let (http, addrs, side) = (self.http.clone(), self.addrs.clone(), self.side.clone());
        let rooms = self.opts.rooms;
        let mut stop = self.stop.subscribe();
        let mut rng = StdRng::seed_from_u64(self.opts.seed ^ 0x9e37);
        tokio::spawn(async move {
            loop {
                let addr = &addrs[rng.random_range(0..addrs.len())];
                let room = match rng.random_range(0..3) {
                    0 => HOT_ROOM.to_owned(),
                    _ => format!("room-{}", rng.random_range(0..rooms.max(1))),
                };
                let r = http
                    .get(format!("http://{addr}/v1/rooms/{room}/presence"))
                    .header("x-api-key", API_KEY)
                    .send()
                    .await;
                let key = match r {
                    Ok(resp) => resp.status().as_u16().to_string(),
                    Err(_) => "no answer".to_owned(),
                };
                *side
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .presence_queries
                    .entry(key)
                    .or_default() += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
        let (http, addrs, side) = (self.http.clone(), self.addrs.clone(), self.side.clone());
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                for (i, addr) in addrs.iter().enumerate() {
                    let Ok(resp) = http.get(format!("http://{addr}/metrics")).send().await else {
                        continue;
                    };
                    let Ok(text) = resp.text().await else {
                        continue;
                    };
                    let depth = text
                        .lines()
                        .find(|l| l.starts_with("chorus_writer_queue_depth "))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0) as u64;
                    let mut s = side.lock().unwrap_or_else(|e| e.into_inner());
                    let peak = s.peak_writer_queue.entry(format!("n{i}")).or_default();
                    *peak = (*peak).max(depth);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }

    fn start_clients(&mut self) {
        let mut rng = StdRng::seed_from_u64(self.opts.seed ^ 0xc11e);
        for i in 0..self.opts.clients {
            let user = format!("c{i}");
            let mut rooms = vec![HOT_ROOM.to_owned()];
            let mut pool: Vec<usize> = (0..self.opts.rooms).collect();
            pool.shuffle(&mut rng);
            rooms.extend(pool.iter().take(2).map(|k| format!("room-{k}")));
            if i % 10 == 0 {
                rooms.push(BULK_ROOM.to_owned());
            }
            let profile = workload::Profile {
                token: crate::token(&user, 86_400, None, None),
                user,
                rooms,
                send_every: self.opts.send_every,
                hot_room: HOT_ROOM.to_owned(),
                hot_share: self.opts.hot_share,
                seed: rng.random(),
            };
            let (tx, rx) = mpsc::channel(16);
            let (log, task) = workload::spawn(profile, self.addrs.clone(), rx);
            self.clients.push((tx, log, task));
        }
    }

    /// Wait, watching the nodes (unexpected exits, RSS) meanwhile.
    async fn idle(&mut self, d: Duration) {
        self.idle_until(Instant::now() + d).await;
    }

    async fn idle_until(&mut self, deadline: Instant) {
        loop {
            self.watch_nodes();
            let now = Instant::now();
            if now >= deadline {
                return;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(250))).await;
        }
    }

    fn watch_nodes(&mut self) {
        for i in 0..self.nodes.len() {
            let node = &mut self.nodes[i];
            if node.down {
                continue;
            }
            if let Some(status) = node.process.exited() {
                let what = format!(
                    "{} exited by itself at t+{:.1}s: {status}",
                    node.id,
                    self.started.elapsed().as_secs_f64()
                );
                println!("  !! {what}");
                self.measured.crashes.push(what);
                tokio::task::block_in_place(|| self.nodes[i].process.restart());
                continue;
            }
            if let Some(kib) = Some(crate::load::rss_kib(node.process.pid())).filter(|&k| k > 0) {
                let e = self
                    .measured
                    .rss_kib
                    .entry(node.id.clone())
                    .or_insert((kib, kib, kib));
                e.1 = e.1.max(kib);
                e.2 = kib;
            }
        }
    }

    fn restart_node(&mut self, i: usize) {
        tokio::task::block_in_place(|| self.nodes[i].process.restart());
        self.nodes[i].down = false;
    }

    /// Watch the other nodes' presence API until none lists a connection the
    /// killed node held (joined before the kill).
    fn watch_presence_after_kill(&self, killed: usize) {
        let id = self.nodes[killed].id.clone();
        let others: Vec<String> = self
            .addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != killed)
            .map(|(_, a)| a.clone())
            .collect();
        let (http, side) = (self.http.clone(), self.side.clone());
        let kill_ms = now_ms() as i64;
        let bound = self.measured.presence_bound;
        tokio::spawn(async move {
            let started = Instant::now();
            let give_up = bound * 4;
            let result = loop {
                let mut answered = 0;
                let mut stale = false;
                for addr in &others {
                    let Ok(resp) = http
                        .get(format!("http://{addr}/v1/rooms/{HOT_ROOM}/presence"))
                        .header("x-api-key", API_KEY)
                        .send()
                        .await
                    else {
                        continue;
                    };
                    let Ok(v) = resp.json::<serde_json::Value>().await else {
                        continue;
                    };
                    answered += 1;
                    stale |= v["users"].as_array().into_iter().flatten().any(|u| {
                        u["devices"].as_array().into_iter().flatten().any(|d| {
                            d["node"] == id.as_str() && d["since"].as_i64().unwrap_or(0) <= kill_ms
                        })
                    });
                }
                if answered > 0 && !stale {
                    break Some(started.elapsed());
                }
                if started.elapsed() > give_up {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            side.lock()
                .unwrap_or_else(|e| e.into_inner())
                .presence_convergence
                .push((id, result));
        });
    }

    async fn inject(&mut self, step: &Step) {
        let i = step.node;
        let id = self.nodes[i].id.clone();
        println!(
            "[t+{:6.1}s] {:<28} node {id} hold {:>5} ms amount {}",
            self.elapsed(),
            step.kind.name(),
            step.hold.as_millis(),
            step.amount
        );
        *self
            .measured
            .faults
            .entry(step.kind.name().to_owned())
            .or_default() += 1;
        match step.kind {
            FaultKind::Kill9 => {
                self.nodes[i].down = true;
                self.nodes[i].process.kill9();
                self.watch_presence_after_kill(i);
                self.idle(step.hold).await;
                self.restart_node(i);
            }
            FaultKind::Pause => {
                let pid = self.nodes[i].process.pid();
                self.nodes[i].down = true;
                crate::signal(pid, "STOP");
                self.idle(step.hold).await;
                crate::signal(pid, "CONT");
                self.nodes[i].down = false;
            }
            FaultKind::RollingRestart => {
                for k in 0..self.nodes.len() {
                    self.nodes[k].down = true;
                    let status = tokio::task::block_in_place(|| self.nodes[k].process.sigterm());
                    if !status.is_some_and(|s| s.success()) {
                        self.measured
                            .bad_drains
                            .push(format!("{}: exit {status:?}", self.nodes[k].id));
                    }
                    self.restart_node(k);
                    self.idle(Duration::from_secs(1)).await;
                }
            }
            FaultKind::RedisRestart => {
                self.redis.kill9();
                self.idle(step.hold).await;
                tokio::task::block_in_place(|| self.redis.restart());
            }
            FaultKind::PostgresRestart => {
                tokio::task::block_in_place(|| self.pg.kill9());
                self.idle(step.hold).await;
                tokio::task::block_in_place(|| self.pg.restart());
            }
            FaultKind::PostgresStall => {
                self.pg.pause();
                self.idle(step.hold).await;
                self.pg.resume();
            }
            FaultKind::RedisPartition => {
                self.nodes[i].redis_link.set(Fault::Blackhole);
                self.idle(step.hold).await;
                self.nodes[i].redis_link.set(Fault::Pass);
            }
            FaultKind::FreshJoinCut => self.fresh_join_cut(step).await,
            FaultKind::PostgresPartition => {
                self.nodes[i].pg_link.set(Fault::Blackhole);
                self.idle(step.hold).await;
                self.nodes[i].pg_link.set(Fault::Pass);
            }
            FaultKind::Latency => {
                let d = Fault::Delay(Duration::from_millis(step.amount));
                self.nodes[i].redis_link.set(d);
                self.nodes[i].pg_link.set(d);
                self.idle(step.hold).await;
                self.nodes[i].redis_link.set(Fault::Pass);
                self.nodes[i].pg_link.set(Fault::Pass);
            }
            FaultKind::Bandwidth => {
                self.nodes[i].redis_link.set(Fault::Throttle(step.amount));
                self.idle(step.hold).await;
                self.nodes[i].redis_link.set(Fault::Pass);
            }
            FaultKind::Reset => {
                self.nodes[i].redis_link.reset();
                self.nodes[i].pg_link.reset();
            }
            FaultKind::HalfOpen => {
                self.nodes[i].redis_link.set(Fault::HalfOpen);
                self.idle(step.hold).await;
                // Bytes were lost: the connections cannot go on; the node's
                // client finds them reset, as it would a dead peer.
                self.nodes[i].redis_link.heal_with_reset();
            }
            FaultKind::ClientDrops => {
                let n = self.clients.len() * step.amount as usize / 100;
                let mut picks: Vec<usize> = (0..self.clients.len()).collect();
                picks.shuffle(&mut self.rng);
                for &k in picks.iter().take(n) {
                    let _ = self.clients[k].0.try_send(Command::Drop);
                }
            }
            FaultKind::SlowConsumers => self.slow_consumers(step).await,
        }
    }

    /// Cut a node from Redis (connections reset and refused, so the node
    /// knows), have up to `amount` of its clients join a room
    /// nobody is in (so each join is the room's first on that node and must
    /// subscribe), lift the cut, then publish into the room from another
    /// node. A join that succeeded without a subscription would miss these
    /// messages (the checker counts them); a refused one is retried by the
    /// client until it works.
    async fn fresh_join_cut(&mut self, step: &Step) {
        let i = step.node;
        let id = self.nodes[i].id.clone();
        let room = format!("fresh-{}", self.fresh_rooms);
        self.fresh_rooms += 1;
        let others: Vec<String> = self
            .addrs
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .map(|(_, a)| a.clone())
            .collect();
        // A first message through another node makes that node the room's
        // writer, so the cut node hears the room only through Redis (a writer
        // delivers to its own members directly).
        let (acked, failed) = publish(&self.http, &others, &room, 1).await;
        self.measured.published.extend(acked);
        self.measured.publish_failures += failed;
        self.nodes[i].redis_link.set(Fault::Refuse);
        // The node's Redis clients notice the resets.
        self.idle(Duration::from_millis(300)).await;
        let mut joiners = 0;
        for (tx, log, _) in &self.clients {
            if joiners >= step.amount {
                break;
            }
            if lock(log).node.as_deref() == Some(id.as_str())
                && tx.try_send(Command::Join(room.clone())).is_ok()
            {
                joiners += 1;
            }
        }
        println!("             {joiners} clients on {id} join {room}");
        self.idle(step.hold).await;
        self.nodes[i].redis_link.set(Fault::Pass);
        // Let the refused joins be retried, then write into the room through
        // the other nodes.
        self.idle(Duration::from_secs(1)).await;
        let (acked, failed) = publish(&self.http, &others, &room, 5).await;
        self.measured.published.extend(acked);
        self.measured.publish_failures += failed;
    }

    /// Stall a few members of the bulk room and publish a burst into it.
    async fn slow_consumers(&mut self, step: &Step) {
        let mut members: Vec<usize> = (0..self.clients.len()).step_by(10).collect();
        members.shuffle(&mut self.rng);
        for &k in members.iter().take(step.amount as usize) {
            let _ = self.clients[k].0.try_send(Command::Stall(step.hold));
        }
        let burst = self.burst(self.opts.burst_bytes);
        let hold = tokio::time::sleep(step.hold);
        tokio::pin!(burst);
        tokio::pin!(hold);
        // Keep watching the nodes while both run.
        let mut burst_done = None;
        let mut hold_done = false;
        while burst_done.is_none() || !hold_done {
            tokio::select! {
                r = &mut burst, if burst_done.is_none() => burst_done = Some(r),
                _ = &mut hold, if !hold_done => hold_done = true,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            self.watch_nodes();
        }
        let (acked, failed) = burst_done.unwrap_or_default();
        self.measured.published.extend(acked);
        self.measured.publish_failures += failed;
    }

    /// Publish `bytes` into the bulk room over HTTP, 8 KiB a message, four
    /// at a time, each retried with its cid until acked (at most 30 tries).
    fn burst(&self, bytes: usize) -> impl std::future::Future<Output = (Vec<Acked>, u64)> + use<> {
        let count = bytes.div_ceil(8192).max(1);
        let (http, addrs) = (self.http.clone(), self.addrs.clone());
        let tag = format!("{}", now_ms());
        async move {
            let pad = "x".repeat(8000);
            let mut workers = Vec::new();
            for w in 0..4 {
                let (http, addrs, pad, tag) =
                    (http.clone(), addrs.clone(), pad.clone(), tag.clone());
                workers.push(tokio::spawn(async move {
                    let mut acked = Vec::new();
                    let mut failed = 0u64;
                    for k in (w..count).step_by(4) {
                        let cid = format!("burst-{tag}-{k}");
                        let mut done = false;
                        for attempt in 0..30usize {
                            let addr = &addrs[(k + attempt) % addrs.len()];
                            let body = serde_json::json!({
                                "sender": "publisher", "cid": cid,
                                "body": {"u": "publisher", "t": now_ms(), "pad": pad},
                            });
                            let r = http
                                .post(format!("http://{addr}/v1/rooms/{BULK_ROOM}/messages"))
                                .header("x-api-key", API_KEY)
                                .json(&body)
                                .timeout(Duration::from_secs(8))
                                .send()
                                .await;
                            if let Ok(resp) = r
                                && resp.status() == 200
                                && let Ok(v) = resp.json::<serde_json::Value>().await
                                && let Some(seq) = v["seq"].as_u64()
                            {
                                acked.push(Acked {
                                    room: BULK_ROOM.into(),
                                    sender: "publisher".into(),
                                    cid: cid.clone(),
                                    seq,
                                });
                                done = true;
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        if !done {
                            failed += 1;
                        }
                    }
                    (acked, failed)
                }));
            }
            let mut acked = Vec::new();
            let mut failed = 0;
            for w in workers {
                if let Ok((a, f)) = w.await {
                    acked.extend(a);
                    failed += f;
                }
            }
            (acked, failed)
        }
    }

    /// Heal everything, let clients finish, check.
    async fn finish(mut self) -> anyhow::Result<Report> {
        println!("[t+{:6.1}s] healing; final checks", self.elapsed());
        for i in 0..self.nodes.len() {
            self.nodes[i].redis_link.set(Fault::Pass);
            self.nodes[i].pg_link.set(Fault::Pass);
            if self.nodes[i].down {
                self.restart_node(i);
            }
        }
        for (tx, _, _) in &self.clients {
            let _ = tx.send(Command::StopSending).await;
        }
        // Every send acked (or refused for good).
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let pending: usize = self
                .clients
                .iter()
                .map(|(_, log, _)| lock(log).pending_sends())
                .sum();
            if pending == 0 {
                break;
            }
            self.idle(Duration::from_millis(500)).await;
        }
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await?;
        // Every client caught up with the tips.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let tips: BTreeMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
                "SELECT room, max(seq) FROM messages GROUP BY room",
            )
            .fetch_all(&pool)
            .await?
            .into_iter()
            .collect();
            let behind = self
                .clients
                .iter()
                .filter(|(_, log, _)| {
                    let log = lock(log);
                    log.rooms.iter().any(|r| {
                        let tip = tips.get(r).copied().unwrap_or(0) as u64;
                        log.cursor(r).unwrap_or(0) < tip
                    })
                })
                .count();
            if behind == 0 || Instant::now() >= deadline {
                if behind > 0 {
                    println!("  {behind} clients still behind the tips after 60 s");
                }
                break;
            }
            self.idle(Duration::from_millis(500)).await;
        }
        self.settle_presence().await;
        let _ = self.stop.send(true);
        if self.opts.sabotage {
            let gone = sqlx::query(
                "DELETE FROM messages WHERE (room, seq) IN \
                 (SELECT room, seq FROM messages WHERE room = $1 ORDER BY seq LIMIT 1 OFFSET 10)",
            )
            .bind(HOT_ROOM)
            .execute(&pool)
            .await?
            .rows_affected();
            println!("  sabotage: deleted {gone} acknowledged message from the history");
        }
        let history: Vec<StoredRow> = sqlx::query_as::<_, (String, i64, String, String)>(
            "SELECT room, seq, sender, cid FROM messages ORDER BY room, seq",
        )
        .fetch_all(&pool)
        .await?
        .into_iter()
        .map(|(room, seq, sender, cid)| StoredRow {
            room,
            seq: seq as u64,
            sender,
            cid,
        })
        .collect();
        pool.close().await;
        self.measured.run_seconds = self.elapsed();
        {
            let side = self.side.lock().unwrap_or_else(|e| e.into_inner());
            self.measured.presence_queries = side.presence_queries.clone();
            self.measured.peak_writer_queue = side.peak_writer_queue.clone();
            self.measured.presence_convergence = side.presence_convergence.clone();
        }
        // Stop the clients (closing their command channels), then read logs.
        let mut logs = Vec::new();
        for (tx, log, task) in self.clients.drain(..) {
            drop(tx);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            let log = Arc::try_unwrap(log)
                .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
                .map_err(|_| anyhow::anyhow!("a client task still holds its log"))?;
            logs.push(log);
        }
        Ok(check::check(&logs, &history, &self.measured))
    }

    /// Wait until every node's presence of the hot room lists exactly the
    /// live connections (one device per client, on its node); what still
    /// differs after 20 s is phantom or missing presence.
    async fn settle_presence(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let expected: BTreeMap<String, Option<String>> = self
                .clients
                .iter()
                .map(|(_, log, _)| {
                    let log = lock(log);
                    (log.user.clone(), log.node.clone())
                })
                .collect();
            let mut phantom = Vec::new();
            let mut missing = Vec::new();
            for addr in self.addrs.iter() {
                let v: serde_json::Value = match self
                    .http
                    .get(format!("http://{addr}/v1/rooms/{HOT_ROOM}/presence"))
                    .header("x-api-key", API_KEY)
                    .send()
                    .await
                {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(e) => {
                        missing.push(format!("{addr} did not answer: {e}"));
                        continue;
                    }
                };
                let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
                for u in v["users"].as_array().into_iter().flatten() {
                    let user = u["user"].as_str().unwrap_or_default().to_owned();
                    for d in u["devices"].as_array().into_iter().flatten() {
                        let node = d["node"].as_str().unwrap_or_default().to_owned();
                        seen.entry(user.clone()).or_default().push(node);
                    }
                }
                for (user, nodes) in &seen {
                    match expected.get(user) {
                        Some(Some(node)) if nodes.len() == 1 && &nodes[0] == node => {}
                        Some(want) => phantom.push(format!(
                            "{addr}: {user} listed on {nodes:?}, connected to {want:?}"
                        )),
                        None => phantom.push(format!("{addr}: unknown user {user}")),
                    }
                }
                for (user, node) in &expected {
                    if !seen.contains_key(user) {
                        missing.push(format!("{addr}: {user} (connected to {node:?}) not listed"));
                    }
                }
            }
            if (phantom.is_empty() && missing.is_empty()) || Instant::now() >= deadline {
                self.measured.phantom_presence = phantom;
                self.measured.missing_presence = missing;
                return;
            }
            self.idle(Duration::from_millis(500)).await;
        }
    }
}

/// Publish `count` small messages into `room` over HTTP, round-robin over
/// `addrs`, each retried with its cid until acked (at most 30 tries).
async fn publish(
    http: &reqwest::Client,
    addrs: &[String],
    room: &str,
    count: usize,
) -> (Vec<Acked>, u64) {
    let mut acked = Vec::new();
    let mut failed = 0u64;
    let tag = now_ms();
    for k in 0..count {
        let cid = format!("pub-{room}-{tag}-{k}");
        let mut done = false;
        for attempt in 0..30usize {
            let Some(addr) = addrs.get((k + attempt) % addrs.len().max(1)) else {
                break;
            };
            let body = serde_json::json!({
                "sender": "publisher", "cid": cid,
                "body": {"u": "publisher", "t": now_ms()},
            });
            let r = http
                .post(format!("http://{addr}/v1/rooms/{room}/messages"))
                .header("x-api-key", API_KEY)
                .json(&body)
                .timeout(Duration::from_secs(8))
                .send()
                .await;
            if let Ok(resp) = r
                && resp.status() == 200
                && let Ok(v) = resp.json::<serde_json::Value>().await
                && let Some(seq) = v["seq"].as_u64()
            {
                acked.push(Acked {
                    room: room.into(),
                    sender: "publisher".into(),
                    cid: cid.clone(),
                    seq,
                });
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !done {
            failed += 1;
        }
    }
    (acked, failed)
}

impl Drop for Harness {
    fn drop(&mut self) {
        // Nothing may stay stopped: a paused node or PostgreSQL would
        // outlive a kill that it cannot receive while stopped.
        for n in &self.nodes {
            let pid = n.process.pid();
            if pid != 0 {
                crate::signal(pid, "CONT");
            }
        }
        self.pg.resume();
    }
}
