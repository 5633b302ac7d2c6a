//! Starting a sidecar's config layers in one call: the file read once (so that a broken file fails
//! start-up), then polled; the ConfigMap key watched. What a sidecar's `run` does with the
//! [`ConfigSourceSettings`](crate::args::ConfigSourceSettings) its flags resolved to.

use std::{path::PathBuf, sync::Arc, time::Duration};

use serde::Serialize;
use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
};

use super::{
    configmap::ConfigMapLayer,
    file::FileLayer,
    source::{log_outcome, ConfigSource, ReloadError, Source},
};
use crate::{
    apiserver::{ApiClient, ObjectRef},
    metrics::WatchMetrics,
};

/// The ConfigMap key to follow, and the client to watch it with.
#[derive(Debug, Clone)]
pub struct ConfigMapSpec {
    pub reference: ObjectRef,
    pub key: String,
    pub client: ApiClient,
    /// Where the watch counts its errors and relists.
    pub metrics: WatchMetrics,
}

/// The layers to start.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    pub file: Option<PathBuf>,
    pub configmap: Option<ConfigMapSpec>,
    pub poll_interval: Duration,
}

/// Why the layers could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("neither a configuration file nor a ConfigMap was given")]
    NoSource,
    #[error("the configuration file is not usable: {0}")]
    InitialFile(#[source] ReloadError),
}

/// Started layers.
pub struct Started<T> {
    /// The file layer, to reload on demand.
    pub file: Option<FileLayer<T>>,
    /// The poller and the watch; they end when `shutdown` turns true.
    pub tasks: Vec<JoinHandle<()>>,
}

/// Reads the file once and starts its poller (`reload_now` forces a read, as SIGHUP does) and the
/// ConfigMap watch. A document is in effect on return when there is a file; with only a ConfigMap,
/// wait for it with [`ConfigSource::wait_for_first`].
pub async fn start<T>(
    source: &Arc<ConfigSource<T>>,
    options: LayerOptions,
    reload_now: Arc<Notify>,
    shutdown: watch::Receiver<bool>,
) -> Result<Started<T>, StartError>
where
    T: Serialize + PartialEq + Send + Sync + 'static,
{
    let LayerOptions {
        file,
        configmap,
        poll_interval,
    } = options;
    if file.is_none() && configmap.is_none() {
        return Err(StartError::NoSource);
    }
    let mut tasks = Vec::new();
    let file = match file {
        Some(path) => {
            let layer = FileLayer::new(source.clone(), path);
            let (fingerprint, outcome) = layer.reload().await;
            log_outcome(Source::File, &outcome);
            outcome.map_err(StartError::InitialFile)?;
            tasks.push(tokio::spawn(layer.clone().watch(
                fingerprint,
                poll_interval,
                reload_now,
                shutdown.clone(),
            )));
            Some(layer)
        }
        None => None,
    };
    if let Some(ConfigMapSpec {
        reference,
        key,
        client,
        metrics,
    }) = configmap
    {
        tracing::info!(api_server = %client.authority(), "Reaching the Kubernetes API.");
        let layer = ConfigMapLayer::new(source.clone(), reference, key).with_watch_metrics(metrics);
        tasks.push(tokio::spawn(layer.watch(client, shutdown)));
    }
    Ok(Started { file, tasks })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::metrics::ReloadMetrics;

    fn source() -> Arc<ConfigSource<Value>> {
        Arc::new(ConfigSource::new(ReloadMetrics::default(), |value: Value| {
            if value.get("port").is_some() {
                Ok(value)
            } else {
                Err(ReloadError::Parse {
                    path: "port".to_owned(),
                    message: "missing".to_owned(),
                })
            }
        }))
    }

    fn file(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!(
            "runtime-layers-{}-{}.json",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test]
    async fn a_file_is_in_effect_on_return_and_reloads_on_demand() {
        let path = file(r#"{"port": 1}"#);
        let source = source();
        let (stop, stopped) = watch::channel(false);
        let reload_now = Arc::new(Notify::new());
        let options = LayerOptions {
            file: Some(path.clone()),
            configmap: None,
            poll_interval: Duration::from_secs(3_600),
        };
        let started = start(&source, options, reload_now.clone(), stopped)
            .await
            .unwrap();
        assert_eq!(source.current().unwrap().document, json!({"port": 1}));
        let mut documents = source.subscribe();
        std::fs::write(&path, r#"{"port": 2}"#).unwrap();
        reload_now.notify_one();
        tokio::time::timeout(Duration::from_secs(30), documents.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(source.current().unwrap().generation, 2);
        let _ = stop.send(true);
        for task in started.tasks {
            task.await.unwrap();
        }
        let _ = std::fs::remove_file(path);
    }

    #[tokio::test]
    async fn no_source_and_an_unusable_file_fail_start_up() {
        let (_stop, stopped) = watch::channel(false);
        let none = LayerOptions {
            file: None,
            configmap: None,
            poll_interval: Duration::from_secs(1),
        };
        assert!(matches!(
            start(&source(), none, Arc::default(), stopped.clone()).await,
            Err(StartError::NoSource)
        ));
        let broken = LayerOptions {
            file: Some(file(r#"{"host": "x"}"#)),
            configmap: None,
            poll_interval: Duration::from_secs(1),
        };
        let error = start(&source(), broken, Arc::default(), stopped)
            .await
            .err()
            .unwrap();
        assert!(
            error
                .to_string()
                .starts_with("the configuration file is not usable"),
            "{error}"
        );
    }
}
