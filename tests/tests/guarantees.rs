//! The product guarantees (DESIGN.md, "Guarantees"), proven through the real wire
//! protocol against real `chorus` processes:
//!
//! 1. per-room total order under concurrent senders;
//! 2. idempotent send (same `cid` on one connection and across connections);
//! 3. resume: exactly the missed messages, then live ones, no presence flicker;
//!    a bad or expired resume token starts a new session;
//! 4. durable ack through `kill -9`;
//! 5. graceful drain on SIGTERM;
//! 6. slow-consumer isolation (4002) and recovery by resume;
//! 7. presence grace after an abrupt disconnect.
//!
//! Timeouts are generous: the suite runs on small machines next to other tests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chorus_protocol::client::{Ack, Client, ClientConfig, ClientError, ClientHandle, Event};
use chorus_protocol::{ErrorCode, Message, Resume};
use chorus_tests::StoredMsg as Stored;
use chorus_tests::{API_KEY, GatewayProcess, text, unlimited};
use futures_util::StreamExt;

/// Client settings for `user` with long send timeouts: under load a retry
/// would turn a first ack into `duplicate:true` and blur the assertions.
fn patient(node: &GatewayProcess, user: &str) -> ClientConfig {
    ClientConfig {
        send_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(60),
        max_send_attempts: 20,
        ..node.config(user)
    }
}

/// Asserts the structural invariants of a room's history (seq 1..=n without gap
/// or duplicate, each (sender, cid) stored once) and indexes it by (sender, cid).
fn check_history(hist: &[Stored]) -> HashMap<(String, String), Stored> {
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
async fn http_room_presence(node: &GatewayProcess, room: &str) -> Vec<String> {
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
async fn http_user_online(node: &GatewayProcess, user: &str) -> bool {
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
async fn metric(node: &GatewayProcess, prefix: &str) -> f64 {
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
async fn collect_until(
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
async fn drain_events(client: &mut Client, quiet: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(ev) = client.next_event_timeout(quiet).await {
        out.push(ev);
    }
    out
}

fn seqs(msgs: &[Message]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

fn mentions(ev: &Event, user: &str) -> bool {
    match ev {
        Event::PresenceDiff { joined, left, .. } => {
            joined.iter().any(|u| u.user == user) || left.iter().any(|u| u == user)
        }
        _ => false,
    }
}

/// Run `f` on a blocking thread with the node, and give the node back.
async fn with_node_blocking<T: Send + 'static>(
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

// ---------------------------------------------------------------------------
// 1. Per-room total order under concurrency
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn total_order_under_concurrent_senders() {
    total_order(50, 200, &[]).await;
}

/// The same with every fan-out coalesced (a room of 2+ local members holds
/// batches committed within 20 ms of its previous fan-out): held batches go out
/// in order, none lost or repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn total_order_with_coalesced_fan_out() {
    total_order(
        20,
        100,
        &["--fanout-window-members", "2", "--fanout-window-ms", "20"],
    )
    .await;
}

async fn total_order(n_clients: usize, per_client: usize, extra: &[&str]) {
    let total = (n_clients * per_client) as u64;
    const ROOM: &str = "order";
    let mut flags = vec![
        "--outbound-queue",
        "65536",
        "--outbound-bytes",
        "268435456",
        "--send-timeout-ms",
        "60000",
    ];
    flags.extend_from_slice(extra);
    let node = GatewayProcess::start(&unlimited(&flags));

    let mut clients = Vec::new();
    for i in 0..n_clients {
        let c = Client::connect(patient(&node, &format!("u{i:02}")))
            .await
            .expect("connect");
        let j = c.join(ROOM, None).await.expect("join");
        assert_eq!(j.tip, 0);
        clients.push(c);
    }

    // Everyone is joined before anyone sends: every client must see 1..=total.
    let handles: Vec<ClientHandle> = clients.iter().map(|c| c.handle()).collect();
    let receivers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let msgs = collect_until(&mut c, ROOM, total, Duration::from_secs(600)).await;
                // Anything after the last seq would be a duplicate or a stray.
                let extra = drain_events(&mut c, Duration::from_millis(300)).await;
                assert!(
                    !extra
                        .iter()
                        .any(|e| matches!(e, Event::Msg(_) | Event::Gap { .. })),
                    "{}: messages after seq {total}: {extra:?}",
                    c.welcome().user
                );
                assert_eq!(c.gaps(), 0, "{}: gaps", c.welcome().user);
                (c.welcome().user.clone(), c.duplicates_dropped(), msgs)
            })
        })
        .collect();

    let start = Arc::new(tokio::sync::Barrier::new(n_clients));
    let t0 = Instant::now();
    let senders: Vec<_> = handles
        .into_iter()
        .enumerate()
        .map(|(i, h)| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                futures_util::stream::iter(0..per_client)
                    .map(|k| {
                        let h = h.clone();
                        async move {
                            let cid = format!("u{i:02}-{k:03}");
                            let ack = h
                                .send_with_retry(ROOM, &cid, text(&format!("{i}/{k}")))
                                .await
                                .unwrap_or_else(|e| panic!("send {cid}: {e}"));
                            assert_eq!(ack.cid, cid);
                            (format!("u{i:02}"), ack)
                        }
                    })
                    .buffer_unordered(16)
                    .collect::<Vec<_>>()
                    .await
            })
        })
        .collect();

    let mut acks: Vec<(String, Ack)> = Vec::new();
    for s in senders {
        acks.extend(s.await.expect("sender task"));
    }
    let sent_in = t0.elapsed();
    assert_eq!(acks.len(), total as usize);
    assert!(
        acks.iter().all(|(_, a)| !a.duplicate),
        "a first send was acked as duplicate"
    );
    let ack_seqs: BTreeSet<u64> = acks.iter().map(|(_, a)| a.seq).collect();
    assert_eq!(ack_seqs.len(), total as usize, "ack seqs must be unique");
    assert_eq!(ack_seqs, (1..=total).collect::<BTreeSet<u64>>());

    // History: each (sender, cid) once, seqs 1..=total, matching the acks.
    let hist = node.history(ROOM).await;
    assert_eq!(hist.len(), total as usize);
    let by_cid = check_history(&hist);
    for (sender, a) in &acks {
        let m = &by_cid[&(sender.clone(), a.cid.clone())];
        assert_eq!(
            (m.seq, &m.id),
            (a.seq, &a.msg_id),
            "ack vs history for {}",
            a.cid
        );
    }

    // Every client saw the same total order: 1..=total, each seq the stored message.
    let expected: Vec<u64> = (1..=total).collect();
    for r in receivers {
        let (user, dups, msgs) = r.await.expect("receiver task");
        assert_eq!(
            seqs(&msgs),
            expected,
            "{user}: seqs out of order or missing"
        );
        assert_eq!(dups, 0, "{user}: the server sent duplicates");
        for m in &msgs {
            let h = &hist[(m.seq - 1) as usize];
            assert_eq!(
                (&m.id, &m.sender, &m.cid),
                (&h.id, &h.sender, &h.cid),
                "{user}: seq {} differs from history",
                m.seq
            );
        }
    }
    eprintln!(
        "total order: {total} messages from {n_clients} senders acked in {sent_in:?}, all delivered in {:?}",
        t0.elapsed()
    );
}

