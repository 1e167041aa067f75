//! RS256 / ES256 client tokens

use chorus_protocol::client::{Client, ClientConfig};
use chorus_tests::{GatewayProcess, now_secs};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;

use super::support::*;

fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private key (PKCS#8 PEM) and its public key (SPKI PEM) under `dir`.
fn keypair(dir: &Path, name: &str, algorithm: &[&str]) -> (Vec<u8>, String) {
    let private = dir.join(format!("{name}.key.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let private_s = private.to_str().unwrap();
    let mut args = vec!["genpkey"];
    args.extend_from_slice(algorithm);
    args.extend(["-out", private_s]);
    openssl(&args);
    openssl(&[
        "pkey",
        "-in",
        private_s,
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    (
        std::fs::read(&private).unwrap(),
        public.to_str().unwrap().to_owned(),
    )
}

fn signed(alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, key).expect("sign")
}

async fn public_key_tokens_work(alg: jsonwebtoken::Algorithm, algorithm: &[&str]) {
    use jsonwebtoken::EncodingKey;
    let dir = tempfile::tempdir().unwrap();
    let (private, public) = keypair(dir.path(), "signer", algorithm);
    let (other_private, _) = keypair(dir.path(), "other", algorithm);
    let from_pem = |pem: &[u8]| match alg {
        jsonwebtoken::Algorithm::RS256 => EncodingKey::from_rsa_pem(pem).expect("RSA key"),
        _ => EncodingKey::from_ec_pem(pem).expect("EC key"),
    };
    let key = from_pem(&private);
    let other = from_pem(&other_private);
    let node = GatewayProcess::start(&["--jwt-public-key", &public]);
    let exp = now_secs() + 3600;
    let claims = json!({"sub":"alice","exp":exp,"rooms":["team-*"],"tenant":"acme"});

    // In hello.token.
    let jwt = signed(alg, &key, &claims);
    let alice = Client::connect(ClientConfig::new(node.ws_url()).with_token(&jwt))
        .await
        .expect("connect with signed token");
    assert_eq!(
        (
            alice.welcome().user.as_str(),
            alice.welcome().tenant.as_deref()
        ),
        ("alice", Some("acme"))
    );
    alice.join("team-a", None).await.unwrap();
    let e = alice.join("general", None).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(chorus_protocol::ErrorCode::Forbidden),
        "rooms claim applies"
    );
    // In the query string and the Authorization header.
    let c = Client::connect(ClientConfig::new(format!(
        "{}?access_token={jwt}",
        node.ws_url()
    )))
    .await
    .unwrap();
    assert_eq!(c.welcome().user, "alice");
    let c = Client::connect(ClientConfig::new(node.ws_url()).with_bearer(&jwt))
        .await
        .unwrap();
    assert_eq!(c.welcome().user, "alice");
    // The HTTP API sees the tenant's room.
    let (_, b) = get_json(&node, "/v1/rooms/team-a/presence?tenant=acme").await;
    assert_eq!(b["count"], 1);

    // Signed with another key: 4501 after hello.
    let forged = signed(alg, &other, &claims);
    let e = Client::connect(ClientConfig::new(node.ws_url()).with_token(&forged))
        .await
        .unwrap_err();
    assert_eq!(e.close_code(), Some(4501), "{e:?}");
    // Expired, signed with the right key: 4502.
    let old = signed(alg, &key, &json!({"sub":"alice","exp":now_secs() - 60}));
    let e = Client::connect(ClientConfig::new(node.ws_url()).with_token(&old))
        .await
        .unwrap_err();
    assert_eq!(e.close_code(), Some(4502), "{e:?}");
    // Missing exp, or a sub outside the user-id rules: 4501.
    for bad in [
        json!({"sub":"alice"}),
        json!({"sub":"a/b","exp":exp}),
        json!({"exp":exp}),
    ] {
        let t = signed(alg, &key, &bad);
        let e = Client::connect(ClientConfig::new(node.ws_url()).with_token(&t))
            .await
            .unwrap_err();
        assert_eq!(e.close_code(), Some(4501), "{bad}: {e:?}");
    }
    // HS256 (the harness's secret) keeps working next to the public key.
    let c = node.connect("bob").await;
    assert_eq!(c.welcome().user, "bob");
    drop(alice);
}

#[tokio::test]
async fn rs256_tokens_verify_against_the_public_key() {
    public_key_tokens_work(
        jsonwebtoken::Algorithm::RS256,
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    )
    .await;
}

#[tokio::test]
async fn es256_tokens_verify_against_the_public_key() {
    public_key_tokens_work(
        jsonwebtoken::Algorithm::ES256,
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    )
    .await;
}

#[tokio::test]
async fn a_token_for_the_other_algorithm_is_refused() {
    use jsonwebtoken::{Algorithm, EncodingKey};
    let dir = tempfile::tempdir().unwrap();
    let (_, rsa_public) = keypair(
        dir.path(),
        "rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    let (ec_private, _) = keypair(
        dir.path(),
        "ec",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
    );
    let node = GatewayProcess::start(&["--jwt-public-key", &rsa_public]);
    let t = signed(
        Algorithm::ES256,
        &EncodingKey::from_ec_pem(&ec_private).unwrap(),
        &json!({"sub":"alice","exp":now_secs() + 60}),
    );
    let e = Client::connect(ClientConfig::new(node.ws_url()).with_token(&t))
        .await
        .unwrap_err();
    assert_eq!(e.close_code(), Some(4501), "{e:?}");
}
