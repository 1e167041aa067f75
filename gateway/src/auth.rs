//! Authentication: client JWTs, dev identities, resume tokens, room ACLs and
//! tenant namespacing.

use std::time::{SystemTime, UNIX_EPOCH};

use chorus_protocol::CloseCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::Config;

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

/// Claims of a client JWT.
#[derive(Debug, Deserialize, Serialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
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
}

impl AuthError {
    pub fn close_code(&self) -> CloseCode {
        match self {
            AuthError::Missing | AuthError::Invalid(_) => CloseCode::Unauthorized,
            AuthError::Expired => CloseCode::TokenExpired,
        }
    }
}

/// User ids: 1 to 128 characters from `A-Z a-z 0-9 _ - . @` (no `:` or `/`, which
/// separate direct-room members and tenant namespaces).
pub fn valid_user(user: &str) -> bool {
    !user.is_empty()
        && user.len() <= 128
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.@".contains(&b))
}

/// Tenant ids follow the user id rules.
pub fn valid_tenant(tenant: &str) -> bool {
    valid_user(tenant)
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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

/// `tenant/name`, or `name` for the default tenant.
pub fn namespaced(tenant: Option<&str>, name: &str) -> String {
    match tenant {
        Some(t) => format!("{t}/{name}"),
        None => name.to_owned(),
    }
}

/// The public name from a namespaced key.
pub fn public_name(key: &str) -> &str {
    key.rsplit_once('/').map(|(_, n)| n).unwrap_or(key)
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
    dev: bool,
    resume_enc: EncodingKey,
    resume_dec: DecodingKey,
    resume_ttl_ms: i64,
    /// Required `aud` claim, if configured.
    audience: Option<String>,
}

/// Clock skew tolerated on `exp`, seconds (also applied to the in-connection expiry).
pub const LEEWAY_SECS: u64 = 5;

impl Auth {
    pub fn new(cfg: &Config) -> Result<Auth, String> {
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
            dev: cfg.dev_auth(),
            resume_enc: EncodingKey::from_secret(&secret),
            resume_dec: DecodingKey::from_secret(&secret),
            resume_ttl_ms: cfg.resume_ttl_ms as i64,
            audience: cfg.jwt_audience.clone(),
        })
    }

    /// Whether `?user=NAME` identities are accepted.
    pub fn dev(&self) -> bool {
        self.dev
    }

    /// Verify a client JWT.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            alg => self
                .public
                .as_ref()
                .and_then(|(k, a)| (*a == alg).then_some(k)),
        }
        .ok_or_else(|| AuthError::Invalid(format!("no key for algorithm {:?}", header.alg)))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = LEEWAY_SECS;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            // Identity providers often add `aud`; without a configured audience
            // it is not checked (rather than refusing every such token).
            None => validation.validate_aud = false,
        }
        let data = jsonwebtoken::decode::<Claims>(token, key, &validation).map_err(|e| match e
            .kind()
        {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let c = data.claims;
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
    pub fn authenticate(
        &self,
        token: Option<&str>,
        dev_user: Option<&str>,
    ) -> Result<Identity, AuthError> {
        if let Some(t) = token {
            return self.verify(t);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &str) -> Auth {
        let cfg = Config::from_args(["chorus", "--jwt-secret", secret]).unwrap();
        Auth::new(&cfg).unwrap()
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

    #[test]
    fn hs256_tokens_verify_and_expire() {
        let a = auth("s3cret");
        let id = a
            .verify(&token("s3cret", serde_json::json!({"sub":"alice","exp":in_an_hour(),"rooms":["team-*"],"tenant":"acme"})))
            .unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.room_key("team-a"), "acme/team-a");
        assert!(id.allows("team-a"));
        assert!(!id.allows("other"));
        assert_eq!(
            a.verify(&token(
                "s3cret",
                serde_json::json!({"sub":"alice","exp":1000})
            )),
            Err(AuthError::Expired)
        );
        assert!(matches!(
            a.verify(&token(
                "wrong",
                serde_json::json!({"sub":"alice","exp":in_an_hour()})
            )),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(a.verify("garbage"), Err(AuthError::Invalid(_))));
        assert!(matches!(
            a.verify(&token(
                "s3cret",
                serde_json::json!({"sub":"a/b","exp":in_an_hour()})
            )),
            Err(AuthError::Invalid(_))
        ));
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

    #[test]
    fn dev_identities_only_in_dev_mode() {
        let a = auth("s");
        assert_eq!(a.authenticate(None, Some("bob")), Err(AuthError::Missing));
        let cfg = Config::from_args(["chorus"]).unwrap();
        let d = Auth::new(&cfg).unwrap();
        assert_eq!(d.authenticate(None, Some("bob")).unwrap().user, "bob");
        assert!(d.authenticate(None, Some("b b")).is_err());
    }
}
