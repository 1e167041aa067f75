//! History

use chorus_protocol::Json;
use chorus_tests::{GatewayProcess, text};
use serde_json::json;

use super::support::*;

#[tokio::test]
async fn history_pages_both_ways_with_has_more() {
    let node = GatewayProcess::start(&["--max-history-page", "5"]);
    let alice = node.connect("alice").await;
    alice.join("general", None).await.unwrap();
    for i in 1..=7 {
        let meta = (i == 2).then(|| Json::from_text(r#"{"reply_to":1}"#).unwrap());
        let ack = alice
            .send("general", &format!("c-{i}"), text(&format!("m{i}")), meta)
            .await
            .unwrap();
        assert_eq!(ack.seq, i);
    }
    let page = |q: &str| {
        let path = format!("/v1/rooms/general/messages{q}");
        let node = &node;
        async move {
            let (s, b) = get_json(node, &path).await;
            assert_eq!(s, 200, "{path}: {b}");
            assert_eq!(b["room"], "general");
            (seqs(&b), b["has_more"].as_bool().expect("has_more"), b)
        }
    };

    // Neither: the newest `limit`, ascending. Default limit 50, capped at the max page (5).
    let (s, more, b) = page("").await;
    assert_eq!((s, more), (vec![3, 4, 5, 6, 7], true));
    let m = &b["messages"][0];
    assert_eq!(m["room"], "general");
    assert_eq!(m["sender"], "alice");
    assert_eq!(m["cid"], "c-3");
    assert_eq!(m["body"], json!({"text":"m3"}));
    assert!(m["id"].as_str().is_some_and(|id| id.len() == 36));
    assert!(m["ts"].as_i64().unwrap() > 0);
    assert!(m.get("meta").is_none(), "meta omitted when none");
    assert_eq!(page("?limit=2").await.0, vec![6, 7]);
    assert_eq!(
        page("?limit=100").await.0.len(),
        5,
        "clamped to --max-history-page"
    );
    assert_eq!(page("?limit=0").await.0, vec![7], "clamped up to 1");

    // Backwards: before = first seq of the previous page.
    assert_eq!(page("?limit=3").await.0, vec![5, 6, 7]);
    assert_eq!(page("?before=5&limit=3").await.0[..], [2, 3, 4]);
    let (s, more, b) = page("?before=2&limit=3").await;
    assert_eq!((s, more), (vec![1], false));
    assert_eq!(b["messages"][0]["seq"], 1);
    let (s, more, b2) = page("?before=3&limit=3").await;
    assert_eq!((s, more), (vec![1, 2], false));
    assert_eq!(b2["messages"][1]["meta"], json!({"reply_to":1}));
    assert!(
        !page("?before=4&limit=3").await.1,
        "exactly 3 older: no more"
    );
    assert_eq!(
        page("?before=1").await,
        (
            vec![],
            false,
            json!({"room":"general","messages":[],"has_more":false})
        )
    );

    // Forwards: after = last seq of the previous page.
    assert_eq!(page("?after=0&limit=3").await.0[..], [1, 2, 3]);
    assert!(page("?after=0&limit=3").await.1);
    assert_eq!(page("?after=3&limit=3").await.0[..], [4, 5, 6]);
    assert!(page("?after=3&limit=3").await.1);
    let (s, more, _) = page("?after=6&limit=3").await;
    assert_eq!((s, more), (vec![7], false));
    assert!(
        !page("?after=4&limit=3").await.1,
        "exactly 3 newer: no more"
    );
    assert_eq!(page("?after=7").await.0, Vec::<u64>::new());
    assert_eq!(page("?after=100").await.0, Vec::<u64>::new());

    // Both: `after` pages forwards, cut at `before`.
    assert_eq!(page("?after=2&before=5").await.0, vec![3, 4]);

    // A room never written to.
    let (s, b) = get_json(&node, "/v1/rooms/never-used/messages").await;
    assert_eq!(
        (s.as_u16(), b),
        (
            200,
            json!({"room":"never-used","messages":[],"has_more":false})
        )
    );

    // Garbage paging parameters are 400.
    for q in [
        "limit=abc",
        "limit=-1",
        "limit=",
        "limit=1.5",
        "limit=4294967296",
        "after=x",
        "before=-3",
        "after=1e3",
    ] {
        let (s, b) = get_json(&node, &format!("/v1/rooms/general/messages?{q}")).await;
        assert_error(s, &b, 400, "bad_request");
    }
    // Invalid room names are 400 (`/` percent-encoded, space, too long).
    for room in ["a%2Fb", "a%20b", "caf%C3%A9", &"r".repeat(129)] {
        let (s, b) = get_json(&node, &format!("/v1/rooms/{room}/messages")).await;
        assert_error(s, &b, 400, "bad_request");
        let (s, b) = get_json(&node, &format!("/v1/rooms/{room}/presence")).await;
        assert_error(s, &b, 400, "bad_request");
    }
    let (s, _) = get_json(&node, &format!("/v1/rooms/{}/messages", "r".repeat(128))).await;
    assert_eq!(s, 200, "128 characters is allowed");
}
