//! After the handshake: the session attached (resumed or new), `welcome`
//! sent, and a resume's rooms joined again.

use chorus_protocol::{
    ClientFrame, CloseCode, Json, PROTOCOL_VERSION, Resume, RoomState, ServerFrame,
};
use tracing::warn;

use super::{Conn, End, Socket, Step};
use crate::clock::now_ms;
use crate::presence::PresenceEntry;

impl<S: Socket> Conn<S> {
    /// Authenticated `hello`: attach the session (resumed or new), send `welcome`,
    /// then re-join resumed rooms.
    pub(super) async fn welcome(
        &mut self,
        device: Option<String>,
        meta: Option<Json>,
        resume: Option<Resume>,
    ) -> Step {
        let node = self.node.clone();
        let grant = resume
            .as_ref()
            .and_then(|r| node.auth.verify_resume(&r.token))
            .filter(|g| g.user == self.ident.user && g.tenant == self.ident.tenant);
        let resumed = grant.is_some();
        self.session = grant
            .map(|g| g.session)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let device = device
            .filter(|d| !d.is_empty() && d.len() <= 64)
            .unwrap_or_else(|| "default".to_owned());
        let meta = meta
            .and_then(|m| m.parse::<serde_json::Value>().ok())
            .filter(|m| !m.is_null());
        let entry = PresenceEntry {
            session: self.session.clone(),
            user: self.ident.user.clone(),
            user_key: self.user_key.clone(),
            device: device.clone(),
            node: node.id.clone(),
            since: now_ms(),
            meta,
        };
        self.generation = node
            .sessions
            .attach(entry.clone(), Some(self.handle.kill.clone()))
            .await;
        self.entry = Some(entry);
        let memberships = match node.store.memberships(&self.user_key).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "loading memberships failed");
                return Err(End::Close(CloseCode::Unavailable));
            }
        };
        let frame = ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            session: self.session.clone(),
            user: self.ident.user.clone(),
            tenant: self.ident.tenant.clone(),
            device,
            node: node.id.clone(),
            resume_token: node.auth.resume_token(&self.session, &self.ident),
            resume_ttl_ms: node.cfg.auth.resume_ttl_ms,
            heartbeat_ms: node.cfg.conn.heartbeat_ms,
            idle_timeout_ms: node.cfg.conn.idle_timeout_ms,
            limits: node.cfg.limits(),
            // Only rooms the current token allows: a membership from an earlier
            // token with wider `rooms` stays stored but is not shown.
            rooms: memberships
                .iter()
                .filter(|m| self.ident.allows(crate::names::public_name(&m.room)))
                .map(|m| RoomState {
                    room: crate::names::public_name(&m.room).to_owned(),
                    tip: m.tip,
                    last_read: m.last_read,
                    last_delivered: m.last_delivered,
                    unread: m.unread(),
                })
                .collect(),
            resumed,
        };
        self.write(&frame).await?;
        if resumed && let Some(r) = resume {
            for (room, since) in r.rooms {
                self.request(ClientFrame::Join {
                    id: None,
                    room,
                    since: Some(since),
                })
                .await?;
            }
            let rooms: Vec<String> = self.rooms.keys().map(|k| k.to_string()).collect();
            node.sessions
                .settle(&self.session, self.generation, &rooms, &self.ident.user)
                .await;
        }
        Ok(())
    }
}
