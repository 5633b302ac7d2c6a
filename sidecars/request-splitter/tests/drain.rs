#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Graceful drain over real sockets: the request in flight finishes, then the splitter is gone.

mod support;

use std::{sync::atomic::Ordering, time::Duration};

use serde_json::json;
use support::{backend, client, get, splitter, Behaviour, STEP};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_the_request_in_flight_finish_and_then_refuses_new_connections() {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter =
        splitter(json!({"backends": [{"name": "stable", "endpoints": [stable.endpoint()]}]})).await;
    assert_eq!(splitter.admin_get("/readyz").await.0, 200);
    let url = splitter.url("/slow?delay=300");
    let in_flight = tokio::spawn(async move { get(&client(), &url, &[]).await });
    let deadline = tokio::time::Instant::now() + STEP;
    while stable.hits.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let addr = splitter.addr;
    let still_open = tokio::time::timeout(STEP, splitter.running.shutdown())
        .await
        .unwrap();
    assert_eq!(still_open, 0, "every connection finished before the deadline");
    let reply = tokio::time::timeout(STEP, in_flight).await.unwrap().unwrap();
    assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "stable"));
    assert!(TcpStream::connect(addr).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn the_drain_deadline_bounds_how_long_a_stuck_request_can_hold_shutdown() {
    let hanging = backend("hanging", Behaviour::Hang).await;
    let splitter = splitter(
        json!({"backends": [{"name": "hanging", "endpoints": [hanging.endpoint()], "timeout": "1h"}]}),
    )
    .await;
    let url = splitter.url("/");
    let _stuck = tokio::spawn(async move { get(&client(), &url, &[]).await });
    let deadline = tokio::time::Instant::now() + STEP;
    while hanging.hits.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // The support splitter drains for at most 2 s; the stuck request is still open at the deadline.
    let still_open = tokio::time::timeout(STEP, splitter.running.shutdown())
        .await
        .unwrap();
    assert_eq!(still_open, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_serve_every_client_and_all_stop_listening_on_shutdown() {
    let stable = backend("stable", Behaviour::Named).await;
    let canary = backend("canary", Behaviour::Named).await;
    let splitter = support::splitter_with_workers(
        json!({
            "backends": [
                {"name": "stable", "endpoints": [stable.endpoint()]},
                {"name": "canary", "endpoints": [canary.endpoint()]}
            ],
            "weights": {"stable": 50, "canary": 50}
        }),
        3,
    )
    .await;
    // Separate clients: separate connections, which the kernel spreads over the workers' sockets.
    let mut clients = Vec::new();
    for _ in 0..12 {
        let url = splitter.url("/");
        clients.push(tokio::spawn(async move {
            let client = client();
            let mut statuses = Vec::new();
            for _ in 0..50 {
                statuses.push(get(&client, &url, &[]).await.status.as_u16());
            }
            statuses
        }));
    }
    for client in clients {
        let statuses = tokio::time::timeout(STEP, client).await.unwrap().unwrap();
        assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    }
    assert_eq!(
        stable.hits.load(Ordering::SeqCst) + canary.hits.load(Ordering::SeqCst),
        600
    );
    let metrics = splitter.metrics().await;
    assert_eq!(
        support::metric(&metrics, "outrigger_splitter_connections_total"),
        12.0
    );
    let addr = splitter.addr;
    let still_open = tokio::time::timeout(STEP, splitter.running.shutdown())
        .await
        .unwrap();
    assert_eq!(still_open, 0);
    // No worker kept its socket.
    for _ in 0..10 {
        assert!(TcpStream::connect(addr).await.is_err(), "a worker still listens");
    }
}
