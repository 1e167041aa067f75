//! chorus-floor: the machine's limit beside the contenders of `chorus-load`.
//!
//! A minimal server that speaks just enough of chorus's protocol for the load
//! generator (`hello`/`welcome` with a resume into rooms, `join`/`joined`,
//! `send` answered by `msg` to every member and then `ack`, WebSocket ping and
//! close) and has none of the product: no persistence, no presence, no
//! authentication (the token is not read), no limits, no heartbeats. What it
//! does is what a server for this workload cannot avoid:
//! - a room message is encoded once (WebSocket header and payload in one
//!   shared buffer) and each member's queue gets a reference to it;
//! - a connection writes everything queued for it with one vectored write
//!   per drain (`writev`); it reads only when the socket is readable, into a
//!   buffer that exists while a frame is partial (an idle connection holds
//!   no buffer and an empty queue);
//! - one task per connection, on one thread (the contenders are pinned to one
//!   CPU each).
//!
//! So a figure of chorus divided by the floor's, in the same run, is how far
//! chorus is from what this machine can do. Not a product: a slow reader's
//! queue is bounded and it is closed when full, as anything fails loudly.
//!
//! Usage: `chorus-floor [--host IP] [--port N]` (default 127.0.0.1, a free
//! port); prints `listening on IP:PORT`.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Frames queued for one connection before it is closed as too slow.
const QUEUE: usize = 65_536;
/// Frames gathered into one vectored write.
const GATHER: usize = 1_024;
/// Largest request head of the upgrade, bytes.
const MAX_HEAD: usize = 8_192;
/// Largest client frame, bytes.
const MAX_FRAME: usize = 1 << 20;
/// What a connection's read buffer starts at and shrinks back to.
const READ_CHUNK: usize = 512;

/// One encoded WebSocket frame, shared by every queue it is in.
type Frame = Arc<[u8]>;

/// A connection's queue of frames to write, and its wake-up.
#[derive(Default)]
struct Outbox {
    queue: Mutex<VecDeque<Frame>>,
    ready: Notify,
    /// Set when the queue overflowed: the connection closes.
    overflowed: std::sync::atomic::AtomicBool,
}

impl Outbox {
    /// Queue `frame`; false (and the connection is told to close) when full.
    fn push(&self, frame: Frame) -> bool {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= QUEUE {
            self.overflowed.store(true, Ordering::Relaxed);
            drop(q);
            self.ready.notify_one();
            return false;
        }
        q.push_back(frame);
        drop(q);
        self.ready.notify_one();
        true
    }

    /// Everything queued, at once.
    fn take(&self) -> VecDeque<Frame> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A member of a room.
#[derive(Clone)]
struct Member {
    id: u64,
    out: Arc<Outbox>,
}

/// A room: its members and its last sequence number.
#[derive(Default)]
struct Room {
    seq: u64,
    members: Vec<Member>,
}

/// Every room of the process. A std mutex: never held across an `.await`.
#[derive(Default)]
struct Rooms {
    rooms: Mutex<HashMap<String, Room>>,
    next_id: AtomicU64,
}

fn main() -> std::io::Result<()> {
    let mut port = 0u16;
    let mut host = std::net::IpAddr::from([127, 0, 0, 1]);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--host" => {
                host = args
                    .next()
                    .and_then(|h| h.parse().ok())
                    .ok_or_else(|| std::io::Error::other("--host needs an IP address"))?;
            }
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| std::io::Error::other("--port needs a number"))?;
            }
            "--help" | "-h" => {
                println!(
                    "chorus-floor [--host IP] [--port N]: the bench's floor (see the source's header)"
                );
                return Ok(());
            }
            other => return Err(std::io::Error::other(format!("unknown argument {other}"))),
        }
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(host, port))
}

async fn serve(host: std::net::IpAddr, port: u16) -> std::io::Result<()> {
    let listener = TcpListener::bind((host, port)).await?;
    println!("listening on {}", listener.local_addr()?);
    let rooms = Arc::new(Rooms::default());
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(a) => a,
            // Out of descriptors, say: the next accept may succeed.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let _ = connection(tcp, rooms).await;
        });
    }
}

