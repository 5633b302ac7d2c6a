//! The ConfigMap layer: one key of one ConfigMap holds a JSON document (a whole configuration, or
//! a merge patch over the file, such as `{"weights": {"stable": 80, "canary": 20}}` written by the
//! operator during a rollout). Every version the watch reports goes through the same validation as
//! the file; a deleted ConfigMap leaves the document in effect.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

use super::source::{log_outcome, parse_layer, Applied, ConfigSource, ReloadError, Source};
use crate::{
    apiserver::{Api, ConfigMap, Event, ObjectRef, Selector, Watcher},
    metrics::WatchMetrics,
};

/// The ConfigMap key a [`ConfigSource`] follows.
pub struct ConfigMapLayer<T> {
    source: Arc<ConfigSource<T>>,
    reference: ObjectRef,
    key: String,
    metrics: WatchMetrics,
}

impl<T> ConfigMapLayer<T>
where
    T: Serialize + PartialEq + Send + Sync + 'static,
{
    pub fn new(source: Arc<ConfigSource<T>>, reference: ObjectRef, key: String) -> ConfigMapLayer<T> {
        ConfigMapLayer {
            source,
            reference,
            key,
            metrics: WatchMetrics::default(),
        }
    }

    /// Counts the watch's errors and relists into `metrics`.
    #[must_use]
    pub fn with_watch_metrics(mut self, metrics: WatchMetrics) -> ConfigMapLayer<T> {
        self.metrics = metrics;
        self
    }

    /// Applies one version of the ConfigMap.
    pub fn apply(&self, object: &ConfigMap) -> Result<Applied, ReloadError> {
        let layer = match object.data.as_ref().and_then(|data| data.get(&self.key)) {
            Some(text) => parse_layer(text.as_bytes()),
            None => Err(ReloadError::MissingKey {
                reference: self.reference.to_string(),
                key: self.key.clone(),
            }),
        };
        match layer {
            Ok(layer) => self.source.apply(Source::ConfigMap, layer),
            Err(error) => {
                self.source.reject(Source::ConfigMap, &error);
                Err(error)
            }
        }
    }

    fn apply_and_log(&self, object: &ConfigMap) {
        let outcome = self.apply(object);
        if let Err(error) = &outcome {
            tracing::error!(
                %error,
                category = error.category(),
                configmap = %self.reference,
                key = %self.key,
                "Rejected a configuration; the previous one keeps serving."
            );
        } else {
            log_outcome(Source::ConfigMap, &outcome);
        }
    }

    /// Handles one event of the watch.
    pub fn handle(&self, event: Event<ConfigMap>) {
        match event {
            Event::Restarted(objects) => {
                if let Some(object) = objects.first() {
                    self.apply_and_log(object);
                }
            }
            Event::Applied(object) => self.apply_and_log(&object),
            Event::Deleted(_) => tracing::warn!(
                configmap = %self.reference,
                "The ConfigMap was deleted; the current configuration keeps serving."
            ),
        }
    }

    /// Watches the ConfigMap until `shutdown`, applying every version.
    pub async fn watch(self, client: crate::apiserver::ApiClient, shutdown: watch::Receiver<bool>) {
        let api = Api::configmaps(client, &self.reference.namespace);
        let watcher = Watcher::new(api, Selector::Named(self.reference.name.clone()))
            .with_metrics(self.metrics.clone());
        tracing::info!(
            configmap = %self.reference,
            key = %self.key,
            "Watching a ConfigMap for configuration."
        );
        watcher.run(|event| self.handle(event), shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{json, Value};

    use super::*;
    use crate::metrics::ReloadMetrics;

    fn configmap(key: &str, value: &str) -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
            ..ConfigMap::default()
        }
    }

    fn layer() -> ConfigMapLayer<Value> {
        let source = Arc::new(ConfigSource::new(
            ReloadMetrics::default(),
            |value: Value| match value.pointer("/weights/stable") {
                Some(_) => Ok(value),
                None => Err(ReloadError::Parse {
                    path: "weights.stable".to_owned(),
                    message: "missing".to_owned(),
                }),
            },
        ));
        source
            .apply(Source::File, json!({"weights": {"stable": 100}}))
            .unwrap();
        ConfigMapLayer::new(source, "shop/cm".parse().unwrap(), "k".to_owned())
    }

    #[test]
    fn the_key_patches_the_file_layer() {
        let layer = layer();
        let applied = layer
            .apply(&configmap("k", r#"{"weights": {"stable": 80, "canary": 20}}"#))
            .unwrap();
        assert_eq!(applied, Applied::Changed { generation: 2 });
        assert_eq!(
            layer.source.current().unwrap().document,
            json!({"weights": {"stable": 80, "canary": 20}})
        );
    }

    #[test]
    fn a_missing_key_or_garbled_json_is_rejected_and_the_previous_document_stays() {
        let layer = layer();
        let missing = layer.apply(&configmap("other", "{}")).unwrap_err();
        assert_eq!(missing.to_string(), "ConfigMap shop/cm has no key \"k\"");
        let garbled = layer.apply(&configmap("k", "{")).unwrap_err();
        assert!(garbled.to_string().contains("parsing"), "{garbled}");
        let invalid = layer.apply(&configmap("k", r#"{"weights": null}"#)).unwrap_err();
        assert_eq!(invalid.category(), "parse");
        layer.handle(Event::Deleted(configmap("k", "{}")));
        assert_eq!(layer.source.current().unwrap().generation, 1);
    }
}
