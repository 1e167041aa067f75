//! receipts

use chorus_protocol::client::Client;
use chorus_tests::{GatewayProcess, text};

use super::support::*;

#[tokio::test]
async fn receipts_reach_every_member_are_monotonic_clamped_and_set_unread() {
    let node = GatewayProcess::start(&["--receipt-interval-ms", "700"]);
    let mut phone = Client::connect(node.config("alice").with_device("phone"))
        .await
        .unwrap();
    let mut laptop = Client::connect(node.config("alice").with_device("laptop"))
        .await
        .unwrap();
    let mut bob = node.connect("bob").await;
    let mut carol = node.connect("carol").await;
    for c in [&mut phone, &mut laptop, &mut bob, &mut carol] {
        c.join("r", None).await.unwrap();
    }
    for i in 1..=3 {
        bob.send("r", &format!("b-{i}"), text("x"), None)
            .await
            .unwrap();
    }
    for c in [&mut phone, &mut laptop, &mut bob, &mut carol] {
        wait_msg(c, "r", 3).await;
    }

    // delivered: broadcast to everyone in the room, the sender's connection and
    // the user's other device included.
    phone.delivered("r", 2).await.unwrap();
    for c in [&mut phone, &mut laptop, &mut bob, &mut carol] {
        let ev = wait_event(c, "receipt delivered=2", |e| {
            receipt_of(e, "r", "alice").is_some()
        })
        .await;
        let r = receipt_of(&ev, "r", "alice").unwrap();
        assert_eq!((r.read, r.delivered), (None, Some(2)), "{ev:?}");
    }
    // read implies delivered.
    phone.read("r", 3).await.unwrap();
    for c in [&mut phone, &mut laptop, &mut bob, &mut carol] {
        let ev = wait_event(c, "receipt read=3", |e| {
            receipt_of(e, "r", "alice").is_some()
        })
        .await;
        let r = receipt_of(&ev, "r", "alice").unwrap();
        assert_eq!((r.read, r.delivered), (Some(3), Some(3)), "{ev:?}");
    }
    // Lower positions (from any device) are ignored: no receipt.
    laptop.read("r", 1).await.unwrap();
    laptop.delivered("r", 2).await.unwrap();
    laptop.ping().await.unwrap();
    let evs = events_for(&mut bob, ms(1500)).await;
    assert!(
        !evs.iter().any(|e| receipt_of(e, "r", "alice").is_some()),
        "a lower position is ignored: {evs:?}"
    );
    // Clamped to the tip.
    bob.read("r", 99).await.unwrap();
    let ev = wait_event(&mut carol, "bob's receipt", |e| {
        receipt_of(e, "r", "bob").is_some()
    })
    .await;
    let r = receipt_of(&ev, "r", "bob").unwrap();
    assert_eq!((r.read, r.delivered), (Some(3), Some(3)));

    // Coalesced: a burst in one room becomes fewer broadcasts with the last state.
    for i in 4..=6 {
        bob.send("r", &format!("b-{i}"), text("x"), None)
            .await
            .unwrap();
    }
    wait_msg(&mut phone, "r", 6).await;
    // Drain carol of everything so far, then burst.
    events_for(&mut carol, ms(300)).await;
    phone.delivered("r", 4).await.unwrap();
    phone.delivered("r", 5).await.unwrap();
    phone.read("r", 6).await.unwrap();
    phone.ping().await.unwrap();
    let evs = events_for(&mut carol, ms(2500)).await;
    let alice_receipts: Vec<_> = evs
        .iter()
        .filter_map(|e| receipt_of(e, "r", "alice"))
        .collect();
    assert!(
        !alice_receipts.is_empty() && alice_receipts.len() < 3,
        "3 frames within a few ms are coalesced: {alice_receipts:?}"
    );
    let last = alice_receipts.last().unwrap();
    assert_eq!((last.read, last.delivered), (Some(6), Some(6)));

    // The next welcome carries the positions and unread counts.
    phone.close().await.unwrap();
    let again = node.connect("alice").await;
    let st = again.welcome().rooms[0].clone();
    assert_eq!(
        (
            st.room.as_str(),
            st.tip,
            st.last_read,
            st.last_delivered,
            st.unread
        ),
        ("r", 6, 6, 6, 0)
    );
    carol.close().await.unwrap();
    let carol2 = node.connect("carol").await;
    let st = carol2.welcome().rooms[0].clone();
    assert_eq!(
        (st.tip, st.last_read, st.last_delivered, st.unread),
        (6, 0, 0, 6)
    );
}
