//! The document in effect and how a new layer replaces it.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use tokio::sync::watch;

use crate::metrics::ReloadMetrics;
use outrigger_contract::json::merge_patch;

/// The error a validate function returns.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

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

/// Why a layer was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing the configuration at `{path}`: {message}")]
    Parse { path: String, message: String },
    #[error("ConfigMap {reference} has no key {key:?}")]
    MissingKey { reference: String, key: String },
    #[error(transparent)]
    Invalid(BoxError),
}

impl ReloadError {
    /// A fixed category, for metric labels and log fields.
    pub fn category(&self) -> &'static str {
        match self {
            ReloadError::Read { .. } => "read",
            ReloadError::Parse { .. } => "parse",
            ReloadError::MissingKey { .. } => "missing_key",
            ReloadError::Invalid(inner) => match inner.downcast_ref::<ReloadError>() {
                Some(inner) => inner.category(),
                None => "invalid",
            },
        }
    }
}

/// Parses one layer's JSON text.
pub fn parse_layer(text: &[u8]) -> Result<Value, ReloadError> {
    serde_json::from_slice(text).map_err(|error| ReloadError::Parse {
        path: ".".to_owned(),
        message: error.to_string(),
    })
}

/// Reads the merged document as `T`, naming the field path of what does not fit (`routes[2].match`).
pub fn deserialize<T: DeserializeOwned>(value: Value) -> Result<T, ReloadError> {
    serde_path_to_error::deserialize(value).map_err(|error| ReloadError::Parse {
        path: error.path().to_string(),
        message: error.inner().to_string(),
    })
}

/// One accepted document.
#[derive(Debug)]
pub struct Versioned<T> {
    /// 1 for the first document, one more for each change.
    pub generation: u64,
    pub document: T,
    /// The document as JSON (defaults filled in), for `/config`.
    pub json: Value,
}

/// The last layer refused, as `/config` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    pub source: &'static str,
    pub category: &'static str,
    pub error: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

type Validate<T> = Box<dyn Fn(Value) -> Result<T, BoxError> + Send + Sync>;
type OnChange<T> = Box<dyn Fn(&Versioned<T>, Option<&Versioned<T>>) + Send + Sync>;

struct State<T> {
    file: Option<Value>,
    configmap: Option<Value>,
    current: Option<Arc<Versioned<T>>>,
    last_rejection: Option<Rejection>,
    last_successful: bool,
}

/// The document in effect and the layers it was made from.
pub struct ConfigSource<T> {
    state: Mutex<State<T>>,
    validate: Validate<T>,
    on_change: Option<OnChange<T>>,
    metrics: ReloadMetrics,
    sender: watch::Sender<Option<Arc<Versioned<T>>>>,
}

impl<T> std::fmt::Debug for ConfigSource<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSource").finish_non_exhaustive()
    }
}

