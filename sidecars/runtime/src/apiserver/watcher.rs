//! The watch loop: read what the selector covers (`GET` of a named object, else `LIST`), then watch
//! from the version read. The watch is started again from the last version seen (an object's or a
//! bookmark's) when the server ends it; when that version is too old (`410 Gone`) everything is
//! read again and handed over as [`Event::Restarted`]. Failures are retried with a jittered,
//! doubling backoff; a refused token is read again from its file by the client.

use std::{
    hash::{BuildHasher, RandomState},
    time::Duration,
};

use http_body_util::BodyExt;
use tokio::{sync::watch, time::Instant};

use crate::metrics::{CategoryLabels, WatchMetrics};

use super::{
    resource::WATCH_TIMEOUT_SECONDS, Api, ApiError, DecodeError, EventDecoder, ObjectMeta, Resource,
    Selector, Status, WatchEvent,
};

/// A watch the server has not ended this long after it started is taken for a dead connection.
const WATCH_DEADLINE: Duration = Duration::from_secs(WATCH_TIMEOUT_SECONDS + 30);
/// A watch that lasted this long worked; the next failure starts the backoff from the beginning.
const HEALTHY_WATCH: Duration = Duration::from_secs(5);
/// Backoff between failed attempts: doubling from the first to the last, with jitter.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(250);
pub const BACKOFF_LAST: Duration = Duration::from_secs(30);

/// What the watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<K> {
    /// Everything the selector covers now, after a (re)read: at start, and after `410 Gone`. For a
    /// named object, zero or one.
    Restarted(Vec<K>),
    /// An object was added or changed.
    Applied(K),
    /// An object was deleted.
    Deleted(K),
}

/// Why one read or watch failed (the loop retries every one of them).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{target}: {source}")]
    Api { target: String, source: ApiError },
    #[error("{target}: decoding the watch stream: {source}")]
    Stream { target: String, source: DecodeError },
    #[error("{target}: the watch connection broke: {source}")]
    Transport { target: String, source: hyper::Error },
    #[error("{target}: the API server did not end the watch within {timeout:?}")]
    Overdue { target: String, timeout: Duration },
    #[error("{target}: the watch reported {status}")]
    Status { target: String, status: Status },
    #[error("{target}: resource version {version:?} is too old")]
    Gone { target: String, version: String },
}

impl WatchError {
    /// A fixed category, for metric labels.
    pub fn category(&self) -> &'static str {
        match self {
            WatchError::Api { .. } => "api",
            WatchError::Stream { .. } => "stream",
            WatchError::Transport { .. } => "transport",
            WatchError::Overdue { .. } => "overdue",
            WatchError::Status { .. } => "status",
            WatchError::Gone { .. } => "gone",
        }
    }

    /// The server refused this identity (`401`, `403`): retrying alone will not help, so a user of
    /// the watch may want to say so (the config sync sidecar reports which object and why).
    pub fn is_denied(&self) -> bool {
        match self {
            WatchError::Api { source, .. } => source.is_denied(),
            WatchError::Status { status, .. } => status.is_denied(),
            _ => false,
        }
    }
}

/// A watch on what a [`Selector`] covers in one collection.
#[derive(Debug, Clone)]
pub struct Watcher<K> {
    api: Api<K>,
    selector: Selector,
    resume_from: Option<String>,
    target: String,
    metrics: WatchMetrics,
}

impl<K: Resource> Watcher<K> {
    pub fn new(api: Api<K>, selector: Selector) -> Watcher<K> {
        let target = match &selector {
            Selector::Named(name) => api.object_path(name),
            Selector::Labels(Some(labels)) => format!("{} ({labels})", api.collection()),
            Selector::Labels(None) => api.collection().to_owned(),
        };
        Watcher {
            api,
            selector,
            resume_from: None,
            target,
            metrics: WatchMetrics::default(),
        }
    }

