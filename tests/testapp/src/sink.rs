//! `outrigger-testapp sink`: a log sink for the log adapter's cluster test, in a pod of its own.
//!
//! - `POST /ingest`: each line of the body (JSON lines) is printed to stdout, where the test counts
//!   them with `kubectl logs`; answers 200.
//! - `POST /-/down/<seconds>`: the sink goes down for that long: the listener is closed (new
//!   connections are refused) and requests on connections already open get 503 and are closed.
//! - `GET /healthz`: 200.
//!
//! `PORT` (default 8080).

use std::{
    convert::Infallible,
    io::Write,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Default)]
struct State {
    down_until: Mutex<Option<Instant>>,
    /// Wakes the accept loop to close the listener.
    went_down: tokio::sync::Notify,
}

impl State {
    fn down_for(&self) -> Option<Duration> {
        let until = (*self
            .down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

fn answer(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    if let Some(seconds) = path.strip_prefix("/-/down/") {
        let Ok(seconds) = seconds.parse::<u64>() else {
            return answer(StatusCode::BAD_REQUEST, "seconds?\n");
        };
        *state
            .down_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Instant::now() + Duration::from_secs(seconds));
        state.went_down.notify_one();
        eprintln!("sink: down for {seconds}s");
        return answer(StatusCode::OK, "down\n");
    }
    if path == "/healthz" {
        return answer(StatusCode::OK, "ok\n");
    }
    if path != "/ingest" || request.method() != Method::POST {
        return answer(StatusCode::NOT_FOUND, "POST /ingest\n");
    }
    if state.down_for().is_some() {
        let mut response = answer(StatusCode::SERVICE_UNAVAILABLE, "down\n");
        response
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        return response;
    }
    let Ok(body) = request.into_body().collect().await else {
        return answer(StatusCode::BAD_REQUEST, "body?\n");
    };
    let body = body.to_bytes();
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_all(&body).and_then(|()| {
        if body.ends_with(b"\n") {
            Ok(())
        } else {
            stdout.write_all(b"\n")
        }
    });
    let _ = stdout.flush();
    match written {
        Ok(()) => answer(StatusCode::OK, ""),
        Err(_) => answer(StatusCode::INTERNAL_SERVER_ERROR, "stdout\n"),
    }
}

/// Runs until killed.
pub async fn run() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(8080);
    let address = SocketAddr::from(([0, 0, 0, 0], port));
    let state = Arc::new(State::default());
    loop {
        let listener = tokio::net::TcpListener::bind(address).await?;
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => accepted?.0,
                () = state.went_down.notified() => break,
            };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(state, request).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
        drop(listener);
        while let Some(left) = state.down_for() {
            tokio::time::sleep(left).await;
        }
        eprintln!("sink: up again");
    }
}
