//! `chorus-load`: the side-by-side benchmark. Drives chorus, Socket.IO (with
//! `@socket.io/redis-adapter`) and socketioxide (with socketioxide-redis)
//! with the same workload from one lean Rust client fleet, back to back, and
//! prints one table with ratios; `--json FILE` also writes the figures.
//!
//! ```text
//! tests/bench/run                 # the whole suite (installs and builds the peers first)
//! tests/bench/run --quick         # CI: small sizes, checks that it runs
//! ```
//!
//! Scenarios (see BENCHMARKS.md for method and figures):
//! - idle: N authenticated connections, each joined to a room, heartbeats on:
//!   server RSS per connection.
//! - storm: N clients connected and joined drop at once and reconnect
//!   (chorus: JWT + resume, which re-joins the room; peers: connect + join):
//!   time until all are live again, reconnects per server CPU-second.
//! - rooms: 1,500 rooms x 10 members over two instances (chorus: a 2-node
//!   cluster on Redis + PostgreSQL; peers: two processes on one Redis),
//!   members spread over both: deliveries per server CPU-second, losses.
//! - latency: 100 rooms x 10 members over two instances at 5,000 sends/s:
//!   send-to-receive and send-to-ack percentiles (chorus acks after commit).
//! - durable (chorus only): sends acked per second on a 2-node cluster, each
//!   committed to PostgreSQL; with group commit and with one commit per
//!   message (`--batch-max 1`).
//! - fan-out: one node, a room of M members, 100-byte messages at stepped
//!   constant rates (open loop): per step, deliveries lost, reordered, p50/p99
//!   lag and deliveries per server CPU-second; the highest rate with every
//!   message delivered in order and p99 lag <= 50 ms is the sustainable rate.
//!   Stepping goes on past it while every message arrives in order and p99
//!   lag stays under 1 s, for the peak deliveries per CPU-second.
//!
//! The server is pinned to CPU 0 and the load generator to CPU 1 (taskset).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chorus_tests::cluster::{Cluster, RedisHandle};
use chorus_tests::load::{self, Proto, Server, Stats};
use chorus_tests::services::{PostgresServer, RedisServer};
use chorus_tests::{GatewayProcess, UNLIMITED};
use clap::Parser;
use serde_json::json;
use tokio::sync::watch;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "chorus-load",
    about = "Side-by-side benchmark of chorus, Socket.IO and socketioxide"
)]
struct Args {
    /// Small sizes and short steps: checks that the suite runs (CI).
    #[arg(long)]
    quick: bool,
    /// Contenders to run (comma separated): chorus, socketio, socketioxide.
    #[arg(long, default_value = "chorus,socketio,socketioxide")]
    only: String,
    /// Scenarios to run (comma separated): idle, fanout, storm, rooms,
    /// latency, durable.
    #[arg(long, default_value = "idle,fanout,storm,rooms,latency,durable")]
    scenarios: String,
    /// Rooms of 10 members in the small-rooms scenario (over 2 instances).
    #[arg(long, default_value_t = 1_500)]
    small_rooms: usize,
    /// Messages per second in all, small-rooms scenario.
    #[arg(long, default_value_t = 2_000.0)]
    small_rate: f64,
    /// Clients in the reconnect storm.
    #[arg(long, default_value_t = 15_000)]
    storm: usize,
    /// Idle connections.
    #[arg(long, default_value_t = 15_000)]
    idle: usize,
    /// Fan-out room sizes (comma separated).
    #[arg(long, default_value = "1000,15000")]
    members: String,
    /// Fan-out rates to step through, messages per second (comma separated).
    #[arg(long, default_value = "10,20,50,100,200,400,800,1600")]
    rates: String,
    /// Seconds per fan-out step.
    #[arg(long, default_value_t = 5)]
    step_secs: u64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
}

