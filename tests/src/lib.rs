//! Test harness for chorus: start real `chorus` processes on free ports, mint
//! tokens, and connect clients.
//!
//! Layout:
//! - [`GatewayProcess`]: one `chorus` process with its own data directory; killed
//!   by PID when dropped, also when a test fails.
//! - [`binary`]: where the `chorus` binary is (built on first use if missing).
//! - [`token`]: HS256 JWTs for tests.
//! - [`proxy`]: a fault-injecting TCP proxy (latency, bandwidth, blackhole,
//!   half-open, reset) for a node's links to Redis and PostgreSQL.
//! - [`chaos`]: the chaos harness behind the `chorus-chaos` binary (its own
//!   layout: schedule, workload, faults, observers, publishing, finish, check).
//! - [`load`]: lean chorus and Socket.IO connections for `chorus-load`.
//! - [`services`]: real Redis and PostgreSQL servers on free ports, stopped by
//!   PID when dropped and when the test process exits (a folder: `redis`,
//!   `postgres`, the `supervisor` shell, `process`).
//! - [`raw`]: a bare WebSocket speaking the JSON protocol by hand.
//! - [`wait`]: bounded waits on a client's events.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chorus_protocol::client::{Client, ClientConfig};

pub mod chaos;
pub mod cluster;
pub mod load;
pub mod proxy;
pub mod raw;
pub mod services;
pub mod wait;

/// The secret every test node uses for client JWTs.
pub const JWT_SECRET: &str = "test-secret-0123456789";
/// The API key every test node accepts.
pub const API_KEY: &str = "test-api-key";

/// Path of the `chorus` binary: `$CHORUS_BIN`, else next to this test's target
/// directory, built with cargo once if absent.
pub fn binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("CHORUS_BIN") {
            return PathBuf::from(p);
        }
        // target/<profile>/deps/<test-exe> or target/<profile>/<bin> -> target/<profile>/chorus
        let exe = std::env::current_exe().expect("current exe");
        let mut profile_dir = exe.parent().expect("exe dir");
        if profile_dir.file_name().is_some_and(|n| n == "deps") {
            profile_dir = profile_dir.parent().expect("target profile dir");
        }
        let bin = profile_dir.join("chorus");
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug");
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.args(["build", "-q", "-p", "chorus-gateway", "--bin", "chorus"]);
        // Without the variables cargo sets for a running test: build scripts
        // that track one (ring's tracks CARGO_MANIFEST_DIR) would otherwise
        // rerun, and the next plain `cargo build` or `cargo test` would rebuild
        // them and everything above them again.
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            if key == "CARGO_MANIFEST_DIR"
                || key == "CARGO_MANIFEST_PATH"
                || key == "CARGO_CRATE_NAME"
                || key == "CARGO_PRIMARY_PACKAGE"
                || key == "CARGO_TARGET_TMPDIR"
                || key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_")
            {
                cmd.env_remove(key);
            }
        }
        if profile == "release" {
            cmd.arg("--release");
        }
        // Always run the build: it is a no-op when the binary is current, and it
        // keeps tests from running against a stale binary.
        let status = cmd.status().expect("run cargo build for the chorus binary");
        assert!(status.success(), "building the chorus binary failed");
        assert!(bin.exists(), "chorus binary not found at {}", bin.display());
        bin
    })
    .clone()
}

/// Serialises process start-up output parsing across tests in one binary.
static SPAWN: Mutex<()> = Mutex::new(());

/// Whether `GatewayProcess::start` runs a 2-node cluster behind a load balancer
/// instead of one embedded node (`CHORUS_TEST_CLUSTER=1`): the whole foundation
/// suite then runs in cluster mode.
pub fn cluster_mode() -> bool {
    std::env::var("CHORUS_TEST_CLUSTER").is_ok_and(|v| v == "1")
}

