//! The configuration in effect and how a new one replaces it. Two layers make the document: the
//! file (if any) and the ConfigMap (if any), merged as a JSON merge patch over the file. A new layer
//! is validated as a whole and swapped in atomically; requests in flight keep the generation they
//! started with, so a reload drops nothing. A rejected layer leaves everything as it was.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use serde_json::Value;

use crate::{
    config::{merge_patch, ConfigError, SplitterConfig, SplitterConfigExt},
    metrics::{Metrics, ReloadLabels, RouteLabels},
    routing::Router,
    upstream::{Backend, Resources},
};

/// Where a layer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    File,
    ConfigMap,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::ConfigMap => "configmap",
        }
    }
}

/// What applying a layer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// A new generation is in effect.
    Changed { generation: u64 },
    /// The merged document is the one already in effect.
    Unchanged { generation: u64 },
}

/// One configuration generation, compiled for the request path.
#[derive(Debug)]
pub struct Active {
    pub generation: u64,
    pub config: SplitterConfig,
    /// The document as served on `/config`.
    pub json: String,
    pub router: Router,
    pub backends: Vec<Backend>,
    pub route_matches: Vec<Counter>,
}

/// The configuration in effect and the layers it was made from.
pub struct ConfigStore {
    current: ArcSwapOption<Active>,
    layers: Mutex<Layers>,
    resources: Resources,
    metrics: Metrics,
    changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Layers {
    file: Option<Value>,
    configmap: Option<Value>,
}

impl ConfigStore {
    /// A store for a process with one worker.
    pub fn new(metrics: Metrics) -> ConfigStore {
        ConfigStore::with_workers(metrics, 1)
    }

    /// A store whose connection pools have a slot per worker thread.
    pub fn with_workers(metrics: Metrics, workers: usize) -> ConfigStore {
        ConfigStore {
            current: ArcSwapOption::empty(),
            layers: Mutex::new(Layers::default()),
            resources: Resources::new(workers),
            metrics,
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// The generation in effect, if any yet.
    pub fn current(&self) -> Option<Arc<Active>> {
        self.current.load_full()
    }

    /// Completes once a first configuration is in effect.
    pub async fn wait_for_first(&self) -> Option<Arc<Active>> {
        let mut changed = self.changed.subscribe();
        let _ = changed.wait_for(|generation| *generation > 0).await;
        self.current()
    }

    /// Replaces one layer, validates the merged document and swaps it in. On error nothing changes.
    pub fn apply(&self, source: Source, layer: Value) -> Result<Applied, ConfigError> {
        let result = self.apply_inner(source, layer);
        let outcome = match &result {
            Ok(Applied::Changed { .. }) => "applied",
            Ok(Applied::Unchanged { .. }) => "unchanged",
            Err(_) => "rejected",
        };
        self.metrics
            .config_reloads
            .get_or_create(&ReloadLabels {
                source: source.as_str(),
                result: outcome,
            })
            .inc();
        self.metrics.config_last_reload_ok.set(i64::from(result.is_ok()));
        result
    }

    /// Counts a layer that could not even be read or parsed.
    pub fn record_rejected(&self, source: Source) {
        self.metrics
            .config_reloads
            .get_or_create(&ReloadLabels {
                source: source.as_str(),
                result: "rejected",
            })
            .inc();
        self.metrics.config_last_reload_ok.set(0);
    }

    fn apply_inner(&self, source: Source, layer: Value) -> Result<Applied, ConfigError> {
        // One reload at a time: the file poller and the ConfigMap watcher may race.
        let mut layers = match self.layers.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let (file, configmap) = match source {
            Source::File => (Some(&layer), layers.configmap.as_ref()),
            Source::ConfigMap => (layers.file.as_ref(), Some(&layer)),
        };
        let mut merged = file.cloned().unwrap_or_else(|| Value::Object(Default::default()));
        if let Some(patch) = configmap {
            merge_patch(&mut merged, patch);
        }
        let config = SplitterConfig::from_value(merged)?;
        match source {
            Source::File => layers.file = Some(layer),
            Source::ConfigMap => layers.configmap = Some(layer),
        }
        let previous = self.current.load_full();
        if let Some(previous) = previous.as_ref().filter(|previous| previous.config == config) {
            return Ok(Applied::Unchanged {
                generation: previous.generation,
            });
        }
        if let Some(previous) = &previous {
            warn_about_restart_only_fields(&previous.config, &config);
        }
        let generation = previous.as_ref().map_or(1, |previous| previous.generation + 1);
        let active = self.compile(generation, config);
        self.current.store(Some(Arc::new(active)));
        self.metrics
            .config_generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.changed.send_replace(generation);
        Ok(Applied::Changed { generation })
    }

    fn compile(&self, generation: u64, config: SplitterConfig) -> Active {
        let virtual_nodes = config
            .stickiness
            .as_ref()
            .map_or(160, |sticky| sticky.virtual_nodes);
        let backends = self
            .resources
            .backends(&config.backends, virtual_nodes, &self.metrics);
        let route_matches = config
            .routes
            .iter()
            .map(|route| {
                self.metrics.route_matches.get_or_create_owned(&RouteLabels {
                    route: route.name.clone(),
                })
            })
            .collect();
        let json = serde_json::to_string_pretty(&config).unwrap_or_default();
        Active {
            generation,
            router: Router::new(&config),
            backends,
            route_matches,
            json,
            config,
        }
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
        assert!(active.json.contains("\"accessLog\": false"));
    }

    #[tokio::test]
    async fn a_configmap_alone_can_carry_the_whole_document() {
        let (store, _registry) = store();
        assert!(store.apply(Source::ConfigMap, json!({"weights": {}})).is_err());
        store.apply(Source::ConfigMap, file_layer()).unwrap();
        assert_eq!(store.current().unwrap().backends.len(), 2);
    }
}
