//! Presence in Redis, shared by every node of a cluster.
//!
//! Key layout, under a configurable prefix `P` (`chorus:` by default; each test
//! its own):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P p:g:{session}` | string | the session's generation; `-{generation}` (tombstone) after `expire_if` |
//! | `P p:s:{session}` | hash | `entry` (the [`PresenceEntry`] as JSON), `user`, `user_key` |
//! | `P p:sr:{session}` | set | room keys the session is in |
//! | `P p:u:{user_key}` | sorted set | session -> expiry (Unix ms) |
//! | `P p:r:{room}` | sorted set | user -> expiry, the highest of that user's sessions in the room |
//! | `P p:ru:{room}\|{user}` | sorted set | session -> expiry |
//!
//! (`|` separates room and user because room names may contain `:`; neither
//! room keys nor user ids can contain `|`, `{` or `}`.)
//!
//! **Expiry without any node's help.** Every expiry is a score, `now + ttl` by
//! Redis' clock (`TIME`, so nodes with skewed clocks agree), and every read
//! filters by score: a node that stops refreshing (dead, stalled, partitioned)
//! vanishes from `room`, `user` and `session` at most `ttl` after its last
//! refresh, which nodes send every `ttl / 3`. Keys also carry a `PEXPIRE` of
//! `2 * ttl`, renewed by every write, only so that abandoned keys disappear.
//!
//! **Exactly-once transitions.** Every operation is one Lua script (in
//! `presence/lua/`, embedded with `include_str!`, `common.lua` prepended to
//! each), so it runs atomically. A user is "in" a room while they are a member
//! of `p:r:{room}`; the script that adds them reports "came online" and the one
//! that removes them (`leave`, `settle`, `expire_if`, or `sweep` for users whose
//! sessions all expired) reports "went offline". Leave events after a node's
//! death thus come from `sweep`, called by the nodes that have members in the
//! room, within `ttl` plus one sweep interval.
//!
//! **Redis restarts.** Scripts are re-loaded on `NOSCRIPT`; a Redis that comes
//! back empty is refilled by the next `refresh` of every node, which re-creates
//! whatever of its sessions is missing. Generations stay above any a node may
//! hold after such a loss (see `attach.lua`).
//!
//! On a Redis Cluster, give the prefix a hash tag (`{chorus}:`): the scripts
//! derive keys from the session's stored rooms, so all keys must share a slot.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chorus_protocol::PresenceUser;
use fred::prelude::{Client, Error as RedisError};
use fred::types::Value;
use fred::types::scripts::Script;

use super::{LiveSession, Presence, PresenceEntry, PresenceError, Rejoined, UserDevice};

/// Default entry lifetime without a refresh: a dead node's connections leave
/// presence within this long (`--presence-ttl-ms` has the same default).
pub const DEFAULT_TTL: Duration = Duration::from_secs(4);

/// Default bound on one Redis round trip: a presence call that takes longer
/// fails (as retryable) instead of holding up a connection.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Sessions per `refresh` script run, so no single run blocks Redis for long.
const REFRESH_BATCH: usize = 200;

/// Users removed per `sweep` script run (the call repeats until done).
const SWEEP_BATCH: usize = 500;

const COMMON: &str = include_str!("lua/common.lua");

/// The presence scripts, `common.lua` prepended to each.
struct Scripts {
    attach: Script,
    join: Script,
    leave: Script,
    settle: Script,
    expire_if: Script,
    refresh: Script,
    sweep: Script,
    room: Script,
    count: Script,
    user: Script,
    session: Script,
}

impl Scripts {
    fn new() -> Scripts {
        let s = |body: &str| Script::from_lua(format!("{COMMON}\n{body}"));
        Scripts {
            attach: s(include_str!("lua/attach.lua")),
            join: s(include_str!("lua/join.lua")),
            leave: s(include_str!("lua/leave.lua")),
            settle: s(include_str!("lua/settle.lua")),
            expire_if: s(include_str!("lua/expire_if.lua")),
            refresh: s(include_str!("lua/refresh.lua")),
            sweep: s(include_str!("lua/sweep.lua")),
            room: s(include_str!("lua/room.lua")),
            count: s(include_str!("lua/count.lua")),
            user: s(include_str!("lua/user.lua")),
            session: s(include_str!("lua/session.lua")),
        }
    }
}

/// Presence in Redis: per-session entries that expire unless refreshed, with
/// per-user aggregation per room (see the module docs for keys and guarantees).
pub struct RedisPresence {
    /// A connected command client (its reconnect policy is the caller's).
    client: Client,
    /// Prepended to every key.
    prefix: String,
    /// Entry lifetime without a refresh.
    ttl: Duration,
    /// Bound on each call.
    timeout: Duration,
    scripts: Scripts,
}