/// The repository root (this binary lives in target/<profile>/).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A peer process, killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a peer that prints `listening on 127.0.0.1:PORT` when ready.
fn start_peer(name: &'static str, mut cmd: Command) -> anyhow::Result<Server> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {name}: {e}"))?;
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow::anyhow!("{name} did not start: {line:?}"))?
        .parse()?;
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let pid = child.id();
    Ok(Server {
        name,
        proto: Proto::SocketIo,
        addr,
        pid,
        guard: Box::new(Peer(child)),
    })
}

/// `program` started on CPU 0 (through `taskset`, which execs it: the PID
/// stays the server's), so a runtime that sizes its thread pool by the CPUs it
/// may use starts with one worker. `tests/bench/run` does the same for chorus.
fn on_cpu0(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Start a contender by name.
fn start(name: &str, redis: &RedisServer) -> anyhow::Result<Server> {
    let server = match name {
        "chorus" => {
            let mut flags: Vec<&str> = UNLIMITED.to_vec();
            flags.extend(["--max-connections-per-user", "100000"]);
            let node = GatewayProcess::start(&flags);
            Server {
                name: "chorus",
                proto: Proto::Chorus,
                addr: node.addr.parse()?,
                pid: node.pid(),
                guard: Box::new(node),
            }
        }
        "socketio" => {
            let mut cmd = on_cpu0("node");
            cmd.arg(root().join("tests/bench/peers/socketio/server.js"))
                .args(["--port", "0", "--redis", &redis.url()]);
            start_peer("Socket.IO", cmd)?
        }
        "socketioxide" => {
            let bin =
                root().join("tests/bench/peers/socketioxide/target/release/socketioxide-peer");
            let mut cmd = on_cpu0(bin);
            cmd.args(["--port", "0", "--redis", &redis.url()]);
            start_peer("socketioxide", cmd)?
        }
        other => anyhow::bail!("unknown contender {other}"),
    };
    load::pin(server.pid, "0");
    Ok(server)
}

/// Two instances of a contender sharing one Redis: chorus as a 2-node cluster
/// (its own Redis and PostgreSQL), the peers as two processes with their
/// Redis adapter on `redis`.
fn start_pair(name: &str, redis: &RedisServer) -> anyhow::Result<Vec<Server>> {
    start_pair_with(name, redis, &[])
}

/// [`start_pair`] with extra chorus flags.
fn start_pair_with(name: &str, redis: &RedisServer, extra: &[&str]) -> anyhow::Result<Vec<Server>> {
    if name != "chorus" {
        return Ok(vec![start(name, redis)?, start(name, redis)?]);
    }
    let mut flags: Vec<&str> = UNLIMITED.to_vec();
    flags.extend(["--max-connections-per-user", "100000"]);
    flags.extend(extra);
    let pg = PostgresServer::start();
    let database_url = pg.create_database();
    let cluster = Cluster::start_on(
        2,
        &flags,
        RedisHandle::Owned(RedisServer::start()),
        database_url,
    );
    let servers: Vec<Server> = cluster
        .nodes
        .iter()
        .map(|n| {
            let pid = n.pid();
            load::pin(pid, "0");
            Ok(Server {
                name: "chorus",
                proto: Proto::Chorus,
                addr: n.addr.parse()?,
                pid,
                guard: Box::new(()),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut servers = servers;
    // The first server keeps the whole cluster (and its PostgreSQL) alive.
    servers[0].guard = Box::new((cluster, pg));
    Ok(servers)
}

/// Open `n` connections joined to `room_of(i)`, 200 at a time; each becomes
/// a receiver booking into `stats`.
async fn open_receivers(
    servers: &[Server],
    n: usize,
    room_of: impl Fn(usize) -> String,
    stats: &Arc<Stats>,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<usize> {
    use futures_util::StreamExt;
    let jobs = futures_util::stream::iter((0..n).map(|i| {
        // One user per connection, as real clients are.
        let token = chorus_tests::token(&format!("u{i}"), 86_400, None, None);
        let room = room_of(i);
        // Spread over the servers: connection i goes to server i mod len.
        let server = &servers[i % servers.len()];
        let (proto, addr) = (server.proto, server.addr);
        let (stats, stop) = (stats.clone(), stop.clone());
        async move {
            let mut ws = load::connect(proto, addr, load::source(i), &token).await?;
            load::join(&mut ws, proto, &room).await?;
            tokio::spawn(load::receive(ws, proto, stats, i, stop));
            anyhow::Ok(())
        }
    }))
    .buffer_unordered(200);
    let results: Vec<anyhow::Result<()>> = jobs.collect().await;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| e.to_string()))
        .collect();
    // A few failures under a connection storm are reported, not fatal; more
    // than 1 % means the contender cannot hold the scenario.
    anyhow::ensure!(
        failed.len() * 100 <= n,
        "{} of {n} connections failed, first: {}",
        failed.len(),
        failed[0]
    );
    if let Some(first) = failed.first() {
        println!(
            "  {:<13} {} of {n} connections failed (first: {first})",
            servers[0].name,
            failed.len()
        );
    }
    Ok(n - failed.len())
}

/// Idle connections: RSS per connection.
async fn idle(server: &Server, n: usize) -> anyhow::Result<serde_json::Value> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = load::rss_kib(server.pid);
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop) = watch::channel(false);
    let started = std::time::Instant::now();
    let n = open_receivers(
        std::slice::from_ref(server),
        n,
        |i| format!("idle-{}", i % 100),
        &stats,
        &stop,
    )
    .await?;
    let connect_secs = started.elapsed().as_secs_f64();
    // Let allocators and garbage collectors settle, heartbeats flow.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = load::rss_kib(server.pid);
    let (snap, _) = stats.take();
    let _ = stop_tx.send(true);
    let per = after.saturating_sub(before) as f64 / n.max(1) as f64;
    println!(
        "  {:<13} idle {n}: RSS {before} KiB -> {after} KiB = {per:.1} KiB per connection (connected in {connect_secs:.1} s, {} dropped)",
        server.name, snap.disconnects
    );
    Ok(json!({
        "connections": n, "rss_before_kib": before, "rss_after_kib": after,
        "kib_per_connection": per, "connect_secs": connect_secs, "dropped": snap.disconnects,
    }))
}

/// Reconnect storm: `n` clients connected and joined, dropped at once, then
/// all reconnecting (1,000 at a time, as a fleet of real clients would not
/// wait for each other).
async fn storm(server: &Server, n: usize) -> anyhow::Result<serde_json::Value> {
    use futures_util::StreamExt;
    let room = |i: usize| format!("storm-{}", i % 100);
    let token = |i: usize| chorus_tests::token(&format!("s{i}"), 86_400, None, None);
    let (proto, addr) = (server.proto, server.addr);
    let opened: Vec<anyhow::Result<(load::Ws, String)>> =
        futures_util::stream::iter((0..n).map(|i| async move {
            let (mut ws, resume) =
                load::connect_with(proto, addr, load::source(i), &token(i), None).await?;
            load::join(&mut ws, proto, &room(i)).await?;
            anyhow::Ok((ws, resume))
        }))
        .buffered(200)
        .collect()
        .await;
    let mut resumes = Vec::with_capacity(n);
    let mut sockets = Vec::with_capacity(n);
    for r in opened {
        let (ws, resume) = r?;
        sockets.push(ws);
        resumes.push(resume);
    }
    // Everyone drops at once (the sockets close without a WebSocket close).
    drop(sockets);
    let cpu0 = load::cpu_secs(server.pid);
    let started = std::time::Instant::now();
    let back: Vec<anyhow::Result<()>> =
        futures_util::stream::iter(resumes.iter().enumerate().map(|(i, resume)| async move {
            // Other source addresses: the old connections sit in TIME_WAIT.
            let local = load::source(i + 40_000);
            match proto {
                Proto::Chorus => {
                    let room = room(i);
                    let (ws, _) = load::connect_with(
                        proto,
                        addr,
                        local,
                        &token(i),
                        Some((resume.as_str(), room.as_str())),
                    )
                    .await?;
                    drop(ws);
                }
                Proto::SocketIo => {
                    let mut ws = load::connect(proto, addr, local, &token(i)).await?;
                    load::join(&mut ws, proto, &room(i)).await?;
                    drop(ws);
                }
            }
            anyhow::Ok(())
        }))
        .buffer_unordered(1000)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = load::cpu_secs(server.pid) - cpu0;
    let failed = back.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = back.iter().find(|r| r.is_err()) {
        println!(
            "  {:<13} storm: {failed} of {n} failed, first: {e:#}",
            server.name
        );
    }
    let per_cpu = (n - failed) as f64 / cpu.max(0.001);
    println!(
        "  {:<13} storm {n}: all back in {secs:.2} s ({:.0} per s), {per_cpu:.0} reconnects per server CPU-s, {failed} failed",
        server.name,
        (n - failed) as f64 / secs
    );
    anyhow::ensure!(failed * 100 <= n, "{failed} of {n} reconnects failed");
    Ok(json!({
        "clients": n, "all_back_secs": secs, "reconnects_per_sec": (n - failed) as f64 / secs,
        "reconnects_per_cpu_sec": per_cpu, "failed": failed,
    }))
}

/// Many small rooms over two instances: `rooms` rooms of `members` members,
/// members spread over both instances, publishers (one per 50 rooms, also
/// spread) sending `rate` messages per second in all, round-robin over their
/// rooms, for `secs`. Deliveries per CPU-second of both server processes.
async fn small_rooms(
    servers: &[Server],
    rooms: usize,
    members: usize,
    rate: f64,
    secs: u64,
    size: usize,
) -> anyhow::Result<serde_json::Value> {
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop) = watch::channel(false);
    let name = servers[0].name;
    let n = rooms * members;
    let connected = open_receivers(
        servers,
        n,
        |i| format!("small-{}", i / members),
        &stats,
        &stop,
    )
    .await?;
    // Expected deliveries assume every member: no failure is tolerated here.
    anyhow::ensure!(
        connected == n,
        "{} of {n} members failed to join",
        n - connected
    );
    let per_publisher = 50;
    let publishers = rooms.div_ceil(per_publisher);
    let mut jobs = Vec::new();
    let (before, _) = stats.take();
    let cpu0: f64 = servers.iter().map(|s| load::cpu_secs(s.pid)).sum();
    let count = (rate * secs as f64 / publishers as f64).round() as u64;
    for p in 0..publishers {
        let server = &servers[p % servers.len()];
        let (proto, addr) = (server.proto, server.addr);
        let names: Vec<String> = (p * per_publisher..((p + 1) * per_publisher).min(rooms))
            .map(|r| format!("small-{r}"))
            .collect();
        let token = chorus_tests::token(&format!("pub{p}"), 86_400, None, None);
        let mut ws = load::connect(proto, addr, load::source(n + 1 + p), &token).await?;
        if proto == Proto::Chorus {
            for room in &names {
                load::join(&mut ws, proto, room).await?;
            }
        }
        let share = rate / publishers as f64;
        jobs.push(tokio::spawn(async move {
            let mut next_k = vec![0u64; names.len()];
            let mut acks = load::new_histogram();
            let sent = load::publish_many(
                &mut ws,
                proto,
                &names,
                &mut next_k,
                load::Pace {
                    count,
                    rate: share,
                    size,
                },
                Some(&mut acks),
            )
            .await?;
            anyhow::Ok((sent, acks))
        }));
    }
    let mut sent = 0;
    let mut acks = load::new_histogram();
    for j in jobs {
        let (n, h) = j.await??;
        sent += n;
        let _ = acks.add(&h);
    }
    // Each message reaches the members of its room.
    let want = sent * members as u64;
    stats
        .wait_received(before.received, want, Duration::from_secs(10))
        .await;
    let cpu = servers.iter().map(|s| load::cpu_secs(s.pid)).sum::<f64>() - cpu0;
    let (after, lag) = stats.take();
    let _ = stop_tx.send(true);
    let got = after.received - before.received;
    let lost = want.saturating_sub(got);
    let behind = after.behind - before.behind;
    let per_cpu = got as f64 / cpu.max(0.001);
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let p99 = ms(&lag, 0.99);
    println!(
        "  {name:<13} {rooms} rooms x {members} over 2 instances, {rate} msg/s: {got}/{want} delivered, {lost} lost, {behind} out of order, send-to-receive p50 {:.1} / p99 {p99:.1} / p99.9 {:.1} ms, send-to-ack p50 {:.1} / p99 {:.1} / p99.9 {:.1} ms ({} acks), {per_cpu:.0} deliveries/CPU-s",
        ms(&lag, 0.5),
        ms(&lag, 0.999),
        ms(&acks, 0.5),
        ms(&acks, 0.99),
        ms(&acks, 0.999),
        acks.len(),
    );
    Ok(json!({
        "rooms": rooms, "members": members, "rate": rate, "delivered": got, "expected": want,
        "lost": lost, "out_of_order": behind, "cpu_secs": cpu, "deliveries_per_cpu_sec": per_cpu,
        "receive_ms": {"p50": ms(&lag, 0.5), "p99": p99, "p999": ms(&lag, 0.999)},
        "ack_ms": {"p50": ms(&acks, 0.5), "p99": ms(&acks, 0.99), "p999": ms(&acks, 0.999)},
        "acks": acks.len(),
    }))
}

/// chorus only: sends acked per second on a 2-node cluster (each committed to
/// PostgreSQL with fsync and synchronous_commit on), `senders` connections
/// alternating between the nodes, each with `window` sends in flight over
/// its own 4 rooms (so half the sends are forwarded to the other node, the
/// owner). `naive`: `--batch-max 1`, one commit per message.
async fn durable(
    redis: &RedisServer,
    senders: usize,
    window: u64,
    secs: u64,
    naive: bool,
) -> anyhow::Result<serde_json::Value> {
    let extra: &[&str] = if naive { &["--batch-max", "1"] } else { &[] };
    let servers = start_pair_with("chorus", redis, extra)?;
    let mode = if naive {
        "one commit per message"
    } else {
        "group commit"
    };
    // Calibrate: a short run sizes the real one to about `secs`.
    let run = |count: u64| {
        let servers = &servers;
        async move {
            let mut jobs = Vec::new();
            for s in 0..senders {
                let server = &servers[s % servers.len()];
                let token = chorus_tests::token(&format!("d{s}"), 86_400, None, None);
                let mut ws =
                    load::connect(Proto::Chorus, server.addr, load::source(s), &token).await?;
                let rooms: Vec<String> = (0..4).map(|r| format!("durable-{s}-{r}")).collect();
                for room in &rooms {
                    load::join(&mut ws, Proto::Chorus, room).await?;
                }
                let tag = format!("{}-{count}", load::now_us());
                jobs.push(tokio::spawn(async move {
                    load::send_acked(&mut ws, &rooms, &tag, count, window, 100).await
                }));
            }
            let started = std::time::Instant::now();
            let mut acked = 0;
            for j in jobs {
                acked += j.await??;
            }
            anyhow::Ok((acked, started.elapsed().as_secs_f64()))
        }
    };
    let (n, t) = run(200).await?;
    let per_sender = ((n as f64 / t) * secs as f64 / senders as f64).max(100.0) as u64;
    let cpu0: f64 = servers.iter().map(|s| load::cpu_secs(s.pid)).sum();
    let (acked, took) = run(per_sender).await?;
    let cpu = servers.iter().map(|s| load::cpu_secs(s.pid)).sum::<f64>() - cpu0;
    let rate = acked as f64 / took;
    println!(
        "  {:<13} durable, 2 nodes on PostgreSQL, {mode}: {acked} acked in {took:.1} s = {rate:.0} acks/s ({senders} senders x {window} in flight), {:.0} acks per node CPU-s",
        "chorus",
        acked as f64 / cpu.max(0.001)
    );
    Ok(
        json!({"mode": mode, "acked": acked, "secs": took, "acks_per_sec": rate,
        "acks_per_cpu_sec": acked as f64 / cpu.max(0.001), "senders": senders, "window": window}),
    )
}

/// A fan-out step whose p99 lag is above this ends the stepping even when
/// every message arrived in order.
const FANOUT_GIVE_UP_MS: f64 = 1_000.0;

/// Fan-out to one room at stepped rates.
async fn fanout(
    server: &Server,
    members: usize,
    rates: &[f64],
    step: Duration,
    size: usize,
) -> anyhow::Result<serde_json::Value> {
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop) = watch::channel(false);
    let room = format!("fan{members}");
    let members = open_receivers(
        std::slice::from_ref(server),
        members,
        |_| room.clone(),
        &stats,
        &stop,
    )
    .await?;
    let token = chorus_tests::token("publisher", 86_400, None, None);
    let mut publisher =
        load::connect(server.proto, server.addr, load::source(members + 1), &token).await?;
    if server.proto == Proto::Chorus {
        // chorus only accepts sends into a joined room.
        load::join(&mut publisher, server.proto, &room).await?;
    }
    let mut steps = Vec::new();
    let mut sustained = 0.0f64;
    let mut best_per_cpu = 0.0f64;
    let mut best_intact = 0.0f64;
    let mut k = 0u64;
    for &rate in rates {
        let count = (rate * step.as_secs_f64()).round().max(1.0) as u64;
        let (before, _) = stats.take();
        let cpu0 = load::cpu_secs(server.pid);
        if let Err(e) =
            load::publish(&mut publisher, server.proto, &room, k, count, rate, size).await
        {
            println!(
                "  {:<13} fan-out {members} x {rate} msg/s: FAILED: {e:#}",
                server.name
            );
            steps.push(json!({"rate": rate, "error": format!("{e:#}"), "sustained": false}));
            break;
        }
        k += count;
        // Drain: until everything arrived, or 5 s of silence-equivalent.
        let want = count * members as u64;
        stats
            .wait_received(before.received, want, Duration::from_secs(5))
            .await;
        let cpu = load::cpu_secs(server.pid) - cpu0;
        let (after, lag) = stats.take();
        let got = after.received - before.received;
        let lost = want.saturating_sub(got);
        let behind = after.behind - before.behind;
        let p50 = lag.value_at_quantile(0.5) as f64 / 1000.0;
        let p99 = lag.value_at_quantile(0.99) as f64 / 1000.0;
        let per_cpu = got as f64 / cpu.max(0.001);
        let intact = lost == 0 && behind == 0;
        let ok = intact && p99 <= 50.0;
        if ok {
            sustained = sustained.max(rate);
            best_per_cpu = best_per_cpu.max(per_cpu);
        }
        if intact {
            best_intact = best_intact.max(per_cpu);
        }
        println!(
            "  {:<13} fan-out {members} x {rate} msg/s: {got}/{want} delivered, {lost} lost, {behind} out of order, lag p50 {p50:.1} ms p99 {p99:.1} ms, {per_cpu:.0} deliveries/CPU-s{}",
            server.name,
            if ok { "" } else { "  (not sustained)" }
        );
        steps.push(json!({
            "rate": rate, "delivered": got, "expected": want, "lost": lost, "out_of_order": behind,
            "lag_p50_ms": p50, "lag_p99_ms": p99, "cpu_secs": cpu, "deliveries_per_cpu_sec": per_cpu,
            "disconnects": after.disconnects, "sustained": ok,
        }));
        // Past the sustainable rate, step on while every message still
        // arrives in order and the lag stays bounded: the peak of deliveries
        // per CPU-second comes from batching, which grows with the rate.
        if !intact || p99 > FANOUT_GIVE_UP_MS {
            break;
        }
    }
    let _ = stop_tx.send(true);
    Ok(json!({
        "members": members, "sustained_rate": sustained,
        "best_deliveries_per_cpu_sec_sustained": best_per_cpu,
        "best_deliveries_per_cpu_sec_intact": best_intact, "steps": steps,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.idle = args.idle.min(500);
        args.storm = args.storm.min(300);
        args.small_rooms = args.small_rooms.min(30);
        args.small_rate = args.small_rate.min(100.0);
        args.members = "100".into();
        args.rates = "50,200".into();
        args.step_secs = args.step_secs.min(2);
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    // The load generator on CPU 1, servers on CPU 0.
    load::pin(std::process::id(), "1");
    let contenders: Vec<String> = list(&args.only);
    let scenarios: Vec<String> = list(&args.scenarios);
    let members: Vec<usize> = list(&args.members);
    let rates: Vec<f64> = list(&args.rates);
    println!(
        "chorus-load: {cores} cores ({}), server pinned to CPU 0, load on CPU 1; contenders {contenders:?}, scenarios {scenarios:?}",
        std::env::consts::ARCH,
    );
    let redis = RedisServer::start();
    let mut out = serde_json::Map::new();
    for name in &contenders {
        let mut figures = serde_json::Map::new();
        // A contender that fails a scenario (refuses connections, crashes)
        // gets the error in its column; the suite goes on.
        let failed = |what: &str, e: anyhow::Error| {
            println!("  {name:<13} {what}: FAILED: {e:#}");
            json!({"error": format!("{e:#}")})
        };
        if scenarios.iter().any(|s| s == "idle") {
            let v = async {
                let server = start(name, &redis)?;
                idle(&server, args.idle).await
            }
            .await;
            let v = v.unwrap_or_else(|e| failed("idle", e));
            figures.insert("idle".into(), v);
        }
        if scenarios.iter().any(|s| s == "rooms") {
            let v = async {
                let servers = start_pair(name, &redis)?;
                small_rooms(
                    &servers,
                    args.small_rooms,
                    10,
                    args.small_rate,
                    args.step_secs * 2,
                    args.size,
                )
                .await
            }
            .await;
            let v = v.unwrap_or_else(|e| failed("rooms", e));
            figures.insert("rooms".into(), v);
        }
        if scenarios.iter().any(|s| s == "latency") {
            let (rooms, rate) = if args.quick {
                (10, 100.0)
            } else {
                (100, 5_000.0)
            };
            let v = async {
                let servers = start_pair(name, &redis)?;
                small_rooms(&servers, rooms, 10, rate, args.step_secs * 2, args.size).await
            }
            .await;
            let v = v.unwrap_or_else(|e| failed("latency", e));
            figures.insert("latency".into(), v);
        }
        if scenarios.iter().any(|s| s == "durable") {
            if name == "chorus" {
                let secs = args.step_secs * 2;
                let (senders, window) = if args.quick { (4, 16) } else { (64, 64) };
                for naive in [false, true] {
                    let key = if naive { "durable_naive" } else { "durable" };
                    // One commit per message clears a few hundred a second:
                    // 4,096 sends in flight would outwait the send timeout.
                    let window = if naive { window.min(4) } else { window };
                    let v = durable(&redis, senders, window, secs, naive).await;
                    let v = v.unwrap_or_else(|e| failed("durable", e));
                    figures.insert(key.into(), v);
                }
            } else {
                println!("  {name:<13} durable: not applicable (it stores nothing)");
            }
        }
        if scenarios.iter().any(|s| s == "storm") {
            let v = async {
                let server = start(name, &redis)?;
                storm(&server, args.storm).await
            }
            .await;
            let v = v.unwrap_or_else(|e| failed("storm", e));
            figures.insert("storm".into(), v);
        }
        if scenarios.iter().any(|s| s == "fanout") {
            for &m in &members {
                let step = Duration::from_secs(args.step_secs);
                let v = async {
                    let server = start(name, &redis)?;
                    fanout(&server, m, &rates, step, args.size).await
                }
                .await;
                let v = v.unwrap_or_else(|e| failed("fan-out", e));
                figures.insert(format!("fanout_{m}"), v);
            }
        }
        out.insert(name.clone(), serde_json::Value::Object(figures));
    }
    let out = serde_json::Value::Object(out);
    print_table(&out, &contenders, &members);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}

/// One table: a row per figure, a column per contender, then ratios of
/// chorus against each peer.
fn print_table(out: &serde_json::Value, contenders: &[String], members: &[usize]) {
    let mut rows: Vec<(String, &str, bool)> = vec![
        (
            "idle: KiB per connection".into(),
            "/idle/kib_per_connection",
            false,
        ),
        (
            "rooms x 10 over 2 instances: deliveries/CPU-s".into(),
            "/rooms/deliveries_per_cpu_sec",
            false,
        ),
        (
            "rooms x 10 over 2 instances: lost".into(),
            "/rooms/lost",
            false,
        ),
        (
            "latency (2 instances, 5,000 sends/s): send-to-receive p99 ms".into(),
            "/latency/receive_ms/p99",
            false,
        ),
        (
            "latency: send-to-ack p99 ms".into(),
            "/latency/ack_ms/p99",
            false,
        ),
        (
            "durable (2 nodes, PostgreSQL): acks/s, group commit".into(),
            "/durable/acks_per_sec",
            false,
        ),
        (
            "durable: acks/s, one commit per message".into(),
            "/durable_naive/acks_per_sec",
            false,
        ),
        (
            "storm: seconds until all are back".into(),
            "/storm/all_back_secs",
            false,
        ),
        (
            "storm: reconnects per server CPU-s".into(),
            "/storm/reconnects_per_cpu_sec",
            false,
        ),
    ];
    for m in members {
        rows.push((format!("fan-out {m}: sustained msgs/s"), "", true));
        rows.push((
            format!("fan-out {m}: deliveries/CPU-s (sustained)"),
            "",
            true,
        ));
        rows.push((
            format!("fan-out {m}: best deliveries/CPU-s, no loss or reordering (any lag)"),
            "",
            true,
        ));
    }
    println!("\n| figure | {} | ratios |", contenders.join(" | "));
    println!("|---|{}---|", "---|".repeat(contenders.len()));
    for (label, pointer, _) in &rows {
        let value = |c: &str| -> Option<f64> {
            let v = &out[c];
            if !pointer.is_empty() {
                return v.pointer(pointer).and_then(|x| x.as_f64());
            }
            let m: usize = label
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.trim_end_matches(':').parse().ok())?;
            let f = &v[format!("fanout_{m}")];
            if label.contains("sustained msgs") {
                f["sustained_rate"].as_f64()
            } else if label.contains("any lag") {
                f["best_deliveries_per_cpu_sec_intact"].as_f64()
            } else {
                f["best_deliveries_per_cpu_sec_sustained"].as_f64()
            }
        };
        let cells: Vec<String> = contenders
            .iter()
            .map(|c| {
                value(c).map_or("-".into(), |v| {
                    // A sustained rate of 0: no step met the bar.
                    if v == 0.0 && label.contains("sustained") {
                        "none".into()
                    } else {
                        format!("{v:.1}")
                    }
                })
            })
            .collect();
        let chorus = value("chorus");
        let ratios: Vec<String> = contenders
            .iter()
            .filter(|c| c.as_str() != "chorus")
            .filter_map(|c| {
                let (a, b) = (chorus?, value(c)?);
                (b > 0.0).then(|| format!("chorus/{c} {:.2}", a / b))
            })
            .collect();
        println!(
            "| {label} | {} | {} |",
            cells.join(" | "),
            ratios.join(", ")
        );
    }
}
