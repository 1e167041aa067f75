//! Authentication end to end, through real sockets against a real `chorus`
//! process: JWT claim rules (`aud`, `iss`, `nbf`, `iat`, fractional `exp`),
//! RS256/ES256 keys from a JWKS file and from a JWKS URL (served by a small
//! HTTP server in the test, with key rotation and the refetch rate limit),
//! the close at `exp`, and in-band token refresh (`refresh`, `refreshed`,
//! `refresh_needed`).
//!
//! Timing assertions compare the wall clock with `exp` (JWT times are wall
//! clock); their margins allow for a loaded machine.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chorus_protocol::ErrorCode;
use chorus_protocol::client::{Client, ClientConfig, ClientError, Event, dev_url, new_cid};
use chorus_tests::{GatewayProcess, JWT_SECRET, now_secs, text, token};
use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Generous upper bound for anything the server should do "soon".
const T: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------
// Tokens and keys
// ---------------------------------------------------------------------------

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/jwt")
        .join(name)
}

fn rsa_key(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&std::fs::read(fixture(name)).expect("fixture")).expect("RSA key")
}

fn ec_key(name: &str) -> EncodingKey {
    EncodingKey::from_ec_pem(&std::fs::read(fixture(name)).expect("fixture")).expect("EC key")
}

/// The public JWK of a fixture key (`a`, `b`: RSA; `c`: EC P-256).
fn jwk(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(name)).expect("fixture")).expect("JWK")
}

fn jwks(keys: &[&str]) -> String {
    json!({ "keys": keys.iter().map(|k| jwk(k)).collect::<Vec<_>>() }).to_string()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

/// An HS256 token with exactly these claims.
fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        None,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        claims,
    )
}

/// RS256 with fixture key `a` or `b`, naming `kid`.
fn rs256(key: &str, kid: Option<&str>, claims: &Value) -> String {
    sign(
        Algorithm::RS256,
        kid,
        &rsa_key(&format!("rsa-{key}.key.pem")),
        claims,
    )
}

fn es256(kid: Option<&str>, claims: &Value) -> String {
    sign(Algorithm::ES256, kid, &ec_key("ec-c.key.pem"), claims)
}

fn claims(user: &str) -> Value {
    json!({"sub": user, "exp": now_secs() + 3600})
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Client helpers
// ---------------------------------------------------------------------------

fn cfg(node: &GatewayProcess, jwt: &str) -> ClientConfig {
    ClientConfig::new(node.ws_url()).with_token(jwt)
}

/// Connect with this token; must be accepted.
async fn accepted(node: &GatewayProcess, jwt: &str, what: &str) -> Client {
    match Client::connect(cfg(node, jwt)).await {
        Ok(c) => c,
        Err(e) => panic!("{what}: refused: {e:?}"),
    }
}

/// Connect with this token; must be refused with a close frame: its code and reason.
async fn refused(node: &GatewayProcess, jwt: &str, what: &str) -> (u16, String) {
    match Client::connect(cfg(node, jwt)).await {
        Ok(c) => panic!("{what}: accepted: {:?}", c.welcome()),
        Err(ClientError::Closed {
            code: Some(code),
            reason,
        }) => (code, reason),
        Err(e) => panic!("{what}: expected a close frame, got {e:?}"),
    }
}

async fn assert_unauthorized(node: &GatewayProcess, jwt: &str, what: &str) {
    let (code, reason) = refused(node, jwt, what).await;
    assert_eq!(code, 4501, "{what}: {reason}");
    assert!(reason.starts_with("unauthorized"), "{what}: {reason}");
}

/// Wait for the end of the connection: its close code, and when it came (Unix ms).
async fn wait_closed(c: &mut Client) -> (Option<u16>, u64) {
    match c
        .wait_for(T, |e| matches!(e, Event::Closed { .. }))
        .await
        .expect("no close in time")
    {
        Event::Closed { code, .. } => (code, now_ms()),
        _ => unreachable!(),
    }
}

/// Wait for `refresh_needed`: its `exp`, and when it came (Unix ms).
async fn wait_refresh_needed(c: &mut Client) -> (u64, u64) {
    match c
        .wait_for(T, |e| matches!(e, Event::RefreshNeeded { .. }))
        .await
        .expect("no refresh_needed in time")
    {
        Event::RefreshNeeded { exp } => (exp, now_ms()),
        _ => unreachable!(),
    }
}

fn server_code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Server { code, .. }) => code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

