#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Client connections over raw sockets, where the fast path and hyper meet: pipelined requests,
//! HEAD, HTTP/1.0, a connection that switches to hyper in the middle (a request with a body after
//! plain ones), idle keep-alive connections timing out without counting as errors, and the drain
//! closing idle connections at once.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{backend, metric, splitter, Behaviour, Splitter, STEP};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

async fn echo_splitter() -> (support::Backend, Splitter) {
    let stable = backend("stable", Behaviour::Echo).await;
    let splitter =
        splitter(json!({"backends": [{"name": "stable", "endpoints": [stable.endpoint()]}]})).await;
    (stable, splitter)
}

async fn named_splitter(limits: serde_json::Value) -> (support::Backend, Splitter) {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(json!({
        "backends": [{"name": "stable", "endpoints": [stable.endpoint()]}],
        "limits": limits
    }))
    .await;
    (stable, splitter)
}

/// Reads until `count` responses have arrived (by counting status lines), or the connection closes.
async fn read_responses(stream: &mut TcpStream, count: usize) -> String {
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    let read = tokio::time::timeout(STEP, async {
        loop {
            let text = String::from_utf8_lossy(&received);
            if text.matches("HTTP/1.").count() >= count && text.ends_with(response_end(&text)) {
                break;
            }
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => received.extend_from_slice(&buffer[..read]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "responses never completed: {:?}",
        String::from_utf8_lossy(&received)
    );
    String::from_utf8_lossy(&received).into_owned()
}

/// What the last response ends with: its body ("stable" from a named backend), or its head.
fn response_end(text: &str) -> &'static str {
    if text.trim_end().ends_with("stable") || text.ends_with("stable") {
        "stable"
    } else {
        "\r\n\r\n"
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (stable, splitter) = named_splitter(json!({})).await;
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream
        .write_all(
            b"GET /1 HTTP/1.1\r\nhost: x\r\n\r\nHEAD /2 HTTP/1.1\r\nhost: x\r\n\r\nGET /3 HTTP/1.1\r\nhost: x\r\n\r\n",
        )
        .await
        .unwrap();
    let text = read_responses(&mut stream, 3).await;
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
    assert_eq!(
        text.matches("\r\n\r\nstable").count(),
        2,
        "HEAD has no body: {text}"
    );
    let paths: Vec<String> = stable.seen().iter().map(|seen| seen.path.clone()).collect();
    assert_eq!(paths, ["/1", "/2", "/3"]);
}

#[tokio::test]
async fn an_http_1_0_client_gets_an_http_1_0_answer_and_the_connection_closes() {
    let (_stable, splitter) = named_splitter(json!({})).await;
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut received = String::new();
    tokio::time::timeout(STEP, stream.read_to_string(&mut received))
        .await
        .expect("the connection was not closed")
        .unwrap();
    assert!(received.starts_with("HTTP/1.0 200 OK"), "{received}");
    assert!(received.contains("connection: close"), "{received}");
    assert!(received.ends_with("stable"), "{received}");
}

#[tokio::test]
async fn a_request_with_a_body_after_plain_ones_is_served_on_the_same_connection() {
    let (_stable, splitter) = echo_splitter().await;
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_responses(&mut stream, 1).await;
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    // From here hyper serves the connection; the bytes the fast path read are not lost.
    stream
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    tokio::time::timeout(STEP, async {
        while !String::from_utf8_lossy(&received).ends_with("hello") {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "closed: {:?}", String::from_utf8_lossy(&received));
            received.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .expect("the echo never came back");
    assert!(String::from_utf8_lossy(&received).starts_with("HTTP/1.1 200 OK"));
}

#[tokio::test]
async fn an_idle_keep_alive_connection_times_out_quietly() {
    let (_stable, splitter) = named_splitter(json!({"headerReadTimeout": "200ms"})).await;
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let first = read_responses(&mut stream, 1).await;
    assert!(first.starts_with("HTTP/1.1 200 OK"), "{first}");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(STEP, stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection was never closed");
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_client_errors_total{reason=\"header_timeout\"}"
        ),
        0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_closes_idle_keep_alive_connections_at_once() {
    let (_stable, splitter) = named_splitter(json!({"headerReadTimeout": "1h"})).await;
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    read_responses(&mut stream, 1).await;
    let started = tokio::time::Instant::now();
    let still_open = tokio::time::timeout(STEP, splitter.running.shutdown())
        .await
        .unwrap();
    assert_eq!(still_open, 0);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the drain waited for an idle connection"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(STEP, stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection was left open");
}

/// As with hyper: a client that goes away while its request waits on a backend cancels the
/// exchange, instead of leaving it running until the backend's timeout.
#[tokio::test]
async fn a_client_that_disconnects_mid_request_cancels_the_exchange() {
    let hanging = backend("hanging", Behaviour::Hang).await;
    let splitter = splitter(
        json!({"backends": [{"name": "hanging", "endpoints": [hanging.endpoint()], "timeout": "1h"}]}),
    )
    .await;
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + STEP;
    while hanging.hits.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(splitter.running.open_connections(), 1);
    drop(stream);
    while splitter.running.open_connections() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the exchange outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
