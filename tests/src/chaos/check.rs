//! The checker: after the run, compares what clients were told (acks), what
//! they received, and what PostgreSQL holds, and prints one table. Every row
//! is either a violation (must be 0) or a figure (reported).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;

use super::workload::ClientLog;

/// One stored message, as the checker reads it from PostgreSQL.
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub room: String,
    pub seq: u64,
    pub sender: String,
    pub cid: String,
}

/// A message acknowledged to someone: a client's ack or an HTTP publish's 200.
#[derive(Debug, Clone)]
pub struct Acked {
    pub room: String,
    pub sender: String,
    pub cid: String,
    pub seq: u64,
}

/// What the harness measured besides the client logs.
#[derive(Debug, Default)]
pub struct Measured {
    /// Faults injected, by kind name.
    pub faults: BTreeMap<String, u64>,
    /// After each kill -9: (node, time until no other node listed its
    /// connections; `None` if they were still listed when the watch gave up).
    pub presence_convergence: Vec<(String, Option<Duration>)>,
    /// The bound presence convergence must meet.
    pub presence_bound: Duration,
    /// Presence entries at the end that belong to no live connection, and live
    /// connections missing from presence.
    pub phantom_presence: Vec<String>,
    pub missing_presence: Vec<String>,
    /// Side presence queries over HTTP by status ("200", "503", "error").
    pub presence_queries: BTreeMap<String, u64>,
    /// RSS (KiB) per node: first sample, peak, last sample (a node that
    /// grows without bound shows a last far above its first).
    pub rss_kib: BTreeMap<String, (u64, u64, u64)>,
    /// Peak writer queue depth per node.
    pub peak_writer_queue: BTreeMap<String, u64>,
    /// Node exits the harness did not cause.
    pub crashes: Vec<String>,
    /// Nodes whose SIGTERM drain did not exit cleanly.
    pub bad_drains: Vec<String>,
    /// HTTP publishes (slow-consumer bursts): acked, and failed after retries.
    pub published: Vec<Acked>,
    pub publish_failures: u64,
    /// Sends still pending when the run ended (after the final wait).
    pub run_seconds: f64,
    pub seed: u64,
    pub nodes: usize,
    pub clients: usize,
}

/// The verdict: the table, a JSON summary, and whether anything was violated.
pub struct Report {
    pub table: String,
    pub json: serde_json::Value,
    pub violations: u64,
}

struct Table {
    rows: Vec<(String, String, bool)>,
    violations: u64,
}

impl Table {
    fn figure(&mut self, name: &str, value: impl ToString) {
        self.rows.push((name.to_owned(), value.to_string(), false));
    }

    /// A row that must be zero.
    fn must_be_zero(&mut self, name: &str, n: u64) {
        if n > 0 {
            self.violations += n;
        }
        self.rows.push((name.to_owned(), n.to_string(), n > 0));
    }

    fn render(&self) -> String {
        let w = self.rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (name, value, bad) in &self.rows {
            let mark = if *bad { "  <-- VIOLATION" } else { "" };
            let _ = writeln!(out, "  {name:<w$}  {value}{mark}");
        }
        out
    }
}

/// `key<sep>value, key<sep>value, ...`
fn listing<V: std::fmt::Display>(map: &BTreeMap<String, V>, sep: &str) -> String {
    let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}{sep}{v}")).collect();
    parts.join(", ")
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn quantiles(h: &Histogram<u64>) -> String {
    if h.is_empty() {
        return "-".into();
    }
    format!(
        "p50 {} / p99 {} / p99.9 {} / max {} ms",
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    )
}