// ---------------------------------------------------------------------------
// 2. Idempotent send
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_cid_is_stored_once_across_retries_and_connections() {
    const ROOM: &str = "idem";
    let node = GatewayProcess::start(&[]);
    let alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.join(ROOM, None).await.unwrap();
    bob.join(ROOM, None).await.unwrap();

    let first = alice
        .send(ROOM, "c-1", text("original"), None)
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(first.seq, 1);

    // Same connection, same cid (even with another body: the first stored wins).
    let second = alice
        .send(ROOM, "c-1", text("changed"), None)
        .await
        .unwrap();
    assert!(second.duplicate, "retry on the same connection: {second:?}");
    assert_eq!(
        (second.seq, &second.msg_id, second.ts),
        (first.seq, &first.msg_id, first.ts)
    );

    // New connection (after an abrupt drop), same cid.
    alice.abort();
    let alice = node.connect("alice").await;
    alice.join(ROOM, None).await.unwrap();
    let third = alice
        .send(ROOM, "c-1", text("original"), None)
        .await
        .unwrap();
    assert!(third.duplicate, "retry on a new connection: {third:?}");
    assert_eq!(
        (third.seq, &third.msg_id, third.ts),
        (first.seq, &first.msg_id, first.ts)
    );

    // A new cid after the retries gets the next seq: nothing was consumed by them.
    let next = alice.send(ROOM, "c-2", text("next"), None).await.unwrap();
    assert_eq!((next.seq, next.duplicate), (2, false));

    // The same cid raced: pipelined on one connection and at the same time on
    // a second connection of the same user (likely in one group commit).
    let alice2 = node.connect("alice").await;
    alice2.join(ROOM, None).await.unwrap();
    let racers = (0..10).map(|i| {
        let h = if i % 2 == 0 {
            alice.handle()
        } else {
            alice2.handle()
        };
        async move { h.send(ROOM, "c-3", text("raced"), None).await.unwrap() }
    });
    let raced = futures_util::future::join_all(racers).await;
    let originals: Vec<&Ack> = raced.iter().filter(|a| !a.duplicate).collect();
    assert_eq!(originals.len(), 1, "exactly one send stores c-3: {raced:?}");
    assert!(
        raced
            .iter()
            .all(|a| (a.seq, &a.msg_id) == (3, &originals[0].msg_id)),
        "every ack of c-3 names the stored message: {raced:?}"
    );

    // Bob got c-1 exactly once (first body), then c-2, then c-3 once.
    let msgs = collect_until(&mut bob, ROOM, 3, Duration::from_secs(30)).await;
    let got: Vec<(u64, Option<&str>)> = msgs.iter().map(|m| (m.seq, m.cid.as_deref())).collect();
    assert_eq!(
        got,
        vec![(1, Some("c-1")), (2, Some("c-2")), (3, Some("c-3"))]
    );
    assert_eq!(msgs[0].body.get(), r#"{"text":"original"}"#);
    assert_eq!(
        bob.duplicates_dropped(),
        0,
        "the server re-delivered a retried send"
    );
    let extra = drain_events(&mut bob, Duration::from_millis(500)).await;
    assert!(
        !extra.iter().any(|e| matches!(e, Event::Msg(_))),
        "unexpected messages: {extra:?}"
    );

    let hist = node.history(ROOM).await;
    let by_cid = check_history(&hist);
    assert_eq!(hist.len(), 3);
    let stored = &by_cid[&("alice".to_owned(), "c-1".to_owned())];
    assert_eq!((stored.seq, &stored.id), (1, &first.msg_id));
    assert_eq!(stored.body, serde_json::json!({"text": "original"}));
}

// ---------------------------------------------------------------------------
// 3. Resume
// ---------------------------------------------------------------------------

/// Send `n` messages from `h` (pipelined, retried on rate limits); returns the acks.
async fn send_many(h: &ClientHandle, room: &str, prefix: &str, n: usize) -> Vec<Ack> {
    futures_util::stream::iter(0..n)
        .map(|k| {
            let h = h.clone();
            let cid = format!("{prefix}-{k}");
            async move {
                h.send_with_retry(room, &cid, text(&cid))
                    .await
                    .unwrap_or_else(|e| panic!("send {cid}: {e}"))
            }
        })
        .buffer_unordered(8)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_exactly_the_missed_messages_without_presence_flicker() {
    const ROOM: &str = "resume";
    // The default grace is 5 s; a little more keeps the "resume within the
    // grace" premise true on a loaded machine (asserted below).
    const GRACE: Duration = Duration::from_secs(8);
    // Bob pumps over a hundred sends: no send limits in the way of the resume.
    let node = GatewayProcess::start(&unlimited(&["--presence-grace-ms", "8000"]));
    let mut carol = node.connect("carol").await;
    carol.join(ROOM, None).await.unwrap();
    let mut alice = node.connect("alice").await;
    alice.join(ROOM, None).await.unwrap();
    let bob = node.connect("bob").await;
    bob.join(ROOM, None).await.unwrap();

    // Alice reads the first 5.
    send_many(&bob.handle(), ROOM, "early", 5).await;
    let early = collect_until(&mut alice, ROOM, 5, Duration::from_secs(30)).await;
    assert_eq!(seqs(&early), vec![1, 2, 3, 4, 5]);
    drain_events(&mut alice, Duration::from_millis(200)).await;
    let session = alice.welcome().session.clone();
    let state = alice.resume_state();
    assert_eq!(state.rooms.get(ROOM), Some(&5));

    // Carol has seen everything so far; from here on she must see no diff for alice.
    drain_events(&mut carol, Duration::from_millis(300)).await;

    let dropped_at = Instant::now();
    alice.abort();
    let missed = send_many(&bob.handle(), ROOM, "missed", 100).await;
    let missed_seqs: BTreeSet<u64> = missed.iter().map(|a| a.seq).collect();
    assert_eq!(missed_seqs, (6..=105).collect());

    let mut alice = Client::connect_resume(node.config("alice"), state)
        .await
        .expect("resume");
    let resumed_after = dropped_at.elapsed();
    assert!(
        resumed_after < GRACE,
        "test premise: resume within the presence grace, took {resumed_after:?}"
    );
    assert!(alice.welcome().resumed, "resume refused");
    assert_eq!(
        alice.welcome().session,
        session,
        "resume must keep the session id"
    );

    // Replay: exactly 6..=105, then the resumed room's `joined`.
    let mut replayed = Vec::new();
    let joined = loop {
        match alice.next_event_timeout(Duration::from_secs(30)).await {
            Some(Event::Msg(m)) => replayed.push(m),
            Some(Event::Joined(j)) => break j,
            Some(Event::PresenceDiff { .. } | Event::Receipt { .. } | Event::Typing { .. }) => {}
            other => panic!("unexpected during replay: {other:?}"),
        }
    };
    assert_eq!(seqs(&replayed), (6..=105).collect::<Vec<_>>());
    assert_eq!(joined.room, ROOM);
    assert_eq!(
        (joined.tip, joined.replayed, joined.recovered),
        (105, 100, true)
    );
    let online: BTreeSet<&str> = joined.presence.iter().map(|u| u.user.as_str()).collect();
    assert_eq!(online, BTreeSet::from(["alice", "bob", "carol"]));
    let missed_ids: BTreeMap<u64, &str> =
        missed.iter().map(|a| (a.seq, a.msg_id.as_str())).collect();
    for m in &replayed {
        assert_eq!(
            missed_ids[&m.seq], m.id,
            "replayed seq {} is another message",
            m.seq
        );
    }

    // Then live messages, continuing the sequence.
    let live = send_many(&bob.handle(), ROOM, "live", 10).await;
    assert_eq!(live.iter().map(|a| a.seq).max(), Some(115));
    let after = collect_until(&mut alice, ROOM, 115, Duration::from_secs(30)).await;
    assert_eq!(seqs(&after), (106..=115).collect::<Vec<_>>());
    assert_eq!(
        alice.duplicates_dropped(),
        0,
        "the server re-sent seen messages"
    );
    assert_eq!(alice.gaps(), 0);

    // Wait out the grace period of the dropped connection: still no flicker.
    let wait = (GRACE + Duration::from_millis(1500)).saturating_sub(dropped_at.elapsed());
    tokio::time::sleep(wait).await;
    let seen = drain_events(&mut carol, Duration::from_millis(300)).await;
    let flicker: Vec<&Event> = seen.iter().filter(|e| mentions(e, "alice")).collect();
    assert!(
        flicker.is_empty(),
        "carol saw presence changes for alice: {flicker:?}"
    );
    let carol_msgs: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Msg(m) => Some(m.seq),
            _ => None,
        })
        .collect();
    assert_eq!(carol_msgs, (6..=115).collect::<Vec<_>>());
    assert!(
        http_room_presence(&node, ROOM)
            .await
            .contains(&"alice".to_owned())
    );
    assert!(http_user_online(&node, "alice").await);
    // And alice is still live after the old connection's grace expired.
    bob.send(ROOM, "after-grace", text("x"), None)
        .await
        .unwrap();
    let more = collect_until(&mut alice, ROOM, 116, Duration::from_secs(30)).await;
    assert_eq!(seqs(&more), vec![116]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_bad_or_expired_token_starts_a_new_session() {
    const ROOM: &str = "r";
    let node = GatewayProcess::start(&["--resume-ttl-ms", "2000"]);
    let alice = node.connect("alice").await;
    alice.join(ROOM, None).await.unwrap();
    alice.send(ROOM, "a-1", text("one"), None).await.unwrap();
    let state = alice.resume_state();
    let session = alice.welcome().session.clone();

    /// Resume with `resume` and assert a new session that joined nothing.
    async fn refused(
        node: &GatewayProcess,
        user: &str,
        resume: Resume,
        old: &str,
        what: &str,
    ) -> Client {
        let mut c = Client::connect_resume(node.config(user), resume)
            .await
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        assert!(!c.welcome().resumed, "{what}: resumed");
        assert_ne!(c.welcome().session, old, "{what}: old session kept");
        let err = c.send(ROOM, "x-1", text("x"), None).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::NotJoined),
            "{what}: rooms re-joined: {err}"
        );
        let evs = drain_events(&mut c, Duration::from_millis(300)).await;
        assert!(
            !evs.iter()
                .any(|e| matches!(e, Event::Msg(_) | Event::Joined(_))),
            "{what}: replay without a resume: {evs:?}"
        );
        c
    }

    let garbage = Resume {
        token: "not-a-token".into(),
        rooms: state.rooms.clone(),
    };
    refused(&node, "alice", garbage, &session, "garbage token").await;

    let mut forged = state.clone();
    let last = forged.token.pop().expect("token");
    forged.token.push(if last == 'A' { 'B' } else { 'A' });
    refused(&node, "alice", forged, &session, "forged token").await;

    refused(
        &node,
        "mallory",
        state.clone(),
        &session,
        "another user's token",
    )
    .await;

    // A valid token is accepted (control), then expires.
    let ok = Client::connect_resume(node.config("alice"), state.clone())
        .await
        .unwrap();
    assert!(ok.welcome().resumed, "control: fresh token refused");
    assert_eq!(ok.welcome().session, session);
    drop(ok);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let c = refused(&node, "alice", state.clone(), &session, "expired token").await;

    // The new session recovers by joining with `since`, as the protocol says.
    let j = c.join(ROOM, state.rooms.get(ROOM).copied()).await.unwrap();
    assert_eq!((j.tip, j.replayed), (1, 0));
}

