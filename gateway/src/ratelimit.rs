//! Send limits.
//!
//! Two lines of defence, checked in this order:
//! 1. [`TokenBucket`] per connection, owned by the connection's task: no lock,
//!    no I/O, so a flood from one socket is refused before it costs anything.
//! 2. [`SendLimits`] per user (all their connections, on every node) and per
//!    tenant (all its users), shared: in cluster mode a token bucket pair in
//!    Redis (by Redis' clock), which each node spends from leases of a few
//!    tokens taken in one atomic Lua script run for both buckets, so a send
//!    asks Redis only when its lease is empty (see [`RedisBuckets`]); in
//!    embedded mode the same buckets in process.
//!
//! Redis keys (hashes `tk`, `ts`; see `lua/send_lease.lua`):
//! `{prefix}rl:u:{user_key}` and `{prefix}rl:t:{tenant}` (the default tenant is
//! the empty id). Both go to one script run, so on a Redis Cluster the prefix
//! needs a hash tag (`{chorus}:`), as for presence.
//!
//! In cluster mode the shared limits fail open: when Redis does not answer, a
//! send is allowed (counted in `chorus_send_limit_fail_open_total`). Chat that
//! keeps working matters more than a limit holding exactly while Redis is away,
//! and the per-connection buckets still bound every socket meanwhile.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike};
use fred::types::scripts::Script;
use tracing::debug;

use crate::config::SendConfig;

/// A token bucket: `rate` tokens per second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u64, burst: u64) -> TokenBucket {
        TokenBucket {
            rate: rate as f64,
            burst: burst as f64,
            tokens: burst as f64,
            last: Instant::now(),
        }
    }

    /// Take one token now, or say how long until one is available.
    pub fn take(&mut self) -> Result<(), Duration> {
        self.take_at(Instant::now())
    }

    fn take_at(&mut self, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        match self.wait() {
            None => {
                self.tokens -= 1.0;
                Ok(())
            }
            Some(wait) => Err(wait),
        }
    }

    /// Add what accrued since the last refill.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }

    /// How long until a token is available; `None` if one is now.
    fn wait(&self) -> Option<Duration> {
        (self.tokens < 1.0).then(|| Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
    }

    /// Whether the bucket is full: it then says no more than a new one would.
    fn full(&self) -> bool {
        self.tokens >= self.burst
    }
}

/// Which shared limit refused a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    User,
    Tenant,
}

impl Scope {
    fn as_str(self) -> &'static str {
        match self {
            Scope::User => "user",
            Scope::Tenant => "tenant",
        }
    }
}

/// A send over a shared limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub scope: Scope,
    /// When the refusing bucket has a token again.
    pub retry_after: Duration,
    /// That bucket's sustained rate, for the error message.
    pub rate: u64,
}

impl Refused {
    /// `retry_after` in whole milliseconds, at least 1.
    pub fn retry_after_ms(&self) -> u64 {
        (self.retry_after.as_millis() as u64).max(1)
    }

    /// The error message for the client.
    pub fn message(&self) -> String {
        format!(
            "at most {} sends per second per {}",
            self.rate,
            self.scope.as_str()
        )
    }
}

/// One shared limit: sustained `rate` per second, `burst` saved up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rate {
    rate: u64,
    burst: u64,
}

impl Rate {
    /// `None` when `rate` is 0 (no limit).
    fn new(rate: u64, burst: u64) -> Option<Rate> {
        (rate > 0).then(|| Rate {
            rate,
            burst: burst.max(1),
        })
    }

    /// A bucket's rate and burst for the Lua script (`0 0`: no limit).
    fn args(rate: Option<Rate>) -> [String; 2] {
        match rate {
            Some(r) => [r.rate.to_string(), r.burst.to_string()],
            None => ["0".into(), "0".into()],
        }
    }
}

/// The tenant limit of `cfg`; its burst defaults to twice the rate.
fn tenant_rate(cfg: &SendConfig) -> Option<Rate> {
    let rate = cfg.tenant_sends_per_sec;
    Rate::new(
        rate,
        cfg.tenant_send_burst.unwrap_or(rate.saturating_mul(2)),
    )
}

