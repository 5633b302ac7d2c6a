//! The HTTP sink: batches as JSON lines, Loki pushes or Elasticsearch bulk requests, over
//! HTTP/1.1 (plain `http://`; TLS is not supported yet).
//!
//! `write_batch` returns once the endpoint has acknowledged the batch, so the tailer's checkpoint
//! advances only then. Overload (429), timeouts, server errors and refused connections are tried
//! again with exponential backoff (100 ms doubling to 5 s, with jitter) for at most `retry_for`;
//! then the failure goes back to the tailer, which logs it, waits and offers the same batch again,
//! reading nothing meanwhile. That is the backpressure: while the endpoint is down the adapter
//! holds one batch and no more. Other refusals (400, 413) cannot succeed by retrying: the batch is
//! dropped, logged and counted (`sink_refused_records_total`), as Vector and Fluent Bit do.
//!
//! The split follows the house rule of routing apart from transport: [`format`] is what is sent
//! and what an answer means, without IO; this module moves bytes and waits.

pub mod format;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use outrigger_sidecar_runtime::metrics::ReasonLabels;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use tracing::warn;

pub use self::format::Format;
use self::format::Verdict;
use super::{Batch, Sink, SinkError};
use crate::notice::{Notice, Notify};

/// Failed attempts in a row after which the sink counts as failing (a notice, an Event): one lost
/// connection that the next attempt repairs is not worth one.
const FAILING_AFTER: u32 = 3;

/// The largest response body read (an Elasticsearch bulk answer lists every item).
const MAX_RESPONSE_BYTES: usize = 16 << 20;

/// Why a batch was not delivered (each is tried again by the caller).
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the sink URL {url:?} is not usable: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("building the request: {0}")]
    Request(#[source] http::Error),
    #[error("the request failed: {0}")]
    Transport(#[source] hyper_util::client::legacy::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("the sink answered {status}")]
    Status { status: u16 },
    #[error("{count} records were refused for now by the bulk API")]
    Partial { count: usize },
    #[error("starting the HTTP sink's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

impl HttpError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            HttpError::Url { .. } => "url",
            HttpError::Request(_) => "request",
            HttpError::Transport(error) if error.is_connect() => "connect",
            HttpError::Transport(_) => "transport",
            HttpError::Timeout(_) => "timeout",
            HttpError::Status { .. } => "status",
            HttpError::Partial { .. } => "partial",
            HttpError::Runtime(_) => "runtime",
        }
    }
}

/// Where and how to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSinkConfig {
    /// `http://host:port/path` (`/loki/api/v1/push`, `/<index>/_bulk`).
    pub url: String,
    pub format: Format,
    /// Loki's stream labels.
    pub labels: Vec<(String, String)>,
    /// Longest wait for one answer.
    pub request_timeout: Duration,
    /// How long one batch is tried again before the failure goes back to the tailer.
    pub retry_for: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for HttpSinkConfig {
    fn default() -> Self {
        HttpSinkConfig {
            url: String::new(),
            format: Format::JsonLines,
            labels: vec![("job".to_owned(), "outrigger-log-adapter".to_owned())],
            request_timeout: Duration::from_secs(10),
            retry_for: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
        }
    }
}

/// The HTTP sink's counters; cheap to clone, counting into nothing until registered.
#[derive(Debug, Clone, Default)]
pub struct HttpSinkMetrics {
    /// `sink_retries_total{reason}`: attempts that failed and were tried again, by error category.
    pub retries: Family<ReasonLabels, Counter>,
    /// `sink_refused_records_total`: records the endpoint refused for good, dropped.
    pub refused: Counter,
}

impl HttpSinkMetrics {
    /// Registers the counters in `registry` (the adapter's `log_adapter_` sub-registry).
    pub fn register_into(&self, registry: &mut Registry) {
        registry.register(
            "sink_retries",
            "Failed HTTP sink attempts tried again, by reason: connect, transport, timeout, status, partial",
            self.retries.clone(),
        );
        registry.register(
            "sink_refused_records",
            "Records the HTTP sink's endpoint refused for good (a 4xx other than 408 and 429), dropped",
            self.refused.clone(),
        );
    }
}

/// Sends batches over HTTP from the tailer's thread, on a small runtime of its own.
pub struct HttpSink {
    uri: Uri,
    format: Format,
    stream: Vec<u8>,
    request_timeout: Duration,
    retry_for: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    /// The next wait; grows over failures, across batches, and resets on success.
    backoff: Duration,
    runtime: tokio::runtime::Runtime,
    client: Client<HttpConnector, Full<Bytes>>,
    body: Vec<u8>,
    stop: Option<Arc<AtomicBool>>,
    metrics: HttpSinkMetrics,
    notify: Option<Notify>,
    /// Failed attempts since the last delivery.
    failures: u32,
    /// Since when the sink has been failing, once it counts as failing.
    failing_since: Option<Instant>,
}

