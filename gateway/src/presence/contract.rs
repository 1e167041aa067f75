//! The behaviour suite every [`Presence`] implementation must pass (feature `contract`).
//!
//! Each case is a public async function that takes a FRESH presence (nothing
//! attached; for Redis, a key prefix of its own and a ttl long enough that
//! nothing expires during the case) and panics when the implementation breaks
//! the contract written on the trait. A test file runs every case as its own
//! named `#[tokio::test]` with [`presence_contract_tests!`](crate::presence_contract_tests).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test suite: a failed unwrap is a failed test

use super::{LiveSession, Presence, PresenceEntry};

/// One named `#[tokio::test]` per contract case, on the presence that
/// `$fresh(case_name).await` returns (a fresh one per case; the name is there
/// to make a key prefix of its own).
///
/// ```ignore
/// async fn fresh(_case: &str) -> MemoryPresence { MemoryPresence::default() }
/// chorus_gateway::presence_contract_tests!(fresh);
/// ```
#[macro_export]
macro_rules! presence_contract_tests {
    ($fresh:path) => {
        $crate::presence_contract_tests!(@cases $fresh: user_level_transitions, per_device_listing, user_presence_across_rooms, tenant_user_keys, generations_and_expire_if, settle_leaves_rooms_not_taken_back, unknown_sessions_and_rooms, reattach_replaces_entry_and_keeps_rooms, refresh_does_not_resurrect_an_expired_session, sweep_without_expiry_is_empty, concurrent_transitions_are_reported_once);
    };
    (@cases $fresh:path: $($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() {
            let p = $fresh(stringify!($case)).await;
            $crate::presence::contract::$case(&p).await;
        }
    )*};
}

pub fn entry(session: &str, user: &str, device: &str, node: &str) -> PresenceEntry {
    PresenceEntry {
        session: session.into(),
        user: user.into(),
        user_key: user.into(),
        device: device.into(),
        node: node.into(),
        since: 1_700_000_000_000,
        meta: None,
    }
}

pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

pub fn live(e: &PresenceEntry, generation: u64, rooms: &[&str]) -> LiveSession {
    LiveSession {
        entry: e.clone(),
        generation,
        rooms: strs(rooms),
    }
}

/// Users of a room as `user:device,device` strings.
pub async fn room_view(p: &dyn Presence, room: &str) -> Vec<String> {
    p.room(room)
        .await
        .expect("room")
        .into_iter()
        .map(|u| {
            let devices: Vec<String> = u.devices.into_iter().map(|d| d.device).collect();
            format!("{}:{}", u.user, devices.join(","))
        })
        .collect()
}

/// A user's devices as `device@node[rooms]` strings.
pub async fn user_view(p: &dyn Presence, user_key: &str) -> Vec<String> {
    p.user(user_key)
        .await
        .expect("user")
        .into_iter()
        .map(|d| format!("{}@{}[{}]", d.info.device, d.info.node, d.rooms.join(",")))
        .collect()
}

pub async fn user_level_transitions(p: &dyn Presence) {
    let g1 = p.attach(entry("s1", "alice", "phone", "n")).await.unwrap();
    let g2 = p
        .attach(entry("s2", "alice", "desktop", "n"))
        .await
        .unwrap();
    assert!(
        p.join("r", "s1").await.unwrap(),
        "first device brings alice online"
    );
    assert!(!p.join("r", "s2").await.unwrap(), "second device: no diff");
    assert!(!p.join("r", "s2").await.unwrap(), "joining twice: no diff");
    assert_eq!(room_view(p, "r").await, vec!["alice:phone,desktop"]);
    assert_eq!(p.room_count("r").await.unwrap(), 1, "users, not devices");
    assert_eq!(p.room_count("elsewhere").await.unwrap(), 0);
    assert!(!p.leave("r", "s1").await.unwrap(), "desktop still there");
    assert_eq!(room_view(p, "r").await, vec!["alice:desktop"]);
    assert_eq!(p.expire_if("s2", g2).await.unwrap(), Some(strs(&["r"])));
    assert!(p.room("r").await.unwrap().is_empty());
    assert_eq!(p.room_count("r").await.unwrap(), 0);
    assert_eq!(
        user_view(p, "alice").await,
        vec!["phone@n[]"],
        "s1 still attached"
    );
    assert_eq!(p.expire_if("s1", g1).await.unwrap(), Some(vec![]));
    assert!(p.user("alice").await.unwrap().is_empty());
    assert!(p.session("s1").await.unwrap().is_none());
}