// ---------------------------------------------------------------------------
// 4. Durable ack through kill -9
// ---------------------------------------------------------------------------

/// What a crash round's senders did.
#[derive(Default)]
struct Ledger {
    /// (sender, cid) -> ack.
    acked: HashMap<(String, String), Ack>,
    /// Sends attempted but not acked when the node died.
    attempted: HashSet<(String, String)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acked_messages_survive_kill_9() {
    const ROOM: &str = "durable";
    const SENDERS: usize = 5;
    const ROUNDS: usize = 3;
    const PER_ROUND: usize = 500;
    let mut node = GatewayProcess::start(&unlimited(&[]));
    // Acks of every round, and sends cut off by a crash (resent next round).
    let mut all_acked: HashMap<(String, String), Ack> = HashMap::new();
    let mut in_doubt: Vec<(String, String)> = Vec::new();
    let mut next_cid = 0usize;

    for round in 0..ROUNDS {
        let mut handles = Vec::new();
        let mut clients = Vec::new();
        for s in 0..SENDERS {
            let c = Client::connect(patient(&node, &format!("d{s}")))
                .await
                .expect("connect");
            c.join(ROOM, None).await.expect("join");
            handles.push(c.handle());
            clients.push(c); // kept (not drained: the big event channel absorbs the msgs)
        }

        // Sends cut off by the previous crash come back as retries with their
        // cid: stored ones must answer duplicate with the seq history holds.
        if !in_doubt.is_empty() {
            let hist = check_history(&node.history(ROOM).await);
            for (sender, cid) in in_doubt.drain(..) {
                let s: usize = sender[1..].parse().unwrap();
                let ack = handles[s]
                    .send_with_retry(ROOM, &cid, text(&cid))
                    .await
                    .unwrap_or_else(|e| panic!("resend {cid}: {e}"));
                match hist.get(&(sender.clone(), cid.clone())) {
                    Some(m) => {
                        assert!(ack.duplicate, "{cid} was stored before the crash: {ack:?}");
                        assert_eq!((ack.seq, &ack.msg_id), (m.seq, &m.id));
                    }
                    None => assert!(!ack.duplicate, "{cid} was not stored: {ack:?}"),
                }
                all_acked.insert((sender, cid), ack);
            }
        }

        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let count = Arc::new(AtomicUsize::new(0));
        let reached = Arc::new(tokio::sync::Notify::new());
        let base = next_cid;
        next_cid += 100_000;
        let tasks: Vec<_> = handles
            .iter()
            .enumerate()
            .map(|(s, h)| {
                let (h, ledger, count, reached) =
                    (h.clone(), ledger.clone(), count.clone(), reached.clone());
                tokio::spawn(async move {
                    let sender = format!("d{s}");
                    // Senders keep going until the node dies under them.
                    futures_util::stream::iter(0..)
                        .map(|k: usize| {
                            let (h, ledger, count, reached, sender) = (
                                h.clone(),
                                ledger.clone(),
                                count.clone(),
                                reached.clone(),
                                sender.clone(),
                            );
                            async move {
                                let cid = format!("{sender}-{}", base + k);
                                let key = (sender.clone(), cid.clone());
                                ledger.lock().unwrap().attempted.insert(key.clone());
                                match h.send_with_retry(ROOM, &cid, text(&cid)).await {
                                    Ok(ack) => {
                                        assert!(
                                            !ack.duplicate,
                                            "fresh cid {cid} acked as duplicate"
                                        );
                                        let mut l = ledger.lock().unwrap();
                                        l.attempted.remove(&key);
                                        l.acked.insert(key, ack);
                                        drop(l);
                                        if count.fetch_add(1, Ordering::SeqCst) + 1 >= PER_ROUND {
                                            reached.notify_one();
                                        }
                                        true
                                    }
                                    Err(ClientError::Closed { .. }) => false,
                                    Err(e) => panic!("send {cid}: {e}"),
                                }
                            }
                        })
                        .buffer_unordered(8)
                        .take_while(|ok| std::future::ready(*ok))
                        .for_each(|_| async {})
                        .await;
                })
            })
            .collect();

        tokio::time::timeout(Duration::from_secs(300), reached.notified())
            .await
            .expect("senders stalled before the crash");
        // kill -9 right after the PER_ROUND-th ack, with sends still in flight.
        (node, ()) = with_node_blocking(node, |node| node.kill9()).await;
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(60), t)
                .await
                .expect("sender did not notice the crash")
                .expect("sender task");
        }
        drop(clients);
        let ledger = std::mem::take(&mut *ledger.lock().unwrap());
        assert!(ledger.acked.len() >= PER_ROUND);

