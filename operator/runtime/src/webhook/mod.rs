//! The sidecar-injection webhook: an HTTPS shell around the pure `outrigger_core::inject` functions.
//! It runs on every replica (not only the leader), so injection keeps working during failover.

pub mod certs;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::{
    core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
    runtime::{reflector, watcher, WatchStreamExt},
    Api, Client, ResourceExt,
};
use outrigger_api::{ReplicatedService, ShardedService};
use outrigger_core::{
    config_rollout,
    inject::{self, OwnerSidecars, SidecarDefaults},
    replicated, sharded,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;

/// Largest AdmissionReview accepted (the API server's own request limit is 3 MiB).
const MAX_REVIEW_BYTES: usize = 3 * 1024 * 1024;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// Admission metrics.
#[derive(Clone)]
pub struct WebhookMetrics {
    reviews: Family<ResultLabels, Counter>,
    duration: Histogram,
}

impl WebhookMetrics {
    pub fn register(registry: &mut Registry) -> WebhookMetrics {
        let metrics = WebhookMetrics {
            reviews: Family::default(),
            duration: Histogram::new([0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1]),
        };
        let registry = registry.sub_registry_with_prefix("outrigger_admission");
        registry.register(
            "reviews",
            "Admission reviews answered, by result",
            metrics.reviews.clone(),
        );
        registry.register_with_unit(
            "duration",
            "Time to answer one admission review",
            prometheus_client::registry::Unit::Seconds,
            metrics.duration.clone(),
        );
        metrics
    }
}

/// Looks up the sidecars a service asks for.
pub trait OwnerLookup: Send + Sync {
    /// `spec.sidecars`, the sidecar ConfigMap and the UID of the named service, when it exists.
    fn sidecars(&self, kind: &str, namespace: &str, name: &str) -> Option<OwnerEntry>;
}

/// What injection needs of a pod's owning service.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnerEntry {
    pub sidecars: Vec<outrigger_api::common::SidecarSpec>,
    pub config_map: String,
    pub uid: Option<String>,
}

/// Owner lookups from watch caches of the two service kinds.
pub struct CachedOwners {
    replicated: reflector::Store<ReplicatedService>,
    sharded: reflector::Store<ShardedService>,
}

impl CachedOwners {
    /// Starts the caches (cluster-wide, or in one namespace).
    pub fn start(client: &Client, namespace: Option<&str>) -> CachedOwners {
        fn cache<K>(api: Api<K>) -> reflector::Store<K>
        where
            K: kube::Resource<DynamicType = ()>
                + Clone
                + std::fmt::Debug
                + serde::de::DeserializeOwned
                + Send
                + Sync
                + 'static,
        {
            let (reader, writer) = reflector::store();
            let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
                .default_backoff()
                .applied_objects()
                .for_each(|_| futures::future::ready(()));
            tokio::spawn(stream);
            reader
        }
        let (replicated, sharded) = match namespace {
            Some(ns) => (
                cache(Api::namespaced(client.clone(), ns)),
                cache(Api::namespaced(client.clone(), ns)),
            ),
            None => (cache(Api::all(client.clone())), cache(Api::all(client.clone()))),
        };
        CachedOwners { replicated, sharded }
    }
}

impl OwnerLookup for CachedOwners {
    fn sidecars(&self, kind: &str, namespace: &str, name: &str) -> Option<OwnerEntry> {
        match kind {
            "ReplicatedService" => {
                let key = reflector::ObjectRef::new(name).within(namespace);
                self.replicated.get(&key).map(|s| OwnerEntry {
                    // With a strategy, config sync learns where the rollout document is.
                    sidecars: config_rollout::sidecars_for(
                        name,
                        s.spec.rollout_strategy_ref.is_some(),
                        &s.spec.sidecars,
                    ),
                    config_map: replicated::config_map_name(name),
                    uid: s.metadata.uid.clone(),
                })
            }
            "ShardedService" => {
                let key = reflector::ObjectRef::new(name).within(namespace);
                self.sharded.get(&key).map(|s| OwnerEntry {
                    sidecars: s.spec.sidecars.clone(),
                    config_map: sharded::shard_map_name(name),
                    uid: s.metadata.uid.clone(),
                })
            }
            _ => None,
        }
    }
}

