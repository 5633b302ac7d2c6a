#![cfg(feature = "apiserver")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The generic watch against a scripted API server on loopback (plain HTTP): objects are read, then
//! watched from the version read; bookmarks, ended watches, expired versions and refused tokens each
//! lead where the Kubernetes API semantics say. The real API server (and its restart) is exercised
//! by `tests/tests/runtime_watch.rs` at the workspace root.

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
use outrigger_sidecar_runtime::apiserver::{
    Api, ApiClient, ApiServerOptions, ConfigMap, Event, Selector, Watcher,
};
use outrigger_sidecar_runtime::metrics::{CategoryLabels, WatchMetrics};
use serde_json::{json, Value};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
};

/// Longest any single step may take before the test fails (a safety net, not a measurement).
const STEP: Duration = Duration::from_secs(30);

/// What the scripted API server holds and saw.
#[derive(Default)]
struct ApiState {
    /// The object answered to a GET of `shop/cm`; `None` answers 404.
    object: Option<Value>,
    /// The list answered to a LIST.
    list: Vec<Value>,
    list_version: String,
    /// The token it accepts.
    token: String,
    /// Resource versions a watch is refused for with an ERROR 410 event.
    expired: Vec<String>,
    /// Path and query of every request, in order.
    requests: Vec<String>,
    /// Open watch streams.
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
    /// Answer every request with `403 Forbidden` (the identity lost its access).
    forbidden: bool,
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