        node.restart();
        let hist = node.history(ROOM).await;
        let by_cid = check_history(&hist);
        for ((sender, cid), ack) in all_acked.iter().chain(&ledger.acked) {
            let m = by_cid
                .get(&(sender.clone(), cid.clone()))
                .unwrap_or_else(|| {
                    panic!("round {round}: acked {sender}/{cid} (seq {}) lost", ack.seq)
                });
            assert_eq!(
                (m.seq, &m.id),
                (ack.seq, &ack.msg_id),
                "round {round}: {cid}"
            );
        }
        // Nothing in history that nobody sent.
        for key in by_cid.keys() {
            assert!(
                all_acked.contains_key(key)
                    || ledger.acked.contains_key(key)
                    || ledger.attempted.contains(key),
                "round {round}: {key:?} stored but never sent"
            );
        }
        eprintln!(
            "durability round {round}: {} acked, {} in flight at the kill ({} of them committed), history {}",
            ledger.acked.len(),
            ledger.attempted.len(),
            ledger
                .attempted
                .iter()
                .filter(|k| by_cid.contains_key(*k))
                .count(),
            hist.len()
        );
        all_acked.extend(ledger.acked);
        in_doubt.extend(ledger.attempted);
        in_doubt.sort();
    }
}

// ---------------------------------------------------------------------------
// 5. Graceful drain on SIGTERM
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_drains_without_losing_acked_messages() {
    const ROOM: &str = "drain";
    const CLIENTS: usize = 5;
    const DRAIN_MS: u64 = 10_000;
    let node = GatewayProcess::start(&unlimited(&["--drain-timeout-ms", "10000"]));
    let acked: Arc<Mutex<Vec<(String, Ack)>>> = Arc::default();
    let count = Arc::new(AtomicUsize::new(0));
    let mut senders = Vec::new();
    let mut watchers = Vec::new();
    for i in 0..CLIENTS {
        let user = format!("w{i}");
        let mut c = Client::connect(patient(&node, &user))
            .await
            .expect("connect");
        c.join(ROOM, None).await.expect("join");
        let h = c.handle();
        let (acked, count) = (acked.clone(), count.clone());
        senders.push(tokio::spawn(async move {
            // Several sends in flight at any time, until the close.
            futures_util::stream::iter(0u64..)
                .map(|k| {
                    let (h, acked, count, user) =
                        (h.clone(), acked.clone(), count.clone(), user.clone());
                    async move {
                        let cid = format!("{user}-{k}");
                        match h.send_with_retry(ROOM, &cid, text(&cid)).await {
                            Ok(ack) => {
                                acked.lock().unwrap().push((user, ack));
                                count.fetch_add(1, Ordering::SeqCst);
                                true
                            }
                            Err(ClientError::Closed { .. }) => false,
                            // The writer refusing sends while draining is
                            // fine; the close follows.
                            Err(e) if e.is_retryable() => true,
                            Err(e) => panic!("send {cid}: {e}"),
                        }
                    }
                })
                .buffer_unordered(8)
                .take_while(|open| std::future::ready(*open))
                .for_each(|_| async {})
                .await;
        }));
        watchers.push(tokio::spawn(async move {
            // Everything until the close: the reconnect hint must come before it.
            let mut reconnect = None;
            let mut seen = Vec::new();
            loop {
                match c.next_event_timeout(Duration::from_secs(120)).await {
                    Some(Event::Reconnect { retry_after_ms, .. }) => {
                        reconnect = Some(retry_after_ms)
                    }
                    Some(Event::Msg(m)) => seen.push(m.seq),
                    Some(Event::Closed { code, reason }) => {
                        return (reconnect, code, reason, seen, c);
                    }
                    Some(_) => {}
                    None => return (reconnect, None, "no close event".to_owned(), seen, c),
                }
            }
        }));
    }

    // Let traffic flow, then SIGTERM in the middle of it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(count.load(Ordering::SeqCst) >= 200, "traffic did not start");
    let t0 = Instant::now();
    let (mut node, status) = with_node_blocking(node, |n| n.sigterm()).await;
    let took = t0.elapsed();
    let status = status.expect("exit status");
    assert!(
        status.success(),
        "chorus exited with {status:?} after SIGTERM"
    );
    assert!(
        took < Duration::from_millis(DRAIN_MS),
        "drain took {took:?}, deadline {DRAIN_MS} ms"
    );

    let mut drained = Vec::new();
    for w in watchers {
        let (reconnect, code, reason, seen, c) = w.await.expect("watcher");
        assert!(
            reconnect.is_some(),
            "no reconnect frame before the close ({code:?} {reason})"
        );
        assert_eq!(code, Some(4000), "close code ({reason})");
        // Joined while others were already sending: contiguous from its join.
        let first = seen.first().copied().unwrap_or(1);
        let expected: Vec<u64> = (first..first + seen.len() as u64).collect();
        assert_eq!(seen, expected, "delivery before the close");
        assert_eq!((c.gaps(), c.duplicates_dropped()), (0, 0));
        drained.push(c);
    }
    for s in senders {
        tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .expect("sender did not stop")
            .expect("sender task");
    }

    node.restart();
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let hist = node.history(ROOM).await;
    let by_cid = check_history(&hist);
    for (sender, ack) in &acked {
        let m = by_cid
            .get(&(sender.clone(), ack.cid.clone()))
            .unwrap_or_else(|| {
                panic!(
                    "acked {}/{} (seq {}) lost in the drain",
                    sender, ack.cid, ack.seq
                )
            });
        assert_eq!((m.seq, &m.id), (ack.seq, &ack.msg_id));
    }

    // The restarted node (same resume secret) resumes every session: each gets
    // exactly what it had not seen before the drain, up to the tip.
    let tip = hist.len() as u64;
    for c in drained {
        let state = c.resume_state();
        let last = state.rooms.get(ROOM).copied().expect("cursor");
        let user = c.welcome().user.clone();
        let mut c = Client::connect_resume(patient(&node, &user), state)
            .await
            .expect("resume after restart");
        assert!(c.welcome().resumed, "{user}: resume after restart refused");
        let mut replayed = Vec::new();
        let joined = loop {
            match c.next_event_timeout(Duration::from_secs(30)).await {
                Some(Event::Msg(m)) => replayed.push(m.seq),
                Some(Event::Joined(j)) => break j,
                Some(Event::PresenceDiff { .. }) => {}
                other => panic!("{user}: unexpected during replay: {other:?}"),
            }
        };
        assert_eq!(joined.tip, tip);
        assert_eq!(replayed, (last + 1..=tip).collect::<Vec<_>>(), "{user}");
    }
    eprintln!(
        "drain: {} acked, {} stored, exit {status:?} after {took:?}",
        acked.len(),
        hist.len()
    );
}

