//! The proxy service: one function from a request to a response, used by the server for every
//! connection and by unit tests without sockets.
//!
//! Per request: correlation ids, the routing decision, then attempts. An attempt goes to an endpoint
//! of the chosen backend that is not ejected and not yet tried; a failure (connect error, reset,
//! timeout) counts towards the endpoint's ejection and is retried when that is safe (the request
//! never left, or it is idempotent with a buffered body), up to the backend's `maxRetries` and within
//! the retry budget. When a backend has no usable endpoint left, a weighted decision fails over to
//! the heaviest other backend; a route's decision does not. When nothing can serve, the splitter
//! answers 502, 503 or 504 itself with an `x-outrigger-reason` header.

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    header::{self, Entry, HeaderName},
    uri::{PathAndQuery, Scheme},
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body::Body;
use http_body_util::BodyExt;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::{
    cache::{self, Cache},
    config::HoldConfig,
    config::UpstreamProtocol,
    metrics::{class_index, Metrics, ReasonLabels},
    routing::health::{now_millis, RetryBudget},
    routing::hold::HoldQueue,
    routing::rate_limit::{self, Tier, Verdict},
    routing::{Choice, Decision},
    store::{Active, ConfigStore},
    transport::added::{AddedHeaders, FORWARDED_FOR, FORWARDED_PROTO},
    transport::body::{self, BoxError, RequestBody, ResponseBody, Upload, UploadProgress, Waiting},
    transport::correlation::{self, RequestId, Trace, TraceId, REQUEST_ID, TRACEPARENT},
    transport::h1::BufferedRequest,
    transport::hop_by_hop,
    transport::mirror::{MirrorJob, MirrorQueue},
    transport::server::Held,
    transport::upstream::{Endpoint, UpstreamBody, UpstreamError},
};

/// The header that says why the splitter answered a request itself.
pub static REASON_HEADER: HeaderName = HeaderName::from_static("x-outrigger-reason");

/// Why no backend response could be relayed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no configuration has been loaded yet")]
    NoConfig,
    #[error("backend {backend} has no endpoint that is not ejected")]
    NoHealthyEndpoint { backend: String },
    #[error("{endpoint}: {source}")]
    Connect { endpoint: String, source: UpstreamError },
    #[error("{endpoint} closed or reset the exchange: {source}")]
    Reset { endpoint: String, source: UpstreamError },
    #[error("{endpoint} sent no response headers within {timeout:?}")]
    Timeout { endpoint: String, timeout: Duration },
    #[error("reading the request body: {source}")]
    RequestBody { source: BoxError },
    #[error("the request body did not arrive within {timeout:?}")]
    RequestBodyTimeout { timeout: Duration },
    #[error("building the upstream request: {source}")]
    Build { source: http::Error },
    #[error("CONNECT is not served: the splitter is a reverse proxy")]
    MethodNotAllowed,
    #[error("{count} header fields, more than the limit of {limit}")]
    TooManyHeaders { count: usize, limit: u32 },
    #[error("the backend has no endpoint, and {held} requests are held already")]
    HoldQueueFull { held: i64 },
    #[error("the backend had no endpoint for the {waited:?} the request was held")]
    HoldTimeout { waited: Duration },
    #[error("over the {tier} rate limit; retry after {retry_after:?}")]
    RateLimited {
        tier: &'static str,
        retry_after: Duration,
    },
}

impl ProxyError {
    /// Classifies an upstream error.
    pub fn from_upstream(endpoint: &str, source: UpstreamError) -> ProxyError {
        let endpoint = endpoint.to_owned();
        if source.is_connect() {
            ProxyError::Connect { endpoint, source }
        } else {
            ProxyError::Reset { endpoint, source }
        }
    }

    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoConfig
            | ProxyError::NoHealthyEndpoint { .. }
            | ProxyError::HoldQueueFull { .. }
            | ProxyError::HoldTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. } | ProxyError::Reset { .. } | ProxyError::Build { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::RequestBody { .. } => StatusCode::BAD_REQUEST,
            ProxyError::RequestBodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::TooManyHeaders { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// For failures the client caused, the `client_errors_total` reason; they never count against
    /// an endpoint.
    pub fn client_reason(&self) -> Option<&'static str> {
        match self {
            ProxyError::RequestBody { .. } => Some("request_body"),
            ProxyError::RequestBodyTimeout { .. } => Some("request_body_timeout"),
            ProxyError::MethodNotAllowed => Some("connect_method"),
            ProxyError::TooManyHeaders { .. } => Some("too_many_headers"),
            _ => None,
        }
    }

    /// A fixed reason: the `x-outrigger-reason` header, the response body and a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoConfig => "no-configuration",
            ProxyError::NoHealthyEndpoint { .. } => "no-healthy-endpoint",
            ProxyError::Connect { .. } => "upstream-connect-failed",
            ProxyError::Reset { .. } => "upstream-reset",
            ProxyError::Timeout { .. } => "upstream-timeout",
            ProxyError::RequestBody { .. } => "bad-request-body",
            ProxyError::RequestBodyTimeout { .. } => "request-body-timeout",
            ProxyError::Build { .. } => "bad-upstream-request",
            ProxyError::MethodNotAllowed => "method-not-allowed",
            ProxyError::TooManyHeaders { .. } => "too-many-headers",
            ProxyError::HoldQueueFull { .. } => "hold-queue-full",
            ProxyError::HoldTimeout { .. } => "hold-timeout",
            ProxyError::RateLimited { .. } => "rate-limited",
        }
    }

    fn body(&self) -> &'static str {
        match self {
            ProxyError::NoConfig => "no-configuration\n",
            ProxyError::NoHealthyEndpoint { .. } => "no-healthy-endpoint\n",
            ProxyError::Connect { .. } => "upstream-connect-failed\n",
            ProxyError::Reset { .. } => "upstream-reset\n",
            ProxyError::Timeout { .. } => "upstream-timeout\n",
            ProxyError::RequestBody { .. } => "bad-request-body\n",
            ProxyError::RequestBodyTimeout { .. } => "request-body-timeout\n",
            ProxyError::Build { .. } => "bad-upstream-request\n",
            ProxyError::MethodNotAllowed => "method-not-allowed\n",
            ProxyError::TooManyHeaders { .. } => "too-many-headers\n",
            ProxyError::HoldQueueFull { .. } => "hold-queue-full\n",
            ProxyError::HoldTimeout { .. } => "hold-timeout\n",
            ProxyError::RateLimited { .. } => "rate-limited\n",
        }
    }

    /// A failure that a held request waits out: nothing took the connection (a Service without
    /// endpoints refuses it), or every endpoint is ejected.
    pub fn holdable(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::NoHealthyEndpoint { .. }
        )
    }
}

