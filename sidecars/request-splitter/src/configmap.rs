//! The configuration from a Kubernetes ConfigMap: one key holds a JSON document (a whole
//! configuration, or a merge patch over the file, such as `{"weights": {"stable": 80, "canary": 20}}`
//! written by the operator during a rollout). The watch covers one object by name; every version of
//! it goes through the same validation and atomic swap as the file.

use std::{collections::BTreeMap, str::FromStr, sync::Arc, time::Duration};

use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::{sync::watch, time::Instant};

use crate::{
    apiserver::{
        ApiClient, ApiError, ApiServerOptions, DecodeError, EventDecoder, ObjectMeta, Status, WatchEvent,
    },
    config::{parse_value, ConfigError},
    reload::log_outcome,
    rng,
    store::{Applied, ConfigStore, Source},
};

/// How long the API server keeps one watch open before it ends it (and the splitter starts the
/// next from the last resource version seen).
const WATCH_TIMEOUT_SECONDS: u64 = 290;
/// A watch the server has not ended this long after it started is taken for a dead connection.
const WATCH_DEADLINE: Duration = Duration::from_secs(WATCH_TIMEOUT_SECONDS + 30);
/// A watch that lasted this long worked; the next one starts at once, without backoff.
const HEALTHY_WATCH: Duration = Duration::from_secs(5);
/// Backoff between failed attempts: doubling from the first to the last, with jitter.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_LAST: Duration = Duration::from_secs(30);

/// Why the ConfigMap could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigMapError {
    #[error("a ConfigMap is named namespace/name, not {0:?}")]
    Reference(String),
    #[error("connecting to the Kubernetes API: {0}")]
    Client(#[source] ApiError),
    #[error("ConfigMap {reference}: {source}")]
    Api {
        reference: ConfigMapRef,
        source: ApiError,
    },
    #[error("ConfigMap {reference}: decoding the watch stream: {source}")]
    Stream {
        reference: ConfigMapRef,
        source: DecodeError,
    },
    #[error("ConfigMap {reference}: the watch connection broke: {source}")]
    Transport {
        reference: ConfigMapRef,
        source: hyper::Error,
    },
    #[error("ConfigMap {reference}: the API server did not end the watch within {timeout:?}")]
    Overdue {
        reference: ConfigMapRef,
        timeout: Duration,
    },
    #[error("ConfigMap {reference}: the watch reported {status}")]
    WatchError { reference: ConfigMapRef, status: Status },
    #[error("ConfigMap {reference}: resource version {version:?} is too old")]
    Gone {
        reference: ConfigMapRef,
        version: String,
    },
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

/// The fields of a ConfigMap the splitter reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ConfigMap {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: Option<BTreeMap<String, String>>,
}

impl ConfigMapRef {
    /// Path of the object.
    pub fn object_path(&self) -> String {
        format!(
            "/api/v1/namespaces/{}/configmaps/{}",
            encode(&self.namespace),
            encode(&self.name)
        )
    }

