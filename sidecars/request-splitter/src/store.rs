//! The configuration in effect, compiled for the request path. The runtime's config source owns
//! the layers (the file and the ConfigMap key merged over it), validation, generations, the
//! last-good document and the reload metrics; this store compiles each new generation (router,
//! backend pools, route counters) and swaps it in atomically. Requests in flight keep the
//! generation they started with, so a reload drops nothing; a rejected layer leaves everything as
//! it was.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
};

use arc_swap::ArcSwapOption;
pub use outrigger_sidecar_runtime::config::{Applied, ReloadError, Source};
use outrigger_sidecar_runtime::{
    config::{ConfigSource, Versioned},
    metrics::ReloadMetrics,
};
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;
use tokio::sync::watch;

use crate::{
    config::{ConfigError, EndpointDiscoveryConfig, SplitterConfig, SplitterConfigExt},
    discovery::Discovered,
    metrics::{Metrics, RouteLabels},
    routing::{
        rate_limit::{Limiter, Policy},
        Router,
    },
    transport::upstream::{Backend, Resources},
};

/// One configuration generation, compiled for the request path.
#[derive(Debug)]
pub struct Active {
    pub generation: u64,
    pub config: SplitterConfig,
    pub router: Router,
    pub backends: Vec<Backend>,
    pub route_matches: Vec<Counter>,
    /// The rate limits, compiled; their buckets are the store's [`Limiter`].
    pub rate_limits: Option<Policy>,
}

/// The configuration source and the generation compiled from it.
pub struct ConfigStore {
    source: Arc<ConfigSource<SplitterConfig>>,
    compiled: Arc<Compiled>,
    /// Rate-limit buckets, kept across generations.
    limiter: Limiter,
}

struct Compiled {
    current: ArcSwapOption<Active>,
    resources: Resources,
    metrics: Metrics,
    /// The ready pods of the Services backends discover (`discovery`).
    discovered: Arc<Discovered>,
    /// The Services the generation in effect discovers, for the discovery task.
    wanted: watch::Sender<BTreeSet<EndpointDiscoveryConfig>>,
    /// Held while a generation is compiled, so a rebuild for new pods and a new document do not
    /// interleave.
    compiling: Mutex<()>,
}

impl ConfigStore {
    /// A store for a process with one worker.
    pub fn new(metrics: Metrics) -> ConfigStore {
        ConfigStore::with_workers(metrics, 1)
    }

    /// A store whose connection pools have a slot per worker thread.
    pub fn with_workers(metrics: Metrics, workers: usize) -> ConfigStore {
        let reload_metrics = ReloadMetrics {
            reloads: metrics.config_reloads.clone(),
            last_reload_successful: metrics.config_last_reload_ok.clone(),
            generation: metrics.config_generation.clone(),
        };
        let limiter = Limiter::new(&metrics);
        let compiled = Arc::new(Compiled {
            current: ArcSwapOption::empty(),
            resources: Resources::new(workers),
            metrics,
            discovered: Arc::default(),
            wanted: watch::Sender::new(BTreeSet::new()),
            compiling: Mutex::new(()),
        });
        let hook = compiled.clone();
        let source = ConfigSource::new(reload_metrics, validate)
            .on_change(move |next, previous| hook.install(next, previous));
        ConfigStore {
            source: Arc::new(source),
            compiled,
            limiter,
        }
    }

    /// The config source (layers, last rejection, `/config`).
    pub fn source(&self) -> &Arc<ConfigSource<SplitterConfig>> {
        &self.source
    }

    /// The generation in effect, if any yet.
    pub fn current(&self) -> Option<Arc<Active>> {
        self.compiled.current.load_full()
    }

    /// Completes once a first configuration is in effect.
    pub async fn wait_for_first(&self) -> Option<Arc<Active>> {
        self.source.wait_for_first().await?;
        self.current()
    }

    /// The rate-limit buckets.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }

    /// The ready pods discovered for backends that discover them.
    pub fn discovered(&self) -> Arc<Discovered> {
        self.compiled.discovered.clone()
    }

    /// The Services the generation in effect discovers, changing with it.
    pub fn discovered_services(&self) -> watch::Receiver<BTreeSet<EndpointDiscoveryConfig>> {
        self.compiled.wanted.subscribe()
    }

    /// Rebuilds the generation in effect with the pods discovered now (same document and generation
    /// number; pools and endpoint health kept).
    pub fn refresh_endpoints(&self) {
        let _compiling = self.compiled.lock();
        if let Some(active) = self.compiled.current.load_full() {
            let config = active.config.clone();
            self.compiled.store(active.generation, config);
        }
    }

    /// Replaces one layer, validates the merged document and swaps it in. On error nothing changes.
    pub fn apply(&self, source: Source, layer: Value) -> Result<Applied, ReloadError> {
        self.source.apply(source, layer)
    }
}

/// Reads and validates the merged document; a document that does not fit the schema is a `parse`
/// rejection, one that fits but breaks a rule is `invalid`.
fn validate(value: Value) -> Result<SplitterConfig, ReloadError> {
    SplitterConfig::from_value(value).map_err(|error| match error {
        ConfigError::Parse { path, message } => ReloadError::Parse { path, message },
        other => ReloadError::Invalid(Box::new(other)),
    })
}