/// Per-user and per-tenant send limits, shared by every connection of a node
/// (embedded) or of a cluster (Redis).
pub struct SendLimits {
    user: Option<Rate>,
    tenant: Option<Rate>,
    backend: Backend,
}

enum Backend {
    Local(LocalBuckets),
    Redis(RedisBuckets),
}

impl SendLimits {
    /// In-process buckets (embedded mode: one node sees every send).
    pub fn local(cfg: &SendConfig) -> SendLimits {
        SendLimits {
            user: Rate::new(cfg.user_sends_per_sec, cfg.user_send_burst),
            tenant: tenant_rate(cfg),
            backend: Backend::Local(LocalBuckets::new(MAX_LOCAL_BUCKETS)),
        }
    }

    /// Buckets in Redis under `prefix` (cluster mode), through `client`, which
    /// should be a connection of its own so that a send's check does not queue
    /// behind fan-out publishes.
    pub fn redis(cfg: &SendConfig, client: Client, prefix: String) -> SendLimits {
        SendLimits {
            user: Rate::new(cfg.user_sends_per_sec, cfg.user_send_burst),
            tenant: tenant_rate(cfg),
            backend: Backend::Redis(RedisBuckets {
                shared: Arc::new(RedisShared {
                    client,
                    prefix,
                    script: Script::from_lua(SEND_LEASE_LUA),
                    base: Instant::now(),
                    skip_until_ms: AtomicU64::new(0),
                }),
                leases: Arc::new(Mutex::new(HashMap::new())),
            }),
        }
    }

    /// Take one send from the user's and the tenant's buckets (both or
    /// neither). `user_key` is `None` for sends without a user (HTTP publish:
    /// only the tenant limit applies); `tenant` is `None` for the default tenant,
    /// which is limited as one tenant too.
    pub async fn check(&self, user_key: Option<&str>, tenant: Option<&str>) -> Result<(), Refused> {
        let user = self.user.filter(|_| user_key.is_some());
        if user.is_none() && self.tenant.is_none() {
            return Ok(());
        }
        // The default tenant is "": no tenant id is empty (see `valid_tenant`).
        let tenant_id = tenant.unwrap_or("");
        let user_key = user_key.unwrap_or("");
        let result = match &self.backend {
            Backend::Local(b) => b.take(
                user.map(|r| (user_key, r)),
                self.tenant.map(|r| (tenant_id, r)),
            ),
            Backend::Redis(b) => b.take(user, user_key, self.tenant, tenant_id).await,
        };
        if let Err(r) = &result {
            metrics::counter!("chorus_send_limit_refusals_total", "scope" => r.scope.as_str())
                .increment(1);
        }
        result
    }
}

/// Most buckets the in-process limiter keeps; past it, idle buckets (full
/// again, so worth nothing) go first, then the least recently used.
const MAX_LOCAL_BUCKETS: usize = 100_000;

/// The embedded mode's buckets: user and tenant buckets in one map, under one
/// std Mutex so that a send takes from both atomically. The lock is held for a
/// few arithmetic operations, never across `.await`.
struct LocalBuckets {
    map: Mutex<HashMap<String, TokenBucket>>,
    max: usize,
}

impl LocalBuckets {
    fn new(max: usize) -> LocalBuckets {
        LocalBuckets {
            map: Mutex::new(HashMap::new()),
            max: max.max(2),
        }
    }

    fn take(
        &self,
        user: Option<(&str, Rate)>,
        tenant: Option<(&str, Rate)>,
    ) -> Result<(), Refused> {
        self.take_at(Instant::now(), user, tenant)
    }

