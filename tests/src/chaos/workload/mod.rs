//! Simulated clients: each one behaves as a real chat client would, through
//! the protocol crate's client, and writes down everything the checker needs.
//!
//! A client connects to a random node, joins its rooms, sends one message at
//! a time with a fresh `cid` (retrying retryable errors with the same `cid`,
//! also across reconnects), reads every message of its rooms, sends read
//! receipts, and after every disconnect resumes on a random node with its
//! resume token and its last seq per room. When the server refuses the
//! resume, it joins its rooms again with `since` = its last seq, as the
//! protocol asks.
//!
//! Layout: `client_log` what a client writes down ([`ClientLog`]); `connect`
//! connecting and resuming; `session` the loop of one connection (joins,
//! sends, receipts, the harness's commands); `replies` booking what the
//! server answered (acks, join replies, events, closes); this file: the
//! harness's commands, the client's profile, and the task that reconnects.

mod client_log;
mod connect;
mod replies;
mod session;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use client_log::{ClientLog, SendRecord, SharedLog, lock};

/// What the harness tells a client.
#[derive(Debug, Clone)]
pub enum Command {
    /// Drop the socket abruptly (no close frame), then resume on a random node.
    Drop,
    /// Stop reading for this long (a slow consumer).
    Stall(Duration),
    /// Send no new messages (pending ones are still retried until acked).
    StopSending,
    /// Join one more room, from now on one of the client's rooms (joined on
    /// every later connection; its messages are checked like the others').
    Join(String),
}

/// How one client behaves.
#[derive(Debug, Clone)]
pub struct Profile {
    pub user: String,
    pub rooms: Vec<String>,
    /// Mean time between sends (0: never sends).
    pub send_every: Duration,
    /// Where `send_every` picks a room: the hot room this often.
    pub hot_room: String,
    pub hot_share: f64,
    /// JWT for the user.
    pub token: String,
    pub seed: u64,
}

/// The node addresses clients pick from (ports survive restarts).
pub type Nodes = Arc<Vec<String>>;

/// Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Start a client task; it runs until `commands` is closed.
pub fn spawn(
    profile: Profile,
    nodes: Nodes,
    commands: mpsc::Receiver<Command>,
) -> (SharedLog, tokio::task::JoinHandle<()>) {
    let device = format!("{}-dev", profile.user);
    let log = Arc::new(Mutex::new(ClientLog::new(
        profile.user.clone(),
        device.clone(),
        profile.rooms.clone(),
    )));
    let task = tokio::spawn(run(profile, device, nodes, commands, log.clone()));
    (log, task)
}

/// Per-connection outcome: why the session ended.
enum SessionEnd {
    /// Closed by the server, dropped, or dead: resume.
    Disconnected,
    /// The harness is done with this client.
    Finished,
}

struct State {
    profile: Profile,
    device: String,
    nodes: Nodes,
    log: SharedLog,
    rng: StdRng,
    /// The resume token of the latest `welcome`.
    token: Option<String>,
    sending: bool,
    next_send: Instant,
    /// Index into `log.sends` of the send not acked yet (one at a time).
    pending: Option<usize>,
    /// No attempt of the pending send before this.
    retry_at: Instant,
    stall_until: Option<Instant>,
    next_receipt: Instant,
    counter: u64,
    /// Rooms a resume's re-join refused retryably (an `error` event naming
    /// the room): joined again by the session loop.
    rejoin: Vec<String>,
}

async fn run(
    profile: Profile,
    device: String,
    nodes: Nodes,
    mut commands: mpsc::Receiver<Command>,
    log: SharedLog,
) {
    let seed = profile.seed;
    let send_every = profile.send_every;
    let mut st = State {
        profile,
        device,
        nodes,
        log,
        rng: StdRng::seed_from_u64(seed),
        token: None,
        sending: !send_every.is_zero(),
        next_send: Instant::now(),
        pending: None,
        retry_at: Instant::now(),
        stall_until: None,
        next_receipt: Instant::now(),
        counter: 0,
        rejoin: Vec::new(),
    };
    st.next_send = Instant::now() + st.jitter(send_every);
    let mut failures = 0u32;
    loop {
        let client = match st.connect().await {
            Ok(c) => {
                failures = 0;
                c
            }
            Err(e) => {
                lock(&st.log).connect_failures += 1;
                tracing::debug!(user = %st.profile.user, error = %e, "connect failed");
                failures += 1;
                let delay = chorus_protocol::client::backoff_delay(
                    failures.min(6),
                    Duration::from_millis(100),
                    Duration::from_secs(2),
                    st.rng.random(),
                );
                // Keep obeying the harness while reconnecting.
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    cmd = commands.recv() => match cmd {
                        None => return,
                        Some(Command::StopSending) => st.sending = false,
                        // Joined on the next connection.
                        Some(Command::Join(room)) => st.add_room(room),
                        Some(_) => {}
                    }
                }
                continue;
            }
        };
        match st.session(client, &mut commands).await {
            SessionEnd::Disconnected => continue,
            SessionEnd::Finished => return,
        }
    }
}

impl State {
    /// Make `room` one of this client's rooms (no-op if it is one).
    fn add_room(&mut self, room: String) {
        if self.profile.rooms.contains(&room) {
            return;
        }
        self.profile.rooms.push(room.clone());
        lock(&self.log).rooms.push(room);
    }

    fn jitter(&mut self, mean: Duration) -> Duration {
        mean.mul_f64(self.rng.random_range(0.5..1.5))
    }
}