/// A client frame, as far as the floor reads it.
#[derive(Deserialize)]
struct In<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    id: Option<u64>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow)]
    cid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    body: Option<&'a RawValue>,
    #[serde(borrow)]
    resume: Option<ResumeIn<'a>>,
}

#[derive(Deserialize)]
struct ResumeIn<'a> {
    #[serde(borrow, default)]
    rooms: HashMap<Cow<'a, str>, u64>,
}

/// One connection: the upgrade, then one loop over its socket and its queue.
async fn connection(tcp: TcpStream, rooms: Arc<Rooms>) -> std::io::Result<()> {
    tcp.set_nodelay(true)?;
    let (mut rd, mut wr) = tcp.into_split();
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() >= MAX_HEAD || rd.read_buf(&mut buf).await? == 0 {
            return Ok(());
        }
    };
    let Some(key) = header(&buf[..head_end], "sec-websocket-key") else {
        wr.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    let accept = derive_accept_key(key.as_bytes());
    let reply = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    wr.write_all(reply.as_bytes()).await?;
    buf.drain(..head_end);

    if buf.is_empty() {
        buf = Vec::new();
    }
    let id = rooms.next_id.fetch_add(1, Ordering::Relaxed);
    let me = Member {
        id,
        out: Arc::new(Outbox::default()),
    };
    let mut joined: Vec<String> = Vec::new();
    let result = loop {
        tokio::select! {
            r = rd.readable() => {
                if r.is_err() {
                    break Ok(());
                }
                buf.reserve(READ_CHUNK);
                match rd.try_read_buf(&mut buf) {
                    Ok(0) => break Ok(()),
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => break Ok(()),
                }
                let mut done = false;
                while let Some((opcode, payload)) = take_frame(&mut buf) {
                    match opcode {
                        0x1 => on_text(&payload, &me, &rooms, &mut joined),
                        0x8 => {
                            me.out.push(encode(0x8, &payload[..payload.len().min(2)]));
                            done = true;
                        }
                        0x9 => {
                            me.out.push(encode(0xA, &payload));
                        }
                        _ => {}
                    }
                }
                if buf.len() > MAX_FRAME {
                    break Ok(());
                }
                if buf.is_empty() {
                    // No partial frame: no buffer while idle.
                    buf = Vec::new();
                }
                if done {
                    break write_all(&mut wr, me.out.take().make_contiguous()).await;
                }
            },
            _ = me.out.ready.notified() => {
                if me.out.overflowed.load(Ordering::Relaxed) {
                    // Too slow: its queue was full when a room message came.
                    break Ok(());
                }
                let mut batch = me.out.take();
                if let Err(e) = write_all(&mut wr, batch.make_contiguous()).await {
                    break Err(e);
                }
            }
        }
    };
    let mut all = rooms.rooms.lock().unwrap_or_else(|p| p.into_inner());
    for name in &joined {
        if let Some(room) = all.get_mut(name) {
            room.members.retain(|m| m.id != id);
        }
    }
    result
}

