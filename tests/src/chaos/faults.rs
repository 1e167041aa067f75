//! Injecting the faults of the schedule: processes killed, paused and
//! restarted, links cut, slowed and reset, clients dropped and stalled.

use std::time::Duration;

use rand::seq::SliceRandom;

use super::Harness;
use super::publish::publish;
use super::schedule::{FaultKind, Step};
use super::workload::{Command, lock};
use crate::proxy::Fault;

impl Harness {
    pub(super) async fn inject(&mut self, step: &Step) {
        let i = step.node;
        let id = self.nodes[i].id.clone();
        println!(
            "[t+{:6.1}s] {:<28} node {id} hold {:>5} ms amount {}",
            self.elapsed(),
            step.kind.name(),
            step.hold.as_millis(),
            step.amount
        );
        *self
            .measured
            .faults
            .entry(step.kind.name().to_owned())
            .or_default() += 1;
        match step.kind {
            FaultKind::Kill9 => {
                self.nodes[i].down = true;
                self.nodes[i].process.kill9();
                self.watch_presence_after_kill(i);
                self.idle(step.hold).await;
                self.restart_node(i);
            }
            FaultKind::Pause => {
                let pid = self.nodes[i].process.pid();
                self.nodes[i].down = true;
                crate::signal(pid, "STOP");
                self.idle(step.hold).await;
                crate::signal(pid, "CONT");
                self.nodes[i].down = false;
            }
            FaultKind::RollingRestart => {
                for k in 0..self.nodes.len() {
                    self.nodes[k].down = true;
                    let status = tokio::task::block_in_place(|| self.nodes[k].process.sigterm());
                    if !status.is_some_and(|s| s.success()) {
                        self.measured
                            .bad_drains
                            .push(format!("{}: exit {status:?}", self.nodes[k].id));
                    }
                    self.restart_node(k);
                    self.idle(Duration::from_secs(1)).await;
                }
            }
            FaultKind::RedisRestart => {
                self.redis.kill9();
                self.idle(step.hold).await;
                tokio::task::block_in_place(|| self.redis.restart());
            }
            FaultKind::PostgresRestart => {
                tokio::task::block_in_place(|| self.pg.kill9());
                self.idle(step.hold).await;
                tokio::task::block_in_place(|| self.pg.restart());
            }
            FaultKind::PostgresStall => {
                self.pg.pause();
                self.idle(step.hold).await;
                self.pg.resume();
            }
            FaultKind::RedisPartition => {
                self.nodes[i].redis_link.set(Fault::Blackhole);
                self.idle(step.hold).await;
                self.nodes[i].redis_link.set(Fault::Pass);
            }
            FaultKind::FreshJoinCut => self.fresh_join_cut(step).await,
            FaultKind::PostgresPartition => {
                self.nodes[i].pg_link.set(Fault::Blackhole);
                self.idle(step.hold).await;
                self.nodes[i].pg_link.set(Fault::Pass);
            }
            FaultKind::Latency => {
                let d = Fault::Delay(Duration::from_millis(step.amount));
                self.nodes[i].redis_link.set(d);
                self.nodes[i].pg_link.set(d);
                self.idle(step.hold).await;
                self.nodes[i].redis_link.set(Fault::Pass);
                self.nodes[i].pg_link.set(Fault::Pass);
            }
            FaultKind::Bandwidth => {
                self.nodes[i].redis_link.set(Fault::Throttle(step.amount));
                self.idle(step.hold).await;
                self.nodes[i].redis_link.set(Fault::Pass);
            }
            FaultKind::Reset => {
                self.nodes[i].redis_link.reset();
                self.nodes[i].pg_link.reset();
            }
            FaultKind::HalfOpen => {
                self.nodes[i].redis_link.set(Fault::HalfOpen);
                self.idle(step.hold).await;
                // Bytes were lost: the connections cannot go on; the node's
                // client finds them reset, as it would a dead peer.
                self.nodes[i].redis_link.heal_with_reset();
            }
            FaultKind::ClientDrops => {
                let n = self.clients.len() * step.amount as usize / 100;
                let mut picks: Vec<usize> = (0..self.clients.len()).collect();
                picks.shuffle(&mut self.rng);
                for &k in picks.iter().take(n) {
                    let _ = self.clients[k].0.try_send(Command::Drop);
                }
            }
            FaultKind::SlowConsumers => self.slow_consumers(step).await,
        }
    }

    /// Cut a node from Redis (connections reset and refused, so the node
    /// knows), have up to `amount` of its clients join a room
    /// nobody is in (so each join is the room's first on that node and must
    /// subscribe), lift the cut, then publish into the room from another
    /// node. A join that succeeded without a subscription would miss these
    /// messages (the checker counts them); a refused one is retried by the
    /// client until it works.
    async fn fresh_join_cut(&mut self, step: &Step) {
        let i = step.node;
        let id = self.nodes[i].id.clone();
        let room = format!("fresh-{}", self.fresh_rooms);
        self.fresh_rooms += 1;
        let others: Vec<String> = self
            .addrs
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .map(|(_, a)| a.clone())
            .collect();
        // A first message through another node makes that node the room's
        // writer, so the cut node hears the room only through Redis (a writer
        // delivers to its own members directly).
        let (acked, failed) = publish(&self.http, &others, &room, 1).await;
        self.measured.published.extend(acked);
        self.measured.publish_failures += failed;
        self.nodes[i].redis_link.set(Fault::Refuse);
        // The node's Redis clients notice the resets.
        self.idle(Duration::from_millis(300)).await;
        let mut joiners = 0;
        for (tx, log, _) in &self.clients {
            if joiners >= step.amount {
                break;
            }
            if lock(log).node.as_deref() == Some(id.as_str())
                && tx.try_send(Command::Join(room.clone())).is_ok()
            {
                joiners += 1;
            }
        }
        println!("             {joiners} clients on {id} join {room}");
        self.idle(step.hold).await;
        self.nodes[i].redis_link.set(Fault::Pass);
        // Let the refused joins be retried, then write into the room through
        // the other nodes.
        self.idle(Duration::from_secs(1)).await;
        let (acked, failed) = publish(&self.http, &others, &room, 5).await;
        self.measured.published.extend(acked);
        self.measured.publish_failures += failed;
    }

    /// Stall a few members of the bulk room and publish a burst into it.
    async fn slow_consumers(&mut self, step: &Step) {
        let mut members: Vec<usize> = (0..self.clients.len()).step_by(10).collect();
        members.shuffle(&mut self.rng);
        for &k in members.iter().take(step.amount as usize) {
            let _ = self.clients[k].0.try_send(Command::Stall(step.hold));
        }
        let burst = self.burst(self.opts.burst_bytes);
        let hold = tokio::time::sleep(step.hold);
        tokio::pin!(burst);
        tokio::pin!(hold);
        // Keep watching the nodes while both run.
        let mut burst_done = None;
        let mut hold_done = false;
        while burst_done.is_none() || !hold_done {
            tokio::select! {
                r = &mut burst, if burst_done.is_none() => burst_done = Some(r),
                _ = &mut hold, if !hold_done => hold_done = true,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            self.watch_nodes();
        }
        let (acked, failed) = burst_done.unwrap_or_default();
        self.measured.published.extend(acked);
        self.measured.publish_failures += failed;
    }
}
