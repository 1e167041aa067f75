//! 7. Presence grace after an abrupt disconnect

use chorus_protocol::client::{Client, Event};
use chorus_tests::GatewayProcess;
use std::time::{Duration, Instant};

use super::support::*;

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
