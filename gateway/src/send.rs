//! A send: the message to sequence, its ack, and why it was not acked. Shared
//! by whoever submits sends (connections, the HTTP API), the writer, and the
//! forwarding between nodes (whose wire format carries them).

use std::time::Duration;

use chorus_history::StoreError;
use chorus_protocol::{ErrorCode, Json};
use tokio::sync::oneshot;

/// A message to sequence (also the body of a send forwarded to a room's owner).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SendRequest {
    /// Tenant-namespaced room key.
    pub room: String,
    /// Public user id of the sender (or the API publisher's name).
    pub sender: String,
    pub cid: String,
    pub body: Json,
    pub meta: Option<Json>,
}

/// A committed send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub seq: u64,
    pub id: String,
    pub ts: i64,
    pub duplicate: bool,
}

/// Why a send was not acked. Every variant is safe to retry with the same cid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("history unavailable: {0}")]
    Unavailable(String),
    #[error("room writer changed; retry")]
    NotOwner,
    #[error("send not committed in time")]
    Timeout,
    #[error("internal error: {0}")]
    Internal(String),
}

impl SendError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SendError::Unavailable(_) => ErrorCode::Unavailable,
            SendError::NotOwner => ErrorCode::NotOwner,
            SendError::Timeout => ErrorCode::Timeout,
            SendError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<StoreError> for SendError {
    fn from(e: StoreError) -> SendError {
        match e {
            StoreError::Unavailable(m) => SendError::Unavailable(m),
            StoreError::Internal(m) => SendError::Internal(m),
        }
    }
}

/// Where a send's outcome goes.
pub(crate) type Reply = oneshot::Sender<Result<Acked, SendError>>;

/// Wait for a queued send's ack, at most `timeout`.
pub(crate) async fn await_ack(
    rx: oneshot::Receiver<Result<Acked, SendError>>,
    timeout: Duration,
) -> Result<Acked, SendError> {
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(SendError::Unavailable("writer stopped".into())),
        Err(_) => Err(SendError::Timeout),
    }
}
