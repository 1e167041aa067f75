//! What a client writes down for the checker: its sends ([`SendRecord`]),
//! deliveries, sessions, closes and errors ([`ClientLog`]), shared with the
//! harness ([`SharedLog`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use hdrhistogram::Histogram;
use tokio::time::Instant;

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
    pub(super) fn new(user: String, device: String, rooms: Vec<String>) -> ClientLog {
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
