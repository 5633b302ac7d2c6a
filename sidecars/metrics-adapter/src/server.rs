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

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    adapter: Arc<Adapter>,
    admin: AdminState,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
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
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(%error, "Connection ended with an error.");
            }
        });
    }
}