/// What every request shares.
pub struct Shared {
    pub store: Arc<ConfigStore>,
    pub metrics: Metrics,
    pub budget: RetryBudget,
    pub mirror: MirrorQueue,
    /// Requests waiting for a backend without endpoints (`hold` in the configuration).
    pub hold: HoldQueue,
    /// The shared HTTP cache (`cache` in the configuration).
    pub cache: Arc<Cache>,
}

/// Facts about the client connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// The client's address as a header value, rendered once per connection.
    client_ip: HeaderValue,
    state: Arc<ConnectionState>,
}

#[derive(Debug, Default)]
struct ConnectionState {
    /// Requests received on the connection so far.
    requests: AtomicU64,
    /// The connection's place under the connection limit, kept by whoever still uses the
    /// connection: its requests, and a tunnel once it is upgraded.
    held: Option<Held>,
}

impl ConnectionInfo {
    /// A connection that holds no place under the limit (unit tests).
    pub fn new(remote: SocketAddr, tls: bool) -> ConnectionInfo {
        ConnectionInfo::with_state(remote, tls, ConnectionState::default())
    }

    /// A connection of the listener, which counts while this or a copy of it lives.
    pub fn holding(remote: SocketAddr, tls: bool, held: Held) -> ConnectionInfo {
        let state = ConnectionState {
            requests: AtomicU64::new(0),
            held: Some(held),
        };
        ConnectionInfo::with_state(remote, tls, state)
    }

    fn with_state(remote: SocketAddr, tls: bool, state: ConnectionState) -> ConnectionInfo {
        let client_ip = HeaderValue::from_str(&remote.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        ConnectionInfo {
            remote,
            tls,
            client_ip,
            state: Arc::new(state),
        }
    }

    /// Requests received on the connection so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }
}

/// The service for one client connection.
pub fn service<B>(
    shared: Arc<Shared>,
    connection: ConnectionInfo,
) -> impl hyper::service::Service<
    Request<B>,
    Response = Response<ResponseBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<ResponseBody>, Infallible>> + Send,
> + Clone
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    hyper::service::service_fn(move |request: Request<B>| {
        let (shared, connection) = (shared.clone(), connection.clone());
        async move { Ok(body::with_header_map(*handle(shared, request, &connection).await)) }
    })
}

/// A response on its way to the client, boxed: it passes up through several futures, and moving
/// a box costs less than copying the response at each step.
pub type BoxedResponse = Box<Response<ResponseBody>>;

/// Answers one request.
pub async fn handle<B>(
    shared: Arc<Shared>,
    mut request: Request<B>,
    connection: &ConnectionInfo,
) -> BoxedResponse
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    connection.state.requests.fetch_add(1, Ordering::Relaxed);
    let carried = Carried::by(request.headers());
    let upgrade = is_upgrade(&request, &carried);
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let http::request::Parts {
        method,
        uri,
        version,
        mut headers,
        ..
    } = parts;
    let request_id = if carried.request_id {
        correlation::request_id(&mut headers)
    } else {
        RequestId::generate()
    };
    let Some(active) = shared.store.current() else {
        let error = ProxyError::NoConfig;
        shared
            .metrics
            .local_responses
            .get_or_create(&ReasonLabels {
                reason: error.reason(),
            })
            .inc();
        return Box::new(local_response(&error, &request_id));
    };
    // Refused before routing: what the client asked for, not any backend, is at fault.
    let limit = active.config.limits.max_header_count;
    let refusal = if method == Method::CONNECT {
        Some(ProxyError::MethodNotAllowed)
    } else if headers.len() > limit as usize {
        // HTTP/1 heads with too many lines are refused while parsed; this is HTTP/2's check.
        Some(ProxyError::TooManyHeaders {
            count: headers.len(),
            limit,
        })
    } else {
        None
    };
    if let Some(error) = refusal {
        return Box::new(refuse(&shared, &error, &request_id, version));
    }
    if let Some(policy) = &active.rate_limits {
        let verdict = shared.store.limiter().check(
            policy,
            uri.path(),
            &headers,
            connection.remote.ip(),
            rate_limit::now_nanos(),
        );
        if let Verdict::Limited { tier, retry_after } = verdict {
            return Box::new(rate_limited(&shared, tier, retry_after, &request_id));
        }
    }
    // A fresh response in the cache answers before any routing or header work.
    let cache_key = active.config.cache.as_ref().map(|_| {
        let host = headers
            .get(header::HOST)
            .map(HeaderValue::as_bytes)
            .or_else(|| uri.authority().map(|authority| authority.as_str().as_bytes()));
        let path = uri.path_and_query().map_or("/", PathAndQuery::as_str);
        cache::policy::primary_key(host, path)
    });
    if let (Some(config), Some(key), false) = (&active.config.cache, &cache_key, upgrade) {
        if let Some(response) = shared.cache.fresh(config, &method, key, &headers, &request_id) {
            return response;
        }
    }
    let trace = if carried.traceparent {
        correlation::trace(&mut headers)
    } else {
        Trace::start()
    };
    let decision = active.router.decide(&headers, connection.remote.ip());
    if let Choice::Route(index) = decision.choice {
        if let Some(counter) = active.route_matches.get(index) {
            counter.inc();
        }
    }
    shared.budget.deposit(&active.config.retry_budget);
    let path = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let added = prepare_request_headers(
        &mut headers,
        &carried,
        (&uri, version),
        connection,
        upgrade,
        &request_id,
        &trace,
    );
    let exchange = Exchange {
        shared,
        active,
        decision,
        method,
        path,
        version,
        headers,
        added,
        request_id,
        trace_id: trace.id,
        started,
    };
    match on_upgrade {
        Some(on_upgrade) => exchange.tunnel(on_upgrade, connection.clone()).await,
        None => match (exchange.active.clone().config.cache.as_ref(), cache_key) {
            (Some(config), Some(key)) => {
                let method = exchange.method.clone();
                let cache = exchange.shared.cache.clone();
                cache
                    .serve(config, &method, key, ThroughCache { exchange, body })
                    .await
            }
            _ => exchange.forward(body).await,
        },
    }
}

