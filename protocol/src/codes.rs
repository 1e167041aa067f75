//! Close codes and error codes: what a client should do when it sees each.
//!
//! Close codes are split in two ranges (the idea comes from centrifuge):
//! - `4000..=4499`: **reconnect** (with back-off and jitter) and **resume** with the
//!   resume token; nothing is lost.
//! - `4500..=4999`: **do not reconnect** with the same credentials or the same
//!   behaviour: fix the token, the client or the payload first.
//!
//! Error codes travel in `error` frames; the connection stays open.

use serde::{Deserialize, Serialize};

/// A WebSocket close code sent by the gateway, with its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// The node is draining (restart, deploy): reconnect, to any node, and resume.
    Shutdown = 4000,
    /// No frame from the client within the idle timeout (missed pongs).
    HeartbeatTimeout = 4001,
    /// The client did not read fast enough and its outbound queue filled up.
    /// Reconnect and resume from the last seq seen: nothing is lost.
    SlowConsumer = 4002,
    /// Unexpected server fault: reconnect with back-off.
    InternalError = 4003,
    /// Too many frames per second (flood): reconnect after the back-off.
    Flood = 4004,
    /// No `hello` within the handshake timeout.
    HandshakeTimeout = 4005,
    /// The history store or another dependency is unavailable: retry later.
    Unavailable = 4006,
    /// The frame was not valid for this protocol: a binary frame, invalid
    /// UTF-8, or a first frame that is not `hello`.
    ProtocolViolation = 4500,
    /// Missing or invalid token (bad signature, bad claims, unknown key).
    Unauthorized = 4501,
    /// The token has expired: get a fresh token, then reconnect.
    TokenExpired = 4502,
    /// The user is not allowed to connect (banned, tenant disabled).
    Forbidden = 4503,
    /// A frame larger than the negotiated `max_frame_bytes`.
    MessageTooBig = 4504,
    /// The user already holds `max_connections_per_user` connections.
    TooManyConnections = 4505,
    /// The client asked for a protocol version this server does not speak.
    UnsupportedVersion = 4506,
    /// Another connection resumed this session (its resume token was used while
    /// this connection was still open): do not resume it again; a client that
    /// is still alive starts a new session (`hello` without `resume`).
    SessionTakenOver = 4507,
}

impl CloseCode {
    /// Every code, for documentation and tests.
    pub const ALL: [CloseCode; 15] = [
        CloseCode::Shutdown,
        CloseCode::HeartbeatTimeout,
        CloseCode::SlowConsumer,
        CloseCode::InternalError,
        CloseCode::Flood,
        CloseCode::HandshakeTimeout,
        CloseCode::Unavailable,
        CloseCode::ProtocolViolation,
        CloseCode::Unauthorized,
        CloseCode::TokenExpired,
        CloseCode::Forbidden,
        CloseCode::MessageTooBig,
        CloseCode::TooManyConnections,
        CloseCode::UnsupportedVersion,
        CloseCode::SessionTakenOver,
    ];

    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The close reason string sent with the code (short, stable, machine-readable).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Shutdown => "shutdown",
            CloseCode::HeartbeatTimeout => "heartbeat_timeout",
            CloseCode::SlowConsumer => "slow_consumer",
            CloseCode::InternalError => "internal_error",
            CloseCode::Flood => "flood",
            CloseCode::HandshakeTimeout => "handshake_timeout",
            CloseCode::Unavailable => "unavailable",
            CloseCode::ProtocolViolation => "protocol_violation",
            CloseCode::Unauthorized => "unauthorized",
            CloseCode::TokenExpired => "token_expired",
            CloseCode::Forbidden => "forbidden",
            CloseCode::MessageTooBig => "message_too_big",
            CloseCode::TooManyConnections => "too_many_connections",
            CloseCode::UnsupportedVersion => "unsupported_version",
            CloseCode::SessionTakenOver => "session_taken_over",
        }
    }

    /// Look a numeric code up.
    pub fn from_code(code: u16) -> Option<CloseCode> {
        CloseCode::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Whether a client should reconnect (and resume) after this code.
    pub fn should_reconnect(self) -> bool {
        should_reconnect(self.code())
    }
}

/// Whether a client should reconnect after a close with this numeric code.
/// Standard codes other than 1008/1003/1007/1009/1010 (policy and payload errors)
/// mean a transport problem: reconnect.
pub fn should_reconnect(code: u16) -> bool {
    match code {
        4000..=4499 => true,
        4500..=4999 => false,
        1002 | 1003 | 1007 | 1008 | 1009 | 1010 => false,
        _ => true,
    }
}

/// The `code` of an `error` frame. The connection stays open after every one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, a wrong field type or a missing field. Not retryable.
    BadRequest,
    /// The `op` is not one this protocol version knows. Not retryable.
    UnknownOp,
    /// A room name that is empty, too long or has characters outside the allowed set.
    InvalidRoom,
    /// The token's `rooms` claim (or a direct room's members) does not allow this room.
    Forbidden,
    /// `send`, `read`, `delivered`, `typing` or `presence` for a room this
    /// connection has not joined.
    NotJoined,
    /// `join` would exceed `max_rooms` for this connection.
    TooManyRooms,
    /// A message body (plus meta) larger than `max_message_bytes`.
    MessageTooLarge,
    /// Too many sends: wait `retry_after_ms`, then retry with the same `cid`.
    RateLimited,
    /// History or another dependency is unavailable: retry with the same `cid`.
    Unavailable,
    /// The room's writer changed during the send (fenced): retry with the same `cid`.
    NotOwner,
    /// The server did not complete the request in time: retry with the same `cid`.
    Timeout,
    /// `hello` sent twice, a `refresh` on a connection not authenticated by a
    /// JWT, or another request in the wrong state.
    InvalidState,
    /// Unexpected server fault: retry with the same `cid`.
    Internal,
    /// The token of a `refresh` is invalid or expired; the connection keeps
    /// its current token.
    Unauthorized,
}

impl ErrorCode {
    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownOp,
        ErrorCode::InvalidRoom,
        ErrorCode::Forbidden,
        ErrorCode::NotJoined,
        ErrorCode::TooManyRooms,
        ErrorCode::MessageTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Unavailable,
        ErrorCode::NotOwner,
        ErrorCode::Timeout,
        ErrorCode::InvalidState,
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
    ];

    /// Whether retrying the same request (same `cid` for sends) can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::Unavailable
                | ErrorCode::NotOwner
                | ErrorCode::Timeout
                | ErrorCode::Internal
        )
    }

    /// The snake_case name as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownOp => "unknown_op",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::NotOwner => "not_owner",
            ErrorCode::Timeout => "timeout",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_ranges_match_reconnect_rule() {
        for c in CloseCode::ALL {
            assert_eq!(c.should_reconnect(), c.code() < 4500, "{c:?}");
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
        }
        assert!(!should_reconnect(1009));
        assert!(should_reconnect(1006));
    }

    #[test]
    fn error_codes_round_trip_as_snake_case() {
        for c in ErrorCode::ALL {
            let s = serde_json::to_string(&c).unwrap();
            assert_eq!(s, format!("\"{}\"", c.as_str()));
            let back: ErrorCode = serde_json::from_str(&s).unwrap();
            assert_eq!(back, c);
        }
    }
}
