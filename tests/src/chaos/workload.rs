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

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chorus_protocol::Json;
use chorus_protocol::client::{Ack, Client, ClientConfig, ClientError, Event, Joined};
use chorus_protocol::frame::Resume;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;

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

/// One message a client sent.
#[derive(Debug, Clone)]
pub struct SendRecord {
    pub room: String,
    pub cid: String,
    /// First attempt.
    pub started: Instant,
    /// Attempts so far (across connections).
    pub attempts: u32,
    /// Attempts answered with a retryable error or a timeout.
    pub retryable_errors: u32,
    /// The ack: seq, when, and whether the server had stored it before.
    pub acked: Option<(u64, Instant, bool)>,
    /// The last error, for sends that never succeeded.
    pub last_error: Option<String>,
    /// Refused for good (a non-retryable error): never retried.
    pub abandoned: bool,
}

/// Everything one client saw.
#[derive(Debug)]
pub struct ClientLog {
    pub user: String,
    pub device: String,
    pub rooms: Vec<String>,
    /// Tip of each room when this client first joined it: every later seq
    /// must reach it.
    pub first_tip: BTreeMap<String, u64>,
    /// Seqs returned per room, in order (after the client library's
    /// de-duplication by seq).
    pub received: BTreeMap<String, Vec<u64>>,
    /// Seqs that arrived out of order or skipped (`Event::Gap`).
    pub order_violations: Vec<String>,
    /// Messages the server delivered twice (dropped by seq).
    pub duplicates: u64,
    pub sends: Vec<SendRecord>,
    /// Connections opened.
    pub sessions: u64,
    /// Resumes accepted / refused by the server.
    pub resumed: u64,
    pub resume_refused: u64,
    /// Rooms where a (re)join answered `recovered: false`.
    pub unrecovered: BTreeSet<String>,
    /// Closes by code ("none" for a dropped connection).
    pub closes: BTreeMap<String, u64>,
    pub connect_failures: u64,
    /// Error codes of unsolicited error events and failed joins.
    pub errors: BTreeMap<String, u64>,
    /// The node of the current connection, while connected.
    pub node: Option<String>,
    pub receipts_sent: u64,
    /// Delivery lag (commit-ish send time in the body to receipt), ms.
    pub lag_ms: Histogram<u64>,
    /// Send to ack, including retries, ms.
    pub ack_ms: Histogram<u64>,
}

impl ClientLog {
    fn new(user: String, device: String, rooms: Vec<String>) -> ClientLog {
        ClientLog {
            user,
            device,
            rooms,
            first_tip: BTreeMap::new(),
            received: BTreeMap::new(),
            order_violations: Vec::new(),
            duplicates: 0,
            sends: Vec::new(),
            sessions: 0,
            resumed: 0,
            resume_refused: 0,
            unrecovered: BTreeSet::new(),
            closes: BTreeMap::new(),
            connect_failures: 0,
            errors: BTreeMap::new(),
            node: None,
            receipts_sent: 0,
            lag_ms: Histogram::new_with_bounds(1, 3_600_000, 2).expect("histogram bounds"),
            ack_ms: Histogram::new_with_bounds(1, 3_600_000, 2).expect("histogram bounds"),
        }
    }

    /// An empty log (checker tests).
    #[cfg(test)]
    pub(crate) fn for_test(user: &str, rooms: &[&str]) -> ClientLog {
        ClientLog::new(
            user.into(),
            format!("{user}-dev"),
            rooms.iter().map(|r| r.to_string()).collect(),
        )
    }

    /// The last seq returned for `room`, or the tip at the first join.
    pub fn cursor(&self, room: &str) -> Option<u64> {
        self.received
            .get(room)
            .and_then(|v| v.last().copied())
            .or_else(|| self.first_tip.get(room).copied())
    }

    /// Sends not acked yet and not abandoned.
    pub fn pending_sends(&self) -> usize {
        self.sends
            .iter()
            .filter(|s| s.acked.is_none() && !s.abandoned)
            .count()
    }
}

/// A client's log, shared with the harness (a std Mutex: held only for
/// bookkeeping, never across an `.await`).
pub type SharedLog = Arc<Mutex<ClientLog>>;

