//! `send`, and the one send path: every send, from a connection or from the
//! HTTP API's publish, passes [`submit`]'s checks in the same order and is
//! handed to the room's writer the same way; only the doors differ (the
//! connection acks through its `pending` set, the HTTP API waits).

use chorus_protocol::{ErrorCode, Json, ServerFrame, valid_cid};
use tokio::sync::oneshot;

use super::Fail;
use crate::conn::{Conn, Socket, Step};
use crate::node::Node;
use crate::ratelimit::TokenBucket;
use crate::send::{Acked, SendError, SendRequest, await_ack};

/// Where a submitted send's outcome arrives.
pub(crate) type AckRx = oneshot::Receiver<Result<Acked, SendError>>;

/// Who sends, for the rate limits.
pub(crate) struct Origin<'a> {
    /// The sender's tenant-namespaced user key: the shared per-user bucket
    /// (`--user-sends-per-sec`), the same for all of a user's doors.
    pub(crate) user_key: &'a str,
    /// The tenant's bucket, when the sender has a tenant.
    pub(crate) tenant: Option<&'a str>,
    /// The connection's own bucket (`--sends-per-sec`), checked before the
    /// shared ones: a flooding socket is refused without a Redis round trip.
    pub(crate) bucket: Option<&'a mut TokenBucket>,
}

/// Check a send and hand it to the room's writer (local, or the owner node's
/// inbox): the cid, the size of body + meta, the connection's bucket, then
/// the user's and the tenant's shared buckets. The shared check is awaited
/// here, so one door's sends reach the router in the order it submitted
/// them.
pub(crate) async fn submit(node: &Node, req: SendRequest, from: Origin<'_>) -> Result<AckRx, Fail> {
    if !valid_cid(&req.cid) {
        return Err(Fail::new(
            ErrorCode::BadRequest,
            "cid must be 1-128 characters",
        ));
    }
    let max = node.cfg.send.max_message_bytes;
    let size = req.body.get().len() + req.meta.as_ref().map(|m| m.get().len()).unwrap_or(0);
    if size as u64 > max {
        return Err(Fail::new(
            ErrorCode::MessageTooLarge,
            format!("body+meta is {size} bytes; the limit is {max}"),
        ));
    }
    if let Some(bucket) = from.bucket
        && let Err(wait) = bucket.take()
    {
        return Err(rate_limited(
            format!("at most {} sends per second", node.cfg.send.sends_per_sec),
            wait.as_millis() as u64 + 1,
        ));
    }
    if let Err(r) = node.limits.check(Some(from.user_key), from.tenant).await {
        return Err(rate_limited(r.message(), r.retry_after_ms()));
    }
    Ok(node.router.submit(req)?)
}

fn rate_limited(message: String, retry_after_ms: u64) -> Fail {
    metrics::counter!("chorus_rate_limited_total").increment(1);
    Fail {
        code: ErrorCode::RateLimited,
        message,
        retry_after_ms: Some(retry_after_ms),
    }
}

impl<S: Socket> Conn<S> {
    /// `send` in a joined room: [`submit`]ted with this connection's bucket;
    /// its ack comes through `pending` (`on_ack`).
    pub(super) async fn send(
        &mut self,
        id: Option<u64>,
        room: String,
        cid: String,
        body: Json,
        meta: Option<Json>,
    ) -> Result<(), Fail> {
        let key = self.joined_key(&room)?;
        let req = SendRequest {
            room: key.to_string(),
            sender: self.ident.user.clone(),
            cid: cid.clone(),
            body,
            meta,
        };
        let from = Origin {
            user_key: &self.user_key,
            tenant: self.ident.tenant.as_deref(),
            bucket: Some(&mut self.sends),
        };
        let rx = submit(&self.node, req, from).await?;
        let timeout = self.node.cfg.send.send_timeout();
        self.pending.push(Box::pin(async move {
            (id, room, cid, await_ack(rx, timeout).await)
        }));
        Ok(())
    }

    /// A send's outcome: its own `msg` first if it has not been written yet
    /// (`deliver_upto`), then the `ack`; or the `error`.
    pub(crate) async fn on_ack(
        &mut self,
        (id, room, cid, result): (Option<u64>, String, String, Result<Acked, SendError>),
    ) -> Step {
        match result {
            Ok(a) => {
                self.deliver_upto(&room, a.seq).await?;
                self.write(&ServerFrame::Ack {
                    id,
                    room,
                    cid,
                    seq: a.seq,
                    msg_id: a.id,
                    ts: a.ts,
                    duplicate: a.duplicate,
                })
                .await
            }
            Err(e) => {
                let fail = Fail::from(e);
                self.write(&ServerFrame::Error {
                    id,
                    request: Some("send".into()),
                    code: fail.code,
                    message: fail.message,
                    retryable: fail.code.retryable(),
                    retry_after_ms: fail.retry_after_ms,
                    cid: Some(cid),
                    room: Some(room),
                })
                .await
            }
        }
    }
}
