//! Test app: `GET /healthz` → 200; any other request → 200 with `version=<VERSION>` in the body,
//! or 500 for `ERROR_PERCENT` percent of requests (deterministically, every n-th request).
//! Environment: `PORT` (else `OUTRIGGER_ADMIN_PORT`, so it can stand in for a sidecar; default 8080),
//! `VERSION` (default `v1`), `ERROR_PERCENT` (default 0), `DRAIN_SECONDS` (default 2: how long it
//! keeps serving after SIGTERM, while the endpoints that route to it are being removed).
//!
//! `outrigger-testapp get http://127.0.0.1:PORT/PATH` is a tiny HTTP client (exit 0 on a 2xx), so
//! a test can check from inside a pod what the pod's containers reach on localhost.
//!
//! With `LOG_DIR` set it also writes log files there for the log adapter (see `logs`).

mod logs;

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

/// GET `url` (`http://host:port/path`) and print the response; true on a 2xx.
fn get(url: &str) -> std::io::Result<bool> {
    use std::io::{Error, Read, Write};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| Error::other("only http:// URLs"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    print!("{response}");
    Ok(response
        .split_whitespace()
        .nth(1)
        .is_some_and(|status| status.starts_with('2')))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("get") {
        let ok = get(args.get(2).map(String::as_str).unwrap_or_default())?;
        std::process::exit(if ok { 0 } else { 1 });
    }
    logs::start();
    let port: u16 = ["PORT", "OUTRIGGER_ADMIN_PORT"]
        .iter()
        .find_map(|name| std::env::var(name).ok().and_then(|p| p.parse().ok()))
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
    let drain = std::time::Duration::from_secs(
        std::env::var("DRAIN_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2),
    );
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = terminate.recv() => tokio::time::sleep(drain).await,
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut stop => return Ok(()),
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
