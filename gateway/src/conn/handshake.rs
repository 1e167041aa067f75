//! The handshake: the first frame must be `hello`; its version, `meta` size
//! and credentials are checked and the user admitted, or the socket is closed
//! with the code that says why. Also the close frames themselves.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message as WsMessage, Utf8Bytes};
use chorus_protocol::{ClientFrame, CloseCode, Json, PROTOCOL_VERSION, Resume};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tracing::debug;

use super::{Socket, UpgradeAuth};
use crate::auth::{AuthError, Identity};
use crate::listener::Slot;
use crate::node::Node;
use crate::websocket::{WsError, ws_error};

/// How long a close waits for the client's close reply.
const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// An authenticated, admitted `hello`.
pub(super) struct Accepted {
    pub(super) ident: Identity,
    pub(super) device: Option<String>,
    pub(super) meta: Option<Json>,
    pub(super) resume: Option<Resume>,
}

/// Run the handshake on a fresh socket. `slot` is this connection's place
/// among the pending ones (see `listener`): released once `hello`
/// authenticated, closed with `handshake_timeout` if the listener evicts it
/// before that. `None` once the socket was closed (the reason sent); an
/// accepted user is admitted and must be released (`Connections::release`).
pub(super) async fn accept<S: Socket>(
    node: &Node,
    ws: &mut S,
    creds: UpgradeAuth,
    slot: Option<Slot>,
) -> Option<Accepted> {
    let evicted = async {
        match &slot {
            Some(s) => s.evicted().await,
            None => std::future::pending().await,
        }
    };
    let shaken = tokio::select! {
        r = AssertUnwindSafe(Box::pin(handshake(node, ws))).catch_unwind() => r,
        _ = evicted => {
            // Evicted at the pending bound: descriptors are what is short, so
            // the close frame goes out without waiting for the client's reply
            // (and the socket does not linger, see `listener::LingerStream`).
            Box::pin(close_now(ws, CloseCode::HandshakeTimeout)).await;
            return None;
        }
    };
    let hello = match shaken {
        Ok(Ok(h)) => h,
        Ok(Err(code)) => {
            Box::pin(close(ws, code, None)).await;
            return None;
        }
        Err(panic) => {
            crate::metrics::panicked("connection", panic.as_ref());
            Box::pin(close(ws, CloseCode::InternalError, None)).await;
            return None;
        }
    };
    let ClientFrame::Hello {
        v,
        token,
        device,
        meta,
        resume,
    } = hello
    else {
        close(
            ws,
            CloseCode::ProtocolViolation,
            Some("first frame must be hello"),
        )
        .await;
        return None;
    };
    if v != PROTOCOL_VERSION {
        close(
            ws,
            CloseCode::UnsupportedVersion,
            Some("this server speaks v1"),
        )
        .await;
        return None;
    }
    if let Some(m) = &meta
        && m.get().len() as u64 > node.cfg.conn.max_presence_meta_bytes
    {
        let detail = format!(
            "hello.meta is {} bytes, over --max-presence-meta-bytes {}",
            m.get().len(),
            node.cfg.conn.max_presence_meta_bytes
        );
        Box::pin(close(ws, CloseCode::MessageTooBig, Some(&detail))).await;
        return None;
    }
    let token = creds.token.or(token);
    let ident = match node
        .auth
        .authenticate(token.as_deref(), creds.dev_user.as_deref())
        .await
    {
        Ok(i) => i,
        Err(e) => {
            metrics::counter!("chorus_auth_failures_total").increment(1);
            let code = e.close_code();
            let reason = match &e {
                AuthError::Invalid(_) => "invalid token",
                AuthError::Missing => "missing token",
                AuthError::Expired => "token expired",
                AuthError::KeysUnavailable => "the identity provider's key set is unavailable",
            };
            debug!(error = %e, "authentication failed");
            Box::pin(close(ws, code, Some(reason))).await;
            return None;
        }
    };
    let user_key = ident.user_key();
    if let Err(code) = node.connections.admit(&user_key) {
        Box::pin(close(ws, code, None)).await;
        return None;
    }
    // Authenticated: no longer pending.
    if let Some(slot) = &slot {
        slot.release();
    }
    Some(Accepted {
        ident,
        device,
        meta,
        resume,
    })
}

/// Most control frames (ping, pong) accepted before `hello`.
const MAX_FRAMES_BEFORE_HELLO: u32 = 8;

/// Wait for the first data frame, which must decode as `hello`.
async fn handshake<S: Socket>(node: &Node, ws: &mut S) -> Result<ClientFrame, CloseCode> {
    let deadline = tokio::time::Instant::now() + node.cfg.conn.handshake_timeout();
    let mut control = 0;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(CloseCode::HandshakeTimeout),
            Ok(None) => return Err(CloseCode::ProtocolViolation),
            Ok(Some(Err(e))) => return Err(classify(&e).unwrap_or(CloseCode::ProtocolViolation)),
            Ok(Some(Ok(m))) => m,
        };
        match msg {
            WsMessage::Text(t) => {
                return match ClientFrame::decode(t.as_str()) {
                    Ok(f @ ClientFrame::Hello { .. }) => Ok(f),
                    _ => Err(CloseCode::ProtocolViolation),
                };
            }
            WsMessage::Binary(_) => return Err(CloseCode::ProtocolViolation),
            WsMessage::Close(_) => return Err(CloseCode::ProtocolViolation),
            WsMessage::Ping(_) | WsMessage::Pong(_) => {
                control += 1;
                if control > MAX_FRAMES_BEFORE_HELLO {
                    return Err(CloseCode::Flood);
                }
            }
        }
    }
}

/// The close code for a read error, if the error is the client's fault.
pub(super) fn classify(e: &axum::Error) -> Option<CloseCode> {
    match ws_error(e)? {
        WsError::TooBig => Some(CloseCode::MessageTooBig),
        WsError::Utf8 | WsError::Protocol(_) => Some(CloseCode::ProtocolViolation),
        WsError::Closed | WsError::Io(_) => None,
    }
}

/// Send a close frame (bounded in time) and let the socket go.
pub(super) async fn close<S: Socket>(ws: &mut S, code: CloseCode, detail: Option<&str>) {
    metrics::counter!("chorus_closes_total", "code" => code.reason()).increment(1);
    let reason = detail
        .map(|d| format!("{}: {d}", code.reason()))
        .unwrap_or_else(|| code.reason().to_owned());
    let frame = CloseFrame {
        code: code.code(),
        reason: Utf8Bytes::from(reason),
    };
    let sent = tokio::time::timeout(
        Duration::from_secs(2),
        ws.send(WsMessage::Close(Some(frame))),
    )
    .await;
    if matches!(sent, Ok(Ok(()))) {
        // Closing handshake: read (and drop) what the client still sends, up to
        // its close reply. Closing the socket with unread input makes the kernel
        // answer with a reset, and a reset makes the client's kernel discard what
        // the client has not read yet: the `reconnect` hint and this close frame.
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, WsMessage::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
}

/// Send a close frame (briefly bounded) and return without the closing
/// handshake: for a connection evicted while pending.
async fn close_now<S: Socket>(ws: &mut S, code: CloseCode) {
    metrics::counter!("chorus_closes_total", "code" => code.reason()).increment(1);
    let frame = CloseFrame {
        code: code.code(),
        reason: Utf8Bytes::from(code.reason()),
    };
    let _ = tokio::time::timeout(
        Duration::from_millis(100),
        ws.send(WsMessage::Close(Some(frame))),
    )
    .await;
}
