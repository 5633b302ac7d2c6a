//! The HTTP side: `/metrics` answered by the [`Adapter`] in the negotiated format, everything
//! else (`/healthz`, `/readyz`) by the shared admin state.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use outrigger_sidecar_runtime::{admin::AdminState, http_server};
use tokio::net::TcpListener;

use crate::{adapter::Adapter, expose::Format};

/// Answers one request.
pub async fn respond(
    adapter: &Adapter,
    admin: &AdminState,
    method: &Method,
    path: &str,
    accept: Option<&str>,
) -> Response<Full<Bytes>> {
    if path != "/metrics" || (method != Method::GET && method != Method::HEAD) {
        return admin.respond(method, path);
    }
    let format = Format::negotiate(accept);
    let mut body = String::with_capacity(64 * 1024);
    adapter.scrape(&mut body, format).await;
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(format.content_type()),
    );
    response
}

/// Connections served at once, each for a bounded lifetime and with a bounded time to send a
/// request head, so idle or slow clients cannot hold them all for long. Scrapers are few.
const LIMITS: http_server::Limits = http_server::Limits {
    max_connections: 1024,
    header_read_timeout: std::time::Duration::from_secs(10),
    connection_lifetime: std::time::Duration::from_secs(60),
};

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    adapter: Arc<Adapter>,
    admin: AdminState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let answer = move |request: Request<Incoming>| {
        let adapter = adapter.clone();
        let admin = admin.clone();
        async move {
            let accept = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            respond(&adapter, &admin, request.method(), request.uri().path(), accept).await
        }
    };
    http_server::serve(listener, LIMITS, answer, shutdown).await;
}
