//! Prometheus metrics through the `metrics` facade.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Install the process-wide recorder (once; later calls are no-ops).
pub fn install() {
    HANDLE.get_or_init(|| {
        let buckets = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ];
        PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                &buckets,
            )
            .and_then(|b| b.install_recorder())
            .ok()
    });
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    HANDLE
        .get()
        .and_then(|h| h.as_ref())
        .map(|h| h.render())
        .unwrap_or_default()
}

/// A panic caught at a task boundary (`site`: `connection`, `http`): counted in
/// `chorus_panics_total`. The panic hook (`install_panic_hook`) has logged it
/// already, with its location, so this does not log it again.
pub fn panicked(site: &'static str, _payload: &(dyn std::any::Any + Send)) {
    metrics::counter!("chorus_panics_total", "site" => site).increment(1);
}

/// Log every panic once, as one structured error line with its location,
/// instead of the default hook's unstructured stderr text.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%message, %location, "panic");
    }));
}
