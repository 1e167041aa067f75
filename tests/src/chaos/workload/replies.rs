//! Booking what the server answered: a send's ack or error (and its retry),
//! a join's reply, unsolicited events, the close; and queueing the rooms to
//! join again.

use std::time::Duration;

use chorus_protocol::client::{Ack, ClientError, Event, Joined};
use rand::Rng;
use tokio::time::Instant;

use super::{State, lock, now_ms};

impl State {
    /// Queue the rooms to join again (a resume's re-join or a join refused
    /// retryably, or a send answered `not_joined`), half a second from now.
    pub(super) fn take_rejoins(
        &mut self,
        to_join: &mut Vec<(String, Option<u64>)>,
        join_at: &mut Instant,
    ) {
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

    pub(super) fn on_send_result(&mut self, r: Result<Ack, ClientError>) {
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
    pub(super) fn on_joined(
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
    pub(super) fn on_event(&mut self, ev: Event) -> bool {
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

    pub(super) fn note_close(&mut self, code: Option<u16>) {
        let key = code.map_or_else(|| "none (dead or dropped)".to_owned(), |c| c.to_string());
        let mut log = lock(&self.log);
        *log.closes.entry(key).or_insert(0) += 1;
        log.node = None;
    }
}
