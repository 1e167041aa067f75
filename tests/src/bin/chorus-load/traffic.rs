//! The scenarios that move messages: many small rooms over two instances
//! (also the latency scenario), durable sends acked on a 2-node cluster, and
//! fan-out to one room at stepped rates.

use std::sync::Arc;
use std::time::Duration;

use chorus_tests::load::{self, Proto, Server, Stats};
use chorus_tests::services::RedisServer;
use serde_json::json;
use tokio::sync::watch;

use crate::connections::open_receivers;
use crate::contenders::start_pair_with;

/// Many small rooms over two instances: `rooms` rooms of `members` members,
/// members spread over both instances, publishers (one per 50 rooms, also
/// spread) sending `rate` messages per second in all, round-robin over their
/// rooms, for `secs`. Deliveries per CPU-second of both server processes.
pub(crate) async fn small_rooms(
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
    let count = (rate * secs as f64 / publishers as f64).round() as u64;
    // Publishers connect, join and warm up first: the CPU counted is the
    // sending's (1,500 joins in cluster mode would otherwise be a share of
    // it), and the latency the steady state's. The warm-up is one acked
    // message to each room: a room's first send opens its writer (the lease,
    // the room's row), a cost of the room's start, not of its traffic.
    let (start, _) = stats.take();
    let mut warmed = 0u64;
    let mut ready = Vec::new();
    for p in 0..publishers {
        let server = &servers[p % servers.len()];
        let (proto, addr) = (server.proto, server.addr);
        let names: Vec<String> = (p * per_publisher..((p + 1) * per_publisher).min(rooms))
            .map(|r| format!("small-{r}"))
            .collect();
        let token = chorus_tests::token(&format!("pub{p}"), 86_400, None, None);
        let mut ws =
            load::Publisher::open(proto, addr, load::source(n + 1 + p), &token, &names).await?;
        let mut next_k = vec![0u64; names.len()];
        let mut warm = load::new_histogram();
        let pace = load::Pace {
            count: names.len() as u64,
            rate: 500.0,
            size,
        };
        warmed +=
            load::publish_many(&mut ws, proto, &names, &mut next_k, pace, Some(&mut warm)).await?;
        ready.push((ws, proto, names, next_k));
    }
    stats
        .wait_received(
            start.received,
            warmed * members as u64,
            Duration::from_secs(10),
        )
        .await;
    let (before, _) = stats.take();
    let cpu0: f64 = servers.iter().map(|s| load::cpu_secs(s.pid)).sum();
    let load0 = load::Busy::start();
    let share = rate / publishers as f64;
    let mut jobs = Vec::new();
    for (mut ws, proto, names, mut next_k) in ready {
        jobs.push(tokio::spawn(async move {
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
    let busy = load0.share();
    let (after, lag) = stats.take();
    let _ = stop_tx.send(true);
    let got = after.received - before.received;
    let lost = want.saturating_sub(got);
    let behind = after.behind - before.behind;
    let per_cpu = got as f64 / cpu.max(0.001);
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let p99 = ms(&lag, 0.99);
    println!(
        "  {name:<13} {rooms} rooms x {members} over 2 instances, {rate} msg/s: {got}/{want} delivered, {lost} lost, {behind} out of order, send-to-receive p50 {:.1} / p99 {p99:.1} / p99.9 {:.1} ms, send-to-ack p50 {:.1} / p99 {:.1} / p99.9 {:.1} ms ({} acks), {per_cpu:.0} deliveries/CPU-s; load generator {:.0} % of its core",
        ms(&lag, 0.5),
        ms(&lag, 0.999),
        ms(&acks, 0.5),
        ms(&acks, 0.99),
        ms(&acks, 0.999),
        acks.len(),
        busy * 100.0,
    );
    Ok(json!({
        "rooms": rooms, "members": members, "rate": rate, "delivered": got, "expected": want,
        "lost": lost, "out_of_order": behind, "cpu_secs": cpu, "deliveries_per_cpu_sec": per_cpu,
        "receive_ms": {"p50": ms(&lag, 0.5), "p99": p99, "p999": ms(&lag, 0.999)},
        "ack_ms": {"p50": ms(&acks, 0.5), "p99": ms(&acks, 0.99), "p999": ms(&acks, 0.999)},
        "acks": acks.len(), "load_busy": busy,
    }))
}

/// chorus only: sends acked per second on a 2-node cluster (each committed to
/// PostgreSQL with fsync and synchronous_commit on), `senders` connections
/// alternating between the nodes, each with `window` sends in flight over
/// its own 4 rooms (so half the sends are forwarded to the other node, the
/// owner). `naive`: `--batch-max 1`, one commit per message.
pub(crate) async fn durable(
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
pub(crate) async fn fanout(
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
    let mut publisher = load::Publisher::open(
        server.proto,
        server.addr,
        load::source(members + 1),
        &token,
        std::slice::from_ref(&room),
    )
    .await?;
    let mut steps = Vec::new();
    let mut sustained = 0.0f64;
    let mut best_per_cpu = 0.0f64;
    let mut best_intact = 0.0f64;
    let mut k = 0u64;
    for &rate in rates {
        let count = (rate * step.as_secs_f64()).round().max(1.0) as u64;
        let (before, _) = stats.take();
        let cpu0 = load::cpu_secs(server.pid);
        let load0 = load::Busy::start();
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
        let busy = load0.share();
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
            "  {:<13} fan-out {members} x {rate} msg/s: {got}/{want} delivered, {lost} lost, {behind} out of order, lag p50 {p50:.1} ms p99 {p99:.1} ms, {per_cpu:.0} deliveries/CPU-s, load generator {:.0} % of its core{}",
            server.name,
            busy * 100.0,
            if ok { "" } else { "  (not sustained)" }
        );
        steps.push(json!({
            "rate": rate, "delivered": got, "expected": want, "lost": lost, "out_of_order": behind,
            "lag_p50_ms": p50, "lag_p99_ms": p99, "cpu_secs": cpu, "deliveries_per_cpu_sec": per_cpu,
            "disconnects": after.disconnects, "sustained": ok, "load_busy": busy,
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
