//! Shadow traffic. A copy of a sampled request is queued once the primary's response headers are
//! known, on a bounded queue; a dispatcher sends copies with a bounded number in flight. The client
//! never waits for any of it: when the shadow is slow the queue fills and further copies are
//! dropped and counted. Each shadow response is recorded next to its primary's (status class and
//! latency under `role="primary"` and `role="shadow"`), and a differing status counts as divergence.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{uri::PathAndQuery, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, Semaphore};

use crate::{
    metrics::{class_index, BackendLabels, CompareLabels, Metrics, MirrorLabels, RoleLabels, CLASSES},
    routing::health::now_millis,
    store::Active,
    transport::body::RequestBody,
    transport::correlation::RequestId,
    transport::proxy::{upstream_request, ProxyError},
};

/// Marks a mirrored request so that the shadow can tell it from real traffic.
pub static SHADOW_HEADER: HeaderName = HeaderName::from_static("x-outrigger-shadow");

/// Bytes of a shadow response body read (and thrown away) so that its connection can be reused.
const DRAIN_LIMIT: usize = 1 << 20;

/// A copied request and what its primary answered.
#[derive(Debug)]
pub struct MirrorJob {
    pub active: Arc<Active>,
    pub backend: usize,
    pub method: Method,
    pub path: PathAndQuery,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    pub request_id: RequestId,
    pub primary_status: StatusCode,
    pub primary_latency: Duration,
}

/// The sending side of the mirror queue.
#[derive(Clone)]
pub struct MirrorQueue {
    sender: mpsc::Sender<MirrorJob>,
    metrics: Metrics,
}

impl MirrorQueue {
    /// Starts the dispatcher (inside a Tokio runtime).
    pub fn start(queue: usize, in_flight: usize, metrics: Metrics) -> MirrorQueue {
        let (sender, receiver) = mpsc::channel(queue.max(1));
        tokio::spawn(dispatch(
            receiver,
            Arc::new(Semaphore::new(in_flight.max(1))),
            metrics.clone(),
        ));
        MirrorQueue { sender, metrics }
    }

    /// Queues a copy, or drops it when the queue is full. Never waits.
    pub fn submit(&self, job: MirrorJob) {
        let backend = job.active.backends[job.backend].name.clone();
        let outcome = match self.sender.try_send(job) {
            Ok(()) => "queued",
            Err(_) => "queue_full",
        };
        self.count(backend, outcome);
    }

    /// Counts a request picked for mirroring that could not be copied.
    pub fn count(&self, backend: String, outcome: &'static str) {
        self.metrics
            .mirror_requests
            .get_or_create(&MirrorLabels { backend, outcome })
            .inc();
    }
}

async fn dispatch(mut receiver: mpsc::Receiver<MirrorJob>, permits: Arc<Semaphore>, metrics: Metrics) {
    while let Some(job) = receiver.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            send(job, &metrics).await;
            drop(permit);
        });
    }
}

async fn send(job: MirrorJob, metrics: &Metrics) {
    let MirrorJob {
        active,
        backend,
        method,
        path,
        mut headers,
        body,
        request_id,
        primary_status,
        primary_latency,
    } = job;
    let backend = &active.backends[backend];
    headers.insert(SHADOW_HEADER.clone(), HeaderValue::from_static("true"));
    let started = Instant::now();
    let result = match backend.pick(None, now_millis(), |_| false) {
        None => Err(ProxyError::NoHealthyEndpoint {
            backend: backend.name.clone(),
        }),
        Some(index) => {
            let endpoint = &backend.endpoints[index];
            match upstream_request(
                &method,
                &path,
                headers,
                endpoint,
                backend.protocol,
                RequestBody::Buffered(body),
            ) {
                Err(error) => Err(error),
                Ok(request) => {
                    let sent = endpoint.pool.send(request, backend.connect_timeout);
                    match tokio::time::timeout(backend.timeout, sent).await {
                        Ok(Ok(response)) => Ok(response),
                        Ok(Err(source)) => Err(ProxyError::from_upstream(&endpoint.address, source)),
                        Err(_) => Err(ProxyError::Timeout {
                            endpoint: endpoint.address.clone(),
                            timeout: backend.timeout,
                        }),
                    }
                }
            }
        }
    };
    let shadow_latency = started.elapsed();
    let shadow_status = match result {
        Ok(response) => {
            let status = response.status();
            // Read the body so the pooled connection can serve the next copy; bounded in size and time.
            let limited = http_body_util::Limited::new(response.into_body(), DRAIN_LIMIT);
            let _ = tokio::time::timeout(backend.timeout, limited.collect()).await;
            Some(status)
        }
        Err(error) => {
            tracing::debug!(%error, backend = %backend.name, "Mirrored request failed.");
            None
        }
    };
    let name = &backend.name;
    let compared = |role, class| {
        metrics
            .mirror_compared
            .get_or_create(&CompareLabels {
                backend: name.clone(),
                role,
                class,
            })
            .inc();
    };
    let primary_class = CLASSES[class_index(primary_status.as_u16())];
    let shadow_class = shadow_status.map_or("error", |status| CLASSES[class_index(status.as_u16())]);
    compared("primary", primary_class);
    compared("shadow", shadow_class);
    for (role, latency) in [("primary", primary_latency), ("shadow", shadow_latency)] {
        metrics
            .mirror_latency
            .get_or_create(&RoleLabels {
                backend: name.clone(),
                role,
            })
            .observe(latency.as_secs_f64());
    }
    if shadow_status != Some(primary_status) {
        metrics
            .mirror_divergence
            .get_or_create(&BackendLabels {
                backend: name.clone(),
            })
            .inc();
    }
    if active.config.access_log {
        tracing::info!(
            target: "mirror",
            request_id = request_id.as_str(),
            backend = %name,
            primary_status = primary_status.as_u16(),
            primary_latency_us = u64::try_from(primary_latency.as_micros()).unwrap_or(u64::MAX),
            shadow_status = shadow_status.map_or(0, |status| status.as_u16()),
            shadow_latency_us = u64::try_from(shadow_latency.as_micros()).unwrap_or(u64::MAX),
            "Mirrored request compared."
        );
    }
}
