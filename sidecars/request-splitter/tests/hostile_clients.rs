#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Clients that upload slowly, stall, send broken bodies, give up half way, ask for tunnels or
//! send odd request targets, over real sockets. What a client does is put down to the client: it
//! neither times out nor ejects a healthy backend, and everyone else keeps being served.

mod support;

use std::{net::SocketAddr, sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use support::{backend, client, get, metric, splitter, Backend, Behaviour, Splitter, STEP};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

fn config(stable: &Backend, backend: Value, limits: Value) -> Value {
    let mut entry = json!({"name": "stable", "endpoints": [stable.endpoint()]});
    if let (Some(entry), Some(extra)) = (entry.as_object_mut(), backend.as_object()) {
        entry.extend(extra.clone());
    }
    json!({
        "backends": [entry],
        "limits": limits,
        "outlierDetection": {"consecutiveFailures": 2, "baseEjectionTime": "1h", "maxEjectionTime": "1h"}
    })
}

/// One response read from a raw connection: the head, and the body by its `content-length` (or
/// up to the close without one).
async fn read_response(stream: &mut TcpStream) -> (String, String) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 8192];
    tokio::time::timeout(STEP, async {
        loop {
            if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&received[..end]).into_owned();
                let length = head.lines().find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                });
                if let Some(length) = length {
                    if received.len() >= end + 4 + length {
                        let body = String::from_utf8_lossy(&received[end + 4..end + 4 + length]);
                        return (head, body.into_owned());
                    }
                }
            }
            let read = stream.read(&mut buffer).await.unwrap_or(0);
            if read == 0 {
                let text = String::from_utf8_lossy(&received).into_owned();
                let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
                return (head.to_owned(), body.to_owned());
            }
            received.extend_from_slice(&buffer[..read]);
        }
    })
    .await
    .expect("no response within the safety bound")
}

async fn send_raw(addr: SocketAddr, request: &[u8]) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_response(&mut stream).await
}

/// Sends a chunked POST whose `chunks` chunks of 1 KiB go out `pause` apart, and reads the answer.
async fn slow_upload(addr: SocketAddr, chunks: usize, pause: Duration) -> (String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("400\r\n{}\r\n", "u".repeat(1024));
    for _ in 0..chunks {
        tokio::time::sleep(pause).await;
        stream.write_all(chunk.as_bytes()).await.unwrap();
    }
    stream.write_all(b"0\r\n\r\n").await.unwrap();
    read_response(&mut stream).await
}

async fn wait_until_closed(splitter: &Splitter) {
    let deadline = tokio::time::Instant::now() + STEP;
    while splitter.running.open_connections() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "a connection stayed open");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn blamed_on_the_backend(splitter: &Splitter) -> f64 {
    let metrics = splitter.metrics().await;
    ["connect", "reset", "timeout"]
        .iter()
        .map(|kind| {
            metric(
                &metrics,
                &format!("outrigger_splitter_upstream_errors_total{{backend=\"stable\",kind=\"{kind}\"}}"),
            )
        })
        .sum::<f64>()
        + metric(
            &metrics,
            "outrigger_splitter_endpoint_ejections_total{backend=\"stable\"}",
        )
}

#[tokio::test]
async fn slow_uploads_to_a_healthy_backend_are_not_timed_out_and_eject_nothing() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(config(&stable, json!({"timeout": "300ms"}), json!({}))).await;
    // Each upload takes four times the backend's timeout; more of them than eject an endpoint.
    for _ in 0..3 {
        let (head, body) = slow_upload(splitter.addr, 12, Duration::from_millis(100)).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "stable");
    }
    assert!(stable.seen().iter().all(|seen| seen.body.len() == 12 * 1024));
    assert_eq!(blamed_on_the_backend(&splitter).await, 0.0);
    assert_eq!(get(&client(), &splitter.url("/"), &[]).await.status, 200);
}

#[tokio::test]
async fn the_backend_timeout_starts_once_the_upload_is_complete() {
    let hanging = backend("stable", Behaviour::Hang).await;
    let splitter = splitter(config(&hanging, json!({"timeout": "300ms"}), json!({}))).await;
    let (head, _) = slow_upload(splitter.addr, 8, Duration::from_millis(100)).await;
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert!(head.contains("x-outrigger-reason: upstream-timeout"), "{head}");
    // The whole body reached the backend before the timeout counted.
    assert_eq!(hanging.seen()[0].body.len(), 8 * 1024);
}

