//! The HTTP side: `/metrics` answered by the [`Adapter`] in the negotiated format, everything
//! else (`/healthz`, `/readyz`) by the shared admin state.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use outrigger_sidecar_runtime::admin::AdminState;
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

/// Connections served at once, each for at most [`CONNECTION_LIFETIME`] and with
/// [`HEADER_TIMEOUT`] to send a request head: idle or slow clients cannot hold them all for long.
const MAX_CONNECTIONS: usize = 1024;
const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);
const HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    adapter: Arc<Adapter>,
    admin: AdminState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Scrapers and probes are few; a flood of connections waits in the backlog instead of
    // growing tasks and buffers without bound.
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = &mut shutdown => return,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "Failed to accept a connection.");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let adapter = adapter.clone();
        let admin = admin.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let adapter = adapter.clone();
                let admin = admin.clone();
                async move {
                    let accept = request
                        .headers()
                        .get(header::ACCEPT)
                        .and_then(|v| v.to_str().ok());
                    let response =
                        respond(&adapter, &admin, request.method(), request.uri().path(), accept).await;
                    Ok::<_, Infallible>(response)
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let served = tokio::time::timeout(
                CONNECTION_LIFETIME,
                builder.serve_connection(TokioIo::new(stream), service),
            )
            .await
            .unwrap_or(Ok(()));
            drop(permit);
            if let Err(error) = served {
                tracing::debug!(%error, "Connection ended with an error.");
            }
        });
    }
}