    fn take_at(
        &self,
        now: Instant,
        user: Option<(&str, Rate)>,
        tenant: Option<(&str, Rate)>,
    ) -> Result<(), Refused> {
        let wanted: Vec<(String, Scope, Rate)> = user
            .map(|(k, r)| (format!("u:{k}"), Scope::User, r))
            .into_iter()
            .chain(tenant.map(|(k, r)| (format!("t:{k}"), Scope::Tenant, r)))
            .collect();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() + wanted.len() > self.max {
            evict(&mut map, now, self.max);
        }
        let mut refused: Option<Refused> = None;
        for (key, scope, rate) in &wanted {
            let b = map
                .entry(key.clone())
                .or_insert_with(|| TokenBucket::new(rate.rate, rate.burst));
            b.refill(now);
            if let Some(wait) = b.wait()
                && refused.as_ref().is_none_or(|r| wait > r.retry_after)
            {
                refused = Some(Refused {
                    scope: *scope,
                    retry_after: wait,
                    rate: rate.rate,
                });
            }
        }
        if let Some(r) = refused {
            return Err(r);
        }
        for (key, _, _) in &wanted {
            if let Some(b) = map.get_mut(key) {
                b.tokens -= 1.0;
            }
        }
        Ok(())
    }
}

/// Make room in a full bucket map: drop the buckets that refilled (a new
/// bucket is full too, so nothing is forgiven); if that frees less than a
/// tenth, drop the least recently used down to 90 %, so the O(n) pass runs at
/// most once per `max / 10` new keys.
fn evict(map: &mut HashMap<String, TokenBucket>, now: Instant, max: usize) {
    map.retain(|_, b| {
        b.refill(now);
        !b.full()
    });
    let target = max - max / 10;
    if map.len() > target {
        let mut by_age: Vec<(Instant, String)> =
            map.iter().map(|(k, b)| (b.last, k.clone())).collect();
        by_age.sort_unstable();
        let excess = map.len() - target;
        for (_, k) in by_age.into_iter().take(excess) {
            map.remove(&k);
        }
    }
}

const SEND_LEASE_LUA: &str = include_str!("lua/send_lease.lua");

/// Bound on one lease request: past it the send goes ahead (fail open). A
/// loopback or LAN Redis answers in well under a millisecond.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// After a failed request, skip Redis for this long: while Redis is away every
/// send would otherwise wait `REDIS_TIMEOUT` first.
const REDIS_BACKOFF: Duration = Duration::from_secs(1);

/// Leases a node keeps; past it, the idlest go (their unspent tokens with
/// them: the limit only gets stricter).
const MAX_LEASES: usize = 100_000;

/// Tokens a node leases from a shared bucket at a time: a tenth of a second
/// of its rate, at most a quarter of its burst, at least one. A bucket of
/// lease 1 is exact: every send asks Redis, as one bucket in one place would.
fn lease_size(r: Rate) -> u64 {
    (r.rate / 10).clamp(1, (r.burst / 4).max(1))
}

/// Tokens of one shared bucket this node leased and has not spent.
#[derive(Debug)]
struct Lease {
    /// Unspent. Below 1 the next send asks Redis first (may go to -1 when
    /// two sends race for the last one: repaid from the next grant).
    tokens: f64,
    /// Redis said the bucket is empty: refuse here until then, without asking.
    refused_until: Option<Instant>,
    /// A top-up is on its way (at most one per bucket).
    topping_up: bool,
    last_used: Instant,
}

impl Lease {
    fn new(now: Instant) -> Lease {
        Lease {
            tokens: 0.0,
            refused_until: None,
            topping_up: false,
            last_used: now,
        }
    }
}

/// One bucket of a check: its lease key (`u:{user_key}`, `t:{tenant}`) and rate.
type Want = Option<(String, Scope, Rate)>;

/// What a check decided under the lock.
enum Plan {
    /// Taken from the leases; top these up in the background.
    Taken(Vec<usize>),
    /// Refused here (a bucket Redis said is empty).
    Refused(Refused),
    /// Ask Redis: `[(want, need); 2]` for the user's and the tenant's bucket.
    Ask([(u64, u64); 2]),
}