impl RedisPresence {
    /// Presence on `client` (already connected), keys under `prefix`, entries
    /// living `ttl` past their last refresh (at least 3 ms, so `ttl / 3` is a
    /// usable interval).
    pub fn new(client: Client, prefix: String, ttl: Duration) -> RedisPresence {
        RedisPresence {
            client,
            prefix,
            ttl: ttl.max(Duration::from_millis(3)),
            timeout: DEFAULT_TIMEOUT,
            scripts: Scripts::new(),
        }
    }

    /// Bound each Redis call by `timeout` instead of [`DEFAULT_TIMEOUT`].
    pub fn with_timeout(mut self, timeout: Duration) -> RedisPresence {
        self.timeout = timeout;
        self
    }

    /// Entry lifetime without a refresh.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn ttl_ms(&self) -> String {
        self.ttl.as_millis().to_string()
    }

    /// A key, for routing the script call to the right node of a Redis Cluster
    /// (every key shares the prefix's slot when it has a hash tag).
    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}p:{kind}:{id}", self.prefix)
    }

    /// Run a script (loading it first if Redis does not have it, e.g. after a
    /// restart), bounded by the timeout.
    async fn run(
        &self,
        script: &Script,
        key: String,
        mut args: Vec<String>,
    ) -> Result<Value, PresenceError> {
        args.insert(0, self.prefix.clone());
        let call = script.evalsha_with_reload::<Value, _, _>(&self.client, key, args);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(redis_error(e)),
            Err(_) => Err(PresenceError(format!(
                "redis did not answer within {:?}",
                self.timeout
            ))),
        }
    }
}

fn redis_error(e: RedisError) -> PresenceError {
    PresenceError(format!("redis: {e}"))
}

fn bad_reply(what: &str) -> PresenceError {
    PresenceError(format!("unexpected reply from the {what} script"))
}

/// The strings of an array reply.
fn strings(v: Value, what: &str) -> Result<Vec<String>, PresenceError> {
    v.into_array()
        .into_iter()
        .map(|x| x.into_string().ok_or_else(|| bad_reply(what)))
        .collect()
}

fn flag(v: Value, what: &str) -> Result<bool, PresenceError> {
    v.as_i64().map(|n| n == 1).ok_or_else(|| bad_reply(what))
}

fn parse_entry(json: &str) -> Result<PresenceEntry, PresenceError> {
    serde_json::from_str(json).map_err(|e| PresenceError(format!("bad presence entry: {e}")))
}

#[async_trait]
impl Presence for RedisPresence {
    async fn attach(&self, entry: PresenceEntry) -> Result<u64, PresenceError> {
        let json = serde_json::to_string(&entry)
            .map_err(|e| PresenceError(format!("encoding a presence entry: {e}")))?;
        let v = self
            .run(
                &self.scripts.attach,
                self.key("s", &entry.session),
                vec![
                    self.ttl_ms(),
                    entry.session,
                    entry.user,
                    entry.user_key,
                    json,
                ],
            )
            .await?;
        v.as_u64().ok_or_else(|| bad_reply("attach"))
    }

    async fn join(&self, room: &str, session: &str) -> Result<bool, PresenceError> {
        let v = self
            .run(
                &self.scripts.join,
                self.key("s", session),
                vec![self.ttl_ms(), room.to_owned(), session.to_owned()],
            )
            .await?;
        flag(v, "join")
    }

    async fn leave(&self, room: &str, session: &str) -> Result<bool, PresenceError> {
        let v = self
            .run(
                &self.scripts.leave,
                self.key("s", session),
                vec![room.to_owned(), session.to_owned()],
            )
            .await?;
        flag(v, "leave")
    }

    async fn settle(
        &self,
        session: &str,
        generation: u64,
        rooms: &[String],
    ) -> Result<Vec<String>, PresenceError> {
        let mut args = vec![session.to_owned(), generation.to_string()];
        args.extend(rooms.iter().cloned());
        let v = self
            .run(&self.scripts.settle, self.key("s", session), args)
            .await?;
        let mut offline = strings(v, "settle")?;
        offline.sort();
        Ok(offline)
    }

    async fn expire_if(
        &self,
        session: &str,
        generation: u64,
    ) -> Result<Option<Vec<String>>, PresenceError> {
        let v = self
            .run(
                &self.scripts.expire_if,
                self.key("s", session),
                vec![self.ttl_ms(), session.to_owned(), generation.to_string()],
            )
            .await?;
        let mut out = v.into_array().into_iter();
        let removed = out.next().and_then(|f| f.as_i64()) == Some(1);
        if !removed {
            return Ok(None);
        }
        let mut offline = out
            .map(|x| x.into_string().ok_or_else(|| bad_reply("expire_if")))
            .collect::<Result<Vec<_>, _>>()?;
        offline.sort();
        Ok(Some(offline))
    }

