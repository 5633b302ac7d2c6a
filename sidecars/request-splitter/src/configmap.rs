//! The configuration from a Kubernetes ConfigMap: one key holds a JSON document (a whole
//! configuration, or a merge patch over the file, such as `{"weights": {"stable": 80, "canary": 20}}`
//! written by the operator during a rollout). The watch covers one object by name; every version of
//! it goes through the same validation and atomic swap as the file.

use std::{str::FromStr, sync::Arc};

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api,
};
use tokio::sync::watch;

use crate::{
    config::{parse_value, ConfigError},
    reload::log_outcome,
    store::{Applied, ConfigStore, Source},
};

/// Why the ConfigMap could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigMapError {
    #[error("a ConfigMap is named namespace/name, not {0:?}")]
    Reference(String),
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("ConfigMap {reference} has no key {key:?}")]
    MissingKey { reference: ConfigMapRef, key: String },
    #[error("ConfigMap {reference} key {key:?}: {source}")]
    Config {
        reference: ConfigMapRef,
        key: String,
        source: ConfigError,
    },
}

/// `namespace/name` of a ConfigMap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMapRef {
    pub namespace: String,
    pub name: String,
}

impl FromStr for ConfigMapRef {
    type Err = ConfigMapError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(ConfigMapRef {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(ConfigMapError::Reference(text.to_owned())),
        }
    }
}

impl std::fmt::Display for ConfigMapRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Applies one version of the ConfigMap.
pub fn apply_object(
    store: &ConfigStore,
    reference: &ConfigMapRef,
    key: &str,
    object: &ConfigMap,
) -> Result<Applied, ConfigMapError> {
    let Some(text) = object.data.as_ref().and_then(|data| data.get(key)) else {
        store.record_rejected(Source::ConfigMap);
        return Err(ConfigMapError::MissingKey {
            reference: reference.clone(),
            key: key.to_owned(),
        });
    };
    let config_error = |source| ConfigMapError::Config {
        reference: reference.clone(),
        key: key.to_owned(),
        source,
    };
    let value = parse_value(text.as_bytes()).map_err(|source| {
        store.record_rejected(Source::ConfigMap);
        config_error(source)
    })?;
    store.apply(Source::ConfigMap, value).map_err(config_error)
}

/// Connects to the API server (in-cluster or from the kubeconfig).
pub async fn client() -> Result<kube::Client, ConfigMapError> {
    kube::Client::try_default().await.map_err(ConfigMapError::Client)
}

/// Watches the ConfigMap until `shutdown`, applying every version. Errors of the watch are retried
/// with backoff by the watcher; the current configuration keeps serving meanwhile.
pub async fn watch(
    client: kube::Client,
    store: Arc<ConfigStore>,
    reference: ConfigMapRef,
    key: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &reference.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", reference.name));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match event {
            None => return,
            Some(Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object))) => {
                match apply_object(&store, &reference, &key, &object) {
                    Ok(applied) => log_outcome(Source::ConfigMap, &Ok(applied)),
                    Err(error) => tracing::error!(
                        %error,
                        configmap = %reference,
                        "Rejected a configuration; the previous one keeps serving."
                    ),
                }
            }
            Some(Ok(watcher::Event::Delete(_))) => tracing::warn!(
                configmap = %reference,
                "The ConfigMap was deleted; the current configuration keeps serving."
            ),
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => {}
            Some(Err(error)) => {
                tracing::warn!(%error, configmap = %reference, "ConfigMap watch failed; retrying.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use prometheus_client::registry::Registry;
    use serde_json::json;

    use super::*;
    use crate::metrics::Metrics;

    fn configmap(key: &str, value: &str) -> ConfigMap {
        ConfigMap {
            data: Some(BTreeMap::from([(key.to_owned(), value.to_owned())])),
            ..ConfigMap::default()
        }
    }

    fn store_with_file() -> ConfigStore {
        let store = ConfigStore::new(Metrics::register(&mut Registry::default()));
        store
            .apply(
                Source::File,
                json!({
                    "backends": [
                        {"name": "stable", "endpoints": ["127.0.0.1:1"]},
                        {"name": "canary", "endpoints": ["127.0.0.1:2"]}
                    ],
                    "weights": {"stable": 100}
                }),
            )
            .unwrap();
        store
    }

    #[test]
    fn references_are_namespace_slash_name() {
        let reference: ConfigMapRef = "shop/checkout-outrigger".parse().unwrap();
        assert_eq!(reference.to_string(), "shop/checkout-outrigger");
        for bad in ["shop", "/x", "x/", "a/b/c"] {
            assert!(bad.parse::<ConfigMapRef>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn weights_written_by_the_operator_patch_the_file_configuration() {
        let store = store_with_file();
        let reference: ConfigMapRef = "shop/cm".parse().unwrap();
        let object = configmap(
            "request-splitter.json",
            r#"{"weights": {"stable": 80, "canary": 20}}"#,
        );
        let applied = apply_object(&store, &reference, "request-splitter.json", &object).unwrap();
        assert_eq!(applied, Applied::Changed { generation: 2 });
        assert_eq!(store.current().unwrap().config.weight_vector(), vec![80, 20]);
    }

    #[tokio::test]
    async fn a_bad_configmap_is_rejected_with_its_name_and_the_previous_configuration_stays() {
        let store = store_with_file();
        let reference: ConfigMapRef = "shop/cm".parse().unwrap();
        let missing = apply_object(&store, &reference, "other", &configmap("k", "{}")).unwrap_err();
        assert_eq!(missing.to_string(), "ConfigMap shop/cm has no key \"other\"");
        let invalid = apply_object(
            &store,
            &reference,
            "k",
            &configmap("k", r#"{"weights": {"stable": 70}}"#),
        )
        .unwrap_err();
        assert!(
            invalid.to_string().contains("weights: the weights add up to 70"),
            "{invalid}"
        );
        let garbled = apply_object(&store, &reference, "k", &configmap("k", "{")).unwrap_err();
        assert!(garbled.to_string().contains("parsing"), "{garbled}");
        assert_eq!(store.current().unwrap().generation, 1);
    }
}
