//! `join`: the durable membership, the room's feed (hub and broker, undone
//! together on failure), replay from `since`, presence, and the `joined`
//! reply.

use std::sync::Arc;

use chorus_history::Membership;
use chorus_protocol::{ErrorCode, ServerFrame};

use super::Fail;
use super::presence::fit_presence;
use crate::clock::now_ms;
use crate::conn::{Conn, Joined, ReplayError, Socket};
use crate::node::Node;

impl<S: Socket> Conn<S> {
    pub(super) async fn join(
        &mut self,
        id: Option<u64>,
        room: String,
        since: Option<u64>,
    ) -> Result<(), Fail> {
        let key = self.check_room(&room)?;
        if self.node.cfg.test_panic_room.as_deref() == Some(room.as_str()) {
            panic!("--test-panic-room: join of {room}");
        }
        let already = self.rooms.contains_key(key.as_str());
        if !already && self.rooms.len() as u64 >= self.node.cfg.conn.max_rooms {
            return Err(Fail::new(
                ErrorCode::TooManyRooms,
                format!(
                    "at most {} rooms per connection",
                    self.node.cfg.conn.max_rooms
                ),
            ));
        }
        let node = self.node.clone();
        // The cap's check reads the membership: a member's join (every
        // resume) then needs no second read.
        let existing = if already {
            None
        } else {
            check_membership_cap(&node, &key, &self.user_key).await?
        };
        let membership = match existing {
            Some(m) => m,
            None => node
                .store
                .join(&key, &self.user_key, now_ms())
                .await
                .map_err(Fail::from)?,
        };
        // Subscribe before reading the tip: every message committed after this
        // point reaches the queue, every one before it is at or below the tip.
        let key: Arc<str> = if already {
            self.rooms
                .get_key_value(key.as_str())
                .map(|(k, _)| k.clone())
                .unwrap_or_else(|| Arc::from(key))
        } else {
            // Every join, not only the room's first here: a join that raced a
            // failed first one must not ride on a subscription that never
            // happened. Without the room's feed this connection would hear
            // nothing from other nodes, so the join fails (retryable) and is
            // undone rather than succeed deaf.
            let Ok(key) = node.fanout.join(&key, self.handle.clone()).await else {
                return Err(Fail::new(
                    ErrorCode::Unavailable,
                    format!(
                        "cannot receive room '{room}' now (redis or history unreachable): join again"
                    ),
                ));
            };
            self.rooms.insert(
                key.clone(),
                Joined {
                    public: room.clone(),
                    last_seq: 0,
                    last_typing: None,
                    typing_shown: false,
                },
            );
            key
        };
        let tip = match node.store.tips(&[key.to_string()]).await {
            Ok(t) => t.first().copied().unwrap_or(0),
            Err(e) => {
                if !already {
                    self.drop_room(&key).await;
                }
                return Err(Fail::from(e));
            }
        };
        let mut recovered = true;
        let mut replayed = 0;
        let start = match since {
            Some(s) if tip.saturating_sub(s) > node.cfg.history.max_replay => {
                recovered = false;
                tip
            }
            Some(s) => s.min(tip),
            None if already => self.rooms.get(&key).map(|j| j.last_seq).unwrap_or(tip),
            None => tip,
        };
        if let Some(j) = self.rooms.get_mut(&key) {
            j.last_seq = start;
        }
        if start < tip {
            match self.replay(&key, tip).await {
                Ok((n, complete)) => {
                    replayed = n;
                    recovered &= complete;
                }
                Err(ReplayError::Store(e)) => {
                    // Like a failed tip read: a refused join leaves nothing
                    // joined (the retry replays from the same `since`).
                    if !already {
                        self.drop_room(&key).await;
                    }
                    return Err(Fail::from(e));
                }
                Err(ReplayError::Socket) => return Ok(()),
            }
        }
        let counted = match self.entry.clone() {
            Some(entry) => {
                node.sessions
                    .join(&key, &self.session, &entry, self.handle.id)
                    .await
            }
            None => None,
        };
        // A hot room's list would cost every joiner the whole room: the count only.
        let online = match counted {
            Some(n) => n,
            None => node.presence.room_count(&key).await.unwrap_or(0),
        };
        // So is a list over the reply bound (large `meta`s): never a reply so
        // big that the join fails.
        let presence = if online > node.cfg.presence.presence_hot_users {
            Vec::new()
        } else {
            let users = node.presence.room(&key).await.unwrap_or_default();
            match fit_presence(users, node.cfg.presence.max_presence_reply_bytes) {
                (users, false) => users,
                (_, true) => Vec::new(),
            }
        };
        let frame = ServerFrame::Joined {
            id,
            room,
            tip: self
                .rooms
                .get(&key)
                .map(|j| j.last_seq.max(tip))
                .unwrap_or(tip),
            last_read: membership.last_read,
            recovered,
            replayed,
            presence,
            online,
        };
        self.reply(&frame).await
    }
}

/// A join that would create a durable membership beyond
/// `--max-memberships-per-user` is refused (`too_many_rooms`). Counted only
/// for a new membership; joins racing on several connections may pass the
/// bound by their number, no more.
/// Returns the membership when it exists already.
async fn check_membership_cap(
    node: &Node,
    key: &str,
    user_key: &str,
) -> Result<Option<Membership>, Fail> {
    let store = &node.store;
    let cap = node.cfg.conn.max_memberships_per_user;
    if let Some(m) = store.membership(key, user_key).await.map_err(Fail::from)? {
        return Ok(Some(m));
    }
    let held = store.memberships(user_key).await.map_err(Fail::from)?.len() as u64;
    if held >= cap {
        return Err(Fail::new(
            ErrorCode::TooManyRooms,
            format!("at most {cap} room memberships per user; leave one first"),
        ));
    }
    Ok(None)
}
