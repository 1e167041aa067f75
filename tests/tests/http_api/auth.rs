//! Authentication and error shape

use chorus_tests::{API_KEY, GatewayProcess};
use serde_json::{Value, json};

use super::support::*;

#[tokio::test]
async fn api_key_is_required_on_every_v1_endpoint() {
    let node = GatewayProcess::start(&[]);
    let c = http();
    let endpoints: [(&str, &str, Option<Value>); 5] = [
        ("GET", "/v1/rooms/general/presence", None),
        ("GET", "/v1/users/alice/presence", None),
        (
            "POST",
            "/v1/presence/query",
            Some(json!({"users":["alice"]})),
        ),
        ("GET", "/v1/rooms/general/messages", None),
        (
            "POST",
            "/v1/rooms/general/messages",
            Some(json!({"sender":"bot","body":1})),
        ),
    ];
    for (method, path, body) in &endpoints {
        let req = |auth: Option<(&str, String)>| {
            let mut r = c.request(method.parse().unwrap(), url(&node, path));
            if let Some(b) = body {
                r = r.json(b);
            }
            if let Some((k, v)) = auth {
                r = r.header(k, v);
            }
            r
        };
        let check = async |r: reqwest::RequestBuilder, want: u16, code: Option<&str>| {
            let resp = r.send().await.unwrap();
            let status = resp.status();
            let ct = resp
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap().to_owned());
            let b: Value = resp.json().await.unwrap();
            assert_eq!(status.as_u16(), want, "{method} {path}: {b}");
            assert_eq!(ct.as_deref(), Some("application/json"), "{method} {path}");
            if let Some(code) = code {
                assert_eq!(error_code(&b), code, "{method} {path}");
            }
        };
        check(req(None), 401, Some("unauthorized")).await;
        check(
            req(Some(("X-Api-Key", "wrong".into()))),
            403,
            Some("forbidden"),
        )
        .await;
        check(
            req(Some(("Authorization", "Bearer wrong".into()))),
            403,
            Some("forbidden"),
        )
        .await;
        // Same length as the real key, one byte off.
        let mut near = API_KEY.to_owned();
        near.pop();
        near.push('!');
        check(req(Some(("X-Api-Key", near))), 403, Some("forbidden")).await;
        check(req(Some(("X-Api-Key", API_KEY.into()))), 200, None).await;
        check(
            req(Some(("Authorization", format!("Bearer {API_KEY}")))),
            200,
            None,
        )
        .await;
        // A non-Bearer Authorization header is ignored in favour of X-Api-Key.
        let r =
            req(Some(("Authorization", "Basic Zm9vOmJhcg==".into()))).header("X-Api-Key", API_KEY);
        check(r, 200, None).await;
        // A Bearer key, when present, is the one checked.
        let r = req(Some(("Authorization", "Bearer wrong".into()))).header("X-Api-Key", API_KEY);
        check(r, 403, Some("forbidden")).await;
    }
    // Exactly the documented body.
    let b: Value = c
        .get(url(&node, "/v1/rooms/general/presence"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        b,
        json!({"error":{"code":"unauthorized","message":"missing API key"}})
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let node = GatewayProcess::start(&[]);
    let c = http();
    for path in [
        "/nope",
        "/v1",
        "/v1/rooms",
        "/v1/rooms/general",
        "/v1/rooms/general/members",
        "/v2/rooms/general/messages",
    ] {
        let r = c
            .get(url(&node, path))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .unwrap();
        let s = r.status();
        assert_error(s, &r.json().await.unwrap(), 404, "not_found");
    }
    // Without a key too: unknown routes are not an auth question.
    let r = c.get(url(&node, "/v1/whatever")).send().await.unwrap();
    let s = r.status();
    assert_error(s, &r.json().await.unwrap(), 404, "not_found");
    for (method, path) in [
        ("DELETE", "/v1/rooms/general/messages"),
        ("POST", "/v1/rooms/general/presence"),
        ("GET", "/v1/presence/query"),
        ("POST", "/healthz"),
    ] {
        let r = c
            .request(method.parse().unwrap(), url(&node, path))
            .header("X-Api-Key", API_KEY)
            .send()
            .await
            .unwrap();
        let s = r.status();
        assert_error(s, &r.json().await.unwrap(), 405, "method_not_allowed");
    }
}
