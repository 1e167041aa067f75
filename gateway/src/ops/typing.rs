//! `typing`: relayed to the room's other members, starts rate-limited.

use std::time::{Duration, Instant};

use chorus_protocol::ServerFrame;

use super::Fail;
use crate::conn::{Conn, Socket};

impl<S: Socket> Conn<S> {
    pub(super) async fn typing(&mut self, room: String, active: bool) -> Result<(), Fail> {
        let key = self.joined_key(&room)?;
        let interval = Duration::from_millis(self.node.cfg.presence.typing_interval_ms);
        let Some(j) = self.rooms.get_mut(&key) else {
            return Ok(());
        };
        // Starts are rate-limited (excess dropped silently: typing is ephemeral);
        // a stop goes through when it clears a relayed start, so indicators clear
        // promptly. A stop does not reset the start limit: alternating start/stop
        // would otherwise relay every frame.
        if active {
            if j.last_typing.is_some_and(|t| t.elapsed() < interval) {
                return Ok(());
            }
            j.last_typing = Some(Instant::now());
            j.typing_shown = true;
        } else {
            if !j.typing_shown {
                return Ok(());
            }
            j.typing_shown = false;
        }
        let device = self
            .entry
            .as_ref()
            .map(|e| e.device.clone())
            .unwrap_or_default();
        let frame = ServerFrame::Typing {
            room,
            user: self.ident.user.clone(),
            device,
            active,
        };
        self.node
            .fanout
            .announce(&key, &frame, Some(self.handle.id))
            .await;
        Ok(())
    }
}