    async fn refresh(&self, live: &[LiveSession]) -> Result<Vec<Rejoined>, PresenceError> {
        let mut rejoined = Vec::new();
        for chunk in live.chunks(REFRESH_BATCH) {
            let Some(first) = chunk.first() else { continue };
            let mut args = vec![self.ttl_ms()];
            for s in chunk {
                let json = serde_json::to_string(&s.entry)
                    .map_err(|e| PresenceError(format!("encoding a presence entry: {e}")))?;
                args.extend([
                    s.entry.session.clone(),
                    s.generation.to_string(),
                    s.entry.user.clone(),
                    s.entry.user_key.clone(),
                    json,
                    s.rooms.len().to_string(),
                ]);
                args.extend(s.rooms.iter().cloned());
            }
            let v = self
                .run(
                    &self.scripts.refresh,
                    self.key("s", &first.entry.session),
                    args,
                )
                .await?;
            let flat = strings(v, "refresh")?;
            let mut it = flat.into_iter();
            while let (Some(room), Some(session)) = (it.next(), it.next()) {
                rejoined.push(Rejoined { room, session });
            }
        }
        rejoined.sort();
        Ok(rejoined)
    }

    async fn sweep(&self, room: &str) -> Result<Vec<String>, PresenceError> {
        let mut gone = Vec::new();
        loop {
            let v = self
                .run(
                    &self.scripts.sweep,
                    self.key("r", room),
                    vec![room.to_owned(), SWEEP_BATCH.to_string()],
                )
                .await?;
            let batch = strings(v, "sweep")?;
            let more = batch.len() >= SWEEP_BATCH;
            gone.extend(batch);
            if !more {
                break;
            }
        }
        gone.sort();
        Ok(gone)
    }

    fn refresh_interval(&self) -> Option<Duration> {
        Some(self.ttl / 3)
    }

    async fn room_count(&self, room: &str) -> Result<u64, PresenceError> {
        let v = self
            .run(
                &self.scripts.count,
                self.key("r", room),
                vec![room.to_owned()],
            )
            .await?;
        v.as_u64().ok_or_else(|| bad_reply("count"))
    }

    async fn room(&self, room: &str) -> Result<Vec<PresenceUser>, PresenceError> {
        let v = self
            .run(
                &self.scripts.room,
                self.key("r", room),
                vec![room.to_owned()],
            )
            .await?;
        // user -> session -> device, so users and devices come out sorted.
        let mut users: BTreeMap<String, BTreeMap<String, _>> = BTreeMap::new();
        let flat = strings(v, "room")?;
        let mut it = flat.into_iter();
        while let (Some(user), Some(session), Some(json)) = (it.next(), it.next(), it.next()) {
            let entry = parse_entry(&json)?;
            users
                .entry(user)
                .or_default()
                .insert(session, entry.device_info());
        }
        Ok(users
            .into_iter()
            .map(|(user, devices)| PresenceUser {
                user,
                devices: devices.into_values().collect(),
            })
            .collect())
    }

    async fn user(&self, user_key: &str) -> Result<Vec<UserDevice>, PresenceError> {
        let v = self
            .run(
                &self.scripts.user,
                self.key("u", user_key),
                vec![user_key.to_owned()],
            )
            .await?;
        let mut devices: BTreeMap<String, UserDevice> = BTreeMap::new();
        let flat = strings(v, "user")?;
        let mut it = flat.into_iter();
        while let (Some(session), Some(json), Some(n)) = (it.next(), it.next(), it.next()) {
            let n: usize = n.parse().map_err(|_| bad_reply("user"))?;
            let mut rooms: Vec<String> = it.by_ref().take(n).collect();
            if rooms.len() != n {
                return Err(bad_reply("user"));
            }
            rooms.sort();
            let entry = parse_entry(&json)?;
            devices.insert(
                session,
                UserDevice {
                    info: entry.device_info(),
                    rooms,
                },
            );
        }
        Ok(devices.into_values().collect())
    }

    async fn session(&self, session: &str) -> Result<Option<PresenceEntry>, PresenceError> {
        let v = self
            .run(
                &self.scripts.session,
                self.key("s", session),
                vec![session.to_owned()],
            )
            .await?;
        match v.into_string() {
            Some(json) => parse_entry(&json).map(Some),
            None => Ok(None),
        }
    }
}
