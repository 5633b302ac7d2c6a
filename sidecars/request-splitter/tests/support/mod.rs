//! Real peers for the integration tests: small hyper backends on loopback ports, the splitter
//! started in-process from a configuration file, and a keep-alive client. Nothing of the proxy
//! itself is mocked.

#![allow(dead_code)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use outrigger_request_splitter::run::{start, Options, Running};
use serde_json::Value;
use tokio::{net::TcpListener, sync::Notify, task::JoinSet};

/// Longest any single test step may take before the test fails (a safety net, not a measurement).
pub const STEP: Duration = Duration::from_secs(30);

/// What a test backend does with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Answers 200 with its name as the body; `?delay=<ms>` waits first; `?status=<code>` sets the status.
    Named,
    /// Accepts the request and never answers.
    Hang,
    /// Streams the request body back as the response body, frame by frame.
    Echo,
    /// Answers an `Upgrade` request with 101 and then echoes raw bytes.
    Upgrade,
    /// As `Named`, with caching headers from the query: `cc=` (`Cache-Control`), `vary=<header>`
    /// (the body then ends with `:<that header's value>`), `etag=` (a matching `If-None-Match`
    /// gets 304), `cookie=1` (a `Set-Cookie`) and `size=<n>` (the body padded to n bytes).
    Cacheable,
}

/// A request as a backend saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A backend on a loopback port.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Notified whenever a request arrives.
    pub arrived: Arc<Notify>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Backend {
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// Kills the backend: stops accepting and drops every connection (as a crashed process would).
    pub fn kill(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.abort_all();
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts a plain HTTP/1.1 + h2c backend.
pub async fn backend(name: &str, behaviour: Behaviour) -> Backend {
    backend_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), name, behaviour)
}

/// Starts a backend on a given address (one where nothing listened before, say).
pub async fn backend_at(addr: SocketAddr, name: &str, behaviour: Behaviour) -> Backend {
    backend_on(TcpListener::bind(addr).await.unwrap(), name, behaviour)
}

fn backend_on(listener: TcpListener, name: &str, behaviour: Behaviour) -> Backend {
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let arrived = Arc::new(Notify::new());
    let tasks = Arc::new(Mutex::new(JoinSet::new()));
    let state = (name.to_owned(), hits.clone(), seen.clone(), arrived.clone());
    let connection_tasks = tasks.clone();
    tasks.lock().unwrap().spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let state = state.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(respond(state, behaviour, request).await) }
            });
            let connection = async move {
                let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Above the splitter's own limit, so that tests of that limit see the splitter's.
                builder.http1().max_headers(1_000);
                let _ = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            };
            if let Ok(mut tasks) = connection_tasks.lock() {
                tasks.spawn(connection);
            }
        }
    });
    Backend {
        name: name.to_owned(),
        addr,
        hits,
        seen,
        arrived,
        tasks,
    }
}

type State = (String, Arc<AtomicUsize>, Arc<Mutex<Vec<Seen>>>, Arc<Notify>);
type TestBody = UnsyncBoxBody<Bytes, hyper::Error>;

fn full(text: impl Into<Bytes>) -> TestBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

async fn respond(state: State, behaviour: Behaviour, mut request: Request<Incoming>) -> Response<TestBody> {
    let (name, hits, seen, arrived) = state;
    hits.fetch_add(1, Ordering::SeqCst);
    let query = request.uri().query().unwrap_or("").to_owned();
    let param = |key: &str| {
        query
            .split('&')
            .find_map(|pair| pair.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
            .map(str::to_owned)
    };
    match behaviour {
        Behaviour::Echo => {
            arrived.notify_waiters();
            let mut response = Response::new(request.into_body().boxed_unsync());
            response.headers_mut().insert("x-backend", name.parse().unwrap());
            return response;
        }
        Behaviour::Upgrade => {
            arrived.notify_waiters();
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                if let Ok(upgraded) = upgrade.await {
                    let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                }
            });
            let mut response = Response::new(full(Bytes::new()));
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response.headers_mut().insert("upgrade", "echo".parse().unwrap());
            response
                .headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            return response;
        }
        Behaviour::Named | Behaviour::Hang | Behaviour::Cacheable => {}
    }
    let (parts, body) = request.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body,
    });
    arrived.notify_waiters();
    if behaviour == Behaviour::Hang {
        std::future::pending::<()>().await;
    }
    if let Some(delay) = param("delay").and_then(|d| d.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if behaviour == Behaviour::Cacheable {
        return cacheable(&name, &parts.headers, param);
    }
    let mut response = Response::new(full(name.clone()));
    if let Some(status) = param("status").and_then(|s| s.parse().ok()) {
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
    }
    let headers = response.headers_mut();
    headers.insert("x-backend", name.parse().unwrap());
    for (from, to) in [
        ("x-request-id", "x-seen-request-id"),
        ("traceparent", "x-seen-traceparent"),
        ("x-forwarded-for", "x-seen-forwarded-for"),
        ("x-forwarded-proto", "x-seen-forwarded-proto"),
    ] {
        if let Some(value) = parts.headers.get(from) {
            headers.insert(to, value.clone());
        }
    }
    response
}

