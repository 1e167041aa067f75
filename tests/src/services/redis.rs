//! [`RedisServer`]: a `redis-server` of its own, without persistence.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use tempfile::TempDir;

use super::process::signal;
use super::supervisor::Supervisor;
use super::{START_ATTEMPTS, find_in_path, free_port};

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