    fn client(&self, token: PathBuf) -> ApiClient {
        ApiClient::new(&ApiServerOptions {
            server: Some(format!("http://{}", self.addr)),
            token_file: Some(token),
            ca_file: None,
        })
        .unwrap()
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
    if state.forbidden {
        return status(StatusCode::FORBIDDEN, "Forbidden");
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
    if path.starts_with("/api/v1/namespaces/shop/configmaps?") {
        let list = json!({"kind": "ConfigMapList", "apiVersion": "v1",
            "metadata": {"resourceVersion": state.list_version}, "items": state.list});
        return Response::new(LineBody::once(list.to_string()));
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

fn configmap(name: &str, version: &str, value: &str) -> Value {
    json!({
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "shop", "resourceVersion": version},
        "data": {"k": value}
    })
}

fn token_file(token: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "runtime-watch-token-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

/// A running watch and what it reported.
struct Watching {
    events: mpsc::UnboundedReceiver<Event<ConfigMap>>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Watching {
    fn start(watcher: Watcher<ConfigMap>) -> Watching {
        let (sender, events) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(watcher.run(
            move |event| {
                let _ = sender.send(event);
            },
            stopped,
        ));
        Watching { events, stop, task }
    }

    async fn next(&mut self, what: &str) -> Event<ConfigMap> {
        tokio::time::timeout(STEP, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("the watch stopped")
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(STEP, self.task)
            .await
            .expect("the watch did not stop")
            .unwrap();
    }
}

fn value(event: &Event<ConfigMap>) -> Vec<String> {
    let data = |object: &ConfigMap| object.data.as_ref().and_then(|data| data.get("k")).cloned();
    match event {
        Event::Restarted(objects) => objects.iter().filter_map(data).collect(),
        Event::Applied(object) | Event::Deleted(object) => data(object).into_iter().collect(),
    }
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

fn named(api: &FakeApi, token: &str) -> Watcher<ConfigMap> {
    let client = api.client(token_file(token));
    Watcher::new(Api::configmaps(client, "shop"), Selector::Named("cm".to_owned()))
}

#[tokio::test]
async fn a_named_object_is_read_then_watched_from_its_version_and_resumed_from_a_bookmark() {
    let api = FakeApi::start(Some(configmap("cm", "10", "one")), "secret").await;
    let mut watching = Watching::start(named(&api, "secret"));
    let first = watching.next("the object read").await;
    assert!(matches!(first, Event::Restarted(_)), "{first:?}");
    assert_eq!(value(&first), ["one"]);
    until("the watch", || api.open_watches() == 1).await;
    let request = &api.watch_requests()[0];
    assert!(
        request.contains("fieldSelector=metadata.name%3Dcm")
            && request.contains("resourceVersion=10")
            && request.contains("allowWatchBookmarks=true"),
        "{request}"
    );

    api.event("MODIFIED", &configmap("cm", "11", "two"));
    assert_eq!(value(&watching.next("the change").await), ["two"]);
    api.event("DELETED", &configmap("cm", "12", "two"));
    assert!(matches!(watching.next("the deletion").await, Event::Deleted(_)));
    api.event(
        "BOOKMARK",
        &json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"resourceVersion": "14"}}),
    );
    // The server ends the watch; the next one starts from the last version seen, the bookmark's.
    tokio::time::sleep(Duration::from_millis(50)).await;
    api.end_watches();
    until("a second watch", || {
        api.watch_requests().len() == 2 && api.open_watches() == 1
    })
    .await;
    let watches = api.watch_requests();
    assert!(watches[1].contains("resourceVersion=14"), "{watches:?}");
    api.event("ADDED", &configmap("cm", "15", "three"));
    assert_eq!(value(&watching.next("the recreated object").await), ["three"]);
    let reads = api
        .requests()
        .iter()
        .filter(|request| !request.contains("watch=1"))
        .count();
    assert_eq!(reads, 1, "the object is read once; the watch carries the rest");
    watching.stop().await;
}

#[tokio::test]
async fn an_expired_resource_version_makes_the_watch_read_everything_again() {
    let api = FakeApi::start(Some(configmap("cm", "5", "old")), "secret").await;
    api.state.lock().unwrap().expired.push("5".to_owned());
    let metrics = WatchMetrics::default();
    let mut watching = Watching::start(named(&api, "secret").with_metrics(metrics.clone()));
    assert_eq!(value(&watching.next("the first read").await), ["old"]);
    // Meanwhile the object changed; the 410 sends the watch back to read it.
    api.state.lock().unwrap().object = Some(configmap("cm", "9", "new"));
    let again = watching.next("the second read").await;
    assert!(matches!(again, Event::Restarted(_)), "{again:?}");
    assert_eq!(value(&again), ["new"]);
    until("a watch from the new version", || api.open_watches() == 1).await;
    let watches = api.watch_requests();
    assert!(
        watches.last().unwrap().contains("resourceVersion=9"),
        "{watches:?}"
    );
    assert_eq!(metrics.relists.get(), 2, "read at start and after the 410");
    let gone = metrics
        .errors
        .get_or_create(&CategoryLabels { category: "gone" })
        .get();
    assert_eq!(gone, 1);
    watching.stop().await;
}

#[tokio::test]
async fn a_watch_resumed_from_a_version_too_old_reads_everything_and_goes_on() {
    let api = FakeApi::start(Some(configmap("cm", "30", "current")), "secret").await;
    api.state.lock().unwrap().expired.push("3".to_owned());
    let mut watching = Watching::start(named(&api, "secret").resume_from("3"));
    let read = watching.next("the read after 410").await;
    assert!(matches!(read, Event::Restarted(_)), "{read:?}");
    assert_eq!(value(&read), ["current"]);
    assert!(
        api.requests()[0].contains("resourceVersion=3"),
        "the first request is the resumed watch"
    );
    until("a watch from the version read", || api.open_watches() == 1).await;
    api.event("MODIFIED", &configmap("cm", "31", "next"));
    assert_eq!(
        value(&watching.next("the change after relisting").await),
        ["next"]
    );
    watching.stop().await;
}

#[tokio::test]
async fn a_missing_object_is_watched_for_from_the_current_state() {
    let api = FakeApi::start(None, "secret").await;
    let mut watching = Watching::start(named(&api, "secret"));
    assert_eq!(
        watching.next("the empty read").await,
        Event::Restarted(Vec::new())
    );
    until("the watch", || api.open_watches() == 1).await;
    assert!(!api.watch_requests()[0].contains("resourceVersion"));
    api.event("ADDED", &configmap("cm", "3", "created"));
    assert_eq!(value(&watching.next("the created object").await), ["created"]);
    watching.stop().await;
}

#[tokio::test]
async fn a_refused_token_is_read_again_from_its_file() {
    let api = FakeApi::start(Some(configmap("cm", "1", "granted")), "rotated").await;
    let token = token_file("expired");
    let client = api.client(token.clone());
    let watcher = Watcher::new(Api::configmaps(client, "shop"), Selector::Named("cm".to_owned()));
    let mut watching = Watching::start(watcher);
    until("a refused attempt", || !api.requests().is_empty()).await;
    std::fs::write(&token, "rotated\n").unwrap();
    assert_eq!(
        value(&watching.next("the read with the new token").await),
        ["granted"]
    );
    watching.stop().await;
}

#[tokio::test]
async fn a_refusal_is_handed_over_and_access_granted_later_arrives_as_a_fresh_read() {
    let api = FakeApi::start(Some(configmap("cm", "1", "readable")), "secret").await;
    api.state.lock().unwrap().forbidden = true;
    let (sender, mut refusals) = mpsc::unbounded_channel();
    let (events, mut received) = mpsc::unbounded_channel();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(named(&api, "secret").run_with_failures(
        move |event| {
            let _ = events.send(event);
        },
        move |error| {
            let _ = sender.send((error.is_denied(), error.to_string()));
        },
        stopped,
    ));
    let (denied, message) = tokio::time::timeout(STEP, refusals.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(denied, "{message}");
    assert!(message.contains("403 Forbidden"), "{message}");
    api.state.lock().unwrap().forbidden = false;
    let event = tokio::time::timeout(STEP, received.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(event, Event::Restarted(_)), "{event:?}");
    assert_eq!(value(&event), ["readable"]);
    let _ = stop.send(true);
    task.await.unwrap();
}

#[tokio::test]
async fn a_watch_refused_after_access_was_lost_reads_again_once_it_is_back() {
    let api = FakeApi::start(Some(configmap("cm", "1", "first")), "secret").await;
    let (sender, mut refusals) = mpsc::unbounded_channel();
    let (events, mut received) = mpsc::unbounded_channel();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(named(&api, "secret").run_with_failures(
        move |event| {
            let _ = events.send(event);
        },
        move |error| {
            let _ = sender.send(error.is_denied());
        },
        stopped,
    ));
    let first = tokio::time::timeout(STEP, received.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(value(&first), ["first"]);
    until("the watch", || api.open_watches() == 1).await;
    {
        let mut state = api.state.lock().unwrap();
        state.forbidden = true;
        state.object = Some(configmap("cm", "2", "second"));
    }
    api.end_watches();
    assert!(tokio::time::timeout(STEP, refusals.recv())
        .await
        .unwrap()
        .unwrap());
    api.state.lock().unwrap().forbidden = false;
    let event = tokio::time::timeout(STEP, received.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(event, Event::Restarted(_)),
        "a fresh read, not a resumed watch: {event:?}"
    );
    assert_eq!(value(&event), ["second"]);
    let _ = stop.send(true);
    task.await.unwrap();
}

#[tokio::test]
async fn a_label_selector_lists_the_collection_then_watches_it_from_the_list_version() {
    let api = FakeApi::start(None, "secret").await;
    {
        let mut state = api.state.lock().unwrap();
        state.list = vec![configmap("a", "7", "a1"), configmap("b", "8", "b1")];
        state.list_version = "20".to_owned();
    }
    let client = api.client(token_file("secret"));
    let watcher = Watcher::new(
        Api::configmaps(client, "shop"),
        Selector::Labels(Some("app=web".to_owned())),
    );
    let mut watching = Watching::start(watcher);
    assert_eq!(value(&watching.next("the list").await), ["a1", "b1"]);
    until("the watch", || api.open_watches() == 1).await;
    let request = &api.watch_requests()[0];
    assert!(
        request.contains("labelSelector=app%3Dweb") && request.contains("resourceVersion=20"),
        "{request}"
    );
    api.event("MODIFIED", &configmap("b", "21", "b2"));
    assert_eq!(value(&watching.next("the change").await), ["b2"]);
    watching.stop().await;
}
