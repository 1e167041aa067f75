//! The load generator's connections: one lean WebSocket per simulated client,
//! speaking either chorus's protocol or Socket.IO's (Engine.IO v4 over
//! WebSocket), so one tool drives every contender with the same workload.
//!
//! Lean on purpose: a receiver is one task over one socket with small
//! buffers; it answers heartbeats and, for each room message, reads two
//! numbers out of the frame text (the sender's sequence `k` and scheduled send
//! time `t`) without decoding the rest.
//!
//! Layout:
//! - [`Proto`], [`connect`], [`join`]: open a connection and join a room.
//! - [`Receiver`]: counts deliveries, losses, duplicates, reorders, and
//!   delivery lag into shared [`Stats`].
//! - [`Sender`]: open-loop constant-rate publisher.
//! - [`Server`]: a contender process (RSS and CPU from /proc).

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// A raw WebSocket over plain TCP.
pub type Ws = WebSocketStream<TcpStream>;

/// Which protocol a contender speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// chorus: JSON frames tagged by `op`.
    Chorus,
    /// Socket.IO 4 (Engine.IO v4, WebSocket transport only).
    SocketIo,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn ws_config() -> WebSocketConfig {
    // Small buffers: the load generator holds tens of thousands of sockets.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
}

/// Open a WebSocket from `local` (a 127.0.0.x address, to spread source
/// ports) and complete the protocol's handshake. `token` is a JWT (chorus).
pub async fn connect(
    proto: Proto,
    server: SocketAddr,
    local: IpAddr,
    token: &str,
) -> anyhow::Result<Ws> {
    Ok(connect_with(proto, server, local, token, None).await?.0)
}

