//! In-process presence for the embedded mode.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chorus_protocol::PresenceUser;

use super::{LiveSession, Presence, PresenceEntry, PresenceError, Rejoined, UserDevice};

/// One attached session.
struct Session {
    entry: PresenceEntry,
    /// From `Inner::generations` at its newest `attach`.
    generation: u64,
    /// Room keys the session is in.
    rooms: Set,
}

/// A small sorted set of strings. Presence sets mostly hold one member (a
/// session's rooms, a user's sessions, a user's sessions in a room), and a
/// `BTreeSet` allocates a node of about 300 bytes for its first; this holds
/// them in a vector, a few dozen bytes (BENCHMARKS.md, idle memory).
#[derive(Debug, Default)]
struct Set(Vec<String>);

impl Set {
    fn insert(&mut self, v: String) -> bool {
        match self.0.binary_search(&v) {
            Ok(_) => false,
            Err(at) => {
                self.0.insert(at, v);
                true
            }
        }
    }

    fn remove(&mut self, v: &str) -> bool {
        match self.0.binary_search_by(|x| x.as_str().cmp(v)) {
            Ok(at) => {
                self.0.remove(at);
                true
            }
            Err(_) => false,
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }
}

#[derive(Default)]
struct Inner {
    /// Session -> its entry, generation and rooms.
    sessions: HashMap<String, Session>,
    /// Room key -> user -> sessions of that user in the room.
    rooms: HashMap<String, BTreeMap<String, Set>>,
    /// User key -> sessions.
    users: HashMap<String, Set>,
    /// The last generation handed out, for any session: one counter for all,
    /// so a generation is never reused, even after its session was removed.
    generations: u64,
}

/// Presence held in this process. Nothing expires: a session goes only through
/// `expire_if`, so `refresh` and `sweep` have nothing to do.
///
/// One std `Mutex` over three maps that must change together: every operation is
/// a few map updates with no `.await` inside, presence changes are rare next to
/// message traffic, and one lock keeps the three views consistent (which is what
/// makes each operation atomic, as the contract asks).
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
    /// Take a session out of a room; true if its user went offline there.
    fn leave(&mut self, room: &str, session: &str) -> bool {
        let Some(s) = self.sessions.get_mut(session) else {
            return false;
        };
        if !s.rooms.remove(room) {
            return false;
        }
        let user = s.entry.user.clone();
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
    async fn attach(&self, entry: PresenceEntry) -> Result<u64, PresenceError> {
        let mut g = self.lock();
        g.generations += 1;
        let generation = g.generations;
        g.users
            .entry(entry.user_key.clone())
            .or_default()
            .insert(entry.session.clone());
        match g.sessions.get_mut(&entry.session) {
            Some(s) => {
                s.entry = entry;
                s.generation = generation;
            }
            None => {
                g.sessions.insert(
                    entry.session.clone(),
                    Session {
                        entry,
                        generation,
                        rooms: Set::default(),
                    },
                );
            }
        }
        Ok(generation)
    }

    async fn join(&self, room: &str, session: &str) -> Result<bool, PresenceError> {
        let mut g = self.lock();
        let Some(s) = g.sessions.get_mut(session) else {
            return Err(PresenceError(format!("session {session} is not connected")));
        };
        s.rooms.insert(room.to_owned());
        let user = s.entry.user.clone();
        let users = g.rooms.entry(room.to_owned()).or_default();
        let sessions = users.entry(user).or_default();
        let first = sessions.is_empty();
        sessions.insert(session.to_owned());
        Ok(first)
    }

    async fn leave(&self, room: &str, session: &str) -> Result<bool, PresenceError> {
        Ok(self.lock().leave(room, session))
    }

    async fn settle(
        &self,
        session: &str,
        generation: u64,
        rooms: &[String],
    ) -> Result<Vec<String>, PresenceError> {
        let mut g = self.lock();
        let stale: Vec<String> = match g.sessions.get(session) {
            Some(s) if s.generation == generation => s
                .rooms
                .iter()
                .filter(|r| !rooms.contains(r))
                .cloned()
                .collect(),
            _ => return Ok(Vec::new()),
        };
        Ok(stale.into_iter().filter(|r| g.leave(r, session)).collect())
    }

    async fn expire_if(
        &self,
        session: &str,
        generation: u64,
    ) -> Result<Option<Vec<String>>, PresenceError> {
        let mut g = self.lock();
        let rooms: Vec<String> = match g.sessions.get(session) {
            Some(s) if s.generation == generation => s.rooms.iter().cloned().collect(),
            _ => return Ok(None),
        };
        let offline = rooms.into_iter().filter(|r| g.leave(r, session)).collect();
        if let Some(s) = g.sessions.remove(session)
            && let Some(set) = g.users.get_mut(&s.entry.user_key)
        {
            set.remove(session);
            if set.is_empty() {
                g.users.remove(&s.entry.user_key);
            }
        }
        Ok(Some(offline))
    }

    async fn refresh(&self, _live: &[LiveSession]) -> Result<Vec<Rejoined>, PresenceError> {
        // Nothing here expires or gets lost, so there is nothing to extend or put
        // back (and putting back a session `expire_if` just removed would be wrong).
        Ok(Vec::new())
    }

    async fn sweep(&self, _room: &str) -> Result<Vec<String>, PresenceError> {
        Ok(Vec::new())
    }

    fn refresh_interval(&self) -> Option<Duration> {
        None
    }

    async fn room_count(&self, room: &str) -> Result<u64, PresenceError> {
        Ok(self
            .lock()
            .rooms
            .get(room)
            .map_or(0, |users| users.len() as u64))
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
                    .filter_map(|s| g.sessions.get(s).map(|s| s.entry.device_info()))
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
            .map(|s| UserDevice {
                info: s.entry.device_info(),
                rooms: s.rooms.iter().cloned().collect(),
            })
            .collect())
    }