/// A request on its way to the backend through the cache.
struct ThroughCache<B> {
    exchange: Exchange,
    body: B,
}

impl<B> cache::Upstream for ThroughCache<B>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn request_headers(&self) -> &HeaderMap {
        &self.exchange.headers
    }

    fn request_id(&self) -> HeaderValue {
        self.exchange.request_id.to_value()
    }

    fn send(self, conditional: Option<HeaderMap>) -> impl Future<Output = BoxedResponse> + Send {
        let ThroughCache { mut exchange, body } = self;
        if let Some(conditional) = conditional {
            for name in &cache::policy::CLIENT_CONDITIONALS {
                exchange.headers.remove(name);
            }
            for (name, value) in &conditional {
                exchange.headers.insert(name.clone(), value.clone());
            }
        }
        exchange.forward(body)
    }
}

/// 429 with `Retry-After` (whole seconds, at least 1) for a request over its rate limit.
fn rate_limited(
    shared: &Shared,
    tier: Tier,
    retry_after: Duration,
    request_id: &RequestId,
) -> Response<ResponseBody> {
    let error = ProxyError::RateLimited {
        tier: tier.as_str(),
        retry_after,
    };
    shared
        .metrics
        .local_responses
        .get_or_create(&ReasonLabels {
            reason: error.reason(),
        })
        .inc();
    let mut response = local_response(&error, request_id);
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

/// The splitter's answer to a request it refuses outright, counted as the client's error.
fn refuse(
    shared: &Shared,
    error: &ProxyError,
    request_id: &RequestId,
    version: Version,
) -> Response<ResponseBody> {
    shared
        .metrics
        .local_responses
        .get_or_create(&ReasonLabels {
            reason: error.reason(),
        })
        .inc();
    count_client_error(shared, error);
    let mut response = local_response(error, request_id);
    if let ProxyError::MethodNotAllowed = error {
        response.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
        );
        // Bytes a CONNECT client sends next are meant for a tunnel, not HTTP: close after this.
        if version < Version::HTTP_2 {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    response
}

fn count_client_error(shared: &Shared, error: &ProxyError) {
    if let Some(reason) = error.client_reason() {
        shared
            .metrics
            .client_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// One request on its way through.
struct Exchange {
    shared: Arc<Shared>,
    active: Arc<Active>,
    decision: Decision,
    method: Method,
    path: PathAndQuery,
    version: Version,
    /// The client's headers, less hop-by-hop ones and unusable ids.
    headers: HeaderMap,
    added: AddedHeaders,
    request_id: RequestId,
    trace_id: TraceId,
    started: Instant,
}

/// The endpoint that answered: backend index and endpoint index.
type Served = (usize, usize);

impl Exchange {
    async fn forward<B>(mut self, body: B) -> BoxedResponse
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let active = self.active.clone();
        let limits = &active.config.limits;
        let mut mirror_to = active.router.mirror_sample();
        let idempotent = crate::routing::retry::is_idempotent(&self.method);
        // Held requests are sent again once an endpoint appears, whatever their method.
        let wants_buffer = mirror_to.is_some()
            || active.config.hold.is_some()
            || (idempotent && active.backends[self.decision.backend].max_retries > 0);
        let mut upload = None;
        let body = if body.is_end_stream() {
            RequestBody::Buffered(None)
        } else if wants_buffer
            && content_length(&self.headers)
                .is_some_and(|length| length <= u64::from(limits.max_buffered_body_bytes))
        {
            let max = limits.max_buffered_body_bytes as usize;
            let timeout = limits.header_read_timeout.0;
            match tokio::time::timeout(timeout, http_body_util::Limited::new(body, max).collect()).await {
                Ok(Ok(collected)) => RequestBody::Buffered(Some(collected.to_bytes())),
                Ok(Err(source)) => return self.finish_local(ProxyError::RequestBody { source }, 0),
                Err(_) => return self.finish_local(ProxyError::RequestBodyTimeout { timeout }, 0),
            }
        } else {
            let progress = Arc::new(UploadProgress::default());
            upload = Some(progress.clone());
            RequestBody::Stream(Upload::new(body.map_err(Into::into).boxed_unsync(), progress))
        };
        if let (Some(backend), RequestBody::Stream(_)) = (mirror_to, &body) {
            self.shared
                .mirror
                .count(active.backends[backend].name.clone(), "body_too_large");
            mirror_to = None;
        }
        let mirror_copy = mirror_to.map(|backend| {
            let copy = match &body {
                RequestBody::Buffered(bytes) => bytes.clone(),
                RequestBody::Stream(_) => None,
            };
            let mut headers = self.headers.clone();
            self.added.insert_into(&mut headers);
            (backend, headers, copy)
        });
        let held_copy = active.config.hold.as_ref().and_then(|_| body.replay());
        let (mut result, retries) = self.attempts(body, idempotent, upload.as_deref(), false).await;
        if let (Err(error), Some(hold), Some(copy)) = (&result, &active.config.hold, held_copy) {
            if error.holdable() {
                let tried = matches!(error, ProxyError::Connect { .. });
                result = self.hold(copy, hold, idempotent, tried).await;
            }
        }
        let response = match result {
            Ok((response, (backend, endpoint))) => self.finish_upstream(response, backend, endpoint, retries),
            Err(error) => self.finish_local(error, retries),
        };
        if let Some((backend, headers, body)) = mirror_copy {
            self.shared.mirror.submit(MirrorJob {
                active: self.active.clone(),
                backend,
                method: self.method.clone(),
                path: self.path.clone(),
                headers,
                body,
                request_id: self.request_id.clone(),
                primary_status: response.status(),
                primary_latency: self.started.elapsed(),
            });
        }
        response
    }

    /// Holds a request whose backend has no endpoint to take it: it waits in the bounded queue
    /// and tries every `retryInterval` (at once when `tried` is false: no connection was attempted,
    /// every endpoint being ejected), until an endpoint answers, a failure other than a refused
    /// connection ends it, or the hold's `timeout` passes.
    async fn hold(
        &mut self,
        body: RequestBody,
        hold: &HoldConfig,
        idempotent: bool,
        tried: bool,
    ) -> Result<(Response<UpstreamBody>, Served), ProxyError> {
        let shared = self.shared.clone();
        let place = shared
            .hold
            .enter(hold.max_requests, Instant::now())
            .map_err(|full| ProxyError::HoldQueueFull { held: full.held })?;
        let deadline = tokio::time::Instant::now() + hold.timeout.0;
        let mut wait = tried;
        loop {
            if wait {
                let next = tokio::time::Instant::now() + hold.retry_interval.0;
                tokio::time::sleep_until(next.min(deadline)).await;
            }
            wait = true;
            if tokio::time::Instant::now() >= deadline {
                place.timed_out();
                return Err(ProxyError::HoldTimeout {
                    waited: hold.timeout.0,
                });
            }
            let Some(copy) = body.replay() else {
                return Err(ProxyError::NoHealthyEndpoint {
                    backend: self.active.backends[self.decision.backend].name.clone(),
                });
            };
            match self.attempts(copy, idempotent, None, true).await.0 {
                Ok(served) => {
                    if let Some(took) = place.served(Instant::now()) {
                        tracing::info!(
                            request_id = self.request_id.as_str(),
                            backend = %self.active.backends[(served.1).0].name,
                            cold_start_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                            "A held request was answered; the cold start is over."
                        );
                    }
                    return Ok(served);
                }
                Err(error) if error.holdable() => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Sends the request until an endpoint answers or nothing more may be tried. While `holding`,
    /// every endpoint is tried once, ejected ones too, and a refused connection is neither a
    /// failure of the endpoint nor a retry.
    async fn attempts(
        &mut self,
        body: RequestBody,
        idempotent: bool,
        upload: Option<&UploadProgress>,
        holding: bool,
    ) -> (Result<(Response<UpstreamBody>, Served), ProxyError>, u32) {
        let active = self.active.clone();
        let replayable = body.replay().is_some();
        let mut body = Some(body);
        let max_retries = active.backends[self.decision.backend].max_retries;
        let mut backend_index = self.decision.backend;
        let mut tried: Vec<(usize, usize)> = Vec::new();
        let mut exhausted: Vec<usize> = Vec::new();
        let mut retries = 0;
        let mut last_error = None;
        loop {
            let backend = &active.backends[backend_index];
            let untried = |endpoint| tried.contains(&(backend_index, endpoint));
            let picked = if holding {
                backend.pick_while_holding(self.decision.key_hash, untried)
            } else {
                backend.pick(self.decision.key_hash, now_millis(), untried)
            };
            let Some(endpoint_index) = picked else {
                exhausted.push(backend_index);
                let failover = match self.decision.choice {
                    Choice::Route(_) => None,
                    Choice::Sticky | Choice::Weighted => {
                        active.router.failover(|index| exhausted.contains(&index)).next()
                    }
                };
                match failover {
                    Some(next) => {
                        backend_index = next;
                        continue;
                    }
                    None => {
                        let error = last_error.unwrap_or_else(|| ProxyError::NoHealthyEndpoint {
                            backend: active.backends[self.decision.backend].name.clone(),
                        });
                        return (Err(error), retries);
                    }
                }
            };
            let endpoint = &backend.endpoints[endpoint_index];
            // A buffered body over HTTP/1.1 is sent by reference: another attempt sends the same
            // request again without copying its headers.
            let direct = backend.protocol == UpstreamProtocol::Http1
                && matches!(body, Some(RequestBody::Buffered(_)))
                // Upgrades take `tunnel`, and other requests have lost their `upgrade` header.
                && self.method != Method::CONNECT;
            let request = if direct {
                None
            } else {
                let (attempt_body, mut headers) = match body.as_ref().and_then(RequestBody::replay) {
                    Some(copy) => (copy, self.headers.clone()),
                    None => match body.take() {
                        Some(stream) => (stream, std::mem::take(&mut self.headers)),
                        None => {
                            let error = last_error.unwrap_or_else(|| ProxyError::NoHealthyEndpoint {
                                backend: backend.name.clone(),
                            });
                            return (Err(error), retries);
                        }
                    },
                };
                self.added.insert_into(&mut headers);
                match upstream_request(
                    &self.method,
                    &self.path,
                    headers,
                    endpoint,
                    backend.protocol,
                    attempt_body,
                ) {
                    Ok(request) => Some(request),
                    Err(error) => return (Err(error), retries),
                }
            };
            // Only the bytes are borrowed across the await: a request body is not `Sync`.
            let buffered = match &body {
                Some(RequestBody::Buffered(bytes)) => bytes.as_ref(),
                _ => None,
            };
            let sent = async {
                match request {
                    Some(request) => endpoint.pool.send(request, backend.connect_timeout).await,
                    None => {
                        let request = BufferedRequest {
                            method: &self.method,
                            target: self.path.as_str(),
                            headers: &self.headers,
                            added: &self.added,
                            body: buffered,
                        };
                        endpoint
                            .pool
                            .send_buffered(request, backend.connect_timeout)
                            .await
                    }
                }
            };
            let body_timeout = active.config.limits.header_read_timeout.0;
            let error = match wait_for_backend(sent, backend.timeout, upload, body_timeout).await {
                Ok(Ok(response)) => {
                    if is_gateway_error(response.status()) {
                        self.record_failure(backend_index, endpoint);
                    } else {
                        endpoint.health.record_success();
                    }
                    return (Ok((response, (backend_index, endpoint_index))), retries);
                }
                Ok(Err(source)) => {
                    // The exchange failed because the client's body did: the client's failure,
                    // not the endpoint's.
                    if upload.is_some_and(|upload| upload.waiting().0 == Waiting::ClientFailed) {
                        let source = Box::new(source) as BoxError;
                        return (Err(ProxyError::RequestBody { source }), retries);
                    }
                    ProxyError::from_upstream(&endpoint.address, source)
                }
                Err(Silent::Client) => {
                    let error = ProxyError::RequestBodyTimeout {
                        timeout: body_timeout,
                    };
                    return (Err(error), retries);
                }
                Err(Silent::Backend) => ProxyError::Timeout {
                    endpoint: endpoint.address.clone(),
                    timeout: backend.timeout,
                },
            };
            if holding && matches!(error, ProxyError::Connect { .. }) {
                last_error = Some(error);
                tried.push((backend_index, endpoint_index));
                continue;
            }
            match &error {
                ProxyError::Connect { .. } => backend.metrics.connect_errors.inc(),
                ProxyError::Timeout { .. } => backend.metrics.timeouts.inc(),
                _ => backend.metrics.reset_errors.inc(),
            };
            tracing::debug!(
                %error,
                request_id = self.request_id.as_str(),
                backend = %backend.name,
                "Attempt failed."
            );
            self.record_failure(backend_index, endpoint);
            // A request whose connection never opened was not sent, so any method may go again.
            let safe = matches!(error, ProxyError::Connect { .. }) || idempotent;
            if !replayable || !safe || retries >= max_retries {
                return (Err(error), retries);
            }
            if !self
                .shared
                .budget
                .try_withdraw(now_millis(), &active.config.retry_budget)
            {
                self.shared.metrics.retry_budget_exhausted.inc();
                return (Err(error), retries);
            }
            last_error = Some(error);
            retries += 1;
            backend.metrics.retries.inc();
            tried.push((backend_index, endpoint_index));
        }
    }

    fn record_failure(&self, backend_index: usize, endpoint: &Endpoint) {
        let backend = &self.active.backends[backend_index];
        if let Some(ejected_for) = endpoint
            .health
            .record_failure(now_millis(), &self.active.config.outlier_detection)
        {
            backend.metrics.ejections.inc();
            tracing::warn!(
                backend = %backend.name,
                endpoint = %endpoint.address,
                ejected_for_ms = u64::try_from(ejected_for.as_millis()).unwrap_or(u64::MAX),
                "Ejected an endpoint after consecutive failures."
            );
        }
    }

    fn finish_upstream(
        &self,
        response: Response<UpstreamBody>,
        backend: usize,
        endpoint: usize,
        retries: u32,
    ) -> BoxedResponse {
        let (mut parts, mut body) = response.into_parts();
        let served_by = &self.active.backends[backend];
        body.set_idle_timeout(served_by.timeout, &served_by.metrics.timeouts);
        if !body.hop_by_hop_removed() {
            hop_by_hop::strip(
                &mut parts.headers,
                parts.status == StatusCode::SWITCHING_PROTOCOLS,
            );
        }
        parts.version = self.version;
        let mut response = Box::new(Response::from_parts(parts, ResponseBody::Upstream(body)));
        self.decorate(&mut response);
        self.record(&response, backend, Some(endpoint), retries);
        response
    }

    fn finish_local(&self, error: ProxyError, retries: u32) -> BoxedResponse {
        self.shared
            .metrics
            .local_responses
            .get_or_create(&ReasonLabels {
                reason: error.reason(),
            })
            .inc();
        count_client_error(&self.shared, &error);
        // Debug, not warn: during an outage this would be one line per request. The access log,
        // the metrics and the ejection warnings say it at a bounded rate.
        tracing::debug!(
            %error,
            request_id = self.request_id.as_str(),
            backend = %self.active.backends[self.decision.backend].name,
            retries,
            "No backend could serve a request."
        );
        let mut response = Box::new(local_response(&error, &self.request_id));
        self.decorate(&mut response);
        self.record(&response, self.decision.backend, None, retries);
        response
    }

    /// The response gets the request's id, unless the backend sent its own, and a sticky cookie.
    fn decorate(&self, response: &mut Response<ResponseBody>) {
        match response.body_mut().unmapped_mut() {
            // Next to the backend's lines: a map for one header would cost more than the rest.
            Some(unmapped) => {
                if !unmapped.lines.contains(&REQUEST_ID) {
                    unmapped.request_id = Some(self.request_id.clone());
                }
            }
            None => {
                if let Entry::Vacant(missing) = response.headers_mut().entry(&REQUEST_ID) {
                    missing.insert(self.request_id.to_value());
                }
            }
        }
        if let Some(cookie) = &self.decision.set_cookie {
            response.headers_mut().append(header::SET_COOKIE, cookie.clone());
        }
    }

    fn record(
        &self,
        response: &Response<ResponseBody>,
        backend: usize,
        endpoint: Option<usize>,
        retries: u32,
    ) {
        let backend = &self.active.backends[backend];
        let status = response.status().as_u16();
        let elapsed = self.started.elapsed();
        backend.metrics.requests[class_index(status)].inc();
        backend.metrics.latency.observe(elapsed.as_secs_f64());
        if self.active.config.access_log {
            tracing::info!(
                target: "access",
                request_id = self.request_id.as_str(),
                trace_id = self.trace_id.as_str(),
                method = %self.method,
                path = %self.path,
                status,
                backend = %backend.name,
                endpoint = endpoint.map_or("-", |index| backend.endpoints[index].address.as_str()),
                choice = self.decision.choice.as_str(),
                retries,
                duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
                "Request served."
            );
        }
    }

    /// WebSocket and other `Upgrade` requests: one attempt, then bytes copied both ways.
    async fn tunnel(mut self, on_upgrade: OnUpgrade, connection: ConnectionInfo) -> BoxedResponse {
        let active = self.active.clone();
        let backend_index = self.decision.backend;
        let backend = &active.backends[backend_index];
        let Some(endpoint_index) = backend.pick(self.decision.key_hash, now_millis(), |_| false) else {
            let error = ProxyError::NoHealthyEndpoint {
                backend: backend.name.clone(),
            };
            return self.finish_local(error, 0);
        };
        let endpoint = &backend.endpoints[endpoint_index];
        let mut headers = std::mem::take(&mut self.headers);
        self.added.insert_into(&mut headers);
        let request = match upstream_request(
            &self.method,
            &self.path,
            headers,
            endpoint,
            UpstreamProtocol::Http1,
            RequestBody::Buffered(None),
        ) {
            Ok(request) => request,
            Err(error) => return self.finish_local(error, 0),
        };
        let sent = endpoint.pool.send(request, backend.connect_timeout);
        let mut response = match tokio::time::timeout(backend.timeout, sent).await {
            Ok(Ok(response)) => response,
            Ok(Err(source)) => {
                self.record_failure(backend_index, endpoint);
                return self.finish_local(ProxyError::from_upstream(&endpoint.address, source), 0);
            }
            Err(_) => {
                self.record_failure(backend_index, endpoint);
                let error = ProxyError::Timeout {
                    endpoint: endpoint.address.clone(),
                    timeout: backend.timeout,
                };
                return self.finish_local(error, 0);
            }
        };
        endpoint.health.record_success();
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upstream = hyper::upgrade::on(&mut response);
            let request_id = self.request_id.clone();
            tokio::spawn(async move {
                match tokio::try_join!(on_upgrade, upstream) {
                    Ok((client, upstream)) => {
                        // The client connection stays counted (and under the limit) as long as
                        // the tunnel: `connection` holds its place, which this marks as a tunnel.
                        let _tunnel = connection.state.held.as_ref().map(Held::tunnel);
                        let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                        if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                            tracing::debug!(%error, request_id = request_id.as_str(), "Tunnel closed with an error.");
                        }
                    }
                    Err(error) => {
                        tracing::debug!(%error, request_id = request_id.as_str(), "Upgrade failed.");
                    }
                }
            });
        }
        self.finish_upstream(response, backend_index, endpoint_index, 0)
    }
}

/// Who went silent for too long while an attempt waited for its response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Silent {
    /// The backend, for its `timeout`: it took no more of the body, or did not answer it.
    Backend,
    /// The client, for `headerReadTimeout`: it sent no more of its streamed body.
    Client,
}

/// Waits for an attempt's response head. The backend's `timeout` counts only the time the
/// exchange waits for the backend: with a streamed body, not the time the client takes to send
/// it. Without one, the whole wait is the backend's.
async fn wait_for_backend<F: Future>(
    sent: F,
    timeout: Duration,
    upload: Option<&UploadProgress>,
    client_timeout: Duration,
) -> Result<F::Output, Silent> {
    let Some(upload) = upload else {
        return tokio::time::timeout(timeout, sent)
            .await
            .map_err(|_| Silent::Backend);
    };
    let mut sent = std::pin::pin!(sent);
    let mut deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(output) = tokio::time::timeout_at(deadline, sent.as_mut()).await {
            return Ok(output);
        }
        // The upload may have moved on since the timer was set: it is set again from the moment
        // the current wait began. While the client is waited for, the next look comes no later
        // than the backend's timeout, the earliest a wait for the backend starting now could end.
        let (waiting, waited) = upload.waiting();
        let left = match waiting {
            Waiting::Client => client_timeout
                .checked_sub(waited)
                .filter(|left| !left.is_zero())
                .ok_or(Silent::Client)?
                .min(timeout),
            Waiting::Backend | Waiting::ClientFailed => timeout
                .checked_sub(waited)
                .filter(|left| !left.is_zero())
                .ok_or(Silent::Backend)?,
        };
        deadline = tokio::time::Instant::now() + left;
    }
}

/// Builds the request for one attempt at one endpoint: origin-form for HTTP/1.1, absolute (for
/// `:scheme` and `:authority`) for HTTP/2.
pub fn upstream_request(
    method: &Method,
    path: &PathAndQuery,
    mut headers: HeaderMap,
    endpoint: &Endpoint,
    protocol: UpstreamProtocol,
    body: RequestBody,
) -> Result<Request<RequestBody>, ProxyError> {
    let (uri, version) = match protocol {
        UpstreamProtocol::Http1 => (Uri::from(path.clone()), Version::HTTP_11),
        UpstreamProtocol::H2c => (
            Uri::builder()
                .scheme(Scheme::HTTP)
                .authority(endpoint.authority.clone())
                .path_and_query(path.clone())
                .build()
                .map_err(|source| ProxyError::Build { source })?,
            Version::HTTP_2,
        ),
    };
    if !headers.contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(endpoint.authority.as_str()) {
            headers.insert(header::HOST, host);
        }
    }
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Ok(request)
}

/// The splitter's own answer when nothing could serve.
fn local_response(error: &ProxyError, request_id: &RequestId) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::text(error.body()));
    *response.status_mut() = error.status();
    let headers = response.headers_mut();
    headers.insert(REASON_HEADER.clone(), HeaderValue::from_static(error.reason()));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(REQUEST_ID.clone(), request_id.to_value());
    response
}

