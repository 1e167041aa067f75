//! The scenarios about connections: idle connections (RSS per connection)
//! and the reconnect storm; and opening the receivers every scenario uses.

use std::sync::Arc;
use std::time::Duration;

use chorus_tests::load::{self, Proto, Server, Stats};
use serde_json::json;
use tokio::sync::watch;

/// Open `n` connections joined to `room_of(i)`, 200 at a time; each becomes
/// a receiver booking into `stats`.
pub(crate) async fn open_receivers(
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
pub(crate) async fn idle(server: &Server, n: usize) -> anyhow::Result<serde_json::Value> {
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
pub(crate) async fn storm(server: &Server, n: usize) -> anyhow::Result<serde_json::Value> {
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