/// Everything a review needs.
pub struct Injector {
    pub owners: Arc<dyn OwnerLookup>,
    pub defaults: SidecarDefaults,
    pub native_sidecars: bool,
    pub metrics: WebhookMetrics,
}

impl Injector {
    /// Answers one AdmissionReview (the body of a POST to `/mutate`).
    pub fn review(&self, body: &[u8]) -> Result<AdmissionReview<kube::core::DynamicObject>, String> {
        let review: AdmissionReview<Pod> =
            serde_json::from_slice(body).map_err(|error| format!("malformed AdmissionReview: {error}"))?;
        let request: AdmissionRequest<Pod> = review
            .try_into()
            .map_err(|error| format!("AdmissionReview without a request: {error}"))?;
        let response = self.respond(&request);
        Ok(response.into_review())
    }

    fn respond(&self, request: &AdmissionRequest<Pod>) -> AdmissionResponse {
        let allowed = AdmissionResponse::from(request);
        let Some(pod) = &request.object else {
            return self.count(allowed, "allowed");
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.namespace())
            .unwrap_or_default();
        let owned =
            inject::owner_of(pod).and_then(|(kind, name)| self.owners.sidecars(kind, &namespace, &name));
        let owner = owned.as_ref().map(|entry| OwnerSidecars {
            sidecars: &entry.sidecars,
            config_map: &entry.config_map,
            uid: entry.uid.as_deref(),
        });
        let plan = match inject::plan(pod, owner, &self.defaults, self.native_sidecars) {
            Ok(Some(plan)) => plan,
            Ok(None) => return self.count(allowed, "allowed"),
            Err(error) => return self.count(allowed.deny(error.to_string()), "denied"),
        };
        let mutated = match inject::mutate(pod, &plan) {
            Ok(mutated) => mutated,
            Err(error) => return self.count(allowed.deny(error.to_string()), "denied"),
        };
        let patch = match (serde_json::to_value(pod), serde_json::to_value(&mutated)) {
            (Ok(before), Ok(after)) => json_patch::diff(&before, &after),
            _ => return self.count(allowed.deny("the pod could not be encoded"), "error"),
        };
        if patch.0.is_empty() {
            return self.count(allowed, "allowed");
        }
        tracing::info!(namespace = %namespace, pod = %pod.name_any(), sidecars = plan.sidecars.len(), "Injecting sidecars.");
        match allowed.clone().with_patch(patch) {
            Ok(response) => self.count(response, "patched"),
            Err(error) => self.count(allowed.deny(format!("encoding the patch: {error}")), "error"),
        }
    }

    fn count(&self, response: AdmissionResponse, result: &'static str) -> AdmissionResponse {
        self.metrics.reviews.get_or_create(&ResultLabels { result }).inc();
        response
    }

    /// Serves one HTTP request.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let started = Instant::now();
        let response = if request.method() != Method::POST
            || request.uri().path() != outrigger_core::webhook_config::MUTATE_PATH
        {
            plain(StatusCode::NOT_FOUND, "POST /mutate only\n".to_owned())
        } else {
            match Limited::new(request.into_body(), MAX_REVIEW_BYTES)
                .collect()
                .await
            {
                Err(error) => plain(StatusCode::BAD_REQUEST, format!("reading the request: {error}\n")),
                Ok(body) => match self
                    .review(&body.to_bytes())
                    .and_then(|r| serde_json::to_vec(&r).map_err(|e| e.to_string()))
                {
                    Ok(json) => {
                        let mut response = Response::new(Full::new(Bytes::from(json)));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/json"),
                        );
                        response
                    }
                    Err(message) => {
                        self.metrics
                            .reviews
                            .get_or_create(&ResultLabels { result: "malformed" })
                            .inc();
                        plain(StatusCode::BAD_REQUEST, format!("{message}\n"))
                    }
                },
            }
        };
        self.metrics.duration.observe(started.elapsed().as_secs_f64());
        response
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// Why the webhook server could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("binding the webhook server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("configuring TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// How long a stopping server waits for open connections to finish their reviews.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an HTTP/2 connection is served before a drain may tell it to go away. A client opens a
/// connection to send a request; one that opened just before the drain began has not sent it yet,
/// and going away at once (before its HTTP/2 preface is even read) would close it with nothing
/// answered.
const FRESH_CONNECTION: Duration = Duration::from_secs(1);

