//! One connection's loop: join the client's rooms, send one message at a time
//! (retrying with the same cid), send read receipts, follow the harness's
//! commands, until the connection ends or the harness is done.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chorus_protocol::Json;
use chorus_protocol::client::{Ack, Client, ClientError, Joined};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Command, SendRecord, SessionEnd, State, lock, now_ms};

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A join: the room, its `since`, and the answer.
type JoinOutcome = (String, Option<u64>, Result<Joined, ClientError>);

impl State {
    pub(super) async fn session(
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
}
