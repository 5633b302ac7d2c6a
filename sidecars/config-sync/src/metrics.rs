//! The sidecar's metrics, under `outrigger_config_sync_`.

use outrigger_contract::config_sync::SyncState;
use outrigger_sidecar_runtime::metrics::{CategoryLabels, ResultLabels, CONTROL_LOOP_SECONDS};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug)]
pub struct Metrics {
    syncs: Family<ResultLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    rejections: Family<CategoryLabels, Counter>,
    in_sync: Gauge,
    latency: Histogram,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            syncs: Family::default(),
            reloads: Family::default(),
            rejections: Family::default(),
            in_sync: Gauge::default(),
            latency: Histogram::new(CONTROL_LOOP_SECONDS.iter().copied()),
        };
        registry.register(
            "syncs",
            "Versions of the sources handled, by result: applied, unchanged, rejected, rolled_back, unhealthy, write_failed",
            metrics.syncs.clone(),
        );
        registry.register(
            "reloads",
            "Reloads of the app, by result: ok, failed",
            metrics.reloads.clone(),
        );
        registry.register(
            "rejections",
            "Versions refused before writing, by category: json, yaml, toml, ini, schema, encoding, missing, source, forbidden, rollout",
            metrics.rejections.clone(),
        );
        registry.register(
            "in_sync",
            "1 when the files on disk are the latest sources, reloaded and healthy; 0 otherwise",
            metrics.in_sync.clone(),
        );
        registry.register(
            "write_latency_seconds",
            "Time from a change of the sources to the new files written",
            metrics.latency.clone(),
        );
        metrics
    }

    pub fn syncs(&self, result: &'static str) {
        self.syncs.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn reloads(&self, result: &'static str) {
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn rejected(&self, category: &'static str) {
        self.syncs("rejected");
        self.rejections.get_or_create(&CategoryLabels { category }).inc();
    }

    pub fn state(&self, state: SyncState) {
        self.in_sync.set(i64::from(state == SyncState::Synced));
    }

    pub fn observe_latency(&self, latency: std::time::Duration) {
        self.latency.observe(latency.as_secs_f64());
    }
}
