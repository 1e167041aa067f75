//! Messages published over the HTTP API, each retried with its cid until
//! acked: a few small ones into a room, or a burst into the bulk room.

use std::time::Duration;

use super::check::Acked;
use super::workload::now_ms;
use super::{BULK_ROOM, Harness};
use crate::API_KEY;

impl Harness {
    /// Publish `bytes` into the bulk room over HTTP, 8 KiB a message, four
    /// at a time, each retried with its cid until acked (at most 30 tries).
    pub(super) fn burst(
        &self,
        bytes: usize,
    ) -> impl std::future::Future<Output = (Vec<Acked>, u64)> + use<> {
        let count = bytes.div_ceil(8192).max(1);
        let (http, addrs) = (self.http.clone(), self.addrs.clone());
        let tag = format!("{}", now_ms());
        async move {
            let pad = "x".repeat(8000);
            let mut workers = Vec::new();
            for w in 0..4 {
                let (http, addrs, pad, tag) =
                    (http.clone(), addrs.clone(), pad.clone(), tag.clone());
                workers.push(tokio::spawn(async move {
                    let mut acked = Vec::new();
                    let mut failed = 0u64;
                    for k in (w..count).step_by(4) {
                        let cid = format!("burst-{tag}-{k}");
                        match publish_one(&http, &addrs, BULK_ROOM, &cid, k, Some(&pad)).await {
                            Some(a) => acked.push(a),
                            None => failed += 1,
                        }
                    }
                    (acked, failed)
                }));
            }
            let mut acked = Vec::new();
            let mut failed = 0;
            for w in workers {
                if let Ok((a, f)) = w.await {
                    acked.extend(a);
                    failed += f;
                }
            }
            (acked, failed)
        }
    }
}

/// Publish `count` small messages into `room` over HTTP, round-robin over
/// `addrs`, each retried with its cid until acked (at most 30 tries).
pub(super) async fn publish(
    http: &reqwest::Client,
    addrs: &[String],
    room: &str,
    count: usize,
) -> (Vec<Acked>, u64) {
    let mut acked = Vec::new();
    let mut failed = 0u64;
    let tag = now_ms();
    for k in 0..count {
        let cid = format!("pub-{room}-{tag}-{k}");
        match publish_one(http, addrs, room, &cid, k, None).await {
            Some(a) => acked.push(a),
            None => failed += 1,
        }
    }
    (acked, failed)
}

/// Publish one message with `cid` into `room` over HTTP, starting at
/// `addrs[first]` and moving round-robin after each failure, at most 30
/// tries 200 ms apart; the acked message, or `None` when every try failed.
/// `pad` (a burst's filler) goes into the body beside the sender and time.
async fn publish_one(
    http: &reqwest::Client,
    addrs: &[String],
    room: &str,
    cid: &str,
    first: usize,
    pad: Option<&str>,
) -> Option<Acked> {
    for attempt in 0..30usize {
        let addr = addrs.get((first + attempt) % addrs.len().max(1))?;
        let mut app = serde_json::json!({"u": "publisher", "t": now_ms()});
        if let Some(pad) = pad {
            app["pad"] = pad.into();
        }
        let body = serde_json::json!({"sender": "publisher", "cid": cid, "body": app});
        let r = http
            .post(format!("http://{addr}/v1/rooms/{room}/messages"))
            .header("x-api-key", API_KEY)
            .json(&body)
            .timeout(Duration::from_secs(8))
            .send()
            .await;
        if let Ok(resp) = r
            && resp.status() == 200
            && let Ok(v) = resp.json::<serde_json::Value>().await
            && let Some(seq) = v["seq"].as_u64()
        {
            return Some(Acked {
                room: room.into(),
                sender: "publisher".into(),
                cid: cid.into(),
                seq,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
