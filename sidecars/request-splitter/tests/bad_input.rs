#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Bad clients over raw sockets: malformed requests, oversized headers, slow-loris clients and too
//! many connections each get a clear answer, and the splitter keeps serving everyone else.

mod support;

use std::{net::SocketAddr, time::Duration};

use serde_json::{json, Value};
use support::{backend, client, get, metric, splitter, Backend, Behaviour, Splitter, STEP};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn config(stable: &Backend, limits: Value) -> Value {
    json!({
        "backends": [{"name": "stable", "endpoints": [stable.endpoint()]}],
        "limits": limits
    })
}

/// Sends raw bytes and reads until the splitter closes the connection (bounded by [`STEP`]).
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_to_close(&mut stream).await
}

async fn read_to_close(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let read = tokio::time::timeout(STEP, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was never closed");
    String::from_utf8_lossy(&received).into_owned()
}

async fn still_serves(splitter: &Splitter) {
    let reply = get(&client(), &splitter.url("/"), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "stable"));
}

#[tokio::test]
async fn malformed_requests_get_400_and_the_splitter_keeps_serving() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(config(&stable, json!({}))).await;
    for garbage in [
        &b"THIS IS NOT HTTP\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nbroken header line\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
    ] {
        let answer = exchange(splitter.addr, garbage).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
        still_serves(&splitter).await;
    }
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_client_errors_total{reason=\"malformed\"}"
        ),
        3.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn oversized_headers_get_431_and_the_limit_is_configurable() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(config(&stable, json!({"maxHeaderBytes": 4096}))).await;
    let request = |size: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        )
    };
    let answer = exchange(splitter.addr, request(8_000).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let answer = exchange(splitter.addr, request(2_000).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_client_errors_total{reason=\"headers_too_large\"}"
        ),
        1.0,
        "{metrics}"
    );

    // A larger limit applies to new connections after a reload.
    splitter
        .reconfigure(config(&stable, json!({"maxHeaderBytes": 16384})))
        .await
        .unwrap();
    let answer = exchange(splitter.addr, request(8_000).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test]
async fn slow_loris_clients_are_cut_off_after_the_header_read_timeout() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(config(&stable, json!({"headerReadTimeout": "300ms"}))).await;

    // A client that connects and says nothing.
    let mut silent = TcpStream::connect(splitter.addr).await.unwrap();
    // A client that sends its headers a byte at a time, forever.
    let mut dribbling = TcpStream::connect(splitter.addr).await.unwrap();
    dribbling
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let dribble = tokio::spawn(async move {
        // Bounded: at most 100 bytes, stops at the first write error (the splitter hung up).
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if dribbling.write_all(b"X").await.is_err() {
                break;
            }
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(STEP, dribbling.read_to_end(&mut rest)).await;
        rest
    });
    // Meanwhile, everyone else is served.
    still_serves(&splitter).await;
    let silent_got = read_to_close(&mut silent).await;
    assert!(silent_got.is_empty(), "{silent_got:?}");
    let dribble_got = tokio::time::timeout(STEP, dribble).await.unwrap().unwrap();
    let dribble_got = String::from_utf8_lossy(&dribble_got);
    assert!(
        dribble_got.is_empty() || dribble_got.starts_with("HTTP/1.1 408"),
        "{dribble_got:?}"
    );
    still_serves(&splitter).await;

    // A keep-alive connection left idle that long is closed too, but that is no client error.
    let keep_alive = client();
    assert_eq!(get(&keep_alive, &splitter.url("/"), &[]).await.status, 200);
    let deadline = tokio::time::Instant::now() + STEP;
    while splitter.running.open_connections() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_client_errors_total{reason=\"header_timeout\"}"
        ),
        2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn connections_beyond_the_limit_get_503_and_close() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(config(&stable, json!({"maxConnections": 2}))).await;
    let _first = TcpStream::connect(splitter.addr).await.unwrap();
    let _second = TcpStream::connect(splitter.addr).await.unwrap();
    // Let the splitter accept both before the third arrives.
    let deadline = tokio::time::Instant::now() + STEP;
    while splitter.running.open_connections() < 2 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answer = exchange(splitter.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(
        answer.contains("x-outrigger-reason: too-many-connections"),
        "{answer:?}"
    );
    drop((_first, _second));
    let deadline = tokio::time::Instant::now() + STEP;
    while splitter.running.open_connections() > 0 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    still_serves(&splitter).await;
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(&metrics, "outrigger_splitter_connections_rejected_total"),
        1.0
    );
}