impl<T> ConfigSource<T>
where
    T: Serialize + PartialEq + Send + Sync + 'static,
{
    /// A source with no document yet; `validate` turns the merged JSON into a document or says
    /// why not.
    pub fn new<F, E>(metrics: ReloadMetrics, validate: F) -> ConfigSource<T>
    where
        F: Fn(Value) -> Result<T, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        ConfigSource {
            state: Mutex::new(State {
                file: None,
                configmap: None,
                current: None,
                last_rejection: None,
                last_successful: true,
            }),
            validate: Box::new(move |value| validate(value).map_err(Into::into)),
            on_change: None,
            metrics,
            sender: watch::channel(None).0,
        }
    }

    /// Runs `hook` with each new document (and the one it replaces) before anyone sees it, in
    /// order, one at a time: for a sidecar that compiles its document for the request path.
    #[must_use]
    pub fn on_change(
        mut self,
        hook: impl Fn(&Versioned<T>, Option<&Versioned<T>>) + Send + Sync + 'static,
    ) -> Self {
        self.on_change = Some(Box::new(hook));
        self
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The document in effect, if any yet.
    pub fn current(&self) -> Option<Arc<Versioned<T>>> {
        self.sender.borrow().clone()
    }

    /// Every new document, as it is accepted.
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Versioned<T>>>> {
        self.sender.subscribe()
    }

    /// Completes once a first document is in effect.
    pub async fn wait_for_first(&self) -> Option<Arc<Versioned<T>>> {
        let mut receiver = self.subscribe();
        let _ = receiver.wait_for(Option::is_some).await;
        self.current()
    }

    /// Replaces one layer, validates the merged document and puts it in effect. On error nothing
    /// changes but the counters and the recorded rejection.
    pub fn apply(&self, source: Source, layer: Value) -> Result<Applied, ReloadError> {
        let mut state = self.lock();
        let (file, configmap) = match source {
            Source::File => (Some(&layer), state.configmap.as_ref()),
            Source::ConfigMap => (state.file.as_ref(), Some(&layer)),
        };
        let mut merged = file
            .cloned()
            .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
        if let Some(patch) = configmap {
            merge_patch(&mut merged, patch);
        }
        let document = match (self.validate)(merged) {
            Ok(document) => document,
            Err(error) => {
                let error = ReloadError::Invalid(error);
                self.rejected(&mut state, source, &error);
                return Err(error);
            }
        };
        match source {
            Source::File => state.file = Some(layer),
            Source::ConfigMap => state.configmap = Some(layer),
        }
        state.last_successful = true;
        let previous = state.current.clone();
        if let Some(previous) = previous.as_ref().filter(|previous| previous.document == document) {
            self.metrics.record(source.as_str(), "unchanged");
            return Ok(Applied::Unchanged {
                generation: previous.generation,
            });
        }
        let generation = previous.as_ref().map_or(1, |previous| previous.generation + 1);
        let json = serde_json::to_value(&document).unwrap_or(Value::Null);
        let next = Arc::new(Versioned {
            generation,
            document,
            json,
        });
        if let Some(hook) = &self.on_change {
            hook(&next, previous.as_deref());
        }
        state.current = Some(next.clone());
        self.metrics.record(source.as_str(), "applied");
        self.metrics
            .generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        self.sender.send_replace(Some(next));
        Ok(Applied::Changed { generation })
    }

    /// Counts a layer that could not even be read or parsed, and remembers why.
    pub fn reject(&self, source: Source, error: &ReloadError) {
        let mut state = self.lock();
        self.rejected(&mut state, source, error);
    }

    fn rejected(&self, state: &mut State<T>, source: Source, error: &ReloadError) {
        self.metrics.record(source.as_str(), "rejected");
        state.last_successful = false;
        state.last_rejection = Some(Rejection {
            source: source.as_str(),
            category: error.category(),
            error: error.to_string(),
            at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
        });
    }

    /// The last layer refused, if any.
    pub fn last_rejection(&self) -> Option<Rejection> {
        self.lock().last_rejection.clone()
    }

    /// What `/config` shows: `{"generation", "config", "lastReloadSuccessful", "lastRejection"}`.
    pub fn status_json(&self) -> String {
        let state = self.lock();
        let status = serde_json::json!({
            "generation": state.current.as_ref().map(|current| current.generation),
            "config": state.current.as_ref().map(|current| &current.json),
            "lastReloadSuccessful": state.last_successful,
            "lastRejection": state.last_rejection,
        });
        serde_json::to_string_pretty(&status).unwrap_or_default()
    }
}

