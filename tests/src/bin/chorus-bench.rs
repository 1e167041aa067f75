//! First figures for one node: idle-connection memory and one-room throughput.
//!
//! `cargo run --release -p chorus-tests --bin chorus-bench -- [--nodes N] [--idle N]
//! [--receivers R] [--senders S] [--messages M] [--window W]` starts its own `chorus` (release build next to this
//! binary) with a fresh data directory, measures, prints a table and exits.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use chorus_protocol::client::{Client, ClientConfig, Event};
use chorus_tests::load::{cpu_secs, rss_kib};
use chorus_tests::{GatewayProcess, text};

struct Args {
    /// 0: one embedded node; N >= 2: a cluster of N nodes behind a balancer.
    nodes: usize,
    idle: usize,
    receivers: usize,
    senders: usize,
    messages: usize,
    window: usize,
}

fn parse() -> Args {
    let mut a = Args {
        nodes: 0,
        idle: 1000,
        receivers: 100,
        senders: 10,
        messages: 2000,
        window: 64,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i + 1 < argv.len() {
        let v: usize = argv[i + 1]
            .parse()
            .unwrap_or_else(|_| panic!("{} needs a number", argv[i]));
        match argv[i].as_str() {
            "--nodes" => a.nodes = v,
            "--idle" => a.idle = v,
            "--receivers" => a.receivers = v,
            "--senders" => a.senders = v,
            "--messages" => a.messages = v,
            "--window" => a.window = v,
            other => panic!("unknown flag {other}"),
        }
        i += 2;
    }
    a
}

fn quiet(node: &GatewayProcess, user: &str) -> ClientConfig {
    let mut cfg = node.config(user);
    cfg.detect_dead = false;
    cfg
}

#[tokio::main]
async fn main() {
    let args = parse();
    let limits = [
        "--sends-per-sec",
        "1000000",
        "--send-burst",
        "1000000",
        "--user-sends-per-sec",
        "0",
        "--frames-per-sec",
        "1000000",
        "--frame-burst",
        "1000000",
        "--outbound-queue",
        "65536",
    ];
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        std::env::consts::ARCH
    );

    // Idle connections: hello + join, heartbeats on.
    let node = GatewayProcess::start(&limits);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(node.pid());
    let mut idle = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let c = Client::connect(quiet(&node, &format!("idle{i}")))
            .await
            .expect("connect");
        c.join(&format!("room{}", i % 10), None)
            .await
            .expect("join");
        idle.push(c);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(node.pid());
    println!(
        "idle: {} connections, node RSS {} KiB -> {} KiB, {:.1} KiB per connection",
        args.idle,
        before,
        after,
        (after.saturating_sub(before)) as f64 / args.idle.max(1) as f64
    );
    drop(idle);
    drop(node);

    // One room: R receivers, S senders with W sends in flight each.
    let node = if args.nodes >= 2 {
        println!(
            "cluster: {} nodes behind a round-robin balancer, Redis + PostgreSQL",
            args.nodes
        );
        GatewayProcess::start_cluster(args.nodes, &limits)
    } else {
        GatewayProcess::start(&limits)
    };
    let pids = node.pids();
    let mut receivers = Vec::new();
    for i in 0..args.receivers {
        let c = Client::connect(quiet(&node, &format!("r{i}")))
            .await
            .expect("connect");
        c.join("hot", None).await.expect("join");
        receivers.push(c);
    }
    let total = args.senders * args.messages;
    let cpu0: f64 = pids.iter().map(|p| cpu_secs(*p)).sum();
    let start = Instant::now();
    let mut waits = Vec::new();
    for mut r in receivers {
        waits.push(tokio::spawn(async move {
            let mut n = 0;
            while n < total {
                match r.next_event_timeout(Duration::from_secs(60)).await {
                    Some(Event::Msg(_)) => n += 1,
                    Some(Event::Closed { code, reason }) => {
                        panic!("receiver closed {code:?} {reason}")
                    }
                    Some(_) => {}
                    None => panic!("receiver timed out at {n}/{total}"),
                }
            }
            r.handle().gaps()
        }));
    }
    let mut senders = Vec::new();
    for s in 0..args.senders {
        let c = Client::connect(quiet(&node, &format!("s{s}")))
            .await
            .expect("connect");
        c.join("hot", None).await.expect("join");
        let h = c.handle();
        let (messages, window) = (args.messages, args.window);
        senders.push(tokio::spawn(async move {
            let _keep = c;
            let mut inflight = futures_util::stream::FuturesUnordered::new();
            let mut lat = Vec::with_capacity(messages);
            for m in 0..messages {
                let h = h.clone();
                inflight.push(async move {
                    let t = Instant::now();
                    h.send("hot", &format!("s{s}-{m}"), text("0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789"), None)
                        .await
                        .expect("send");
                    t.elapsed()
                });
                if inflight.len() >= window {
                    use futures_util::StreamExt;
                    lat.push(inflight.next().await.unwrap());
                }
            }
            use futures_util::StreamExt;
            while let Some(l) = inflight.next().await {
                lat.push(l);
            }
            lat
        }));
    }
    let mut lats = Vec::new();
    for s in senders {
        lats.extend(s.await.expect("sender"));
    }
    let acked_at = start.elapsed();
    let mut gaps = 0;
    for w in waits {
        gaps += w.await.expect("receiver");
    }
    let done = start.elapsed();
    let cpu = pids.iter().map(|p| cpu_secs(*p)).sum::<f64>() - cpu0;
    lats.sort();
    let pct = |p: f64| lats[((lats.len() as f64 * p) as usize).min(lats.len() - 1)];
    let deliveries = total * (args.receivers + args.senders);
    println!(
        "one room: {} senders x {} msgs (window {}), {} receivers: {:.0} msgs/s acked, all delivered in {:.2}s ({:.0} deliveries/s), gaps {}",
        args.senders,
        args.messages,
        args.window,
        args.receivers,
        total as f64 / acked_at.as_secs_f64(),
        done.as_secs_f64(),
        deliveries as f64 / done.as_secs_f64(),
        gaps
    );
    println!(
        "send->ack latency p50 {:?} p99 {:?} max {:?}; node CPU {:.2}s ({:.0} deliveries per CPU-second)",
        pct(0.5),
        pct(0.99),
        lats.last().unwrap(),
        cpu,
        deliveries as f64 / cpu.max(0.001)
    );
}
