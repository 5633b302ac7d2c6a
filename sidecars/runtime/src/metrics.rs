//! Prometheus helpers every binary shares: a registry under a prefix, histogram families with fixed
//! buckets, the label sets more than one binary uses, and the configuration-reload families. Labels
//! stay bounded: fixed sets or names from configuration, never object names or error strings.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter, family::Family, family::MetricConstructor, gauge::Gauge, histogram::Histogram,
    },
    registry::Registry,
};

/// Buckets for request latencies, in seconds: 250 µs to 10 s.
pub const REQUEST_LATENCY_SECONDS: &[f64] = &[
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for control-loop work (a reconcile, an API call), in seconds: 1 ms to 10 s.
pub const CONTROL_LOOP_SECONDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Makes each labelled histogram of a family with the same fixed buckets.
#[derive(Debug, Clone, Copy)]
pub struct Buckets(pub &'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

/// A family of histograms sharing `buckets`.
pub fn histogram_family<L>(buckets: &'static [f64]) -> Family<L, Histogram, Buckets>
where
    L: Clone + std::hash::Hash + Eq,
{
    Family::new_with_constructor(Buckets(buckets))
}

/// A registry whose metrics are all named `<prefix>_…` (`outrigger`, `outrigger_splitter`).
pub fn registry(prefix: &str) -> Registry {
    Registry::with_prefix(prefix)
}

/// `result`: what an attempt came to, from a small fixed set per metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// `reason`: why something happened, from a small fixed set per metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// `category`: an error's fixed category (`ReconcilerError::category`-style).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CategoryLabels {
    pub category: &'static str,
}

/// `source` (`file`, `configmap`) and `result` (`applied`, `unchanged`, `rejected`) of a reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub source: &'static str,
    pub result: &'static str,
}

/// The configuration-reload metrics of a sidecar; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct ReloadMetrics {
    /// `config_reloads_total{source, result}`.
    pub reloads: Family<ReloadLabels, Counter>,
    /// `config_last_reload_successful`: 1 when the last document seen was applied, 0 when not.
    pub last_reload_successful: Gauge,
    /// `config_generation`: generation of the document in effect (1 for the first).
    pub generation: Gauge,
}

impl ReloadMetrics {
    /// Creates the families and registers them in `registry` (whose prefix names the sidecar).
    pub fn register(registry: &mut Registry) -> ReloadMetrics {
        let metrics = ReloadMetrics::default();
        metrics.register_into(registry);
        metrics
    }

    /// Registers these families in `registry`.
    pub fn register_into(&self, registry: &mut Registry) {
        registry.register(
            "config_generation",
            "Generation of the configuration in effect (1 for the first)",
            self.generation.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by source (file, configmap) and result (applied, unchanged, rejected)",
            self.reloads.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 when the last configuration seen was applied, 0 when it was rejected",
            self.last_reload_successful.clone(),
        );
    }

    /// Counts one reload.
    pub fn record(&self, source: &'static str, result: &'static str) {
        self.reloads.get_or_create(&ReloadLabels { source, result }).inc();
        self.last_reload_successful.set(i64::from(result != "rejected"));
    }
}

/// The health of a sidecar's watches on the Kubernetes API; cheap to clone. Unregistered (the
/// default) it counts into nothing anyone reads.
#[derive(Clone, Debug, Default)]
pub struct WatchMetrics {
    /// `api_watch_errors_total{category}`: failed reads and watches, each retried with backoff.
    pub errors: Family<CategoryLabels, Counter>,
    /// `api_relists_total`: complete reads, at start and after `410 Gone`.
    pub relists: Counter,
}

impl WatchMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> WatchMetrics {
        let metrics = WatchMetrics::default();
        registry.register(
            "api_watch_errors",
            "Failed reads and watches of the Kubernetes API, each retried with backoff, by category: api, stream, transport, overdue, status, gone",
            metrics.errors.clone(),
        );
        registry.register(
            "api_relists",
            "Complete reads of what a watch covers: at start and after 410 Gone",
            metrics.relists.clone(),
        );
        metrics
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;

    use super::*;

    #[test]
    fn reload_families_carry_the_registry_prefix_and_a_rejection_clears_the_gauge() {
        let mut registry = registry("outrigger_example");
        let metrics = ReloadMetrics::register(&mut registry);
        metrics.record("file", "applied");
        metrics.record("configmap", "rejected");
        let latency = histogram_family::<ResultLabels>(REQUEST_LATENCY_SECONDS);
        registry.register("latency_seconds", "Latency", latency.clone());
        latency
            .get_or_create(&ResultLabels { result: "ok" })
            .observe(0.003);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(
                "outrigger_example_config_reloads_total{source=\"configmap\",result=\"rejected\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("outrigger_example_config_last_reload_successful 0"),
            "{text}"
        );
        assert!(
            text.contains("outrigger_example_latency_seconds_bucket{le=\"0.005\",result=\"ok\"} 1"),
            "{text}"
        );
    }
}