    /// Counts errors and relists into `metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: WatchMetrics) -> Watcher<K> {
        self.metrics = metrics;
        self
    }

    fn count(&self, error: &WatchError) {
        self.metrics
            .errors
            .get_or_create(&CategoryLabels {
                category: error.category(),
            })
            .inc();
    }

    /// Starts by watching from `version` instead of reading first (a version remembered from
    /// before). If it is too old, the server answers `410 Gone` and the watcher reads everything.
    #[must_use]
    pub fn resume_from(mut self, version: impl Into<String>) -> Watcher<K> {
        self.resume_from = Some(version.into());
        self
    }

    /// What the watch covers, for log lines.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Watches until `shutdown` turns true, handing every event to `sink`.
    pub async fn run(self, sink: impl FnMut(Event<K>) + Send, shutdown: watch::Receiver<bool>) {
        self.run_with_failures(sink, |_| {}, shutdown).await;
    }

    /// [`Watcher::run`], also handing every failure to `failed` (before the backoff). After a
    /// refusal ([`WatchError::is_denied`]) the watcher reads again rather than resuming, so the
    /// first success after access is granted arrives as [`Event::Restarted`].
    pub async fn run_with_failures(
        self,
        mut sink: impl FnMut(Event<K>) + Send,
        mut failed: impl FnMut(&WatchError) + Send,
        mut shutdown: watch::Receiver<bool>,
    ) {
        tokio::select! {
            () = self.run_forever(&mut sink, &mut failed) => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    }

    async fn run_forever(
        &self,
        sink: &mut (impl FnMut(Event<K>) + Send),
        failed: &mut (impl FnMut(&WatchError) + Send),
    ) {
        let mut backoff = Backoff::default();
        let mut resume = self.resume_from.clone();
        loop {
            let mut version = match resume.take() {
                Some(version) => Some(version),
                None => match self.read(sink).await {
                    Ok(version) => version,
                    Err(error) => {
                        self.count(&error);
                        tracing::warn!(%error, category = error.category(), "Reading for a watch failed; retrying.");
                        failed(&error);
                        backoff.wait().await;
                        continue;
                    }
                },
            };
            loop {
                let started = Instant::now();
                let outcome = self.watch_once(&mut version, sink).await;
                if started.elapsed() >= HEALTHY_WATCH {
                    backoff.reset();
                }
                match outcome {
                    Ok(delivered) => {
                        tracing::debug!(target = %self.target, "The watch ended; watching again.");
                        if delivered {
                            backoff.reset();
                        } else {
                            backoff.wait().await;
                        }
                    }
                    Err(error @ WatchError::Gone { .. }) => {
                        self.count(&error);
                        tracing::info!(%error, "Reading everything again.");
                        backoff.wait().await;
                        break;
                    }
                    Err(error) if error.is_denied() => {
                        self.count(&error);
                        tracing::warn!(%error, category = error.category(), "The watch was refused; reading again.");
                        failed(&error);
                        backoff.wait().await;
                        break;
                    }
                    Err(error) => {
                        self.count(&error);
                        tracing::warn!(%error, category = error.category(), "The watch failed; retrying.");
                        failed(&error);
                        backoff.wait().await;
                    }
                }
            }
        }
    }

    /// Reads what the selector covers, hands it over, and returns the version to watch from.
    async fn read(&self, sink: &mut impl FnMut(Event<K>)) -> Result<Option<String>, WatchError> {
        let api_error = |source| WatchError::Api {
            target: self.target.clone(),
            source,
        };
        self.metrics.relists.inc();
        match &self.selector {
            Selector::Named(name) => match self.api.get(name).await.map_err(api_error)? {
                Some(object) => {
                    let version = object.metadata().resource_version.clone();
                    sink(Event::Restarted(vec![object]));
                    Ok(version)
                }
                None => {
                    tracing::warn!(target = %self.target, "The object does not exist; watching for it to be created.");
                    sink(Event::Restarted(Vec::new()));
                    Ok(None)
                }
            },
            Selector::Labels(_) => {
                let list = self.api.list(&self.selector).await.map_err(api_error)?;
                let version = list.metadata.resource_version.clone();
                sink(Event::Restarted(list.items));
                Ok(version)
            }
        }
    }

    /// Runs one watch until the server ends it, handing over what it reports and advancing
    /// `version`. Returns whether it delivered anything.
    async fn watch_once(
        &self,
        version: &mut Option<String>,
        sink: &mut impl FnMut(Event<K>),
    ) -> Result<bool, WatchError> {
        let target = &self.target;
        let mut body = self
            .api
            .watch(&self.selector, version.as_deref())
            .await
            .map_err(|source| {
                if source.is_gone() {
                    WatchError::Gone {
                        target: target.clone(),
                        version: version.clone().unwrap_or_default(),
                    }
                } else {
                    WatchError::Api {
                        target: target.clone(),
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
                    return Err(WatchError::Overdue {
                        target: target.clone(),
                        timeout: WATCH_DEADLINE,
                    })
                }
                Ok(None) => {
                    decoder.finish().map_err(|source| WatchError::Stream {
                        target: target.clone(),
                        source,
                    })?;
                    return Ok(delivered);
                }
                Ok(Some(Err(source))) => {
                    return Err(WatchError::Transport {
                        target: target.clone(),
                        source,
                    })
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            decoder.push(&data);
            while let Some(event) = decoder.next_event::<K>().map_err(|source| WatchError::Stream {
                target: target.clone(),
                source,
            })? {
                delivered = true;
                self.handle(event, version, sink)?;
            }
        }
    }

    fn handle(
        &self,
        event: WatchEvent<K>,
        version: &mut Option<String>,
        sink: &mut impl FnMut(Event<K>),
    ) -> Result<(), WatchError> {
        let advance = |version: &mut Option<String>, metadata: &ObjectMeta| {
            if let Some(seen) = &metadata.resource_version {
                *version = Some(seen.clone());
            }
        };
        match event {
            WatchEvent::Added(object) | WatchEvent::Modified(object) => {
                advance(version, object.metadata());
                sink(Event::Applied(object));
            }
            WatchEvent::Deleted(object) => {
                advance(version, object.metadata());
                sink(Event::Deleted(object));
            }
            WatchEvent::Bookmark(bookmark) => advance(version, &bookmark.metadata),
            WatchEvent::Error(status) if status.is_gone() => {
                return Err(WatchError::Gone {
                    target: self.target.clone(),
                    version: version.clone().unwrap_or_default(),
                })
            }
            WatchEvent::Error(status) => {
                return Err(WatchError::Status {
                    target: self.target.clone(),
                    status,
                })
            }
        }
        Ok(())
    }
}

/// Exponential backoff with jitter: each wait is between half and all of the current step.
#[derive(Debug)]
pub struct Backoff {
    step: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { step: BACKOFF_FIRST }
    }
}

impl Backoff {
    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.step;
        self.step = (step * 2).min(BACKOFF_LAST);
        let half = step / 2;
        let jitter = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        // A fresh `RandomState` is randomly keyed: enough spread for a jitter, without a generator.
        let random = RandomState::new().hash_one(jitter);
        half + Duration::from_nanos(random % jitter.saturating_add(1))
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    pub fn reset(&mut self) {
        self.step = BACKOFF_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