#[tokio::test]
async fn a_backend_silent_in_the_middle_of_a_response_body_is_cut_off_after_its_timeout() {
    // A raw backend: a head promising ten bytes, five of them, then nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
                .await;
            open.push(stream);
        }
    });
    let splitter = splitter(json!({
        "backends": [{"name": "stable", "endpoints": [endpoint], "timeout": "300ms"}]
    }))
    .await;
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let closed = tokio::time::timeout(STEP, stream.read_to_end(&mut received)).await;
    assert!(closed.is_ok(), "the response was never cut off");
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("hello"),
        "{text}"
    );
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_upstream_errors_total{backend=\"stable\",kind=\"timeout\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_client_that_stalls_mid_upload_gets_408_and_the_backend_is_not_blamed() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(config(
        &stable,
        json!({"timeout": "10s"}),
        json!({"headerReadTimeout": "300ms"}),
    ))
    .await;
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        head.contains("x-outrigger-reason: request-body-timeout"),
        "{head}"
    );
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_client_errors_total{reason=\"request_body_timeout\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(blamed_on_the_backend(&splitter).await, 0.0);
}

#[tokio::test]
async fn malformed_chunks_and_abandoned_uploads_are_the_clients_and_eject_nobody() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(config(&stable, json!({}), json!({}))).await;
    for _ in 0..3 {
        let (head, body) = send_raw(
            splitter.addr,
            b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 400"), "{head}");
        assert!(head.contains("x-outrigger-reason: bad-request-body"), "{head}");
        assert_eq!(body, "bad-request-body\n");
    }
    for _ in 0..3 {
        let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n400\r\nhalf")
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + STEP;
        while stable.hits.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the upload never reached the backend"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(stream);
        wait_until_closed(&splitter).await;
    }
    assert_eq!(blamed_on_the_backend(&splitter).await, 0.0);
    let reply = get(&client(), &splitter.url("/"), &[]).await;
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "stable"));
    let metrics = splitter.metrics().await;
    assert!(
        metric(
            &metrics,
            "outrigger_splitter_client_errors_total{reason=\"request_body\"}"
        ) >= 3.0,
        "{metrics}"
    );
}

async fn h2_send(addr: SocketAddr, request: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = tokio::time::timeout(STEP, sender.send_request(request))
        .await
        .unwrap()
        .unwrap();
    let (parts, body) = response.into_parts();
    let _ = body.collect().await;
    (parts.status, parts.headers)
}

#[tokio::test]
async fn connect_is_refused_with_405_over_http1_and_http2_and_never_reaches_a_backend() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(config(&stable, json!({}), json!({}))).await;
    let (head, _) = send_raw(
        splitter.addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");
    assert!(head.contains("x-outrigger-reason: method-not-allowed"), "{head}");
    assert!(head.contains("allow: "), "{head}");

    // On a connection hyper already serves (after a request with a body).
    let mut stream = TcpStream::connect(splitter.addr).await.unwrap();
    stream
        .write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi")
        .await
        .unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let hits = stable.hits.load(Ordering::SeqCst);
    stream
        .write_all(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_response(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 405"), "{head}");

    let connect = Request::connect("example.com:443")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, headers) = h2_send(splitter.addr, connect).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(headers["x-outrigger-reason"], "method-not-allowed");
    assert_eq!(
        stable.hits.load(Ordering::SeqCst),
        hits,
        "CONNECT reached the backend"
    );
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_client_errors_total{reason=\"connect_method\"}"
        ),
        3.0,
        "{metrics}"
    );
}

fn many_headers(count: usize) -> String {
    let mut request = String::from("GET / HTTP/1.1\r\nhost: x\r\n");
    for index in 1..count {
        request.push_str(&format!("x-h{index}: v\r\n"));
    }
    request.push_str("\r\n");
    request
}

