//! `chorus-chaos`: start a cluster of real `chorus` nodes with their own Redis
//! and PostgreSQL behind fault-injecting proxies, run a workload of simulated
//! clients through a seeded schedule of faults, then check every guarantee
//! and print a table. Exits 1 on any violation, 2 on a harness failure, 130
//! when interrupted (everything it started is stopped in each case).
//!
//! ```text
//! cargo run --release -p chorus-tests --bin chorus-chaos -- --duration 30m --nodes 5
//! cargo run -p chorus-tests --bin chorus-chaos -- --quick      # what CI runs
//! ```
//!
//! `tests/CHAOS.md` explains the faults, the invariants and how to read a
//! failure; the seed in the first line of the output reproduces a run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::time::Duration;

use chorus_tests::chaos::{self, Options};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "chorus-chaos", about = "Chaos harness for the chorus gateway")]
struct Args {
    /// CI's short run: fixed seed, every fault kind once, about 2 minutes.
    #[arg(long)]
    quick: bool,
    /// Seed of the fault schedule and the workload (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// How long faults are injected, e.g. 90s, 20m, 1h (default 5m; quick 100s).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Gateway nodes (at least 3).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Simulated clients (default 200; quick 120).
    #[arg(long)]
    clients: Option<usize>,
    /// Ordinary rooms, besides the hot room every client joins and the bulk room.
    #[arg(long, default_value_t = 40)]
    rooms: usize,
    /// Mean milliseconds between one client's sends.
    #[arg(long, default_value_t = 2000)]
    send_every_ms: u64,
    /// Share of sends that go to the hot room.
    #[arg(long, default_value_t = 0.3)]
    hot_share: f64,
    /// Bytes published into the bulk room during a slow-consumer fault.
    #[arg(long, default_value_t = 6 << 20)]
    burst_bytes: usize,
    /// Quiet seconds after each fault.
    #[arg(long, default_value_t = chaos::DEFAULT_SETTLE.as_secs())]
    settle_secs: u64,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Check the checker: delete one acknowledged message from the history
    /// before checking; the run must then fail.
    #[arg(long)]
    sabotage: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("unit must be s, m or h: {s}")),
    };
    Ok(Duration::from_secs(secs))
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHAOS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let seed = args.seed.unwrap_or(if args.quick {
        chaos::QUICK_SEED
    } else {
        rand::random()
    });
    let opts = Options {
        seed,
        duration: args.duration.unwrap_or(if args.quick {
            chaos::QUICK_DURATION
        } else {
            Duration::from_secs(300)
        }),
        nodes: args.nodes,
        clients: args.clients.unwrap_or(if args.quick { 120 } else { 200 }),
        rooms: args.rooms,
        send_every: Duration::from_millis(args.send_every_ms),
        hot_share: args.hot_share.clamp(0.0, 1.0),
        burst_bytes: args.burst_bytes,
        settle: Duration::from_secs(args.settle_secs),
        report: args.report,
        sabotage: args.sabotage,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        let report_path = opts.report.clone();
        // Dropping the run (on a signal) drops the harness, which stops every
        // node, proxy, Redis and PostgreSQL it started.
        let outcome = tokio::select! {
            r = chaos::run(opts) => r,
            _ = tokio::signal::ctrl_c() => {
                eprintln!("chorus-chaos: interrupted; stopping everything");
                return 130;
            }
            _ = term.recv() => {
                eprintln!("chorus-chaos: terminated; stopping everything");
                return 130;
            }
        };
        match outcome {
            Ok(report) => {
                println!("\nchaos result (seed {seed}):\n{}", report.table);
                if let Some(path) = report_path {
                    let text = serde_json::to_string_pretty(&report.json).unwrap_or_default();
                    if let Err(e) = std::fs::write(&path, text) {
                        eprintln!("chorus-chaos: writing {}: {e}", path.display());
                    }
                }
                if report.violations > 0 {
                    println!(
                        "FAILED: {} violations (reproduce with --seed {seed})",
                        report.violations
                    );
                    1
                } else {
                    println!("passed: 0 violations");
                    0
                }
            }
            Err(e) => {
                eprintln!("chorus-chaos: the harness failed: {e:#}");
                2
            }
        }
    });
    // Client tasks may still be closing; do not wait for them.
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}