fn is_gateway_error(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn is_upgrade<B>(request: &Request<B>, carried: &Carried) -> bool {
    request.version() == Version::HTTP_11
        && carried.hop_by_hop & hop_by_hop::UPGRADE_BIT != 0
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .any(|value| has_token(value.as_bytes(), b"upgrade"))
}

fn has_token(list: &[u8], token: &[u8]) -> bool {
    hop_by_hop::tokens(list).any(|item| item.eq_ignore_ascii_case(token))
}

/// Which of the headers the proxy reads or adds a request carries, found in one pass over its
/// names: a lookup in the map hashes the name, and most requests carry none of them but `host`.
#[derive(Debug, Default)]
struct Carried {
    hop_by_hop: u8,
    host: bool,
    request_id: bool,
    traceparent: bool,
    forwarded_for: bool,
    forwarded_proto: bool,
}

impl Carried {
    fn by(headers: &HeaderMap) -> Carried {
        let mut carried = Carried::default();
        for name in headers.keys() {
            if *name == header::HOST {
                carried.host = true;
                continue;
            }
            // Names in a map are lowercase.
            let bytes = name.as_str().as_bytes();
            carried.hop_by_hop |= hop_by_hop::bit(bytes);
            carried.request_id |= bytes == REQUEST_ID.as_str().as_bytes();
            carried.traceparent |= bytes == TRACEPARENT.as_str().as_bytes();
            carried.forwarded_for |= bytes == FORWARDED_FOR.as_str().as_bytes();
            carried.forwarded_proto |= bytes == FORWARDED_PROTO.as_str().as_bytes();
        }
        carried
    }
}

/// Readies the client's headers to go on: hop-by-hop ones out, `host` from an HTTP/2 authority,
/// the client appended to an `x-forwarded-for` it sent. Returns what the request gets on top.
fn prepare_request_headers(
    headers: &mut HeaderMap,
    carried: &Carried,
    (uri, version): (&Uri, Version),
    connection: &ConnectionInfo,
    upgrade: bool,
    request_id: &RequestId,
    trace: &Trace,
) -> AddedHeaders {
    hop_by_hop::strip_present(headers, carried.hop_by_hop, upgrade);
    // HTTP/2 clients send `:authority` instead of `host`; keep it as the backend's Host. An HTTP/1
    // request in absolute form names its host in the target, and a `host` header it also carries
    // is ignored (RFC 9112 §3.2.2).
    let authority = uri
        .authority()
        .filter(|_| !carried.host || version < Version::HTTP_2);
    if let Some(authority) = authority {
        // Without user info, which is no part of a host.
        let host = authority.as_str().rsplit('@').next().unwrap_or_default();
        if let Ok(value) = HeaderValue::from_str(host) {
            headers.insert(header::HOST, value);
        }
    }
    // Looked up, not entered: an entry would grow a map built to the size of the client's headers.
    let previous = carried
        .forwarded_for
        .then(|| headers.get(&FORWARDED_FOR))
        .flatten();
    let forwarded_for = match previous {
        Some(previous) => {
            let joined = [previous.as_bytes(), b", ", connection.client_ip.as_bytes()].concat();
            if let Ok(forwarded) = HeaderValue::from_bytes(&joined) {
                headers.insert(&FORWARDED_FOR, forwarded);
            }
            None
        }
        None => Some(connection.client_ip.clone()),
    };
    let forwarded_proto = (!carried.forwarded_proto).then_some(if connection.tls { "https" } else { "http" });
    AddedHeaders {
        request_id: match request_id {
            RequestId::Generated(id) => Some(*id),
            RequestId::Received(_) => None,
        },
        traceparent: trace.started,
        forwarded_for,
        forwarded_proto,
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;
    use prometheus_client::registry::Registry;
    use serde_json::json;

    use super::*;
    use crate::{store::Source, transport::hop_by_hop::tests::headers};

    #[test]
    fn one_pass_over_the_names_finds_the_headers_the_proxy_reads() {
        let map = headers(&[
            ("host", "a"),
            ("x-request-id", "1"),
            ("traceparent", "x"),
            ("x-forwarded-for", "10.0.0.1"),
            ("connection", "close"),
            ("te", "trailers"),
            ("x-forwarded-protocol", "near miss"),
        ]);
        let carried = Carried::by(&map);
        assert!(carried.host && carried.request_id && carried.traceparent && carried.forwarded_for);
        assert!(!carried.forwarded_proto);
        assert_eq!(
            carried.hop_by_hop,
            hop_by_hop::CONNECTION_BIT | hop_by_hop::TE_BIT
        );
        let none = Carried::by(&headers(&[("x-request", "1"), ("accept", "*/*")]));
        assert!(!(none.host || none.request_id || none.traceparent || none.forwarded_for));
        assert_eq!(none.hop_by_hop, 0);
    }

    #[test]
    fn forwarding_headers_are_appended_or_added_and_host_comes_from_the_authority() {
        let connection = ConnectionInfo::new(SocketAddr::from(([192, 168, 1, 2], 5000)), true);
        let uri: Uri = "https://app.example:8443/x".parse().unwrap();
        let received = RequestId::Received(HeaderValue::from_static("client-42"));
        let generated = RequestId::Generated([b'a'; 32]);
        let kept_trace = Trace {
            id: correlation::trace(&mut headers(&[])).id,
            started: None,
        };
        let started_trace = Trace {
            started: Some([b'0'; 55]),
            ..kept_trace
        };
        type Lines<'a> = &'a [(&'a str, &'a str)];
        let cases: [(Lines, &RequestId, &Trace, Lines, &[&str]); 3] = [
            // A proxy in front: the client is appended to its list, which stays in the map.
            (
                &[("x-forwarded-for", "10.0.0.1"), ("x-forwarded-proto", "http")],
                &received,
                &kept_trace,
                &[
                    ("x-forwarded-for", "10.0.0.1, 192.168.1.2"),
                    ("x-forwarded-proto", "http"),
                    ("host", "app.example:8443"),
                ],
                &[],
            ),
            (
                &[("host", "app.example"), ("connection", "keep-alive")],
                &received,
                &kept_trace,
                &[("host", "app.example")],
                &["x-forwarded-for", "x-forwarded-proto"],
            ),
            (
                &[("host", "app.example")],
                &generated,
                &started_trace,
                &[("host", "app.example")],
                &[
                    "x-request-id",
                    "traceparent",
                    "x-forwarded-for",
                    "x-forwarded-proto",
                ],
            ),
        ];
        for (sent, request_id, trace, kept, added_names) in cases {
            let mut map = headers(sent);
            let carried = Carried::by(&map);
            let added = prepare_request_headers(
                &mut map,
                &carried,
                (&uri, Version::HTTP_2),
                &connection,
                false,
                request_id,
                trace,
            );
            let entries: Vec<(&str, &str)> = map
                .iter()
                .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
                .collect();
            assert_eq!(entries, kept, "{sent:?}");
            let names: Vec<&str> = added.lines().map(|(name, _)| name.as_str()).collect();
            assert_eq!(names, added_names, "{sent:?}");
            if let Some(forwarded) = &added.forwarded_for {
                assert_eq!(forwarded, "192.168.1.2");
                assert_eq!(added.forwarded_proto, Some("https"));
            }
        }
    }

    async fn shared_with(config: serde_json::Value) -> Arc<Shared> {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let store = Arc::new(ConfigStore::new(metrics.clone()));
        store.apply(Source::File, config).unwrap();
        Arc::new(Shared {
            store,
            budget: RetryBudget::default(),
            mirror: MirrorQueue::start(4, 1, metrics.clone()),
            hold: HoldQueue::new(&metrics),
            cache: Cache::new(cache::CacheMetrics::default()),
            metrics,
        })
    }

    fn client() -> ConnectionInfo {
        ConnectionInfo::new(SocketAddr::from(([127, 0, 0, 1], 40000)), false)
    }

    /// Called as a plain function: no listener, no backend, every endpoint already ejected.
    #[tokio::test]
    async fn a_backend_with_every_endpoint_ejected_gets_503_with_a_reason_and_a_request_id() {
        let shared = shared_with(json!({
            "backends": [{"name": "stable", "endpoints": ["127.0.0.1:9"]}],
            "outlierDetection": {"consecutiveFailures": 1, "baseEjectionTime": "1h", "maxEjectionTime": "1h"}
        }))
        .await;
        let active = shared.store.current().unwrap();
        active.backends[0].endpoints[0]
            .health
            .record_failure(now_millis(), &active.config.outlier_detection);
        let request = Request::builder()
            .uri("/orders")
            .header("x-request-id", "abc")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = handle(shared, request, &client()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[&REASON_HEADER], "no-healthy-endpoint");
        assert_eq!(response.headers()["x-request-id"], "abc");
    }

    #[tokio::test]
    async fn before_any_configuration_requests_get_503_no_configuration() {
        let metrics = Metrics::register(&mut Registry::default());
        let shared = Arc::new(Shared {
            store: Arc::new(ConfigStore::new(metrics.clone())),
            budget: RetryBudget::default(),
            mirror: MirrorQueue::start(4, 1, metrics.clone()),
            hold: HoldQueue::new(&metrics),
            cache: Cache::new(cache::CacheMetrics::default()),
            metrics,
        });
        let request = Request::new(Full::new(Bytes::new()));
        let response = handle(shared, request, &client()).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[&REASON_HEADER], "no-configuration");
        assert_eq!(response.headers()["x-request-id"].len(), 32);
    }
}