/// The cluster mode's buckets: in Redis, spent by each node from leases.
///
/// A check takes one token from the user's lease and one from the tenant's,
/// here, without I/O. A bucket whose lease is empty asks Redis (one
/// `EVALSHA` for both buckets, awaited by that send), which grants up to a
/// lease of tokens or refuses with the time until one is there; a lease at
/// half is topped up in the background, so a user sending below their rate
/// costs one Redis call per half a lease, never a wait. Leased tokens are
/// taken from Redis before they are spent, so the cluster never spends more
/// than the bucket gives; what a node holds unspent is unavailable to the
/// others, at most one lease (a tenth of a second of the rate) per bucket
/// and node.
struct RedisBuckets {
    shared: Arc<RedisShared>,
    leases: Arc<Mutex<HashMap<String, Lease>>>,
}

/// What a background top-up needs.
struct RedisShared {
    client: Client,
    prefix: String,
    script: Script,
    /// Origin of `skip_until_ms`.
    base: Instant,
    /// Milliseconds after `base` before which requests fail open without
    /// asking Redis (set after a failure).
    skip_until_ms: AtomicU64,
}

/// Redis' answer to a lease request.
enum Granted {
    /// Tokens granted from the user's and the tenant's bucket.
    Tokens([u64; 2]),
    /// A needed token was not there: bucket `scope` has one after `wait`.
    Refused(Scope, Duration),
}

impl RedisShared {
    /// Ask Redis for `[(want, need); 2]` of the two buckets; `Err` with why it
    /// could not answer (the caller fails open).
    async fn request(
        &self,
        keys: [&str; 2],
        rates: [Option<Rate>; 2],
        asks: [(u64, u64); 2],
    ) -> Result<Granted, String> {
        let now_ms = self.base.elapsed().as_millis() as u64;
        if now_ms < self.skip_until_ms.load(Ordering::Relaxed) {
            return Err("redis recently unreachable".into());
        }
        if !self.client.is_connected() {
            self.back_off(now_ms);
            return Err("redis not connected".into());
        }
        let keys: Vec<String> = keys
            .iter()
            .map(|k| format!("{}rl:{k}", self.prefix))
            .collect();
        let mut args = Vec::with_capacity(8);
        for (rate, (want, need)) in rates.iter().zip(asks) {
            let [r, b] = Rate::args(*rate);
            args.extend([r, b, want.to_string(), need.to_string()]);
        }
        metrics::counter!("chorus_send_limit_requests_total").increment(1);
        let call = self
            .script
            .evalsha_with_reload::<Vec<i64>, _, _>(&self.client, keys, args);
        let reply = match tokio::time::timeout(REDIS_TIMEOUT, call).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.back_off(now_ms);
                return Err(format!("redis: {e}"));
            }
            Err(_) => {
                self.back_off(now_ms);
                return Err("redis did not answer in time".into());
            }
        };
        match reply.as_slice() {
            [0, _, u, t] => Ok(Granted::Tokens([(*u).max(0) as u64, (*t).max(0) as u64])),
            [wait, scope, ..] if *wait > 0 => Ok(Granted::Refused(
                if *scope == 2 {
                    Scope::Tenant
                } else {
                    Scope::User
                },
                Duration::from_millis(*wait as u64),
            )),
            _ => Err("unexpected reply from the send limit script".into()),
        }
    }

    fn back_off(&self, now_ms: u64) {
        self.skip_until_ms
            .store(now_ms + REDIS_BACKOFF.as_millis() as u64, Ordering::Relaxed);
    }
}

