//! Configuration: every setting is a flag with an environment twin (`CHORUS_*`).
//!
//! `chorus --help` is the reference; the README has the same table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// chorus: a WebSocket chat and presence gateway.
///
/// With no flags it runs the embedded mode: one node on 127.0.0.1:8080, history in
/// SQLite under ./chorus-data, dev authentication (`?user=NAME`) because no JWT
/// key is configured, and a demo page at http://127.0.0.1:8080/.
#[derive(Debug, Clone, Parser)]
#[command(name = "chorus", version, about, long_about = None)]
pub struct Config {
    /// Address to listen on (HTTP API and WebSocket on the same port). Port 0 picks a free port.
    #[arg(long, env = "CHORUS_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for the embedded SQLite history.
    #[arg(long, env = "CHORUS_DATA_DIR", default_value = "./chorus-data")]
    pub data_dir: PathBuf,

    /// This node's id (appears in presence and logs). Generated when absent.
    #[arg(long, env = "CHORUS_NODE_ID")]
    pub node_id: Option<String>,

    /// Redis URL: switches on cluster mode (with --database-url).
    #[arg(long, env = "CHORUS_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// PostgreSQL URL for history in cluster mode (with --redis-url).
    #[arg(long, env = "CHORUS_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Prefix of every Redis key and channel (one cluster per prefix).
    #[arg(long, env = "CHORUS_REDIS_PREFIX", default_value = "chorus:")]
    pub redis_prefix: String,

    /// Room ownership lease in Redis, milliseconds: a dead owner's rooms move to
    /// another node within about this long.
    #[arg(long, env = "CHORUS_OWNER_LEASE_MS", default_value_t = 3_000)]
    pub owner_lease_ms: u64,

    /// Presence entries expire this long after their node's last refresh,
    /// milliseconds: a dead node's connections leave presence within it (4 s
    /// by default, guarantee 6). Nodes refresh every third of it and announce
    /// such leaves to the room at their next refresh after the expiry.
    #[arg(long, env = "CHORUS_PRESENCE_TTL_MS", default_value_t = 4_000)]
    pub presence_ttl_ms: u64,

    /// Time a send forwarded to the room's owner may take before it is retried, milliseconds.
    #[arg(long, env = "CHORUS_FORWARD_TIMEOUT_MS", default_value_t = 2_000)]
    pub forward_timeout_ms: u64,

