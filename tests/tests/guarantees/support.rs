//! Helpers shared by this binary's test modules.

use chorus_protocol::Message;
use chorus_protocol::client::{Client, ClientConfig, Event};
use chorus_tests::StoredMsg as Stored;
use chorus_tests::{API_KEY, GatewayProcess};
use std::collections::HashMap;
use std::time::Duration;

/// Client settings for `user` with long send timeouts: under load a retry
/// would turn a first ack into `duplicate:true` and blur the assertions.
pub(crate) fn patient(node: &GatewayProcess, user: &str) -> ClientConfig {
    ClientConfig {
        send_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        max_send_attempts: 20,
        ..node.config(user)
    }
}

/// Asserts the structural invariants of a room's history (seq 1..=n without gap
/// or duplicate, each (sender, cid) stored once) and indexes it by (sender, cid).
pub(crate) fn check_history(hist: &[Stored]) -> HashMap<(String, String), Stored> {
    for (i, m) in hist.iter().enumerate() {
        assert_eq!(
            m.seq,
            i as u64 + 1,
            "history seqs must be 1..=n without gap"
        );
    }
    let mut by_cid = HashMap::new();
    for m in hist {
        let cid = m.cid.clone().expect("every test message has a cid");
        let prev = by_cid.insert((m.sender.clone(), cid.clone()), m.clone());
        assert!(
            prev.is_none(),
            "({}, {cid}) stored twice: seqs {} and {}",
            m.sender,
            prev.map(|p| p.seq).unwrap_or_default(),
            m.seq
        );
    }
    by_cid
}

/// Users online in a room, via `GET /v1/rooms/{room}/presence`.
pub(crate) async fn http_room_presence(node: &GatewayProcess, room: &str) -> Vec<String> {
    let url = format!("{}/v1/rooms/{room}/presence", node.http_url());
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("presence request");
    assert_eq!(resp.status(), 200, "GET {url}");
    let v: serde_json::Value = resp.json().await.expect("presence json");
    v["users"]
        .as_array()
        .expect("users array")
        .iter()
        .map(|u| u["user"].as_str().expect("user").to_owned())
        .collect()
}

/// Whether a user is online anywhere, via `GET /v1/users/{user}/presence`.
pub(crate) async fn http_user_online(node: &GatewayProcess, user: &str) -> bool {
    let url = format!("{}/v1/users/{user}/presence", node.http_url());
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(API_KEY)
        .send()
        .await
        .expect("presence request");
    assert_eq!(resp.status(), 200, "GET {url}");
    let v: serde_json::Value = resp.json().await.expect("presence json");
    v["online"].as_bool().expect("online flag")
}

/// The sum of every sample of a Prometheus metric family whose line starts
/// with `prefix` (name, optionally with the opening of its labels).
pub(crate) async fn metric(node: &GatewayProcess, prefix: &str) -> f64 {
    let body = reqwest::get(format!("{}/metrics", node.http_url()))
        .await
        .expect("metrics request")
        .text()
        .await
        .expect("metrics body");
    body.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Read `client`'s events until the `msg` with seq `last` of `room`; returns the
/// room's messages in arrival order. Panics on a close or the timeout.
pub(crate) async fn collect_until(
    client: &mut Client,
    room: &str,
    last: u64,
    timeout: Duration,
) -> Vec<Message> {
    let mut msgs = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let ev = match tokio::time::timeout_at(deadline, client.next_event()).await {
            Ok(Some(ev)) => ev,
            Ok(None) => panic!(
                "{}: event stream ended after {} msgs",
                client.welcome().user,
                msgs.len()
            ),
            Err(_) => panic!(
                "{}: timed out waiting for seq {last} in {room}; got {} msgs, last {:?}",
                client.welcome().user,
                msgs.len(),
                msgs.last().map(|m: &Message| m.seq)
            ),
        };
        match ev {
            Event::Msg(m) if m.room == room => {
                let done = m.seq >= last;
                msgs.push(m);
                if done {
                    return msgs;
                }
            }
            Event::Closed { code, reason } => panic!(
                "{}: closed ({code:?} {reason}) after {} msgs of {room}",
                client.welcome().user,
                msgs.len()
            ),
            Event::Gap {
                room,
                expected,
                got,
            } => {
                panic!(
                    "{}: gap in {room}: expected {expected}, got {got}",
                    client.welcome().user
                )
            }
            _ => {}
        }
    }
}

/// Every event already queued or arriving within `quiet` of the previous one.
pub(crate) async fn drain_events(client: &mut Client, quiet: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(ev) = client.next_event_timeout(quiet).await {
        out.push(ev);
    }
    out
}

pub(crate) fn seqs(msgs: &[Message]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

pub(crate) fn mentions(ev: &Event, user: &str) -> bool {
    match ev {
        Event::PresenceDiff { joined, left, .. } => {
            joined.iter().any(|u| u.user == user) || left.iter().any(|u| u == user)
        }
        _ => false,
    }
}

/// Run `f` on a blocking thread with the node, and give the node back.
pub(crate) async fn with_node_blocking<T: Send + 'static>(
    node: GatewayProcess,
    f: impl FnOnce(&mut GatewayProcess) -> T + Send + 'static,
) -> (GatewayProcess, T) {
    tokio::task::spawn_blocking(move || {
        let mut node = node;
        let out = f(&mut node);
        (node, out)
    })
    .await
    .expect("blocking task")
}
