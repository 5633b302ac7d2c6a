//! HTTP sharding: when the shard map's protocol is `http`, a client connection is served as
//! HTTP/1.1. Each request's key (a header, a path segment or a query parameter: [`key`]) goes
//! through the same ring as a Redis key, and the request is forwarded to that shard's pod over a
//! keep-alive connection pool (one per worker thread, so a request stays on its thread).
//!
//! Failures are HTTP statuses with the reason in a plain-text body and the shard in
//! `x-outrigger-shard`: `400` without a key, `503` without a shard map, `502` when the shard can't
//! be reached or breaks the connection, `504` when it does not answer in time.

pub mod key;

use std::{cell::OnceCell, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{Either, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use outrigger_contract::shard_map::ShardMap;
use outrigger_sidecar_runtime::config::Versioned;
use tokio::{net::TcpStream, sync::watch, time::Instant};
use tracing::debug;

use crate::{metrics::Metrics, routing::Locate, topology::Topology};
pub use key::{KeyError, KeySource};

/// The shard map documents as the config source hands them out.
pub type Documents = watch::Receiver<Option<Arc<Versioned<ShardMap>>>>;

/// How HTTP requests are forwarded.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Connecting to a shard's pod.
    pub connect_timeout: Duration,
    /// From sending a request to a shard to its response headers.
    pub request_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Idle keep-alive connections kept per shard pod and worker.
    pub max_idle_per_shard: usize,
    pub metrics: Arc<Metrics>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            connect_timeout: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(10),
            max_idle_per_shard: 64,
            metrics: Arc::default(),
        }
    }
}

/// The header naming the shard that served (or failed) a request.
pub const SHARD_HEADER: &str = "x-outrigger-shard";

type Upstream = Client<HttpConnector, Incoming>;
type Body = Either<Incoming, Full<Bytes>>;

thread_local! {
    /// The keep-alive pools of this worker thread: its connections live on its runtime.
    static UPSTREAM: OnceCell<Upstream> = const { OnceCell::new() };
}

fn upstream(settings: &HttpSettings) -> Upstream {
    UPSTREAM.with(|cell| {
        cell.get_or_init(|| {
            let mut connector = HttpConnector::new();
            connector.set_connect_timeout(Some(settings.connect_timeout));
            connector.set_nodelay(true);
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .pool_max_idle_per_host(settings.max_idle_per_shard)
                .pool_timer(TokioTimer::new())
                .build(connector)
        })
        .clone()
    })
}

/// Serves one client connection as HTTP/1.1 until it closes.
pub async fn serve(
    stream: TcpStream,
    topology: watch::Receiver<Arc<Topology>>,
    documents: Documents,
    settings: Arc<HttpSettings>,
) -> Result<(), hyper::Error> {
    let header_timeout = settings.header_timeout;
    let service = service_fn(move |request| {
        let (topology, documents, settings) = (topology.clone(), documents.clone(), settings.clone());
        async move { Ok::<_, Infallible>(forward(request, &topology, &documents, &settings).await) }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

/// Where a request goes: the shard's name and the endpoint to send it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub shard: Arc<str>,
    pub endpoint: Arc<str>,
}

/// Why a request was not forwarded, as the status and reason the client gets.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("no shard map with shards is loaded")]
    NoShards,
}

impl RouteError {
    pub fn status(&self) -> StatusCode {
        match self {
            RouteError::Key(KeyError::InvalidHeaderName(_)) | RouteError::NoShards => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RouteError::Key(_) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Routes a request by its key: to the shard's primary, or for reads (`GET`, `HEAD`) to the pod the
/// read policy picks. Also returns the key, for the hot key table.
pub fn route<'a>(
    map: &ShardMap,
    topology: &Topology,
    method: &Method,
    uri: &'a Uri,
    headers: &'a http::HeaderMap,
) -> Result<(Route, std::borrow::Cow<'a, [u8]>), RouteError> {
    let key = KeySource::of(map)?.extract(uri, headers)?;
    let index = topology.shard_of(&key).ok_or(RouteError::NoShards)?;
    let handle = if matches!(*method, Method::GET | Method::HEAD) {
        topology.reader(index)
    } else {
        topology.shard(index)
    }
    .ok_or(RouteError::NoShards)?;
    Ok((
        Route {
            shard: handle.shared_name(),
            endpoint: Arc::from(handle.endpoint()),
        },
        key,
    ))
}

async fn forward(
    request: Request<Incoming>,
    topology: &watch::Receiver<Arc<Topology>>,
    documents: &Documents,
    settings: &HttpSettings,
) -> Response<Body> {
    let metrics = &settings.metrics;
    let routed = {
        let Some(map) = documents.borrow().clone() else {
            metrics.command("error");
            return failure(StatusCode::SERVICE_UNAVAILABLE, None, &RouteError::NoShards);
        };
        let topology = topology.borrow().clone();
        route(
            &map.document,
            &topology,
            request.method(),
            request.uri(),
            request.headers(),
        )
        .map(|(route, key)| {
            metrics.hot_keys.record_sampled(&key, Some(route.shard.clone()));
            route
        })
    };
    let route = match routed {
        Ok(route) => route,
        Err(error) => {
            metrics.command("error");
            return failure(error.status(), None, &error);
        }
    };
    metrics.command("forward");
    let (mut parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str);
    parts.uri = match format!("http://{}{path}", route.endpoint).parse() {
        Ok(uri) => uri,
        Err(error) => return failure(StatusCode::BAD_GATEWAY, Some(&route.shard), &error),
    };
    strip_hop_by_hop(&mut parts.headers);
    let shard_metrics = metrics.for_shard(&route.shard);
    let started = Instant::now();
    let sent = tokio::time::timeout(
        settings.request_timeout,
        upstream(settings).request(Request::from_parts(parts, body)),
    )
    .await;
    match sent {
        Ok(Ok(mut response)) => {
            shard_metrics.operation(Some(started.elapsed()));
            strip_hop_by_hop(response.headers_mut());
            if let Ok(value) = HeaderValue::from_str(&route.shard) {
                response.headers_mut().insert(SHARD_HEADER, value);
            }
            response.map(Either::Left)
        }
        Ok(Err(error)) => {
            shard_metrics.operation(None);
            metrics.shard_error(&route.shard, "http");
            debug!(shard = %route.shard, %error, "HTTP request to its shard failed.");
            failure(
                StatusCode::BAD_GATEWAY,
                Some(&route.shard),
                &format!("shard {} unreachable: {}", route.shard, error_chain(&error)),
            )
        }
        Err(_) => {
            shard_metrics.operation(None);
            metrics.shard_error(&route.shard, "timeout");
            failure(
                StatusCode::GATEWAY_TIMEOUT,
                Some(&route.shard),
                &format!(
                    "shard {} did not answer within {:?}",
                    route.shard, settings.request_timeout
                ),
            )
        }
    }
}

/// The error and its sources, one line (hyper's own message is only "client error (Connect)").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Headers of one hop, which a proxy must not pass on (RFC 9110 section 7.6.1).
fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| header::HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::HeaderName::from_static("keep-alive"),
        header::HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

fn failure(status: StatusCode, shard: Option<&str>, reason: &dyn std::fmt::Display) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(format!("{reason}\n")))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(value) = shard.and_then(|shard| HeaderValue::from_str(shard).ok()) {
        headers.insert(SHARD_HEADER, value);
    }
    response
}
