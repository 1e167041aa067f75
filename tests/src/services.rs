//! Real Redis and PostgreSQL servers for tests: the installed `redis-server`
//! and PostgreSQL binaries, each on a free loopback port with its own
//! temporary directory, never the machine's own services on 6379/5432 and
//! never mocks.
//!
//! Lifetime: a server is stopped by PID when its handle is dropped, also when
//! the test fails. The process-wide [`RedisServer::shared`] and
//! [`PostgresServer::shared`] instances are never dropped (statics are not),
//! so every server runs under a small supervisor shell whose stdin is a pipe
//! from the test process: when the test process ends, however it ends
//! (normal exit, panic, SIGKILL), the kernel closes the pipe, and the
//! supervisor stops the server and removes its directory. Nothing outlives
//! `cargo test`.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root the
//! server programs run as the `postgres` user and the temporary directory is
//! handed to it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The supervisor every server runs under, for the whole life of its handle
/// (restarts included). Arguments: the directory to remove when the test
/// process is gone, the log file, the signal that stops the server, then the
/// server's command line.
///
/// It reads commands from its stdin (the lifeline pipe) and answers each on
/// stdout: `start` starts the server and prints its PID; `kill` SIGKILLs it,
/// reaps it and prints `killed`; `exit` stops it and exits, leaving the
/// directory to the test process. End of file means the test process is
/// gone: stop the server and remove the directory too.
///
/// Stopping sends the stop signal (after SIGCONT, in case it is paused), and
/// SIGKILL if the server has not exited 10 s later; the wait is a poll of the
/// server's state, not a background timer, so no helper process is left
/// behind. The server is the supervisor's child and a shell blocked in `read`
/// reaps nothing, so until the test process asks for it to be stopped the
/// server's PID (even as a zombie) cannot be reused: signalling it is safe.
const SUPERVISOR: &str = r#"
dir=$1 log=$2 sig=$3
shift 3
server=
stop() {
    [ -n "$server" ] || return 0
    kill -CONT "$server" 2>/dev/null
    kill -"$1" "$server" 2>/dev/null
    n=0
    while [ "$n" -lt 100 ]; do
        stat=$(cat "/proc/$server/stat" 2>/dev/null) || break
        stat=${stat##*) }
        [ "${stat%% *}" = Z ] && break
        sleep 0.1
        n=$((n + 1))
    done
    [ "$n" -lt 100 ] || kill -KILL "$server" 2>/dev/null
    wait "$server"
    server=
}
while IFS= read -r command; do
    case $command in
        start) stop KILL; "$@" </dev/null >>"$log" 2>&1 & server=$!; echo "$server" ;;
        kill) stop KILL; echo killed ;;
        exit) stop "$sig"; exit 0 ;;
    esac
done
stop "$sig"
rm -rf "$dir"
"#;

/// How many free ports a server start tries: another process may take the
/// port between probing it and the server binding it.
const START_ATTEMPTS: usize = 5;

/// A supervisor (see [`SUPERVISOR`]) and the server it runs.
#[derive(Debug)]
struct Supervisor {
    child: Child,
    /// Its stdin: commands, and the lifeline.
    commands: Option<ChildStdin>,
    replies: BufReader<ChildStdout>,
    /// The server's PID while it runs.
    server: Option<u32>,
    /// The server program, for messages.
    program: String,
}

impl Supervisor {
    /// A supervisor for `program args`, run as `user` (uid, gid) if given,
    /// with `dir` as working directory and `log` collecting the server's
    /// output. The server is not started yet.
    fn spawn(
        program: &Path,
        args: &[String],
        dir: &Path,
        log: &Path,
        stop_signal: &str,
        user: Option<(u32, u32)>,
    ) -> Supervisor {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(SUPERVISOR)
            .arg("chorus-test-supervisor")
            .arg(dir)
            .arg(log)
            .arg(stop_signal)
            .arg(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C of `cargo test` ends the test
            // process, and the lifeline then stops the server in order.
            .process_group(0);
        without_pg_env(&mut cmd);
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|err| panic!("spawning sh to supervise {}: {err}", program.display()));
        let replies = BufReader::new(child.stdout.take().expect("supervisor stdout"));
        Supervisor {
            commands: child.stdin.take(),
            child,
            replies,
            server: None,
            program: program.display().to_string(),
        }
    }

    /// Send `command` and return the supervisor's one-line answer.
    fn command(&mut self, command: &str) -> String {
        let commands = self.commands.as_mut().expect("supervisor already exited");
        let sent = commands
            .write_all(format!("{command}\n").as_bytes())
            .and_then(|()| commands.flush());
        let mut reply = String::new();
        let read = sent.and_then(|()| self.replies.read_line(&mut reply));
        match read {
            Ok(n) if n > 0 => reply.trim().to_owned(),
            _ => panic!(
                "the supervisor of {} died (command {command:?})",
                self.program
            ),
        }
    }

    /// Start the server (killing a previous one); returns its PID.
    fn start(&mut self) -> u32 {
        let reply = self.command("start");
        let pid = reply
            .parse::<u32>()
            .ok()
            .filter(|&pid| pid > 1)
            .unwrap_or_else(|| panic!("no PID for {} (got {reply:?})", self.program));
        self.server = Some(pid);
        pid
    }

    /// SIGKILL the server and reap it. No-op if it is not running.
    fn kill9(&mut self) {
        if self.server.take().is_some() {
            let reply = self.command("kill");
            assert_eq!(reply, "killed", "supervisor of {}", self.program);
        }
    }

    /// Whether the server process runs (a zombie does not).
    fn server_alive(&self) -> bool {
        self.server.is_some_and(process_alive)
    }