    /// How often a node compares the tips of its subscribed rooms with what it
    /// delivered, to find messages lost at the end of a burst, milliseconds.
    #[arg(long, env = "CHORUS_TIP_POLL_MS", default_value_t = 1_000)]
    pub tip_poll_ms: u64,

    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "CHORUS_DATABASE_POOL", default_value_t = 16)]
    pub database_pool: u32,

    /// HS256 secret for client JWTs. A flag's value shows in the process list:
    /// prefer --jwt-secret-file or the environment variable.
    #[arg(long, env = "CHORUS_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

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

    /// Server API keys for the HTTP API (comma separated).
    #[arg(
        long = "api-key",
        env = "CHORUS_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Log format: `text` (human-readable) or `json`.
    #[arg(long, env = "CHORUS_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Server ping interval, milliseconds.
    #[arg(long, env = "CHORUS_HEARTBEAT_MS", default_value_t = 25_000)]
    pub heartbeat_ms: u64,

    /// Close a connection silent for this long, milliseconds.
    #[arg(long, env = "CHORUS_IDLE_TIMEOUT_MS", default_value_t = 60_000)]
    pub idle_timeout_ms: u64,

    /// Time allowed between the upgrade and `hello`, milliseconds.
    #[arg(long, env = "CHORUS_HANDSHAKE_TIMEOUT_MS", default_value_t = 10_000)]
    pub handshake_timeout_ms: u64,

    /// How long a resume token stays valid, milliseconds.
    #[arg(long, env = "CHORUS_RESUME_TTL_MS", default_value_t = 300_000)]
    pub resume_ttl_ms: u64,

    /// Delay before a disconnected user's presence leave is broadcast, milliseconds.
    #[arg(long, env = "CHORUS_PRESENCE_GRACE_MS", default_value_t = 5_000)]
    pub presence_grace_ms: u64,

    /// Largest inbound WebSocket frame, bytes.
    #[arg(long, env = "CHORUS_MAX_FRAME_BYTES", default_value_t = 65_536)]
    pub max_frame_bytes: u64,

    /// Largest message body + meta, bytes.
    #[arg(long, env = "CHORUS_MAX_MESSAGE_BYTES", default_value_t = 16_384)]
    pub max_message_bytes: u64,

    /// Rooms one connection may join.
    #[arg(long, env = "CHORUS_MAX_ROOMS", default_value_t = 100)]
    pub max_rooms: u64,

    /// Connections one user may hold on this node.
    #[arg(long, env = "CHORUS_MAX_CONNECTIONS_PER_USER", default_value_t = 32)]
    pub max_connections_per_user: u64,

    /// Connections this node accepts in total.
    #[arg(long, env = "CHORUS_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: u64,

    /// Sustained sends per second per connection.
    #[arg(long, env = "CHORUS_SENDS_PER_SEC", default_value_t = 50)]
    pub sends_per_sec: u64,

    /// Send burst per connection.
    #[arg(long, env = "CHORUS_SEND_BURST", default_value_t = 100)]
    pub send_burst: u64,

    /// Sustained sends per second per user, over all their connections (on every
    /// node in cluster mode: a Redis token bucket). 0: no per-user limit.
    #[arg(long, env = "CHORUS_USER_SENDS_PER_SEC", default_value_t = 100)]
    pub user_sends_per_sec: u64,

    /// Send burst per user (at least 1).
    #[arg(long, env = "CHORUS_USER_SEND_BURST", default_value_t = 200)]
    pub user_send_burst: u64,

    /// Sustained sends per second per tenant, over all its users and HTTP
    /// publishes (on every node in cluster mode). 0: no per-tenant limit.
    #[arg(long, env = "CHORUS_TENANT_SENDS_PER_SEC", default_value_t = 0)]
    pub tenant_sends_per_sec: u64,

    /// Send burst per tenant (at least 1). Default: twice --tenant-sends-per-sec.
    #[arg(long, env = "CHORUS_TENANT_SEND_BURST")]
    pub tenant_send_burst: Option<u64>,

    /// Sustained inbound frames per second per connection before closing 4004 (flood).
    #[arg(long, env = "CHORUS_FRAMES_PER_SEC", default_value_t = 200)]
    pub frames_per_sec: u64,

    /// Inbound frame burst per connection.
    #[arg(long, env = "CHORUS_FRAME_BURST", default_value_t = 400)]
    pub frame_burst: u64,

    /// Outbound items (frames, or one committed batch of a room) queued per
    /// connection before it is closed as slow (4002).
    #[arg(long, env = "CHORUS_OUTBOUND_QUEUE", default_value_t = 1024)]
    pub outbound_queue: usize,

    /// Outbound bytes queued per connection before it is closed as slow (4002).
    #[arg(long, env = "CHORUS_OUTBOUND_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub outbound_bytes: usize,

    /// Time a write to a client may block before it is closed as slow, milliseconds.
    #[arg(long, env = "CHORUS_WRITE_TIMEOUT_MS", default_value_t = 10_000)]
    pub write_timeout_ms: u64,

    /// Largest history page.
    #[arg(long, env = "CHORUS_MAX_HISTORY_PAGE", default_value_t = 100)]
    pub max_history_page: u64,

    /// Messages replayed on join/resume before reporting `recovered: false`.
    #[arg(long, env = "CHORUS_MAX_REPLAY", default_value_t = 10_000)]
    pub max_replay: u64,

    /// Time a send may wait for its commit before `timeout`, milliseconds.
    #[arg(long, env = "CHORUS_SEND_TIMEOUT_MS", default_value_t = 10_000)]
    pub send_timeout_ms: u64,

    /// Most messages in one group commit.
    #[arg(long, env = "CHORUS_BATCH_MAX", default_value_t = 1024)]
    pub batch_max: usize,

    /// Pending sends queued for the writer before `unavailable` is returned.
    #[arg(long, env = "CHORUS_WRITER_QUEUE", default_value_t = 65_536)]
    pub writer_queue: usize,

    /// Fan-out coalescing window, milliseconds (0: off). In a room with at
    /// least `--fanout-window-members` local connections, a message committed
    /// within this long of the room's previous fan-out is held and fanned out
    /// with the others of the window: each connection then writes them with one
    /// system call instead of one each. A room that was quiet for the window
    /// fans out at once (no added latency).
    #[arg(long, env = "CHORUS_FANOUT_WINDOW_MS", default_value_t = 20)]
    pub fanout_window_ms: u64,

    /// Local connections from which a room's fan-out is coalesced.
    #[arg(long, env = "CHORUS_FANOUT_WINDOW_MEMBERS", default_value_t = 100)]
    pub fanout_window_members: usize,

    /// Users online in a room above which the room is "hot": a join reply
    /// carries the online count instead of the user list, and join/leave
    /// diffs give way to one coalesced count per
    /// `--presence-count-interval-ms` (every member hearing of every other
    /// member would cost the square of the room size).
    #[arg(long, env = "CHORUS_PRESENCE_HOT_USERS", default_value_t = 1_000)]
    pub presence_hot_users: u64,

    /// How often a hot room's changed online count is broadcast, milliseconds.
    #[arg(
        long,
        env = "CHORUS_PRESENCE_COUNT_INTERVAL_MS",
        default_value_t = 1_000
    )]
    pub presence_count_interval_ms: u64,

    /// Interval between coalesced receipt broadcasts, milliseconds.
    #[arg(long, env = "CHORUS_RECEIPT_INTERVAL_MS", default_value_t = 100)]
    pub receipt_interval_ms: u64,

    /// Minimum interval between typing events per room per connection, milliseconds.
    #[arg(long, env = "CHORUS_TYPING_INTERVAL_MS", default_value_t = 1_000)]
    pub typing_interval_ms: u64,

    /// Retention: delete messages older than this many seconds (0 keeps forever).
    #[arg(long, env = "CHORUS_RETENTION_MAX_AGE_SECS", default_value_t = 0)]
    pub retention_max_age_secs: u64,

    /// Retention: keep at most this many messages per room (0 keeps all).
    #[arg(long, env = "CHORUS_RETENTION_MAX_COUNT", default_value_t = 0)]
    pub retention_max_count: u64,

    /// How often retention runs, seconds.
    #[arg(long, env = "CHORUS_RETENTION_INTERVAL_SECS", default_value_t = 3_600)]
    pub retention_interval_secs: u64,

    /// Deadline for a graceful drain on SIGTERM/SIGINT, milliseconds.
    #[arg(long, env = "CHORUS_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,

    /// Allowed browser origins (comma separated); empty allows any.
    #[arg(
        long = "allowed-origin",
        env = "CHORUS_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub allowed_origins: Vec<String>,

    /// Time for a request's headers to arrive, counted from the accept or from
    /// the end of the previous response on the connection (so it is also the
    /// keep-alive idle timeout), milliseconds.
    #[arg(long, env = "CHORUS_HTTP_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_header_timeout_ms: u64,

    /// Time for a request body (HTTP API) to arrive in full, milliseconds.
    #[arg(long, env = "CHORUS_HTTP_BODY_TIMEOUT_MS", default_value_t = 10_000)]
    pub http_body_timeout_ms: u64,

    /// Largest request head (request line and headers), bytes (at least 8192).
    #[arg(long, env = "CHORUS_MAX_HEADER_BYTES", default_value_t = 16_384)]
    pub max_header_bytes: u64,

    /// Connections that have not yet sent a complete HTTP request or (WebSocket)
    /// an authenticated `hello`, overall; at the bound the oldest is closed. Never
    /// more than a quarter of the process's open file limit.
    #[arg(long, env = "CHORUS_MAX_PENDING_CONNECTIONS", default_value_t = 4_096)]
    pub max_pending_connections: u64,

    /// Pending connections (see --max-pending-connections) from one source address.
    #[arg(long, env = "CHORUS_MAX_PENDING_PER_IP", default_value_t = 64)]
    pub max_pending_per_ip: u64,

    /// New connections accepted per second from one source address (0: no limit).
    #[arg(long, env = "CHORUS_ACCEPTS_PER_IP_PER_SEC", default_value_t = 50)]
    pub accepts_per_ip_per_sec: u64,

    /// Burst of new connections from one source address.
    #[arg(long, env = "CHORUS_ACCEPT_BURST_PER_IP", default_value_t = 200)]
    pub accept_burst_per_ip: u64,

    /// Source networks exempt from the per-IP limits (comma separated CIDRs or
    /// addresses; `none` for no exemption). The default exempts the local host,
    /// where a load balancer or reverse proxy forwarding every client would sit.
    #[arg(
        long,
        env = "CHORUS_PER_IP_EXEMPT",
        value_delimiter = ',',
        default_value = "127.0.0.0/8,::1"
    )]
    pub per_ip_exempt: Vec<String>,

    /// Largest presence `meta` a connection may give in `hello`, bytes of JSON
    /// text; a larger one is refused with close 4504.
    #[arg(long, env = "CHORUS_MAX_PRESENCE_META_BYTES", default_value_t = 1_024)]
    pub max_presence_meta_bytes: u64,

    /// Largest presence list in one reply, bytes of JSON: a `joined` whose list
    /// would be larger carries the count only (as for a hot room); a `presence`
    /// reply is cut to the users that fit and marked `truncated`.
    #[arg(
        long,
        env = "CHORUS_MAX_PRESENCE_REPLY_BYTES",
        default_value_t = 262_144
    )]
    pub max_presence_reply_bytes: u64,

    /// File holding the HS256 JWT secret (surrounding whitespace trimmed);
    /// keeps it out of the process list. Replaces --jwt-secret.
    #[arg(long, env = "CHORUS_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// File holding the resume-token secret (trimmed). Replaces --resume-secret.
    #[arg(long, env = "CHORUS_RESUME_SECRET_FILE")]
    pub resume_secret_file: Option<PathBuf>,

    /// File holding HTTP API keys, one per line (blank lines and `#` comments
    /// skipped). Added to --api-key.
    #[arg(long, env = "CHORUS_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// File holding the Redis URL (it may carry a password). Replaces --redis-url.
    #[arg(long, env = "CHORUS_REDIS_URL_FILE")]
    pub redis_url_file: Option<PathBuf>,

    /// File holding the PostgreSQL URL (it may carry a password). Replaces
    /// --database-url.
    #[arg(long, env = "CHORUS_DATABASE_URL_FILE")]
    pub database_url_file: Option<PathBuf>,

    /// Durable room memberships one user may hold (over all connections and
    /// devices); a join that would create one more is refused with `too_many_rooms`.
    #[arg(long, env = "CHORUS_MAX_MEMBERSHIPS_PER_USER", default_value_t = 1_000)]
    pub max_memberships_per_user: u64,

    /// Require the API key (as for `/v1`) on `/metrics`.
    #[arg(long, env = "CHORUS_METRICS_REQUIRE_API_KEY")]
    pub metrics_require_api_key: bool,

    /// Hidden, for the test suite: a room whose join (WebSocket) and history
    /// read (HTTP) panic on purpose, to prove that panics are contained.
    #[arg(long, env = "CHORUS_TEST_PANIC_ROOM", hide = true)]
    pub test_panic_room: Option<String>,
}

