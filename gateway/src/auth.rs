//! Authentication: client JWTs, dev identities, resume tokens, room ACLs and
//! tenant namespacing.

use std::time::Duration;

use chorus_protocol::CloseCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::config::AuthConfig;
use crate::jwks::{Jwks, JwksSource};
use crate::names::{namespaced, valid_tenant, valid_user};

/// Who a connection or API call acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id (`sub`).
    pub user: String,
    /// Tenant namespace; `None` is the default tenant.
    pub tenant: Option<String>,
    /// Room allow-list patterns; `None` allows every room.
    pub rooms: Option<Vec<String>>,
    /// Token expiry, Unix seconds; `None` for dev identities.
    pub exp: Option<u64>,
}

/// Claims of a client JWT, as this gateway reads them.
///
/// NumericDate claims (`exp`, `nbf`, `iat`) are JSON numbers of seconds; RFC
/// 7519 allows a fraction, which is dropped (the whole seconds count). `aud`
/// and `iss` are kept as JSON so that their types can be checked when they
/// are required.
#[derive(Debug, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(deserialize_with = "numeric_date")]
    pub exp: u64,
    #[serde(default, deserialize_with = "opt_numeric_date")]
    pub nbf: Option<u64>,
    #[serde(default, deserialize_with = "opt_numeric_date")]
    pub iat: Option<u64>,
    /// `null` reads as absent.
    #[serde(default)]
    pub aud: Option<serde_json::Value>,
    #[serde(default)]
    pub iss: Option<serde_json::Value>,
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A NumericDate: a non-negative JSON number of seconds, its fraction dropped.
fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative number of seconds")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("a NumericDate must not be negative"))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u64, E> {
            // `u64::MAX as f64` rounds up to 2^64, which is out of range.
            if v.is_finite() && v >= 0.0 && v < u64::MAX as f64 {
                Ok(v.floor() as u64)
            } else {
                Err(E::custom(
                    "a NumericDate must be a non-negative finite number",
                ))
            }
        }
    }
    d.deserialize_any(V)
}

fn opt_numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct W(#[serde(deserialize_with = "numeric_date")] u64);
    Ok(Option::<W>::deserialize(d)?.map(|W(v)| v))
}

/// What an unverified token says about its issuer: read before a JWKS lookup,
/// so that tokens of another issuer never make the node fetch the key set.
#[derive(Deserialize)]
struct IssuerOnly {
    #[serde(default)]
    iss: Option<serde_json::Value>,
}

/// Why authentication failed; each maps to a close code and an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    /// The identity provider's key set has never been read (it did not
    /// answer): the token cannot be checked yet. Not the client's fault.
    #[error("key set unavailable")]
    KeysUnavailable,
}

impl AuthError {
    pub fn close_code(&self) -> CloseCode {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => CloseCode::Unauthorized,
            AuthError::Expired => CloseCode::TokenExpired,
            AuthError::KeysUnavailable => CloseCode::Unavailable,
        }
    }
}

impl Identity {
    /// Whether this identity may join/read `room` (a valid room name).
    pub fn allows(&self, room: &str) -> bool {
        if let Some(rest) = room.strip_prefix("dm:") {
            // Direct rooms admit exactly their two members, whatever the patterns say.
            let mut parts = rest.split(':');
            let (a, b) = (parts.next(), parts.next());
            return parts.next().is_none()
                && matches!((a, b), (Some(a), Some(b)) if a <= b && (a == self.user || b == self.user));
        }
        match &self.rooms {
            None => true,
            Some(patterns) => patterns.iter().any(|p| pattern_matches(p, room)),
        }
    }

    /// The store/hub key of a room: rooms of different tenants never meet.
    pub fn room_key(&self, room: &str) -> String {
        namespaced(self.tenant.as_deref(), room)
    }

    /// The store key of this user.
    pub fn user_key(&self) -> String {
        namespaced(self.tenant.as_deref(), &self.user)
    }
}

/// `*` matches everything, `prefix*` matches by prefix, anything else exactly.
fn pattern_matches(pattern: &str, room: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => room.starts_with(prefix),
        None => pattern == room,
    }
}

/// Claims of a resume token.
#[derive(Debug, Serialize, Deserialize)]
struct ResumeClaims {
    /// Session id.
    sid: String,
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tnt: Option<String>,
    /// Expiry, Unix milliseconds (finer than `exp`, which is seconds).
    exp_ms: i64,
}

