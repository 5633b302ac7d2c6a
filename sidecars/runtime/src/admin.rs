//! The admin server every binary runs: `/metrics` (Prometheus text), `/healthz`, `/readyz`,
//! `/config` (the effective document and the last rejection, from the config source) and routes a
//! binary adds.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::{encoding::text::encode, registry::Registry};
use tokio::net::TcpListener;

/// Extra admin routes: given a path, returns `Some((content type, body))` when it serves it.
pub type ExtraRoutes = Arc<dyn Fn(&str) -> Option<(&'static str, String)> + Send + Sync>;

/// What `/config` answers: a JSON document made on each request.
pub type ConfigView = Arc<dyn Fn() -> String + Send + Sync>;

/// Shared state behind the admin endpoints.
#[derive(Clone)]
pub struct AdminState {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
    config: Option<ConfigView>,
    extra: Option<ExtraRoutes>,
    actions: Option<ExtraRoutes>,
}

impl AdminState {
    pub fn new(registry: Registry) -> AdminState {
        AdminState {
            registry: Arc::new(registry),
            ready: Arc::new(AtomicBool::new(false)),
            config: None,
            extra: None,
            actions: None,
        }
    }

    /// Serves `/config` (as JSON) from `view`, such as `ConfigSource::status_json`.
    #[must_use]
    pub fn with_config(mut self, view: ConfigView) -> AdminState {
        self.config = Some(view);
        self
    }

    /// Adds binary-specific routes.
    #[must_use]
    pub fn with_routes(mut self, extra: ExtraRoutes) -> AdminState {
        self.extra = Some(extra);
        self
    }

    /// Adds binary-specific actions: `POST` requests to the paths `actions` serves.
    #[must_use]
    pub fn with_actions(mut self, actions: ExtraRoutes) -> AdminState {
        self.actions = Some(actions);
        self
    }

    /// Marks the process ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Answers one admin request.
    pub fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method == Method::POST {
            if let Some((content_type, body)) = self.actions.as_ref().and_then(|actions| actions(path)) {
                return with_type(StatusCode::OK, content_type, body);
            }
        }
        if method != Method::GET && method != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        }
        match path {
            "/healthz" | "/livez" => text(StatusCode::OK, "ok\n"),
            "/readyz" if self.is_ready() => text(StatusCode::OK, "ready\n"),
            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
            "/metrics" => {
                let mut body = String::new();
                match encode(&mut body, &self.registry) {
                    Ok(()) => with_type(
                        StatusCode::OK,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        body,
                    ),
                    Err(error) => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &format!("encoding metrics: {error}\n"),
                    ),
                }
            }
            "/config" if self.config.is_some() => match &self.config {
                Some(view) => with_type(StatusCode::OK, "application/json", view()),
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
            other => match self.extra.as_ref().and_then(|extra| extra(other)) {
                Some((content_type, body)) => with_type(StatusCode::OK, content_type, body),
                None => text(StatusCode::NOT_FOUND, "not found\n"),
            },
        }
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", body.to_owned())
}

fn with_type(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Why the admin server stopped.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("binding the admin server to {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the admin listener (so a port clash fails start-up, not later).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// Serves admin requests until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let (stream, _) = match accepted {
            Ok(connection) => connection,
            Err(error) => {
                tracing::warn!(%error, "Admin server failed to accept a connection.");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = state.respond(request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, "Admin connection ended with an error.");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    async fn body(response: Response<Full<Bytes>>) -> String {
        String::from_utf8(response.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn readiness_follows_the_flag_and_metrics_are_encoded() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("requests", "Requests served", counter.clone());
        counter.inc();
        let state = AdminState::new(registry);
        assert_eq!(
            state.respond(&Method::GET, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        state.set_ready(true);
        assert_eq!(state.respond(&Method::GET, "/readyz").status(), StatusCode::OK);
        assert_eq!(state.respond(&Method::GET, "/healthz").status(), StatusCode::OK);
        let metrics = body(state.respond(&Method::GET, "/metrics")).await;
        assert!(metrics.contains("requests_total 1"), "{metrics}");
        assert_eq!(
            state.respond(&Method::GET, "/nope").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            state.respond(&Method::POST, "/healthz").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn config_is_served_from_its_view() {
        let state = AdminState::new(Registry::default());
        assert_eq!(
            state.respond(&Method::GET, "/config").status(),
            StatusCode::NOT_FOUND
        );
        let state = state.with_config(Arc::new(|| r#"{"generation":1}"#.to_owned()));
        assert_eq!(
            body(state.respond(&Method::GET, "/config")).await,
            r#"{"generation":1}"#
        );
    }

    #[tokio::test]
    async fn extra_routes_are_served() {
        let state = AdminState::new(Registry::default()).with_routes(Arc::new(|path| {
            (path == "/config").then(|| ("application/json", "{}".to_owned()))
        }));
        let response = state.respond(&Method::GET, "/config");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await, "{}");
    }

    #[tokio::test]
    async fn actions_answer_post_only_and_other_posts_are_not_allowed() {
        let state = AdminState::new(Registry::default()).with_actions(Arc::new(|path| {
            (path == "/cache/purge").then(|| ("application/json", "{\"purged\":3}".to_owned()))
        }));
        let response = state.respond(&Method::POST, "/cache/purge");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await, "{\"purged\":3}");
        assert_eq!(
            state.respond(&Method::GET, "/cache/purge").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            state.respond(&Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            state.respond(&Method::PUT, "/cache/purge").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}
