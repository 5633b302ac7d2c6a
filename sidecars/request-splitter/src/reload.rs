//! Reloading the configuration file. The file is read every poll interval (and at once on SIGHUP)
//! and applied only when its bytes changed. Polling rather than inotify, because a ConfigMap volume
//! is updated by swapping a symlinked directory, which file watches easily miss.

use std::{path::Path, sync::Arc, time::Duration};

use outrigger_hashring::fnv1a64;
use tokio::sync::{watch, Notify};

use crate::{
    config::{parse_value, ConfigError},
    store::{Applied, ConfigStore, Source},
};

/// Reads the file at start-up and applies it, counting a file that cannot be read or parsed as
/// rejected. Also returns the fingerprint of the bytes read, which the poller starts from so that a
/// change right after start-up is not mistaken for the file already applied.
pub fn load_file_with_fingerprint(
    store: &ConfigStore,
    path: &Path,
) -> (Option<u64>, Result<Applied, ConfigError>) {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    });
    let fingerprint = bytes.as_ref().ok().map(|bytes| fnv1a64(bytes));
    (fingerprint, apply_bytes(store, bytes))
}

fn apply_bytes(store: &ConfigStore, bytes: Result<Vec<u8>, ConfigError>) -> Result<Applied, ConfigError> {
    match bytes.and_then(|bytes| parse_value(&bytes)) {
        Ok(value) => store.apply(Source::File, value),
        Err(error) => {
            store.record_rejected(Source::File);
            Err(error)
        }
    }
}

/// Logs the outcome of a reload.
pub fn log_outcome(source: Source, outcome: &Result<Applied, ConfigError>) {
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

/// Serializes reloads of the file: without it, a reader holding an older version could apply it
/// after another reader applied a newer one.
pub type FileLock = Arc<tokio::sync::Mutex<()>>;

/// Reads the file and applies it now, under the file lock.
pub async fn reload_file(store: &ConfigStore, path: &Path, lock: &FileLock) -> Result<Applied, ConfigError> {
    let _serialized = lock.lock().await;
    let bytes = tokio::fs::read(path).await.map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    });
    apply_bytes(store, bytes)
}

/// Polls the file until `shutdown`, starting from the fingerprint of the bytes last applied;
/// `now` forces a reload (SIGHUP).
pub async fn watch_file(
    store: Arc<ConfigStore>,
    path: std::path::PathBuf,
    lock: FileLock,
    mut last_seen: Option<u64>,
    interval: Duration,
    now: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_read_error = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = now.notified() => last_seen = None,
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let _serialized = lock.lock().await;
        let bytes = match tokio::fs::read(&path).await {
            Ok(bytes) => {
                last_read_error = None;
                bytes
            }
            Err(source) => {
                // During a ConfigMap volume update the file may briefly be missing; say so once.
                if last_read_error != Some(source.kind()) {
                    last_read_error = Some(source.kind());
                    tracing::warn!(error = %source, path = %path.display(), "Cannot read the configuration file; the current configuration keeps serving.");
                }
                continue;
            }
        };
        let fingerprint = fnv1a64(&bytes);
        if last_seen == Some(fingerprint) {
            continue;
        }
        last_seen = Some(fingerprint);
        let outcome = apply_bytes(&store, Ok(bytes));
        log_outcome(Source::File, &outcome);
    }
}