/// Binds the webhook's port. The operator binds it before it publishes its webhook configuration:
/// a review the API server sends as soon as it sees the configuration then waits in the listen
/// backlog until the server accepts it, instead of meeting a refused connection, which the
/// failure policy would turn into a pod without sidecars (`Ignore`) or a refused pod (`Fail`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, WebhookError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| WebhookError::Bind { addr, source })?;
    tracing::info!(%addr, "Webhook server listening.");
    Ok(listener)
}

/// Serves HTTPS with the (rotating) certificate until `shutdown` completes, then drains.
///
/// The API server keeps its connections to a webhook replica and reuses them after the replica
/// has left the Service's endpoints. Closing one under a review, or as the API server sends one,
/// fails that review, and the `Ignore` failure policy admits the pod without its sidecars. So on
/// shutdown every connection is told to go away in its own protocol, and the API server sends new
/// reviews over a new connection to a live replica:
/// - HTTP/2 gets GOAWAY, which says which requests will still be answered. A connection younger
///   than [`FRESH_CONNECTION`] gets it only once it has had that long to send its review.
/// - HTTP/1.1 (what the API server speaks to webhooks) has no such message: an idle connection
///   closed by the server can cross a review the API server is sending on it, which then fails
///   with `EOF`. So an HTTP/1.1 connection is not closed by the drain; its next response says
///   `connection: close`, and it closes after that response. One that stays idle is closed at
///   [`DRAIN_DEADLINE`].
pub async fn serve(
    listener: TcpListener,
    served: Arc<certs::ServedCert>,
    injector: Arc<Injector>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WebhookError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(served);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    // Every connection task holds a receiver for its whole life: the drain is over when the last
    // one is dropped.
    let (draining, drain_started) = watch::channel(false);
    // Read by every HTTP/1.1 response: once set, it closes its connection.
    let closing = Arc::new(AtomicBool::new(false));
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "Webhook server failed to accept a connection.");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let opened = tokio::time::Instant::now();
        let acceptor = acceptor.clone();
        let injector = injector.clone();
        let mut drain_started = drain_started.clone();
        let closing = closing.clone();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed.");
                    return;
                }
                Err(_) => return,
            };
            let http2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            let service = service_fn(move |request: Request<Incoming>| {
                let injector = injector.clone();
                let closing = closing.clone();
                async move {
                    let http1 = request.version() < http::Version::HTTP_2;
                    let mut response = injector.handle(request).await;
                    if http1 && closing.load(Ordering::Acquire) {
                        response
                            .headers_mut()
                            .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            // The borrow `wait_for` returns is not `Send`; it must not live across the drain.
            let drain = async {
                let _ = drain_started.wait_for(|started| *started).await;
            };
            let ended = if http2 {
                tokio::select! {
                    ended = connection.as_mut() => ended,
                    () = drain => {
                        let grace = tokio::time::sleep_until(opened + FRESH_CONNECTION);
                        tokio::select! {
                            ended = connection.as_mut() => ended,
                            () = grace => {
                                connection.as_mut().graceful_shutdown();
                                connection.await
                            }
                        }
                    }
                }
            } else {
                // Closed by its first response after the drain began (see above).
                connection.await
            };
            if let Err(error) = ended {
                tracing::debug!(%error, "Webhook connection ended with an error.");
            }
        });
    }
    drop(listener);
    drop(drain_started);
    tracing::info!(
        connections = draining.receiver_count(),
        "Webhook server stopped accepting; draining its connections."
    );
    closing.store(true, Ordering::Release);
    let _ = draining.send(true);
    match tokio::time::timeout(DRAIN_DEADLINE, draining.closed()).await {
        Ok(()) => tracing::info!("Webhook connections drained."),
        Err(_) => tracing::warn!(
            deadline_seconds = DRAIN_DEADLINE.as_secs(),
            "Webhook connections still open at the drain deadline; closing them."
        ),
    }
    Ok(())
}
