//! Tenants

use chorus_protocol::client::{Client, ClientConfig, Event};
use chorus_tests::{GatewayProcess, token};
use serde_json::{Value, json};
use std::time::Duration;

use super::support::*;

#[tokio::test]
async fn tenant_parameter_selects_the_namespace() {
    let node = GatewayProcess::start(&[]);
    let acme_url = format!(
        "{}?access_token={}",
        node.ws_url(),
        token("alice", 3600, None, Some("acme"))
    );
    let mut acme_alice = Client::connect(ClientConfig::new(acme_url)).await.unwrap();
    assert_eq!(acme_alice.welcome().tenant.as_deref(), Some("acme"));
    let mut bob = node.connect("bob").await;
    assert_eq!(bob.welcome().tenant, None);
    acme_alice.join("general", None).await.unwrap();
    bob.join("general", None).await.unwrap();

    let users = |b: &Value| -> Vec<String> {
        b["users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["user"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, b) = get_json(&node, "/v1/rooms/general/presence?tenant=acme").await;
    assert_eq!(
        (b["room"].as_str(), users(&b)),
        (Some("general"), vec!["alice".to_owned()])
    );
    let (_, b) = get_json(&node, "/v1/rooms/general/presence").await;
    assert_eq!(users(&b), ["bob"]);
    let (_, b) = get_json(&node, "/v1/rooms/general/presence?tenant=other").await;
    assert_eq!(b["count"], 0);

    let (_, b) = get_json(&node, "/v1/users/alice/presence?tenant=acme").await;
    assert_eq!(
        (b["user"].as_str(), b["online"].as_bool()),
        (Some("alice"), Some(true))
    );
    assert_eq!(
        b["devices"][0]["rooms"],
        json!(["general"]),
        "public room names, no tenant prefix"
    );
    let (_, b) = get_json(&node, "/v1/users/alice/presence").await;
    assert_eq!(b["online"], false);
    let (_, b) = post_json(
        &node,
        "/v1/presence/query?tenant=acme",
        &json!({"users":["alice","bob"]}),
    )
    .await;
    assert_eq!(
        (
            b["users"]["alice"]["online"].as_bool(),
            b["users"]["bob"]["online"].as_bool()
        ),
        (Some(true), Some(false))
    );

    // Publishing into acme reaches acme's members only, with its own sequence.
    let (s, r) = post_json(
        &node,
        "/v1/rooms/general/messages?tenant=acme",
        &json!({"sender":"bot","cid":"t1","body":"for acme"}),
    )
    .await;
    assert_eq!(
        (s.as_u16(), r["room"].as_str(), r["seq"].as_u64()),
        (200, Some("general"), Some(1))
    );
    let m = next_msg(&mut acme_alice).await;
    assert_eq!(
        (m.room.as_str(), m.body.get()),
        ("general", r#""for acme""#)
    );
    assert!(
        bob.wait_for(Duration::from_millis(400), |e| matches!(e, Event::Msg(_)))
            .await
            .is_none()
    );
    let (_, r) = post_json(
        &node,
        "/v1/rooms/general/messages",
        &json!({"sender":"bot","cid":"t1","body":"default"}),
    )
    .await;
    assert_eq!(
        (r["seq"].as_u64(), r["duplicate"].as_bool()),
        (Some(1), Some(false)),
        "same cid, other tenant: new"
    );
    assert_eq!(next_msg(&mut bob).await.body.get(), r#""default""#);

    let (_, page) = get_json(&node, "/v1/rooms/general/messages?tenant=acme").await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            page["messages"][0]["body"].as_str(),
            page["messages"][0]["room"].as_str()
        ),
        (Some("for acme"), Some("general"))
    );
    let (_, page) = get_json(&node, "/v1/rooms/general/messages").await;
    assert_eq!(page["messages"][0]["body"], "default");
    let (_, page) = get_json(&node, "/v1/rooms/general/messages?tenant=nobody").await;
    assert_eq!(page["messages"], json!([]));

    // A tenant follows the user-id rules.
    for q in ["tenant=a%2Fb", "tenant=a%20b", "tenant="] {
        for path in [
            "/v1/rooms/general/presence",
            "/v1/users/alice/presence",
            "/v1/rooms/general/messages",
        ] {
            let (s, b) = get_json(&node, &format!("{path}?{q}")).await;
            assert_error(s, &b, 400, "bad_request");
        }
        let (s, b) = post_json(
            &node,
            &format!("/v1/rooms/general/messages?{q}"),
            &json!({"sender":"bot","body":1}),
        )
        .await;
        assert_error(s, &b, 400, "bad_request");
        // Also when no user is asked for.
        for users in [json!(["alice"]), json!([])] {
            let (s, b) = post_json(
                &node,
                &format!("/v1/presence/query?{q}"),
                &json!({ "users": users }),
            )
            .await;
            assert_error(s, &b, 400, "bad_request");
        }
    }
}
