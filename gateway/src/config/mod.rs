//! Configuration: every setting is a flag with an environment twin (`CHORUS_*`).
//!
//! `chorus --help` is the reference; the README has the same table.
//!
//! Grouped by concern, each group a flattened struct in its own file, so that
//! each part of the node is handed its slice (`Auth::new(&cfg.auth, ..)`, the
//! listener `&cfg.http`, a connection `cfg.conn`); the flags are one flat list.

mod auth;
mod cluster;
mod connection;
mod http;
mod rooms;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

pub use auth::AuthConfig;
pub use cluster::ClusterConfig;
pub use connection::{ConnectionConfig, SendConfig};
pub use http::HttpConfig;
pub use rooms::{HistoryConfig, PresenceConfig, WriterConfig};

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

    /// Log format: `text` (human-readable) or `json`.
    #[arg(long, env = "CHORUS_LOG_FORMAT", default_value = "text")]
    pub log_format: String,

    /// Deadline for a graceful drain on SIGTERM/SIGINT, milliseconds.
    #[arg(long, env = "CHORUS_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,

    #[command(flatten)]
    pub cluster: ClusterConfig,

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub conn: ConnectionConfig,

    #[command(flatten)]
    pub send: SendConfig,

    #[command(flatten)]
    pub writer: WriterConfig,

    #[command(flatten)]
    pub presence: PresenceConfig,

    #[command(flatten)]
    pub history: HistoryConfig,

    #[command(flatten)]
    pub http: HttpConfig,

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
        cfg.http.allowed_origins = cfg
            .http
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
        let (auth, cluster) = (&mut self.auth, &mut self.cluster);
        if let Some(p) = &auth.jwt_secret_file {
            auth.jwt_secret = Some(read("--jwt-secret-file", p)?);
        }
        if let Some(p) = &auth.resume_secret_file {
            auth.resume_secret = Some(read("--resume-secret-file", p)?);
        }
        if let Some(p) = &cluster.redis_url_file {
            cluster.redis_url = Some(read("--redis-url-file", p)?);
        }
        if let Some(p) = &cluster.database_url_file {
            cluster.database_url = Some(read("--database-url-file", p)?);
        }
        if let Some(p) = &auth.api_keys_file {
            let text = read("--api-keys-file", p)?;
            auth.api_keys.extend(
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
        self.auth.dev_insecure_auth || (!self.auth.has_jwt_key() && self.listen.ip().is_loopback())
    }

    /// Whether this node runs in cluster mode (Redis + PostgreSQL).
    pub fn cluster(&self) -> bool {
        self.cluster.enabled()
    }

    /// Every problem with the configuration, all at once.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        match (&self.cluster.redis_url, &self.cluster.database_url) {
            (Some(_), None) | (None, Some(_)) => errs.push(
                "cluster mode needs both --redis-url and --database-url (PostgreSQL)".into(),
            ),
            (Some(_), Some(_)) if self.auth.resume_secret.is_none() => errs.push(
                "cluster mode needs --resume-secret, shared by every node, so clients can resume on any node"
                    .into(),
            ),
            _ => {}
        }
        if self.cluster()
            && (self.cluster.owner_lease_ms < 300 || self.cluster.presence_ttl_ms < 300)
        {
            errs.push("--owner-lease-ms and --presence-ttl-ms must be at least 300".into());
        }
        if !self.auth.has_jwt_key() && !self.dev_auth() {
            errs.push(format!(
                "no JWT key configured and {} is not a loopback address: set --jwt-secret, \
                 --jwt-public-key, --jwt-jwks-file or --jwt-jwks-url (or --dev-insecure-auth \
                 to accept ?user=NAME, insecure)",
                self.listen
            ));
        }
        if self.auth.dev_insecure_auth && !self.listen.ip().is_loopback() {
            errs.push(format!(
                "--dev-insecure-auth lets anyone connect as any user; it is refused on {}, \
                 which is not a loopback address",
                self.listen
            ));
        }
        self.auth.validate(&mut errs);
        self.conn.validate(&mut errs);
        self.send.validate(&mut errs);
        self.writer.validate(&mut errs);
        self.history.validate(&mut errs);
        self.http.validate(&mut errs);
        if !["text", "json"].contains(&self.log_format.as_str()) {
            errs.push(format!(
                "--log-format must be text or json, not {}",
                self.log_format
            ));
        }
        if errs.is_empty() { Ok(()) } else { Err(errs) }
    }

    /// The limits announced in `welcome`.
    pub fn limits(&self) -> chorus_protocol::Limits {
        chorus_protocol::Limits {
            max_frame_bytes: self.conn.max_frame_bytes,
            max_message_bytes: self.send.max_message_bytes,
            max_rooms: self.conn.max_rooms,
            sends_per_sec: self.send.sends_per_sec,
            send_burst: self.send.send_burst,
            max_history_page: self.history.max_history_page,
            max_replay: self.history.max_replay,
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
