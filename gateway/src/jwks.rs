//! JSON Web Key Sets: the identity provider's public keys for client JWTs,
//! from a file or a URL.
//!
//! The set is cached and read again when a token names a key id (`kid`) that
//! is not in it (the provider rotated its keys) or when the cached copy is
//! older than its maximum age (so withdrawn keys stop being accepted). Reads
//! are rate-limited: at most one per `min_refetch`, whatever tokens arrive, so
//! tokens with made-up key ids cannot make every connection attempt a request
//! to the provider. A failed read keeps the keys already known.
//!
//! Only keys this gateway verifies are kept: RSA keys (RS256) and EC P-256 keys
//! (ES256) whose `use`, when given, is `sig` and whose `alg`, when given,
//! matches. Other keys are skipped (and logged), never an error of the set.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use tracing::{info, warn};

/// Largest JWKS document read, bytes.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Most keys kept from one set.
const MAX_KEYS: usize = 64;
/// Time one HTTP fetch of the set may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the key set comes from.
#[derive(Debug, Clone)]
pub(crate) enum JwksSource {
    /// A local file, e.g. a mounted secret (rotated by replacing the file).
    File(PathBuf),
    /// The identity provider's `jwks_uri`.
    Url(String),
}

/// One verification key of the set.
pub(crate) struct JwksKey {
    /// Its `kid`, if the set gave one.
    pub kid: Option<String>,
    /// The one algorithm it verifies.
    pub alg: Algorithm,
    pub key: DecodingKey,
}

/// The keys of one read of the set.
#[derive(Default)]
struct KeySet {
    keys: Vec<Arc<JwksKey>>,
    /// When they were read; `None` before the first successful read.
    read_at: Option<Instant>,
}

/// A cached, rate-limited JWKS.
pub(crate) struct Jwks {
    source: JwksSource,
    /// HTTP client for a URL source.
    http: Option<reqwest::Client>,
    /// The current keys, replaced whole by each successful read. A std lock:
    /// held only to clone or swap the `Arc`, never across an `.await`.
    keys: RwLock<Arc<KeySet>>,
    /// Serialises reads (one at a time: concurrent tokens with the same new
    /// `kid` wait for one read, then find the key) and holds when the last
    /// read started, for the rate limit. A tokio lock: held across the read.
    last_read: tokio::sync::Mutex<Option<Instant>>,
    /// Least time between two reads.
    min_refetch: Duration,
    /// Age after which the next token triggers a read.
    max_age: Duration,
}

impl Jwks {
    /// A key set from `source`. A file is read now (a missing or invalid file
    /// is a configuration error); a URL is fetched on the first token.
    pub(crate) fn new(
        source: JwksSource,
        min_refetch: Duration,
        max_age: Duration,
    ) -> Result<Jwks, String> {
        let mut initial = KeySet::default();
        let mut last_read = None;
        let http = match &source {
            JwksSource::File(path) => {
                let text = read_file_capped(path)
                    .map_err(|e| format!("cannot read JWKS file {}: {e}", path.display()))?;
                let keys =
                    parse_set(&text).map_err(|e| format!("JWKS file {}: {e}", path.display()))?;
                let now = Instant::now();
                initial = KeySet {
                    keys,
                    read_at: Some(now),
                };
                last_read = Some(now);
                None
            }
            JwksSource::Url(_) => Some(
                reqwest::Client::builder()
                    .timeout(FETCH_TIMEOUT)
                    .connect_timeout(FETCH_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::limited(3))
                    .build()
                    .map_err(|e| format!("cannot build the JWKS HTTP client: {e}"))?,
            ),
        };
        Ok(Jwks {
            source,
            http,
            keys: RwLock::new(Arc::new(initial)),
            last_read: tokio::sync::Mutex::new(last_read),
            min_refetch,
            max_age,
        })
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The keys that may have signed a token with this header: the key named
    /// by `kid` (or, without `kid`, every key) for `alg`. Reads the set again
    /// first when it is stale, and when no key matches (both rate-limited).
    /// Empty when no key matches even then.
    pub(crate) async fn keys_for(&self, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<JwksKey>> {
        let set = self.current();
        let stale = set.read_at.is_none_or(|t| t.elapsed() >= self.max_age);
        let set = if stale {
            self.reread().await;
            self.current()
        } else {
            set
        };
        let found = matching(&set, kid, alg);
        if !found.is_empty() {
            return found;
        }
        // An unknown key id: the provider may have rotated its keys.
        self.reread().await;
        matching(&self.current(), kid, alg)
    }

    /// Whether the set was ever read successfully (else no token can be
    /// checked against it: the provider is unreachable, not the token bad).
    pub(crate) fn ever_read(&self) -> bool {
        self.current().read_at.is_some()
    }

    /// Read the set again unless a read started less than `min_refetch` ago.
    async fn reread(&self) {
        let mut last = self.last_read.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refetch) {
            return;
        }
        *last = Some(Instant::now());
        match self.read().await {
            Ok(keys) => {
                metrics::counter!("chorus_jwks_reads_total", "result" => "ok").increment(1);
                info!(keys = keys.len(), source = ?self.source, "JWKS read");
                let set = KeySet {
                    keys,
                    read_at: Some(Instant::now()),
                };
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
            }
            Err(e) => {
                metrics::counter!("chorus_jwks_reads_total", "result" => "error").increment(1);
                warn!(error = %e, source = ?self.source, "JWKS read failed; keeping the known keys");
            }
        }
    }

    async fn read(&self) -> Result<Vec<Arc<JwksKey>>, String> {
        let text = match &self.source {
            JwksSource::File(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file_capped(&path))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?
            }
            JwksSource::Url(url) => {
                let http = self.http.as_ref().ok_or("no HTTP client")?;
                fetch_capped(http, url).await?
            }
        };
        parse_set(&text)
    }
}

