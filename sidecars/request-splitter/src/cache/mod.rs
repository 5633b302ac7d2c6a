//! The shared HTTP cache in front of the backends (`cache` in the configuration).
//!
//! What may be cached and for how long is decided in [`policy`] (pure, RFC 9111 for a shared
//! cache); the memory, bounded in bytes with least-recently-used eviction, is [`store`]; a URL's
//! variants by `Vary` are [`entry`]. This module wires them to the proxy: a request is answered
//! from a fresh stored response, a stale one is revalidated with the backend (a `304` refreshes
//! it), and concurrent misses for one URL wait for the first one's response instead of each
//! sending their own (request coalescing). The proxy reaches the backend through [`Upstream`].

pub mod entry;
pub mod policy;
pub mod store;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use http_body::Body;
use http_body_util::BodyExt;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};
use tokio::sync::watch;

use crate::{
    config::CacheConfig,
    transport::{
        body::{self, ResponseBody},
        correlation::{RequestId, REQUEST_ID},
        proxy::BoxedResponse,
    },
};
use entry::{Entry, Variants};
use policy::{Freshness, RequestDirectives, RequestPolicy, Storability, Vary};
use store::Lru;

/// The header that says how a response was served: `HIT`, `MISS` or `REVALIDATED`.
pub static CACHE_HEADER: HeaderName = HeaderName::from_static("x-cache");

/// The way to the backend for one request, as the proxy provides it.
pub trait Upstream: Send {
    /// The client's request headers (hop-by-hop ones removed).
    fn request_headers(&self) -> &HeaderMap;
    /// The request id, for responses served from the cache.
    fn request_id(&self) -> HeaderValue;
    /// Sends the request on. With `conditional`, the client's own conditional headers are removed
    /// and these sent instead (a revalidation, or none at all for a response to be stored).
    fn send(self, conditional: Option<HeaderMap>) -> impl Future<Output = BoxedResponse> + Send;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

/// The cache's metrics, under `outrigger_splitter_cache_`.
#[derive(Clone, Default)]
pub struct CacheMetrics {
    /// Requests by result: `hit`, `miss`, `coalesced` (answered by another request's fetch),
    /// `revalidated` (a stale response the backend confirmed) and `pass` (not cacheable).
    pub requests: Family<ResultLabels, Counter>,
    /// Responses stored.
    pub stored: Counter,
    /// Entries evicted to stay within `maxBytes`.
    pub evictions: Counter,
    /// Entries removed by a purge.
    pub purged: Counter,
    /// Bytes held.
    pub bytes: Gauge,
    /// URLs held.
    pub entries: Gauge,
}

impl CacheMetrics {
    pub fn register(registry: &mut Registry) -> CacheMetrics {
        let metrics = CacheMetrics::default();
        let r = registry.sub_registry_with_prefix("outrigger_splitter_cache");
        r.register(
            "requests",
            "Requests the cache looked at, by result",
            metrics.requests.clone(),
        );
        r.register("stored", "Responses stored", metrics.stored.clone());
        r.register(
            "evictions",
            "Entries evicted to stay within maxBytes",
            metrics.evictions.clone(),
        );
        r.register("purged", "Entries removed by a purge", metrics.purged.clone());
        r.register_with_unit(
            "size",
            "Bytes the cache holds",
            Unit::Bytes,
            metrics.bytes.clone(),
        );
        r.register("entries", "URLs the cache holds", metrics.entries.clone());
        metrics
    }

