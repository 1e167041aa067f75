//! History retention: the policy from the configuration, run on an interval
//! (and on demand).

use std::sync::Arc;
use std::time::Duration;

use chorus_history::{HistoryStore, Retention, StoreError};
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::shutdown::Shutdown;

/// Trims a store by a retention policy.
pub(crate) struct Trimmer {
    store: Arc<dyn HistoryStore>,
    policy: Option<Retention>,
    interval: Duration,
}

impl Trimmer {
    /// `max_age_secs` and `max_count` of 0 mean no bound; with neither there
    /// is no policy and nothing is trimmed.
    pub(crate) fn new(
        store: Arc<dyn HistoryStore>,
        max_age_secs: u64,
        max_count: u64,
        interval: Duration,
    ) -> Trimmer {
        let r = Retention {
            max_age_ms: (max_age_secs > 0).then(|| max_age_secs * 1000),
            max_count: (max_count > 0).then_some(max_count),
        };
        let policy = (r.max_age_ms.is_some() || r.max_count.is_some()).then_some(r);
        Trimmer {
            store,
            policy,
            interval: interval.max(Duration::from_secs(1)),
        }
    }

    /// Run retention once now; returns the messages deleted.
    pub(crate) async fn trim_now(&self) -> Result<u64, StoreError> {
        match self.policy {
            Some(r) => self.store.trim(r, now_ms()).await,
            None => Ok(0),
        }
    }

    /// Trim on the interval until the shutdown, when there is a policy.
    pub(crate) fn start(self: &Arc<Self>, shutdown: &Shutdown) {
        if self.policy.is_none() {
            return;
        }
        let (trimmer, stop) = (self.clone(), shutdown.clone());
        shutdown.spawn(async move {
            let mut tick = tokio::time::interval(trimmer.interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => match trimmer.trim_now().await {
                        Ok(n) if n > 0 => {
                            metrics::counter!("chorus_retention_deleted_total").increment(n);
                            info!(deleted = n, "retention trimmed history");
                        }
                        Ok(_) => {}
                        Err(e) => warn!(error = %e, "retention failed"),
                    },
                    _ = stop.cancelled() => break,
                }
            }
        });
    }
}
