//! `presence`: who is in a joined room, bounded by the reply size.

use chorus_protocol::{ErrorCode, PresenceUser, ServerFrame};

use super::Fail;
use crate::conn::{Conn, Socket};

impl<S: Socket> Conn<S> {
    pub(super) async fn presence(&mut self, id: Option<u64>, room: String) -> Result<(), Fail> {
        let key = self.joined_key(&room)?;
        let users = self
            .node
            .presence
            .room(&key)
            .await
            .map_err(|e| Fail::new(ErrorCode::Unavailable, e.to_string()))?;
        let (users, truncated) =
            fit_presence(users, self.node.cfg.presence.max_presence_reply_bytes);
        self.reply(&ServerFrame::Presence {
            id,
            room,
            users,
            truncated,
        })
        .await
    }
}

/// The first users of a presence list whose JSON fits in `max_bytes`, and
/// whether any were left out.
pub(super) fn fit_presence(users: Vec<PresenceUser>, max_bytes: u64) -> (Vec<PresenceUser>, bool) {
    let mut used: u64 = 2;
    let mut out = Vec::with_capacity(users.len());
    for u in users {
        // Measured, not kept: every join of a room below the hot threshold
        // sizes its list (a reconnect storm, 15,000 of them).
        let mut size = Counted(1);
        if serde_json::to_writer(&mut size, &u).is_err() {
            size.0 = u64::MAX;
        }
        used = used.saturating_add(size.0);
        if used > max_bytes {
            return (out, true);
        }
        out.push(u);
    }
    (out, false)
}

/// A writer that only counts the bytes written to it.
struct Counted(u64);

impl std::io::Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
