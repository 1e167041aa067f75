//! The load generator's connections: one lean WebSocket per simulated client,
//! speaking chorus's protocol, Socket.IO's (Engine.IO v4 over WebSocket) or
//! Pusher's (Sockudo), so one tool drives every contender with the same
//! workload.
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
//! - [`Publisher`], [`publish_many`]: open-loop constant-rate publisher (a
//!   WebSocket, or for Pusher the signed HTTP API a backend publishes through).
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
    /// Pusher channels protocol 7 (Sockudo): clients subscribe over the
    /// WebSocket, a backend publishes through the HTTP API ([`PusherApi`]).
    Pusher,
}

/// The Pusher app the Sockudo peer is configured with (tests/bench/peers/sockudo).
pub const PUSHER_APP_ID: &str = "chorus-bench";
/// Its key (the WebSocket path and the API's `auth_key`).
pub const PUSHER_KEY: &str = "chorus-bench-key";
/// Its secret (signs the API's requests).
pub const PUSHER_SECRET: &str = "chorus-bench-secret";

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
        Proto::Pusher => {
            format!("ws://{server}/app/{PUSHER_KEY}?protocol=7&client=chorus-load&version=1.0")
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
        Proto::Pusher => {
            expect(&mut ws, proto, |t| {
                t.contains("pusher:connection_established")
            })
            .await?;
        }
    }
    Ok((ws, resume_token))
}

