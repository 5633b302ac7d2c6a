//! A small HTTP server for a sidecar's own endpoints beside the admin server (probes, scrapes):
//! a bounded number of connections (more wait in the listen backlog instead of growing tasks and
//! buffers without bound), a header read timeout and a lifetime per connection.

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, sync::Semaphore};

/// How many connections, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub connection_lifetime: Duration,
}

/// Serves `listener` until `shutdown` completes, answering every request with `respond`.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    limits: Limits,
    respond: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    tokio::pin!(shutdown);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
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
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let respond = respond.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let answer = respond(request);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let served = tokio::time::timeout(
                limits.connection_lifetime,
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
