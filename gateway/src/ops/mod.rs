//! The requests a connection answers, one file per command: `join`, `leave`,
//! `send` (also the checks of the HTTP API's publish: one send path),
//! `history`, `receipts` (`read`, `delivered`), `typing`, `presence`,
//! `refresh`. Each is a method of the connection (`conn::Conn`) that answers
//! with its reply frame or fails with a [`Fail`], which [`Conn::request`]
//! writes as the `error` frame.

mod history;
mod join;
mod leave;
mod presence;
mod receipts;
mod refresh;
pub(crate) mod send;
mod typing;

use std::sync::Arc;

use chorus_history::{Position, StoreError};
use chorus_protocol::{ClientFrame, ErrorCode, ServerFrame, valid_room};
use tracing::warn;

use crate::conn::{Conn, Socket, Step};
use crate::send::SendError;

/// A failed request: the error frame to answer it with.
pub(crate) struct Fail {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) retry_after_ms: Option<u64>,
}

impl Fail {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Fail {
        Fail {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

impl<S: Socket> Conn<S> {
    /// Dispatch one decoded request; failures become `error` frames.
    pub(crate) async fn request(&mut self, frame: ClientFrame) -> Step {
        let id = frame.id();
        let op = frame.op();
        let (room, cid) = match &frame {
            ClientFrame::Send { room, cid, .. } => (Some(room.clone()), Some(cid.clone())),
            ClientFrame::Join { room, .. }
            | ClientFrame::Leave { room, .. }
            | ClientFrame::History { room, .. }
            | ClientFrame::Read { room, .. }
            | ClientFrame::Delivered { room, .. }
            | ClientFrame::Typing { room, .. }
            | ClientFrame::Presence { room, .. } => (Some(room.clone()), None),
            _ => (None, None),
        };
        let result = match frame {
            ClientFrame::Hello { .. } => Err(Fail::new(
                ErrorCode::InvalidState,
                "hello was already accepted",
            )),
            ClientFrame::Join { id, room, since } => self.join(id, room, since).await,
            ClientFrame::Leave {
                id,
                room,
                keep_membership,
            } => self.leave(id, room, keep_membership).await,
            ClientFrame::Send {
                id,
                room,
                cid,
                body,
                meta,
            } => self.send(id, room, cid, body, meta).await,
            ClientFrame::History {
                id,
                room,
                before,
                after,
                limit,
            } => self.history(id, room, before, after, limit).await,
            ClientFrame::Read { room, seq, .. } => self.mark(room, Position::Read, seq).await,
            ClientFrame::Delivered { room, seq, .. } => {
                self.mark(room, Position::Delivered, seq).await
            }
            ClientFrame::Typing { room, active } => self.typing(room, active).await,
            ClientFrame::Presence { id, room } => self.presence(id, room).await,
            ClientFrame::Ping { id } => return self.write(&ServerFrame::Pong { id }).await,
            ClientFrame::Pong {} => Ok(()),
            ClientFrame::Refresh { id, token } => Box::pin(self.refresh(id, token)).await,
        };
        match result {
            Ok(()) => Ok(()),
            Err(Fail {
                code,
                message,
                retry_after_ms,
            }) => {
                if code == ErrorCode::RateLimited {
                    metrics::counter!("chorus_rate_limited_total").increment(1);
                }
                self.write(&ServerFrame::Error {
                    id,
                    request: Some(op.to_owned()),
                    code,
                    message,
                    retryable: code.retryable(),
                    retry_after_ms,
                    cid,
                    room,
                })
                .await
            }
        }
    }

    /// Room name and ACL checks; the room's key.
    pub(crate) fn check_room(&self, room: &str) -> Result<String, Fail> {
        if !valid_room(room) {
            return Err(invalid_room());
        }
        if !self.ident.allows(room) {
            return Err(Fail::new(
                ErrorCode::Forbidden,
                format!("not allowed in room '{room}'"),
            ));
        }
        Ok(self.ident.room_key(room))
    }

    /// The key of a room this connection has joined. An invalid name is
    /// `invalid_room` (it can never be joined), not `not_joined`.
    pub(crate) fn joined_key(&self, room: &str) -> Result<Arc<str>, Fail> {
        if !valid_room(room) {
            return Err(invalid_room());
        }
        let key = self.ident.room_key(room);
        self.rooms
            .get_key_value(key.as_str())
            .map(|(k, _)| k.clone())
            .ok_or_else(|| Fail::new(ErrorCode::NotJoined, format!("join '{room}' first")))
    }
}

pub(crate) fn invalid_room() -> Fail {
    Fail::new(
        ErrorCode::InvalidRoom,
        "room names are 1-128 chars of A-Z a-z 0-9 _ - . : @ #",
    )
}

/// The one mapping of a store error onto the protocol (the HTTP API maps a
/// [`Fail`] onto a status).
impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        match e {
            StoreError::Unavailable(m) => Fail::new(ErrorCode::Unavailable, m),
            StoreError::Internal(m) => {
                warn!(error = %m, "store error");
                Fail::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

/// A send not acked: retryable with the same cid (every `SendError` is).
/// An internal error is logged here and not shown to the client.
impl From<SendError> for Fail {
    fn from(e: SendError) -> Fail {
        let message = match &e {
            SendError::Internal(m) => {
                warn!(error = %m, "send failed");
                "internal error".to_owned()
            }
            e => e.to_string(),
        };
        Fail {
            code: e.code(),
            message,
            retry_after_ms: Some(100),
        }
    }
}

impl<S: Socket> Conn<S> {
    /// Write a request's reply; a socket that broke meanwhile fails the
    /// request (the loop then ends on the next read).
    pub(crate) async fn reply(&mut self, frame: &ServerFrame) -> Result<(), Fail> {
        self.write(frame)
            .await
            .map_err(|_| Fail::new(ErrorCode::Internal, "socket closed"))
    }
}