/// Check everything; `history` is every stored row.
pub fn check(logs: &[ClientLog], history: &[StoredRow], m: &Measured) -> Report {
    let mut t = Table {
        rows: Vec::new(),
        violations: 0,
    };
    let mut details: Vec<String> = Vec::new();

    // --- The history itself: seqs 1..=n per room, each (sender, cid) once.
    let mut by_room: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    let mut by_key: HashMap<(&str, &str, &str), Vec<u64>> = HashMap::new();
    for r in history {
        by_room.entry(&r.room).or_default().push(r.seq);
        by_key
            .entry((&r.room, &r.sender, &r.cid))
            .or_default()
            .push(r.seq);
    }
    let mut seq_faults = 0u64;
    for (room, seqs) in &mut by_room {
        seqs.sort_unstable();
        for (i, &s) in seqs.iter().enumerate() {
            if s != i as u64 + 1 {
                seq_faults += 1;
                details.push(format!("history {room}: position {} holds seq {s}", i + 1));
                break;
            }
        }
    }
    let dup_rows: u64 = by_key
        .values()
        .map(|v| v.len().saturating_sub(1) as u64)
        .sum();

    // --- Acks against history.
    let mut acked: Vec<Acked> = Vec::new();
    for log in logs {
        for s in &log.sends {
            if let Some((seq, _, _)) = s.acked {
                acked.push(Acked {
                    room: s.room.clone(),
                    sender: log.user.clone(),
                    cid: s.cid.clone(),
                    seq,
                });
            }
        }
    }
    acked.extend(m.published.iter().cloned());
    let mut acked_missing = 0u64;
    let mut acked_wrong_seq = 0u64;
    for a in &acked {
        match by_key.get(&(a.room.as_str(), a.sender.as_str(), a.cid.as_str())) {
            None => {
                acked_missing += 1;
                details.push(format!(
                    "acked {} {} {} seq {} is not in history",
                    a.room, a.sender, a.cid, a.seq
                ));
            }
            Some(seqs) if !seqs.contains(&a.seq) => {
                acked_wrong_seq += 1;
                details.push(format!(
                    "acked {} {} {} seq {} is stored as {seqs:?}",
                    a.room, a.sender, a.cid, a.seq
                ));
            }
            Some(_) => {}
        }
    }

    // --- What each client received.
    let mut missing = 0u64;
    let mut order = 0u64;
    let mut excluded_rooms = 0u64;
    let mut delivered = 0u64;
    let mut duplicates = 0u64;
    for log in logs {
        duplicates += log.duplicates;
        order += log.order_violations.len() as u64;
        for v in log.order_violations.iter().take(3) {
            details.push(format!("order {}: {v}", log.user));
        }
        for room in &log.rooms {
            let got = log.received.get(room).map(Vec::as_slice).unwrap_or(&[]);
            delivered += got.len() as u64;
            if log.unrecovered.contains(room) {
                excluded_rooms += 1;
                continue;
            }
            let Some(&from) = log.first_tip.get(room) else {
                missing += 1;
                details.push(format!("{} never joined {room}", log.user));
                continue;
            };
            let tip = by_room
                .get(room.as_str())
                .and_then(|v| v.last().copied())
                .unwrap_or(0);
            // `got` is strictly increasing (checked as order above), so
            // count what is in range by walking it.
            let expected = tip.saturating_sub(from);
            let in_range = got.iter().filter(|&&s| s > from && s <= tip).count() as u64;
            if in_range < expected {
                missing += expected - in_range;
                let mut holes = Vec::new();
                let mut next = from + 1;
                for &s in got.iter().filter(|&&s| s > from) {
                    if s > next && holes.len() < 3 {
                        holes.push(format!("{next}..{}", s - 1));
                    }
                    next = next.max(s + 1);
                }
                if next <= tip && holes.len() < 3 {
                    holes.push(format!("{next}..={tip}"));
                }
                details.push(format!(
                    "{} in {room}: {} of {expected} after seq {from} missing ({})",
                    log.user,
                    expected - in_range,
                    holes.join(", ")
                ));
            }
        }
    }

    // --- Sends.
    let mut sent = 0u64;
    let mut acked_n = 0u64;
    let mut retried_ok = 0u64;
    let mut dup_acks = 0u64;
    let mut never: BTreeMap<String, u64> = BTreeMap::new();
    let mut ack_ms = Histogram::<u64>::new_with_bounds(1, 3_600_000, 2).expect("bounds");
    let mut lag_ms = Histogram::<u64>::new_with_bounds(1, 3_600_000, 2).expect("bounds");
    let mut worst_send: Option<(Duration, String)> = None;
    let mut closes: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut sessions, mut resumed, mut refused, mut connect_failures, mut receipts) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for log in logs {
        let _ = ack_ms.add(&log.ack_ms);
        let _ = lag_ms.add(&log.lag_ms);
        sessions += log.sessions;
        resumed += log.resumed;
        refused += log.resume_refused;
        connect_failures += log.connect_failures;
        receipts += log.receipts_sent;
        for (k, v) in &log.closes {
            *closes.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &log.errors {
            *errors.entry(k.clone()).or_default() += v;
        }
        for s in &log.sends {
            sent += 1;
            match s.acked {
                Some((_, at, dup)) => {
                    acked_n += 1;
                    if s.retryable_errors > 0 || s.attempts > 1 {
                        retried_ok += 1;
                    }
                    if dup {
                        dup_acks += 1;
                    }
                    let took = at - s.started;
                    if worst_send.as_ref().is_none_or(|(w, _)| took > *w) {
                        worst_send = Some((took, s.room.clone()));
                    }
                }
                None => {
                    let why = s
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "never answered".into());
                    let why = if s.abandoned {
                        format!("refused: {why}")
                    } else {
                        format!("pending: {why}")
                    };
                    *never.entry(why).or_default() += 1;
                }
            }
        }
    }
    let never_total: u64 = never.values().sum();

    // --- Presence.
    let slow_convergence = m
        .presence_convergence
        .iter()
        .filter(|(_, d)| d.is_none_or(|d| d > m.presence_bound))
        .count() as u64;
    let worst_convergence = m.presence_convergence.iter().filter_map(|(_, d)| *d).max();

    t.figure(
        "run",
        format!(
            "seed {}, {} nodes, {} clients, {:.0} s",
            m.seed, m.nodes, m.clients, m.run_seconds
        ),
    );
    t.figure("faults injected", listing(&m.faults, " x"));
    t.figure(
        "sends / acked / publishes",
        format!("{sent} / {acked_n} / {}", m.published.len()),
    );
    t.figure("messages in history", history.len());
    t.figure("deliveries (after de-dup)", delivered);
    t.must_be_zero("acked but missing from history", acked_missing);
    t.must_be_zero("acked with a seq history disagrees with", acked_wrong_seq);
    t.must_be_zero("duplicate (room, sender, cid) in history", dup_rows);
    t.must_be_zero("rooms with seq gaps or duplicates", seq_faults);
    t.must_be_zero("messages missing at a client (join..end)", missing);
    t.must_be_zero("order violations at clients", order);
    t.must_be_zero("node crashes (not by the harness)", m.crashes.len() as u64);
    t.must_be_zero(
        "drains that did not exit cleanly",
        m.bad_drains.len() as u64,
    );
    t.must_be_zero("presence convergence over the bound", slow_convergence);
    t.must_be_zero(
        "phantom presence at the end",
        m.phantom_presence.len() as u64,
    );
    t.must_be_zero(
        "live connections missing from presence",
        m.missing_presence.len() as u64,
    );
    t.must_be_zero("sends never acked", never_total);
    t.figure("rooms not recovered by replay (reported)", excluded_rooms);
    t.figure("delivered twice, dropped by seq", duplicates);
    t.figure("sends retried, then acked", retried_ok);
    t.figure("acks flagged duplicate (retry of a stored cid)", dup_acks);
    t.figure("HTTP publishes failed after retries", m.publish_failures);
    t.figure(
        "sessions / resumed / resume refused",
        format!("{sessions} / {resumed} / {refused}"),
    );
    t.figure("connect failures (retried)", connect_failures);
    t.figure("read receipts sent", receipts);
    t.figure("closes by code", listing(&closes, ": "));
    t.figure("error frames", listing(&errors, ": "));
    t.figure("send to ack (incl. retries)", quantiles(&ack_ms));
    t.figure("delivery lag", quantiles(&lag_ms));
    t.figure(
        "longest wait for an ack (owner failover)",
        worst_send
            .map(|(d, r)| format!("{} ({r})", ms(d)))
            .unwrap_or_else(|| "-".into()),
    );
    t.figure(
        "presence convergence after kill -9",
        format!(
            "{} kills, worst {}, bound {}",
            m.presence_convergence.len(),
            worst_convergence.map(ms).unwrap_or_else(|| "-".into()),
            ms(m.presence_bound)
        ),
    );
    t.figure("side presence queries", listing(&m.presence_queries, ": "));
    let mib = |k: u64| k as f64 / 1024.0;
    let rss: Vec<String> = m
        .rss_kib
        .iter()
        .map(|(k, (first, peak, last))| {
            format!("{k} {:.0}/{:.0}/{:.0}", mib(*first), mib(*peak), mib(*last))
        })
        .collect();
    t.figure("RSS first/peak/last (MiB)", rss.join(", "));
    t.figure(
        "peak writer queue depth",
        listing(&m.peak_writer_queue, " "),
    );

    for c in &m.crashes {
        details.push(format!("crash: {c}"));
    }
    for c in &m.bad_drains {
        details.push(format!("drain: {c}"));
    }
    for p in m.phantom_presence.iter().take(10) {
        details.push(format!("phantom presence: {p}"));
    }
    for p in m.missing_presence.iter().take(10) {
        details.push(format!("missing presence: {p}"));
    }
    for (node, d) in &m.presence_convergence {
        if d.is_none_or(|d| d > m.presence_bound) {
            details.push(format!(
                "presence of killed {node}: {}",
                d.map(ms)
                    .unwrap_or_else(|| "still listed when the watch ended".into())
            ));
        }
    }
    for (why, n) in &never {
        details.push(format!("never acked x{n}: {why}"));
    }

    let mut table = t.render();
    if !details.is_empty() {
        table.push_str("\n  details (first of each):\n");
        for d in details.iter().take(40) {
            let _ = writeln!(table, "    {d}");
        }
    }
    let json = json!({
        "seed": m.seed,
        "nodes": m.nodes,
        "clients": m.clients,
        "run_seconds": m.run_seconds,
        "faults": m.faults,
        "sent": sent,
        "acked": acked_n,
        "published": m.published.len(),
        "history_rows": history.len(),
        "deliveries": delivered,
        "violations": {
            "acked_missing": acked_missing,
            "acked_wrong_seq": acked_wrong_seq,
            "duplicate_rows": dup_rows,
            "seq_faults": seq_faults,
            "missing_at_clients": missing,
            "order": order,
            "crashes": m.crashes.len(),
            "bad_drains": m.bad_drains.len(),
            "presence_slow": slow_convergence,
            "phantom_presence": m.phantom_presence.len(),
            "missing_presence": m.missing_presence.len(),
            "never_acked": never_total,
        },
        "duplicates_dropped": duplicates,
        "retried_then_acked": retried_ok,
        "presence_convergence_ms": m.presence_convergence.iter()
            .map(|(n, d)| json!({"node": n, "ms": d.map(|d| d.as_millis() as u64)}))
            .collect::<Vec<_>>(),
        "ack_ms": {"p50": ack_ms.value_at_quantile(0.5), "p99": ack_ms.value_at_quantile(0.99), "max": ack_ms.max()},
        "lag_ms": {"p50": lag_ms.value_at_quantile(0.5), "p99": lag_ms.value_at_quantile(0.99), "max": lag_ms.max()},
        "rss_kib_first_peak_last": m.rss_kib,
        "peak_writer_queue": m.peak_writer_queue,
        "details": details,
    });
    Report {
        table,
        json,
        violations: t.violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::workload::SendRecord;
    use tokio::time::Instant;

    fn log(user: &str, room: &str, first_tip: u64, got: &[u64]) -> ClientLog {
        let mut l = ClientLog::for_test(user, &[room]);
        l.first_tip.insert(room.into(), first_tip);
        l.received.insert(room.into(), got.to_vec());
        l
    }

    fn row(room: &str, seq: u64, sender: &str, cid: &str) -> StoredRow {
        StoredRow {
            room: room.into(),
            seq,
            sender: sender.into(),
            cid: cid.into(),
        }
    }

    fn measured() -> Measured {
        Measured {
            presence_bound: Duration::from_secs(4),
            ..Default::default()
        }
    }

    fn acked(room: &str, cid: &str, seq: u64) -> SendRecord {
        SendRecord {
            room: room.into(),
            cid: cid.into(),
            started: Instant::now(),
            attempts: 1,
            retryable_errors: 0,
            acked: Some((seq, Instant::now(), false)),
            last_error: None,
            abandoned: false,
        }
    }

    #[test]
    fn a_clean_run_has_no_violation() {
        let mut a = log("a", "r", 0, &[1, 2]);
        a.sends.push(acked("r", "a-1", 1));
        let b = log("b", "r", 1, &[2]);
        let history = [row("r", 1, "a", "a-1"), row("r", 2, "x", "x-1")];
        let r = check(&[a, b], &history, &measured());
        assert_eq!(r.violations, 0, "{}", r.table);
    }

    #[test]
    fn every_kind_of_loss_is_counted() {
        // a's ack of seq 3 is not in history, b missed seq 2, history skips 3.
        let mut a = log("a", "r", 0, &[1, 2, 4]);
        a.sends.push(acked("r", "a-1", 1));
        a.sends.push(acked("r", "a-9", 3));
        a.order_violations.push("r: expected seq 3, got 4".into());
        let b = log("b", "r", 0, &[1, 4]);
        let history = [
            row("r", 1, "a", "a-1"),
            row("r", 2, "x", "x-1"),
            row("r", 4, "x", "x-2"),
        ];
        let r = check(&[a, b], &history, &measured());
        let v = &r.json["violations"];
        assert_eq!(v["acked_missing"], 1);
        assert_eq!(v["seq_faults"], 1);
        assert_eq!(v["order"], 1);
        // Expected after seq 0 up to the tip 4: a lacks 3, b lacks 2 and 3.
        assert_eq!(v["missing_at_clients"], 3);
        assert_eq!(r.violations, 1 + 1 + 1 + 3);
        assert!(r.table.contains("VIOLATION"));
    }

    #[test]
    fn presence_and_crashes_are_violations() {
        let mut m = measured();
        m.presence_convergence = vec![
            ("n1".into(), Some(Duration::from_secs(3))),
            ("n2".into(), Some(Duration::from_secs(9))),
            ("n0".into(), None),
        ];
        m.phantom_presence = vec!["u1 on n2".into()];
        m.crashes = vec!["n1 exited".into()];
        let r = check(&[], &[], &m);
        assert_eq!(r.violations, 2 + 1 + 1, "{}", r.table);
    }
}
