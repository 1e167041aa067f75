//! A fault-injecting TCP proxy: a node's Redis or PostgreSQL connection goes
//! through one, so the chaos harness can break that one link without touching
//! the server or the node.
//!
//! Faults ([`Fault`]) apply to every connection through the proxy, open or
//! new, from the moment they are set:
//! - `Delay`: each chunk is held this long before it is forwarded (latency).
//! - `Throttle`: forwarding is capped at this many bytes per second and
//!   direction (a thin pipe).
//! - `Blackhole`: nothing is forwarded in either direction and nothing is
//!   refused; bytes wait (and TCP buffers fill) until the fault is lifted, as
//!   in a network partition where packets are lost, not rejected.
//! - `HalfOpen`: requests reach the server, replies are swallowed: the client
//!   sees an open connection that never answers.
//! - `Refuse`: every open connection is reset (RST) when it is set, and new
//!   ones are reset as soon as they are accepted, as with a server that is
//!   down: the client knows at once that it has no connection.
//!
//! [`FaultProxy::reset`] aborts every open connection with a TCP RST on both
//! sides (abrupt reset); new connections are served as usual.
//!
//! One task per connection serves both directions; the fault in force is a
//! `watch` value, so changing it wakes every waiting connection at once.
//! Dropping the proxy stops accepting and closes every connection.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Chunk size of one read.
const CHUNK: usize = 16 * 1024;

/// What the proxy does to the bytes it forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward as is.
    Pass,
    /// Hold each chunk this long before forwarding it.
    Delay(Duration),
    /// At most this many bytes per second in each direction.
    Throttle(u64),
    /// Forward nothing, refuse nothing.
    Blackhole,
    /// Forward client to server; swallow server to client.
    HalfOpen,
    /// Reset open connections and every new one.
    Refuse,
}