fn cacheable(name: &str, request: &HeaderMap, param: impl Fn(&str) -> Option<String>) -> Response<TestBody> {
    let etag = param("etag").map(|tag| format!("\"{tag}\""));
    let matched = etag.as_ref().is_some_and(|etag| {
        request
            .get("if-none-match")
            .is_some_and(|condition| condition.as_bytes() == etag.as_bytes())
    });
    let mut body = name.to_owned();
    if let Some(vary) = param("vary") {
        let value = request
            .get(vary.as_str())
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        body = format!("{body}:{value}");
    }
    if let Some(size) = param("size").and_then(|size| size.parse::<usize>().ok()) {
        body = format!("{body:x<size$}");
    }
    let mut response = Response::new(full(if matched { String::new() } else { body }));
    if matched {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
    }
    let headers = response.headers_mut();
    headers.insert("x-backend", name.parse().unwrap());
    if let Some(cc) = param("cc") {
        headers.insert("cache-control", cc.parse().unwrap());
    }
    if let Some(vary) = param("vary") {
        headers.insert("vary", vary.parse().unwrap());
    }
    if let Some(etag) = etag {
        headers.insert("etag", etag.parse().unwrap());
    }
    if param("cookie").is_some() {
        headers.insert("set-cookie", "session=1".parse().unwrap());
    }
    response
}

/// A splitter started in-process with its configuration in a file.
pub struct Splitter {
    pub running: Running,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config_path: PathBuf,
}

pub fn temp_path(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let unique = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("splitter-test-{}-{unique}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Starts a splitter listening on an ephemeral loopback port, polling its file every 50 ms.
pub async fn splitter(config: Value) -> Splitter {
    splitter_with(config, 1, Duration::from_millis(50)).await
}

/// Starts a splitter with `workers` worker threads.
pub async fn splitter_with_workers(config: Value, workers: usize) -> Splitter {
    splitter_with(config, workers, Duration::from_millis(50)).await
}

/// Starts a splitter whose file is reloaded only by [`Splitter::reconfigure`] (for tests that count
/// reloads exactly: the poller would read the same files too).
pub async fn splitter_without_poller(config: Value) -> Splitter {
    splitter_with(config, 1, Duration::from_secs(3_600)).await
}

async fn splitter_with(mut config: Value, workers: usize, poll_interval: Duration) -> Splitter {
    config["listen"] = Value::from("127.0.0.1:0");
    if config.get("accessLog").is_none() {
        config["accessLog"] = Value::from(false);
    }
    let config_path = temp_path("splitter.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    let running = start(Options {
        config_file: Some(config_path.clone()),
        configmap: None,
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        poll_interval,
        drain_timeout: Duration::from_secs(2),
        drain_delay: Duration::ZERO,
        workers,
    })
    .await
    .unwrap();
    Splitter {
        addr: running.addr,
        admin: running.admin_addr,
        running,
        config_path,
    }
}

impl Splitter {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Writes a new configuration file (keeping the listen address) and applies it now.
    pub async fn reconfigure(&self, mut config: Value) -> Result<(), String> {
        config["listen"] = Value::from(self.addr.to_string());
        if config.get("accessLog").is_none() {
            config["accessLog"] = Value::from(false);
        }
        self.write_raw(&serde_json::to_vec_pretty(&config).unwrap());
        match self.running.reload_file().await {
            Some(Ok(_)) => Ok(()),
            Some(Err(error)) => Err(error.to_string()),
            None => Err("no configuration file".to_owned()),
        }
    }

    /// Replaces the file atomically (as a ConfigMap volume update does) without reloading.
    pub fn write_raw(&self, bytes: &[u8]) {
        let staging = self.config_path.with_extension("tmp");
        std::fs::write(&staging, bytes).unwrap();
        std::fs::rename(&staging, &self.config_path).unwrap();
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let client = client();
        let response = client
            .get(format!("http://{}{path}", self.admin).parse().unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.1
    }
}

/// The value of the first sample whose line starts with `prefix` (name and labels), or 0.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends a GET with extra headers and reads the whole response (bounded by [`STEP`]).
pub async fn get(client: &TestClient, url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = Request::get(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(client, builder.body(Full::new(Bytes::new())).unwrap()).await
}

pub async fn send(client: &TestClient, request: Request<Full<Bytes>>) -> Reply {
    tokio::time::timeout(STEP, async {
        let response = client.request(request).await.expect("request failed");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body failed").to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    })
    .await
    .expect("no response within the safety bound")
}

/// An empty body, for clients that need one.
pub fn empty() -> Empty<Bytes> {
    Empty::new()
}