impl Config {
    /// Parse from `args` (first is the program name) and the environment.
    pub fn from_args<I, T>(args: I) -> Result<Config, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut cfg = Config::try_parse_from(args)?;
        cfg.allowed_origins = cfg
            .allowed_origins
            .iter()
            .map(|o| normalize_origin(o))
            .collect();
        cfg.read_secret_files().map_err(|e| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, format!("{e}\n"))
        })?;
        Ok(cfg)
    }

    /// Read the `--*-file` secrets into their settings.
    fn read_secret_files(&mut self) -> Result<(), String> {
        fn read(flag: &str, path: &std::path::Path) -> Result<String, String> {
            std::fs::read_to_string(path)
                .map(|t| t.trim().to_owned())
                .map_err(|e| format!("{flag} {}: {e}", path.display()))
        }
        if let Some(p) = &self.jwt_secret_file {
            self.jwt_secret = Some(read("--jwt-secret-file", p)?);
        }
        if let Some(p) = &self.resume_secret_file {
            self.resume_secret = Some(read("--resume-secret-file", p)?);
        }
        if let Some(p) = &self.redis_url_file {
            self.redis_url = Some(read("--redis-url-file", p)?);
        }
        if let Some(p) = &self.database_url_file {
            self.database_url = Some(read("--database-url-file", p)?);
        }
        if let Some(p) = &self.api_keys_file {
            let text = read("--api-keys-file", p)?;
            self.api_keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        Ok(())
    }

    /// Whether dev authentication is in force: asked for, or implied by having no
    /// JWT key on a loopback address.
    pub fn dev_auth(&self) -> bool {
        self.dev_insecure_auth || (!self.has_jwt_key() && self.listen.ip().is_loopback())
    }

    /// Whether any key for client JWTs is configured (secret, PEM key or JWKS).
    pub fn has_jwt_key(&self) -> bool {
        self.jwt_secret.is_some()
            || self.jwt_public_key.is_some()
            || self.jwt_jwks_file.is_some()
            || self.jwt_jwks_url.is_some()
    }

    /// Whether this node runs in cluster mode (Redis + PostgreSQL).
    pub fn cluster(&self) -> bool {
        self.redis_url.is_some()
    }

    /// Every problem with the configuration, all at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        match (&self.redis_url, &self.database_url) {
            (Some(_), None) | (None, Some(_)) => errs.push(
                "cluster mode needs both --redis-url and --database-url (PostgreSQL)".into(),
            ),
            (Some(_), Some(_)) if self.resume_secret.is_none() => errs.push(
                "cluster mode needs --resume-secret, shared by every node, so clients can resume on any node"
                    .into(),
            ),
            _ => {}
        }
        if self.cluster() && (self.owner_lease_ms < 300 || self.presence_ttl_ms < 300) {
            errs.push("--owner-lease-ms and --presence-ttl-ms must be at least 300".into());
        }
        if !self.has_jwt_key() && !self.dev_auth() {
            errs.push(format!(
                "no JWT key configured and {} is not a loopback address: set --jwt-secret, \
                 --jwt-public-key, --jwt-jwks-file or --jwt-jwks-url (or --dev-insecure-auth \
                 to accept ?user=NAME, insecure)",
                self.listen
            ));
        }
        if self.dev_insecure_auth && !self.listen.ip().is_loopback() {
            errs.push(format!(
                "--dev-insecure-auth lets anyone connect as any user; it is refused on {}, \
                 which is not a loopback address",
                self.listen
            ));
        }
        errs.extend(self.validate_jwt());
        if self.heartbeat_ms == 0 || self.idle_timeout_ms <= self.heartbeat_ms {
            errs.push("--idle-timeout-ms must be greater than --heartbeat-ms > 0".into());
        }
        for (name, v) in [
            ("--max-frame-bytes", self.max_frame_bytes),
            ("--max-message-bytes", self.max_message_bytes),
            ("--max-rooms", self.max_rooms),
            ("--sends-per-sec", self.sends_per_sec),
            ("--send-burst", self.send_burst),
            ("--frames-per-sec", self.frames_per_sec),
            ("--frame-burst", self.frame_burst),
            ("--max-history-page", self.max_history_page),
        ] {
            if v == 0 {
                errs.push(format!("{name} must be positive"));
            }
        }
        if self.outbound_queue == 0
            || self.outbound_bytes == 0
            || self.batch_max == 0
            || self.writer_queue == 0
        {
            errs.push(
                "--outbound-queue, --outbound-bytes, --batch-max and --writer-queue must be positive"
                    .into(),
            );
        }
        for net in &self.per_ip_exempt {
            if net != "none" && parse_net(net).is_none() {
                errs.push(format!(
                    "--per-ip-exempt: {net:?} is not an address or CIDR network"
                ));
            }
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            errs.push(format!(
                "--log-format must be text or json, not {}",
                self.log_format
            ));
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    /// The JWT settings' problems.
    fn validate_jwt(&self) -> Vec<String> {
        let mut errs = Vec::new();
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
        errs
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    pub fn presence_grace(&self) -> Duration {
        Duration::from_millis(self.presence_grace_ms)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    pub fn owner_lease(&self) -> Duration {
        Duration::from_millis(self.owner_lease_ms)
    }
    pub fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.presence_ttl_ms)
    }
    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.forward_timeout_ms)
    }
    pub fn tip_poll(&self) -> Duration {
        Duration::from_millis(self.tip_poll_ms.max(50))
    }
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms)
    }

    /// The networks exempt from the per-IP connection limits.
    pub fn per_ip_exempt_nets(&self) -> Vec<ipnet::IpNet> {
        self.per_ip_exempt
            .iter()
            .filter_map(|n| parse_net(n))
            .collect()
    }

    /// The limits announced in `welcome`.
    pub fn limits(&self) -> chorus_protocol::Limits {
        chorus_protocol::Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_message_bytes: self.max_message_bytes,
            max_rooms: self.max_rooms,
            sends_per_sec: self.sends_per_sec,
            send_burst: self.send_burst,
            max_history_page: self.max_history_page,
            max_replay: self.max_replay,
        }
    }
}