/// A verified resume token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeGrant {
    pub session: String,
    pub user: String,
    pub tenant: Option<String>,
}

/// Verifies client tokens and signs resume tokens.
pub struct Auth {
    hs256: Option<DecodingKey>,
    public: Option<(DecodingKey, Algorithm)>,
    /// The identity provider's key set (`--jwt-jwks-file` / `--jwt-jwks-url`).
    jwks: Option<Jwks>,
    dev: bool,
    resume_enc: EncodingKey,
    resume_dec: DecodingKey,
    resume_ttl_ms: i64,
    /// Required `aud` claim, if configured.
    audience: Option<String>,
    /// Required `iss` claim, if configured.
    issuer: Option<String>,
}

/// Clock skew tolerated on `exp`, `nbf` and `iat` when a token is presented
/// (`hello`, `refresh`), seconds. Not applied once connected: the connection
/// ends at `exp` itself.
pub const LEEWAY_SECS: u64 = 5;

/// Unix time in seconds.
fn now_secs() -> u64 {
    (now_ms() / 1000).max(0) as u64
}

impl Auth {
    /// Keys and settings from `cfg`; `dev` accepts `?user=NAME` identities
    /// (`Config::dev_auth`).
    pub fn new(cfg: &AuthConfig, dev: bool) -> Result<Auth, String> {
        let hs256 = cfg
            .jwt_secret
            .as_ref()
            .map(|s| DecodingKey::from_secret(s.as_bytes()));
        let public = match &cfg.jwt_public_key {
            None => None,
            Some(path) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("cannot read --jwt-public-key {}: {e}", path.display()))?;
                if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                    Some((k, Algorithm::RS256))
                } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                    Some((k, Algorithm::ES256))
                } else {
                    return Err(format!(
                        "{} is neither an RSA nor an EC public key in PEM",
                        path.display()
                    ));
                }
            }
        };
        let source = match (&cfg.jwt_jwks_file, &cfg.jwt_jwks_url) {
            (Some(path), _) => Some(JwksSource::File(path.clone())),
            (None, Some(url)) => Some(JwksSource::Url(url.clone())),
            (None, None) => None,
        };
        let jwks = source
            .map(|s| {
                Jwks::new(
                    s,
                    Duration::from_secs(cfg.jwt_jwks_min_refetch_secs),
                    Duration::from_secs(cfg.jwt_jwks_max_age_secs),
                )
            })
            .transpose()?;
        let secret = match &cfg.resume_secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                let mut b = vec![0u8; 32];
                rand::fill(&mut b[..]);
                b
            }
        };
        Ok(Auth {
            hs256,
            public,
            jwks,
            dev,
            resume_enc: EncodingKey::from_secret(&secret),
            resume_dec: DecodingKey::from_secret(&secret),
            resume_ttl_ms: cfg.resume_ttl_ms as i64,
            audience: cfg.jwt_audience.clone(),
            issuer: cfg.jwt_issuer.clone(),
        })
    }

    /// Whether `?user=NAME` identities are accepted.
    pub fn dev(&self) -> bool {
        self.dev
    }

    /// Verify a client JWT: its signature (the header's `alg` picks the key:
    /// the secret for HS256; for RS256/ES256 the PEM key, then the JWKS key
    /// named by `kid`), then its claims.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let alg = header.alg;
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // `aud` and `iss` are checked in `check_claims`, with their types.
        validation.validate_aud = false;
        let decode = |key: &DecodingKey| jsonwebtoken::decode::<Claims>(token, key, &validation);
        let result = match alg {
            Algorithm::HS256 => match &self.hs256 {
                Some(key) => decode(key),
                None => return Err(no_key(alg)),
            },
            Algorithm::RS256 | Algorithm::ES256 => {
                let pem = self
                    .public
                    .as_ref()
                    .and_then(|(k, a)| (*a == alg).then_some(k));
                let pem_result = pem.map(decode);
                match (pem_result, &self.jwks) {
                    (Some(r), _) if !is_bad_signature(&r) => r,
                    (pem_result, Some(jwks)) => {
                        self.check_issuer_unverified(token)?;
                        let mut result = pem_result;
                        let keys = jwks.keys_for(header.kid.as_deref(), alg).await;
                        if keys.is_empty() && result.is_none() && !jwks.ever_read() {
                            return Err(AuthError::KeysUnavailable);
                        }
                        for k in keys {
                            let r = decode(&k.key);
                            let done = !is_bad_signature(&r);
                            result = Some(r);
                            if done {
                                break;
                            }
                        }
                        match result {
                            Some(r) => r,
                            None => {
                                return Err(AuthError::Invalid(match header.kid {
                                    Some(kid) => format!("unknown key id '{kid}'"),
                                    None => format!("no key for algorithm {alg:?}"),
                                }));
                            }
                        }
                    }
                    (Some(r), None) => r,
                    (None, None) => return Err(no_key(alg)),
                }
            }
            _ => return Err(no_key(alg)),
        };
        let data = result.map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::Invalid("token not valid yet (nbf)".into()),
            _ => AuthError::Invalid(e.to_string()),
        })?;
        self.check_claims(data.claims, now_secs())
    }

    /// With a configured issuer, refuse a token naming another one before any
    /// key lookup (the signature is checked afterwards, with the claims).
    fn check_issuer_unverified(&self, token: &str) -> Result<(), AuthError> {
        let Some(want) = &self.issuer else {
            return Ok(());
        };
        let claims: IssuerOnly = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        check_issuer(want, claims.iss.as_ref())
    }

    /// The claim rules, on a token whose signature is valid.
    fn check_claims(&self, c: Claims, now: u64) -> Result<Identity, AuthError> {
        if c.exp.saturating_add(LEEWAY_SECS) < now {
            return Err(AuthError::Expired);
        }
        if c.nbf
            .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_SECS))
        {
            return Err(AuthError::Invalid("token not valid yet (nbf)".into()));
        }
        if c.iat
            .is_some_and(|iat| iat > now.saturating_add(LEEWAY_SECS))
        {
            return Err(AuthError::Invalid(
                "token issued in the future (iat)".into(),
            ));
        }
        if let Some(want) = &self.audience {
            check_audience(want, c.aud.as_ref())?;
        }
        if let Some(want) = &self.issuer {
            check_issuer(want, c.iss.as_ref())?;
        }
        if !valid_user(&c.sub) {
            return Err(AuthError::Invalid(
                "sub must be 1-128 chars of A-Z a-z 0-9 _ - . @".into(),
            ));
        }
        if let Some(t) = &c.tenant
            && !valid_tenant(t)
        {
            return Err(AuthError::Invalid("invalid tenant".into()));
        }
        Ok(Identity {
            user: c.sub,
            tenant: c.tenant,
            rooms: c.rooms,
            exp: Some(c.exp),
        })
    }

    /// Resolve a connection's identity: a token wins; else a dev `?user=`.
    pub async fn authenticate(
        &self,
        token: Option<&str>,
        dev_user: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if let Some(t) = token {
            return self.verify(t).await;
        }
        match dev_user {
            Some(u) if self.dev => {
                if valid_user(u) {
                    Ok(Identity {
                        user: u.to_owned(),
                        tenant: None,
                        rooms: None,
                        exp: None,
                    })
                } else {
                    Err(AuthError::Invalid(
                        "user must be 1-128 chars of A-Z a-z 0-9 _ - . @".into(),
                    ))
                }
            }
            _ => Err(AuthError::Missing),
        }
    }

    /// Sign a resume token for a session.
    #[allow(
        clippy::expect_used,
        reason = "HMAC signing of plain claims cannot fail"
    )]
    pub fn resume_token(&self, session: &str, id: &Identity) -> String {
        let claims = ResumeClaims {
            sid: session.to_owned(),
            sub: id.user.clone(),
            tnt: id.tenant.clone(),
            exp_ms: now_ms() + self.resume_ttl_ms,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.resume_enc)
            .expect("HS256 signing cannot fail")
    }

    /// Verify a resume token; `None` if forged, expired or malformed.
    pub fn verify_resume(&self, token: &str) -> Option<ResumeGrant> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.validate_exp = false;
        validation.required_spec_claims.clear();
        let data =
            jsonwebtoken::decode::<ResumeClaims>(token, &self.resume_dec, &validation).ok()?;
        let c = data.claims;
        (c.exp_ms > now_ms()).then_some(ResumeGrant {
            session: c.sid,
            user: c.sub,
            tenant: c.tnt,
        })
    }
}