/// The frame that joins `room`.
pub fn join_frame(proto: Proto, room: &str) -> String {
    match proto {
        Proto::Chorus => format!(r#"{{"op":"join","id":1,"room":"{room}"}}"#),
        Proto::SocketIo => format!(r#"420["join","{room}"]"#),
        Proto::Pusher => {
            format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{room}"}}}}"#)
        }
    }
}

/// Whether `t` is the reply to a [`join_frame`].
pub fn is_joined(proto: Proto, t: &str) -> bool {
    match proto {
        Proto::Chorus => t.starts_with(r#"{"op":"joined""#),
        Proto::SocketIo => t.starts_with("430"),
        Proto::Pusher => t.contains("pusher_internal:subscription_succeeded"),
    }
}

/// Join `room` and wait for the reply.
pub async fn join(ws: &mut Ws, proto: Proto, room: &str) -> anyhow::Result<()> {
    ws.send(Message::text(join_frame(proto, room))).await?;
    expect(ws, proto, |t| is_joined(proto, t)).await?;
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
                if t.contains(r#""op":"error""#) || t.contains(r#""event":"pusher:error""#) {
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

/// The answer to `t` if it is a server heartbeat.
fn heartbeat_answer(proto: Proto, t: &str) -> Option<&'static str> {
    match proto {
        Proto::Chorus if t.starts_with(r#"{"op":"ping""#) => Some(r#"{"op":"pong"}"#),
        Proto::SocketIo if t == "2" => Some("3"),
        Proto::Pusher if t.contains(r#""event":"pusher:ping""#) => {
            Some(r#"{"event":"pusher:pong","data":{}}"#)
        }
        _ => None,
    }
}

/// Answer a server heartbeat; true if `t` was one.
pub async fn heartbeat(ws: &mut Ws, proto: Proto, t: &str) -> anyhow::Result<bool> {
    match heartbeat_answer(proto, t) {
        Some(answer) => {
            ws.send(Message::text(answer)).await?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The unsigned integer after `key` in `text`.
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
    let is_msg = |t: &str| match proto {
        Proto::Chorus => t.starts_with(r#"{"op":"msg""#),
        Proto::SocketIo => t.starts_with(r#"42["msg""#),
        Proto::Pusher => t.contains(r#""event":"msg""#),
    };
    // Pusher carries the body as a JSON string: its quotes come escaped.
    let (key_k, key_t) = match proto {
        Proto::Pusher => (r#"\"k\":"#, r#"\"t\":"#),
        _ => (r#""k":"#, r#""t":"#),
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
        if !is_msg(&text) {
            if heartbeat(&mut ws, proto, &text).await.is_err() {
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
                return;
            }
            continue;
        }
        let (Some(k), Some(t)) = (field(&text, key_k), field(&text, key_t)) else {
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

/// The side that publishes: a WebSocket (chorus, Socket.IO, the floor) or,
/// for a Pusher server, its HTTP API, as a Pusher backend publishes.
pub enum Publisher {
    /// Sends frames on a client connection.
    Ws(Box<Ws>),
    /// Posts signed events to the HTTP API.
    Api(PusherApi),
}

/// What a publisher heard.
enum Heard {
    /// The acknowledgement of the message with this index.
    Ack(u64),
    /// A server heartbeat: this answer is to be sent (by the caller, outside
    /// any select that could drop the send half done).
    Heartbeat(&'static str),
    /// A post the Pusher API refused or did not answer: its message is not
    /// published (the receivers count it lost), the run goes on.
    Failed,
    /// A frame of no interest.
    Other,
}

impl Publisher {
    /// Open a publisher to `server` from `local`: a connection (chorus also
    /// joins `rooms`: it only accepts sends into a joined room), or for
    /// Pusher the HTTP API (a connection per event, see [`PusherApi`]).
    pub async fn open(
        proto: Proto,
        server: SocketAddr,
        local: IpAddr,
        token: &str,
        rooms: &[String],
    ) -> anyhow::Result<Self> {
        if proto == Proto::Pusher {
            return Ok(Publisher::Api(PusherApi::new(server)));
        }
        let mut ws = connect(proto, server, local, token).await?;
        if proto == Proto::Chorus {
            for room in rooms {
                join(&mut ws, proto, room).await?;
            }
        }
        Ok(Publisher::Ws(Box::new(ws)))
    }

    /// Book what [`Publisher::hear`] returned: answer a heartbeat, count a
    /// failed post; the index of an ack.
    async fn handle(&mut self, heard: Heard) -> anyhow::Result<Option<u64>> {
        match (heard, self) {
            (Heard::Ack(id), _) => return Ok(Some(id)),
            (Heard::Heartbeat(answer), Publisher::Ws(ws)) => ws.send(Message::text(answer)).await?,
            (Heard::Failed, Publisher::Api(api)) => api.failed += 1,
            _ => {}
        }
        Ok(None)
    }

    /// Posts the Pusher API refused or did not answer (0 for a WebSocket).
    pub fn failed(&self) -> u64 {
        match self {
            Publisher::Api(api) => api.failed,
            Publisher::Ws(_) => 0,
        }
    }

    /// Send message `i` (sequence `k` of `room`, scheduled at `t`).
    async fn send(
        &mut self,
        proto: Proto,
        (i, room, k, t): (u64, &str, u64, u64),
        size: usize,
        want_ack: bool,
    ) -> anyhow::Result<()> {
        let body = body(k, t, size);
        let ws = match self {
            Publisher::Api(api) => return api.post(i, room, &body).await,
            Publisher::Ws(ws) => ws,
        };
        let frame = match (proto, want_ack) {
            (Proto::SocketIo, false) => format!(r#"42["send",{{"room":"{room}","data":{body}}}]"#),
            (Proto::SocketIo, true) => {
                format!(r#"42{i}["send",{{"room":"{room}","data":{body}}}]"#)
            }
            _ => format!(r#"{{"op":"send","id":{i},"room":"{room}","cid":"p{k}","body":{body}}}"#),
        };
        ws.send(Message::text(frame)).await?;
        Ok(())
    }

    /// The next thing the server said (cancel-safe: it only reads, so a
    /// select may drop it; a heartbeat's answer is the caller's to send).
    async fn hear(&mut self, proto: Proto) -> anyhow::Result<Heard> {
        let ws = match self {
            Publisher::Api(api) => return api.response().await,
            Publisher::Ws(ws) => ws,
        };
        let t = match ws.next().await {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => return Ok(Heard::Other),
            _ => anyhow::bail!("publisher connection closed"),
        };
        if let Some(answer) = heartbeat_answer(proto, &t) {
            return Ok(Heard::Heartbeat(answer));
        }
        let id = match proto {
            Proto::SocketIo if t.starts_with("43") => {
                t[2..].split('[').next().and_then(|n| n.parse::<u64>().ok())
            }
            Proto::Chorus if t.starts_with(r#"{"op":"ack""#) => field(&t, r#""id":"#),
            _ => None,
        };
        Ok(id.map_or(Heard::Other, Heard::Ack))
    }
}

/// Events posted to a Pusher server's HTTP API and not yet answered, at most.
const API_IN_FLIGHT: usize = 256;

/// A Pusher server's HTTP API, as a backend publishes through it: each event
/// is a signed `POST /apps/{id}/events` (protocol 7's signature: HMAC-SHA256
/// of the method, path and sorted query with the body's MD5). Sockudo
/// answers every API request with `Connection: close`, so each post is a
/// connection of its own, opened from 127.0.0.10-17 (the receivers use
/// .2-.9). Posts to one channel go one after another (the API orders
/// nothing between concurrent requests: a backend that wants its channel's
/// order waits for each answer), posts to different channels at once (at
/// most [`API_IN_FLIGHT`] queued or in flight in all). The publisher waits
/// for an answer only when that many are out; lag counts from each
/// message's scheduled time either way. A 200 is the event's
/// acknowledgement (Sockudo answers once it has queued the event to its
/// local sockets and published it to Redis).
pub struct PusherApi {
    server: SocketAddr,
    posted: u64,
    /// Per channel, the queue of its poster (a task that posts its
    /// channel's events one after another; it ends with this).
    channels: std::collections::HashMap<String, tokio::sync::mpsc::Sender<Post>>,
    /// [`API_IN_FLIGHT`] permits: a post holds one until its answer is taken
    /// off `answers`, so the channel always has room for every answer.
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    answers_tx: tokio::sync::mpsc::Sender<Answer>,
    answers: tokio::sync::mpsc::Receiver<Answer>,
    /// Answers taken off the channel by a post waiting for a permit, not yet
    /// heard: at most one per post made meanwhile.
    taken: std::collections::VecDeque<anyhow::Result<u64>>,
    /// Posts refused or not answered (their messages were not published).
    failed: u64,
}

/// An event's answer (its index, or why it failed) and the permit its post held.
type Answer = (anyhow::Result<u64>, tokio::sync::OwnedSemaphorePermit);

/// An event to post: its index, the source address, the request, its permit.
type Post = (u64, IpAddr, String, tokio::sync::OwnedSemaphorePermit);

impl PusherApi {
    fn new(server: SocketAddr) -> Self {
        let (answers_tx, answers) = tokio::sync::mpsc::channel(API_IN_FLIGHT);
        PusherApi {
            server,
            posted: 0,
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(API_IN_FLIGHT)),
            answers_tx,
            answers,
            taken: Default::default(),
            channels: Default::default(),
            failed: 0,
        }
    }

    /// The request that publishes `data` as event `msg` to `channel`.
    fn request(&self, channel: &str, data: &str, timestamp: u64) -> String {
        let event = serde_json::json!({"name": "msg", "channels": [channel], "data": data});
        let body = event.to_string();
        let path = format!("/apps/{PUSHER_APP_ID}/events");
        let query = signed_query(PUSHER_KEY, PUSHER_SECRET, &path, &body, timestamp);
        format!(
            "POST {path}?{query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.server,
            body.len()
        )
    }

    /// Post event `i` on a connection of its own; its answer comes through
    /// [`PusherApi::response`].
    async fn post(&mut self, i: u64, channel: &str, data: &str) -> anyhow::Result<()> {
        let request = self.request(channel, data, now_us() / 1_000_000);
        // All permits out: wait for an answer (a publisher behind its
        // schedule hears nothing between posts) and keep it for `response`.
        let slot = loop {
            if let Ok(slot) = self.slots.clone().try_acquire_owned() {
                break slot;
            }
            match self.answers.recv().await {
                Some((answer, _slot)) => self.taken.push_back(answer),
                None => anyhow::bail!("the Pusher API publisher stopped"),
            }
        };
        let local = IpAddr::from([127, 0, 0, 10 + (self.posted % 8) as u8]);
        self.posted += 1;
        let poster = match self.channels.get(channel) {
            Some(poster) => poster.clone(),
            None => {
                // Room for every permit: sending to it never waits.
                let (tx, mut rx) = tokio::sync::mpsc::channel::<Post>(API_IN_FLIGHT);
                let (server, answers) = (self.server, self.answers_tx.clone());
                tokio::spawn(async move {
                    while let Some((i, local, request, slot)) = rx.recv().await {
                        let answer = post_once(server, local, &request).await.map(|()| i);
                        if answers.send((answer, slot)).await.is_err() {
                            break;
                        }
                    }
                });
                self.channels.insert(channel.to_owned(), tx.clone());
                tx
            }
        };
        poster
            .send((i, local, request, slot))
            .await
            .map_err(|_| anyhow::anyhow!("the poster of {channel} stopped"))
    }

    /// The next answer, in the order answers come: the index of an event
    /// answered with 200, or a failed post (cancel-safe).
    async fn response(&mut self) -> anyhow::Result<Heard> {
        let answer = match self.taken.pop_front() {
            Some(answer) => answer,
            None => match self.answers.recv().await {
                Some((answer, _slot)) => answer,
                None => anyhow::bail!("the Pusher API publisher stopped"),
            },
        };
        Ok(answer.map_or(Heard::Failed, Heard::Ack))
    }
}

/// The query of a signed Pusher API `POST` of `body` to `path`: the auth
/// parameters in sorted order, then `auth_signature`, the hex HMAC-SHA256
/// (keyed with the secret) of `POST\n{path}\n{the sorted parameters}`.
fn signed_query(key: &str, secret: &str, path: &str, body: &str, timestamp: u64) -> String {
    use hmac::{KeyInit, Mac};
    use md5::Digest;
    let query = format!(
        "auth_key={key}&auth_timestamp={timestamp}&auth_version=1.0&body_md5={}",
        hex::encode(md5::Md5::digest(body.as_bytes()))
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("POST\n{path}\n{query}").as_bytes());
    format!(
        "{query}&auth_signature={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// One HTTP request on a connection of its own; Ok on a 200.
async fn post_once(server: SocketAddr, local: IpAddr, request: &str) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(local, 0))?;
    let exchange = async {
        let mut stream = socket.connect(server).await?;
        stream.set_nodelay(true)?;
        stream.write_all(request.as_bytes()).await?;
        // The server closes after its answer: read to the end.
        let mut answer = Vec::with_capacity(512);
        stream.read_to_end(&mut answer).await?;
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from the Pusher API within 30 s"))??;
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).unwrap_or_default();
    anyhow::ensure!(
        status == "200",
        "the Pusher API answered: {}",
        text.lines().next().unwrap_or_default()
    );
    Ok(())
}

/// Publish `count` messages into `room` at `rate` per second, open loop
/// (each at its scheduled time, whatever the server does), starting with
/// sequence `first_k`. `t` in each body is the scheduled time, so lag includes
/// any time the publisher itself fell behind (coordinated omission). Returns
/// how many were written.
pub async fn publish(
    publisher: &mut Publisher,
    proto: Proto,
    room: &str,
    first_k: u64,
    count: u64,
    rate: f64,
    size: usize,
) -> anyhow::Result<u64> {
    let mut next_k = [first_k];
    publish_many(
        publisher,
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
/// broadcast; Pusher: the API's answer, after the broadcast), and the time
/// from each message's scheduled send to its ack goes into `acks`
/// (microseconds); the publisher waits up to 10 s for the last ones.
pub async fn publish_many(
    publisher: &mut Publisher,
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
    // Books an ack's time; true if it was one.
    let book = |id: Option<u64>, acks: &mut Option<&mut Histogram<u64>>| -> bool {
        match (id, acks.as_deref_mut()) {
            (Some(id), Some(h)) => {
                let _ = h.record(now_us().saturating_sub(start_us + step_us * id).max(1));
                true
            }
            _ => false,
        }
    };
    let failed_before = publisher.failed();
    for i in 0..count {
        let due = start + interval.mul_f64(i as f64);
        // Drain what the server sent meanwhile (acks, pings) without waiting.
        loop {
            let heard = tokio::select! {
                biased;
                _ = tokio::time::sleep_until(due) => break,
                heard = publisher.hear(proto) => heard?,
            };
            let id = publisher.handle(heard).await?;
            acked += u64::from(book(id, &mut acks));
        }
        let r = i as usize % rooms.len();
        let (room, k) = (&rooms[r], next_k[r]);
        next_k[r] += 1;
        let t = start_us + step_us * i;
        publisher
            .send(proto, (i, room, k, t), size, acks.is_some())
            .await?;
    }
    if acks.is_some() {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while acked < count {
            match tokio::time::timeout_at(deadline, publisher.hear(proto)).await {
                Ok(Ok(heard)) => {
                    let id = publisher.handle(heard).await?;
                    acked += u64::from(book(id, &mut acks));
                }
                _ => break,
            }
        }
    }
    let failed = publisher.failed() - failed_before;
    if failed > 0 {
        println!("  the Pusher API refused or did not answer {failed} of {count} posts");
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

/// The load generator's own CPU over an interval: whether it, not the
/// server, is the limit (a share near 1 is its whole core).
pub struct Busy {
    cpu: f64,
    at: std::time::Instant,
}

impl Busy {
    pub fn start() -> Self {
        Busy {
            cpu: cpu_secs(std::process::id()),
            at: std::time::Instant::now(),
        }
    }

    /// CPU seconds used per second since [`Busy::start`].
    pub fn share(&self) -> f64 {
        (cpu_secs(std::process::id()) - self.cpu) / self.at.elapsed().as_secs_f64().max(0.001)
    }
}

/// Pin every thread of `pid` to `cpus` (e.g. "0"), if `taskset` exists.
pub fn pin(pid: u32, cpus: &str) {
    let _ = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// The bench's network namespace (tests/bench/netns): the server runs in it
/// and listens on [`NETNS_SERVER_IP`]; the load generator stays outside and
/// connects from 10.77.0.11-18.
pub const NETNS: &str = "chorus-bench-srv";
/// The server's address in [`NETNS`].
pub const NETNS_SERVER_IP: &str = "10.77.0.2";

static IN_NETNS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Run the servers in [`NETNS`] from now on (`chorus-load --netns`).
pub fn use_netns() {
    IN_NETNS.store(true, Ordering::Relaxed);
}

/// Whether the servers run in [`NETNS`].
pub fn in_netns() -> bool {
    IN_NETNS.load(Ordering::Relaxed)
}

/// Source address number `i` of 127.0.0.2..=127.0.0.9 (about 28k ephemeral
/// ports each), or with [`in_netns`] of 10.77.0.11..=10.77.0.18.
pub fn source(i: usize) -> IpAddr {
    let n = (i / 20_000 % 8) as u8;
    if in_netns() {
        IpAddr::from([10, 77, 0, 11 + n])
    } else {
        IpAddr::from([127, 0, 0, 2 + n])
    }
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
    fn pusher_requests_are_signed_as_the_pusher_docs_sign_them() {
        // The worked example of Pusher's HTTP API reference (authentication).
        let body = r#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        let query = signed_query(
            "278d425bdf160c739803",
            "7ad3773142a6692b25b8",
            "/apps/3/events",
            body,
            1353088179,
        );
        assert_eq!(
            query,
            "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
             &body_md5=ec365a775a4cd0599faeb73354201b6f\
             &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"
        );
    }

    #[test]
    fn pusher_bodies_are_read_from_the_escaped_string() {
        let b = body(17, 1234567, 100);
        let frame = serde_json::json!({"event": "msg", "channel": "r", "data": b}).to_string();
        assert_eq!(field(&frame, r#"\"k\":"#), Some(17));
        assert_eq!(field(&frame, r#"\"t\":"#), Some(1234567));
    }

    #[test]
    fn sources_spread_over_loopback_addresses() {
        assert_eq!(source(0), IpAddr::from([127, 0, 0, 2]));
        assert_eq!(source(19_999), IpAddr::from([127, 0, 0, 2]));
        assert_eq!(source(20_000), IpAddr::from([127, 0, 0, 3]));
    }
}
