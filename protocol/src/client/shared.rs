//! State shared between the request handles and the socket task: waiting
//! requests, the close reason, the outbound queue and counters.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::frame::ServerFrame;

use super::ClientError;

pub(super) type Reply = Result<ServerFrame, ClientError>;

#[derive(Clone)]
pub(super) struct CloseInfo {
    pub(super) code: Option<u16>,
    pub(super) reason: String,
}

impl CloseInfo {
    pub(super) fn error(&self) -> ClientError {
        ClientError::Closed {
            code: self.code,
            reason: self.reason.clone(),
        }
    }
}

#[derive(Default)]
pub(super) struct Pending {
    pub(super) waiters: HashMap<u64, oneshot::Sender<Reply>>,
    /// Set once when the connection ends; later requests fail at once.
    pub(super) closed: Option<CloseInfo>,
}

pub(super) enum Outbound {
    /// An encoded frame.
    Text(String),
    /// An encoded `join`: the task resets the room's cursor to `since` before
    /// writing it (replayed messages follow).
    Join {
        room: String,
        since: Option<u64>,
        text: String,
    },
    /// Anything, as is.
    Raw(WsMessage),
}

pub(super) struct Shared {
    pub(super) out: mpsc::Sender<Outbound>,
    // A std Mutex, not tokio's: it is only held for a HashMap insert/remove
    // (never across an .await), which is cheaper than an async lock, and it
    // must be usable from synchronous code: the `Drop` of a cancelled request
    // (WaiterGuard) and the `Drop` of an aborted socket task.
    pub(super) pending: Mutex<Pending>,
    pub(super) next_id: AtomicU64,
    pub(super) duplicates: AtomicU64,
    pub(super) gaps: AtomicU64,
    pub(super) send_timeout: Duration,
    pub(super) request_timeout: Duration,
    pub(super) max_send_attempts: u32,
    pub(super) retry_base: Duration,
    pub(super) retry_cap: Duration,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn closed_error(&self) -> ClientError {
        match &self.lock().closed {
            Some(info) => info.error(),
            None => ClientError::Closed {
                code: None,
                reason: "connection task ended".into(),
            },
        }
    }

    /// Route a reply to its waiter; gives the frame back if nobody waits.
    pub(super) fn complete(&self, id: u64, reply: Reply) -> Option<Reply> {
        let waiter = self.lock().waiters.remove(&id);
        match waiter {
            Some(tx) => {
                // The receiver may have timed out meanwhile: nothing to do then.
                let _ = tx.send(reply);
                None
            }
            None => Some(reply),
        }
    }

    /// Mark the connection closed and fail every waiting request.
    pub(super) fn fail_all(&self, info: &CloseInfo) {
        let (waiters, info) = {
            let mut p = self.lock();
            let info = p.closed.get_or_insert_with(|| info.clone()).clone();
            (std::mem::take(&mut p.waiters), info)
        };
        for (_, tx) in waiters {
            let _ = tx.send(Err(info.error()));
        }
    }
}
