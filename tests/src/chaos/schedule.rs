//! The fault schedule: which fault, on which node, when and for how long,
//! derived from a seed alone so a run can be reproduced.
//!
//! Faults run one after another, each followed by a quiet stretch in which
//! the cluster recovers. The first round is every kind once in a seeded
//! order (so a short run covers them all); later rounds draw kinds at
//! random.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Every fault the harness injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// kill -9 a node, start it again after the hold.
    Kill9,
    /// SIGSTOP a node for longer than its ownership lease, then SIGCONT.
    Pause,
    /// SIGTERM (drain) and restart every node, one after another.
    RollingRestart,
    /// kill -9 Redis and start it again, empty.
    RedisRestart,
    /// kill -9 PostgreSQL (every backend) and start it again (crash recovery).
    PostgresRestart,
    /// SIGSTOP PostgreSQL (every backend) for the hold, then SIGCONT.
    PostgresStall,
    /// One node's Redis link blackholed for the hold.
    RedisPartition,
    /// One node's Redis link refused (connections reset) while some of its
    /// clients join a fresh room (the room's first join there), then messages
    /// published into it from another node: a join must not succeed deaf.
    FreshJoinCut,
    /// One node's PostgreSQL link blackholed for the hold.
    PostgresPartition,
    /// One node's Redis and PostgreSQL links get added latency.
    Latency,
    /// One node's Redis link capped to a few kB/s.
    Bandwidth,
    /// One node's Redis and PostgreSQL connections reset (RST) at once.
    Reset,
    /// One node's Redis link half-open (requests pass, replies are lost),
    /// then its connections reset, as a peer that notices a dead link would.
    HalfOpen,
    /// A share of the clients drop their sockets abruptly and resume on a
    /// random node.
    ClientDrops,
    /// A few clients stop reading while a burst is published to their room:
    /// the node must close them as slow consumers (4002); they resume.
    SlowConsumers,
}

impl FaultKind {
    /// Every kind, in declaration order.
    pub const ALL: [FaultKind; 15] = [
        FaultKind::Kill9,
        FaultKind::Pause,
        FaultKind::RollingRestart,
        FaultKind::RedisRestart,
        FaultKind::PostgresRestart,
        FaultKind::PostgresStall,
        FaultKind::RedisPartition,
        FaultKind::FreshJoinCut,
        FaultKind::PostgresPartition,
        FaultKind::Latency,
        FaultKind::Bandwidth,
        FaultKind::Reset,
        FaultKind::HalfOpen,
        FaultKind::ClientDrops,
        FaultKind::SlowConsumers,
    ];

    /// Name in reports and logs.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill9 => "kill -9 node",
            FaultKind::Pause => "SIGSTOP node",
            FaultKind::RollingRestart => "rolling restart",
            FaultKind::RedisRestart => "Redis restart (empty)",
            FaultKind::PostgresRestart => "PostgreSQL restart",
            FaultKind::PostgresStall => "PostgreSQL stall",
            FaultKind::RedisPartition => "node cut from Redis",
            FaultKind::FreshJoinCut => "fresh room joined while cut",
            FaultKind::PostgresPartition => "node cut from PostgreSQL",
            FaultKind::Latency => "latency on node links",
            FaultKind::Bandwidth => "bandwidth cap on Redis link",
            FaultKind::Reset => "connection reset (RST)",
            FaultKind::HalfOpen => "half-open Redis link",
            FaultKind::ClientDrops => "client drops + resume",
            FaultKind::SlowConsumers => "slow consumers",
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// When it starts, from the start of the workload.
    pub at: Duration,
    pub kind: FaultKind,
    /// The node it targets (for node and link faults).
    pub node: usize,
    /// How long the fault lasts.
    pub hold: Duration,
    /// Kind-specific size: latency in ms, bandwidth in bytes/s, percent of
    /// clients dropped, number of slow consumers, number of fresh-room joiners.
    pub amount: u64,
}

/// Timing the schedule is built around (from the nodes' configuration).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The room ownership lease: pauses last longer than this.
    pub lease: Duration,
    /// The node send timeout: some PostgreSQL stalls last longer than this.
    pub send_timeout: Duration,
    /// Quiet time after each fault before the next one.
    pub settle: Duration,
}

/// Build the schedule for `seed`: faults start within `duration` (the last
/// one may end a little after it), over `nodes` nodes.
pub fn build(seed: u64, duration: Duration, nodes: usize, timing: Timing) -> Vec<Step> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut steps = Vec::new();
    // A little warm-up: rooms get owners and clients join before the first fault.
    let mut at = Duration::from_secs(3);
    let mut round: Vec<FaultKind> = FaultKind::ALL.to_vec();
    round.shuffle(&mut rng);
    let mut queue = round.into_iter();
    while at < duration {
        let kind = match queue.next() {
            Some(k) => k,
            None => FaultKind::ALL[rng.random_range(0..FaultKind::ALL.len())],
        };
        let node = rng.random_range(0..nodes.max(1));
        let (hold, amount) = shape(kind, &mut rng, timing);
        steps.push(Step {
            at,
            kind,
            node,
            hold,
            amount,
        });
        at += hold + timing.settle + expected_extra(kind, nodes);
    }
    steps
}