fn lock_leases(m: &Mutex<HashMap<String, Lease>>) -> MutexGuard<'_, HashMap<String, Lease>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RedisBuckets {
    async fn take(
        &self,
        user: Option<Rate>,
        user_key: &str,
        tenant: Option<Rate>,
        tenant_id: &str,
    ) -> Result<(), Refused> {
        let wants: [Want; 2] = [
            user.map(|r| (format!("u:{user_key}"), Scope::User, r)),
            tenant.map(|r| (format!("t:{tenant_id}"), Scope::Tenant, r)),
        ];
        let now = Instant::now();
        let plan = self.plan(&wants, now);
        let asks = match plan {
            Plan::Taken(top_up) => {
                for i in top_up {
                    self.top_up(&wants, i);
                }
                return Ok(());
            }
            Plan::Refused(r) => return Err(r),
            Plan::Ask(asks) => asks,
        };
        let keys = [
            wants[0].as_ref().map(|w| w.0.as_str()).unwrap_or("u:"),
            wants[1].as_ref().map(|w| w.0.as_str()).unwrap_or("t:"),
        ];
        let rates = [user, tenant];
        match self.shared.request(keys, rates, asks).await {
            Err(why) => fail_open(&why),
            Ok(Granted::Refused(scope, wait)) => {
                let i = if scope == Scope::User { 0 } else { 1 };
                if let Some((key, _, _)) = &wants[i] {
                    let mut leases = lock_leases(&self.leases);
                    let lease = leases.entry(key.clone()).or_insert_with(|| Lease::new(now));
                    lease.refused_until = Some(now + wait);
                }
                Err(Refused {
                    scope,
                    retry_after: wait,
                    rate: rates[i].map(|r| r.rate).unwrap_or(0),
                })
            }
            Ok(Granted::Tokens(granted)) => {
                // This send's token from each bucket, out of what arrived
                // (or what was here: a bucket not asked for had one).
                let mut leases = lock_leases(&self.leases);
                for (w, g) in wants.iter().zip(granted) {
                    if let Some((key, _, _)) = w {
                        let lease = leases.entry(key.clone()).or_insert_with(|| Lease::new(now));
                        lease.tokens += g as f64 - 1.0;
                        lease.last_used = now;
                    }
                }
                Ok(())
            }
        }
    }

    /// Under the lock: take from the leases, refuse, or say what to ask.
    fn plan(&self, wants: &[Want; 2], now: Instant) -> Plan {
        let mut leases = lock_leases(&self.leases);
        if leases.len() + 2 > MAX_LEASES {
            evict_leases(&mut leases, now);
        }
        let mut asks = [(0u64, 0u64); 2];
        let mut short = false;
        for (i, w) in wants.iter().enumerate() {
            let Some((key, scope, rate)) = w else {
                continue;
            };
            let lease = leases.entry(key.clone()).or_insert_with(|| Lease::new(now));
            if let Some(until) = lease.refused_until {
                if until > now {
                    return Plan::Refused(Refused {
                        scope: *scope,
                        retry_after: until - now,
                        rate: rate.rate,
                    });
                }
                lease.refused_until = None;
            }
            if lease.tokens < 1.0 {
                short = true;
                let want = (lease_size(*rate) as f64 - lease.tokens).ceil().max(1.0) as u64;
                asks[i] = (want, 1);
            }
        }
        if short {
            return Plan::Ask(asks);
        }
        let mut top_up = Vec::new();
        for (i, w) in wants.iter().enumerate() {
            let Some((key, _, rate)) = w else { continue };
            if let Some(lease) = leases.get_mut(key) {
                lease.tokens -= 1.0;
                lease.last_used = now;
                let size = lease_size(*rate);
                if size >= 2 && lease.tokens <= (size / 2) as f64 && !lease.topping_up {
                    lease.topping_up = true;
                    top_up.push(i);
                }
            }
        }
        Plan::Taken(top_up)
    }

    /// Top up bucket `i` of `wants` to a full lease, in the background.
    fn top_up(&self, wants: &[Want; 2], i: usize) {
        let Some((key, scope, rate)) = wants[i].clone() else {
            return;
        };
        let (shared, leases) = (self.shared.clone(), self.leases.clone());
        tokio::spawn(async move {
            let want = {
                let leases = lock_leases(&leases);
                let tokens = leases.get(&key).map(|l| l.tokens).unwrap_or(0.0);
                (lease_size(rate) as f64 - tokens).floor().max(0.0) as u64
            };
            let mut asks = [(0, 0); 2];
            let mut rates = [None, None];
            let mut keys = ["u:", "t:"];
            let slot = if scope == Scope::User { 0 } else { 1 };
            asks[slot] = (want, 0);
            rates[slot] = Some(rate);
            keys[slot] = &key;
            let granted = match shared.request(keys, rates, asks).await {
                Ok(Granted::Tokens(g)) => g[slot],
                _ => 0, // the next send with an empty lease asks again
            };
            let mut leases = lock_leases(&leases);
            if let Some(lease) = leases.get_mut(&key) {
                lease.tokens += granted as f64;
                lease.topping_up = false;
            }
        });
    }
}

