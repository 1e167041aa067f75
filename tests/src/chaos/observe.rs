//! Measuring from the side while the run goes on: presence queries and the
//! writer queue depth of every node, and how long the other nodes list the
//! connections of a node that was killed.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::workload::now_ms;
use super::{HOT_ROOM, Harness};
use crate::API_KEY;

impl Harness {
    /// Presence queries from the side, and the writer queue depth from
    /// `/metrics`, until the run stops.
    pub(super) fn start_side_tasks(&self) {
        let (http, addrs, side) = (self.http.clone(), self.addrs.clone(), self.side.clone());
        let rooms = self.opts.rooms;
        let mut stop = self.stop.subscribe();
        let mut rng = StdRng::seed_from_u64(self.opts.seed ^ 0x9e37);
        tokio::spawn(async move {
            loop {
                let addr = &addrs[rng.random_range(0..addrs.len())];
                let room = match rng.random_range(0..3) {
                    0 => HOT_ROOM.to_owned(),
                    _ => format!("room-{}", rng.random_range(0..rooms.max(1))),
                };
                let r = http
                    .get(format!("http://{addr}/v1/rooms/{room}/presence"))
                    .header("x-api-key", API_KEY)
                    .send()
                    .await;
                let key = match r {
                    Ok(resp) => resp.status().as_u16().to_string(),
                    Err(_) => "no answer".to_owned(),
                };
                *side
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .presence_queries
                    .entry(key)
                    .or_default() += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
        let (http, addrs, side) = (self.http.clone(), self.addrs.clone(), self.side.clone());
        let mut stop = self.stop.subscribe();
        tokio::spawn(async move {
            loop {
                for (i, addr) in addrs.iter().enumerate() {
                    let Ok(resp) = http.get(format!("http://{addr}/metrics")).send().await else {
                        continue;
                    };
                    let Ok(text) = resp.text().await else {
                        continue;
                    };
                    let depth = text
                        .lines()
                        .find(|l| l.starts_with("chorus_writer_queue_depth "))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|v| v.parse::<f64>().ok())
                        .unwrap_or(0.0) as u64;
                    let mut s = side.lock().unwrap_or_else(|e| e.into_inner());
                    let peak = s.peak_writer_queue.entry(format!("n{i}")).or_default();
                    *peak = (*peak).max(depth);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => return,
                }
            }
        });
    }

    /// Watch the other nodes' presence API until none lists a connection the
    /// killed node held (joined before the kill).
    pub(super) fn watch_presence_after_kill(&self, killed: usize) {
        let id = self.nodes[killed].id.clone();
        let others: Vec<String> = self
            .addrs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != killed)
            .map(|(_, a)| a.clone())
            .collect();
        let (http, side) = (self.http.clone(), self.side.clone());
        let kill_ms = now_ms() as i64;
        let bound = self.measured.presence_bound;
        tokio::spawn(async move {
            let started = Instant::now();
            let give_up = bound * 4;
            let result = loop {
                let mut answered = 0;
                let mut stale = false;
                for addr in &others {
                    let Ok(resp) = http
                        .get(format!("http://{addr}/v1/rooms/{HOT_ROOM}/presence"))
                        .header("x-api-key", API_KEY)
                        .send()
                        .await
                    else {
                        continue;
                    };
                    let Ok(v) = resp.json::<serde_json::Value>().await else {
                        continue;
                    };
                    answered += 1;
                    stale |= v["users"].as_array().into_iter().flatten().any(|u| {
                        u["devices"].as_array().into_iter().flatten().any(|d| {
                            d["node"] == id.as_str() && d["since"].as_i64().unwrap_or(0) <= kill_ms
                        })
                    });
                }
                if answered > 0 && !stale {
                    break Some(started.elapsed());
                }
                if started.elapsed() > give_up {
                    break None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            side.lock()
                .unwrap_or_else(|e| e.into_inner())
                .presence_convergence
                .push((id, result));
        });
    }
}
