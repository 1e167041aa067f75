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

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The supervisor every server runs under. Arguments: the directory to remove
/// when the test process is gone, the log file, the signal that stops the
/// server, then the server's command line.
///
/// It prints the server's PID, then blocks reading its stdin (the lifeline
/// pipe). A `keep` line means the test process is stopping the server itself
/// and owns the directory; end of file means the test process died, so the
/// directory goes too. Either way the server is stopped (with SIGKILL if it
/// has not exited 10 s after the stop signal) and reaped; the wait is a poll
/// of the server's state, not a background timer, so no helper process is
/// left behind. The server is the supervisor's child, and a shell blocked in
/// `read` reaps nothing: until the test process lets go of the server, its
/// PID (even as a zombie) cannot be reused, so signalling it is safe.
const SUPERVISOR: &str = r#"
dir=$1 log=$2 sig=$3
shift 3
"$@" </dev/null >>"$log" 2>&1 &
server=$!
echo "$server"
keep=
if IFS= read -r line && [ "$line" = keep ]; then keep=1; fi
kill -CONT "$server" 2>/dev/null
kill -"$sig" "$server" 2>/dev/null
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
[ -n "$keep" ] || rm -rf "$dir"
"#;

/// How many free ports a server start tries: another process may take the
/// port between probing it and the server binding it.
const START_ATTEMPTS: usize = 5;

/// A server process under its supervisor.
#[derive(Debug)]
struct Supervised {
    supervisor: Child,
    /// The write end of the supervisor's stdin; closing it stops the server.
    lifeline: Option<ChildStdin>,
    /// The server's PID.
    pid: u32,
}

impl Supervised {
    /// Start `program args` under a supervisor, as `user` (uid, gid) if given,
    /// with `dir` as working directory and `log` collecting its output.
    fn spawn(
        program: &Path,
        args: &[String],
        dir: &Path,
        log: &Path,
        stop_signal: &str,
        user: Option<(u32, u32)>,
    ) -> Supervised {
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
        let mut supervisor = cmd
            .spawn()
            .unwrap_or_else(|err| panic!("spawning {} under sh: {err}", program.display()));
        let stdout = supervisor.stdout.take().expect("supervisor stdout");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let pid = match (read, line.trim().parse::<u32>()) {
            (Ok(_), Ok(pid)) if pid > 1 => pid,
            _ => {
                let _ = supervisor.kill();
                let _ = supervisor.wait();
                panic!(
                    "the supervisor of {} did not report a PID (got {line:?})",
                    program.display()
                );
            }
        };
        Supervised {
            lifeline: supervisor.stdin.take(),
            supervisor,
            pid,
        }
    }

    /// Whether the server process still runs (a zombie does not).
    fn alive(&self) -> bool {
        process_alive(self.pid)
    }

    /// kill -9 the server and reap it.
    fn kill9(mut self) {
        signal(&[self.pid], "KILL");
        self.finish();
    }

    /// Stop the server with its stop signal and reap it.
    fn stop(mut self) {
        self.finish();
    }

