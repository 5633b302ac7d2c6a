//! Test app: `GET /healthz` → 200; any other request → 200 with `version=<VERSION>` in the body,
//! or 500 for `ERROR_PERCENT` percent of requests (deterministically, every n-th request).
//! Environment: `PORT` (default 8080), `VERSION` (default `v1`), `ERROR_PERCENT` (default 0).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

struct App {
    version: String,
    error_percent: u64,
    served: AtomicU64,
}

impl App {
    fn respond(&self, path: &str) -> Response<Full<Bytes>> {
        if path == "/healthz" {
            return Response::new(Full::new(Bytes::from_static(b"ok\n")));
        }
        let count = self.served.fetch_add(1, Ordering::Relaxed);
        // Fails requests n where floor((n+1)*p/100) > floor(n*p/100): exactly p% over any 100.
        let fails = (count + 1) * self.error_percent / 100 > count * self.error_percent / 100;
        let status = if fails {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::OK
        };
        let mut response = Response::new(Full::new(Bytes::from(format!("version={}\n", self.version))));
        *response.status_mut() = status;
        response
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let app = Arc::new(App {
        version: std::env::var("VERSION").unwrap_or_else(|_| "v1".to_owned()),
        error_percent: std::env::var("ERROR_PERCENT")
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
            .min(100),
        served: AtomicU64::new(0),
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = app.respond(request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