impl Compiled {
    /// Compiles a new generation and swaps it in; the config source calls it one at a time, in
    /// order.
    fn install(&self, next: &Versioned<SplitterConfig>, previous: Option<&Versioned<SplitterConfig>>) {
        if let Some(previous) = previous {
            warn_about_restart_only_fields(&previous.document, &next.document);
        }
        let _compiling = self.lock();
        self.store(next.generation, next.document.clone());
        let services: BTreeSet<EndpointDiscoveryConfig> = next
            .document
            .backends
            .iter()
            .filter_map(|backend| backend.discovery.clone())
            .collect();
        self.wanted.send_if_modified(|wanted| {
            let changed = *wanted != services;
            *wanted = services;
            changed
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.compiling.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Compiles `config` with the pods discovered now and swaps it in.
    fn store(&self, generation: u64, config: SplitterConfig) {
        let virtual_nodes = config
            .stickiness
            .as_ref()
            .map_or(160, |sticky| sticky.virtual_nodes);
        let pods = |backend: &crate::config::BackendConfig| self.discovered.pods(backend.discovery.as_ref()?);
        let backends =
            self.resources
                .backends_with_pods(&config.backends, &pods, virtual_nodes, &self.metrics);
        let route_matches = config
            .routes
            .iter()
            .map(|route| {
                self.metrics.route_matches.get_or_create_owned(&RouteLabels {
                    route: route.name.clone(),
                })
            })
            .collect();
        self.current.store(Some(Arc::new(Active {
            generation,
            router: Router::new(&config),
            backends,
            route_matches,
            rate_limits: config.rate_limits.as_ref().map(Policy::new),
            config,
        })));
    }
}

fn warn_about_restart_only_fields(old: &SplitterConfig, new: &SplitterConfig) {
    let restart_only = [
        ("listen", old.listen != new.listen),
        ("tls", old.tls != new.tls),
        (
            "limits.maxConnections",
            old.limits.max_connections != new.limits.max_connections,
        ),
        (
            "limits.mirrorQueue",
            old.limits.mirror_queue != new.limits.mirror_queue,
        ),
        (
            "limits.mirrorInFlight",
            old.limits.mirror_in_flight != new.limits.mirror_in_flight,
        ),
    ];
    for (field, changed) in restart_only {
        if changed {
            tracing::warn!(
                field,
                "A changed field takes effect only after a restart; the rest of the new configuration is applied."
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};
    use serde_json::json;

    use super::*;

    fn file_layer() -> Value {
        json!({
            "backends": [
                {"name": "stable", "endpoints": ["127.0.0.1:1"]},
                {"name": "canary", "endpoints": ["127.0.0.1:2"]}
            ],
            "weights": {"stable": 90, "canary": 10}
        })
    }

    fn store() -> (ConfigStore, Registry) {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        (ConfigStore::new(metrics), registry)
    }

    fn metrics_text(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    #[tokio::test]
    async fn a_valid_layer_becomes_a_new_generation_and_the_same_one_changes_nothing() {
        let (store, registry) = store();
        assert!(store.current().is_none());
        assert_eq!(
            store.apply(Source::File, file_layer()).unwrap(),
            Applied::Changed { generation: 1 }
        );
        assert_eq!(
            store.apply(Source::File, file_layer()).unwrap(),
            Applied::Unchanged { generation: 1 }
        );
        assert_eq!(store.wait_for_first().await.unwrap().generation, 1);
        let text = metrics_text(&registry);
        assert!(text.contains("outrigger_splitter_config_generation 1"), "{text}");
        assert!(
            text.contains("outrigger_splitter_config_reloads_total{source=\"file\",result=\"unchanged\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_invalid_layer_is_rejected_counted_and_the_previous_generation_keeps_serving() {
        let (store, registry) = store();
        store.apply(Source::File, file_layer()).unwrap();
        let before = store.current().unwrap();
        let mut bad = file_layer();
        bad["weights"]["canary"] = json!(50);
        let error = store.apply(Source::File, bad).unwrap_err();
        assert!(
            error.to_string().contains("weights: the weights add up to 140"),
            "{error}"
        );
        assert!(Arc::ptr_eq(&before, &store.current().unwrap()));
        let text = metrics_text(&registry);
        assert!(
            text.contains("outrigger_splitter_config_last_reload_successful 0"),
            "{text}"
        );
        assert!(
            text.contains("outrigger_splitter_config_reloads_total{source=\"file\",result=\"rejected\"} 1"),
            "{text}"
        );
        // The rejected layer was not kept: a ConfigMap layer now merges over the last good file.
        store
            .apply(
                Source::ConfigMap,
                json!({"weights": {"stable": 80, "canary": 20}}),
            )
            .unwrap();
        assert_eq!(store.current().unwrap().config.weight_vector(), vec![80, 20]);
    }

    #[tokio::test]
    async fn the_configmap_layer_patches_the_file_and_survives_a_file_change() {
        let (store, _registry) = store();
        store.apply(Source::File, file_layer()).unwrap();
        store
            .apply(
                Source::ConfigMap,
                json!({"weights": {"stable": 50, "canary": 50}}),
            )
            .unwrap();
        let mut file = file_layer();
        file["accessLog"] = json!(false);
        assert_eq!(
            store.apply(Source::File, file).unwrap(),
            Applied::Changed { generation: 3 }
        );
        let active = store.current().unwrap();
        assert_eq!(active.config.weight_vector(), vec![50, 50]);
        assert!(!active.config.access_log);
        let shown = store.source().status_json();
        assert!(shown.contains("\"accessLog\": false"), "{shown}");
    }

    #[tokio::test]
    async fn a_configmap_alone_can_carry_the_whole_document() {
        let (store, _registry) = store();
        let partial = store
            .apply(Source::ConfigMap, json!({"weights": {}}))
            .unwrap_err();
        assert_eq!(partial.category(), "parse", "{partial}");
        store.apply(Source::ConfigMap, file_layer()).unwrap();
        assert_eq!(store.current().unwrap().backends.len(), 2);
    }
}