/// The keys of `set` matching a token's `kid` and `alg`.
fn matching(set: &KeySet, kid: Option<&str>, alg: Algorithm) -> Vec<Arc<JwksKey>> {
    set.keys
        .iter()
        .filter(|k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
        .cloned()
        .collect()
}

fn read_file_capped(path: &std::path::Path) -> Result<String, String> {
    let len = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if len > MAX_JWKS_BYTES as u64 {
        return Err(format!("larger than {MAX_JWKS_BYTES} bytes"));
    }
    std::fs::read_to_string(path).map_err(|e| e.to_string())
}

/// GET the set, reading at most `MAX_JWKS_BYTES` of the body.
async fn fetch_capped(http: &reqwest::Client, url: &str) -> Result<String, String> {
    let mut resp = http
        .get(url)
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("GET {url}: HTTP {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("GET {url}: {e}"))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "GET {url}: body larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| format!("GET {url}: body is not UTF-8"))
}

/// The usable keys of a JWKS document. A document that is not a key set, or
/// has no usable key, is an error (the known keys are then kept).
fn parse_set(text: &str) -> Result<Vec<Arc<JwksKey>>, String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc = serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    for (i, raw) in doc.keys.into_iter().enumerate() {
        if keys.len() >= MAX_KEYS {
            warn!(
                max = MAX_KEYS,
                "JWKS has too many keys; the rest are ignored"
            );
            break;
        }
        match usable_key(raw) {
            Ok(k) => keys.push(Arc::new(k)),
            Err(why) => warn!(index = i, why, "JWKS key skipped"),
        }
    }
    if keys.is_empty() {
        return Err("no usable key (RSA for RS256 or EC P-256 for ES256)".into());
    }
    Ok(keys)
}

/// One JWK as a verification key, or why it is not one.
fn usable_key(raw: serde_json::Value) -> Result<JwksKey, String> {
    let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("not a JWK: {e}"))?;
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(other) => return Err(format!("use is {other:?}, not sig")),
    }
    if let Some(ops) = &jwk.common.key_operations
        && !ops.contains(&KeyOperations::Verify)
    {
        return Err("key_ops does not include verify".into());
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::EllipticCurve(p) => {
            return Err(format!("curve {:?} is not supported", p.curve));
        }
        _ => return Err("key type is not RSA or EC".into()),
    };
    if let Some(declared) = jwk.common.key_algorithm
        && declared != KeyAlgorithm::from(alg)
    {
        return Err(format!(
            "alg {declared} does not match the key type ({alg:?})"
        ));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key material: {e}"))?;
    Ok(JwksKey {
        kid: jwk.common.key_id.clone(),
        alg,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RSA_A: &str = include_str!("../../tests/fixtures/jwt/rsa-a.jwk.json");
    const EC_C: &str = include_str!("../../tests/fixtures/jwt/ec-c.jwk.json");

    #[test]
    fn keeps_rsa_and_p256_keys_and_skips_the_rest() {
        let doc = format!(
            r#"{{"keys":[{RSA_A},{EC_C},
                {{"kty":"oct","kid":"h","k":"c2VjcmV0"}},
                {{"kty":"RSA","kid":"enc","use":"enc","n":"AQAB","e":"AQAB"}},
                {{"kty":"EC","kid":"p384","crv":"P-384","x":"AA","y":"AA"}},
                "not a key"]}}"#
        );
        let keys = parse_set(&doc).unwrap();
        let got: Vec<(Option<&str>, Algorithm)> =
            keys.iter().map(|k| (k.kid.as_deref(), k.alg)).collect();
        assert_eq!(
            got,
            vec![(Some("a"), Algorithm::RS256), (Some("c"), Algorithm::ES256)]
        );
    }

    #[test]
    fn a_mismatched_alg_or_an_empty_set_is_refused() {
        let mut jwk: serde_json::Value = serde_json::from_str(RSA_A).unwrap();
        jwk["alg"] = "ES256".into();
        assert!(usable_key(jwk).is_err());
        assert!(parse_set(r#"{"keys":[]}"#).is_err());
        assert!(parse_set(r#"{"nokeys":1}"#).is_err());
        assert!(parse_set("[]").is_err());
    }

    #[test]
    fn matching_by_kid_and_alg() {
        let set = KeySet {
            keys: parse_set(&format!(r#"{{"keys":[{RSA_A},{EC_C}]}}"#)).unwrap(),
            read_at: Some(Instant::now()),
        };
        assert_eq!(matching(&set, Some("a"), Algorithm::RS256).len(), 1);
        assert_eq!(matching(&set, Some("a"), Algorithm::ES256).len(), 0);
        assert_eq!(matching(&set, Some("zz"), Algorithm::RS256).len(), 0);
        assert_eq!(matching(&set, None, Algorithm::ES256).len(), 1);
    }
}
