//! 9. Origin check of the upgrade in dev mode

use chorus_tests::{API_KEY, GatewayProcess};
use serde_json::Value;

use super::support::*;

/// The status of an upgrade request with these extra header lines.
async fn upgrade_status(node: &GatewayProcess, host: &str, extra: &[u8]) -> (u16, String) {
    exchange(node, &upgrade_request(host, extra))
        .await
        .expect("a response to the upgrade")
}

#[tokio::test]
async fn dev_mode_upgrades_accept_only_the_nodes_own_origin() {
    let node = GatewayProcess::start(&[]);
    let own = node.addr.clone();
    let port = sock_addr(&node).port();
    let refused = |(status, body): (u16, String)| {
        assert_eq!(status, 403, "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON error");
        assert_eq!(v["error"]["code"], "forbidden_origin", "{v}");
    };
    // No Origin (not a browser): passes.
    assert_eq!(upgrade_status(&node, &own, b"").await.0, 101);
    // The node's own origin, by address and by localhost.
    let o = format!("Origin: http://{own}\r\n");
    assert_eq!(upgrade_status(&node, &own, o.as_bytes()).await.0, 101);
    let o = format!("Origin: http://localhost:{port}\r\n");
    assert_eq!(
        upgrade_status(&node, &format!("localhost:{port}"), o.as_bytes())
            .await
            .0,
        101
    );
    // Another site.
    refused(upgrade_status(&node, &own, b"Origin: http://evil.example\r\n").await);
    let o = format!("Origin: http://evil.example:{port}\r\n");
    refused(upgrade_status(&node, &own, o.as_bytes()).await);
    // DNS rebinding: evil.example resolves to 127.0.0.1, Host and Origin agree.
    refused(upgrade_status(&node, &format!("evil.example:{port}"), o.as_bytes()).await);
    // Own host, other port or scheme.
    let o = format!("Origin: http://127.0.0.1:{}\r\n", port.wrapping_add(1));
    refused(upgrade_status(&node, &own, o.as_bytes()).await);
    let o = format!("Origin: https://{own}\r\n");
    refused(upgrade_status(&node, &own, o.as_bytes()).await);
    // A refused upgrade leaves the node serving.
    assert_node_serves(&node).await;
    // Without dev identities (JWT only) and without --allowed-origin, any
    // origin passes as before: the check is the dev mode's.
    let jwt_only = GatewayProcess::start_args(&[
        "--listen",
        "127.0.0.1:0",
        "--jwt-secret",
        "test-secret-0123456789",
        "--api-key",
        API_KEY,
    ]);
    let (status, body) = upgrade_status(
        &jwt_only,
        &jwt_only.addr,
        b"Origin: http://evil.example\r\n",
    )
    .await;
    assert_eq!(status, 101, "{body}");
}

#[tokio::test]
async fn allowed_origins_compare_normalised_and_refuse_malformed_origins() {
    let node = GatewayProcess::start(&["--allowed-origin", "https://app.example"]);
    let own = node.addr.clone();
    for ok in [
        "https://app.example",
        "https://app.example:443",
        "HTTPS://App.Example",
        "https://app.example/",
    ] {
        let o = format!("Origin: {ok}\r\n");
        let (status, body) = upgrade_status(&node, &own, o.as_bytes()).await;
        assert_eq!(status, 101, "{ok}: {body}");
    }
    let mut bad: Vec<Vec<u8>> = vec![
        b"Origin: https://app.example:8443\r\n".to_vec(),
        b"Origin: http://app.example\r\n".to_vec(),
        b"Origin: https://evil.example\r\n".to_vec(),
        b"Origin: null\r\n".to_vec(),
        // Two Origin headers, even both allowed.
        b"Origin: https://app.example\r\nOrigin: https://app.example\r\n".to_vec(),
        b"Origin: https://evil.example\r\nOrigin: https://app.example\r\n".to_vec(),
    ];
    // Not ASCII.
    let mut non_ascii = b"Origin: https://app.example".to_vec();
    non_ascii.extend_from_slice(&[0xc3, 0xa9, 0xff]);
    non_ascii.extend_from_slice(b"\r\n");
    bad.push(non_ascii);
    for b in bad {
        let (status, body) = upgrade_status(&node, &own, &b).await;
        assert_eq!(status, 403, "{:?}: {body}", String::from_utf8_lossy(&b));
        let v: Value = serde_json::from_str(&body).expect("JSON error");
        assert_eq!(v["error"]["code"], "forbidden_origin", "{v}");
    }
    // Without an Origin header (not a browser) it passes.
    assert_eq!(upgrade_status(&node, &own, b"").await.0, 101);
}