/// Answer one text frame.
fn on_text(text: &[u8], me: &Member, rooms: &Rooms, joined: &mut Vec<String>) {
    let id = me.id;
    let Ok(f) = serde_json::from_slice::<In>(text) else {
        return;
    };
    let reply = |s: String| {
        me.out.push(encode(0x1, s.as_bytes()));
    };
    match f.op.as_ref() {
        "hello" => {
            let resumed = f.resume.is_some();
            reply(format!(
                r#"{{"op":"welcome","v":1,"session":"s{id}","user":"u{id}","node":"floor","resume_token":"rt{id}","resume_ttl_ms":300000,"heartbeat_ms":25000,"idle_timeout_ms":60000,"rooms":[],"resumed":{resumed}}}"#
            ));
            for (room, _) in f.resume.map(|r| r.rooms).unwrap_or_default() {
                let tip = join(rooms, &room, me, joined);
                reply(format!(
                    r#"{{"op":"joined","room":{},"tip":{tip},"recovered":true,"replayed":0}}"#,
                    json_str(&room)
                ));
            }
        }
        "join" => {
            let Some(room) = f.room else { return };
            let tip = join(rooms, &room, me, joined);
            reply(format!(
                r#"{{"op":"joined","id":{},"room":{},"tip":{tip},"recovered":true,"replayed":0}}"#,
                f.id.unwrap_or(0),
                json_str(&room)
            ));
        }
        "send" => {
            let (Some(room), Some(cid), Some(body)) = (f.room, f.cid, f.body) else {
                return;
            };
            let ts = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let (room_json, cid_json) = (json_str(&room), json_str(&cid));
            let mut all = rooms.rooms.lock().unwrap_or_else(|p| p.into_inner());
            let Some(r) = all.get_mut(room.as_ref()) else {
                return;
            };
            r.seq += 1;
            let seq = r.seq;
            let msg = format!(
                r#"{{"op":"msg","room":{room_json},"seq":{seq},"id":"m{seq}","sender":"u{id}","cid":{cid_json},"body":{},"ts":{ts}}}"#,
                body.get()
            );
            // Encoded once; every member's queue gets the same bytes.
            let frame = encode(0x1, msg.as_bytes());
            r.members.retain(|m| m.out.push(frame.clone()));
            drop(all);
            reply(format!(
                r#"{{"op":"ack","id":{},"room":{room_json},"cid":{cid_json},"seq":{seq},"msg_id":"m{seq}","ts":{ts},"duplicate":false}}"#,
                f.id.unwrap_or(0)
            ));
        }
        _ => {}
    }
}

/// Add the connection to `room` (once); the room's tip.
fn join(rooms: &Rooms, room: &str, me: &Member, joined: &mut Vec<String>) -> u64 {
    let mut all = rooms.rooms.lock().unwrap_or_else(|p| p.into_inner());
    let r = all.entry(room.to_owned()).or_default();
    if !joined.iter().any(|j| j == room) {
        r.members.push(me.clone());
        joined.push(room.to_owned());
    }
    r.seq
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A server frame (unmasked, final) with `opcode` and `payload`.
fn encode(opcode: u8, payload: &[u8]) -> Frame {
    let mut v = Vec::with_capacity(payload.len() + 10);
    v.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => v.push(n as u8),
        n if n <= u16::MAX as usize => {
            v.push(126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(payload);
    v.into()
}

/// The next whole client frame of `buf` (opcode, unmasked payload), removed
/// from it; `None` while it is partial. Fragmented messages are not spoken by
/// the load generator and are skipped.
fn take_frame(buf: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    if buf.len() < 2 {
        return None;
    }
    let (b0, b1) = (buf[0], buf[1]);
    let masked = b1 & 0x80 != 0;
    let (len, mut at) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        n => (n as usize, 2),
    };
    let mut mask = [0u8; 4];
    if masked {
        if buf.len() < at + 4 {
            return None;
        }
        mask.copy_from_slice(&buf[at..at + 4]);
        at += 4;
    }
    if len > MAX_FRAME || buf.len() < at + len {
        return None;
    }
    let mut payload = buf[at..at + len].to_vec();
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    buf.drain(..at + len);
    let fin = b0 & 0x80 != 0;
    Some((if fin { b0 & 0x0f } else { 0xff }, payload))
}

/// Write every frame of `batch`, with as few (vectored) writes as the kernel takes.
async fn write_all(wr: &mut OwnedWriteHalf, batch: &[Frame]) -> std::io::Result<()> {
    let (mut i, mut off) = (0usize, 0usize);
    while i < batch.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&batch[i][off..]))
            .chain(
                batch[i + 1..]
                    .iter()
                    .take(GATHER - 1)
                    .map(|f| IoSlice::new(f)),
            )
            .collect();
        let mut n = wr.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 && i < batch.len() {
            let left = batch[i].len() - off;
            if n >= left {
                n -= left;
                i += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request header's value (name case-insensitive).
fn header(head: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}
