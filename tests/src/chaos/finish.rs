//! The end of a run: heal everything, wait for the clients to finish and
//! catch up and for presence to settle, read the history, check.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::check::{self, Report, StoredRow};
use super::workload::{Command, lock};
use super::{HOT_ROOM, Harness};
use crate::API_KEY;
use crate::proxy::Fault;

impl Harness {
    /// Heal everything, let clients finish, check.
    pub(super) async fn finish(mut self) -> anyhow::Result<Report> {
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
