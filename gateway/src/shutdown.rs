//! Shutdown: one signal for every background task, and a tracker that the
//! drain waits on.
//!
//! mini-redis's `shutdown.rs` fans a broadcast out and collects dropped mpsc
//! senders back; tokio-util's `CancellationToken` and `TaskTracker` are the
//! same tree in two types. Every loop `select!`s on [`Shutdown::cancelled`] as
//! its exit branch; every task is started with [`Shutdown::spawn`], so none is
//! detached: after [`Shutdown::begin`], [`Shutdown::wait_until`] returns once
//! all of them ended (or at the deadline).

use std::future::Future;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};
use tokio_util::task::TaskTracker;

/// The shutdown of one scope (a node's background work, the listener's
/// connections). Clones share it.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the shutdown begins; every loop has a branch on it.
    token: CancellationToken,
    /// The tasks started through `spawn`, which `wait_until` waits for.
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Run `task` in the background, tracked: `wait_until` waits for it. Tasks
    /// may still be started after `begin` (a connection that closes during the
    /// drain starts its presence grace), and are waited for too.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(task)
    }

    /// Resolves once the shutdown began.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// `cancelled`, holding its own handle (for a future kept across a loop
    /// that borrows its owner mutably).
    pub fn cancelled_owned(&self) -> WaitForCancellationFutureOwned {
        self.token.clone().cancelled_owned()
    }

    /// Whether the shutdown began.
    pub fn is_shutdown(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Tell every task to stop (idempotent).
    pub fn begin(&self) {
        self.token.cancel();
        self.tracker.close();
    }

    /// Wait for every task started through `spawn` to end, until `deadline`.
    /// True if they all did. Only returns early after `begin`.
    pub async fn wait_until(&self, deadline: Instant) -> bool {
        tokio::time::timeout_at(deadline, self.tracker.wait())
            .await
            .is_ok()
    }

    /// Tasks started through `spawn` still running.
    pub fn running(&self) -> usize {
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn begin_stops_loops_and_wait_sees_them_end() {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        shutdown.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = s.cancelled() => break,
                }
            }
        });
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(!shutdown.wait_until(soon).await, "not begun: nothing ends");
        assert_eq!(shutdown.running(), 1);
        shutdown.begin();
        assert!(shutdown.is_shutdown());
        // A task started after `begin` is waited for as well.
        shutdown.spawn(tokio::time::sleep(Duration::from_millis(20)));
        let deadline = Instant::now() + Duration::from_secs(5);
        assert!(shutdown.wait_until(deadline).await);
        assert_eq!(shutdown.running(), 0);
    }

    #[tokio::test]
    async fn wait_is_bounded_by_its_deadline() {
        let shutdown = Shutdown::new();
        shutdown.spawn(std::future::pending::<()>());
        shutdown.begin();
        let started = Instant::now();
        assert!(
            !shutdown
                .wait_until(started + Duration::from_millis(30))
                .await
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
