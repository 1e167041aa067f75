//! The closing table: a row per figure, a column per contender, and the
//! ratios of chorus against each peer.

/// One table: a row per figure, a column per contender, then ratios of
/// chorus against each peer.
pub(crate) fn print_table(
    out: &serde_json::Value,
    contenders: &[String],
    members: &[usize],
    joins: &[usize],
) {
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
            "durable: PostgreSQL's ceiling, plain client, same rows: rows/s".into(),
            "/durable_ceiling/rows_per_sec",
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
    let join_pointers: Vec<(usize, String, String)> = joins
        .iter()
        .map(|j| {
            (
                *j,
                format!("/joins_{j}/frames_per_join"),
                format!("/joins_{j}/bytes_per_join"),
            )
        })
        .collect();
    for (j, frames, bytes) in &join_pointers {
        rows.push((
            format!("joins until {j} members: frames sent per join"),
            frames.as_str(),
            false,
        ));
        rows.push((
            format!("joins until {j} members: bytes sent per join"),
            bytes.as_str(),
            false,
        ));
    }
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