/// Lock a log, also after a panic elsewhere.
pub fn lock(log: &SharedLog) -> MutexGuard<'_, ClientLog> {
    log.lock().unwrap_or_else(|e| e.into_inner())
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

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A join: the room, its `since`, and the answer.
type JoinOutcome = (String, Option<u64>, Result<Joined, ClientError>);

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

    /// Connect to a random node, resuming when we have a token.
    async fn connect(&mut self) -> Result<Client, ClientError> {
        let addr = self.nodes[self.rng.random_range(0..self.nodes.len())].clone();
        let cfg = ClientConfig {
            send_timeout: Duration::from_secs(8),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            event_capacity: 256,
            ..ClientConfig::new(format!(
                "ws://{addr}/ws?access_token={}",
                self.profile.token
            ))
            .with_device(self.device.clone())
        };
        lock(&self.log).sessions += 1;
        let client = match &self.token {
            Some(token) => {
                let rooms: BTreeMap<String, u64> = {
                    let log = lock(&self.log);
                    self.profile
                        .rooms
                        .iter()
                        .filter_map(|r| log.cursor(r).map(|c| (r.clone(), c)))
                        .collect()
                };
                Client::connect_resume(
                    cfg,
                    Resume {
                        token: token.clone(),
                        rooms,
                    },
                )
                .await?
            }
            None => Client::connect(cfg).await?,
        };
        self.token = Some(client.welcome().resume_token.clone());
        Ok(client)
    }

    /// Rooms to join on this connection, with `since`: all of them, unless
    /// the server accepted the resume (it re-joins the rooms it was given).
    fn rooms_to_join(&self, client: &Client) -> Vec<(String, Option<u64>)> {
        let log = lock(&self.log);
        self.profile
            .rooms
            .iter()
            .filter(|r| !(client.welcome().resumed && log.cursor(r).is_some()))
            .map(|r| (r.clone(), log.cursor(r)))
            .collect()
    }

    async fn session(
        &mut self,
        mut client: Client,
        commands: &mut mpsc::Receiver<Command>,
    ) -> SessionEnd {
        {
            let mut log = lock(&self.log);
            log.node = Some(client.welcome().node.clone());
            if self.token.is_some() && log.sessions > 1 {
                if client.welcome().resumed {
                    log.resumed += 1;
                } else {
                    log.resume_refused += 1;
                }
            }
        }
        let handle = client.handle();
        let mut joins: Option<BoxFut<Vec<JoinOutcome>>> = None;
        let mut to_join = self.rooms_to_join(&client);
        let mut join_at = Instant::now();
        let mut inflight: Option<BoxFut<Result<Ack, ClientError>>> = None;
        let end = loop {
            if joins.is_none() && !to_join.is_empty() && Instant::now() >= join_at {
                let list = std::mem::take(&mut to_join);
                let h = handle.clone();
                joins = Some(Box::pin(async move {
                    let mut out = Vec::with_capacity(list.len());
                    for (room, since) in list {
                        let r = h.join(&room, since).await;
                        out.push((room, since, r));
                    }
                    out
                }));
            }
            let stalled = self.stall_until.is_some_and(|t| Instant::now() < t);
            if !stalled {
                self.stall_until = None;
            }
            // Start (or retry) a send when it is time.
            if inflight.is_none() && !stalled && joins.is_none() && to_join.is_empty() {
                let now = Instant::now();
                if self.pending.is_none() && self.sending && now >= self.next_send {
                    self.new_send();
                    self.next_send = now + self.jitter(self.profile.send_every);
                }
                if let Some(i) = self.pending
                    && now >= self.retry_at
                {
                    let (room, cid) = {
                        let mut log = lock(&self.log);
                        let s = &mut log.sends[i];
                        s.attempts += 1;
                        (s.room.clone(), s.cid.clone())
                    };
                    let body = Json::from_value(&serde_json::json!({
                        "u": self.profile.user, "k": i, "t": now_ms(),
                    }));
                    let h = handle.clone();
                    inflight = Some(Box::pin(
                        async move { h.send(&room, &cid, body, None).await },
                    ));
                }
            }
            if !stalled && Instant::now() >= self.next_receipt {
                self.next_receipt = Instant::now() + self.jitter(Duration::from_secs(3));
                let target = {
                    let log = lock(&self.log);
                    let room =
                        &self.profile.rooms[self.rng.random_range(0..self.profile.rooms.len())];
                    log.received
                        .get(room)
                        .and_then(|v| v.last())
                        .map(|&s| (room.clone(), s))
                };
                if let Some((room, seq)) = target
                    && handle.read(&room, seq).await.is_ok()
                {
                    lock(&self.log).receipts_sent += 1;
                }
            }
            let wake = self.next_wake(stalled, inflight.is_some());
            tokio::select! {
                ev = client.next_event(), if !stalled => {
                    match ev {
                        Some(ev) => {
                            if self.on_event(ev) {
                                break SessionEnd::Disconnected;
                            }
                            self.take_rejoins(&mut to_join, &mut join_at);
                        }
                        None => {
                            self.note_close(None);
                            break SessionEnd::Disconnected;
                        }
                    }
                }
                r = async { inflight.as_mut().expect("guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    self.on_send_result(r);
                    self.take_rejoins(&mut to_join, &mut join_at);
                }
                r = async { joins.as_mut().expect("guarded").await }, if joins.is_some() => {
                    joins = None;
                    for (room, since, r) in r {
                        if let Err(again) = self.on_joined(&room, since, r) {
                            to_join.push(again);
                        }
                    }
                    if !to_join.is_empty() {
                        join_at = Instant::now() + Duration::from_millis(500);
                    }
                }
                cmd = commands.recv() => match cmd {
                    None => {
                        let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
                        break SessionEnd::Finished;
                    }
                    Some(Command::Drop) => {
                        client.abort();
                        *lock(&self.log).closes.entry("dropped by client".into()).or_insert(0) += 1;
                        break SessionEnd::Disconnected;
                    }
                    Some(Command::Stall(d)) => self.stall_until = Some(Instant::now() + d),
                    Some(Command::StopSending) => self.sending = false,
                    Some(Command::Join(room)) => {
                        if !self.profile.rooms.contains(&room) {
                            self.add_room(room.clone());
                            to_join.push((room, None));
                        }
                    }
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        };
        let mut log = lock(&self.log);
        log.node = None;
        log.duplicates += handle.duplicates_dropped();
        end
    }

    /// When the loop must look again even if nothing arrives.
    fn next_wake(&self, stalled: bool, inflight: bool) -> Instant {
        let mut wake = self.next_receipt;
        if let Some(t) = self.stall_until {
            wake = wake.min(t);
        }
        if !stalled && !inflight {
            if self.pending.is_some() {
                wake = wake.min(self.retry_at);
            } else if self.sending {
                wake = wake.min(self.next_send);
            }
        }
        wake.max(Instant::now() + Duration::from_millis(1))
    }

    fn new_send(&mut self) {
        let room = if self.rng.random_bool(self.profile.hot_share) {
            self.profile.hot_room.clone()
        } else {
            let rooms: Vec<&String> = self
                .profile
                .rooms
                .iter()
                .filter(|r| **r != self.profile.hot_room)
                .collect();
            if rooms.is_empty() {
                self.profile.hot_room.clone()
            } else {
                rooms[self.rng.random_range(0..rooms.len())].clone()
            }
        };
        self.counter += 1;
        let mut log = lock(&self.log);
        log.sends.push(SendRecord {
            room,
            cid: format!("{}-{}", self.profile.user, self.counter),
            started: Instant::now(),
            attempts: 0,
            retryable_errors: 0,
            acked: None,
            last_error: None,
            abandoned: false,
        });
        self.pending = Some(log.sends.len() - 1);
        self.retry_at = Instant::now();
    }

    /// Queue the rooms to join again (a resume's re-join or a join refused
    /// retryably, or a send answered `not_joined`), half a second from now.
    fn take_rejoins(&mut self, to_join: &mut Vec<(String, Option<u64>)>, join_at: &mut Instant) {
        if self.rejoin.is_empty() {
            return;
        }
        let log = lock(&self.log);
        for room in self.rejoin.drain(..) {
            if !to_join.iter().any(|(r, _)| *r == room) {
                let since = log.cursor(&room);
                to_join.push((room, since));
            }
        }
        *join_at = Instant::now() + Duration::from_millis(500);
    }

    fn on_send_result(&mut self, r: Result<Ack, ClientError>) {
        let Some(i) = self.pending else { return };
        let mut log = lock(&self.log);
        match r {
            Ok(ack) => {
                let now = Instant::now();
                let started = log.sends[i].started;
                let _ = log.ack_ms.record((now - started).as_millis().max(1) as u64);
                log.sends[i].acked = Some((ack.seq, now, ack.duplicate));
                self.pending = None;
            }
            Err(e) => {
                let s = &mut log.sends[i];
                s.last_error = Some(e.to_string());
                // The room is not joined on this connection (a resume's or a
                // join's re-join was refused retryably while this send was
                // on its way): as an outbox does (PROTOCOL.md 9.2), join it
                // again and send the same cid once it is joined.
                let not_joined = matches!(
                    &e,
                    ClientError::Server {
                        code: chorus_protocol::ErrorCode::NotJoined,
                        ..
                    }
                );
                if not_joined {
                    s.retryable_errors += 1;
                    if !self.rejoin.contains(&s.room) {
                        self.rejoin.push(s.room.clone());
                    }
                } else if e.is_retryable() {
                    s.retryable_errors += 1;
                } else if matches!(e, ClientError::Server { .. }) {
                    // Refused for good: a real client would show an error.
                    s.abandoned = true;
                    self.pending = None;
                    return;
                }
                // Retryable, or the connection ended: the same cid again
                // (on the next connection if this one is gone).
                let retry_after = match &e {
                    ClientError::Server { retry_after_ms, .. } => *retry_after_ms,
                    _ => None,
                };
                let delay = chorus_protocol::client::retry_delay(
                    s.retryable_errors.min(6),
                    retry_after,
                    Duration::from_millis(100),
                    Duration::from_secs(2),
                    self.rng.random(),
                );
                self.retry_at = Instant::now() + delay;
            }
        }
    }

    /// Book a join reply; `Err` gives the join back to be tried again.
    fn on_joined(
        &mut self,
        room: &str,
        since: Option<u64>,
        r: Result<Joined, ClientError>,
    ) -> Result<(), (String, Option<u64>)> {
        let mut log = lock(&self.log);
        match r {
            Ok(j) => {
                log.first_tip.entry(room.to_owned()).or_insert(j.tip);
                if !j.recovered {
                    log.unrecovered.insert(room.to_owned());
                }
                Ok(())
            }
            Err(e) => {
                let key = match &e {
                    ClientError::Server { code, .. } => format!("join: {}", code.as_str()),
                    ClientError::Timeout => "join: timeout".into(),
                    ClientError::Closed { .. } => return Ok(()),
                    other => format!("join: {other}"),
                };
                *log.errors.entry(key).or_insert(0) += 1;
                Err((room.to_owned(), since))
            }
        }
    }

    /// Book an event; true when the connection ended.
    fn on_event(&mut self, ev: Event) -> bool {
        let mut log = lock(&self.log);
        match ev {
            Event::Msg(m) => {
                if let Some(t) = m
                    .body
                    .parse::<serde_json::Value>()
                    .ok()
                    .and_then(|v| v["t"].as_u64())
                {
                    let _ = log.lag_ms.record(now_ms().saturating_sub(t).max(1));
                }
                let seqs = log.received.entry(m.room.clone()).or_default();
                if let Some(&last) = seqs.last()
                    && m.seq <= last
                {
                    let what = format!("{}: seq {} after {}", m.room, m.seq, last);
                    log.order_violations.push(what);
                } else {
                    seqs.push(m.seq);
                }
            }
            Event::Gap {
                room,
                expected,
                got,
            } if !log.unrecovered.contains(&room) => {
                log.order_violations
                    .push(format!("{room}: expected seq {expected}, got {got}"));
            }
            Event::Joined(j) => {
                log.first_tip.entry(j.room.clone()).or_insert(j.tip);
                if !j.recovered {
                    log.unrecovered.insert(j.room.clone());
                }
            }
            Event::Error {
                code,
                retryable,
                request,
                room,
                ..
            } => {
                *log.errors.entry(code.as_str().to_owned()).or_insert(0) += 1;
                // A room a resume could not re-join right now: join it again.
                if retryable
                    && request.as_deref() == Some("join")
                    && let Some(room) = room
                    && self.profile.rooms.contains(&room)
                    && !self.rejoin.contains(&room)
                {
                    self.rejoin.push(room);
                }
            }
            Event::Closed { code, .. } => {
                drop(log);
                self.note_close(code);
                return true;
            }
            _ => {}
        }
        false
    }

    fn note_close(&mut self, code: Option<u16>) {
        let key = code.map_or_else(|| "none (dead or dropped)".to_owned(), |c| c.to_string());
        let mut log = lock(&self.log);
        *log.closes.entry(key).or_insert(0) += 1;
        log.node = None;
    }
}