    /// Stop the server and let the supervisor exit, leaving the directory to
    /// the test process. If that takes unreasonably long, SIGKILL both.
    fn exit(&mut self) {
        let Some(mut commands) = self.commands.take() else {
            return;
        };
        // A failed write means the supervisor is already gone.
        let _ = commands.write_all(b"exit\n");
        drop(commands);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                self.server = None;
                return;
            }
            sleep(Duration::from_millis(10));
        }
        if let Some(pid) = self.server.take() {
            signal(&[pid], "KILL");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start the server and wait until `ready` says it serves; kill it and
    /// return the end of its log if it exits or is not ready by `limit`.
    fn boot(
        &mut self,
        limit: Duration,
        log: &Path,
        ready: impl Fn() -> bool,
    ) -> Result<(), String> {
        self.start();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.server_alive() {
                self.kill9();
                return Err(format!("{} exited: {}", self.program, log_tail(log)));
            }
            if ready() {
                return Ok(());
            }
            sleep(Duration::from_millis(20));
        }
        self.kill9();
        Err(format!(
            "{} not ready within {limit:?}: {}",
            self.program,
            log_tail(log)
        ))
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.exit();
    }
}

/// A `redis-server` on a free loopback port, without persistence (a restart
/// comes back empty, like a Redis that lost its memory).
#[derive(Debug)]
pub struct RedisServer {
    /// The loopback port it listens on; kept across restarts.
    pub port: u16,
    /// Declared before `dir`: the server stops before its directory goes.
    supervisor: Supervisor,
    dir: TempDir,
}

impl RedisServer {
    /// Start a server and wait until it answers PING. Panics if `redis-server`
    /// is not installed or does not start.
    pub fn start() -> RedisServer {
        let bin = find_in_path("redis-server").unwrap_or_else(|| {
            panic!(
                "redis-server not found in PATH: install the `redis-server` package \
                 (apt-get install redis-server); tests/run does this when run as root"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("chorus-redis-")
            .tempdir()
            .expect("tempdir for redis");
        let log = dir.path().join("redis.log");
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let args: Vec<String> = [
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
                &dir.path().display().to_string(),
            ]
            .into_iter()
            .map(str::to_owned)
            .collect();
            let mut supervisor = Supervisor::spawn(&bin, &args, dir.path(), &log, "TERM", None);
            match supervisor.boot(REDIS_READY, &log, || redis_pong(port)) {
                Ok(()) => {
                    return RedisServer {
                        port,
                        supervisor,
                        dir,
                    };
                }
                Err(err) => last_err = err,
            }
        }
        panic!("redis-server did not start: {last_err}");
    }

    /// One server for the whole test process, started on first use and
    /// stopped when the process exits. Tests sharing it must use their own
    /// key prefixes.
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(RedisServer::start)
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's PID. Panics if it is not running (killed, not restarted):
    /// a stale PID must never be signalled.
    pub fn pid(&self) -> u32 {
        self.supervisor.server.expect("redis-server is not running")
    }

    /// kill -9 the server and wait until it is gone. No-op if not running.
    pub fn kill9(&mut self) {
        self.supervisor.kill9();
    }

    /// kill -9 the server (if running) and start it again, empty, on the same
    /// port; returns once it answers PING.
    pub fn restart(&mut self) {
        self.kill9();
        let (port, log) = (self.port, self.log());
        if let Err(err) = self.supervisor.boot(REDIS_READY, &log, || redis_pong(port)) {
            panic!("redis-server did not restart on port {port}: {err}");
        }
    }

    /// SIGSTOP the server: connections stay open, nothing is answered.
    pub fn pause(&self) {
        signal(&[self.pid()], "STOP");
    }

    /// SIGCONT a paused server.
    pub fn resume(&self) {
        signal(&[self.pid()], "CONT");
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }
}

/// How long a starting Redis may take to answer PING.
const REDIS_READY: Duration = Duration::from_secs(10);

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

/// The first executable `name` in PATH.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

/// Drop `PG*` variables (PGHOST, PGPORT, PGOPTIONS, ...) of the caller's
/// environment: they would redirect the client tools or change the session.
fn without_pg_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(|k| k.starts_with("PG")) {
            cmd.env_remove(key);
        }
    }
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("probe a free loopback port")
}

/// Whether a Redis server on `port` answers PING.
fn redis_pong(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(1));
    if stream.set_read_timeout(timeout).is_err() || stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0_u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// Whether `pid` runs: it exists and is not a zombie.
fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| stat_fields(&stat).map(|(state, _)| state))
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// State and parent PID from a `/proc/PID/stat` line. The command name in
/// parentheses may contain spaces and parentheses, so parse after the last `)`.
fn stat_fields(stat: &str) -> Option<(char, u32)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Live child processes of `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| stat_fields(&stat))
                .is_some_and(|(state, ppid)| ppid == parent && state != 'Z')
        })
        .collect()
}

/// Send `sig` to each of `pids` with kill(1). Errors (a process already gone)
/// are expected and ignored. PIDs 0 and 1 are never signalled: 0 would hit
/// our own process group.
fn signal(pids: &[u32], sig: &str) {
    let pids: Vec<String> = pids
        .iter()
        .filter(|&&pid| pid > 1)
        .map(u32::to_string)
        .collect();
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(&pids)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The end of a server log, for failure messages.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_after_the_command_name() {
        assert_eq!(
            stat_fields("123 (postgres: ckpt (x)) S 77 123 123 0 -1"),
            Some(('S', 77))
        );
        assert_eq!(stat_fields("9 (sh) Z 1 9"), Some(('Z', 1)));
        assert_eq!(stat_fields("garbage"), None);
    }
}