impl Fault {
    /// Short name for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::Pass => "pass",
            Fault::Delay(_) => "delay",
            Fault::Throttle(_) => "throttle",
            Fault::Blackhole => "blackhole",
            Fault::HalfOpen => "half-open",
            Fault::Refuse => "refuse",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct State {
    fault: Fault,
    /// Bumped by `reset`: a connection opened under an older value aborts.
    resets: u64,
}

/// A running proxy from [`FaultProxy::addr`] to one target.
pub struct FaultProxy {
    addr: SocketAddr,
    target: SocketAddr,
    state: watch::Sender<State>,
    accept: JoinHandle<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// How one direction of a connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Exit {
    /// End of stream, an I/O error, or the proxy is gone.
    Closed,
    /// `reset` was called.
    Reset,
}

impl FaultProxy {
    /// Listen on a free loopback port and forward to `target` (inside a Tokio
    /// runtime).
    pub async fn start(target: SocketAddr) -> io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, rx) = watch::channel(State {
            fault: Fault::Pass,
            resets: 0,
        });
        let accept = tokio::spawn(async move {
            // Ends when the proxy is dropped (the task is aborted) or the
            // listener fails.
            while let Ok((client, _)) = listener.accept().await {
                if rx.borrow().fault == Fault::Refuse {
                    // Dropped with a zero linger: the client gets an RST.
                    let _ = client.set_zero_linger();
                    continue;
                }
                let rx = rx.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        serve(client, server, rx).await;
                    }
                });
            }
        });
        Ok(FaultProxy {
            addr,
            target,
            state,
            accept,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Put `fault` in force for every connection (`Refuse` also resets the
    /// open ones).
    pub fn set(&self, fault: Fault) {
        self.state.send_modify(|s| {
            s.fault = fault;
            if fault == Fault::Refuse {
                s.resets += 1;
            }
        });
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.state.borrow().fault
    }

    /// Lift the fault and reset every open connection in one step, so no new
    /// connection slips in under the old fault (after a fault that lost
    /// bytes, such as `HalfOpen`, a connection cannot go on).
    pub fn heal_with_reset(&self) {
        self.state.send_modify(|s| {
            s.fault = Fault::Pass;
            s.resets += 1;
        });
    }

    /// Abort every open connection with a TCP reset, both sides.
    pub fn reset(&self) {
        self.state.send_modify(|s| s.resets += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Open connections see the sender gone and close.
    }
}

async fn serve(mut client: TcpStream, mut server: TcpStream, state: watch::Receiver<State>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let generation = state.borrow().resets;
    let exit = {
        let (client_rx, client_tx) = client.split();
        let (server_rx, server_tx) = server.split();
        let up = pump(
            client_rx,
            server_tx,
            state.clone(),
            Direction::Up,
            generation,
        );
        let down = pump(server_rx, client_tx, state, Direction::Down, generation);
        // Either direction ending ends the connection: neither Redis nor
        // PostgreSQL clients half-close a connection they keep using.
        tokio::select! {
            e = up => e,
            e = down => e,
        }
    };
    if exit == Exit::Reset {
        // Dropped with a zero linger, both sockets send RST, not FIN.
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut state: watch::Receiver<State>,
    direction: Direction,
    generation: u64,
) -> Exit {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Exit::Closed,
                Ok(n) => n,
            },
            changed = state.changed() => {
                if changed.is_err() {
                    return Exit::Closed;
                }
                if state.borrow_and_update().resets != generation {
                    return Exit::Reset;
                }
                continue;
            }
        };
        // Deliver this chunk under the fault in force, re-read after every
        // change while it is held back.
        loop {
            let current = *state.borrow_and_update();
            if current.resets != generation {
                return Exit::Reset;
            }
            match current.fault {
                Fault::Blackhole => {
                    if state.changed().await.is_err() {
                        return Exit::Closed;
                    }
                }
                // Set together with a reset (`set`), which ended this
                // connection already.
                Fault::Refuse => return Exit::Reset,
                Fault::HalfOpen if direction == Direction::Down => break,
                Fault::HalfOpen | Fault::Pass => {
                    if to.write_all(&buf[..n]).await.is_err() {
                        return Exit::Closed;
                    }
                    break;
                }
                Fault::Delay(d) => {
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        changed = state.changed() => {
                            if changed.is_err() {
                                return Exit::Closed;
                            }
                            // Re-evaluate under the new fault.
                            continue;
                        }
                    }
                    if to.write_all(&buf[..n]).await.is_err() {
                        return Exit::Closed;
                    }
                    break;
                }
                Fault::Throttle(bytes_per_sec) => {
                    // The chunk takes as long as the thin pipe needs for it.
                    let rate = bytes_per_sec.max(1) as f64;
                    tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate)).await;
                    if to.write_all(&buf[..n]).await.is_err() {
                        return Exit::Closed;
                    }
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// An echo server on a free port.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8], within: Duration) -> io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut got = vec![0u8; msg.len()];
        match tokio::time::timeout(within, s.read_exact(&mut got)).await {
            Ok(r) => r.map(|_| got),
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no answer")),
        }
    }

    #[tokio::test]
    async fn passes_bytes_through() {
        let proxy = FaultProxy::start(echo().await).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        let got = roundtrip(&mut s, b"hello", Duration::from_secs(5))
            .await
            .expect("echo");
        assert_eq!(got, b"hello");
        assert_eq!(proxy.fault(), Fault::Pass);
    }

    #[tokio::test]
    async fn blackhole_holds_bytes_until_lifted() {
        let proxy = FaultProxy::start(echo().await).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        proxy.set(Fault::Blackhole);
        let err = roundtrip(&mut s, b"lost?", Duration::from_millis(300))
            .await
            .expect_err("nothing passes a blackhole");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        proxy.set(Fault::Pass);
        // The held bytes arrive once the partition heals, as TCP would
        // retransmit them.
        let mut got = vec![0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("delivered after healing")
            .expect("read");
        assert_eq!(&got, b"lost?");
    }

    #[tokio::test]
    async fn half_open_swallows_replies_only() {
        let proxy = FaultProxy::start(echo().await).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        proxy.set(Fault::HalfOpen);
        let err = roundtrip(&mut s, b"ping", Duration::from_millis(300))
            .await
            .expect_err("reply swallowed");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        proxy.set(Fault::Pass);
        // The swallowed echo is gone for good; the next one passes.
        let got = roundtrip(&mut s, b"pong", Duration::from_secs(5))
            .await
            .expect("echo after healing");
        assert_eq!(got, b"pong");
    }

    #[tokio::test]
    async fn reset_aborts_open_connections_and_serves_new_ones() {
        let proxy = FaultProxy::start(echo().await).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        roundtrip(&mut s, b"a", Duration::from_secs(5))
            .await
            .expect("echo");
        proxy.reset();
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the reset arrives");
        let err = r.expect_err("a reset, not a clean end of stream");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        let mut fresh = TcpStream::connect(proxy.addr()).await.expect("connect");
        let got = roundtrip(&mut fresh, b"b", Duration::from_secs(5))
            .await
            .expect("new connections pass");
        assert_eq!(got, b"b");
    }

    #[tokio::test]
    async fn refuse_resets_open_and_new_connections_until_lifted() {
        let proxy = FaultProxy::start(echo().await).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        roundtrip(&mut s, b"a", Duration::from_secs(5))
            .await
            .expect("echo");
        proxy.set(Fault::Refuse);
        let mut buf = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the reset arrives");
        assert!(r.is_err(), "the open connection is reset: {r:?}");
        let mut refused = TcpStream::connect(proxy.addr()).await.expect("accepted");
        let r = tokio::time::timeout(Duration::from_secs(5), refused.read(&mut buf))
            .await
            .expect("the reset arrives");
        assert!(
            r.is_err() || r.as_ref().is_ok_and(|&n| n == 0),
            "a new connection ends at once: {r:?}"
        );
        proxy.set(Fault::Pass);
        let mut fresh = TcpStream::connect(proxy.addr()).await.expect("connect");
        let got = roundtrip(&mut fresh, b"b", Duration::from_secs(5))
            .await
            .expect("new connections pass again");
        assert_eq!(got, b"b");
    }

    #[tokio::test]
    async fn delay_and_throttle_slow_the_link() {
        let proxy = FaultProxy::start(echo().await).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        proxy.set(Fault::Delay(Duration::from_millis(100)));
        let started = Instant::now();
        roundtrip(&mut s, b"x", Duration::from_secs(5))
            .await
            .expect("echo");
        // Held once each way.
        assert!(started.elapsed() >= Duration::from_millis(200));
        proxy.set(Fault::Throttle(20_000));
        let started = Instant::now();
        let payload = vec![7u8; 10_000];
        let got = roundtrip(&mut s, &payload, Duration::from_secs(10))
            .await
            .expect("echo");
        assert_eq!(got, payload);
        // 10 kB at 20 kB/s takes at least half a second in one direction.
        assert!(started.elapsed() >= Duration::from_millis(450));
    }
}
