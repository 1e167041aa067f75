//! Starting the contenders: a chorus node or a 2-node chorus cluster (its own
//! Redis and PostgreSQL), the floor (`chorus-floor`, beside this binary), or a
//! Socket.IO, socketioxide or Sockudo peer process; each server pinned to CPU 0.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use chorus_tests::cluster::{Cluster, RedisHandle};
use chorus_tests::load::{self, Proto, Server};
use chorus_tests::services::{PostgresServer, RedisServer};
use chorus_tests::{GatewayProcess, UNLIMITED};

/// The repository root (this binary lives in target/<profile>/).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A peer process, killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start a peer that prints `listening on 127.0.0.1:PORT` when ready.
fn start_peer(name: &'static str, proto: Proto, mut cmd: Command) -> anyhow::Result<Server> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {name}: {e}"))?;
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow::anyhow!("{name} did not start: {line:?}"))?
        .parse()?;
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    let pid = child.id();
    Ok(Server {
        name,
        proto,
        addr,
        pid,
        guard: Box::new(Peer(child)),
    })
}

/// `program` started on CPU 0 (through `taskset`, which execs it: the PID
/// stays the server's), so a runtime that sizes its thread pool by the CPUs it
/// may use starts with one worker. `tests/bench/run` does the same for chorus.
fn on_cpu0(program: impl AsRef<std::ffi::OsStr>) -> Command {
    if load::in_netns() {
        // `ip netns exec` execs too: the PID is still the server's.
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", load::NETNS, "taskset", "-c", "0"])
            .arg(program);
        return cmd;
    }
    if Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Start a contender by name.
pub(crate) fn start(name: &str, redis: &RedisServer) -> anyhow::Result<Server> {
    if load::in_netns() && !matches!(name, "chorus" | "floor") {
        anyhow::bail!("not with --netns: the peers' Redis is outside the namespace");
    }
    let server = match name {
        "chorus" => {
            let mut flags: Vec<&str> = UNLIMITED.to_vec();
            flags.extend(["--max-connections-per-user", "100000"]);
            let node = if load::in_netns() {
                // tests/bench/run wraps CHORUS_BIN in `ip netns exec`. Not on
                // loopback, chorus refuses the harness's development login
                // (the load generator's clients carry JWTs anyway), and its
                // per-IP limits exempt the load generator's addresses as they
                // exempt loopback (where a load balancer would sit).
                let listen = format!("{}:0", load::NETNS_SERVER_IP);
                let mut args = vec![
                    "--listen",
                    &listen,
                    "--per-ip-exempt",
                    "10.77.0.0/24",
                    "--jwt-secret",
                    chorus_tests::JWT_SECRET,
                    "--api-key",
                    chorus_tests::API_KEY,
                    "--resume-secret",
                    "bench-resume-secret",
                ];
                args.extend(&flags);
                GatewayProcess::start_args(&args)
            } else {
                GatewayProcess::start(&flags)
            };
            Server {
                name: "chorus",
                proto: Proto::Chorus,
                addr: node.addr.parse()?,
                pid: node.pid(),
                guard: Box::new(node),
            }
        }
        "socketio" => {
            let mut cmd = on_cpu0("node");
            cmd.arg(root().join("tests/bench/peers/socketio/server.js"))
                .args(["--port", "0", "--redis", &redis.url()]);
            start_peer("Socket.IO", Proto::SocketIo, cmd)?
        }
        "socketioxide" => {
            let bin =
                root().join("tests/bench/peers/socketioxide/target/release/socketioxide-peer");
            let mut cmd = on_cpu0(bin);
            cmd.args(["--port", "0", "--redis", &redis.url()]);
            start_peer("socketioxide", Proto::SocketIo, cmd)?
        }
        "sockudo" => start_sockudo(redis)?,
        "floor" => {
            // Built beside this binary (tests/bench/run builds both).
            let bin = std::env::current_exe()?.with_file_name("chorus-floor");
            let mut cmd = on_cpu0(bin);
            cmd.args(["--port", "0"]);
            if load::in_netns() {
                cmd.args(["--host", load::NETNS_SERVER_IP]);
            }
            start_peer("floor", Proto::Chorus, cmd)?
        }
        other => anyhow::bail!("unknown contender {other}"),
    };
    load::pin(server.pid, "0");
    Ok(server)
}

/// A Sockudo process with its Redis adapter on `redis`: the committed
/// config (tests/bench/peers/sockudo/config.json) on a free port, started in
/// a directory of its own (Sockudo also reads `config/config.*` from its
/// working directory) with the environment variables that would override
/// the file removed; ready when `GET /ready` answers 200.
fn start_sockudo(redis: &RedisServer) -> anyhow::Result<Server> {
    let peer = root().join("tests/bench/peers/sockudo");
    let bin = peer.join("bin/sockudo");
    anyhow::ensure!(
        bin.exists(),
        "{} missing: run tests/bench/peers/setup",
        bin.display()
    );
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(peer.join("config.json"))?)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    config["port"] = port.into();
    config["adapter"]["redis"]["redis_pub_options"]["url"] = redis.url().into();
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("sockudo.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&config)?)?;
    let log = std::fs::File::create(dir.path().join("sockudo.log"))?;
    let mut cmd = on_cpu0(bin);
    cmd.arg("--config")
        .arg(&file)
        .current_dir(dir.path())
        .stdout(log.try_clone()?)
        .stderr(log);
    for var in ["HOST", "PORT", "REDIS_URL", "ADAPTER_DRIVER", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "warn");
    let child = cmd
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting sockudo: {e}"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let pid = child.id();
    let peer = Peer(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !ready(addr) {
        if std::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("sockudo.log")).unwrap_or_default();
            anyhow::bail!("sockudo not ready on {addr} within 30 s; its log:\n{log}");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Ok(Server {
        name: "sockudo",
        proto: Proto::Pusher,
        addr,
        pid,
        guard: Box::new((peer, dir)),
    })
}

/// Whether an HTTP server on `addr` answers `GET /ready` with 200.
fn ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// Two instances of a contender sharing one Redis: chorus as a 2-node cluster
/// (its own Redis and PostgreSQL), the peers as two processes with their
/// Redis adapter on `redis`.
pub(crate) fn start_pair(name: &str, redis: &RedisServer) -> anyhow::Result<Vec<Server>> {
    start_pair_with(name, redis, &[])
}

/// [`start_pair`] with extra chorus flags.
pub(crate) fn start_pair_with(
    name: &str,
    redis: &RedisServer,
    extra: &[&str],
) -> anyhow::Result<Vec<Server>> {
    if name == "floor" {
        // One process is the floor of any number of nodes: no hop between them.
        return Ok(vec![start(name, redis)?]);
    }
    if name != "chorus" {
        return Ok(vec![start(name, redis)?, start(name, redis)?]);
    }
    anyhow::ensure!(
        !load::in_netns(),
        "not with --netns: the cluster's Redis and PostgreSQL are outside the namespace"
    );
    let mut flags: Vec<&str> = UNLIMITED.to_vec();
    flags.extend(["--max-connections-per-user", "100000"]);
    flags.extend(extra);
    let pg = PostgresServer::start();
    let database_url = pg.create_database();
    let cluster = Cluster::start_on(
        2,
        &flags,
        RedisHandle::Owned(RedisServer::start()),
        database_url,
    );
    let servers: Vec<Server> = cluster
        .nodes
        .iter()
        .map(|n| {
            let pid = n.pid();
            load::pin(pid, "0");
            Ok(Server {
                name: "chorus",
                proto: Proto::Chorus,
                addr: n.addr.parse()?,
                pid,
                guard: Box::new(()),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let mut servers = servers;
    // The first server keeps the whole cluster (and its PostgreSQL) alive.
    servers[0].guard = Box::new((cluster, pg));
    Ok(servers)
}
