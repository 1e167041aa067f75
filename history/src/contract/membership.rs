//! Memberships: join and leave, read/delivered marks, unread counts.

use super::*;
use crate::store::{HistoryStore, Membership, Position};

/// Join (idempotent, starting at the tip), look up, list ordered by room,
/// and leave.
pub async fn membership_lifecycle(store: &dyn HistoryStore) {
    let epoch = fill(store, "t/zeta", "ann", 3).await;

    let joined = store.join("t/zeta", "u1", 1000).await.expect("join failed");
    assert_eq!(
        joined,
        Membership {
            room: "t/zeta".to_owned(),
            tip: 3,
            last_read: 3,
            last_delivered: 3,
            joined_at: 1000
        },
        "a new member starts at the tip"
    );
    assert_eq!(joined.unread(), 0, "history before joining is not unread");
    let again = store.join("t/zeta", "u1", 2000).await.expect("join failed");
    assert_eq!(again, joined, "joining again changes nothing");
    assert_eq!(member(store, "t/zeta", "u1").await, joined);

    // A room without any message (or any claim) can be joined at tip 0.
    let empty = store
        .join("t/alpha", "u1", 3000)
        .await
        .expect("join failed");
    assert_eq!(
        (empty.tip, empty.last_read, empty.last_delivered),
        (0, 0, 0)
    );
    store.join("t/zeta", "u2", 4000).await.expect("join failed");

    committed(
        store,
        &[batch("t/zeta", epoch, vec![message("bob", "x", 9)])],
    )
    .await;
    let listed = store.memberships("u1").await.expect("memberships failed");
    assert_eq!(
        listed.iter().map(|m| m.room.as_str()).collect::<Vec<_>>(),
        ["t/alpha", "t/zeta"],
        "memberships are ordered by room"
    );
    assert_eq!(listed[1].tip, 4, "memberships carry the current tip");
    assert_eq!(listed[1].unread(), 1);
    assert_eq!(
        store
            .join("t/zeta", "u1", 5000)
            .await
            .expect("join failed")
            .tip,
        4,
        "an existing membership is returned with the current tip"
    );

    assert!(
        store
            .membership("t/zeta", "nobody")
            .await
            .expect("membership failed")
            .is_none()
    );
    assert!(
        store
            .memberships("nobody")
            .await
            .expect("memberships failed")
            .is_empty()
    );

    assert!(
        store.leave("t/zeta", "u1").await.expect("leave failed"),
        "leaving a membership reports it"
    );
    assert!(
        !store.leave("t/zeta", "u1").await.expect("leave failed"),
        "leaving twice reports nothing the second time"
    );
    assert!(
        store
            .membership("t/zeta", "u1")
            .await
            .expect("membership failed")
            .is_none()
    );
    let listed = store.memberships("u1").await.expect("memberships failed");
    assert_eq!(
        listed.iter().map(|m| m.room.as_str()).collect::<Vec<_>>(),
        ["t/alpha"]
    );
    assert_eq!(
        member(store, "t/zeta", "u2").await.joined_at,
        4000,
        "other members are untouched"
    );

    let rejoined = store.join("t/zeta", "u1", 6000).await.expect("join failed");
    assert_eq!(
        (rejoined.last_read, rejoined.joined_at),
        (4, 6000),
        "joining after leaving starts afresh at the tip"
    );
}

/// Positions move forward only, are clamped to the tip, report only real
/// moves, and a read position drags the delivered one along.
pub async fn marks_are_monotonic_and_clamped(store: &dyn HistoryStore) {
    use Position::{Delivered, Read};

    let claim = store.claim_room("t/a").await.expect("claim_room failed");
    store.join("t/a", "u1", 1).await.expect("join failed");
    store.join("t/a", "u2", 1).await.expect("join failed");
    let messages = (1..=5)
        .map(|i| message("ann", &format!("c{i}"), ts_of(i)))
        .collect();
    committed(store, &[batch("t/a", claim.epoch, messages)]).await;

    let mark = |user: &'static str, position, seq| store.mark("t/a", user, position, seq);
    assert_eq!(
        mark("u1", Delivered, 3).await.expect("mark failed"),
        Some(3)
    );
    assert_eq!(
        mark("u1", Delivered, 2).await.expect("mark failed"),
        None,
        "a lower position never moves back"
    );
    assert_eq!(
        mark("u1", Delivered, 3).await.expect("mark failed"),
        None,
        "an equal position is not a move"
    );
    assert_eq!(
        mark("u1", Delivered, 100).await.expect("mark failed"),
        Some(5),
        "positions are clamped to the tip"
    );
    assert_eq!(
        mark("u1", Delivered, 6).await.expect("mark failed"),
        None,
        "clamped to an unchanged value is not a move"
    );
    let m = member(store, "t/a", "u1").await;
    assert_eq!(
        (m.last_delivered, m.last_read),
        (5, 0),
        "delivered does not move read"
    );

    assert_eq!(mark("u1", Read, 2).await.expect("mark failed"), Some(2));
    let m = member(store, "t/a", "u1").await;
    assert_eq!(
        (m.last_delivered, m.last_read),
        (5, 2),
        "read never lowers delivered"
    );
    assert_eq!(mark("u1", Read, 1).await.expect("mark failed"), None);
    assert_eq!(mark("u1", Read, 9).await.expect("mark failed"), Some(5));

    assert_eq!(mark("u2", Read, 3).await.expect("mark failed"), Some(3));
    let m = member(store, "t/a", "u2").await;
    assert_eq!(
        (m.last_delivered, m.last_read),
        (3, 3),
        "moving read moves delivered to at least the same seq"
    );
    assert_eq!(
        mark("u2", Delivered, 2).await.expect("mark failed"),
        None,
        "delivered was already raised by the read"
    );
    assert_eq!(
        mark("u2", Delivered, 4).await.expect("mark failed"),
        Some(4)
    );

    assert_eq!(
        mark("stranger", Read, 3).await.expect("mark failed"),
        None,
        "a non-member's mark does nothing"
    );
    assert!(
        store
            .membership("t/a", "stranger")
            .await
            .expect("membership failed")
            .is_none(),
        "marking does not create a membership"
    );
    store.join("t/empty", "u1", 1).await.expect("join failed");
    assert_eq!(
        store
            .mark("t/empty", "u1", Read, 3)
            .await
            .expect("mark failed"),
        None,
        "in a room without messages every position clamps to 0"
    );
}

/// Unread counts follow the tip and the read position; history from before
/// joining is never unread.
pub async fn unread_counts(store: &dyn HistoryStore) {
    let epoch = fill(store, "t/a", "ann", 2).await;
    store.join("t/a", "early", 1).await.expect("join failed");
    let messages = (3..=7)
        .map(|i| message("ann", &format!("c{i}"), ts_of(i)))
        .collect();
    committed(store, &[batch("t/a", epoch, messages)]).await;

    assert_eq!(member(store, "t/a", "early").await.unread(), 5);
    store
        .mark("t/a", "early", Position::Read, 4)
        .await
        .expect("mark failed");
    assert_eq!(member(store, "t/a", "early").await.unread(), 3);
    store
        .mark("t/a", "early", Position::Delivered, 7)
        .await
        .expect("mark failed");
    assert_eq!(
        member(store, "t/a", "early").await.unread(),
        3,
        "delivery does not count as reading"
    );

    let late = store.join("t/a", "late", 2).await.expect("join failed");
    assert_eq!(late.unread(), 0, "a new member has nothing unread");
    let listed = store
        .memberships("early")
        .await
        .expect("memberships failed");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].unread(), 3, "memberships report the same unread");
}