/// Logs the outcome of a reload.
pub fn log_outcome(source: Source, outcome: &Result<Applied, ReloadError>) {
    match outcome {
        Ok(Applied::Changed { generation }) => {
            tracing::info!(
                generation,
                source = source.as_str(),
                "Applied a new configuration."
            );
        }
        Ok(Applied::Unchanged { generation }) => {
            tracing::debug!(generation, source = source.as_str(), "Configuration unchanged.");
        }
        Err(error) => tracing::error!(
            %error,
            category = error.category(),
            source = source.as_str(),
            "Rejected a configuration; the previous one keeps serving."
        ),
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::{encoding::text::encode, registry::Registry};
    use serde::Deserialize;
    use serde_json::json;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Weights {
        stable: u32,
        #[serde(default)]
        canary: u32,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("the weights add up to {0}, not 100")]
    struct NotHundred(u32);

    fn source() -> (ConfigSource<Weights>, Registry) {
        let mut registry = Registry::with_prefix("outrigger_example");
        let metrics = ReloadMetrics::register(&mut registry);
        let source = ConfigSource::new(metrics, |value| -> Result<Weights, BoxError> {
            let weights: Weights = deserialize(value)?;
            match weights.stable + weights.canary {
                100 => Ok(weights),
                other => Err(NotHundred(other).into()),
            }
        });
        (source, registry)
    }

    fn metrics(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    #[tokio::test]
    async fn a_valid_layer_becomes_a_new_generation_and_the_same_one_changes_nothing() {
        let (source, registry) = source();
        let mut documents = source.subscribe();
        assert_eq!(
            source.apply(Source::File, json!({"stable": 100})).unwrap(),
            Applied::Changed { generation: 1 }
        );
        assert_eq!(
            source
                .apply(Source::File, json!({"stable": 100, "canary": 0}))
                .unwrap(),
            Applied::Unchanged { generation: 1 }
        );
        documents.changed().await.unwrap();
        assert_eq!(documents.borrow().as_ref().unwrap().document.stable, 100);
        let text = metrics(&registry);
        assert!(text.contains("outrigger_example_config_generation 1"), "{text}");
        assert!(
            text.contains("outrigger_example_config_reloads_total{source=\"file\",result=\"unchanged\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_invalid_layer_is_rejected_counted_shown_and_the_last_good_document_stays() {
        let (source, registry) = source();
        source
            .apply(Source::File, json!({"stable": 90, "canary": 10}))
            .unwrap();
        let before = source.current().unwrap();
        let error = source
            .apply(Source::ConfigMap, json!({"canary": 50}))
            .unwrap_err();
        assert_eq!(error.to_string(), "the weights add up to 140, not 100");
        assert_eq!(error.category(), "invalid");
        assert!(Arc::ptr_eq(&before, &source.current().unwrap()));
        let text = metrics(&registry);
        assert!(
            text.contains("outrigger_example_config_last_reload_successful 0"),
            "{text}"
        );
        assert!(
            text.contains(
                "outrigger_example_config_reloads_total{source=\"configmap\",result=\"rejected\"} 1"
            ),
            "{text}"
        );
        let status: Value = serde_json::from_str(&source.status_json()).unwrap();
        assert_eq!(status["config"], json!({"stable": 90, "canary": 10}));
        assert_eq!(status["lastReloadSuccessful"], json!(false));
        assert_eq!(status["lastRejection"]["source"], json!("configmap"));
        assert_eq!(
            status["lastRejection"]["error"],
            json!("the weights add up to 140, not 100")
        );

        // The rejected layer was not kept: a later ConfigMap layer merges over the last good file.
        source
            .apply(Source::ConfigMap, json!({"stable": 20, "canary": 80}))
            .unwrap();
        source.apply(Source::File, json!({"stable": 100})).unwrap();
        assert_eq!(
            source.current().unwrap().document,
            Weights {
                stable: 20,
                canary: 80
            }
        );
    }

    #[test]
    fn a_field_that_does_not_fit_is_named_by_its_path() {
        let (source, _registry) = source();
        let error = source.apply(Source::File, json!({"stable": "all"})).unwrap_err();
        assert_eq!(error.category(), "parse");
        assert!(
            error
                .to_string()
                .starts_with("parsing the configuration at `stable`"),
            "{error}"
        );
    }

    #[test]
    fn the_change_hook_sees_each_new_document_with_the_one_it_replaces() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let (source, _registry) = source();
        let source = source.on_change(move |next, previous| {
            record
                .lock()
                .unwrap()
                .push((next.generation, previous.map(|previous| previous.generation)));
        });
        source.apply(Source::File, json!({"stable": 100})).unwrap();
        source.apply(Source::File, json!({"stable": 100})).unwrap();
        source
            .apply(Source::File, json!({"stable": 50, "canary": 50}))
            .unwrap();
        assert_eq!(*seen.lock().unwrap(), [(1, None), (2, Some(1))]);
    }
}
