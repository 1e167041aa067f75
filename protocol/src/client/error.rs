//! [`ClientError`]: why a client operation failed.

use crate::codes::ErrorCode;

/// Why a client operation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// TCP connect or the WebSocket upgrade failed (not an HTTP rejection).
    #[error("connect failed: {0}")]
    Connect(String),
    /// The server answered the upgrade request with a non-101 status.
    #[error("websocket upgrade rejected: HTTP {status}: {body}")]
    Http { status: u16, body: String },
    /// The connection is closed (or closed while waiting). `code` is the
    /// WebSocket close code if a close frame arrived.
    #[error("connection closed (code {code:?}): {reason}")]
    Closed { code: Option<u16>, reason: String },
    /// The server answered the request with an `error` frame.
    #[error("server error {}: {message}", .code.as_str())]
    Server {
        code: ErrorCode,
        message: String,
        retryable: bool,
        retry_after_ms: Option<u64>,
    },
    /// No reply within the timeout.
    #[error("request timed out")]
    Timeout,
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Whether retrying the same request (same `cid`) on the same connection
    /// can succeed: retryable server errors and timeouts.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Server { retryable, .. } => *retryable,
            ClientError::Timeout => true,
            _ => false,
        }
    }

    /// The server error code, for [`ClientError::Server`].
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The WebSocket close code, for [`ClientError::Closed`].
    pub fn close_code(&self) -> Option<u16> {
        match self {
            ClientError::Closed { code, .. } => *code,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_helpers() {
        let e = ClientError::Server {
            code: ErrorCode::RateLimited,
            message: "slow".into(),
            retryable: true,
            retry_after_ms: Some(5),
        };
        assert!(e.is_retryable());
        assert_eq!(e.code(), Some(ErrorCode::RateLimited));
        assert!(e.to_string().contains("rate_limited"), "{e}");
        assert!(ClientError::Timeout.is_retryable());
        let c = ClientError::Closed {
            code: Some(4002),
            reason: "slow_consumer".into(),
        };
        assert!(!c.is_retryable());
        assert_eq!(c.close_code(), Some(4002));
    }
}
