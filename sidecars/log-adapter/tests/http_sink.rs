#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The HTTP sink against a real HTTP server on loopback (hyper, in this process): an endpoint that
//! answers 503 and then goes away entirely holds reading back with memory bounded and the
//! checkpoint where it was, and once it is back every line arrives; Loki and Elasticsearch bodies
//! carry every record, and a bulk answer that refuses one item for now gets only that item again.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fs::OpenOptions,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use outrigger_log_adapter::{
    checkpoint::{Checkpoints, FileId},
    notice::{Notice, Notify},
    sink::http::{Format, HttpSink, HttpSinkConfig, HttpSinkMetrics},
    tail::{Config, Gauges, Stats, Tailer},
};
use serde_json::Value;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("outrigger-http-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Answers a request (its number from 0, and its body) with a status and a body.
type Respond = dyn Fn(usize, &[u8]) -> (u16, String) + Send + Sync;

/// A loopback HTTP endpoint that can be taken away (connections refused) and brought back on
/// the same port.
struct Endpoint {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    respond: Arc<Respond>,
    requests: Arc<AtomicUsize>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

impl Endpoint {
    fn start(respond: impl Fn(usize, &[u8]) -> (u16, String) + Send + Sync + 'static) -> Endpoint {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut endpoint = Endpoint {
            runtime,
            addr,
            respond: Arc::new(respond),
            requests: Arc::new(AtomicUsize::new(0)),
            accept: None,
        };
        endpoint.up();
        endpoint
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn up(&mut self) {
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(self.addr))
            .unwrap();
        let (respond, requests) = (self.respond.clone(), self.requests.clone());
        self.accept = Some(self.runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (respond, requests) = (respond.clone(), requests.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let (respond, requests) = (respond.clone(), requests.clone());
                        async move {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let number = requests.fetch_add(1, Ordering::SeqCst);
                            let (status, answer) = respond(number, &body);
                            let mut response = Response::new(Full::new(Bytes::from(answer)));
                            *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }));
    }

    /// Stops listening: new connections are refused, as when the endpoint's process is gone.
    fn down(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = self.runtime.block_on(accept);
        }
    }
}

fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    let mut file = OpenOptions::new().create(true).append(true).open(path).unwrap();
    let mut text = String::new();
    for line in lines {
        text.push_str(&line);
        text.push('\n');
    }
    file.write_all(text.as_bytes()).unwrap();
}

/// `line NNNNNN` and padding, so that a few hundred kilobytes hold a few thousand lines.
fn numbered(range: std::ops::Range<u32>) -> impl Iterator<Item = String> {
    range.map(|n| format!("line {n:06} {}", "x".repeat(120)))
}

fn line_number(record: &Value) -> Option<u32> {
    record["message"]
        .as_str()?
        .strip_prefix("line ")?
        .get(..6)?
        .parse()
        .ok()
}

fn config(dir: &TempDir) -> Config {
    Config {
        include: vec![format!("{}/*.log", dir.0.display())],
        checkpoint_path: Some(dir.join(".checkpoints.json")),
        rescan_interval: Duration::ZERO,
        rotate_wait: Duration::ZERO,
        poll_interval: Duration::from_millis(5),
        ..Config::default()
    }
}

fn sink(url: String, format: Format) -> HttpSink {
    HttpSink::new(
        HttpSinkConfig {
            url,
            format,
            request_timeout: Duration::from_secs(5),
            retry_for: Duration::from_millis(300),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(100),
            ..HttpSinkConfig::default()
        },
        HttpSinkMetrics::default(),
    )
    .unwrap()
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    kib * 1024
}