/// The error for a token whose `alg` has no configured key.
fn no_key(alg: Algorithm) -> AuthError {
    AuthError::Invalid(format!("no key for algorithm {alg:?}"))
}

/// Whether a decode failed on the signature (so another key may verify it).
fn is_bad_signature<T>(r: &jsonwebtoken::errors::Result<T>) -> bool {
    matches!(r, Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature))
}

/// A required audience: `aud` is that string, or an array of strings one of
/// which is it. Absent, `null`, another type or a mixed array is refused.
fn check_audience(want: &str, aud: Option<&serde_json::Value>) -> Result<(), AuthError> {
    use serde_json::Value;
    let ok = match aud {
        Some(Value::String(a)) => a == want,
        Some(Value::Array(items)) => {
            items.iter().all(Value::is_string) && items.iter().any(|a| a == want)
        }
        _ => false,
    };
    if ok {
        return Ok(());
    }
    Err(AuthError::Invalid(match aud {
        None => "missing aud".into(),
        Some(Value::String(_)) => "wrong aud".into(),
        Some(Value::Array(items)) if items.iter().all(Value::is_string) => "wrong aud".into(),
        Some(_) => "aud must be a string or an array of strings".into(),
    }))
}

/// A required issuer: `iss` is exactly that string.
fn check_issuer(want: &str, iss: Option<&serde_json::Value>) -> Result<(), AuthError> {
    match iss {
        Some(serde_json::Value::String(i)) if i == want => Ok(()),
        None => Err(AuthError::Invalid("missing iss".into())),
        Some(serde_json::Value::String(_)) => Err(AuthError::Invalid("wrong iss".into())),
        Some(_) => Err(AuthError::Invalid("iss must be a string".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    fn auth(secret: &str) -> Auth {
        let cfg = Config::from_args(["chorus", "--jwt-secret", secret]).unwrap();
        Auth::new(&cfg.auth, cfg.dev_auth()).unwrap()
    }

    fn token(secret: &str, claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn in_an_hour() -> u64 {
        (now_ms() / 1000) as u64 + 3600
    }

    #[tokio::test]
    async fn hs256_tokens_verify_and_expire() {
        let a = auth("s3cret");
        let id = a
            .verify(&token("s3cret", serde_json::json!({"sub":"alice","exp":in_an_hour(),"rooms":["team-*"],"tenant":"acme"})))
            .await
            .unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.room_key("team-a"), "acme/team-a");
        assert!(id.allows("team-a"));
        assert!(!id.allows("other"));
        assert_eq!(
            a.verify(&token(
                "s3cret",
                serde_json::json!({"sub":"alice","exp":1000})
            ))
            .await,
            Err(AuthError::Expired)
        );
        assert!(matches!(
            a.verify(&token(
                "wrong",
                serde_json::json!({"sub":"alice","exp":in_an_hour()})
            ))
            .await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            a.verify("garbage").await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            a.verify(&token(
                "s3cret",
                serde_json::json!({"sub":"a/b","exp":in_an_hour()})
            ))
            .await,
            Err(AuthError::Invalid(_))
        ));
    }

    /// An HS256 node with an audience and an issuer configured.
    fn strict_auth() -> Auth {
        let cfg = Config::from_args([
            "chorus",
            "--jwt-secret",
            "s",
            "--jwt-audience",
            "chat",
            "--jwt-issuer",
            "https://idp.example",
        ])
        .unwrap();
        Auth::new(&cfg.auth, cfg.dev_auth()).unwrap()
    }

    #[tokio::test]
    async fn audience_and_issuer_are_required_with_their_types() {
        let a = strict_auth();
        let exp = in_an_hour();
        let iss = "https://idp.example";
        let ok =
            |aud: serde_json::Value| serde_json::json!({"sub":"u","exp":exp,"iss":iss,"aud":aud});
        for good in [
            serde_json::json!("chat"),
            serde_json::json!(["other", "chat"]),
        ] {
            assert!(
                a.verify(&token("s", ok(good.clone()))).await.is_ok(),
                "{good}"
            );
        }
        for bad in [
            serde_json::json!(null),
            serde_json::json!(7),
            serde_json::json!({"chat": true}),
            serde_json::json!([]),
            serde_json::json!(["other"]),
            serde_json::json!(["chat", 1]),
            serde_json::json!("CHAT"),
        ] {
            assert!(
                matches!(
                    a.verify(&token("s", ok(bad.clone()))).await,
                    Err(AuthError::Invalid(_))
                ),
                "{bad}"
            );
        }
        let no_aud = serde_json::json!({"sub":"u","exp":exp,"iss":iss});
        assert!(a.verify(&token("s", no_aud)).await.is_err());
        for bad_iss in [
            serde_json::json!(null),
            serde_json::json!("https://evil.example"),
            serde_json::json!([iss]),
        ] {
            let c = serde_json::json!({"sub":"u","exp":exp,"aud":"chat","iss":bad_iss});
            assert!(a.verify(&token("s", c)).await.is_err(), "{bad_iss}");
        }
        // Without configured values, aud and iss of any type are ignored.
        let c = serde_json::json!({"sub":"u","exp":exp,"aud":7,"iss":{"x":1}});
        assert!(auth("s").verify(&token("s", c)).await.is_ok());
    }

    #[tokio::test]
    async fn time_claims_nbf_iat_and_fractions() {
        let a = auth("s");
        let now = (now_ms() / 1000) as u64;
        let v = |c: serde_json::Value| token("s", c);
        let future = now + LEEWAY_SECS + 60;
        let nbf = v(serde_json::json!({"sub":"u","exp":now+3600,"nbf":future}));
        assert!(matches!(a.verify(&nbf).await, Err(AuthError::Invalid(m)) if m.contains("nbf")));
        let iat = v(serde_json::json!({"sub":"u","exp":now+3600,"iat":future}));
        assert!(matches!(a.verify(&iat).await, Err(AuthError::Invalid(m)) if m.contains("iat")));
        // Within the leeway both pass.
        let skew = v(serde_json::json!({"sub":"u","exp":now+3600,"nbf":now+2,"iat":now+2}));
        assert!(a.verify(&skew).await.is_ok());
        // A fractional exp is floored.
        let frac = v(serde_json::json!({"sub":"u","exp":(now + 100) as f64 + 0.9}));
        assert_eq!(a.verify(&frac).await.unwrap().exp, Some(now + 100));
        for bad in [
            serde_json::json!(-1),
            serde_json::json!("9999999999"),
            serde_json::json!(-0.5),
        ] {
            let t = v(serde_json::json!({"sub":"u","exp":bad}));
            assert!(
                matches!(a.verify(&t).await, Err(AuthError::Invalid(_))),
                "{bad}"
            );
        }
        let huge = v(serde_json::json!({"sub":"u","exp":u64::MAX}));
        assert_eq!(a.verify(&huge).await.unwrap().exp, Some(u64::MAX));
    }

    #[test]
    fn direct_rooms_admit_their_two_members() {
        let id = Identity {
            user: "bob".into(),
            tenant: None,
            rooms: Some(vec![]),
            exp: None,
        };
        assert!(id.allows("dm:alice:bob"));
        assert!(!id.allows("dm:alice:carol"));
        assert!(
            !id.allows("dm:bob:alice"),
            "unsorted ids are not the canonical room"
        );
        assert!(!id.allows("general"));
    }

    #[test]
    fn resume_tokens_round_trip_and_reject_forgery() {
        let a = auth("x");
        let id = Identity {
            user: "u".into(),
            tenant: Some("t".into()),
            rooms: None,
            exp: None,
        };
        let t = a.resume_token("sess", &id);
        let g = a.verify_resume(&t).unwrap();
        assert_eq!(g.session, "sess");
        assert_eq!(g.tenant.as_deref(), Some("t"));
        assert!(
            auth("x").verify_resume(&t).is_none(),
            "random per-process secret"
        );
        assert!(a.verify_resume("nope").is_none());
    }

    #[tokio::test]
    async fn dev_identities_only_in_dev_mode() {
        let a = auth("s");
        assert_eq!(
            a.authenticate(None, Some("bob")).await,
            Err(AuthError::Missing)
        );
        let cfg = Config::from_args(["chorus"]).unwrap();
        let d = Auth::new(&cfg.auth, cfg.dev_auth()).unwrap();
        assert_eq!(d.authenticate(None, Some("bob")).await.unwrap().user, "bob");
        assert!(d.authenticate(None, Some("b b")).await.is_err());
    }
}