#[tokio::test]
async fn the_header_count_limit_is_a_setting_and_holds_over_http1_and_http2() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(config(&stable, json!({}), json!({}))).await;
    let (head, _) = send_raw(splitter.addr, many_headers(150).as_bytes()).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "150 header lines are fine: {head}"
    );
    let (head, _) = send_raw(splitter.addr, many_headers(250).as_bytes()).await;
    assert!(
        head.starts_with("HTTP/1.1 431"),
        "250 are more than the default 200: {head}"
    );

    let h2 = |count: usize| {
        let mut request = Request::get(format!("http://{}/", splitter.addr));
        for index in 1..count {
            request = request.header(format!("x-h{index}"), "v");
        }
        request.body(Full::new(Bytes::new())).unwrap()
    };
    assert_eq!(h2_send(splitter.addr, h2(150)).await.0, StatusCode::OK);
    let (status, headers) = h2_send(splitter.addr, h2(250)).await;
    assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(headers["x-outrigger-reason"], "too-many-headers");

    splitter
        .reconfigure(config(&stable, json!({}), json!({"maxHeaderCount": 300})))
        .await
        .unwrap();
    let (head, _) = send_raw(splitter.addr, many_headers(250).as_bytes()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "the limit is now 300: {head}");
    assert_eq!(h2_send(splitter.addr, h2(250)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn an_absolute_form_target_gives_the_backend_its_authority_as_host() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(config(&stable, json!({}), json!({}))).await;
    // The fast path (no body), then hyper (with one).
    let (head, _) = send_raw(
        splitter.addr,
        b"GET http://app.example:8080/orders?x=1 HTTP/1.1\r\nhost: other.example\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (head, _) = send_raw(
        splitter.addr,
        b"POST http://user@app.example/cart HTTP/1.1\r\nhost: other.example\r\ncontent-length: 2\r\n\r\nhi",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let seen = stable.seen();
    let seen: Vec<(&str, &str)> = seen
        .iter()
        .map(|seen| (seen.path.as_str(), seen.headers["host"].to_str().unwrap()))
        .collect();
    assert_eq!(seen, [("/orders", "app.example:8080"), ("/cart", "app.example")]);
}

#[tokio::test]
async fn a_backend_removed_by_a_reload_leaves_no_series_in_metrics() {
    let stable = backend("stable", Behaviour::Named).await;
    let canary = backend("canary", Behaviour::Named).await;
    let splitter = splitter(json!({
        "backends": [
            {"name": "stable", "endpoints": [stable.endpoint()]},
            {"name": "canary", "endpoints": [canary.endpoint()]}
        ],
        "weights": {"stable": 0, "canary": 100}
    }))
    .await;
    assert_eq!(get(&client(), &splitter.url("/"), &[]).await.backend(), "canary");
    assert!(splitter.metrics().await.contains("backend=\"canary\""));
    splitter
        .reconfigure(json!({"backends": [{"name": "stable", "endpoints": [stable.endpoint()]}]}))
        .await
        .unwrap();
    assert_eq!(get(&client(), &splitter.url("/"), &[]).await.backend(), "stable");
    let metrics = splitter.metrics().await;
    assert!(!metrics.contains("canary"), "{metrics}");
    assert!(metrics.contains("backend=\"stable\""), "{metrics}");
}

/// Opens a tunnel through the splitter and checks that it echoes.
async fn open_tunnel(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /socket HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    tokio::time::timeout(STEP, async {
        while !head.ends_with(b"\r\n\r\n") {
            let read = stream.read(&mut byte).await.unwrap();
            assert!(read > 0, "closed: {:?}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
    })
    .await
    .unwrap();
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(STEP, stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping");
    stream
}

#[tokio::test]
async fn upgraded_connections_count_against_the_connection_limit_until_they_close() {
    let upgrade = backend("ws", Behaviour::Upgrade).await;
    let splitter = splitter(json!({
        "backends": [{"name": "ws", "endpoints": [upgrade.endpoint()]}],
        "limits": {"maxConnections": 3}
    }))
    .await;
    let mut tunnels = Vec::new();
    for _ in 0..3 {
        tunnels.push(open_tunnel(splitter.addr).await);
    }
    assert_eq!(splitter.running.open_connections(), 3);
    let (head, _) = send_raw(splitter.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.contains("x-outrigger-reason: too-many-connections"),
        "{head}"
    );
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(&metrics, "outrigger_splitter_active_connections"),
        3.0,
        "{metrics}"
    );
    drop(tunnels);
    wait_until_closed(&splitter).await;
    drop(open_tunnel(splitter.addr).await);
}
