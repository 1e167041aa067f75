//! `read` and `delivered`: a member's receipt positions (batched by the node).

use chorus_history::Position;

use super::Fail;
use crate::conn::{Conn, Socket};

impl<S: Socket> Conn<S> {
    pub(super) async fn mark(
        &mut self,
        room: String,
        position: Position,
        seq: u64,
    ) -> Result<(), Fail> {
        let key = self.joined_key(&room)?;
        self.node
            .receipts
            .mark(&key, &self.ident.user, &self.user_key, position, seq)
            .await
            .map_err(Fail::from)
    }
}
