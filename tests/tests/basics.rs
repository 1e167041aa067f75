//! The basic path through the real wire protocol: hello, join, send, ack, msg.

use std::time::Duration;

use chorus_protocol::client::Event;
use chorus_tests::{GatewayProcess, text};

#[tokio::test]
async fn send_is_acked_and_delivered_to_every_member() {
    let node = GatewayProcess::start(&[]);
    let mut alice = node.connect("alice").await;
    let mut bob = node.connect("bob").await;
    assert_eq!(alice.welcome().user, "alice");
    alice.join("general", None).await.unwrap();
    bob.join("general", None).await.unwrap();
    let ack = alice.send("general", "c-1", text("hello"), None).await.unwrap();
    assert_eq!(ack.seq, 1);
    assert!(!ack.duplicate);
    for c in [&mut alice, &mut bob] {
        let ev = c
            .wait_for(Duration::from_secs(5), |e| matches!(e, Event::Msg(_)))
            .await
            .expect("msg");
        let Event::Msg(m) = ev else { unreachable!() };
        assert_eq!((m.seq, m.sender.as_str(), m.cid.as_deref()), (1, "alice", Some("c-1")));
        assert_eq!(m.body.get(), r#"{"text":"hello"}"#);
    }
}