    async fn session(&self, session: &str) -> Result<Option<PresenceEntry>, PresenceError> {
        Ok(self.lock().sessions.get(session).map(|s| s.entry.clone()))
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
        let g1 = p.attach(entry("s1", "alice", "phone")).await.unwrap();
        let g2 = p.attach(entry("s2", "alice", "desktop")).await.unwrap();
        assert!(
            p.join("r", "s1").await.unwrap(),
            "first device brings alice online"
        );
        assert!(!p.join("r", "s2").await.unwrap());
        let users = p.room("r").await.unwrap();
        assert_eq!(users.len(), 1);
        assert_eq!(users[0].devices.len(), 2);
        assert!(!p.leave("r", "s1").await.unwrap(), "desktop still there");
        assert_eq!(
            p.expire_if("s2", g2).await.unwrap(),
            Some(vec!["r".to_string()])
        );
        assert!(p.room("r").await.unwrap().is_empty());
        assert_eq!(
            p.user("alice").await.unwrap().len(),
            1,
            "s1 still connected"
        );
        assert_eq!(p.expire_if("s1", g1).await.unwrap(), Some(vec![]));
        assert!(p.user("alice").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_superseded_generation_changes_nothing() {
        let p = MemoryPresence::default();
        let g1 = p.attach(entry("s1", "alice", "phone")).await.unwrap();
        p.join("a", "s1").await.unwrap();
        p.join("b", "s1").await.unwrap();
        let g2 = p.attach(entry("s1", "alice", "phone")).await.unwrap();
        assert!(g2 > g1);
        assert!(p.settle("s1", g1, &[]).await.unwrap().is_empty());
        assert_eq!(p.expire_if("s1", g1).await.unwrap(), None);
        assert_eq!(p.room("b").await.unwrap().len(), 1);
        assert_eq!(
            p.settle("s1", g2, &["a".to_string()]).await.unwrap(),
            vec!["b".to_string()]
        );
        assert_eq!(p.user("alice").await.unwrap()[0].rooms, vec!["a"]);
    }
}