pub async fn per_device_listing(p: &dyn Presence) {
    let mut phone = entry("s1", "alice", "phone", "node-a");
    phone.meta = Some(serde_json::json!({"app": "ios", "v": [1, 2]}));
    phone.since = 1_700_000_000_123;
    p.attach(phone.clone()).await.unwrap();
    p.attach(entry("s2", "alice", "desktop", "node-b"))
        .await
        .unwrap();
    p.attach(entry("s0", "bob", "web", "node-a")).await.unwrap();
    for s in ["s1", "s2", "s0"] {
        p.join("r", s).await.unwrap();
    }
    let users = p.room("r").await.unwrap();
    let names: Vec<&str> = users.iter().map(|u| u.user.as_str()).collect();
    assert_eq!(names, ["alice", "bob"], "sorted by user");
    // Devices ordered by session id: s1 (phone) before s2 (desktop).
    assert_eq!(users[0].devices.len(), 2);
    assert_eq!(users[0].devices[0], phone.device_info(), "full device info");
    assert_eq!(users[0].devices[1].device, "desktop");
    assert_eq!(users[0].devices[1].node, "node-b");
    assert_eq!(p.session("s1").await.unwrap(), Some(phone));
    assert_eq!(
        user_view(p, "alice").await,
        vec!["phone@node-a[r]", "desktop@node-b[r]"]
    );
}

pub async fn user_presence_across_rooms(p: &dyn Presence) {
    let g2 = p
        .attach(entry("s2", "alice", "desktop", "n"))
        .await
        .unwrap();
    p.attach(entry("s1", "alice", "phone", "n")).await.unwrap();
    assert!(p.join("b", "s1").await.unwrap());
    assert!(p.join("a", "s1").await.unwrap());
    assert!(!p.join("b", "s2").await.unwrap());
    assert!(p.join("c", "s2").await.unwrap());
    assert_eq!(
        user_view(p, "alice").await,
        vec!["phone@n[a,b]", "desktop@n[b,c]"],
        "devices by session id, rooms sorted"
    );
    assert!(!p.leave("b", "s1").await.unwrap(), "desktop still in b");
    assert_eq!(room_view(p, "b").await, vec!["alice:desktop"]);
    assert_eq!(
        p.expire_if("s2", g2).await.unwrap(),
        Some(strs(&["b", "c"])),
        "alice went offline in b and c, not in a"
    );
    assert_eq!(room_view(p, "a").await, vec!["alice:phone"]);
    assert_eq!(user_view(p, "alice").await, vec!["phone@n[a]"]);
}

pub async fn tenant_user_keys(p: &dyn Presence) {
    let mut e = entry("s1", "alice", "phone", "n");
    e.user_key = "acme/alice".into();
    p.attach(e).await.unwrap();
    p.join("acme/r", "s1").await.unwrap();
    assert_eq!(user_view(p, "acme/alice").await, vec!["phone@n[acme/r]"]);
    assert!(p.user("alice").await.unwrap().is_empty(), "other tenant");
    assert_eq!(
        room_view(p, "acme/r").await,
        vec!["alice:phone"],
        "rooms list public user ids"
    );
}

pub async fn generations_and_expire_if(p: &dyn Presence) {
    let g1 = p.attach(entry("s1", "alice", "phone", "n")).await.unwrap();
    p.join("r", "s1").await.unwrap();
    let g2 = p.attach(entry("s1", "alice", "phone", "n")).await.unwrap();
    assert!(g2 > g1, "generations grow: {g1} then {g2}");
    assert_eq!(
        p.expire_if("s1", g1).await.unwrap(),
        None,
        "superseded: the resumed session stays"
    );
    assert_eq!(room_view(p, "r").await, vec!["alice:phone"]);
    assert!(p.session("s1").await.unwrap().is_some());
    assert_eq!(p.expire_if("s1", g2).await.unwrap(), Some(strs(&["r"])));
    assert_eq!(
        p.expire_if("s1", g2).await.unwrap(),
        None,
        "already removed"
    );
    assert!(p.session("s1").await.unwrap().is_none());
    let g3 = p.attach(entry("s1", "alice", "phone", "n")).await.unwrap();
    assert!(g3 > g2, "never reused after removal: {g2} then {g3}");
    assert_eq!(
        user_view(p, "alice").await,
        vec!["phone@n[]"],
        "starts over with no rooms"
    );
}

