//! `leave`: out of the room's feed and presence; the durable membership too
//! unless `keep_membership`.

use chorus_protocol::ServerFrame;

use super::Fail;
use crate::conn::{Conn, Socket};

impl<S: Socket> Conn<S> {
    pub(super) async fn leave(
        &mut self,
        id: Option<u64>,
        room: String,
        keep_membership: bool,
    ) -> Result<(), Fail> {
        // The ACL applies as for `join` (PROTOCOL.md 2.2): a room the token
        // does not allow is `forbidden`, also for leaving. Such a membership is
        // no longer listed in `welcome` either.
        let key = self.check_room(&room)?;
        if let Some((k, _)) = self.rooms.get_key_value(key.as_str()) {
            let k = k.clone();
            self.drop_room(&k).await;
            self.node
                .sessions
                .leave(&k, &self.session, &self.ident.user)
                .await;
        }
        if !keep_membership {
            self.node
                .store
                .leave(&key, &self.user_key)
                .await
                .map_err(Fail::from)?;
        }
        self.reply(&ServerFrame::Left { id, room }).await
    }
}