/// An origin as `scheme://host[:port]`, lower case, without a default port.
/// Text that is not of that form (`null`) is only lower-cased.
pub fn normalize_origin(origin: &str) -> String {
    let o = origin.trim().to_ascii_lowercase();
    let Some((scheme, rest)) = o.split_once("://") else {
        return o;
    };
    let rest = rest.trim_end_matches('/');
    let default = match scheme {
        "http" | "ws" => ":80",
        "https" | "wss" => ":443",
        _ => "",
    };
    let rest = match rest.strip_suffix(default) {
        Some(host) if !default.is_empty() && !host.is_empty() => host,
        _ => rest,
    };
    format!("{scheme}://{rest}")
}

/// A CIDR network, or one address as a network of one.
fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_demo() {
        let c = Config::from_args(["chorus"]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.dev_auth());
        c.validate().unwrap();
    }

    #[test]
    fn public_address_without_key_is_refused() {
        let c = Config::from_args(["chorus", "--listen", "0.0.0.0:8080"]).unwrap();
        assert!(!c.dev_auth());
        let errs = c.validate().unwrap_err();
        assert!(errs[0].contains("JWT"));
    }

    #[test]
    fn jwks_settings_are_checked_and_count_as_a_key() {
        let c = Config::from_args(["chorus", "--jwt-jwks-url", "http://idp/jwks"]).unwrap();
        assert!(!c.dev_auth(), "a JWKS is a JWT key: no implicit dev mode");
        c.validate().unwrap();
        let c = Config::from_args([
            "chorus",
            "--listen",
            "0.0.0.0:8080",
            "--jwt-jwks-file",
            "/k.json",
        ])
        .unwrap();
        c.validate().unwrap();
        let c = Config::from_args([
            "chorus",
            "--jwt-jwks-file",
            "/k.json",
            "--jwt-jwks-url",
            "ftp://idp/jwks",
            "--jwt-issuer",
            "",
            "--jwt-jwks-min-refetch-secs",
            "0",
        ])
        .unwrap();
        assert_eq!(c.validate().unwrap_err().len(), 4);
    }

    #[test]
    fn all_errors_reported_at_once() {
        let c = Config::from_args([
            "chorus",
            "--max-rooms",
            "0",
            "--heartbeat-ms",
            "100",
            "--idle-timeout-ms",
            "50",
        ])
        .unwrap();
        assert_eq!(c.validate().unwrap_err().len(), 2);
    }
}
