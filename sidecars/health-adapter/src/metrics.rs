//! Prometheus metrics of the health adapter, served on its admin port. Labels are check names
//! (fixed by the settings) and small fixed sets.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransitionLabels {
    pub check: String,
    pub to: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RunLabels {
    pub check: String,
    /// `ok`, or the error's category.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointTransitionLabels {
    pub endpoint: String,
    pub to: String,
}

/// The health adapter's metrics, under `health_adapter_`.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub runs: Family<RunLabels, Counter>,
    pub transitions: Family<TransitionLabels, Counter>,
    /// 1 passing, 0 failing, -1 unknown.
    pub status: Family<CheckLabels, Gauge>,
    pub duration_ms: Family<CheckLabels, Gauge>,
    /// 1 when the endpoint answers 200.
    pub endpoint_up: Family<EndpointLabels, Gauge>,
    pub endpoint_transitions: Family<EndpointTransitionLabels, Counter>,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        let registry = registry.sub_registry_with_prefix("health_adapter");
        registry.register("check_runs", "Check runs, by result", metrics.runs.clone());
        registry.register(
            "check_transitions",
            "Changes of a check's status after hysteresis, by new status",
            metrics.transitions.clone(),
        );
        registry.register(
            "check_status",
            "Status of a check: 1 passing, 0 failing, -1 unknown",
            metrics.status.clone(),
        );
        registry.register(
            "check_duration_milliseconds",
            "Duration of the check's last run",
            metrics.duration_ms.clone(),
        );
        registry.register(
            "endpoint_up",
            "Whether the endpoint (livez, readyz, startupz) answers 200",
            metrics.endpoint_up.clone(),
        );
        registry.register(
            "endpoint_transitions",
            "Changes of an endpoint's answer, by new answer",
            metrics.endpoint_transitions.clone(),
        );
        metrics
    }
}
