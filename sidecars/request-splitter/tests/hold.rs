#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Request holding over real sockets: a backend where nothing listens yet (a service scaled to
//! zero) holds requests until it appears, a full queue and a timeout answer 503 with their reason.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use support::{backend_at, client, get, metric, send, splitter, Behaviour, Splitter};

/// A loopback address where nothing listens (yet).
async fn free_address() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

async fn held_now(splitter: &Splitter) -> f64 {
    metric(&splitter.metrics().await, "outrigger_splitter_held_requests ")
}

async fn wait_until_held(splitter: &Splitter, count: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while held_now(splitter).await < count {
        assert!(Instant::now() < deadline, "never {count} held requests");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_held_while_nothing_listens_are_answered_once_the_endpoint_appears() {
    let address = free_address().await;
    let splitter = splitter(json!({
        "backends": [{"name": "stable", "endpoints": [address.to_string()], "maxRetries": 1}],
        "hold": {"timeout": "20s", "retryInterval": "20ms"}
    }))
    .await;
    let started = Instant::now();
    // A plain GET takes the fast path, a POST with a body takes hyper's: both are held.
    let (get_client, get_url) = (client(), splitter.url("/cold"));
    let held_get = tokio::spawn(async move { get(&get_client, &get_url, &[]).await });
    let post = Request::post(splitter.url("/cold"))
        .header("content-length", "5")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let post_client = client();
    let held_post = tokio::spawn(async move { send(&post_client, post).await });
    wait_until_held(&splitter, 2.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let _backend = backend_at(address, "stable", Behaviour::Named).await;
    let (got, posted) = (held_get.await.unwrap(), held_post.await.unwrap());
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(posted.status, 200, "{posted:?}");
    assert!(started.elapsed() >= Duration::from_millis(300));

    let metrics = splitter.metrics().await;
    assert_eq!(metric(&metrics, "outrigger_splitter_held_requests "), 0.0);
    assert_eq!(
        metric(&metrics, "outrigger_splitter_held_total{outcome=\"served\"}"),
        2.0
    );
    assert_eq!(
        metric(&metrics, "outrigger_splitter_cold_start_seconds_count"),
        1.0
    );
    assert!(metric(&metrics, "outrigger_splitter_cold_start_seconds_sum") >= 0.3);
    // Waiting out a refused connection is not a failure of the endpoint.
    assert_eq!(
        metric(&metrics, "outrigger_splitter_endpoint_ejections_total"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_for_the_whole_timeout_gets_503_hold_timeout() {
    let address = free_address().await;
    let splitter = splitter(json!({
        "backends": [{"name": "stable", "endpoints": [address.to_string()]}],
        "hold": {"timeout": "1s", "retryInterval": "50ms"}
    }))
    .await;
    let started = Instant::now();
    let reply = get(&client(), &splitter.url("/"), &[]).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.headers["x-outrigger-reason"], "hold-timeout");
    assert!(started.elapsed() >= Duration::from_secs(1));
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(&metrics, "outrigger_splitter_held_total{outcome=\"timeout\"}"),
        1.0
    );
    assert_eq!(
        metric(&metrics, "outrigger_splitter_cold_start_seconds_count"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hold_queue_answers_503_hold_queue_full_at_once() {
    let address = free_address().await;
    let splitter = splitter(json!({
        "backends": [{"name": "stable", "endpoints": [address.to_string()]}],
        "hold": {"maxRequests": 1, "timeout": "20s", "retryInterval": "50ms"}
    }))
    .await;
    let (first_client, url) = (client(), splitter.url("/"));
    let first = tokio::spawn(async move { get(&first_client, &url, &[]).await });
    wait_until_held(&splitter, 1.0).await;
    let started = Instant::now();
    let refused = get(&client(), &splitter.url("/"), &[]).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers["x-outrigger-reason"], "hold-queue-full");
    assert!(started.elapsed() < Duration::from_secs(2));
    // The held one is still answered when the endpoint appears.
    let _backend = backend_at(address, "stable", Behaviour::Named).await;
    assert_eq!(first.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_hold_a_backend_where_nothing_listens_answers_502_at_once() {
    let address = free_address().await;
    let splitter = splitter(json!({
        "backends": [{"name": "stable", "endpoints": [address.to_string()]}]
    }))
    .await;
    let reply = get(&client(), &splitter.url("/"), &[]).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.headers["x-outrigger-reason"], "upstream-connect-failed");
    assert_eq!(held_now(&splitter).await, 0.0);
}
