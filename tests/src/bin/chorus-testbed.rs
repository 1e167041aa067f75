//! `chorus-testbed`: real `chorus` processes for tests written in other
//! languages (the JavaScript SDK's integration tests), driven over stdin.
//!
//! ```text
//! chorus-testbed --mode embedded                 # one node, SQLite in a temp dir
//! chorus-testbed --mode cluster --nodes 3        # own Redis + PostgreSQL, N nodes, a balancer
//! chorus-testbed --mode cluster -- --owner-lease-ms 1000   # extra chorus flags
//! ```
//!
//! Once everything serves it prints ONE JSON line on stdout:
//! `{"mode","url","http","nodes":[{"name","index","url","http","pid"}],"api_key","jwt_secret"}`
//! (`url`/`http` are the balancer's in cluster mode, the node's otherwise).
//! Every node accepts dev identities (`?user=NAME`, loopback) and HS256 JWTs
//! signed with `jwt_secret`, has the HTTP API key `api_key`, the harness's
//! fixed resume secret (resume works across restarts and nodes), and the
//! per-connection send limits lifted.
//!
//! Then it reads one command per line from stdin and answers each with one
//! JSON line (`"ok": true|false`, `"error"` when false). `N` is a node's index
//! (0-based, as in `nodes`) or its name:
//! - `kill N`: SIGKILL node N (and reap it).
//! - `start N`: start node N again on the same port, data directory and
//!   database (a running node is SIGKILLed first).
//! - `owner ROOM`: the node holding the room's writer lease in Redis, as
//!   `{"owner": NAME|null, "index": I|null}` (embedded: always node 0).
//! - `nodes`: the nodes and whether each runs.
//! - `quit`: stop everything and exit.
//!
//! End of file on stdin (the parent exited, however it exited), SIGTERM,
//! SIGINT, SIGHUP and the `--max-secs` deadline stop everything too: the
//! nodes are SIGKILLed by PID, Redis and PostgreSQL stopped, temporary
//! directories removed.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chorus_tests::cluster::{Cluster, RedisHandle};
use chorus_tests::services::{PostgresServer, RedisServer};
use chorus_tests::{API_KEY, GatewayProcess, JWT_SECRET, UNLIMITED};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// One node with SQLite history.
    Embedded,
    /// Nodes on their own Redis and PostgreSQL, behind a round-robin balancer.
    Cluster,
}

#[derive(Parser, Debug)]
#[command(
    name = "chorus-testbed",
    about = "Start chorus nodes for external tests and drive them over stdin"
)]
struct Args {
    #[arg(long, value_enum, default_value_t = Mode::Embedded)]
    mode: Mode,
    /// Cluster nodes (cluster mode).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Stop everything after this many seconds whatever happens.
    #[arg(long, default_value_t = 1800)]
    max_secs: u64,
    /// Room ownership lease of cluster nodes, milliseconds (a killed owner's
    /// rooms move within about this long).
    #[arg(long, default_value_t = 1500)]
    owner_lease_ms: u64,
    /// Extra `chorus` flags for every node (after `--`).
    #[arg(last = true)]
    extra: Vec<String>,
}

/// What runs. Dropping it stops everything (nodes by PID, then the services).
enum Bed {
    Embedded {
        node: GatewayProcess,
        _dir: tempfile::TempDir,
    },
    Cluster {
        // Declared first: the nodes stop before their Redis and database.
        cluster: Box<Cluster>,
        _postgres: PostgresServer,
    },
}

impl Bed {
    fn nodes(&self) -> &[GatewayProcess] {
        match self {
            Bed::Embedded { node, .. } => std::slice::from_ref(node),
            Bed::Cluster { cluster, .. } => &cluster.nodes,
        }
    }

    fn nodes_mut(&mut self) -> &mut [GatewayProcess] {
        match self {
            Bed::Embedded { node, .. } => std::slice::from_mut(node),
            Bed::Cluster { cluster, .. } => &mut cluster.nodes,
        }
    }

    /// The address clients use.
    fn front(&self) -> String {
        match self {
            Bed::Embedded { node, .. } => node.addr.clone(),
            Bed::Cluster { cluster, .. } => cluster.lb.addr.clone(),
        }
    }

    /// Node index from an index or a name.
    fn index(&self, arg: &str) -> Result<usize, String> {
        let n = self.nodes().len();
        if let Ok(i) = arg.parse::<usize>() {
            return if i < n {
                Ok(i)
            } else {
                Err(format!("no node {i} (there are {n})"))
            };
        }
        (0..n)
            .find(|&i| node_name(i) == arg)
            .ok_or_else(|| format!("no node named {arg:?}"))
    }