/// [`connect`], resuming when `resume` is given (chorus: `hello.resume`
/// with that token and `room` at seq 0; the server re-joins the room). Also
/// returns the resume token of the `welcome` (chorus; empty for Socket.IO).
pub async fn connect_with(
    proto: Proto,
    server: SocketAddr,
    local: IpAddr,
    token: &str,
    resume: Option<(&str, &str)>,
) -> anyhow::Result<(Ws, String)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    let url = match proto {
        Proto::Chorus => format!("ws://{server}/ws?access_token={token}"),
        Proto::SocketIo => {
            format!("ws://{server}/socket.io/?EIO=4&transport=websocket&token={token}")
        }
    };
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config())).await?;
    let mut resume_token = String::new();
    match proto {
        Proto::Chorus => {
            let hello = match resume {
                Some((token, room)) => format!(
                    r#"{{"op":"hello","v":1,"resume":{{"token":"{token}","rooms":{{"{room}":0}}}}}}"#
                ),
                None => r#"{"op":"hello","v":1}"#.to_owned(),
            };
            ws.send(Message::text(hello)).await?;
            let welcome = expect(&mut ws, proto, |t| t.starts_with(r#"{"op":"welcome""#)).await?;
            let v: serde_json::Value = serde_json::from_str(&welcome)?;
            resume_token = v["resume_token"].as_str().unwrap_or_default().to_owned();
            if resume.is_some() {
                anyhow::ensure!(v["resumed"] == true, "resume refused");
                // The server re-joins the resumed room, then says so.
                expect(&mut ws, proto, |t| t.starts_with(r#"{"op":"joined""#)).await?;
            }
        }
        Proto::SocketIo => {
            // Engine.IO open packet, then the Socket.IO connect to "/".
            expect(&mut ws, proto, |t| t.starts_with("0{")).await?;
            ws.send(Message::text("40")).await?;
            expect(&mut ws, proto, |t| t.starts_with("40")).await?;
        }
    }
    Ok((ws, resume_token))
}

/// Join `room` and wait for the reply.
pub async fn join(ws: &mut Ws, proto: Proto, room: &str) -> anyhow::Result<()> {
    match proto {
        Proto::Chorus => {
            ws.send(Message::text(format!(
                r#"{{"op":"join","id":1,"room":"{room}"}}"#
            )))
            .await?;
            expect(ws, proto, |t| t.starts_with(r#"{"op":"joined""#)).await?;
        }
        Proto::SocketIo => {
            ws.send(Message::text(format!(r#"420["join","{room}"]"#)))
                .await?;
            expect(ws, proto, |t| t.starts_with("430")).await?;
        }
    }
    Ok(())
}

/// Read until a text frame satisfies `want` (answering heartbeats), within
/// 30 s; returns that frame.
async fn expect(ws: &mut Ws, proto: Proto, want: impl Fn(&str) -> bool) -> anyhow::Result<String> {
    let read = async {
        while let Some(m) = ws.next().await {
            if let Message::Text(t) = m? {
                if heartbeat(ws, proto, &t).await? {
                    continue;
                }
                if t.contains(r#""op":"error""#) {
                    anyhow::bail!("server error: {t}");
                }
                if want(&t) {
                    return Ok(t.as_str().to_owned());
                }
            }
        }
        anyhow::bail!("connection closed during the handshake")
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 30 s"))?
}

/// Answer a server heartbeat; true if `t` was one.
pub async fn heartbeat(ws: &mut Ws, proto: Proto, t: &str) -> anyhow::Result<bool> {
    match proto {
        Proto::Chorus if t.starts_with(r#"{"op":"ping""#) => {
            ws.send(Message::text(r#"{"op":"pong"}"#)).await?;
            Ok(true)
        }
        Proto::SocketIo if t == "2" => {
            ws.send(Message::text("3")).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// The unsigned integer after `"key":` in `text`.
fn field(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    text[at..at + digits].parse().ok()
}

/// Shared counters of one scenario, read and reset between steps.
pub struct Stats {
    pub received: AtomicU64,
    /// A `k` that skipped ahead of the next expected one (each skipped `k` counts).
    pub skipped: AtomicU64,
    /// A `k` at or below the last one seen (a duplicate or a reordered message).
    pub behind: AtomicU64,
    pub disconnects: AtomicU64,
    /// Delivery lag in microseconds (scheduled send time to receipt), sharded
    /// so receivers rarely contend.
    lag: Vec<Mutex<Histogram<u64>>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            received: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            behind: AtomicU64::new(0),
            disconnects: AtomicU64::new(0),
            lag: (0..16).map(|_| Mutex::new(new_histogram())).collect(),
        }
    }
}

/// A lag histogram: 1 us to 10 min, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds")
}

/// Counters of one step.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub received: u64,
    pub skipped: u64,
    pub behind: u64,
    pub disconnects: u64,
}

impl Stats {
    /// Wait until `want` messages arrived since the count was `since`, or
    /// `within` passed (what is missing then is lost).
    pub async fn wait_received(&self, since: u64, want: u64, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.received.load(Ordering::Relaxed) - since < want
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Counters so far and the lag histogram since the last call (reset).
    pub fn take(&self) -> (Snapshot, Histogram<u64>) {
        let mut h = new_histogram();
        for shard in &self.lag {
            let mut s = shard.lock().unwrap_or_else(|e| e.into_inner());
            let _ = h.add(&*s);
            s.reset();
        }
        (
            Snapshot {
                received: self.received.load(Ordering::Relaxed),
                skipped: self.skipped.load(Ordering::Relaxed),
                behind: self.behind.load(Ordering::Relaxed),
                disconnects: self.disconnects.load(Ordering::Relaxed),
            },
            h,
        )
    }
}

/// Read room messages on `ws` until `stop`, booking them in `stats`.
/// Messages carry the publisher's sequence `k` (0, 1, 2, ...) and scheduled
/// send time `t` (microseconds).
pub async fn receive(
    mut ws: Ws,
    proto: Proto,
    stats: std::sync::Arc<Stats>,
    shard: usize,
    mut stop: watch::Receiver<bool>,
) {
    let mut next_k: u64 = 0;
    let marker = match proto {
        Proto::Chorus => r#"{"op":"msg""#,
        Proto::SocketIo => r#"42["msg""#,
    };
    loop {
        let m = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => break,
        };
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Some(Ok(_)) => continue,
        };
        if !text.starts_with(marker) {
            if heartbeat(&mut ws, proto, &text).await.is_err() {
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
                return;
            }
            continue;
        }
        let (Some(k), Some(t)) = (field(&text, r#""k":"#), field(&text, r#""t":"#)) else {
            continue;
        };
        let lag = now_us().saturating_sub(t).max(1);
        {
            let mut h = stats.lag[shard % stats.lag.len()]
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let _ = h.record(lag);
        }
        if k < next_k {
            stats.behind.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if k > next_k {
            stats.skipped.fetch_add(k - next_k, Ordering::Relaxed);
        }
        next_k = k + 1;
        stats.received.fetch_add(1, Ordering::Relaxed);
    }
    let _ = ws.close(None).await;
}

/// A message body of about `size` bytes carrying `k` and `t`.
pub fn body(k: u64, t: u64, size: usize) -> String {
    let head = format!(r#"{{"k":{k},"t":{t},"p":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(size);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// Publish `count` messages into `room` at `rate` per second, open loop
/// (each at its scheduled time, whatever the server does), starting with
/// sequence `first_k`. `t` in each body is the scheduled time, so lag includes
/// any time the publisher itself fell behind (coordinated omission). Returns
/// how many were written.
pub async fn publish(
    ws: &mut Ws,
    proto: Proto,
    room: &str,
    first_k: u64,
    count: u64,
    rate: f64,
    size: usize,
) -> anyhow::Result<u64> {
    let mut next_k = [first_k];
    publish_many(
        ws,
        proto,
        &[room.to_owned()],
        &mut next_k,
        Pace { count, rate, size },
        None,
    )
    .await
}

/// How many messages, how fast (per second) and how big (bytes).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub count: u64,
    pub rate: f64,
    pub size: usize,
}

/// [`publish`] round-robin over `rooms`, each room with its own sequence
/// (`next_k[i]` is the next `k` of `rooms[i]`, advanced as messages go out).
/// With `acks`, each send asks for an acknowledgement (chorus: always; its
/// `ack` means committed; Socket.IO: an ack id, answered after the
/// broadcast), and the time from each message's scheduled send to its ack
/// goes into `acks` (microseconds); the publisher waits up to 10 s for the
/// last ones.
pub async fn publish_many(
    ws: &mut Ws,
    proto: Proto,
    rooms: &[String],
    next_k: &mut [u64],
    pace: Pace,
    mut acks: Option<&mut Histogram<u64>>,
) -> anyhow::Result<u64> {
    let Pace { count, rate, size } = pace;
    anyhow::ensure!(
        !rooms.is_empty() && rooms.len() == next_k.len(),
        "one k per room"
    );
    let start = tokio::time::Instant::now();
    let start_us = now_us();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let step_us = interval.as_micros() as u64;
    let mut acked = 0u64;
    // The message index an ack frame acknowledges.
    let ack_of = |t: &str| match proto {
        Proto::Chorus if t.starts_with(r#"{"op":"ack""#) => field(t, r#""id":"#),
        Proto::SocketIo if t.starts_with("43") => {
            t[2..].split('[').next().and_then(|n| n.parse::<u64>().ok())
        }
        _ => None,
    };
    let book = |t: &str, acks: &mut Option<&mut Histogram<u64>>| -> bool {
        match (ack_of(t), acks.as_deref_mut()) {
            (Some(id), Some(h)) => {
                let _ = h.record(now_us().saturating_sub(start_us + step_us * id).max(1));
                true
            }
            _ => false,
        }
    };
    for i in 0..count {
        let due = start + interval.mul_f64(i as f64);
        // Drain what the server sent meanwhile (acks, pings) without waiting.
        loop {
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(due) => break,
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        if !heartbeat(ws, proto, &t).await? && book(&t, &mut acks) {
                            acked += 1;
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => anyhow::bail!("publisher connection closed"),
                },
            }
        }
        let r = i as usize % rooms.len();
        let (room, k) = (&rooms[r], next_k[r]);
        next_k[r] += 1;
        let t = start_us + step_us * i;
        let frame = match (proto, acks.is_some()) {
            (Proto::Chorus, _) => format!(
                r#"{{"op":"send","id":{i},"room":"{room}","cid":"p{k}","body":{}}}"#,
                body(k, t, size)
            ),
            (Proto::SocketIo, false) => format!(
                r#"42["send",{{"room":"{room}","data":{}}}]"#,
                body(k, t, size)
            ),
            (Proto::SocketIo, true) => format!(
                r#"42{i}["send",{{"room":"{room}","data":{}}}]"#,
                body(k, t, size)
            ),
        };
        ws.send(Message::text(frame)).await?;
    }
    if acks.is_some() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while acked < count {
            match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    if !heartbeat(ws, proto, &t).await? && book(&t, &mut acks) {
                        acked += 1;
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => break,
            }
        }
    }
    Ok(count)
}

/// chorus only: send `count` messages round-robin over `rooms` (joined on
/// this connection) with at most `window` unacknowledged, as fast as acks
/// come back. Returns the acks received. Each ack means the message is
/// committed to history.
pub async fn send_acked(
    ws: &mut Ws,
    rooms: &[String],
    tag: &str,
    count: u64,
    window: u64,
    size: usize,
) -> anyhow::Result<u64> {
    anyhow::ensure!(!rooms.is_empty(), "at least one room");
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < count {
        while sent < count && sent - acked < window {
            let room = &rooms[sent as usize % rooms.len()];
            let frame = format!(
                r#"{{"op":"send","id":{sent},"room":"{room}","cid":"{tag}-{sent}","body":{}}}"#,
                body(sent, now_us(), size)
            );
            ws.feed(Message::text(frame)).await?;
            sent += 1;
        }
        ws.flush().await?;
        let m = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .map_err(|_| anyhow::anyhow!("no ack within 30 s"))?;
        match m {
            Some(Ok(Message::Text(t))) => {
                if t.starts_with(r#"{"op":"ack""#) {
                    acked += 1;
                } else if t.starts_with(r#"{"op":"error""#) {
                    anyhow::bail!("send refused: {t}");
                } else {
                    heartbeat(ws, Proto::Chorus, &t).await?;
                }
            }
            Some(Ok(_)) => {}
            _ => anyhow::bail!("connection closed after {acked} acks"),
        }
    }
    Ok(acked)
}

/// A contender's server process.
pub struct Server {
    pub name: &'static str,
    pub proto: Proto,
    pub addr: SocketAddr,
    pub pid: u32,
    /// Keeps it running; killed on drop.
    pub guard: Box<dyn Send>,
}

/// RSS of a process in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU seconds of a process (all its threads).
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(11) + tick(12)) / 100.0
}

/// Pin every thread of `pid` to `cpus` (e.g. "0"), if `taskset` exists.
pub fn pin(pid: u32, cpus: &str) {
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Source address number `i` of 127.0.0.2..=127.0.0.9 (about 28k ephemeral
/// ports each).
pub fn source(i: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, 2 + (i / 20_000 % 8) as u8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_without_decoding() {
        let b = body(17, 1234567, 100);
        assert_eq!(b.len(), 100);
        let v: serde_json::Value = serde_json::from_str(&b).expect("valid JSON");
        assert_eq!(v["k"], 17);
        let chorus = format!(r#"{{"op":"msg","room":"r","seq":5,"body":{b},"ts":1}}"#);
        assert_eq!(field(&chorus, r#""k":"#), Some(17));
        assert_eq!(field(&chorus, r#""t":"#), Some(1234567));
        let sio = format!(r#"42["msg",{b}]"#);
        assert_eq!(field(&sio, r#""k":"#), Some(17));
        assert_eq!(field("nothing", r#""k":"#), None);
    }

    #[test]
    fn sources_spread_over_loopback_addresses() {
        assert_eq!(source(0), IpAddr::from([127, 0, 0, 2]));
        assert_eq!(source(19_999), IpAddr::from([127, 0, 0, 2]));
        assert_eq!(source(20_000), IpAddr::from([127, 0, 0, 3]));
    }
}
