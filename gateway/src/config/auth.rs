//! Authentication: client JWT keys and claims, dev identities, resume
//! tokens, HTTP API keys.

use std::path::PathBuf;

use clap::Args;

/// Who may connect and call the HTTP API.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Authentication")]
pub struct AuthConfig {
    /// HS256 secret for client JWTs. A flag's value shows in the process list:
    /// prefer --jwt-secret-file or the environment variable.
    #[arg(long, env = "CHORUS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// File holding the HS256 JWT secret (surrounding whitespace trimmed);
    /// keeps it out of the process list. Replaces --jwt-secret.
    #[arg(long, env = "CHORUS_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key file (RSA for RS256 or EC P-256 for ES256) for client JWTs.
    #[arg(long, env = "CHORUS_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,

    /// Required `aud` claim of client JWTs: a token must name it (as a string,
    /// or as one element of an array of strings). When absent, `aud` is not checked.
    #[arg(long, env = "CHORUS_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Required `iss` claim of client JWTs (a string equal to this). When absent,
    /// `iss` is not checked. With a JWKS, the key set is this issuer's.
    #[arg(long, env = "CHORUS_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// JWKS file (`{"keys":[...]}`, RSA keys for RS256, EC P-256 keys for
    /// ES256) for client JWTs; read at start and again when a token names an
    /// unknown `kid`.
    #[arg(long, env = "CHORUS_JWT_JWKS_FILE")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// JWKS URL (http:// or https://) of the identity provider; fetched on the
    /// first token, cached, and fetched again when a token names an unknown
    /// `kid` or the cache is older than --jwt-jwks-max-age-secs.
    #[arg(long, env = "CHORUS_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// Least time between two JWKS fetches, seconds: tokens with unknown key
    /// ids cannot make the node hammer the identity provider.
    #[arg(long, env = "CHORUS_JWT_JWKS_MIN_REFETCH_SECS", default_value_t = 10)]
    pub jwt_jwks_min_refetch_secs: u64,

    /// Age after which the cached JWKS is fetched again on the next token
    /// (so keys the identity provider withdrew stop being accepted), seconds.
    #[arg(long, env = "CHORUS_JWT_JWKS_MAX_AGE_SECS", default_value_t = 3_600)]
    pub jwt_jwks_max_age_secs: u64,

    /// Send `refresh_needed` this many seconds before a connection's token
    /// expires (halfway through its remaining lifetime when that is shorter
    /// than twice this). 0: never.
    #[arg(long, env = "CHORUS_REFRESH_HINT_SECS", default_value_t = 30)]
    pub refresh_hint_secs: u64,

    /// Accept `?user=NAME` without a token. INSECURE: for the local demo only.
    /// On by default when no JWT key is configured and the listen address is loopback.
    #[arg(long, env = "CHORUS_DEV_INSECURE_AUTH")]
    pub dev_insecure_auth: bool,

    /// Secret that signs resume tokens; nodes of one cluster must share it.
    /// Random per process when absent (resume then works only on this process).
    /// Prefer --resume-secret-file or the environment variable to the flag.
    #[arg(long, env = "CHORUS_RESUME_SECRET", hide_env_values = true)]
    pub resume_secret: Option<String>,

    /// File holding the resume-token secret (trimmed). Replaces --resume-secret.
    #[arg(long, env = "CHORUS_RESUME_SECRET_FILE")]
    pub resume_secret_file: Option<PathBuf>,

    /// How long a resume token stays valid, milliseconds.
    #[arg(long, env = "CHORUS_RESUME_TTL_MS", default_value_t = 300_000)]
    pub resume_ttl_ms: u64,

    /// Server API keys for the HTTP API (comma separated).
    #[arg(
        long = "api-key",
        env = "CHORUS_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// File holding HTTP API keys, one per line (blank lines and `#` comments
    /// skipped). Added to --api-key.
    #[arg(long, env = "CHORUS_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// Require the API key (as for `/v1`) on `/metrics`.
    #[arg(long, env = "CHORUS_METRICS_REQUIRE_API_KEY")]
    pub metrics_require_api_key: bool,
}

impl AuthConfig {
    /// Whether any key for client JWTs is configured (secret, PEM key or JWKS).
    pub fn has_jwt_key(&self) -> bool {
        self.jwt_secret.is_some()
            || self.jwt_public_key.is_some()
            || self.jwt_jwks_file.is_some()
            || self.jwt_jwks_url.is_some()
    }

    /// The JWT settings' problems.
    pub(super) fn validate(&self, errs: &mut Vec<String>) {
        if self.jwt_jwks_file.is_some() && self.jwt_jwks_url.is_some() {
            errs.push("give at most one of --jwt-jwks-file and --jwt-jwks-url".into());
        }
        if let Some(url) = &self.jwt_jwks_url {
            let https = url.starts_with("https://");
            if !https && !url.starts_with("http://") {
                errs.push(format!(
                    "--jwt-jwks-url must be an http:// or https:// URL, not {url}"
                ));
            }
        }
        for (name, v) in [
            ("--jwt-audience", &self.jwt_audience),
            ("--jwt-issuer", &self.jwt_issuer),
        ] {
            if v.as_deref().is_some_and(str::is_empty) {
                errs.push(format!("{name} must not be empty"));
            }
        }
        if self.jwt_jwks_min_refetch_secs == 0 {
            errs.push("--jwt-jwks-min-refetch-secs must be positive".into());
        }
    }
}
