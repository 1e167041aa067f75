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
//!
//! Layout: [`RedisServer`] in `redis`, [`PostgresServer`] (initdb, the
//! server's settings, the `postgres` user) in `postgres`, the supervisor shell
//! and its commands in `supervisor`, `/proc` and signals in `process`; this
//! file holds the small helpers they share (free ports, PATH, logs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod postgres;
mod process;
mod redis;
mod supervisor;

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use postgres::PostgresServer;
pub use redis::RedisServer;

/// How many free ports a server start tries: another process may take the
/// port between probing it and the server binding it.
const START_ATTEMPTS: usize = 5;

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

/// The end of a server log, for failure messages.
fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