/// Make room in a full lease map: drop the idlest tenth (their unspent
/// tokens are lost to them, never given twice), so the O(n) pass runs at
/// most once per `MAX_LEASES / 10` new keys.
fn evict_leases(map: &mut HashMap<String, Lease>, now: Instant) {
    let target = MAX_LEASES - MAX_LEASES / 10;
    map.retain(|_, l| {
        now.saturating_duration_since(l.last_used) < Duration::from_secs(10) || l.topping_up
    });
    if map.len() > target {
        let mut by_age: Vec<(Instant, String)> =
            map.iter().map(|(k, l)| (l.last_used, k.clone())).collect();
        by_age.sort_unstable();
        let excess = map.len() - target;
        for (_, k) in by_age.into_iter().take(excess) {
            map.remove(&k);
        }
    }
}

/// Allow a send the shared limits could not judge (see the module docs).
fn fail_open(why: &str) -> Result<(), Refused> {
    debug!(why, "send limits unavailable; allowing the send");
    metrics::counter!("chorus_send_limit_fail_open_total").increment(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let mut b = TokenBucket::new(10, 3);
        let t0 = b.last;
        for _ in 0..3 {
            b.take_at(t0).unwrap();
        }
        let wait = b.take_at(t0).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::from_millis(90),
            "{wait:?}"
        );
        b.take_at(t0 + Duration::from_millis(100)).unwrap();
        assert!(b.take_at(t0 + Duration::from_millis(100)).is_err());
    }

    fn rate(rate: u64, burst: u64) -> Rate {
        Rate::new(rate, burst).unwrap()
    }

    #[test]
    fn user_and_tenant_take_together_or_not_at_all() {
        let b = LocalBuckets::new(100);
        let t0 = Instant::now();
        let (u, t) = (rate(10, 2), rate(10, 3));
        b.take_at(t0, Some(("a", u)), Some(("x", t))).unwrap();
        b.take_at(t0, Some(("a", u)), Some(("x", t))).unwrap();
        // The user is out; the tenant keeps its last token.
        let r = b.take_at(t0, Some(("a", u)), Some(("x", t))).unwrap_err();
        assert_eq!(r.scope, Scope::User);
        assert!(r.retry_after > Duration::from_millis(90), "{r:?}");
        b.take_at(t0, Some(("b", u)), Some(("x", t))).unwrap();
        let r = b.take_at(t0, Some(("c", u)), Some(("x", t))).unwrap_err();
        assert_eq!(r.scope, Scope::Tenant);
        assert_eq!(r.message(), "at most 10 sends per second per tenant");
        // Refills at the rate.
        b.take_at(
            t0 + Duration::from_millis(100),
            Some(("c", u)),
            Some(("x", t)),
        )
        .unwrap();
    }

    #[test]
    fn the_map_stays_bounded() {
        let b = LocalBuckets::new(50);
        let t0 = Instant::now();
        for i in 0..500 {
            let user = format!("u{i}");
            b.take_at(t0, Some((&user, rate(1, 5))), None).unwrap();
        }
        assert!(b.map.lock().unwrap().len() <= 50);
        // Idle buckets go first: once they refilled, a new key evicts them all.
        let b = LocalBuckets::new(10);
        for i in 0..10 {
            let user = format!("u{i}");
            b.take_at(t0, Some((&user, rate(1, 5))), None).unwrap();
        }
        assert_eq!(b.map.lock().unwrap().len(), 10);
        let later = t0 + Duration::from_secs(10);
        b.take_at(later, Some(("fresh", rate(1, 5))), None).unwrap();
        assert_eq!(b.map.lock().unwrap().len(), 1);
    }

    #[test]
    fn no_limit_when_rate_is_zero() {
        assert_eq!(Rate::new(0, 10), None);
        assert_eq!(Rate::args(None), ["0".to_string(), "0".to_string()]);
    }
}
