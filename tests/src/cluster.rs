//! Cluster-mode harness: N `chorus` nodes on one Redis and one PostgreSQL
//! database (each cluster its own key prefix and database), and a round-robin
//! TCP load balancer in front of them (no sticky sessions).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::GatewayProcess;
use crate::services::{PostgresServer, RedisServer};

/// Where a cluster's Redis is: a shared server, or one the test owns (to kill
/// or restart it).
pub enum RedisHandle {
    Shared(&'static RedisServer),
    Owned(RedisServer),
}

impl RedisHandle {
    pub fn server(&self) -> &RedisServer {
        match self {
            RedisHandle::Shared(s) => s,
            RedisHandle::Owned(s) => s,
        }
    }
}

/// Flags every cluster node gets, for a given Redis URL, database URL and prefix.
pub fn cluster_flags(redis_url: &str, database_url: &str, prefix: &str) -> Vec<String> {
    vec![
        "--redis-url".into(),
        redis_url.into(),
        "--database-url".into(),
        database_url.into(),
        "--redis-prefix".into(),
        prefix.into(),
        "--database-pool".into(),
        "4".into(),
    ]
}

/// A running cluster.
pub struct Cluster {
    pub nodes: Vec<GatewayProcess>,
    pub redis: RedisHandle,
    pub database_url: String,
    pub prefix: String,
    /// The load balancer in front of every node.
    pub lb: LoadBalancer,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// `n` nodes on the shared Redis and a fresh database, with `extra` flags.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(n, extra, RedisHandle::Shared(RedisServer::shared()))
    }

    /// `n` nodes on a Redis of the test's own (it may be killed or restarted).
    pub fn start_own_redis(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(n, extra, RedisHandle::Owned(RedisServer::start()))
    }

    fn start_with(n: usize, extra: &[&str], redis: RedisHandle) -> Cluster {
        let database_url = PostgresServer::shared().create_database();
        Cluster::start_on(n, extra, redis, database_url)
    }

    /// `n` nodes on the given Redis and database (a test that kills or pauses
    /// PostgreSQL starts its own server and passes a database of it).
    pub fn start_on(n: usize, extra: &[&str], redis: RedisHandle, database_url: String) -> Cluster {
        let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
        let mut flags = cluster_flags(&redis.server().url(), &database_url, &prefix);
        flags.extend(extra.iter().map(|s| s.to_string()));
        let mut dirs = Vec::new();
        let mut nodes = Vec::new();
        for i in 0..n {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut f = flags.clone();
            f.push("--node-id".into());
            f.push(format!("n{i}"));
            let refs: Vec<&str> = f.iter().map(String::as_str).collect();
            nodes.push(GatewayProcess::start_in(dir.path(), &refs, None));
            dirs.push(dir);
        }
        let lb = LoadBalancer::start(
            nodes
                .iter()
                .map(|n| n.addr.parse().expect("addr"))
                .collect(),
        );
        Cluster {
            nodes,
            redis,
            database_url,
            prefix,
            lb,
            _dirs: dirs,
        }
    }

    /// `ws://LB/ws` with a JWT for `user`.
    pub fn url_for(&self, user: &str) -> String {
        format!(
            "ws://{}/ws?access_token={}",
            self.lb.addr,
            crate::token(user, 3600, None, None)
        )
    }

    /// Data directories of the nodes (unused by cluster history, kept for logs).
    pub fn dirs(&self) -> Vec<PathBuf> {
        self._dirs.iter().map(|d| d.path().to_path_buf()).collect()
    }
}

/// A round-robin TCP proxy on 127.0.0.1 (a stand-in for any L4 load balancer).
pub struct LoadBalancer {
    pub addr: String,
    backends: Arc<Mutex<Vec<SocketAddr>>>,
    _thread: std::thread::JoinHandle<()>,
}

impl LoadBalancer {
    pub fn start(backends: Vec<SocketAddr>) -> LoadBalancer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind lb");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("lb addr").to_string();
        let backends = Arc::new(Mutex::new(backends));
        let list = backends.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("lb runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("lb listener");
                let next = AtomicUsize::new(0);
                while let Ok((mut inbound, _)) = listener.accept().await {
                    let targets = list.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if targets.is_empty() {
                        continue;
                    }
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        // Skip dead backends like a health-checking balancer would.
                        for k in 0..targets.len() {
                            let target = targets[(start + k) % targets.len()];
                            if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                                return;
                            }
                        }
                    });
                }
            });
        });
        LoadBalancer {
            addr,
            backends,
            _thread: thread,
        }
    }

    /// Replace the backend list (after a node restarts on another port).
    pub fn set_backends(&self, backends: Vec<SocketAddr>) {
        *self.backends.lock().unwrap_or_else(|e| e.into_inner()) = backends;
    }
}