pub async fn settle_leaves_rooms_not_taken_back(p: &dyn Presence) {
    let g1 = p.attach(entry("s1", "alice", "phone", "n")).await.unwrap();
    p.attach(entry("s2", "alice", "desktop", "n"))
        .await
        .unwrap();
    p.attach(entry("s9", "bob", "web", "n")).await.unwrap();
    for room in ["a", "b", "c"] {
        p.join(room, "s1").await.unwrap();
    }
    p.join("c", "s2").await.unwrap();
    p.join("b", "s9").await.unwrap();
    let g2 = p.attach(entry("s1", "alice", "phone", "n")).await.unwrap();
    assert!(!p.join("a", "s1").await.unwrap(), "re-join: no flicker");
    assert!(
        p.settle("s1", g1, &[]).await.unwrap().is_empty(),
        "an old generation settles nothing"
    );
    assert_eq!(user_view(p, "alice").await[0], "phone@n[a,b,c]");
    assert_eq!(
        p.settle("s1", g2, &strs(&["a"])).await.unwrap(),
        strs(&["b"]),
        "offline in b; in c the desktop is still there"
    );
    assert_eq!(room_view(p, "b").await, vec!["bob:web"]);
    assert_eq!(room_view(p, "c").await, vec!["alice:desktop"]);
    assert_eq!(
        user_view(p, "alice").await,
        vec!["phone@n[a]", "desktop@n[c]"]
    );
    assert!(
        p.settle("s1", g2, &strs(&["a"])).await.unwrap().is_empty(),
        "settling again changes nothing"
    );
}

pub async fn unknown_sessions_and_rooms(p: &dyn Presence) {
    assert!(p.join("r", "nobody").await.is_err(), "join needs attach");
    assert!(!p.leave("r", "nobody").await.unwrap());
    assert_eq!(p.expire_if("nobody", 1).await.unwrap(), None);
    assert!(p.settle("nobody", 1, &[]).await.unwrap().is_empty());
    assert!(p.session("nobody").await.unwrap().is_none());
    assert!(p.room("empty").await.unwrap().is_empty());
    assert!(p.user("nobody").await.unwrap().is_empty());
    p.attach(entry("s1", "alice", "phone", "n")).await.unwrap();
    assert!(!p.leave("r", "s1").await.unwrap(), "not in that room");
}

pub async fn reattach_replaces_entry_and_keeps_rooms(p: &dyn Presence) {
    p.attach(entry("s1", "alice", "phone", "node-a"))
        .await
        .unwrap();
    p.join("a", "s1").await.unwrap();
    let moved = entry("s1", "alice", "tablet", "node-b");
    p.attach(moved.clone()).await.unwrap();
    assert_eq!(p.session("s1").await.unwrap(), Some(moved));
    assert_eq!(room_view(p, "a").await, vec!["alice:tablet"]);
    assert_eq!(user_view(p, "alice").await, vec!["tablet@node-b[a]"]);
}

pub async fn refresh_does_not_resurrect_an_expired_session(p: &dyn Presence) {
    let e = entry("s1", "alice", "phone", "n");
    let g = p.attach(e.clone()).await.unwrap();
    p.join("r", "s1").await.unwrap();
    assert!(
        p.refresh(&[live(&e, g, &["r"])]).await.unwrap().is_empty(),
        "nothing was missing"
    );
    assert_eq!(p.expire_if("s1", g).await.unwrap(), Some(strs(&["r"])));
    // A heartbeat that took its snapshot before the expiry arrives after it.
    assert!(p.refresh(&[live(&e, g, &["r"])]).await.unwrap().is_empty());
    assert!(p.room("r").await.unwrap().is_empty());
    assert!(p.session("s1").await.unwrap().is_none());
}

pub async fn sweep_without_expiry_is_empty(p: &dyn Presence) {
    p.attach(entry("s1", "alice", "phone", "n")).await.unwrap();
    p.join("r", "s1").await.unwrap();
    assert!(p.sweep("r").await.unwrap().is_empty());
    assert!(p.sweep("elsewhere").await.unwrap().is_empty());
    assert_eq!(room_view(p, "r").await, vec!["alice:phone"]);
}

pub async fn concurrent_transitions_are_reported_once(p: &dyn Presence) {
    p.attach(entry("s1", "alice", "phone", "n")).await.unwrap();
    p.attach(entry("s2", "alice", "desktop", "n"))
        .await
        .unwrap();
    for round in 0..20 {
        let (a, b) = tokio::join!(p.join("r", "s1"), p.join("r", "s2"));
        let joins = [a.unwrap(), b.unwrap()];
        assert_eq!(
            joins.iter().filter(|x| **x).count(),
            1,
            "round {round}: {joins:?}"
        );
        let (a, b) = tokio::join!(p.leave("r", "s1"), p.leave("r", "s2"));
        let leaves = [a.unwrap(), b.unwrap()];
        assert_eq!(
            leaves.iter().filter(|x| **x).count(),
            1,
            "round {round}: {leaves:?}"
        );
    }
    assert!(p.room("r").await.unwrap().is_empty());
}
