//! The configuration file: read every poll interval (and at once when asked, on SIGHUP) and applied
//! when its bytes changed. Polling rather than inotify, because a ConfigMap volume is updated by
//! swapping a symlinked directory, which file watches easily miss.
//!
//! Replace the file by writing a new one beside it and renaming it over the old one (what a
//! ConfigMap volume does). A file rewritten in place can be read half-written; a parse failure is
//! therefore read once more after [`PARSE_RETRY`] before it counts as a rejection.

use std::{
    future::Future,
    hash::{DefaultHasher, Hasher},
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use serde::Serialize;
use tokio::sync::{watch, Notify};

use super::source::{log_outcome, parse_layer, Applied, ConfigSource, ReloadError, Source};

/// Wait before reading a file again that did not parse: a writer rewriting it in place is done by
/// then.
pub const PARSE_RETRY: Duration = Duration::from_millis(150);

/// Serializes reads of the file: without it, a reader holding an older version could apply it
/// after another reader applied a newer one.
pub type FileLock = Arc<tokio::sync::Mutex<()>>;

/// Reads a file's bytes (swapped out in tests).
pub type ReadFile =
    Arc<dyn Fn(PathBuf) -> Pin<Box<dyn Future<Output = io::Result<Vec<u8>>> + Send>> + Send + Sync>;

fn read_from_disk() -> ReadFile {
    Arc::new(|path| Box::pin(async move { tokio::fs::read(path).await }))
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    hasher.finish()
}

/// The file layer of a [`ConfigSource`].
pub struct FileLayer<T> {
    source: Arc<ConfigSource<T>>,
    path: PathBuf,
    lock: FileLock,
    read: ReadFile,
    parse_retry: Duration,
}

impl<T> Clone for FileLayer<T> {
    fn clone(&self) -> Self {
        FileLayer {
            source: self.source.clone(),
            path: self.path.clone(),
            lock: self.lock.clone(),
            read: self.read.clone(),
            parse_retry: self.parse_retry,
        }
    }
}

/// What one poll saw.
#[derive(Debug)]
pub enum Polled {
    /// The bytes are the ones applied last.
    Same,
    /// The file could not be read, as on the poll before: already counted and logged.
    StillUnreadable,
    /// The file was read (or failed to be, for the first time) and this came of it.
    Reloaded(Result<Applied, ReloadError>),
}

impl<T> FileLayer<T>
where
    T: Serialize + PartialEq + Send + Sync + 'static,
{
    pub fn new(source: Arc<ConfigSource<T>>, path: PathBuf) -> FileLayer<T> {
        FileLayer {
            source,
            path,
            lock: FileLock::default(),
            read: read_from_disk(),
            parse_retry: PARSE_RETRY,
        }
    }

    /// Reads through `read` instead of the disk.
    #[must_use]
    pub fn with_reader(mut self, read: ReadFile) -> FileLayer<T> {
        self.read = read;
        self
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn read(&self) -> Result<Vec<u8>, ReloadError> {
        (self.read)(self.path.clone())
            .await
            .map_err(|source| ReloadError::Read {
                path: self.path.clone(),
                source,
            })
    }

    /// Parses the bytes read (after a parse failure, reads once more after [`PARSE_RETRY`]),
    /// returning the fingerprint of the bytes parsed and the layer.
    async fn layer_of(&self, bytes: Vec<u8>) -> (Option<u64>, Result<serde_json::Value, ReloadError>) {
        match parse_layer(&bytes) {
            Ok(layer) => (Some(fingerprint(&bytes)), Ok(layer)),
            Err(first) => {
                tracing::debug!(error = %first, path = %self.path.display(), "The configuration file did not parse; reading it once more.");
                tokio::time::sleep(self.parse_retry).await;
                match self.read().await {
                    Ok(bytes) => (Some(fingerprint(&bytes)), parse_layer(&bytes)),
                    Err(error) => (None, Err(error)),
                }
            }
        }
    }

    fn apply(&self, layer: Result<serde_json::Value, ReloadError>) -> Result<Applied, ReloadError> {
        match layer {
            Ok(layer) => self.source.apply(Source::File, layer),
            Err(error) => {
                self.source.reject(Source::File, &error);
                Err(error)
            }
        }
    }

    /// Reads the file and applies it now, whatever was applied before. Returns the fingerprint of
    /// the bytes read, for [`FileLayer::poll`] to start from.
    pub async fn reload(&self) -> (Option<u64>, Result<Applied, ReloadError>) {
        let _serialized = self.lock.lock().await;
        let (fingerprint, layer) = match self.read().await {
            Ok(bytes) => self.layer_of(bytes).await,
            Err(error) => (None, Err(error)),
        };
        (fingerprint, self.apply(layer))
    }

    /// One poll: applies the file when its bytes differ from `last_seen`. A file that cannot be
    /// read is counted as a rejected reload once (until it can be read again), and is applied again
    /// when it comes back, so that `config_last_reload_successful` recovers.
    pub async fn poll(&self, last_seen: &mut Option<u64>, unreadable: &mut Option<io::ErrorKind>) -> Polled {
        let _serialized = self.lock.lock().await;
        let (fingerprint, layer) = match self.read().await {
            // An unchanged file is not parsed again.
            Ok(bytes) if *last_seen == Some(fingerprint(&bytes)) => {
                *unreadable = None;
                return Polled::Same;
            }
            Ok(bytes) => self.layer_of(bytes).await,
            Err(error) => (None, Err(error)),
        };
        if let Err(ReloadError::Read { source, .. }) = &layer {
            if *unreadable == Some(source.kind()) {
                return Polled::StillUnreadable;
            }
            *unreadable = Some(source.kind());
            *last_seen = None;
            // During a ConfigMap volume update the file may briefly be missing: a warning, the
            // document in effect keeps serving.
            tracing::warn!(error = %source, path = %self.path.display(), "Cannot read the configuration file; the current configuration keeps serving.");
            let outcome = self.apply(layer);
            return Polled::Reloaded(outcome);
        }
        *unreadable = None;
        if fingerprint.is_some() && *last_seen == fingerprint {
            return Polled::Same;
        }
        *last_seen = fingerprint;
        let outcome = self.apply(layer);
        log_outcome(Source::File, &outcome);
        Polled::Reloaded(outcome)
    }

    /// Polls every `interval` until `shutdown`, starting from the fingerprint of the bytes applied
    /// last; `now` forces a reload (SIGHUP).
    pub async fn watch(
        self,
        mut last_seen: Option<u64>,
        interval: Duration,
        now: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut unreadable = None;
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = now.notified() => last_seen = None,
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            self.poll(&mut last_seen, &mut unreadable).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::VecDeque, sync::Mutex};

    use prometheus_client::{encoding::text::encode, registry::Registry};
    use serde_json::Value;

    use super::*;
    use crate::metrics::ReloadMetrics;

    /// A file whose successive reads return the scripted answers (the last one repeats).
    fn scripted(reads: Vec<io::Result<&'static str>>) -> ReadFile {
        let reads = Arc::new(Mutex::new(VecDeque::from(reads)));
        Arc::new(move |_path| {
            let mut reads = reads.lock().unwrap();
            let next = if reads.len() > 1 { reads.pop_front() } else { None };
            let answer = match next.as_ref().or(reads.front()) {
                Some(Ok(text)) => Ok(text.as_bytes().to_vec()),
                Some(Err(error)) => Err(io::Error::new(error.kind(), error.to_string())),
                None => Err(io::ErrorKind::NotFound.into()),
            };
            Box::pin(async move { answer })
        })
    }

    fn layer(reads: Vec<io::Result<&'static str>>) -> (FileLayer<Value>, Registry) {
        let mut registry = Registry::with_prefix("outrigger_example");
        let metrics = ReloadMetrics::register(&mut registry);
        let source = Arc::new(ConfigSource::new(metrics, Ok::<Value, ReloadError>));
        let layer =
            FileLayer::new(source, PathBuf::from("/config/example.json")).with_reader(scripted(reads));
        (layer, registry)
    }

    fn metric(registry: &Registry, name: &str) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name).map(|value| value.trim().to_owned()))
            .unwrap_or_else(|| "absent".to_owned())
    }

    // A file rewritten in place was once read half-written: the reload logged a spurious error and
    // `config_last_reload_successful` stayed 0 until the next poll.
    #[tokio::test(start_paused = true)]
    async fn a_file_caught_half_written_is_read_again_before_it_counts_as_rejected() {
        let (layer, registry) = layer(vec![
            Ok(r#"{"weights": {"sta"#),
            Ok(r#"{"weights": {"stable": 100}}"#),
        ]);
        let (mut last_seen, mut unreadable) = (None, None);
        let polled = layer.poll(&mut last_seen, &mut unreadable).await;
        assert!(
            matches!(polled, Polled::Reloaded(Ok(Applied::Changed { generation: 1 }))),
            "{polled:?}"
        );
        assert_eq!(
            metric(&registry, "outrigger_example_config_last_reload_successful"),
            "1"
        );
        assert_eq!(
            metric(
                &registry,
                "outrigger_example_config_reloads_total{source=\"file\",result=\"rejected\"}"
            ),
            "absent"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_still_broken_after_the_second_read_is_rejected_once() {
        let (layer, registry) = layer(vec![Ok("{"), Ok("{")]);
        let (mut last_seen, mut unreadable) = (None, None);
        let polled = layer.poll(&mut last_seen, &mut unreadable).await;
        assert!(
            matches!(polled, Polled::Reloaded(Err(ReloadError::Parse { .. }))),
            "{polled:?}"
        );
        assert_eq!(
            metric(
                &registry,
                "outrigger_example_config_reloads_total{source=\"file\",result=\"rejected\"}"
            ),
            "1"
        );
        assert!(matches!(
            layer.poll(&mut last_seen, &mut unreadable).await,
            Polled::Same
        ));
    }

    // A deleted file used to be only a warning: `config_reloads_total` did not count it.
    #[tokio::test(start_paused = true)]
    async fn a_deleted_file_is_counted_once_and_its_return_counts_as_a_success() {
        let document = r#"{"weights": {"stable": 100}}"#;
        let (layer, registry) = layer(vec![
            Ok(document),
            Err(io::ErrorKind::NotFound.into()),
            Err(io::ErrorKind::NotFound.into()),
            Ok(document),
        ]);
        let (mut last_seen, mut unreadable) = (None, None);
        assert!(matches!(
            layer.poll(&mut last_seen, &mut unreadable).await,
            Polled::Reloaded(Ok(_))
        ));
        let polled = layer.poll(&mut last_seen, &mut unreadable).await;
        assert!(
            matches!(polled, Polled::Reloaded(Err(ReloadError::Read { .. }))),
            "{polled:?}"
        );
        assert!(matches!(
            layer.poll(&mut last_seen, &mut unreadable).await,
            Polled::StillUnreadable
        ));
        let rejected = "outrigger_example_config_reloads_total{source=\"file\",result=\"rejected\"}";
        assert_eq!(
            metric(&registry, rejected),
            "1",
            "counted once, not once per poll"
        );
        assert_eq!(
            metric(&registry, "outrigger_example_config_last_reload_successful"),
            "0"
        );
        let status: Value = serde_json::from_str(&layer.source.status_json()).unwrap();
        assert_eq!(status["lastRejection"]["category"], "read");

        let polled = layer.poll(&mut last_seen, &mut unreadable).await;
        assert!(
            matches!(polled, Polled::Reloaded(Ok(Applied::Unchanged { generation: 1 }))),
            "{polled:?}"
        );
        assert_eq!(
            metric(&registry, "outrigger_example_config_last_reload_successful"),
            "1"
        );
    }
}
