//! typing / presence

use chorus_protocol::Json;
use chorus_protocol::client::{Client, Event};
use chorus_tests::GatewayProcess;
use serde_json::json;
use tokio::time::Instant;

use super::support::*;

#[tokio::test]
async fn typing_reaches_other_connections_only_and_is_rate_limited() {
    let node = GatewayProcess::start(&["--typing-interval-ms", "1500"]);
    let mut phone = Client::connect(node.config("alice").with_device("phone"))
        .await
        .unwrap();
    let mut laptop = Client::connect(node.config("alice").with_device("laptop"))
        .await
        .unwrap();
    let mut bob = node.connect("bob").await;
    for c in [&mut phone, &mut laptop, &mut bob] {
        c.join("r", None).await.unwrap();
    }
    events_for(&mut bob, ms(300)).await; // presence diffs

    // A burst of starts: one is forwarded, the rest dropped silently.
    let started = Instant::now();
    for _ in 0..5 {
        phone.typing("r", true).await.unwrap();
    }
    phone.ping().await.unwrap();
    let to_bob = typing_events(&events_for(&mut bob, ms(1000)).await);
    assert_eq!(to_bob, [("alice".to_string(), "phone".to_string(), true)]);
    let to_laptop = typing_events(&events_for(&mut laptop, ms(300)).await);
    assert_eq!(
        to_laptop,
        [("alice".to_string(), "phone".to_string(), true)],
        "the user's other device gets it too"
    );
    let to_self = typing_events(&events_for(&mut phone, ms(300)).await);
    assert!(
        to_self.is_empty(),
        "never echoed to its sender: {to_self:?}"
    );

    // After the interval a start goes through again; a stop goes through.
    tokio::time::sleep_until(started + ms(1700)).await;
    let second = Instant::now();
    phone.typing("r", true).await.unwrap();
    let ev = wait_event(&mut bob, "typing", |e| matches!(e, Event::Typing { .. })).await;
    assert!(matches!(ev, Event::Typing { active: true, .. }), "{ev:?}");
    phone.typing("r", false).await.unwrap();
    let ev = wait_event(&mut bob, "typing stop", |e| {
        matches!(e, Event::Typing { .. })
    })
    .await;
    let Event::Typing {
        room,
        user,
        device,
        active,
    } = ev
    else {
        unreachable!()
    };
    assert_eq!(
        (room.as_str(), user.as_str(), device.as_str(), active),
        ("r", "alice", "phone", false)
    );
    // `active` defaults to true (once the interval since the last start is over).
    tokio::time::sleep_until(second + ms(1700)).await;
    phone
        .send_raw(r#"{"op":"typing","room":"r"}"#.into())
        .await
        .unwrap();
    let ev = wait_event(&mut bob, "typing", |e| matches!(e, Event::Typing { .. })).await;
    assert!(matches!(ev, Event::Typing { active: true, .. }), "{ev:?}");
    // Never stored: a later joiner sees nothing of it.
    let mut carol = node.connect("carol").await;
    carol.join("r", Some(0)).await.unwrap();
    let evs = events_for(&mut carol, ms(500)).await;
    assert!(typing_events(&evs).is_empty(), "{evs:?}");
}

/// Stops must not reset the start limit: alternating start/stop as fast as
/// possible forwards one start per interval (and the stop that clears it), not
/// every frame.
#[tokio::test]
async fn typing_alternating_start_and_stop_stays_rate_limited() {
    let node = GatewayProcess::start(&["--typing-interval-ms", "1500"]);
    let alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    alice.join("r", None).await.unwrap();
    bob.join("r", None).await.unwrap();
    events_for(&mut bob, ms(300)).await;
    for _ in 0..10 {
        alice.typing("r", true).await.unwrap();
        alice.typing("r", false).await.unwrap();
    }
    alice.ping().await.unwrap();
    let got = typing_events(&events_for(&mut bob, ms(1000)).await);
    let starts = got.iter().filter(|(_, _, active)| *active).count();
    assert_eq!(starts, 1, "one start per interval: {got:?}");
    assert!(
        got.len() <= 2,
        "20 frames in, at most start+stop out: {got:?}"
    );
    assert!(
        !got.last().unwrap().2,
        "the indicator ends cleared: {got:?}"
    );
    // Stops with no start shown are not forwarded either.
    for _ in 0..5 {
        alice.typing("r", false).await.unwrap();
    }
    alice.ping().await.unwrap();
    let got = typing_events(&events_for(&mut bob, ms(600)).await);
    assert!(got.is_empty(), "{got:?}");
}

#[tokio::test]
async fn presence_snapshots_and_diffs_on_join_leave_and_disconnect() {
    let node = GatewayProcess::start(&["--presence-grace-ms", "4000", "--node-id", "gw-p"]);
    let mut bob = node.connect("bob").await;
    bob.join("r", None).await.unwrap();

    // First device joins: diff joined.
    let phone = Client::connect(
        node.config("alice")
            .with_device("phone")
            .with_meta(Json::from_text(r#"{"mood":"ok"}"#).unwrap()),
    )
    .await
    .unwrap();
    phone.join("r", None).await.unwrap();
    let ev = wait_event(&mut bob, "diff", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    let Event::PresenceDiff {
        room, joined, left, ..
    } = ev
    else {
        unreachable!()
    };
    assert_eq!(room, "r");
    assert!(left.is_empty());
    assert_eq!(joined[0].user, "alice");
    let d = &joined[0].devices[0];
    assert_eq!(
        (d.device.as_str(), d.meta.clone()),
        ("phone", Some(json!({"mood": "ok"})))
    );
    assert!(d.node.starts_with("gw-p"), "{}", d.node);

    // A second device: no diff (user-level changes only); the snapshot lists both.
    let laptop = Client::connect(node.config("alice").with_device("laptop"))
        .await
        .unwrap();
    laptop.join("r", None).await.unwrap();
    let users = phone.presence("r").await.unwrap();
    let mut summary: Vec<(String, Vec<String>)> = users
        .iter()
        .map(|u| {
            let mut d: Vec<String> = u.devices.iter().map(|d| d.device.clone()).collect();
            d.sort();
            (u.user.clone(), d)
        })
        .collect();
    summary.sort();
    assert_eq!(
        summary,
        [
            (
                "alice".to_string(),
                vec!["laptop".to_string(), "phone".to_string()]
            ),
            ("bob".to_string(), vec!["default".to_string()]),
        ]
    );
    // The wire reply echoes the id.
    let reply = bob
        .request(chorus_protocol::ClientFrame::Presence {
            id: None,
            room: "r".into(),
        })
        .await
        .unwrap();
    assert!(
        matches!(&reply, chorus_protocol::ServerFrame::Presence { id: Some(_), room, users, .. } if room == "r" && users.len() == 2),
        "{reply:?}"
    );
    laptop.leave("r", true).await.unwrap();
    let evs = events_for(&mut bob, ms(800)).await;
    assert!(
        presence_diffs(&evs).is_empty(),
        "alice is still online: {evs:?}"
    );

    // Last device leaves explicitly: diff left at once (long before the grace).
    let t0 = Instant::now();
    phone.leave("r", false).await.unwrap();
    let ev = wait_event(&mut bob, "diff left", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    assert!(t0.elapsed() < ms(3000), "explicit leave is immediate");
    assert_eq!(presence_diffs(&[ev]), [(vec![], vec!["alice".to_string()])]);
    let users = bob.presence("r").await.unwrap();
    assert_eq!(users.len(), 1);

    // Back, then the connection drops: offline only after the grace period.
    phone.join("r", None).await.unwrap();
    let ev = wait_event(&mut bob, "diff joined", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    assert_eq!(presence_diffs(&[ev]), [(vec!["alice".to_string()], vec![])]);
    laptop.close().await.unwrap();
    let t0 = Instant::now();
    phone.abort();
    let evs = events_for(&mut bob, ms(2500)).await;
    assert!(
        presence_diffs(&evs).is_empty(),
        "not before the grace: {evs:?}"
    );
    let ev = wait_event(&mut bob, "diff left", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    let waited = t0.elapsed();
    assert!(
        waited >= ms(3600),
        "left after the grace, not after {waited:?}"
    );
    assert_eq!(presence_diffs(&[ev]), [(vec![], vec!["alice".to_string()])]);
    let users = bob.presence("r").await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].user, "bob");
}

/// Above `--presence-coalesce-users` a room's diffs are coalesced: a burst of
/// joins reaches a member as one diff per interval (per node holding the
/// joiners) listing them all (by each user's last change), not one diff per
/// joiner; below it, diffs stay immediate and per user.
#[tokio::test]
async fn a_busy_rooms_diffs_are_coalesced_per_interval() {
    let node = GatewayProcess::start(&[
        "--presence-coalesce-users",
        "2",
        "--presence-count-interval-ms",
        "700",
    ]);
    let mut alice = node.connect("alice").await;
    alice.join("r", None).await.unwrap();
    let bob = node.connect("bob").await;
    bob.join("r", None).await.unwrap();
    // Two users online: not above 2, so bob's diff is immediate and his own.
    let ev = wait_event(&mut alice, "bob's diff", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    assert_eq!(presence_diffs(&[ev]), [(vec!["bob".to_string()], vec![])]);

    // Three joins in a burst above the bound: one diff with all of them.
    let mut others = Vec::new();
    for user in ["carol", "dave", "erin"] {
        let c = node.connect(user).await;
        c.join("r", None).await.unwrap();
        others.push(c);
    }
    // erin comes and goes within the interval: her last change is the leave.
    let erin = others.pop().unwrap();
    erin.leave("r", false).await.unwrap();
    let evs = events_for(&mut alice, ms(2500)).await;
    let diffs = presence_diffs(&evs);
    // One coalesced diff per node holding the changed users' connections
    // (in cluster mode the joiners spread over two nodes), not one per change.
    assert!(
        !diffs.is_empty() && diffs.len() <= 2,
        "coalesced diffs: {evs:?}"
    );
    let (mut joined, mut left): (Vec<String>, Vec<String>) = (vec![], vec![]);
    for (j, l) in diffs {
        joined.extend(j);
        left.extend(l);
    }
    joined.sort();
    assert_eq!(
        (joined, left),
        (
            vec!["carol".to_string(), "dave".to_string()],
            vec!["erin".to_string()]
        ),
        "{evs:?}"
    );

    // A leave in the busy room comes coalesced too, within about an interval.
    let t0 = Instant::now();
    others.pop().unwrap().leave("r", false).await.unwrap();
    let ev = wait_event(&mut alice, "dave's leave", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    assert_eq!(presence_diffs(&[ev]), [(vec![], vec!["dave".to_string()])]);
    assert!(t0.elapsed() < ms(3000), "{:?}", t0.elapsed());
    let mut users: Vec<String> = alice
        .presence("r")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user)
        .collect();
    users.sort();
    assert_eq!(users, ["alice", "bob", "carol"]);
}
