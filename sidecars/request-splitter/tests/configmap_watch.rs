#![cfg(feature = "configmap")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The splitter's ConfigMap layer against a scripted API server on loopback (plain HTTP): the object
//! is read, then watched from its resource version; changes apply, bad versions are rejected and
//! counted, a deletion keeps the configuration, and a ConfigMap that appears later patches the file.
//! The watch itself (expired versions, refused tokens, bookmarks) is tested in the runtime:
//! `sidecars/runtime/tests/watch.rs`. The real API server is exercised by
//! `tests/tests/splitter_configmap.rs` at the workspace root.

mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use outrigger_request_splitter::run::{start, ConfigMapOptions, Options, Running};
use outrigger_sidecar_runtime::apiserver::ApiServerOptions;
use serde_json::{json, Value};
use support::{temp_path, STEP};
use tokio::{net::TcpListener, sync::mpsc};

const KEY: &str = "request-splitter.json";

/// What the scripted API server holds and saw.
#[derive(Default)]
struct ApiState {
    /// The ConfigMap answered to a GET; `None` answers 404.
    object: Option<Value>,
    /// The token it accepts.
    token: String,
    /// Resource versions a watch is refused for with an ERROR 410 event.
    expired: Vec<String>,
    /// Path and query of every request, in order.
    requests: Vec<String>,
    /// Open watch streams.
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
}

#[derive(Clone)]
struct FakeApi {
    addr: SocketAddr,
    state: Arc<Mutex<ApiState>>,
}

impl FakeApi {
    async fn start(object: Option<Value>, token: &str) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(ApiState {
            object,
            token: token.to_owned(),
            ..ApiState::default()
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(answer(&state, &request)) }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends one event line to every open watch.
    fn event(&self, kind: &str, object: &Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        let mut state = self.state.lock().unwrap();
        state
            .watchers
            .retain(|watcher| watcher.send(Bytes::from(line.clone())).is_ok());
    }

    /// Ends every open watch, as the server does at `timeoutSeconds`.
    fn end_watches(&self) {
        self.state.lock().unwrap().watchers.clear();
    }

    fn open_watches(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        state.watchers.retain(|watcher| !watcher.is_closed());
        state.watchers.len()
    }

    fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }

    fn watch_requests(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter(|request| request.contains("watch=1"))
            .collect()
    }
}

fn answer(state: &Mutex<ApiState>, request: &Request<Incoming>) -> Response<LineBody> {
    let mut state = state.lock().unwrap();
    let path = request
        .uri()
        .path_and_query()
        .map(ToString::to_string)
        .unwrap_or_default();
    state.requests.push(path.clone());
    let authorized = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == format!("Bearer {}", state.token).as_bytes());
    if !authorized {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    if path.starts_with("/api/v1/namespaces/shop/configmaps?") && path.contains("watch=1") {
        let version = path
            .split('&')
            .find_map(|pair| pair.strip_prefix("resourceVersion="))
            .unwrap_or_default();
        if state.expired.iter().any(|expired| expired == version) {
            let event = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
                "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}});
            return Response::new(LineBody::once(format!("{event}\n")));
        }
        let (sender, receiver) = mpsc::unbounded_channel();
        state.watchers.push(sender);
        return Response::new(LineBody {
            receiver: Some(receiver),
        });
    }
    if path == "/api/v1/namespaces/shop/configmaps/cm" {
        return match &state.object {
            Some(object) => Response::new(LineBody::once(object.to_string())),
            None => status(StatusCode::NOT_FOUND, "NotFound"),
        };
    }
    status(StatusCode::NOT_FOUND, "NotFound")
}

fn status(code: StatusCode, reason: &str) -> Response<LineBody> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
        "code": code.as_u16(), "message": reason});
    let mut response = Response::new(LineBody::once(body.to_string()));
    *response.status_mut() = code;
    response
}

/// A response body fed line by line from a channel; it ends when the sender is dropped.
struct LineBody {
    receiver: Option<mpsc::UnboundedReceiver<Bytes>>,
}

impl LineBody {
    fn once(text: String) -> LineBody {
        let (sender, receiver) = mpsc::unbounded_channel();
        let _ = sender.send(Bytes::from(text));
        LineBody {
            receiver: Some(receiver),
        }
    }
}

