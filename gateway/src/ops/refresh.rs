//! `refresh`: a new token put in force on a live connection.

use std::sync::Arc;

use chorus_protocol::{ErrorCode, ServerFrame};
use tracing::debug;

use super::Fail;
use crate::auth::AuthError;
use crate::conn::{Conn, Socket};

impl<S: Socket> Conn<S> {
    /// `refresh`: verify the new token like a `hello`'s, for the same user and
    /// tenant, put it in force (its `exp` re-arms the timers, its `rooms` claim
    /// decides from now on), and leave every joined room it does not allow
    /// (each with an `error` naming the room, before the `refreshed` reply;
    /// the durable membership stays, as when a resume's new token no longer
    /// allows a room). A refused token changes nothing.
    pub(super) async fn refresh(&mut self, id: Option<u64>, token: String) -> Result<(), Fail> {
        if self.ident.exp.is_none() {
            return Err(Fail::new(
                ErrorCode::InvalidState,
                "this connection was not authenticated with a JWT (development mode): \
                 there is no token to refresh",
            ));
        }
        let node = self.node.clone();
        let new = node.auth.verify(&token).await.map_err(|e| {
            metrics::counter!("chorus_auth_failures_total").increment(1);
            debug!(error = %e, "refresh refused");
            match e {
                AuthError::KeysUnavailable => Fail {
                    code: ErrorCode::Unavailable,
                    message: e.to_string(),
                    retry_after_ms: Some(1000),
                },
                _ => Fail::new(ErrorCode::Unauthorized, e.to_string()),
            }
        })?;
        if new.user != self.ident.user || new.tenant != self.ident.tenant {
            return Err(Fail::new(
                ErrorCode::Forbidden,
                "the new token is for another user or tenant",
            ));
        }
        let exp = new.exp.unwrap_or(0);
        self.ident = new;
        self.token_changed = true;
        metrics::counter!("chorus_token_refreshes_total").increment(1);
        let mut revoked: Vec<(Arc<str>, String)> = self
            .rooms
            .iter()
            .filter(|(_, j)| !self.ident.allows(&j.public))
            .map(|(k, j)| (k.clone(), j.public.clone()))
            .collect();
        revoked.sort_by(|a, b| a.1.cmp(&b.1));
        for (key, room) in revoked {
            self.drop_room(&key).await;
            node.sessions
                .leave(&key, &self.session, &self.ident.user)
                .await;
            self.reply(&ServerFrame::Error {
                id: None,
                request: Some("refresh".into()),
                code: ErrorCode::Forbidden,
                message: format!("the new token does not allow room '{room}': left it"),
                retryable: false,
                retry_after_ms: None,
                cid: None,
                room: Some(room),
            })
            .await?;
        }
        self.reply(&ServerFrame::Refreshed { id, exp }).await
    }
}