// ---------------------------------------------------------------------------
// 6. Slow consumer isolation
// ---------------------------------------------------------------------------

/// A member that stops reading in a busy room: the node closes it with 4002
/// (the frames queued before the close are still delivered in order, then the
/// close frame), the others get everything in order, and the slow one resumes
/// and gets exactly the rest.
///
/// The slow client pauses (its 1-slot event channel fills, so its socket task
/// stops reading) until the node has given up on it, then reads at full speed
/// again: a client frozen for a while. A client that never reads again cannot
/// receive any close frame (its receive window is closed); that case is
/// `slow_consumer_that_never_reads_is_dropped_and_others_are_unaffected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_is_closed_with_4002_and_recovers_by_resume() {
    const ROOM: &str = "busy";
    const TOTAL: u64 = 2000;
    let node = GatewayProcess::start(&unlimited(&[
        "--outbound-queue",
        "64",
        "--outbound-bytes",
        "1000000",
        "--write-timeout-ms",
        "5000",
    ]));
    let mut alice = Client::connect(patient(&node, "alice")).await.unwrap();
    let mut bob = Client::connect(patient(&node, "bob")).await.unwrap();
    let slow_cfg = ClientConfig {
        event_capacity: 1,
        ..patient(&node, "slow")
    };
    let mut slow = Client::connect(slow_cfg).await.unwrap();
    for c in [&alice, &bob, &slow] {
        c.join(ROOM, None).await.unwrap();
    }

    // 2000 messages of ~8 KB: far more than the kernel's socket buffers hold.
    let t0 = Instant::now();
    let producer = tokio::spawn(produce(alice.handle(), ROOM, TOTAL, 8000));
    let fast = tokio::spawn(async move {
        let a = collect_until(&mut alice, ROOM, TOTAL, Duration::from_secs(300)).await;
        let b = collect_until(&mut bob, ROOM, TOTAL, Duration::from_secs(300)).await;
        let counters = [
            alice.gaps(),
            bob.gaps(),
            alice.duplicates_dropped(),
            bob.duplicates_dropped(),
        ];
        (a, b, counters, t0.elapsed())
    });

    // The node notices the full queue...
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(&node, "chorus_slow_consumer_closes_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the slow consumer was never cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the slow client wakes up: it reads an in-order prefix, then 4002.
    let mut got = Vec::new();
    let close = loop {
        match slow.next_event_timeout(Duration::from_secs(60)).await {
            Some(Event::Msg(m)) => got.push(m.seq),
            Some(Event::Closed { code, reason }) => break (code, reason),
            Some(Event::Gap { expected, got, .. }) => panic!("slow: gap {expected} -> {got}"),
            Some(_) => {}
            None => panic!("slow: no close"),
        }
    };
    let prefix = got.len() as u64;
    assert_eq!(
        got,
        (1..=prefix).collect::<Vec<_>>(),
        "slow: not an in-order prefix"
    );
    assert!(
        prefix < TOTAL,
        "the slow consumer was not cut off: got everything"
    );
    assert_eq!(close.0, Some(4002), "slow consumer close: {close:?}");
    assert!(
        close.1.starts_with("slow_consumer"),
        "close reason: {close:?}"
    );

    // The others were not held back and got everything in order.
    let (a, b, counters, fast_in) = fast.await.expect("fast readers");
    for (who, msgs) in [("alice", &a), ("bob", &b)] {
        assert_eq!(seqs(msgs), (1..=TOTAL).collect::<Vec<_>>(), "{who}");
    }
    assert_eq!(counters, [0; 4], "gaps/duplicates of the fast readers");
    let acks = producer.await.unwrap();
    assert_eq!(acks.len() as u64, TOTAL);

    // It resumes and gets exactly the rest.
    let state = slow.resume_state();
    assert_eq!(state.rooms.get(ROOM), Some(&prefix));
    let mut slow = Client::connect_resume(patient(&node, "slow"), state)
        .await
        .unwrap();
    assert!(slow.welcome().resumed);
    let rest = collect_until(&mut slow, ROOM, TOTAL, Duration::from_secs(120)).await;
    assert_eq!(seqs(&rest), (prefix + 1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(slow.duplicates_dropped(), 0);
    eprintln!(
        "slow consumer: 4002 after {prefix} of {TOTAL} msgs; fast readers done in {fast_in:?}"
    );
}

/// `n` pipelined sends of `size`-byte bodies from `h`.
async fn produce(h: ClientHandle, room: &'static str, n: u64, size: usize) -> Vec<Ack> {
    let body = "x".repeat(size);
    futures_util::stream::iter(0..n)
        .map(|k| {
            let (h, body) = (h.clone(), body.clone());
            async move {
                h.send_with_retry(room, &format!("p-{k}"), text(&body))
                    .await
                    .unwrap_or_else(|e| panic!("send p-{k}: {e}"))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await
}

/// A raw WebSocket that joins and then never reads again: the node drops it
/// (it cannot even deliver a close frame into a closed receive window) without
/// holding back the room, and the member recovers every message by resuming.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_that_never_reads_is_dropped_and_others_are_unaffected() {
    use chorus_protocol::client::{connect_ws, tungstenite::Message as WsMessage};
    use futures_util::SinkExt;

    const ROOM: &str = "busy2";
    const TOTAL: u64 = 2000;
    let node = GatewayProcess::start(&unlimited(&[
        "--outbound-queue",
        "64",
        "--outbound-bytes",
        "1000000",
        "--write-timeout-ms",
        "1000",
    ]));
    let mut alice = Client::connect(patient(&node, "alice")).await.unwrap();
    alice.join(ROOM, None).await.unwrap();

    // hello, join, read up to `joined`, and never read again.
    let mut ws = connect_ws(&patient(&node, "stuck")).await.unwrap();
    ws.send(WsMessage::Text(r#"{"op":"hello","v":1}"#.into()))
        .await
        .unwrap();
    ws.send(WsMessage::Text(
        format!(r#"{{"op":"join","id":1,"room":"{ROOM}"}}"#).into(),
    ))
    .await
    .unwrap();
    let mut resume_token = None;
    while let Some(m) = ws.next().await {
        let WsMessage::Text(t) = m.expect("ws") else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
        match v["op"].as_str() {
            Some("welcome") => resume_token = v["resume_token"].as_str().map(str::to_owned),
            Some("joined") => break,
            _ => {}
        }
    }
    let resume_token = resume_token.expect("welcome");

    let t0 = Instant::now();
    let producer = tokio::spawn(produce(alice.handle(), ROOM, TOTAL, 8000));
    let a = collect_until(&mut alice, ROOM, TOTAL, Duration::from_secs(300)).await;
    assert_eq!(seqs(&a), (1..=TOTAL).collect::<Vec<_>>());
    assert_eq!((alice.gaps(), alice.duplicates_dropped()), (0, 0));
    assert_eq!(producer.await.unwrap().len() as u64, TOTAL);
    let fast_in = t0.elapsed();

    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(&node, "chorus_closes_total{code=\"slow_consumer\"}").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stuck reader was never closed: {} slow-consumer kills, {} connections",
            metric(&node, "chorus_slow_consumer_closes_total").await,
            metric(&node, "chorus_connections ").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its connection is gone on the node's side: only alice's is left.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&node, "chorus_connections ").await != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the stuck connection is still held"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(ws);

    let resume = Resume {
        token: resume_token,
        rooms: BTreeMap::from([(ROOM.to_owned(), 0)]),
    };
    let mut stuck = Client::connect_resume(patient(&node, "stuck"), resume)
        .await
        .unwrap();
    assert!(stuck.welcome().resumed);
    let all = collect_until(&mut stuck, ROOM, TOTAL, Duration::from_secs(120)).await;
    assert_eq!(seqs(&all), (1..=TOTAL).collect::<Vec<_>>());
    eprintln!("stuck reader: dropped; the fast reader was done in {fast_in:?}");
}

/// A member that joins with a long replay and does not read it: the replay
/// blocks on the full socket, and the node must close the connection with 4002
/// (not leave the join hanging forever); the member then resumes from the last
/// seq it got and receives exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_consumer_during_a_replay_is_closed_and_resumes() {
    if GatewayProcess::single_node_only("it watches one process's /metrics for the close") {
        return;
    }
    const ROOM: &str = "backlog";
    const TOTAL: u64 = 1500;
    let node = GatewayProcess::start(&unlimited(&["--write-timeout-ms", "500"]));
    let alice = Client::connect(patient(&node, "alice")).await.unwrap();
    alice.join(ROOM, None).await.unwrap();
    assert_eq!(
        produce(alice.handle(), ROOM, TOTAL, 8000).await.len() as u64,
        TOTAL
    );

    let slow_cfg = ClientConfig {
        event_capacity: 1,
        ..patient(&node, "slow")
    };
    let mut slow = Client::connect(slow_cfg).await.unwrap();
    let h = slow.handle();
    let join = tokio::spawn(async move { h.join(ROOM, Some(0)).await });
    // Well within the 25 s heartbeat (whose ping write would notice the full
    // socket too): the blocked replay itself must end the connection.
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&node, "chorus_closes_total{code=\"slow_consumer\"}").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "a replay into a full socket was not closed as slow within 15 s \
             (write timeout 500 ms)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut got = Vec::new();
    let close = loop {
        match slow.next_event_timeout(Duration::from_secs(30)).await {
            Some(Event::Msg(m)) => got.push(m.seq),
            Some(Event::Closed { code, reason }) => break (code, reason),
            Some(Event::Gap { expected, got, .. }) => panic!("slow: gap {expected} -> {got}"),
            Some(_) => {}
            None => panic!("slow: no close after {} replayed msgs", got.len()),
        }
    };
    let prefix = got.len() as u64;
    assert_eq!(got, (1..=prefix).collect::<Vec<_>>(), "replay out of order");
    assert!(prefix < TOTAL, "the replay was not held up");
    assert_eq!(close.0, Some(4002), "close: {close:?}");
    let err = join.await.unwrap().expect_err("join cannot succeed");
    assert_eq!(err.close_code(), Some(4002), "join: {err}");

    let resume = Resume {
        token: slow.welcome().resume_token.clone(),
        rooms: BTreeMap::from([(ROOM.to_owned(), prefix)]),
    };
    let mut slow = Client::connect_resume(patient(&node, "slow"), resume)
        .await
        .unwrap();
    assert!(slow.welcome().resumed);
    let rest = collect_until(&mut slow, ROOM, TOTAL, Duration::from_secs(120)).await;
    assert_eq!(seqs(&rest), (prefix + 1..=TOTAL).collect::<Vec<_>>());
    eprintln!("slow replay: 4002 after {prefix} of {TOTAL} replayed msgs");
}

// ---------------------------------------------------------------------------
// 7. Presence grace after an abrupt disconnect
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abrupt_disconnect_goes_offline_after_the_grace() {
    const ROOM: &str = "lobby";
    const GRACE: Duration = Duration::from_millis(2000);
    let node = GatewayProcess::start(&["--presence-grace-ms", "2000"]);
    let mut carol = node.connect("carol").await;
    carol.join(ROOM, None).await.unwrap();
    let dave = node.connect("dave").await;
    dave.join(ROOM, None).await.unwrap();
    let ev = carol
        .wait_for(Duration::from_secs(10), |e| mentions(e, "dave"))
        .await
        .expect("dave's join diff");
    assert!(
        matches!(&ev, Event::PresenceDiff { joined, left, .. } if joined.len() == 1 && left.is_empty())
    );
    assert_eq!(http_room_presence(&node, ROOM).await, vec!["carol", "dave"]);
    assert!(http_user_online(&node, "dave").await);

    // A second device of dave: no user-level change, and losing one of the two
    // devices is none either, even after the grace.
    let desktop = Client::connect(node.config("dave").with_device("desktop"))
        .await
        .unwrap();
    desktop.join(ROOM, None).await.unwrap();
    dave.abort();
    let flicker = carol
        .wait_for(GRACE + Duration::from_millis(1500), |e| mentions(e, "dave"))
        .await;
    assert!(flicker.is_none(), "diff while a device stayed: {flicker:?}");
    assert_eq!(http_room_presence(&node, ROOM).await, vec!["carol", "dave"]);
    let devices = desktop.presence(ROOM).await.unwrap();
    let dave_devices: Vec<&str> = devices
        .iter()
        .filter(|u| u.user == "dave")
        .flat_map(|u| u.devices.iter().map(|d| d.device.as_str()))
        .collect();
    assert_eq!(
        dave_devices,
        vec!["desktop"],
        "the dropped device is still listed"
    );

    let dropped = Instant::now();
    desktop.abort();
    // Not before the grace...
    let early = carol
        .wait_for(GRACE.mul_f32(0.75), |e| mentions(e, "dave"))
        .await;
    assert!(early.is_none(), "left before the grace period: {early:?}");
    assert!(
        http_user_online(&node, "dave").await,
        "dave offline before the grace"
    );
    // ...but soon after it.
    let ev = carol
        .wait_for(Duration::from_secs(20), |e| mentions(e, "dave"))
        .await
        .expect("no presence_diff left for dave");
    let after = dropped.elapsed();
    match ev {
        Event::PresenceDiff {
            room, joined, left, ..
        } => {
            assert_eq!(room, ROOM);
            assert!(joined.is_empty());
            assert_eq!(left, vec!["dave".to_owned()]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        after >= GRACE,
        "left after {after:?}, before the {GRACE:?} grace"
    );
    let more = drain_events(&mut carol, Duration::from_millis(500)).await;
    assert!(
        !more.iter().any(|e| mentions(e, "dave")),
        "a second diff for dave: {more:?}"
    );
    assert_eq!(http_room_presence(&node, ROOM).await, vec!["carol"]);
    assert!(!http_user_online(&node, "dave").await);
    eprintln!("presence: left broadcast {after:?} after the drop (grace {GRACE:?})");
}
