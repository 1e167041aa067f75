//! `history`: one page of a room's stored messages.

use chorus_protocol::ServerFrame;

use super::Fail;
use crate::conn::{Conn, Socket};
use crate::wire::{read_page, to_message};

impl<S: Socket> Conn<S> {
    pub(super) async fn history(
        &mut self,
        id: Option<u64>,
        room: String,
        before: Option<u64>,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<(), Fail> {
        let key = self.check_room(&room)?;
        let (messages, has_more) = read_page(
            &*self.node.store,
            &key,
            before,
            after,
            limit,
            self.node.cfg.history.max_history_page,
        )
        .await
        .map_err(Fail::from)?;
        let messages = messages.into_iter().map(|m| to_message(&room, m)).collect();
        self.reply(&ServerFrame::History {
            id,
            room,
            messages,
            has_more,
        })
        .await
    }
}