/// `at` (Unix ms) lies within `[from, from + slack]`.
fn assert_near(what: &str, at: u64, from: u64, slack: u64) {
    assert!(
        at + 100 >= from && at <= from + slack,
        "{what}: at {at}, expected {from} .. {} (off by {} ms)",
        from + slack,
        at as i64 - from as i64
    );
}

// ---------------------------------------------------------------------------
// A JWKS endpoint
// ---------------------------------------------------------------------------

/// A minimal HTTP server answering every request with the current JWKS, and
/// counting requests.
struct JwksServer {
    url: String,
    body: Arc<Mutex<String>>,
    /// Answer 503 instead of the set (the provider is down).
    down: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl JwksServer {
    async fn start(body: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let body = Arc::new(Mutex::new(body));
        let hits = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (b, h, d) = (body.clone(), hits.clone(), down.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (b, h, d) = (b.clone(), h.clone(), d.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16384 {
                        match tokio::time::timeout(T, sock.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => return,
                        }
                    }
                    h.fetch_add(1, Ordering::SeqCst);
                    let body = b.lock().unwrap().clone();
                    let status = if d.load(Ordering::SeqCst) {
                        "503 Service Unavailable"
                    } else {
                        "200 OK"
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        JwksServer {
            url,
            body,
            down,
            hits,
            task,
        }
    }

    fn serve(&self, body: String) {
        *self.body.lock().unwrap() = body;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ===========================================================================
// Claims
// ===========================================================================

#[tokio::test]
async fn a_configured_audience_is_required_as_a_string_or_an_array_of_strings() {
    let node = GatewayProcess::start(&["--jwt-audience", "chat"]);
    let exp = now_secs() + 3600;
    for (what, aud) in [
        ("string", json!("chat")),
        ("array containing it", json!(["billing", "chat"])),
    ] {
        let jwt = hs256(&json!({"sub": "alice", "exp": exp, "aud": aud}));
        accepted(&node, &jwt, what).await.ping().await.unwrap();
    }
    let missing = hs256(&json!({"sub": "alice", "exp": exp}));
    assert_unauthorized(&node, &missing, "aud missing").await;
    for (what, aud) in [
        ("null", json!(null)),
        ("number", json!(42)),
        ("object", json!({"chat": true})),
        ("bool", json!(true)),
        ("other string", json!("billing")),
        ("empty array", json!([])),
        ("array without it", json!(["billing"])),
        ("array with a non-string", json!(["chat", 1])),
    ] {
        let jwt = hs256(&json!({"sub": "alice", "exp": exp, "aud": aud}));
        assert_unauthorized(&node, &jwt, what).await;
    }
}

#[tokio::test]
async fn without_a_configured_audience_aud_is_ignored() {
    let node = GatewayProcess::start(&[]);
    let exp = now_secs() + 3600;
    for aud in [json!("anything"), json!(7), json!({"x": 1})] {
        let jwt = hs256(&json!({"sub": "alice", "exp": exp, "aud": aud}));
        accepted(&node, &jwt, &aud.to_string()).await;
    }
}

#[tokio::test]
async fn a_configured_issuer_is_required_and_must_match() {
    let node = GatewayProcess::start(&["--jwt-issuer", "https://idp.test"]);
    let exp = now_secs() + 3600;
    let ok = hs256(&json!({"sub": "alice", "exp": exp, "iss": "https://idp.test"}));
    accepted(&node, &ok, "matching iss")
        .await
        .ping()
        .await
        .unwrap();
    for (what, iss) in [
        ("null", json!(null)),
        ("other issuer", json!("https://evil.test")),
        ("array", json!(["https://idp.test"])),
        ("number", json!(1)),
    ] {
        let jwt = hs256(&json!({"sub": "alice", "exp": exp, "iss": iss}));
        assert_unauthorized(&node, &jwt, what).await;
    }
    let missing = hs256(&json!({"sub": "alice", "exp": exp}));
    assert_unauthorized(&node, &missing, "iss missing").await;
}

#[tokio::test]
async fn nbf_and_iat_in_the_future_are_refused_beyond_the_leeway() {
    let node = GatewayProcess::start(&[]);
    let now = now_secs();
    let exp = now + 3600;
    let nbf = hs256(&json!({"sub": "alice", "exp": exp, "nbf": now + 60}));
    assert_unauthorized(&node, &nbf, "nbf in a minute").await;
    let iat = hs256(&json!({"sub": "alice", "exp": exp, "iat": now + 60}));
    assert_unauthorized(&node, &iat, "iat in a minute").await;
    let bad = hs256(&json!({"sub": "alice", "exp": exp, "nbf": "soon"}));
    assert_unauthorized(&node, &bad, "nbf not a number").await;
    // Within the 5 s leeway, and in the past: accepted.
    let skew = hs256(&json!({"sub": "alice", "exp": exp, "nbf": now + 2, "iat": now + 2}));
    accepted(&node, &skew, "nbf/iat within the leeway").await;
    let past = hs256(&json!({"sub": "alice", "exp": exp, "nbf": now - 60, "iat": now - 60}));
    accepted(&node, &past, "nbf/iat in the past").await;
}

#[tokio::test]
async fn a_fractional_exp_counts_its_whole_seconds() {
    let node = GatewayProcess::start(&[]);
    // A fraction is accepted, and dropped: the close comes at the whole second
    // (rounding would put it a second later).
    let whole = now_secs() + 3;
    let jwt = hs256(&json!({"sub": "alice", "exp": whole as f64 + 0.999}));
    let mut alice = accepted(&node, &jwt, "fractional exp").await;
    alice.ping().await.unwrap();
    let (code, at) = wait_closed(&mut alice).await;
    assert_eq!(code, Some(4502));
    assert_near("close", at, whole * 1000, 900);
    // Negative or non-numeric: refused.
    for exp in [json!(-5), json!("9999999999"), json!(-1.5)] {
        let jwt = hs256(&json!({"sub": "alice", "exp": exp}));
        assert_unauthorized(&node, &jwt, &exp.to_string()).await;
    }
}

// ===========================================================================
// Expiry during the connection
// ===========================================================================

#[tokio::test]
async fn close_4502_comes_at_exp_not_after_the_connect_leeway() {
    let node = GatewayProcess::start(&["--refresh-hint-secs", "0"]);
    let exp = now_secs() + 2;
    let mut alice = accepted(&node, &token_exp("alice", exp), "2 s token").await;
    alice.join("r", None).await.unwrap();
    let (code, at) = wait_closed(&mut alice).await;
    assert_eq!(code, Some(4502));
    assert_near("close 4502", at, exp * 1000, 1000);
}

fn token_exp(user: &str, exp: u64) -> String {
    hs256(&json!({"sub": user, "exp": exp}))
}

// ===========================================================================
// JWKS
// ===========================================================================

#[tokio::test]
async fn jwks_url_keys_rotate_and_refetches_are_rate_limited() {
    let idp = JwksServer::start(jwks(&["rsa-a.jwk.json"])).await;
    let node = GatewayProcess::start(&[
        "--jwt-jwks-url",
        &idp.url,
        "--jwt-jwks-min-refetch-secs",
        "2",
    ]);
    let interval = Duration::from_millis(2300);
    assert_eq!(idp.hits(), 0, "fetched on the first token, not before");
    let a = rs256("a", Some("a"), &claims("alice"));
    accepted(&node, &a, "kid a").await.ping().await.unwrap();
    assert_eq!(idp.hits(), 1);
    // The provider rotates to key b (a withdrawn).
    idp.serve(jwks(&["rsa-b.jwk.json"]));
    accepted(&node, &a, "kid a, cached").await;
    assert_eq!(idp.hits(), 1, "a known kid needs no fetch");
    let b = rs256("b", Some("b"), &claims("bob"));
    // Less than the interval after the last read: not read again, refused.
    assert_unauthorized(&node, &b, "kid b within the interval").await;
    assert_eq!(idp.hits(), 1, "rate-limited");
    tokio::time::sleep(interval).await;
    accepted(&node, &b, "kid b").await.ping().await.unwrap();
    assert_eq!(idp.hits(), 2, "the unknown kid b made one fetch");
    // Key a is gone from the set now; unknown key ids are refused and, however
    // many arrive, make no fetch within the interval.
    assert_unauthorized(&node, &a, "kid a after the rotation").await;
    let forged = rs256("b", Some("zz"), &claims("mallory"));
    for _ in 0..5 {
        assert_unauthorized(&node, &forged, "unknown kid").await;
    }
    assert_eq!(idp.hits(), 2, "no fetch within the interval");
    tokio::time::sleep(interval).await;
    assert_unauthorized(&node, &forged, "unknown kid after the interval").await;
    assert_unauthorized(&node, &forged, "unknown kid again").await;
    assert_eq!(idp.hits(), 3, "one fetch per interval");
    // A known key still works throughout.
    accepted(&node, &b, "kid b, cached").await;
    assert_eq!(idp.hits(), 3);
}

#[tokio::test]
async fn an_unreachable_jwks_closes_4006_until_it_answers() {
    let idp = JwksServer::start(jwks(&["rsa-a.jwk.json"])).await;
    idp.down.store(true, Ordering::SeqCst);
    let node = GatewayProcess::start(&[
        "--jwt-jwks-url",
        &idp.url,
        "--jwt-jwks-min-refetch-secs",
        "1",
    ]);
    let a = rs256("a", Some("a"), &claims("alice"));
    // A refresh needing the key set: retryable `unavailable`.
    let bob = accepted(&node, &token("bob", 3600, None, None), "HS256").await;
    let r = bob.refresh(&rs256("a", Some("a"), &claims("bob"))).await;
    assert!(
        matches!(
            &r,
            Err(ClientError::Server {
                code: ErrorCode::Unavailable,
                retryable: true,
                ..
            })
        ),
        "{r:?}"
    );
    // The provider's fault, not the token's: reconnect later.
    let (code, reason) = refused(&node, &a, "provider down").await;
    assert_eq!(code, 4006, "{reason}");
    assert!(reason.starts_with("unavailable"), "{reason}");
    assert_eq!(idp.hits(), 1);
    idp.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    accepted(&node, &a, "provider back")
        .await
        .ping()
        .await
        .unwrap();
    assert_eq!(idp.hits(), 2);
    // Once read, a failing provider keeps the known keys in force.
    idp.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let unknown = rs256("a", Some("zz"), &claims("mallory"));
    assert_unauthorized(&node, &unknown, "unknown kid, provider down").await;
    assert_eq!(idp.hits(), 3);
    accepted(&node, &a, "known key, provider down").await;
}

#[tokio::test]
async fn jwks_keys_older_than_max_age_are_read_again() {
    let idp = JwksServer::start(jwks(&["rsa-a.jwk.json"])).await;
    let node = GatewayProcess::start(&[
        "--jwt-jwks-url",
        &idp.url,
        "--jwt-jwks-min-refetch-secs",
        "1",
        "--jwt-jwks-max-age-secs",
        "2",
    ]);
    let a = rs256("a", Some("a"), &claims("alice"));
    accepted(&node, &a, "kid a").await;
    idp.serve(jwks(&["rsa-b.jwk.json"]));
    accepted(&node, &a, "kid a, cached").await;
    assert_eq!(idp.hits(), 1);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // The cache is stale: read again, and the withdrawn key a stops working.
    assert_unauthorized(&node, &a, "kid a after max age").await;
    assert_eq!(idp.hits(), 2);
}

#[tokio::test]
async fn jwks_with_an_issuer_is_that_issuers_and_other_issuers_make_no_fetch() {
    let idp = JwksServer::start(jwks(&["rsa-a.jwk.json"])).await;
    let node = GatewayProcess::start(&[
        "--jwt-jwks-url",
        &idp.url,
        "--jwt-issuer",
        "https://idp.test",
    ]);
    let exp = now_secs() + 3600;
    let evil = rs256(
        "b",
        Some("unknown"),
        &json!({"sub": "mallory", "exp": exp, "iss": "https://evil.test"}),
    );
    assert_unauthorized(&node, &evil, "another issuer").await;
    let none = rs256("a", Some("a"), &json!({"sub": "mallory", "exp": exp}));
    assert_unauthorized(&node, &none, "no issuer").await;
    assert_eq!(
        idp.hits(),
        0,
        "tokens of another issuer never fetch the key set"
    );
    let good = rs256(
        "a",
        Some("a"),
        &json!({"sub": "alice", "exp": exp, "iss": "https://idp.test"}),
    );
    accepted(&node, &good, "the issuer's token")
        .await
        .ping()
        .await
        .unwrap();
    assert_eq!(idp.hits(), 1);
}

#[tokio::test]
async fn jwks_file_verifies_rs256_and_es256_by_kid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks(&["rsa-a.jwk.json", "ec-c.jwk.json"])).unwrap();
    let node = GatewayProcess::start(&["--jwt-jwks-file", path.to_str().unwrap()]);
    let rs = rs256("a", Some("a"), &claims("alice"));
    accepted(&node, &rs, "RS256 kid a")
        .await
        .ping()
        .await
        .unwrap();
    let es = es256(Some("c"), &claims("carol"));
    accepted(&node, &es, "ES256 kid c")
        .await
        .ping()
        .await
        .unwrap();
    let no_kid = rs256("a", None, &claims("alice"));
    accepted(&node, &no_kid, "RS256 without kid").await;
    // A key id of the other algorithm, a signature by another key under a
    // known id, an unknown id: refused.
    assert_unauthorized(&node, &es256(Some("a"), &claims("carol")), "ES256 kid a").await;
    assert_unauthorized(&node, &rs256("b", Some("a"), &claims("eve")), "key b as a").await;
    assert_unauthorized(&node, &rs256("b", Some("b"), &claims("eve")), "kid b").await;
    // HS256 with the secret still works beside the JWKS.
    accepted(&node, &token("dave", 3600, None, None), "HS256").await;
}

// ===========================================================================
// Refresh
// ===========================================================================

#[tokio::test]
async fn refresh_extends_the_connection_past_the_old_exp() {
    let node = GatewayProcess::start(&[]);
    let old_exp = now_secs() + 3;
    let mut alice = accepted(&node, &token_exp("alice", old_exp), "3 s token").await;
    alice.join("r", None).await.unwrap();
    let new_exp = now_secs() + 3600;
    assert_eq!(
        alice.refresh(&token_exp("alice", new_exp)).await.unwrap(),
        new_exp
    );
    // Well past the old exp: still connected, and working.
    tokio::time::sleep(Duration::from_millis(old_exp * 1000 + 2000 - now_ms())).await;
    assert!(!alice.is_closed(), "closed: {:?}", alice.close_info());
    alice.ping().await.unwrap();
    let ack = alice
        .send("r", &new_cid(), text("still here"), None)
        .await
        .unwrap();
    assert_eq!(ack.seq, 1);
    // A refresh to a shorter token re-arms the close for its exp.
    let short = now_secs() + 2;
    assert_eq!(
        alice.refresh(&token_exp("alice", short)).await.unwrap(),
        short
    );
    let (code, at) = wait_closed(&mut alice).await;
    assert_eq!(code, Some(4502));
    assert_near("close at the new exp", at, short * 1000, 1000);
}

#[tokio::test]
async fn refresh_needed_comes_hint_secs_before_exp_and_again_for_the_new_token() {
    let node = GatewayProcess::start(&["--refresh-hint-secs", "2"]);
    let exp = now_secs() + 6;
    let mut alice = accepted(&node, &token_exp("alice", exp), "6 s token").await;
    let (hinted, at) = wait_refresh_needed(&mut alice).await;
    assert_eq!(hinted, exp);
    assert_near("refresh_needed", at, (exp - 2) * 1000, 900);
    // Refreshing in time: the next hint is for the new token, 2 s before its exp.
    let exp2 = now_secs() + 5;
    assert_eq!(
        alice.refresh(&token_exp("alice", exp2)).await.unwrap(),
        exp2
    );
    let (hinted, at) = wait_refresh_needed(&mut alice).await;
    assert_eq!(hinted, exp2);
    assert_near("second refresh_needed", at, (exp2 - 2) * 1000, 900);
    // Past the first token's exp and still connected.
    assert!(now_ms() > exp * 1000);
    alice.ping().await.unwrap();
    // A token shorter than twice the hint is hinted halfway through.
    let start = now_ms();
    let exp3 = now_secs() + 3;
    alice.refresh(&token_exp("alice", exp3)).await.unwrap();
    let (hinted, at) = wait_refresh_needed(&mut alice).await;
    assert_eq!(hinted, exp3);
    let halfway = start + (exp3 * 1000 - start) / 2;
    assert_near("halfway refresh_needed", at, halfway, 900);
}

#[tokio::test]
async fn refresh_with_another_users_or_a_bad_token_is_refused_and_changes_nothing() {
    let node = GatewayProcess::start(&[]);
    let exp = now_secs() + 4;
    let jwt = hs256(&json!({"sub": "alice", "exp": exp, "tenant": "acme"}));
    let mut alice = accepted(&node, &jwt, "alice@acme").await;
    let in_an_hour = now_secs() + 3600;
    let bob = hs256(&json!({"sub": "bob", "exp": in_an_hour, "tenant": "acme"}));
    assert_eq!(server_code(alice.refresh(&bob).await), ErrorCode::Forbidden);
    let other_tenant = hs256(&json!({"sub": "alice", "exp": in_an_hour, "tenant": "other"}));
    assert_eq!(
        server_code(alice.refresh(&other_tenant).await),
        ErrorCode::Forbidden
    );
    let no_tenant = hs256(&json!({"sub": "alice", "exp": in_an_hour}));
    assert_eq!(
        server_code(alice.refresh(&no_tenant).await),
        ErrorCode::Forbidden
    );
    let expired = hs256(&json!({"sub": "alice", "exp": now_secs() - 60, "tenant": "acme"}));
    assert_eq!(
        server_code(alice.refresh(&expired).await),
        ErrorCode::Unauthorized
    );
    assert_eq!(
        server_code(alice.refresh("garbage").await),
        ErrorCode::Unauthorized
    );
    // The connection stays, with its old token: it still closes at the old exp.
    alice.ping().await.unwrap();
    let (code, at) = wait_closed(&mut alice).await;
    assert_eq!(code, Some(4502));
    assert_near("close at the old exp", at, exp * 1000, 1000);
}

#[tokio::test]
async fn refresh_on_the_wire_errors_carry_the_request_and_id() {
    let node = GatewayProcess::start(&[]);
    let url = format!(
        "{}?access_token={}",
        node.ws_url(),
        token("alice", 3600, None, None)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    put(json!({"op": "hello"}), &mut ws).await;
    assert_eq!(next(&mut ws).await["op"], "welcome");
    let exp = now_secs() + 3600;
    put(
        json!({"op": "refresh", "id": 7, "token": token_exp("alice", exp)}),
        &mut ws,
    )
    .await;
    assert_eq!(
        next(&mut ws).await,
        json!({"op": "refreshed", "id": 7, "exp": exp})
    );
    put(json!({"op": "refresh", "id": 8, "token": "nope"}), &mut ws).await;
    let e = next(&mut ws).await;
    assert_eq!(
        (
            &e["op"],
            &e["id"],
            &e["request"],
            &e["code"],
            &e["retryable"]
        ),
        (
            &json!("error"),
            &json!(8),
            &json!("refresh"),
            &json!("unauthorized"),
            &json!(false)
        ),
        "{e}"
    );
    put(json!({"op": "refresh", "id": 9}), &mut ws).await;
    let e = next(&mut ws).await;
    assert_eq!(
        (&e["id"], &e["code"]),
        (&json!(9), &json!("bad_request")),
        "{e}"
    );
}

async fn put<S>(v: Value, ws: &mut tokio_tungstenite::WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(WsMessage::Text(v.to_string().into()))
        .await
        .unwrap();
}

/// The next frame that is not a server ping, as JSON.
async fn next<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        let m = tokio::time::timeout(T, ws.next())
            .await
            .expect("no frame in time")
            .expect("stream ended")
            .expect("read failed");
        if let WsMessage::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
            if v["op"] != "ping" {
                return v;
            }
        }
    }
}

#[tokio::test]
async fn refresh_dropping_a_rooms_permission_leaves_that_room() {
    let node = GatewayProcess::start(&[]);
    let exp = now_secs() + 3600;
    let jwt = hs256(&json!({"sub": "alice", "exp": exp, "rooms": ["keep", "lose-*"]}));
    let mut alice = accepted(&node, &jwt, "alice").await;
    for r in ["keep", "lose-1", "lose-2"] {
        alice.join(r, None).await.unwrap();
    }
    let bob = node.connect("bob").await;
    for r in ["keep", "lose-1", "lose-2"] {
        bob.join(r, None).await.unwrap();
    }
    let narrower = hs256(&json!({"sub": "alice", "exp": exp, "rooms": ["keep"]}));
    assert_eq!(alice.refresh(&narrower).await.unwrap(), exp);
    // Before the reply: one forbidden error per room left, naming it.
    let mut left = Vec::new();
    while let Some(ev) = alice.try_next_event() {
        if let Event::Error {
            code,
            request,
            room,
            retryable,
            ..
        } = ev
        {
            assert_eq!(
                (code, request.as_deref(), retryable),
                (ErrorCode::Forbidden, Some("refresh"), false)
            );
            left.extend(room);
        }
    }
    assert_eq!(left, ["lose-1", "lose-2"]);
    assert!(!alice.cursors().contains_key("lose-1"), "cursor dropped");
    // Nothing more from the rooms left; the kept room still delivers.
    bob.send("lose-1", &new_cid(), text("gone"), None)
        .await
        .unwrap();
    bob.send("lose-2", &new_cid(), text("gone"), None)
        .await
        .unwrap();
    bob.send("keep", &new_cid(), text("here"), None)
        .await
        .unwrap();
    let got = alice
        .wait_for(T, |e| matches!(e, Event::Msg(m) if m.room == "keep"))
        .await
        .expect("the kept room's message");
    assert!(matches!(got, Event::Msg(m) if m.seq == 1));
    let later = alice
        .wait_for(Duration::from_millis(1500), |e| matches!(e, Event::Msg(_)))
        .await;
    assert!(
        later.is_none(),
        "a message arrived from a room left: {later:?}"
    );
    // The room cannot be used or joined again with the new token.
    let r = alice.send("lose-1", &new_cid(), text("x"), None).await;
    assert_eq!(server_code(r), ErrorCode::NotJoined);
    assert_eq!(
        server_code(alice.join("lose-1", None).await),
        ErrorCode::Forbidden
    );
    // Bob sees alice leave the room's presence.
    let users: Vec<String> = bob
        .presence("lose-1")
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.user)
        .collect();
    assert_eq!(users, ["bob"]);
}

#[tokio::test]
async fn refresh_in_development_mode_is_invalid_state() {
    let node = GatewayProcess::start(&[]);
    let dev = Client::connect(ClientConfig::new(dev_url(&node.ws_url(), "dev")))
        .await
        .unwrap();
    let r = dev.refresh(&token("dev", 3600, None, None)).await;
    assert_eq!(server_code(r), ErrorCode::InvalidState);
    dev.ping().await.unwrap();
}
