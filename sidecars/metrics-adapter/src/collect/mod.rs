//! Collectors that fetch on a scrape (Redis, JSON over HTTP, Prometheus passthrough), each behind
//! a [`Slot`] that bounds its time: a scrape waits at most the budget, then serves the last
//! values and marks the collector stale; a collection still running is never started twice.

pub mod http;
pub mod json;
pub mod prom;
pub mod redis;
pub mod resp;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::model::Family;

/// Why a collection failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("connecting: {0}")]
    Connect(#[source] std::io::Error),
    #[error("i/o: {0}")]
    Io(#[source] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("status {0}")]
    Status(::http::StatusCode),
    #[error("response over the size limit")]
    TooLarge,
    #[error("malformed document: {0}")]
    Malformed(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

impl CollectError {
    /// A small fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            CollectError::Connect(_) => "connect",
            CollectError::Io(_) => "io",
            CollectError::Timeout => "timeout",
            CollectError::Status(_) => "status",
            CollectError::TooLarge => "too_large",
            CollectError::Malformed(_) => "malformed",
            CollectError::Protocol(_) => "protocol",
        }
    }

    pub const CATEGORIES: [&'static str; 7] = [
        "connect",
        "io",
        "timeout",
        "status",
        "too_large",
        "malformed",
        "protocol",
    ];
}

/// Limits shared by the fetching collectors.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest a collection may run before it is abandoned.
    pub timeout: Duration,
    pub max_body_bytes: usize,
}

/// A collector that fetches.
#[derive(Debug)]
pub enum Collector {
    Redis(redis::RedisCollector),
    Json {
        url: http::LocalUrl,
        mapping: json::JsonMapping,
    },
    Prometheus {
        url: http::LocalUrl,
        relabel: prom::Relabel,
    },
}

/// What one collection gave.
#[derive(Debug, Default)]
pub struct Collection {
    pub families: Vec<Family>,
    pub error: Option<CollectError>,
    /// Lines of a passthrough target that did not parse.
    pub invalid_lines: usize,
}

impl Collector {
    async fn collect(&mut self, limits: Limits) -> Collection {
        let fetch = http::FetchLimits {
            timeout: limits.timeout,
            max_body_bytes: limits.max_body_bytes,
        };
        match self {
            Collector::Redis(redis) => {
                let (families, error) = redis.collect(limits.timeout).await;
                Collection {
                    families,
                    error,
                    invalid_lines: 0,
                }
            }
            Collector::Json { url, mapping } => {
                match http::get(url, "application/json", fetch)
                    .await
                    .and_then(|body| mapping.apply(&body))
                {
                    Ok(families) => Collection {
                        families,
                        ..Collection::default()
                    },
                    Err(error) => Collection {
                        error: Some(error),
                        ..Collection::default()
                    },
                }
            }
            Collector::Prometheus { url, relabel } => {
                match http::get(url, "text/plain;version=0.0.4;q=1,*/*;q=0.1", fetch).await {
                    Ok(body) => {
                        let text = String::from_utf8_lossy(&body);
                        let (families, invalid_lines) = prom::parse_text(&text);
                        Collection {
                            families: prom::relabel(families, relabel),
                            error: None,
                            invalid_lines,
                        }
                    }
                    Err(error) => Collection {
                        error: Some(error),
                        ..Collection::default()
                    },
                }
            }
        }
    }
}

/// What a slot shows a scrape.
#[derive(Debug, Clone, Default)]
pub struct SlotView {
    pub families: Arc<Vec<Family>>,
    /// The budget ran out before a fresh collection finished: these are the last values.
    pub stale: bool,
    /// The last collection finished with an error.
    pub failed: bool,
    pub last_duration: Duration,
}

#[derive(Debug, Default)]
struct SlotState {
    families: Arc<Vec<Family>>,
    failed: bool,
    last_duration: Duration,
    /// Errors by category, and unparsable lines, since start.
    errors: [u64; CollectError::CATEGORIES.len()],
    invalid_lines: u64,
    finished: u64,
}

/// One collector with its last values.
#[derive(Debug)]
pub struct Slot {
    /// `redis`, `json/<name>`, `prometheus/<name>`.
    pub name: String,
    collector: Arc<tokio::sync::Mutex<Collector>>,
    state: Arc<Mutex<SlotState>>,
    finished: watch::Sender<u64>,
    limits: Limits,
}

impl Slot {
    pub fn new(name: String, collector: Collector, limits: Limits) -> Slot {
        Slot {
            name,
            collector: Arc::new(tokio::sync::Mutex::new(collector)),
            state: Arc::new(Mutex::new(SlotState::default())),
            finished: watch::channel(0).0,
            limits,
        }
    }

    /// Starts a collection unless one is running, and waits for one to finish within `budget`.
    pub async fn scrape(&self, budget: Duration) -> SlotView {
        let mut finished = self.finished.subscribe();
        let seen = *finished.borrow_and_update();
        if let Ok(mut collector) = self.collector.clone().try_lock_owned() {
            let state = self.state.clone();
            let sender = self.finished.clone();
            let limits = self.limits;
            tokio::spawn(async move {
                let started = Instant::now();
                let collection = match tokio::time::timeout(limits.timeout, collector.collect(limits)).await {
                    Ok(collection) => collection,
                    Err(_) => Collection {
                        error: Some(CollectError::Timeout),
                        ..Collection::default()
                    },
                };
                if let Some(error) = &collection.error {
                    tracing::debug!(%error, category = error.category(), "Collection failed.");
                }
                let mut state = state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                state.last_duration = started.elapsed();
                state.failed = collection.error.is_some();
                state.invalid_lines += collection.invalid_lines as u64;
                state.finished += 1;
                if let Some(error) = &collection.error {
                    let at = CollectError::CATEGORIES
                        .iter()
                        .position(|c| *c == error.category())
                        .unwrap_or_default();
                    state.errors[at] += 1;
                }
                // A failed fetch keeps the last values (a Redis reports `redis_up 0` instead).
                if collection.error.is_none() || !collection.families.is_empty() {
                    state.families = Arc::new(collection.families);
                }
                let count = state.finished;
                drop(state);
                sender.send_replace(count);
            });
        }
        let fresh = tokio::time::timeout(budget, finished.wait_for(|count| *count > seen))
            .await
            .is_ok_and(|changed| changed.is_ok());
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        SlotView {
            families: state.families.clone(),
            stale: !fresh,
            failed: state.failed,
            last_duration: state.last_duration,
        }
    }

    /// Errors by category since start, and unparsable lines.
    pub fn errors(&self) -> ([u64; CollectError::CATEGORIES.len()], u64) {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (state.errors, state.invalid_lines)
    }
}
