#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Clients that read a large response slowly, or stop reading it, over the HTTP/1.1 fast path,
//! hyper's HTTP/1.1 path and HTTP/2: the splitter reads the backend no faster than the client
//! takes the bytes, so its memory stays where it was however large the response.
//!
//! Memory is the resident set of this process (`VmRSS`), which holds the splitter, the backend and
//! the client; the tests take turns, so no other test's allocations blur it.

mod support;

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use support::{splitter, Splitter, STEP};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Mutex,
};

/// The response the backend streams: far more than any buffer in the way may hold.
const RESPONSE_BYTES: u64 = 256 * 1024 * 1024;
/// What the client reads before it stops.
const READ_BEFORE_STOPPING: usize = 1024 * 1024;
/// How far the resident set may grow while a response is held up: the splitter's per-connection
/// buffer (64 KiB), hyper's and h2's bounded buffers and the allocator's slack, nowhere near the
/// response. (Without the bound, the fast path grew by tens of megabytes here.)
const MAX_GROWTH: u64 = 8 * 1024 * 1024;

/// One test at a time: the resident set is the whole process's.
static SERIAL: Mutex<()> = Mutex::const_new(());

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// A body of `left` zero bytes, produced only as fast as it is polled.
struct Zeros {
    left: u64,
    produced: Arc<AtomicU64>,
}

impl Body for Zeros {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        let take = this.left.min(ZEROS.len() as u64);
        this.left -= take;
        this.produced.fetch_add(take, Ordering::Relaxed);
        let chunk = Bytes::from_static(&ZEROS[..usize::try_from(take).unwrap()]);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// A backend that answers every request with [`RESPONSE_BYTES`] zeros (`/small`: 10 bytes), on a
/// thread of its own so that it produces as fast as it is let, as a separate process would.
async fn streaming_backend() -> (String, Arc<AtomicU64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let left = if request.uri().path() == "/small" {
                        10
                    } else {
                        RESPONSE_BYTES
                    };
                    let body = Zeros {
                        left,
                        produced: counter.clone(),
                    };
                    async move { Ok::<_, Infallible>(Response::new(body)) }
                });
                tokio::spawn(async move {
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
    });
    (addr.to_string(), produced)
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

async fn start() -> (Splitter, Arc<AtomicU64>) {
    let (endpoint, produced) = streaming_backend().await;
    let splitter = splitter(json!({
        "backends": [{"name": "stable", "endpoints": [endpoint], "timeout": "60s"}]
    }))
    .await;
    (splitter, produced)
}

/// Waits until the backend has stopped producing: everything on the way to the client is full.
/// Returns what it produced.
async fn held_up(produced: &AtomicU64) -> u64 {
    let deadline = tokio::time::Instant::now() + STEP;
    let mut last = produced.load(Ordering::Relaxed);
    let mut unchanged = 0;
    while unchanged < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backend never stopped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = produced.load(Ordering::Relaxed);
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
    }
    last
}

/// Sends `request` on a raw HTTP/1.1 connection and reads the head and the first bytes of the body.
async fn h1_start(splitter: &Splitter, request: &[u8], body_bytes: usize) -> TcpStream {
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    tokio::time::timeout(STEP, async {
        loop {
            let head_end = received.windows(4).position(|w| w == b"\r\n\r\n");
            if let Some(end) = head_end {
                let head = String::from_utf8_lossy(&received[..end]);
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                if received.len() - end - 4 >= body_bytes {
                    return;
                }
            }
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "closed early");
            received.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .expect("no response within the safety bound");
    stream
}

/// Reads `bytes` more, slowly (64 KiB every 10 ms), and returns the largest resident set seen.
async fn read_slowly(
    mut read: impl FnMut() -> Pin<Box<dyn std::future::Future<Output = usize> + Send>>,
    bytes: usize,
) -> u64 {
    let mut done = 0;
    let mut peak = resident_bytes();
    while done < bytes {
        let got = tokio::time::timeout(STEP, read())
            .await
            .expect("the response stalled");
        assert!(got > 0, "the response ended early");
        done += got;
        peak = peak.max(resident_bytes());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    peak
}

fn assert_flat(path: &str, idle: u64, now: u64, produced: u64) {
    let growth = now.saturating_sub(idle);
    assert!(
        growth < MAX_GROWTH,
        "{path}: the resident set grew by {growth} bytes (backend produced {produced})"
    );
    assert!(
        produced < RESPONSE_BYTES / 2,
        "{path}: the backend was read ahead of the client ({produced} bytes)"
    );
}

/// Serves a small response first, so that pools and buffers exist before the idle measurement.
async fn warm_up(splitter: &Splitter, request: &[u8]) {
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(STEP, async {
        while !received.ends_with(&[0u8; 10]) {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0);
            received.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .unwrap();
}

async fn h1_case(path: &str, small: &[u8], large: &[u8]) {
    let (splitter, produced) = start().await;
    warm_up(&splitter, small).await;
    let idle = resident_bytes();
    let stream = h1_start(&splitter, large, READ_BEFORE_STOPPING).await;
    let produced_bytes = held_up(&produced).await;
    assert_flat(path, idle, resident_bytes(), produced_bytes);
    let stream = Arc::new(Mutex::new(stream));
    let peak = read_slowly(
        || {
            let stream = stream.clone();
            Box::pin(async move {
                let mut buffer = vec![0u8; 64 * 1024];
                stream.lock().await.read(&mut buffer).await.unwrap()
            })
        },
        4 * 1024 * 1024,
    )
    .await;
    assert_flat(path, idle, peak, produced.load(Ordering::Relaxed));
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_back_the_backend_on_the_fast_path() {
    let _serial = SERIAL.lock().await;
    h1_case(
        "fast path",
        b"GET /small HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET /large HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_back_the_backend_on_the_hyper_path() {
    let _serial = SERIAL.lock().await;
    // A request body takes the connection to hyper, and a non-idempotent one streams.
    h1_case(
        "hyper path",
        b"POST /small HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
        b"POST /large HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_back_the_backend_over_http2() {
    let _serial = SERIAL.lock().await;
    let (splitter, produced) = start().await;
    let stream = TcpStream::connect(splitter.addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let authority = splitter.addr.to_string();
    let get = |path: &str| {
        Request::get(format!("http://{authority}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let small = sender.send_request(get("/small")).await.unwrap();
    small.into_body().collect().await.unwrap();
    let idle = resident_bytes();
    let response = tokio::time::timeout(STEP, sender.send_request(get("/large")))
        .await
        .unwrap()
        .unwrap();
    let body = Arc::new(Mutex::new(response.into_body()));
    let next = || {
        let body = body.clone();
        Box::pin(async move {
            loop {
                let frame = body.lock().await.frame().await;
                match frame {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return data.len();
                        }
                    }
                    _ => return 0,
                }
            }
        }) as Pin<Box<dyn std::future::Future<Output = usize> + Send>>
    };
    let mut read = 0;
    while read < READ_BEFORE_STOPPING {
        let got = tokio::time::timeout(STEP, next()).await.unwrap();
        assert!(got > 0);
        read += got;
    }
    let produced_bytes = held_up(&produced).await;
    assert_flat("HTTP/2", idle, resident_bytes(), produced_bytes);
    let peak = read_slowly(next, 4 * 1024 * 1024).await;
    assert_flat("HTTP/2", idle, peak, produced.load(Ordering::Relaxed));
}