impl Body for LineBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let Some(receiver) = this.receiver.as_mut() else {
            return Poll::Ready(None);
        };
        match receiver.poll_recv(cx) {
            Poll::Ready(Some(bytes)) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
            Poll::Ready(None) => {
                this.receiver = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

fn document(stable: u32, canary: u32) -> Value {
    json!({
        "listen": "127.0.0.1:0",
        "accessLog": false,
        "backends": [
            {"name": "stable", "endpoints": ["127.0.0.1:1"]},
            {"name": "canary", "endpoints": ["127.0.0.1:2"]}
        ],
        "weights": {"stable": stable, "canary": canary}
    })
}

fn configmap(version: &str, text: &str) -> Value {
    json!({
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": "cm", "namespace": "shop", "resourceVersion": version},
        "data": {KEY: text}
    })
}

fn token_file(token: &str) -> PathBuf {
    let path = temp_path("token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

async fn splitter(api: &FakeApi, token: PathBuf, file: Option<Value>) -> Running {
    let config_file = file.map(|document| {
        let path = temp_path("splitter.json");
        std::fs::write(&path, document.to_string()).unwrap();
        path
    });
    tokio::time::timeout(
        STEP,
        start(Options {
            config_file,
            configmap: Some(ConfigMapOptions {
                reference: "shop/cm".to_owned(),
                key: KEY.to_owned(),
                api: ApiServerOptions {
                    server: Some(api.url()),
                    token_file: Some(token),
                    ca_file: None,
                },
            }),
            admin_addr: "127.0.0.1:0".parse().unwrap(),
            poll_interval: Duration::from_secs(3_600),
            drain_timeout: Duration::from_secs(1),
            drain_delay: Duration::ZERO,
            workers: 1,
        }),
    )
    .await
    .expect("the splitter never started")
    .unwrap()
}

fn weights(running: &Running) -> Vec<u32> {
    running.store().current().unwrap().config.weight_vector()
}

/// Polls `condition` every 10 ms, failing after [`STEP`] with `what`.
async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + STEP;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Versions of the ConfigMap rejected so far, from `/metrics`.
async fn rejected(running: &Running) -> f64 {
    let url = format!("http://{}/metrics", running.admin_addr);
    let text = support::get(&support::client(), &url, &[]).await.body;
    support::metric(
        &text,
        "outrigger_splitter_config_reloads_total{source=\"configmap\",result=\"rejected\"}",
    )
}

#[tokio::test]
async fn the_configmap_is_read_then_watched_from_its_version_and_every_change_applies() {
    let api = FakeApi::start(Some(configmap("10", &document(90, 10).to_string())), "secret").await;
    let running = splitter(&api, token_file("secret"), None).await;
    assert_eq!(weights(&running), vec![90, 10], "the document read is served");
    until("the watch", || api.open_watches() == 1).await;
    let watch = &api.watch_requests()[0];
    assert!(
        watch.contains("fieldSelector=metadata.name%3Dcm") && watch.contains("resourceVersion=10"),
        "{watch}"
    );

    api.event("MODIFIED", &configmap("11", &document(50, 50).to_string()));
    until("the new weights", || weights(&running) == vec![50, 50]).await;

    api.event("MODIFIED", &configmap("12", r#"{"weights": {"stable": 70}}"#));
    let deadline = tokio::time::Instant::now() + STEP;
    while rejected(&running).await < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the invalid version was never rejected"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        weights(&running),
        vec![50, 50],
        "the previous version keeps serving"
    );

    api.event("DELETED", &configmap("13", "{}"));
    api.event(
        "BOOKMARK",
        &json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "14"}}),
    );
    // The server ends the watch; the next one starts from the last version seen, the bookmark's.
    tokio::time::sleep(Duration::from_millis(50)).await;
    api.end_watches();
    until("a second watch", || api.open_watches() == 1).await;
    let watches = api.watch_requests();
    assert!(watches[1].contains("resourceVersion=14"), "{watches:?}");
    assert_eq!(
        weights(&running),
        vec![50, 50],
        "a deleted ConfigMap leaves the configuration"
    );

    api.event("ADDED", &configmap("15", &document(0, 100).to_string()));
    until("the recreated ConfigMap", || weights(&running) == vec![0, 100]).await;
    let gets = api
        .requests()
        .iter()
        .filter(|request| !request.contains("watch=1"))
        .count();
    assert_eq!(gets, 1, "the object is read once; the watch carries the rest");
    let url = format!("http://{}/metrics", running.admin_addr);
    let metrics = support::get(&support::client(), &url, &[]).await.body;
    assert_eq!(
        support::metric(&metrics, "outrigger_splitter_api_relists_total"),
        1.0,
        "the watch's health is on /metrics: {metrics}"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn a_missing_configmap_is_watched_for_and_applied_when_it_appears() {
    let api = FakeApi::start(None, "secret").await;
    let running = splitter(&api, token_file("secret"), Some(document(100, 0))).await;
    until("the watch", || api.open_watches() == 1).await;
    assert!(
        !api.watch_requests()[0].contains("resourceVersion"),
        "without a version the watch starts with the current state"
    );
    api.event(
        "ADDED",
        &configmap("3", r#"{"weights": {"stable": 80, "canary": 20}}"#),
    );
    until("the ConfigMap's weights", || weights(&running) == vec![80, 20]).await;
    running.shutdown().await;
}
