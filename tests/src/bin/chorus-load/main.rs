//! `chorus-load`: the side-by-side benchmark. Drives chorus, the floor
//! (`chorus-floor`: the machine's limit for the workload, no product
//! features), Socket.IO (with `@socket.io/redis-adapter`), socketioxide
//! (with socketioxide-redis) and Sockudo (Pusher protocol, its Redis adapter;
//! published to through its signed HTTP API, as a Pusher backend does) with
//! the same workload from one lean Rust client fleet, back to back, and prints one table with ratios; `--json FILE` also
//! writes the figures. The floor is one process also where the others run
//! two instances (nothing to cross between them).
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
//!   message (`--batch-max 1`); then PostgreSQL's own ceiling for the same
//!   rows from a plain client (`ceiling`: UNNEST and COPY, several batch
//!   sizes and connection counts).
//! - joins: members join one room one at a time until it has J members:
//!   frames and bytes sent to all of them (join replies with presence
//!   snapshots, presence diffs or counts), per join: flat when a join costs
//!   the same whatever the room's size, growing when it is O(J^2) in all.
//! - fan-out: one node, a room of M members, 100-byte messages at stepped
//!   constant rates (open loop): per step, deliveries lost, reordered, p50/p99
//!   lag and deliveries per server CPU-second; the highest rate with every
//!   message delivered in order and p99 lag <= 50 ms is the sustainable rate.
//!   Stepping goes on past it while every message arrives in order and p99
//!   lag stays under 1 s, for the peak deliveries per CPU-second.
//!
//! The server is pinned to CPU 0 and the load generator to CPU 1 (taskset).
//!
//! Layout: `contenders` starts the servers (chorus nodes and clusters, the
//! floor, the Socket.IO, socketioxide and Sockudo peers, pinned to CPU 0); `connections` the
//! scenarios about connections (idle, storm) and opening receivers;
//! `traffic` the scenarios that move messages (rooms, latency, durable,
//! fan-out); `ceiling` PostgreSQL's ceiling beside the durable scenario; `table` the closing table; this file: the command line and the
//! order of the run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod ceiling;
mod connections;
mod contenders;
mod table;
mod traffic;

use std::path::PathBuf;
use std::time::Duration;

use chorus_tests::load;
use chorus_tests::services::RedisServer;
use clap::Parser;
use serde_json::json;

use ceiling::pg_ceiling;
use connections::{idle, joins, storm};
use contenders::{start, start_pair};
use table::print_table;
use traffic::{durable, fanout, small_rooms};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "chorus-load",
    about = "Side-by-side benchmark of chorus, the floor, Socket.IO, socketioxide and Sockudo"
)]
struct Args {
    /// Small sizes and short steps: checks that the suite runs (CI).
    #[arg(long)]
    quick: bool,
    /// Contenders to run (comma separated): chorus, floor, socketio,
    /// socketioxide, sockudo.
    #[arg(long, default_value = "chorus,floor,socketio,socketioxide,sockudo")]
    only: String,
    /// Scenarios to run (comma separated): idle, fanout, storm, rooms,
    /// latency, durable, joins.
    #[arg(long, default_value = "idle,fanout,storm,rooms,latency,durable,joins")]
    scenarios: String,
    /// Room sizes the joins scenario grows to (comma separated).
    #[arg(long, default_value = "100,1000")]
    joins: String,
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
    /// Run the servers in the bench's network namespace (tests/bench/netns;
    /// `tests/bench/run --netns` sets it up): each side's TCP input on its
    /// own core, as over a real network. One-server scenarios of chorus and
    /// the floor only (the others need Redis or PostgreSQL outside it).
    #[arg(long)]
    netns: bool,
}

fn list<T: std::str::FromStr>(s: &str) -> Vec<T> {
    s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
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
        args.joins = "50".into();
        args.rates = "50,200".into();
        args.step_secs = args.step_secs.min(2);
    }
    if args.netns {
        load::use_netns();
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    // The load generator on CPU 1, servers on CPU 0.
    load::pin(std::process::id(), "1");
    let contenders: Vec<String> = list(&args.only);
    let scenarios: Vec<String> = list(&args.scenarios);
    let members: Vec<usize> = list(&args.members);
    let join_sizes: Vec<usize> = list(&args.joins);
    let rates: Vec<f64> = list(&args.rates);
    println!(
        "chorus-load: {cores} cores ({}), server pinned to CPU 0, load on CPU 1, {}; contenders {contenders:?}, scenarios {scenarios:?}",
        std::env::consts::ARCH,
        if args.netns {
            "server in its network namespace over veth (RPS: each side's input on its own CPU)"
        } else {
            "loopback"
        },
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
                // PostgreSQL's own ceiling for the same rows, from a plain client.
                let secs = if args.quick { 1 } else { 5 };
                let v = pg_ceiling(secs, args.quick).await;
                let v = v.unwrap_or_else(|e| failed("PostgreSQL ceiling", e));
                if let (Some(a), Some(c)) = (
                    figures["durable"]["acks_per_sec"].as_f64(),
                    v["rows_per_sec"].as_f64(),
                ) {
                    println!(
                        "  {name:<13} durable acks/s / PostgreSQL ceiling rows/s = {:.2}",
                        a / c.max(1.0)
                    );
                }
                figures.insert("durable_ceiling".into(), v);
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
        if scenarios.iter().any(|s| s == "joins") {
            for &j in &join_sizes {
                let v = async {
                    let server = start(name, &redis)?;
                    joins(&server, j).await
                }
                .await;
                let v = v.unwrap_or_else(|e| failed("joins", e));
                figures.insert(format!("joins_{j}"), v);
            }
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
    print_table(&out, &contenders, &members, &join_sizes);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
