//! [`PostgresServer`]: a PostgreSQL cluster of its own (initdb, durable
//! settings, trust authentication), crashed, restarted and paused on demand;
//! and finding the server binaries and the `postgres` user.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::process::{children_of, process_alive, signal};
use super::supervisor::Supervisor;
use super::{START_ATTEMPTS, find_in_path, free_port, without_pg_env};

/// How long a starting PostgreSQL may take to accept connections: after a
/// kill -9 it first replays its WAL.
const POSTGRES_READY: Duration = Duration::from_secs(60);

/// A PostgreSQL cluster of its own (initdb in a temporary directory) on a free
/// loopback port, with trust authentication for the `postgres` superuser and
/// durable commits (`fsync=on`, `synchronous_commit=on`).
#[derive(Debug)]
pub struct PostgresServer {
    /// The loopback port it listens on; kept across restarts.
    pub port: u16,
    bin: PathBuf,
    /// PIDs stopped by `pause`, continued by `resume`.
    paused: Mutex<Vec<u32>>,
    databases: AtomicU64,
    /// Declared before `dir`: the server stops before its directory goes.
    supervisor: Supervisor,
    /// Holds `data/` (the cluster), the unix socket and `postgres.log`.
    dir: TempDir,
}

impl PostgresServer {
    /// initdb a new cluster and start it; returns once it accepts connections.
    /// Panics if the PostgreSQL binaries are not installed or it does not start.
    pub fn start() -> PostgresServer {
        let bin = postgres_bin_dir();
        let user = server_user();
        let dir = tempfile::Builder::new()
            .prefix("chorus-pg-")
            .tempdir()
            .expect("tempdir for postgres");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .expect("hand the postgres tempdir to the postgres user");
        }
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        initdb(&bin, &data, dir.path(), user);

        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let args = postgres_args(&data, port, dir.path());
            let mut supervisor =
                Supervisor::spawn(&bin.join("postgres"), &args, dir.path(), &log, "QUIT", user);
            match supervisor.boot(POSTGRES_READY, &log, || accepting(&bin, port)) {
                Ok(()) => {
                    return PostgresServer {
                        port,
                        bin,
                        paused: Mutex::new(Vec::new()),
                        databases: AtomicU64::new(0),
                        supervisor,
                        dir,
                    };
                }
                Err(err) => last_err = err,
            }
        }
        panic!("postgres did not start: {last_err}");
    }

    /// One server for the whole test process, started on first use and
    /// stopped when the process exits. Tests sharing it each take their own
    /// database from [`PostgresServer::create_database`]. It cannot be killed
    /// or restarted (those need `&mut`); tests that do that start their own.
    pub fn shared() -> &'static PostgresServer {
        static SHARED: OnceLock<PostgresServer> = OnceLock::new();
        SHARED.get_or_init(PostgresServer::start)
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Create a new, uniquely named, empty database and return its URL.
    pub fn create_database(&self) -> String {
        let n = self.databases.fetch_add(1, Ordering::Relaxed);
        let name = format!("chorus_test_{n}");
        let mut cmd = Command::new(self.bin.join("createdb"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", &name]);
        without_pg_env(&mut cmd);
        let out = cmd.output().expect("run createdb");
        assert!(
            out.status.success(),
            "createdb {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(&name)
    }

    /// The postmaster's PID. Panics if it is not running (killed, not
    /// restarted): a stale PID must never be signalled.
    pub fn pid(&self) -> u32 {
        self.supervisor.server.expect("postgres is not running")
    }

    /// Crash the server: kill -9 the postmaster and every backend at once
    /// (as a machine or container losing the processes would), and wait
    /// until they are all gone. What was committed is in the WAL on disk; a
    /// [`PostgresServer::restart`] recovers it. No-op if not running.
    pub fn kill9(&mut self) {
        let Some(postmaster) = self.supervisor.server else {
            return;
        };
        self.paused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // Stopped first, the postmaster cannot fork a new backend between
        // listing its children and killing them.
        signal(&[postmaster], "STOP");
        let children = children_of(postmaster);
        signal(&children, "KILL");
        self.supervisor.kill9();
        // The next postmaster refuses to start while an old backend is still
        // attached to the shared memory.
        let deadline = Instant::now() + Duration::from_secs(10);
        while children.iter().any(|&pid| process_alive(pid)) && Instant::now() < deadline {
            sleep(Duration::from_millis(10));
        }
    }

    /// Start the server again on the same port and data directory (kill -9
    /// first if it is running), and wait until crash recovery is done and it
    /// accepts connections.
    pub fn restart(&mut self) {
        self.kill9();
        let (port, log) = (self.port, self.log());
        let bin = self.bin.clone();
        if let Err(err) = self
            .supervisor
            .boot(POSTGRES_READY, &log, || accepting(&bin, port))
        {
            panic!("postgres did not restart on port {port}: {err}");
        }
    }

    /// SIGSTOP the postmaster and all its backends: connections stay open,
    /// nothing is answered, new connections hang in the listen backlog.
    pub fn pause(&self) {
        let postmaster = self.pid();
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        // The postmaster first, so it forks nothing new while its children
        // are being stopped.
        signal(&[postmaster], "STOP");
        let children = children_of(postmaster);
        signal(&children, "STOP");
        paused.push(postmaster);
        paused.extend(children);
    }

    /// SIGCONT everything `pause` stopped.
    pub fn resume(&self) {
        let mut paused = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        signal(&paused, "CONT");
        paused.clear();
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Stopped backends would hold up the shutdown.
        self.resume();
        self.supervisor.exit();
    }
}

/// Create a cluster in `data` (as `user` if given, from `cwd`, which that
/// user can enter).
fn initdb(bin: &Path, data: &Path, cwd: &Path, user: Option<(u32, u32)>) {
    let mut cmd = Command::new(bin.join("initdb"));
    cmd.arg("-D")
        .arg(data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
        // The cluster is thrown away after the test; syncing the initial
        // files only costs time. The running server still fsyncs.
        .arg("--no-sync")
        .current_dir(cwd);
    without_pg_env(&mut cmd);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|err| panic!("running {}/initdb: {err}", bin.display()));
    assert!(
        out.status.success(),
        "initdb failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The postgres command line for the cluster in `data` on `port`.
fn postgres_args(data: &Path, port: u16, socket_dir: &Path) -> Vec<String> {
    let data = data.display().to_string();
    let socket_dir = socket_dir.display().to_string();
    let port = port.to_string();
    [
        "-D",
        &data,
        "-p",
        &port,
        // The unix socket in our own directory: no clash with a system
        // server's /var/run/postgresql, and the path stays short.
        "-k",
        &socket_dir,
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "fsync=on",
        "-c",
        "synchronous_commit=on",
        // Many tests share one server, each with its own pool.
        "-c",
        "max_connections=300",
        "-c",
        "shared_buffers=32MB",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

/// Whether the server on `port` accepts connections (`pg_isready`).
fn accepting(bin: &Path, port: u16) -> bool {
    let mut cmd = Command::new(bin.join("pg_isready"));
    cmd.args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres", "-t", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    without_pg_env(&mut cmd);
    cmd.status().is_ok_and(|status| status.success())
}

/// PostgreSQL's server binaries: `$CHORUS_PG_BINDIR`, else the highest
/// version under /usr/lib/postgresql (Debian and Ubuntu), else `initdb` in
/// PATH.
fn postgres_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CHORUS_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return bin;
    }
    if let Some(bin) =
        find_in_path("initdb").and_then(|initdb| Some(initdb.parent()?.to_path_buf()))
    {
        return bin;
    }
    panic!(
        "PostgreSQL server binaries (initdb, postgres) not found under /usr/lib/postgresql/*/bin \
         or in PATH: install the `postgresql` package (apt-get install postgresql) or set \
         CHORUS_PG_BINDIR; tests/run installs it when run as root"
    );
}

/// `Some((uid, gid))` of the `postgres` user when we run as root (initdb and
/// postgres refuse root), `None` otherwise.
fn server_user() -> Option<(u32, u32)> {
    let euid = fs::metadata("/proc/self").map(|m| m.uid()).ok()?;
    if euid != 0 {
        return None;
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output().ok()?;
        if !out.status.success() {
            return None;
        }
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    match (id("-u"), id("-g")) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => panic!(
            "running as root, PostgreSQL needs the `postgres` user to run as; it comes with \
             the `postgresql` package (apt-get install postgresql)"
        ),
    }
}