    fn describe(&self) -> Value {
        let nodes: Vec<Value> = self
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let pid = p.pid();
                json!({
                    "name": node_name(i),
                    "index": i,
                    "url": format!("ws://{}/ws", node_addr(p)),
                    "http": format!("http://{}", node_addr(p)),
                    "pid": pid,
                    "running": pid != 0,
                })
            })
            .collect();
        json!(nodes)
    }

    fn command(&mut self, line: &str) -> Value {
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or_default();
        let arg = words.next().unwrap_or_default();
        match cmd {
            "kill" => match self.index(arg) {
                Ok(i) => {
                    self.nodes_mut()[i].kill9();
                    json!({"ok": true, "killed": node_name(i), "index": i})
                }
                Err(e) => json!({"ok": false, "error": e}),
            },
            "start" => match self.index(arg) {
                Ok(i) => {
                    let node = &mut self.nodes_mut()[i];
                    node.restart();
                    json!({
                        "ok": true,
                        "started": node_name(i),
                        "index": i,
                        "http": format!("http://{}", node_addr(node)),
                        "pid": node.pid(),
                    })
                }
                Err(e) => json!({"ok": false, "error": e}),
            },
            "owner" if !arg.is_empty() => match self {
                Bed::Embedded { .. } => json!({"ok": true, "owner": node_name(0), "index": 0}),
                Bed::Cluster { cluster, .. } => {
                    let key = format!("{}own:{arg}", cluster.prefix);
                    match redis_get(cluster.redis.server().port, &key) {
                        Ok(owner) => {
                            let index = owner.as_deref().and_then(|o| {
                                (0..cluster.nodes.len()).find(|&i| node_name(i) == o)
                            });
                            json!({"ok": true, "owner": owner, "index": index})
                        }
                        Err(e) => json!({"ok": false, "error": format!("redis GET {key}: {e}")}),
                    }
                }
            },
            "nodes" => json!({"ok": true, "nodes": self.describe()}),
            "" => json!({"ok": false, "error": "empty command"}),
            _ => json!({
                "ok": false,
                "error": format!("unknown command {line:?} (kill N, start N, owner ROOM, nodes, quit)"),
            }),
        }
    }
}

/// Node ids as the cluster harness names them.
fn node_name(i: usize) -> String {
    format!("n{i}")
}

/// A node's own listen address (also while it is stopped: `http_url` keeps it).
fn node_addr(p: &GatewayProcess) -> String {
    p.http_url().trim_start_matches("http://").to_owned()
}

/// `GET key` over RESP: `Ok(None)` for a nil reply.
fn redis_get(port: u16, key: &str) -> std::io::Result<Option<String>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let req = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
    s.write_all(req.as_bytes())?;
    let mut reader = std::io::BufReader::new(s);
    let mut head = String::new();
    reader.read_line(&mut head)?;
    let head = head.trim_end();
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidData, m);
    let Some(len) = head.strip_prefix('$') else {
        return Err(bad(format!("unexpected reply {head:?}")));
    };
    let len: i64 = len
        .parse()
        .map_err(|_| bad(format!("bad length {head:?}")))?;
    if len < 0 {
        return Ok(None);
    }
    let mut buf = vec![0_u8; len as usize + 2];
    reader.read_exact(&mut buf)?;
    buf.truncate(len as usize);
    String::from_utf8(buf)
        .map(Some)
        .map_err(|e| bad(e.to_string()))
}

fn start(args: &Args) -> Bed {
    let mut flags: Vec<String> = UNLIMITED.iter().map(|s| s.to_string()).collect();
    match args.mode {
        Mode::Embedded => {
            flags.extend(args.extra.iter().cloned());
            let dir = tempfile::Builder::new()
                .prefix("chorus-testbed-")
                .tempdir()
                .expect("tempdir");
            let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            let node = GatewayProcess::start_in(dir.path(), &refs, None);
            Bed::Embedded { node, _dir: dir }
        }
        Mode::Cluster => {
            assert!(args.nodes >= 1, "--nodes must be at least 1");
            flags.extend(["--owner-lease-ms".into(), args.owner_lease_ms.to_string()]);
            flags.extend(args.extra.iter().cloned());
            let postgres = PostgresServer::start();
            let database_url = postgres.create_database();
            let redis = RedisHandle::Owned(RedisServer::start());
            let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
            let cluster = Cluster::start_on(args.nodes, &refs, redis, database_url);
            Bed::Cluster {
                cluster: Box::new(cluster),
                _postgres: postgres,
            }
        }
    }
}

type Shared = Arc<Mutex<Option<Bed>>>;

/// Stop everything that runs and exit with `code`.
fn shutdown(bed: &Shared, code: i32) -> ! {
    let taken = bed.lock().unwrap_or_else(|e| e.into_inner()).take();
    drop(taken);
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

/// Stop everything on SIGTERM, SIGINT or SIGHUP, and at the deadline.
fn watch(bed: Shared, max: Duration) {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("signal runtime");
        let code = rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
            tokio::select! {
                _ = term.recv() => 143,
                _ = int.recv() => 130,
                _ = hup.recv() => 129,
                _ = tokio::time::sleep(max) => {
                    eprintln!("chorus-testbed: --max-secs {} reached, stopping", max.as_secs());
                    124
                }
            }
        });
        shutdown(&bed, code);
    });
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn main() {
    let args = Args::parse();
    let bed: Shared = Arc::new(Mutex::new(None));
    watch(bed.clone(), Duration::from_secs(args.max_secs));
    let started = start(&args);
    let hello = json!({
        "mode": if args.mode == Mode::Cluster { "cluster" } else { "embedded" },
        "url": format!("ws://{}/ws", started.front()),
        "http": format!("http://{}", started.front()),
        "nodes": started.describe(),
        "api_key": API_KEY,
        "jwt_secret": JWT_SECRET,
    });
    *bed.lock().unwrap_or_else(|e| e.into_inner()) = Some(started);
    emit(&hello);

    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let line = line.trim();
        if line == "quit" {
            emit(&json!({"ok": true, "quit": true}));
            shutdown(&bed, 0);
        }
        let reply = {
            let mut guard = bed.lock().unwrap_or_else(|e| e.into_inner());
            match guard.as_mut() {
                // A failed restart panics in the harness: answer it as an error.
                Some(b) => {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| b.command(line)))
                        .unwrap_or_else(|e| {
                            let why = e
                                .downcast_ref::<String>()
                                .cloned()
                                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                                .unwrap_or_else(|| "panic".into());
                            json!({"ok": false, "error": why})
                        })
                }
                None => json!({"ok": false, "error": "stopping"}),
            }
        };
        emit(&reply);
    }
    // End of file: the parent is gone or done.
    shutdown(&bed, 0);
}
