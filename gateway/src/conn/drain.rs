//! The drain at shutdown: requests already on their way are answered, sends
//! in flight acked, then `reconnect` and close 4000.

use std::time::Duration;

use axum::extract::ws::Message as WsMessage;
use chorus_protocol::{ClientFrame, CloseCode, ErrorCode, ServerFrame};
use futures_util::StreamExt;

use super::{Conn, End, Socket};

/// How long a draining connection reads requests already on their way, at
/// most, and how long a quiet socket ends that early.
const DRAIN_READ: Duration = Duration::from_secs(1);
const DRAIN_QUIET: Duration = Duration::from_millis(100);

impl<S: Socket> Conn<S> {
    /// Shutdown: stop reading, let sends in flight finish (ack them), then ask
    /// the client to reconnect elsewhere and close with 4000.
    pub(super) async fn drain(&mut self) -> End {
        // Each pending send ends within the send timeout with an ack or a
        // (retryable) error of its own; the slack lets the last one be written.
        let deadline = tokio::time::Instant::now()
            + self.node.cfg.send.send_timeout()
            + Duration::from_secs(1);
        // Requests the client already wrote are read and answered: every
        // `send` with a retryable error (it resends after reconnecting, with
        // the same cid), so none is met with silence.
        let reading = (tokio::time::Instant::now() + DRAIN_READ).min(deadline);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(
            reading.min(tokio::time::Instant::now() + DRAIN_QUIET),
            self.ws.next(),
        )
        .await
        {
            let WsMessage::Text(t) = m else { continue };
            if let Ok(ClientFrame::Send { id, room, cid, .. }) = ClientFrame::decode(t.as_str()) {
                let refused = ServerFrame::Error {
                    id,
                    request: Some("send".into()),
                    code: ErrorCode::Unavailable,
                    message: "node is draining: resend after reconnecting".into(),
                    retryable: true,
                    retry_after_ms: Some(500),
                    cid: Some(cid),
                    room: Some(room),
                };
                if self.write(&refused).await.is_err() {
                    return End::Gone;
                }
            }
        }
        while !self.pending.is_empty() {
            match tokio::time::timeout_at(deadline, self.pending.next()).await {
                Ok(Some(done)) => {
                    if self.on_ack(done).await.is_err() {
                        return End::Gone;
                    }
                }
                _ => break,
            }
        }
        while let Some(o) = self.rx.0.try_pop() {
            if self.feed_outbound(o).await.is_err() {
                return End::Gone;
            }
        }
        let hint = ServerFrame::Reconnect {
            reason: "shutdown".into(),
            retry_after_ms: 500,
        };
        if self.write(&hint).await.is_err() {
            return End::Gone;
        }
        End::Close(CloseCode::Shutdown)
    }
}