    fn count(&self, result: &'static str) {
        self.requests.get_or_create(&ResultLabels { result }).inc();
    }
}

/// The cache: its memory and the fetches in flight. One per process, kept across configuration
/// changes (a new `maxBytes` evicts what no longer fits).
pub struct Cache {
    lru: Mutex<Lru<Variants>>,
    /// URLs being fetched by a request that others wait for: they wake when its sender is dropped.
    inflight: Mutex<HashMap<String, watch::Receiver<()>>>,
    metrics: CacheMetrics,
}

/// Whether a request is the one that fetches a URL or waits for another's fetch.
enum Role {
    Leader(Fetching),
    Follower(watch::Receiver<()>),
}

/// A fetch in flight; dropping it wakes the waiting requests.
struct Fetching {
    cache: Arc<Cache>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for Fetching {
    fn drop(&mut self) {
        lock(&self.cache.inflight).remove(&self.key);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Cache {
    pub fn new(metrics: CacheMetrics) -> Arc<Cache> {
        Arc::new(Cache {
            lru: Mutex::new(Lru::new(0)),
            inflight: Mutex::new(HashMap::new()),
            metrics,
        })
    }

    /// Removes every stored response whose path starts with `prefix` (all of them for `/` or
    /// an empty prefix); returns how many URLs went.
    pub fn purge(&self, prefix: &str) -> u64 {
        let mut lru = lock(&self.lru);
        let purged = lru.purge(|key| policy::key_path(key).starts_with(prefix));
        self.metrics.purged.inc_by(purged);
        self.publish(&lru);
        purged
    }

    /// Bytes held now.
    pub fn bytes(&self) -> u64 {
        lock(&self.lru).bytes()
    }

    fn publish(&self, lru: &Lru<Variants>) {
        self.metrics
            .bytes
            .set(i64::try_from(lru.bytes()).unwrap_or(i64::MAX));
        self.metrics
            .entries
            .set(i64::try_from(lru.len()).unwrap_or(i64::MAX));
    }

    fn lookup(&self, config: &CacheConfig, key: &str, request: &HeaderMap) -> Option<Arc<Entry>> {
        let mut lru = lock(&self.lru);
        self.fit(&mut lru, config);
        lru.get(key)?.select(request).cloned()
    }

    fn fit(&self, lru: &mut Lru<Variants>, config: &CacheConfig) {
        if lru.capacity() != config.max_bytes {
            let evicted = lru.set_capacity(config.max_bytes);
            self.metrics.evictions.inc_by(evicted);
            self.publish(lru);
        }
    }

    fn store(&self, config: &CacheConfig, key: &str, entry: Arc<Entry>) {
        let mut lru = lock(&self.lru);
        self.fit(&mut lru, config);
        let variants = lru.remove(key).unwrap_or_default().with(entry);
        let inserted = lru.insert(key.to_owned(), variants);
        self.metrics.evictions.inc_by(inserted.evicted);
        if inserted.stored {
            self.metrics.stored.inc();
        }
        self.publish(&lru);
    }

    fn forget(&self, key: &str, request: &HeaderMap) {
        let mut lru = lock(&self.lru);
        if let Some(rest) = lru
            .remove(key)
            .and_then(|variants| variants.without_selected(request))
        {
            lru.insert(key.to_owned(), rest);
        }
        self.publish(&lru);
    }

    fn role(self: &Arc<Self>, key: &str) -> Role {
        let mut inflight = lock(&self.inflight);
        if let Some(waiting) = inflight.get(key) {
            return Role::Follower(waiting.clone());
        }
        let (done, waiting) = watch::channel(());
        inflight.insert(key.to_owned(), waiting);
        Role::Leader(Fetching {
            cache: self.clone(),
            key: key.to_owned(),
            _done: done,
        })
    }

    /// The stored response for a request, when it may be answered from the cache without asking
    /// the backend: a GET or HEAD without `no-cache`, and a fresh response of its variant.
    pub fn fresh(
        &self,
        config: &CacheConfig,
        method: &Method,
        key: &str,
        request: &HeaderMap,
        request_id: &RequestId,
    ) -> Option<BoxedResponse> {
        let directives = RequestDirectives::of(request);
        if policy::request_policy(method, &directives) != (RequestPolicy::Lookup { revalidate: false }) {
            return None;
        }
        let entry = self.lookup(config, key, request)?;
        let now = SystemTime::now();
        if !entry.is_fresh(now, &directives) {
            return None;
        }
        self.metrics.count("hit");
        Some(answer(&entry, request, request_id.to_value(), now, "HIT"))
    }

    /// Answers a GET or HEAD from the cache or through `upstream`, storing what may be stored.
    pub async fn serve<U: Upstream>(
        self: Arc<Self>,
        config: &CacheConfig,
        method: &Method,
        key: String,
        upstream: U,
    ) -> BoxedResponse {
        let directives = RequestDirectives::of(upstream.request_headers());
        let revalidate = match policy::request_policy(method, &directives) {
            RequestPolicy::Pass(_) => {
                self.metrics.count("pass");
                return upstream.send(None).await;
            }
            RequestPolicy::Lookup { revalidate } => revalidate,
        };
        let stored = self.lookup(config, &key, upstream.request_headers());
        if let Some(entry) = &stored {
            let now = SystemTime::now();
            if !revalidate && entry.is_fresh(now, &directives) {
                self.metrics.count("hit");
                return answer(
                    entry,
                    upstream.request_headers(),
                    upstream.request_id(),
                    now,
                    "HIT",
                );
            }
        }
        // A HEAD response has no body to store: a HEAD that misses goes through as it came.
        if *method == Method::HEAD && stored.is_none() {
            self.metrics.count("miss");
            return upstream.send(None).await;
        }
        // Concurrent plain misses for one URL: the first fetches, the others wait for it and then
        // take what it stored; a request it did not answer (not cacheable, another variant)
        // goes to the backend on its own, without waiting again.
        let _fetching = if stored.is_none() && !revalidate {
            match self.role(&key) {
                Role::Leader(fetching) => Some(fetching),
                Role::Follower(mut waiting) => {
                    let _ = waiting.changed().await;
                    let now = SystemTime::now();
                    if let Some(entry) = self.lookup(config, &key, upstream.request_headers()) {
                        if entry.is_fresh(now, &directives) {
                            self.metrics.count("coalesced");
                            return answer(
                                &entry,
                                upstream.request_headers(),
                                upstream.request_id(),
                                now,
                                "HIT",
                            );
                        }
                    }
                    self.metrics.count("pass");
                    return upstream.send(None).await;
                }
            }
        } else {
            None
        };
        let request = upstream.request_headers().clone();
        let request_id = upstream.request_id();
        let conditional = stored
            .as_ref()
            .filter(|entry| entry.has_validator())
            .map(|entry| policy::conditional_headers(&entry.headers))
            .unwrap_or_default();
        let response = body::with_header_map(*upstream.send(Some(conditional)).await);
        let now = SystemTime::now();
        if response.status() == StatusCode::NOT_MODIFIED {
            let Some(entry) = stored else {
                // Nothing was asked conditionally: pass the odd answer on.
                self.metrics.count("miss");
                return Box::new(response);
            };
            let headers = policy::refreshed(&entry.headers, response.headers());
            let freshness = match policy::storability(&directives, entry.status, &headers, now) {
                Storability::Store { lifetime, age } => Freshness {
                    stored_at: now,
                    age_at_store: age,
                    lifetime,
                },
                Storability::Pass(_) => {
                    self.forget(&key, &request);
                    self.metrics.count("revalidated");
                    return answer(&entry, &request, request_id, now, "REVALIDATED");
                }
            };
            let refreshed = Arc::new(entry.refreshed(headers, freshness));
            self.store(config, &key, refreshed.clone());
            self.metrics.count("revalidated");
            return answer(&refreshed, &request, request_id, now, "REVALIDATED");
        }
        self.metrics.count("miss");
        let (lifetime, age) =
            match policy::storability(&directives, response.status(), response.headers(), now) {
                Storability::Store { lifetime, age } if *method == Method::GET => (lifetime, age),
                _ => {
                    if stored.is_some() {
                        self.forget(&key, &request);
                    }
                    return Box::new(response);
                }
            };
        let Vary::Names(vary) = policy::vary(response.headers()) else {
            return Box::new(response);
        };
        let length = content_length(response.headers()).or_else(|| response.body().size_hint().exact());
        if length.is_none_or(|length| length > config.max_object_bytes) {
            return Box::new(response);
        }
        let (mut parts, body) = response.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                tracing::debug!(%error, key = %key, "The backend's response body failed while being stored.");
                return Box::new(bad_gateway(request_id));
            }
        };
        parts.headers.remove(&REQUEST_ID);
        let entry = Arc::new(Entry {
            status: parts.status,
            vary_key: policy::vary_key(&vary, &request),
            vary,
            headers: parts.headers,
            body,
            freshness: Freshness {
                stored_at: now,
                age_at_store: age,
                lifetime,
            },
        });
        self.store(config, &key, entry.clone());
        answer(&entry, &request, request_id, now, "MISS")
    }
}

/// A response from a stored entry: `304` when the client's own condition holds, else the stored
/// response, with its `Age`.
fn answer(
    entry: &Entry,
    request: &HeaderMap,
    request_id: HeaderValue,
    now: SystemTime,
    served: &'static str,
) -> BoxedResponse {
    let mut response = if policy::client_not_modified(request, &entry.headers) {
        let mut response = Response::new(ResponseBody::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        for name in &policy::NOT_MODIFIED_HEADERS {
            for value in entry.headers.get_all(name) {
                response.headers_mut().append(name.clone(), value.clone());
            }
        }
        response
    } else {
        let mut response = Response::new(ResponseBody::Local(Some(entry.body.clone())));
        *response.status_mut() = entry.status;
        *response.headers_mut() = entry.headers.clone();
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::AGE, HeaderValue::from(entry.freshness.age(now).as_secs()));
    headers.insert(CACHE_HEADER.clone(), HeaderValue::from_static(served));
    headers.insert(REQUEST_ID.clone(), request_id);
    Box::new(response)
}

fn bad_gateway(request_id: HeaderValue) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::text("upstream-reset\n"));
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    let headers = response.headers_mut();
    headers.insert(
        crate::transport::proxy::REASON_HEADER.clone(),
        HeaderValue::from_static("upstream-reset"),
    );
    headers.insert(REQUEST_ID.clone(), request_id);
    response
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}