impl std::fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSink")
            .field("uri", &self.uri)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl HttpSink {
    pub fn new(config: HttpSinkConfig, metrics: HttpSinkMetrics) -> Result<Self, HttpError> {
        let HttpSinkConfig {
            url,
            format,
            labels,
            request_timeout,
            retry_for,
            backoff_min,
            backoff_max,
        } = config;
        let uri: Uri = url.parse().map_err(|_| HttpError::Url {
            url: url.clone(),
            reason: "not a URL",
        })?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(HttpError::Url {
                url,
                reason: "only http://host[:port]/path is supported",
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(HttpError::Runtime)?;
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(1)
            .build_http();
        Ok(HttpSink {
            uri,
            format,
            stream: format::loki_stream(&labels),
            request_timeout,
            retry_for,
            backoff_min,
            backoff_max,
            backoff: backoff_min,
            runtime,
            client,
            body: Vec::new(),
            stop: None,
            metrics,
            notify: None,
            failures: 0,
            failing_since: None,
        })
    }

    /// `notify` hears when the sink starts failing and when it delivers again.
    #[must_use]
    pub fn with_notify(mut self, notify: Notify) -> Self {
        self.notify = Some(notify);
        self
    }

    fn delivered(&mut self) {
        self.backoff = self.backoff_min;
        self.failures = 0;
        if let Some(since) = self.failing_since.take() {
            let after = since.elapsed();
            tracing::info!(url = %self.uri, after = ?after, "The log sink accepts records again.");
            if let Some(notify) = &self.notify {
                notify(Notice::SinkRecovered {
                    url: self.uri.to_string(),
                    after,
                });
            }
        }
    }

    fn attempt_failed(&mut self, error: &HttpError) {
        self.failures = self.failures.saturating_add(1);
        if self.failing_since.is_none() && self.failures >= FAILING_AFTER {
            self.failing_since = Some(Instant::now());
            warn!(%error, url = %self.uri, "The log sink is failing; records wait on the log volume.");
            if let Some(notify) = &self.notify {
                notify(Notice::SinkFailing {
                    url: self.uri.to_string(),
                    error: error.to_string(),
                });
            }
        }
    }

    /// Once `stop` is set, a failing batch is not tried again: the process is stopping, and what
    /// was not acknowledged is read again after the restart.
    #[must_use]
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Self {
        self.stop = Some(stop);
        self
    }

    fn stopping(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|stop| stop.load(Ordering::Relaxed))
    }

    /// One request: the status and, unless it was too large, the body of the answer.
    fn send(&self, body: Bytes) -> Result<(u16, Option<Bytes>), HttpError> {
        let request = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, self.format.content_type())
            .header(
                header::USER_AGENT,
                concat!("outrigger-log-adapter/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(HttpError::Request)?;
        let timeout = self.request_timeout;
        self.runtime.block_on(async {
            let response = tokio::time::timeout(timeout, self.client.request(request))
                .await
                .map_err(|_| HttpError::Timeout(timeout))?
                .map_err(HttpError::Transport)?;
            let status = response.status().as_u16();
            let body = tokio::time::timeout(
                timeout,
                Limited::new(response.into_body(), MAX_RESPONSE_BYTES).collect(),
            )
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
            .ok()
            .map(http_body_util::Collected::to_bytes);
            Ok((status, body))
        })
    }

    /// Waits `self.backoff` (less a random part), in steps that notice a stop, and doubles it.
    fn back_off(&mut self) {
        // Jitter from the clock's nanoseconds: sidecars of many pods that lost the endpoint at
        // once should not come back in step.
        let jitter = f64::from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() % 1000),
        ) / 2000.0;
        let wait = self.backoff.mul_f64(1.0 - jitter);
        let deadline = Instant::now() + wait;
        while !self.stopping() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        self.backoff = (self.backoff * 2).min(self.backoff_max);
    }
}

impl Sink for HttpSink {
    fn write_batch(&mut self, batch: &Batch) -> Result<(), SinkError> {
        let records: Vec<_> = batch.lines().collect();
        // Positions in `records` still to deliver.
        let mut pending: Vec<usize> = (0..records.len()).collect();
        let started = Instant::now();
        loop {
            let mut body = std::mem::take(&mut self.body);
            format::encode(
                self.format,
                pending.iter().map(|&index| records[index]),
                &self.stream,
                &mut body,
            );
            let sent = self.send(Bytes::copy_from_slice(&body));
            self.body = body;
            let error = match sent {
                Ok((status, answer)) => match format::judge(self.format, status, answer.as_deref()) {
                    Verdict::Delivered => {
                        self.delivered();
                        return Ok(());
                    }
                    Verdict::Refused { status } => {
                        warn!(status, records = pending.len(), url = %self.uri, "The log sink refused a batch for good; dropping it.");
                        self.metrics.refused.inc_by(pending.len() as u64);
                        self.delivered();
                        return Ok(());
                    }
                    Verdict::Partial { retry, refused } => {
                        if refused > 0 {
                            warn!(refused, url = %self.uri, "The log sink refused some records for good; dropping them.");
                            self.metrics.refused.inc_by(refused as u64);
                        }
                        pending = retry.iter().filter_map(|&at| pending.get(at).copied()).collect();
                        if pending.is_empty() {
                            self.delivered();
                            return Ok(());
                        }
                        HttpError::Partial { count: pending.len() }
                    }
                    Verdict::Retry { status } => HttpError::Status { status },
                },
                Err(error) => error,
            };
            if matches!(error, HttpError::Request(_)) {
                return Err(error.into());
            }
            self.attempt_failed(&error);
            self.metrics
                .retries
                .get_or_create(&ReasonLabels {
                    reason: error.category(),
                })
                .inc();
            if self.stopping() || started.elapsed() + self.backoff > self.retry_for {
                // The tailer offers the whole batch again later; the wait keeps growing.
                self.backoff = (self.backoff * 2).min(self.backoff_max);
                return Err(error.into());
            }
            tracing::debug!(%error, backoff = ?self.backoff, "Log sink attempt failed; trying again.");
            self.back_off();
        }
    }
}
