//! In-process presence for the embedded mode.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use chorus_protocol::PresenceUser;

use super::{Presence, PresenceEntry, PresenceError, UserDevice};

#[derive(Default)]
struct Inner {
    /// Session -> its entry and the rooms it is in.
    sessions: HashMap<String, (PresenceEntry, BTreeSet<String>)>,
    /// Room key -> user -> sessions of that user in the room.
    rooms: HashMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// User key -> sessions.
    users: HashMap<String, BTreeSet<String>>,
}

/// Presence held in this process.
///
/// One std `Mutex` over three maps that must change together: every operation is
/// a few map updates with no `.await` inside, presence changes are rare next to
/// message traffic, and one lock keeps the three views consistent.
#[derive(Default)]
pub struct MemoryPresence {
    inner: Mutex<Inner>,
}

impl MemoryPresence {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a
        // way that matters more than losing presence, so recover the guard.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    fn leave(&mut self, room: &str, session: &str) -> bool {
        let Some((entry, rooms)) = self.sessions.get_mut(session) else {
            return false;
        };
        if !rooms.remove(room) {
            return false;
        }
        let user = entry.user.clone();
        let Some(users) = self.rooms.get_mut(room) else {
            return false;
        };
        let mut offline = false;
        if let Some(s) = users.get_mut(&user) {
            s.remove(session);
            if s.is_empty() {
                users.remove(&user);
                offline = true;
            }
        }
        if users.is_empty() {
            self.rooms.remove(room);
        }
        offline
    }
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn connect(&self, entry: PresenceEntry) -> Result<(), PresenceError> {
        let mut g = self.lock();
        g.users
            .entry(entry.user_key.clone())
            .or_default()
            .insert(entry.session.clone());
        match g.sessions.get_mut(&entry.session) {
            Some((e, _)) => *e = entry,
            None => {
                g.sessions
                    .insert(entry.session.clone(), (entry, BTreeSet::new()));
            }
        }
        Ok(())
    }

    async fn join(&self, room: &str, session: &str) -> Result<bool, PresenceError> {
        let mut g = self.lock();
        let Some((entry, rooms)) = g.sessions.get_mut(session) else {
            return Err(PresenceError(format!("session {session} is not connected")));
        };
        rooms.insert(room.to_owned());
        let user = entry.user.clone();
        let users = g.rooms.entry(room.to_owned()).or_default();
        let sessions = users.entry(user).or_default();
        let first = sessions.is_empty();
        sessions.insert(session.to_owned());
        Ok(first)
    }

    async fn leave(&self, room: &str, session: &str) -> Result<bool, PresenceError> {
        Ok(self.lock().leave(room, session))
    }

    async fn disconnect(&self, session: &str) -> Result<Vec<String>, PresenceError> {
        let mut g = self.lock();
        let rooms: Vec<String> = match g.sessions.get(session) {
            Some((_, rooms)) => rooms.iter().cloned().collect(),
            None => return Ok(Vec::new()),
        };
        let offline = rooms.into_iter().filter(|r| g.leave(r, session)).collect();
        if let Some((entry, _)) = g.sessions.remove(session)
            && let Some(s) = g.users.get_mut(&entry.user_key)
        {
            s.remove(session);
            if s.is_empty() {
                g.users.remove(&entry.user_key);
            }
        }
        Ok(offline)
    }

    async fn room(&self, room: &str) -> Result<Vec<PresenceUser>, PresenceError> {
        let g = self.lock();
        let Some(users) = g.rooms.get(room) else {
            return Ok(Vec::new());
        };
        Ok(users
            .iter()
            .map(|(user, sessions)| PresenceUser {
                user: user.clone(),
                devices: sessions
                    .iter()
                    .filter_map(|s| g.sessions.get(s).map(|(e, _)| e.device_info()))
                    .collect(),
            })
            .collect())
    }

    async fn user(&self, user_key: &str) -> Result<Vec<UserDevice>, PresenceError> {
        let g = self.lock();
        let Some(sessions) = g.users.get(user_key) else {
            return Ok(Vec::new());
        };
        Ok(sessions
            .iter()
            .filter_map(|s| g.sessions.get(s))
            .map(|(e, rooms)| UserDevice {
                info: e.device_info(),
                rooms: rooms.iter().cloned().collect(),
            })
            .collect())
    }

    async fn session(&self, session: &str) -> Result<Option<PresenceEntry>, PresenceError> {
        Ok(self.lock().sessions.get(session).map(|(e, _)| e.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(session: &str, user: &str, device: &str) -> PresenceEntry {
        PresenceEntry {
            session: session.into(),
            user: user.into(),
            user_key: user.into(),
            device: device.into(),
            node: "n".into(),
            since: 1,
            meta: None,
        }
    }

    #[tokio::test]
    async fn user_level_transitions() {
        let p = MemoryPresence::default();
        p.connect(entry("s1", "alice", "phone")).await.unwrap();
        p.connect(entry("s2", "alice", "desktop")).await.unwrap();
        assert!(
            p.join("r", "s1").await.unwrap(),
            "first device brings alice online"
        );
        assert!(!p.join("r", "s2").await.unwrap());
        let users = p.room("r").await.unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].devices.len(), 2);
        assert!(!p.leave("r", "s1").await.unwrap(), "desktop still there");
        assert_eq!(p.disconnect("s2").await.unwrap(), vec!["r".to_string()]);
        assert!(p.room("r").await.unwrap().is_empty());
        assert_eq!(
            p.user("alice").await.unwrap().len(),
            1,
            "s1 still connected"
        );
        assert!(p.disconnect("s1").await.unwrap().is_empty());
        assert!(p.user("alice").await.unwrap().is_empty());
    }
}