/// A running `chorus` process (or, in cluster mode, two behind a load balancer).
pub struct GatewayProcess {
    child: Option<Child>,
    /// The address clients use: the process's own, or the load balancer's.
    pub addr: String,
    /// `127.0.0.1:PORT` this process listens on.
    node_addr: String,
    /// Cluster mode: the other node(s), restarted and killed together with this one.
    peers: Vec<GatewayProcess>,
    /// Cluster mode: the load balancer in front of all nodes.
    lb: Option<cluster::LoadBalancer>,
    /// Its data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// Flags it was started with (reused by `restart`).
    args: Vec<String>,
    /// Open-file limit the process was started under, if set (kept by `restart`).
    nofile: Option<u64>,
    _tmp: Option<tempfile::TempDir>,
}

impl GatewayProcess {
    /// Start a node with a fresh data directory and the test JWT secret and API
    /// key, plus `extra` flags.
    pub fn start(extra: &[&str]) -> GatewayProcess {
        if cluster_mode() {
            return GatewayProcess::start_cluster(2, extra);
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        let data_dir = tmp.path().to_path_buf();
        let mut p = GatewayProcess::start_in(&data_dir, extra, None);
        p._tmp = Some(tmp);
        p
    }

    /// `n` cluster nodes (shared Redis with a fresh prefix, a fresh PostgreSQL
    /// database) behind a round-robin load balancer, as one `GatewayProcess`.
    pub fn start_cluster(n: usize, extra: &[&str]) -> GatewayProcess {
        let database_url = services::PostgresServer::shared().create_database();
        let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
        let mut flags = cluster::cluster_flags(
            &services::RedisServer::shared().url(),
            &database_url,
            &prefix,
        );
        // A test's own --node-id names node 0; the others get a suffix.
        let mut base_id: Option<String> = None;
        let mut it = extra.iter();
        while let Some(a) = it.next() {
            if *a == "--node-id" {
                base_id = it.next().map(|s| s.to_string());
            } else {
                flags.push(a.to_string());
            }
        }
        let mut nodes: Vec<GatewayProcess> = (0..n)
            .map(|i| {
                let tmp = tempfile::tempdir().expect("tempdir");
                let mut f = flags.clone();
                let id = match (&base_id, i) {
                    (Some(b), 0) => b.clone(),
                    (Some(b), i) => format!("{b}-{i}"),
                    (None, i) => format!("n{i}"),
                };
                f.extend(["--node-id".to_string(), id]);
                let refs: Vec<&str> = f.iter().map(String::as_str).collect();
                let mut p = GatewayProcess::start_in(tmp.path(), &refs, None);
                p._tmp = Some(tmp);
                p
            })
            .collect();
        let lb = cluster::LoadBalancer::start(
            nodes
                .iter()
                .map(|p| p.node_addr.parse().expect("node addr"))
                .collect(),
        );
        let mut first = nodes.remove(0);
        first.addr = lb.addr.clone();
        first.peers = nodes;
        first.lb = Some(lb);
        first
    }

    /// Start a node on `data_dir`, on `listen` (default port 0).
    pub fn start_in(data_dir: &Path, extra: &[&str], listen: Option<&str>) -> GatewayProcess {
        let mut args = default_args(data_dir, listen);
        args.extend(extra.iter().map(|s| s.to_string()));
        GatewayProcess::launch(data_dir, args, None)
    }

    /// Start one node (never a cluster) with a fresh data directory and the
    /// usual flags plus `extra`, its open-file limit (soft and hard) set to
    /// `nofile` through the shell's `ulimit -n` before it starts.
    pub fn start_with_file_limit(nofile: u64, extra: &[&str]) -> GatewayProcess {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut args = default_args(tmp.path(), None);
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = GatewayProcess::launch(tmp.path(), args, Some(nofile));
        p._tmp = Some(tmp);
        p
    }

    /// Start one node (never a cluster) with exactly `args` plus `--data-dir`
    /// (a fresh one): none of the harness's default flags, for tests of the
    /// configuration itself. `args` must include a `--listen`.
    pub fn start_args(args: &[&str]) -> GatewayProcess {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        all.extend(["--data-dir".to_string(), tmp.path().display().to_string()]);
        let mut p = GatewayProcess::launch(tmp.path(), all, None);
        p._tmp = Some(tmp);
        p
    }

    fn launch(data_dir: &Path, args: Vec<String>, nofile: Option<u64>) -> GatewayProcess {
        let (child, addr) = spawn_limited(&args, nofile);
        GatewayProcess {
            child: Some(child),
            node_addr: addr.clone(),
            addr,
            peers: Vec::new(),
            lb: None,
            data_dir: data_dir.to_path_buf(),
            args,
            nofile,
            _tmp: None,
        }
    }

    /// OS process id (of the first node in cluster mode).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Process ids of every node.
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.pid())
            .chain(self.peers.iter().map(|p| p.pid()))
            .collect()
    }

    /// The exit status if the process ended by itself (`None` while it runs
    /// or after the harness stopped it); it then counts as stopped.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok().flatten()?;
        self.child = None;
        Some(status)
    }

    /// Listen addresses of every node (the load balancer's is `addr`).
    pub fn node_addrs(&self) -> Vec<String> {
        std::iter::once(self.node_addr.clone())
            .chain(self.peers.iter().map(|p| p.node_addr.clone()))
            .collect()
    }

    /// True (and says why on stderr) when a test checks per-process behaviour
    /// that a multi-node run cannot show through one address: the caller
    /// returns early in cluster mode.
    pub fn single_node_only(why: &str) -> bool {
        let skip = cluster_mode();
        if skip {
            eprintln!("single-node test, skipped in cluster mode: {why}");
        }
        skip
    }

    /// `ws://ADDR/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://ADDR`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The sum of a metric's series (`name` and `name{...}`) on this node's
    /// `/metrics`; 0 when the node has not made it yet.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.http_url()))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// A WebSocket URL authenticating `user` with a fresh JWT.
    pub fn url_for(&self, user: &str) -> String {
        format!(
            "{}?access_token={}",
            self.ws_url(),
            token(user, 3600, None, None)
        )
    }

    /// Connect `user` (JWT auth) with default client settings.
    pub async fn connect(&self, user: &str) -> Client {
        Client::connect(self.config(user)).await.expect("connect")
    }

    /// Client settings for `user`.
    pub fn config(&self, user: &str) -> ClientConfig {
        ClientConfig::new(self.url_for(user))
    }

    /// kill -9 (every node), wait for the exit.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for p in &mut self.peers {
            p.kill9();
        }
    }

    /// SIGTERM (drain, every node at once) and wait for the exit; returns this
    /// process's exit status.
    pub fn sigterm(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        signal(c.id(), "TERM");
        let peers: Vec<Child> = self
            .peers
            .iter_mut()
            .filter_map(|p| p.child.take())
            .collect();
        for p in &peers {
            signal(p.id(), "TERM");
        }
        for mut p in peers {
            let _ = p.wait();
        }
        c.wait().ok()
    }

    /// Start again (every node) on the same data directory and port.
    pub fn restart(&mut self) {
        self.kill9();
        let mut args = self.args.clone();
        if let Some(i) = args.iter().position(|a| a == "--listen") {
            args[i + 1] = self.node_addr.clone();
        }
        let (child, addr) = spawn_limited(&args, self.nofile);
        self.child = Some(child);
        self.node_addr = addr.clone();
        if self.lb.is_none() {
            self.addr = addr;
        }
        for p in &mut self.peers {
            p.restart();
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The flags of every harness node: `--listen` (default `127.0.0.1:0`),
/// `--data-dir`, the test JWT secret, dev identities, the test API key and a
/// resume secret.
fn default_args(data_dir: &Path, listen: Option<&str>) -> Vec<String> {
    vec![
        "--listen".into(),
        listen.unwrap_or("127.0.0.1:0").into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--jwt-secret".into(),
        JWT_SECRET.into(),
        "--dev-insecure-auth".into(),
        "--api-key".into(),
        API_KEY.into(),
        "--resume-secret".into(),
        "test-resume-secret".into(),
    ]
}

/// Send a signal by name to a PID via `kill(1)`.
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status();
}

/// Start the binary with `args`; with `nofile`, through `sh -c 'ulimit -n N;
/// exec ...'` so that the process starts under that open-file limit (soft and
/// hard: the binary raises its soft limit to the hard one).
fn spawn_limited(args: &[String], nofile: Option<u64>) -> (Child, String) {
    let _guard = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    let mut last_err = String::new();
    // A restart on a fixed port can race the old socket's release: retry a little.
    for _ in 0..50 {
        let mut cmd = match nofile {
            None => Command::new(binary()),
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(binary());
                c
            }
        };
        let mut child = cmd
            .args(args)
            .env(
                "CHORUS_LOG",
                std::env::var("CHORUS_LOG").unwrap_or_else(|_| "error".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn chorus");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        let _ = reader.read_line(&mut line);
        if let Some(rest) = line.strip_prefix("chorus listening on http://") {
            let addr = rest.split('/').next().unwrap_or_default().to_owned();
            // Keep draining stdout so the child never blocks on a full pipe.
            std::thread::spawn(move || {
                let mut sink = String::new();
                while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                    sink.clear();
                }
            });
            return (child, addr);
        }
        let _ = child.kill();
        let _ = child.wait();
        last_err = line;
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("chorus did not start: {last_err:?}");
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An HS256 JWT for `user`, valid for `ttl_secs` (negative: already expired),
/// with optional room patterns and tenant.
pub fn token(user: &str, ttl_secs: i64, rooms: Option<&[&str]>, tenant: Option<&str>) -> String {
    let mut claims = serde_json::json!({"sub": user, "exp": now_secs() as i64 + ttl_secs});
    if let Some(r) = rooms {
        claims["rooms"] = serde_json::json!(r);
    }
    if let Some(t) = tenant {
        claims["tenant"] = serde_json::json!(t);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("sign token")
}

/// Flags that lift the per-connection and per-user send and flood limits, for
/// tests that pump traffic.
pub const UNLIMITED: &[&str] = &[
    "--sends-per-sec",
    "100000",
    "--send-burst",
    "100000",
    "--frames-per-sec",
    "100000",
    "--frame-burst",
    "100000",
    "--user-sends-per-sec",
    "0",
];

/// `UNLIMITED` plus a test's own flags.
pub fn unlimited<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    UNLIMITED.iter().chain(extra).copied().collect()
}

/// One stored message as `GET /v1/rooms/{room}/messages` returns it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct StoredMsg {
    pub seq: u64,
    pub id: String,
    pub sender: String,
    pub cid: Option<String>,
    pub body: serde_json::Value,
}

#[derive(serde::Deserialize)]
struct HistoryPage {
    messages: Vec<StoredMsg>,
    has_more: bool,
}

impl GatewayProcess {
    /// A room's whole history through the HTTP API, paging forwards with `after`.
    pub async fn history(&self, room: &str) -> Vec<StoredMsg> {
        let http = reqwest::Client::new();
        let mut out: Vec<StoredMsg> = Vec::new();
        let mut after = 0;
        loop {
            let url = format!(
                "{}/v1/rooms/{room}/messages?after={after}&limit=100",
                self.http_url()
            );
            let resp = http
                .get(&url)
                .bearer_auth(API_KEY)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url}: {e}"));
            assert_eq!(resp.status(), 200, "GET {url}");
            let page: HistoryPage = resp.json().await.expect("history page");
            let Some(last) = page.messages.last() else {
                assert!(!page.has_more, "empty page with has_more");
                break;
            };
            after = last.seq;
            out.extend(page.messages);
            if !page.has_more {
                break;
            }
        }
        out
    }
}

/// A text body `{"text": ...}`.
pub fn text(s: &str) -> chorus_protocol::Json {
    chorus_protocol::Json::from_value(&serde_json::json!({ "text": s }))
}
