//! tenants

use chorus_protocol::client::{Client, Event};
use chorus_tests::{GatewayProcess, text, token};

use super::support::*;

#[tokio::test]
async fn tenants_never_see_each_other() {
    let node = GatewayProcess::start(&[]);
    let acme = token("alice", 3600, None, Some("acme"));
    let globex = token("bob", 3600, None, Some("globex"));
    let mut alice = Client::connect(hello_token_cfg(&node, &acme))
        .await
        .unwrap();
    let mut bob = Client::connect(hello_token_cfg(&node, &globex))
        .await
        .unwrap();
    let mut plain = node.connect("carol").await;
    assert_eq!(alice.welcome().tenant.as_deref(), Some("acme"));
    assert_eq!(bob.welcome().tenant.as_deref(), Some("globex"));
    assert_eq!(plain.welcome().tenant, None);

    let ja = alice.join("general", None).await.unwrap();
    let jb = bob.join("general", None).await.unwrap();
    let jc = plain.join("general", None).await.unwrap();
    for j in [&ja, &jb, &jc] {
        assert_eq!(j.presence.len(), 1, "only oneself: {:?}", j.presence);
    }
    // Each tenant's "general" is its own room: both start at seq 1.
    let a = alice
        .send("general", "x", text("acme"), None)
        .await
        .unwrap();
    let b = bob
        .send("general", "x", text("globex"), None)
        .await
        .unwrap();
    assert_eq!(
        (a.seq, a.duplicate, b.seq, b.duplicate),
        (1, false, 1, false)
    );
    alice.typing("general", true).await.unwrap();
    alice.read("general", 1).await.unwrap();
    for (c, own) in [(&mut alice, "acme"), (&mut bob, "globex")] {
        let evs = events_for(c, ms(1000)).await;
        let msgs: Vec<String> = evs
            .iter()
            .filter_map(|e| match e {
                Event::Msg(m) => Some(m.body.get().to_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(msgs, [format!(r#"{{"text":"{own}"}}"#)]);
        assert!(presence_diffs(&evs).is_empty(), "{evs:?}");
        if own == "globex" {
            assert!(typing_events(&evs).is_empty(), "{evs:?}");
            assert!(
                !evs.iter().any(|e| matches!(e, Event::Receipt { .. })),
                "{evs:?}"
            );
        }
    }
    let evs = events_for(&mut plain, ms(300)).await;
    assert!(
        !evs.iter().any(|e| matches!(
            e,
            Event::Msg(_)
                | Event::Typing { .. }
                | Event::Receipt { .. }
                | Event::PresenceDiff { .. }
        )),
        "{evs:?}"
    );
    let h = bob.history("general", None, None, None).await.unwrap();
    assert_eq!(h.messages.len(), 1);
    assert_eq!(h.messages[0].sender, "bob");
    assert!(
        plain
            .history("general", None, None, None)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    assert_eq!(alice.presence("general").await.unwrap().len(), 1);

    // The same user id in another tenant is another user.
    let alice_globex = token("alice", 3600, None, Some("globex"));
    let other = Client::connect(hello_token_cfg(&node, &alice_globex))
        .await
        .unwrap();
    assert!(
        other.welcome().rooms.is_empty(),
        "{:?}",
        other.welcome().rooms
    );
    let j = other.join("general", None).await.unwrap();
    let mut users: Vec<String> = j.presence.iter().map(|u| u.user.clone()).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"], "globex's alice meets globex's bob");
    assert_eq!(j.tip, 1);
    alice.close().await.unwrap();
    let again = Client::connect(hello_token_cfg(&node, &acme))
        .await
        .unwrap();
    let st = &again.welcome().rooms[0];
    assert_eq!((st.room.as_str(), st.tip, st.last_read), ("general", 1, 1));
}

#[tokio::test]
async fn hot_rooms_send_counts_instead_of_lists() {
    // Above 2 users online the room is hot: a joiner gets the count, not the
    // list, and members get one coalesced count instead of a diff per user.
    let node = GatewayProcess::start(&[
        "--presence-hot-users",
        "2",
        "--presence-count-interval-ms",
        "200",
        "--presence-grace-ms",
        "0",
    ]);
    let mut a = node.connect("hot-a").await;
    let j = a.join("big", None).await.unwrap();
    assert_eq!((j.online, j.presence.len()), (1, 1));
    let mut b = node.connect("hot-b").await;
    let j = b.join("big", None).await.unwrap();
    assert_eq!(
        (j.online, j.presence.len()),
        (2, 2),
        "at the threshold: lists"
    );
    let ev = wait_event(&mut a, "diff for b", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    assert!(
        matches!(&ev, Event::PresenceDiff { joined, online: None, .. } if joined[0].user == "hot-b"),
        "{ev:?}"
    );

    let c = node.connect("hot-c").await;
    let j = c.join("big", None).await.unwrap();
    assert_eq!(j.online, 3);
    assert!(j.presence.is_empty(), "a hot room's join reply has no list");
    for member in [&mut a, &mut b] {
        let ev = wait_event(member, "count", |e| matches!(e, Event::PresenceDiff { .. })).await;
        let Event::PresenceDiff {
            room,
            joined,
            left,
            online,
        } = ev
        else {
            unreachable!()
        };
        assert_eq!(room, "big");
        assert!(joined.is_empty() && left.is_empty(), "no per-user diff");
        assert_eq!(online, Some(3));
    }
    // The explicit presence request still lists everyone.
    let all = a.presence("big").await.unwrap();
    assert_eq!(all.len(), 3);

    // Back at the threshold, diffs name users again.
    c.leave("big", false).await.unwrap();
    let ev = wait_event(&mut a, "leave diff", |e| {
        matches!(e, Event::PresenceDiff { .. })
    })
    .await;
    assert!(
        matches!(&ev, Event::PresenceDiff { left, online: None, .. } if left == &["hot-c".to_string()]),
        "{ev:?}"
    );
}
