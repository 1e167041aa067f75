//! 3. Resume

use chorus_protocol::client::{Ack, Client, ClientHandle, Event};
use chorus_protocol::{ErrorCode, Resume};
use chorus_tests::{GatewayProcess, text, unlimited};
use futures_util::StreamExt;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::support::*;

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