fn wait_until(what: &str, timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_endpoint_down_for_a_while_holds_reading_back_and_then_gets_every_line() {
    const LINES: u32 = 40_000;
    let dir = TempDir::new("down");
    let log = dir.join("app.log");
    append(&log, numbered(0..LINES));
    let size = std::fs::metadata(&log).unwrap().len();
    let id = FileId::of(&std::fs::metadata(&log).unwrap());

    let up = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Mutex::new(BTreeMap::<u32, u32>::new()));
    let mut endpoint = Endpoint::start({
        let (up, counts) = (up.clone(), counts.clone());
        move |_, body| {
            if !up.load(Ordering::SeqCst) {
                return (503, "down for maintenance".to_owned());
            }
            let mut counts = counts.lock().unwrap();
            for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let record: Value = serde_json::from_slice(line).unwrap();
                *counts.entry(line_number(&record).unwrap()).or_default() += 1;
            }
            (200, String::new())
        }
    });

    let before = resident_bytes();
    let progress = Arc::new(Mutex::new((Stats::default(), Gauges::default())));
    let stop = Arc::new(AtomicBool::new(false));
    let notices = Arc::new(Mutex::new(Vec::<Notice>::new()));
    let notify: Notify = {
        let notices = notices.clone();
        Arc::new(move |notice| notices.lock().unwrap().push(notice))
    };
    let mut tailer = Tailer::new(
        config(&dir),
        sink(endpoint.url("/ingest"), Format::JsonLines).with_notify(notify),
    )
    .unwrap();
    let thread = std::thread::spawn({
        let (progress, stop) = (progress.clone(), stop.clone());
        move || {
            tailer
                .run(&stop, |stats, gauges| {
                    *progress.lock().unwrap() = (*stats, gauges)
                })
                .unwrap();
        }
    });

    // Answering 503 for a while, then not listening at all.
    std::thread::sleep(Duration::from_millis(1500));
    endpoint.down();
    std::thread::sleep(Duration::from_millis(1500));
    let (stats, gauges) = *progress.lock().unwrap();
    let grown = resident_bytes().saturating_sub(before);
    assert!(
        stats.bytes_read < 3 << 20,
        "reading waits for the sink: {} of {size} bytes read",
        stats.bytes_read
    );
    assert!(stats.sink_errors >= 1, "{stats:?}");
    assert_eq!(stats.records_written, 0);
    assert!(grown < 32 << 20, "memory stays bounded: grew {grown} bytes");
    assert_eq!(gauges.bytes_behind, size, "nothing is acknowledged yet");
    let checkpoints = Checkpoints::load(Some(dir.join(".checkpoints.json"))).unwrap();
    assert!(
        checkpoints.offset(id).unwrap_or(0) == 0,
        "the checkpoint does not pass what the sink has not acknowledged"
    );

    up.store(true, Ordering::SeqCst);
    endpoint.up();
    wait_until("every line delivered", Duration::from_secs(120), || {
        counts.lock().unwrap().len() == LINES as usize
    });
    wait_until("the checkpoint at the end", Duration::from_secs(10), || {
        Checkpoints::load(Some(dir.join(".checkpoints.json")))
            .unwrap()
            .offset(id)
            == Some(size)
    });
    stop.store(true, Ordering::SeqCst);
    thread.join().unwrap();
    let counts = counts.lock().unwrap();
    assert!((0..LINES).all(|n| counts.contains_key(&n)), "no line lost");
    assert!(
        counts.values().all(|&seen| seen == 1),
        "nothing was acknowledged before the endpoint came back, so nothing is repeated"
    );
    assert_eq!(progress.lock().unwrap().1.bytes_behind, 0);
    // One notice (one Event) when it started failing, one when it came back; not one per attempt.
    let notices = notices.lock().unwrap();
    assert!(
        matches!(notices.as_slice(), [Notice::SinkFailing { error, .. }, Notice::SinkRecovered { .. }] if error.contains("503")),
        "{notices:?}"
    );
}

#[test]
fn a_loki_push_carries_every_record_with_its_timestamp_and_labels() {
    let dir = TempDir::new("loki");
    append(&dir.join("app.log"), numbered(0..500));
    let counts = Arc::new(Mutex::new(BTreeMap::<u32, u32>::new()));
    let endpoint = Endpoint::start({
        let counts = counts.clone();
        move |number, body| {
            if number == 0 {
                return (429, "slow down".to_owned());
            }
            let push: Value = serde_json::from_slice(body).unwrap();
            let stream = &push["streams"][0];
            assert_eq!(
                stream["stream"],
                serde_json::json!({"job": "outrigger-log-adapter"})
            );
            let mut counts = counts.lock().unwrap();
            for value in stream["values"].as_array().unwrap() {
                let nanos: u128 = value[0].as_str().unwrap().parse().unwrap();
                assert!(nanos > 1_600_000_000_000_000_000, "{value}");
                let record: Value = serde_json::from_str(value[1].as_str().unwrap()).unwrap();
                *counts.entry(line_number(&record).unwrap()).or_default() += 1;
            }
            (204, String::new())
        }
    });
    let mut tailer = Tailer::new(
        config(&dir),
        sink(endpoint.url("/loki/api/v1/push"), Format::Loki),
    )
    .unwrap();
    tailer.run_once().unwrap();
    let counts = counts.lock().unwrap();
    assert_eq!(counts.len(), 500);
    assert!(counts.values().all(|&seen| seen == 1));
    assert!(
        endpoint.requests.load(Ordering::SeqCst) >= 2,
        "the 429 was retried"
    );
}

#[test]
fn a_bulk_answer_refusing_one_item_for_now_gets_only_that_item_again() {
    let dir = TempDir::new("bulk");
    append(&dir.join("app.log"), numbered(0..300));
    let counts = Arc::new(Mutex::new(BTreeMap::<u32, u32>::new()));
    let endpoint = Endpoint::start({
        let counts = counts.clone();
        move |number, body| {
            let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect();
            let mut items = Vec::new();
            let mut counts = counts.lock().unwrap();
            for (position, pair) in lines.chunks(2).enumerate() {
                assert_eq!(pair[0], b"{\"create\":{}}");
                let record: Value = serde_json::from_slice(pair[1]).unwrap();
                // The first request's first item is refused for now (the node's queue is full).
                let status = if number == 0 && position == 0 { 429 } else { 201 };
                if status == 201 {
                    *counts.entry(line_number(&record).unwrap()).or_default() += 1;
                }
                items.push(serde_json::json!({"create": {"status": status}}));
            }
            let answer = serde_json::json!({"took": 1, "errors": number == 0, "items": items});
            (200, answer.to_string())
        }
    });
    let mut tailer = Tailer::new(
        config(&dir),
        sink(endpoint.url("/logs/_bulk"), Format::Elasticsearch),
    )
    .unwrap();
    tailer.run_once().unwrap();
    let counts = counts.lock().unwrap();
    assert_eq!(counts.len(), 300);
    assert!(
        counts.values().all(|&seen| seen == 1),
        "only the refused item was sent again"
    );
}