/// The hold and amount of one fault.
fn shape(kind: FaultKind, rng: &mut StdRng, t: Timing) -> (Duration, u64) {
    let ms = |lo: u64, hi: u64, rng: &mut StdRng| Duration::from_millis(rng.random_range(lo..=hi));
    let lease = t.lease.as_millis() as u64;
    match kind {
        FaultKind::Kill9 => (ms(1000, 4000, rng), 0),
        // Past the lease, so another node takes the room and fences this one.
        FaultKind::Pause => (ms(lease * 2, lease * 3, rng), 0),
        FaultKind::RollingRestart => (Duration::ZERO, 0),
        FaultKind::RedisRestart | FaultKind::PostgresRestart => (ms(500, 2500, rng), 0),
        FaultKind::PostgresStall => {
            // Half the stalls outlast the send timeout (sends fail, retries
            // succeed later); the others only delay acks.
            let st = t.send_timeout.as_millis() as u64;
            if rng.random_bool(0.5) {
                (ms(st + 500, st + 2000, rng), 0)
            } else {
                (ms(1000, st / 2, rng), 0)
            }
        }
        FaultKind::RedisPartition | FaultKind::PostgresPartition => (ms(2000, 6000, rng), 0),
        // Longer than the node's Redis command timeout (2 s): subscriptions
        // queued while the node reconnects fail rather than wait it out.
        FaultKind::FreshJoinCut => (ms(2500, 4000, rng), rng.random_range(3..=6)),
        FaultKind::Latency => (ms(3000, 5000, rng), rng.random_range(20..=200)),
        FaultKind::Bandwidth => (ms(3000, 5000, rng), rng.random_range(4_000..=32_000)),
        FaultKind::Reset => (Duration::ZERO, 0),
        FaultKind::HalfOpen => (ms(2000, 4000, rng), 0),
        FaultKind::ClientDrops => (Duration::ZERO, rng.random_range(10..=40)),
        FaultKind::SlowConsumers => (ms(4000, 6000, rng), rng.random_range(2..=4)),
    }
}

/// Time a fault takes beyond its hold (restarts, drains), to space the next.
fn expected_extra(kind: FaultKind, nodes: usize) -> Duration {
    match kind {
        FaultKind::RollingRestart => Duration::from_secs(3 * nodes as u64),
        FaultKind::PostgresRestart => Duration::from_secs(2),
        // The joins' retries, then the messages published into the room.
        FaultKind::FreshJoinCut => Duration::from_secs(2),
        _ => Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing {
            lease: Duration::from_millis(1500),
            send_timeout: Duration::from_secs(4),
            settle: Duration::from_secs(3),
        }
    }

    #[test]
    fn same_seed_same_schedule() {
        let a = build(7, Duration::from_secs(300), 3, timing());
        let b = build(7, Duration::from_secs(300), 3, timing());
        assert_eq!(a, b);
        let c = build(8, Duration::from_secs(300), 3, timing());
        assert_ne!(a, c);
    }

    #[test]
    fn first_round_covers_every_kind_once() {
        let steps = build(42, Duration::from_secs(3600), 5, timing());
        let mut first: Vec<FaultKind> = steps
            .iter()
            .take(FaultKind::ALL.len())
            .map(|s| s.kind)
            .collect();
        first.sort();
        assert_eq!(first, FaultKind::ALL.to_vec());
        assert!(steps.iter().all(|s| s.node < 5));
        // Faults never overlap: each starts after the previous one ended.
        for w in steps.windows(2) {
            assert!(w[1].at >= w[0].at + w[0].hold);
        }
    }

    #[test]
    fn the_quick_run_covers_every_kind() {
        let t = Timing {
            lease: crate::chaos::LEASE,
            send_timeout: crate::chaos::SEND_TIMEOUT,
            settle: crate::chaos::DEFAULT_SETTLE,
        };
        let steps = build(crate::chaos::QUICK_SEED, crate::chaos::QUICK_DURATION, 3, t);
        let mut kinds: Vec<FaultKind> = steps.iter().map(|s| s.kind).collect();
        kinds.sort();
        kinds.dedup();
        assert_eq!(kinds, FaultKind::ALL.to_vec());
        let end = steps.last().map(|s| s.at + s.hold).unwrap_or_default();
        eprintln!("quick: {} faults, the last ends at {end:?}", steps.len());
    }

    #[test]
    fn pauses_outlast_the_lease() {
        let steps = build(3, Duration::from_secs(3600), 3, timing());
        let pauses: Vec<&Step> = steps
            .iter()
            .filter(|s| s.kind == FaultKind::Pause)
            .collect();
        assert!(!pauses.is_empty());
        assert!(pauses.iter().all(|s| s.hold > timing().lease));
    }
}
