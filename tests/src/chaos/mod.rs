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
//! - `faults`: injecting each fault of the schedule.
//! - `observe`: what background tasks measure while the run goes on
//!   (presence queries, writer queues, presence after a kill).
//! - `publish`: messages published over HTTP (small ones, bursts).
//! - `finish`: healing, the final waits and reading the history for the
//!   checker.
//! - this file: the options, starting the cluster and the clients, watching
//!   the nodes, and the run itself.

pub mod check;
mod faults;
mod finish;
mod observe;
mod publish;
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

use crate::GatewayProcess;
use crate::proxy::FaultProxy;
use crate::services::{PostgresServer, RedisServer};
use check::{Measured, Report};
use schedule::Timing;
use workload::{Command, SharedLog};

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