    /// Path and query of a watch on the object, from `version` (the current state first when
    /// `None`).
    pub fn watch_path(&self, version: Option<&str>) -> String {
        let mut path = format!(
            "/api/v1/namespaces/{}/configmaps?fieldSelector=metadata.name%3D{}&watch=1\
             &allowWatchBookmarks=true&timeoutSeconds={WATCH_TIMEOUT_SECONDS}",
            encode(&self.namespace),
            encode(&self.name)
        );
        if let Some(version) = version {
            path.push_str("&resourceVersion=");
            path.push_str(&encode(version));
        }
        path
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
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

/// A client for the API server: in-cluster by default, or as `options` say.
pub fn client(options: &ApiServerOptions) -> Result<ApiClient, ConfigMapError> {
    ApiClient::new(options).map_err(ConfigMapError::Client)
}

/// Watches the ConfigMap until `shutdown`, applying every version: reads the object, then watches
/// it from the version read. The watch is started again from the last version seen when the server
/// ends it; when that version is too old (`410 Gone`), the object is read again. Failures are
/// retried with backoff; the current configuration keeps serving meanwhile, and also when the
/// ConfigMap is deleted.
pub async fn watch(
    client: ApiClient,
    store: Arc<ConfigStore>,
    reference: ConfigMapRef,
    key: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let watcher = Watcher {
        client,
        store,
        reference,
        key,
    };
    tokio::select! {
        () = watcher.run() => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
}

struct Watcher {
    client: ApiClient,
    store: Arc<ConfigStore>,
    reference: ConfigMapRef,
    key: String,
}

impl Watcher {
    async fn run(&self) {
        let mut backoff = Backoff::default();
        loop {
            let mut version = match self.read().await {
                Ok(version) => version,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        configmap = %self.reference,
                        "Reading the ConfigMap failed; retrying."
                    );
                    backoff.wait().await;
                    continue;
                }
            };
            loop {
                let started = Instant::now();
                let outcome = self.watch_once(&mut version).await;
                if started.elapsed() >= HEALTHY_WATCH {
                    backoff.reset();
                }
                match outcome {
                    Ok(healthy) => {
                        tracing::debug!(
                            configmap = %self.reference,
                            "The ConfigMap watch ended; watching again."
                        );
                        if healthy {
                            backoff.reset();
                        } else {
                            backoff.wait().await;
                        }
                    }
                    Err(error @ ConfigMapError::Gone { .. }) => {
                        tracing::info!(%error, configmap = %self.reference, "Reading the ConfigMap again.");
                        backoff.wait().await;
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(
                            %error,
                            configmap = %self.reference,
                            "ConfigMap watch failed; retrying."
                        );
                        backoff.wait().await;
                    }
                }
            }
        }
    }

    /// Reads the object and applies it; returns its resource version (`None` when it does not
    /// exist).
    async fn read(&self) -> Result<Option<String>, ConfigMapError> {
        let object = self
            .client
            .get::<ConfigMap>(&self.reference.object_path())
            .await
            .map_err(|source| ConfigMapError::Api {
                reference: self.reference.clone(),
                source,
            })?;
        match object {
            Some(object) => {
                self.apply(&object);
                Ok(object.metadata.resource_version)
            }
            None => {
                tracing::warn!(
                    configmap = %self.reference,
                    "The ConfigMap does not exist; watching for it to be created."
                );
                Ok(None)
            }
        }
    }

    /// Runs one watch until the server ends it, applying what it reports and advancing `version`.
    /// Returns whether it delivered anything.
    async fn watch_once(&self, version: &mut Option<String>) -> Result<bool, ConfigMapError> {
        let reference = &self.reference;
        let mut body = self
            .client
            .watch(&reference.watch_path(version.as_deref()))
            .await
            .map_err(|source| {
                if source.is_gone() {
                    ConfigMapError::Gone {
                        reference: reference.clone(),
                        version: version.clone().unwrap_or_default(),
                    }
                } else {
                    ConfigMapError::Api {
                        reference: reference.clone(),
                        source,
                    }
                }
            })?;
        let deadline = Instant::now() + WATCH_DEADLINE;
        let mut decoder = EventDecoder::default();
        let mut delivered = false;
        loop {
            let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) => {
                    return Err(ConfigMapError::Overdue {
                        reference: reference.clone(),
                        timeout: WATCH_DEADLINE,
                    })
                }
                Ok(None) => {
                    decoder.finish().map_err(|source| ConfigMapError::Stream {
                        reference: reference.clone(),
                        source,
                    })?;
                    return Ok(delivered);
                }
                Ok(Some(Err(source))) => {
                    return Err(ConfigMapError::Transport {
                        reference: reference.clone(),
                        source,
                    })
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            decoder.push(&data);
            while let Some(event) =
                decoder
                    .next_event::<ConfigMap>()
                    .map_err(|source| ConfigMapError::Stream {
                        reference: reference.clone(),
                        source,
                    })?
            {
                delivered = true;
                self.handle(event, version)?;
            }
        }
    }

    fn handle(
        &self,
        event: WatchEvent<ConfigMap>,
        version: &mut Option<String>,
    ) -> Result<(), ConfigMapError> {
        let mut advance = |metadata: &ObjectMeta| {
            if let Some(seen) = &metadata.resource_version {
                version.clone_from(&Some(seen.clone()));
            }
        };
        match event {
            WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                advance(&object.metadata);
                self.apply(&object);
            }
            WatchEvent::Deleted(object) => {
                advance(&object.metadata);
                tracing::warn!(
                    configmap = %self.reference,
                    "The ConfigMap was deleted; the current configuration keeps serving."
                );
            }
            WatchEvent::Bookmark(bookmark) => advance(&bookmark.metadata),
            WatchEvent::Error(status) if status.is_gone() => {
                return Err(ConfigMapError::Gone {
                    reference: self.reference.clone(),
                    version: version.clone().unwrap_or_default(),
                })
            }
            WatchEvent::Error(status) => {
                return Err(ConfigMapError::WatchError {
                    reference: self.reference.clone(),
                    status,
                })
            }
        }
        Ok(())
    }

    fn apply(&self, object: &ConfigMap) {
        match apply_object(&self.store, &self.reference, &self.key, object) {
            Ok(applied) => log_outcome(Source::ConfigMap, &Ok(applied)),
            Err(error) => tracing::error!(
                %error,
                configmap = %self.reference,
                "Rejected a configuration; the previous one keeps serving."
            ),
        }
    }
}

/// Exponential backoff with jitter: each wait is between half and all of the current step.
#[derive(Debug)]
struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { step: BACKOFF_FIRST }
    }
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_LAST);
        let half = step / 2;
        let jitter = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rng::below(jitter.saturating_add(1)))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    fn reset(&mut self) {
        self.step = BACKOFF_FIRST;
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

    #[test]
    fn paths_name_the_object_and_watch_it_by_field_selector_from_a_version() {
        let reference: ConfigMapRef = "shop/checkout-splitter".parse().unwrap();
        assert_eq!(
            reference.object_path(),
            "/api/v1/namespaces/shop/configmaps/checkout-splitter"
        );
        assert_eq!(
            reference.watch_path(Some("4711")),
            "/api/v1/namespaces/shop/configmaps?fieldSelector=metadata.name%3Dcheckout-splitter\
             &watch=1&allowWatchBookmarks=true&timeoutSeconds=290&resourceVersion=4711"
        );
        assert!(!reference.watch_path(None).contains("resourceVersion"));
        let odd: ConfigMapRef = "a b/c&d".parse().unwrap();
        assert_eq!(odd.object_path(), "/api/v1/namespaces/a%20b/configmaps/c%26d");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let delays: Vec<_> = (0..12).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= BACKOFF_FIRST / 2 && delays[0] <= BACKOFF_FIRST);
        assert!(delays[3] >= BACKOFF_FIRST * 4 && delays[3] <= BACKOFF_FIRST * 8);
        assert!(delays.iter().all(|delay| *delay <= BACKOFF_LAST));
        assert!(delays[11] >= BACKOFF_LAST / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= BACKOFF_FIRST);
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