    /// Tell the supervisor to stop the server and keep the directory (the
    /// test process removes it), then wait for both to exit. If that takes
    /// unreasonably long, SIGKILL both.
    fn finish(&mut self) {
        let Some(mut lifeline) = self.lifeline.take() else {
            return;
        };
        // A failed write means the supervisor is already gone.
        let _ = lifeline.write_all(b"keep\n");
        drop(lifeline);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.supervisor.try_wait() {
                return;
            }
            sleep(Duration::from_millis(20));
        }
        signal(&[self.pid], "KILL");
        let _ = self.supervisor.kill();
        let _ = self.supervisor.wait();
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A `redis-server` on a free loopback port, without persistence (a restart
/// comes back empty, like a Redis that lost its memory).
#[derive(Debug)]
pub struct RedisServer {
    /// The loopback port it listens on; kept across restarts.
    pub port: u16,
    bin: PathBuf,
    dir: TempDir,
    process: Option<Supervised>,
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
        let mut server = RedisServer {
            port: 0,
            bin,
            dir,
            process: None,
        };
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match server.launch(port) {
                Ok(process) => {
                    server.port = port;
                    server.process = Some(process);
                    return server;
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
        self.process
            .as_ref()
            .map(|p| p.pid)
            .expect("redis-server is not running")
    }

    /// kill -9 the server and wait until it is gone. No-op if not running.
    pub fn kill9(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill9();
        }
    }

    /// kill -9 the server (if running) and start it again, empty, on the same
    /// port; returns once it answers PING.
    pub fn restart(&mut self) {
        self.kill9();
        match self.launch(self.port) {
            Ok(process) => self.process = Some(process),
            Err(err) => panic!("redis-server did not restart on port {}: {err}", self.port),
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

    fn launch(&self, port: u16) -> Result<Supervised, String> {
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
            &self.dir.path().display().to_string(),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let process = Supervised::spawn(
            &self.bin,
            &args,
            self.dir.path(),
            &self.log(),
            "TERM",
            None,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !process.alive() {
                process.stop();
                return Err(format!("exited on port {port}: {}", log_tail(&self.log())));
            }
            if redis_pong(port) {
                return Ok(process);
            }
            sleep(Duration::from_millis(20));
        }
        process.kill9();
        Err(format!(
            "no PONG on port {port} within 10 s: {}",
            log_tail(&self.log())
        ))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            process.stop();
        }
    }
}

/// A PostgreSQL cluster of its own (initdb in a temporary directory) on a free
/// loopback port, with trust authentication for the `postgres` superuser and
/// durable commits (`fsync=on`, `synchronous_commit=on`).
#[derive(Debug)]
pub struct PostgresServer {
    /// The loopback port it listens on; kept across restarts.
    pub port: u16,
    bin: PathBuf,
    /// uid and gid the server programs run as (`postgres` when we are root).
    user: Option<(u32, u32)>,
    /// Holds `data/` (the cluster), the unix socket and `postgres.log`.
    dir: TempDir,
    process: Option<Supervised>,
    /// PIDs stopped by `pause`, continued by `resume`.
    paused: Mutex<Vec<u32>>,
    databases: AtomicU64,
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
        let mut server = PostgresServer {
            port: 0,
            bin,
            user,
            dir,
            process: None,
            paused: Mutex::new(Vec::new()),
            databases: AtomicU64::new(0),
        };
        server.initdb();
        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            match server.launch(port) {
                Ok(process) => {
                    server.port = port;
                    server.process = Some(process);
                    return server;
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
        self.process
            .as_ref()
            .map(|p| p.pid)
            .expect("postgres is not running")
    }

    /// Crash the server: kill -9 the postmaster and every backend at once
    /// (as a machine or container losing the processes would), and wait
    /// until they are all gone. What was committed is in the WAL on disk; a
    /// [`PostgresServer::restart`] recovers it. No-op if not running.
    pub fn kill9(&mut self) {
        let Some(process) = self.process.take() else {
            return;
        };
        self.paused.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // Stopped first, the postmaster cannot fork a new backend between
        // listing its children and killing them.
        signal(&[process.pid], "STOP");
        let children = children_of(process.pid);
        signal(&children, "KILL");
        process.kill9();
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
        match self.launch(self.port) {
            Ok(process) => self.process = Some(process),
            Err(err) => panic!("postgres did not restart on port {}: {err}", self.port),
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

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn initdb(&self) {
        let mut cmd = Command::new(self.bin.join("initdb"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            // The cluster is thrown away after the test; syncing the initial
            // files only costs time. The running server still fsyncs.
            .arg("--no-sync")
            .current_dir(self.dir.path());
        without_pg_env(&mut cmd);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd
            .output()
            .unwrap_or_else(|err| panic!("running {}/initdb: {err}", self.bin.display()));
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn launch(&self, port: u16) -> Result<Supervised, String> {
        let dir = self.dir.path().display().to_string();
        let data = self.data_dir().display().to_string();
        let port_text = port.to_string();
        let args: Vec<String> = [
            "-D",
            &data,
            "-p",
            &port_text,
            // The unix socket in our own directory: no clash with a system
            // server's /var/run/postgresql, and the path stays short.
            "-k",
            &dir,
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
        .collect();
        let process = Supervised::spawn(
            &self.bin.join("postgres"),
            &args,
            self.dir.path(),
            &self.log(),
            // Immediate shutdown: fast, and it still removes shared memory.
            "QUIT",
            self.user,
        );
        // Crash recovery after a kill -9 replays the WAL before accepting.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if !process.alive() {
                process.stop();
                return Err(format!("exited on port {port}: {}", log_tail(&self.log())));
            }
            if self.accepting(port) {
                return Ok(process);
            }
            sleep(Duration::from_millis(25));
        }
        process.kill9();
        Err(format!(
            "not accepting connections on port {port} within 60 s: {}",
            log_tail(&self.log())
        ))
    }

    fn accepting(&self, port: u16) -> bool {
        let mut cmd = Command::new(self.bin.join("pg_isready"));
        cmd.args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-t", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        without_pg_env(&mut cmd);
        cmd.status().is_ok_and(|status| status.success())
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Stopped backends would hold up the shutdown.
        self.resume();
        if let Some(process) = self.process.take() {
            process.stop();
        }
    }
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
    if let Some(initdb) = find_in_path("initdb") {
        if let Some(bin) = initdb.parent() {
            return bin.to_path_buf();
        }
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
