//! The operator's Prometheus metrics. Labels are bounded: controller names and error categories
//! are fixed sets, never object names or error strings.

use outrigger_sidecar_runtime::metrics::{histogram_family, Buckets, CONTROL_LOOP_SECONDS};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub controller: &'static str,
    pub verb: &'static str,
}

/// All operator metrics, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    pub duration: Family<ControllerLabels, Histogram, Buckets>,
    pub managed: Family<ControllerLabels, Gauge>,
    pub writes: Family<WriteLabels, Counter>,
    /// Reads a reconcile sends itself (children and references come from the watches' caches; a
    /// child the cache lacks is read once, to tell "not created yet" from "someone else's").
    pub reads: Family<WriteLabels, Counter>,
    pub leader: Gauge,
}

impl Metrics {
    /// Creates the metrics and registers them under `outrigger_`.
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            reconciles: Family::default(),
            errors: Family::default(),
            duration: histogram_family(CONTROL_LOOP_SECONDS),
            managed: Family::default(),
            writes: Family::default(),
            reads: Family::default(),
            leader: Gauge::default(),
        };
        let registry = registry.sub_registry_with_prefix("outrigger");
        registry.register("reconcile", "Reconciliations run", metrics.reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciliations failed, by error category",
            metrics.errors.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time spent in one reconciliation",
            prometheus_client::registry::Unit::Seconds,
            metrics.duration.clone(),
        );
        registry.register(
            "managed_objects",
            "Objects each controller manages",
            metrics.managed.clone(),
        );
        registry.register(
            "api_writes",
            "Write requests sent to the API server",
            metrics.writes.clone(),
        );
        registry.register(
            "api_reads",
            "Read requests a reconcile sent to the API server (watches not counted)",
            metrics.reads.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            metrics.leader.clone(),
        );
        metrics
    }

    pub fn count_write(&self, controller: &'static str, verb: &'static str) {
        self.writes.get_or_create(&WriteLabels { controller, verb }).inc();
    }

    pub fn count_read(&self, controller: &'static str, verb: &'static str) {
        self.reads.get_or_create(&WriteLabels { controller, verb }).inc();
    }
}
