#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Failures over real sockets: a dying endpoint, a dying canary, nothing left to serve, and the
//! retry budget.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use serde_json::json;
use support::{backend, client, get, metric, splitter, Behaviour, STEP};

/// A loopback address where nothing listens.
async fn refused_endpoint() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_endpoint_that_dies_mid_test_is_ejected_and_clients_see_no_errors() {
    let survivor = backend("stable", Behaviour::Named).await;
    let victim = backend("stable", Behaviour::Named).await;
    let splitter = splitter(json!({
        "backends": [{
            "name": "stable",
            "endpoints": [survivor.endpoint(), victim.endpoint()],
            "maxRetries": 2
        }],
        "outlierDetection": {"consecutiveFailures": 3, "baseEjectionTime": "1h", "maxEjectionTime": "1h"}
    }))
    .await;
    let url = splitter.url("/");
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, url, done) = (client(), url.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for _ in 0..250 {
                let reply = get(&client, &url, &[]).await;
                if reply.status != 200 {
                    failures.push((reply.status, reply.headers.get("x-outrigger-reason").cloned()));
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
            failures
        }));
    }
    let deadline = tokio::time::Instant::now() + STEP;
    while done.load(Ordering::SeqCst) < 400 {
        assert!(tokio::time::Instant::now() < deadline, "load stalled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let victim_hits_before_death = victim.hits.load(Ordering::SeqCst);
    victim.kill();
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    assert!(failures.is_empty(), "clients saw errors: {failures:?}");
    assert!(
        victim_hits_before_death > 0,
        "both endpoints served before the kill"
    );
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_endpoint_ejections_total{backend=\"stable\"}"
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "outrigger_splitter_retries_total{backend=\"stable\"}") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_requests_total{backend=\"stable\",class=\"2xx\"}"
        ),
        1_000.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_dies_fails_over_to_stable() {
    let stable = backend("stable", Behaviour::Named).await;
    let canary = backend("canary", Behaviour::Named).await;
    let splitter = splitter(json!({
        "backends": [
            {"name": "stable", "endpoints": [stable.endpoint()]},
            {"name": "canary", "endpoints": [canary.endpoint()]}
        ],
        "weights": {"stable": 50, "canary": 50},
        "outlierDetection": {"consecutiveFailures": 2, "baseEjectionTime": "1h", "maxEjectionTime": "1h"}
    }))
    .await;
    let client = client();
    let url = splitter.url("/");
    for _ in 0..20 {
        assert_eq!(get(&client, &url, &[]).await.status, 200);
    }
    canary.kill();
    for _ in 0..100 {
        let reply = get(&client, &url, &[]).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "stable"));
    }
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_endpoint_ejections_total{backend=\"canary\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn when_nothing_can_serve_the_client_gets_502_503_or_504_with_a_reason() {
    let live = backend("live", Behaviour::Named).await;
    let hanging = backend("hanging", Behaviour::Hang).await;
    let splitter = splitter(json!({
        "backends": [
            {"name": "live", "endpoints": [live.endpoint()]},
            {"name": "refused", "endpoints": [refused_endpoint().await], "maxRetries": 1},
            {"name": "hanging", "endpoints": [hanging.endpoint()], "timeout": "200ms", "maxRetries": 0}
        ],
        "weights": {"live": 100},
        "routes": [
            {"name": "to-refused", "match": {"header": {"name": "x-target", "exact": "refused"}}, "backend": "refused"},
            {"name": "to-hanging", "match": {"header": {"name": "x-target", "exact": "hanging"}}, "backend": "hanging"}
        ],
        "outlierDetection": {"consecutiveFailures": 2, "baseEjectionTime": "1h", "maxEjectionTime": "1h"}
    }))
    .await;
    let client = client();
    let url = splitter.url("/");
    let reason = |reply: &support::Reply| {
        (
            reply.status.as_u16(),
            reply.headers["x-outrigger-reason"].to_str().unwrap().to_owned(),
            reply.body.clone(),
        )
    };

    let timed_out = get(&client, &url, &[("x-target", "hanging")]).await;
    assert_eq!(
        reason(&timed_out),
        (
            504,
            "upstream-timeout".to_owned(),
            "upstream-timeout\n".to_owned()
        )
    );
    assert!(timed_out.headers.contains_key("x-request-id"));

    let refused = get(&client, &url, &[("x-target", "refused")]).await;
    assert_eq!(reason(&refused).0, 502);
    assert_eq!(reason(&refused).1, "upstream-connect-failed");
    // The second refusal ejects the only endpoint; then nothing is left to try.
    assert_eq!(get(&client, &url, &[("x-target", "refused")]).await.status, 502);
    let ejected = get(&client, &url, &[("x-target", "refused")]).await;
    assert_eq!(reason(&ejected).0, 503);
    assert_eq!(reason(&ejected).1, "no-healthy-endpoint");

    // The rest keeps serving.
    assert_eq!(get(&client, &url, &[]).await.body, "live");
    let metrics = splitter.metrics().await;
    for (reason, count) in [
        ("upstream-timeout", 1.0),
        ("upstream-connect-failed", 2.0),
        ("no-healthy-endpoint", 1.0),
    ] {
        assert_eq!(
            metric(
                &metrics,
                &format!("outrigger_splitter_local_responses_total{{reason=\"{reason}\"}}")
            ),
            count,
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn retries_stop_when_the_budget_is_spent() {
    let live = backend("stable", Behaviour::Named).await;
    let splitter = splitter(json!({
        "backends": [{
            "name": "stable",
            "endpoints": [refused_endpoint().await, live.endpoint()],
            "maxRetries": 3
        }],
        "retryBudget": {"ratio": 0.0, "minPerSecond": 0},
        "outlierDetection": {"consecutiveFailures": 1000}
    }))
    .await;
    let client = client();
    let url = splitter.url("/");
    let mut failed = 0;
    for _ in 0..20 {
        let reply = get(&client, &url, &[]).await;
        if reply.status != 200 {
            assert_eq!(reply.headers["x-outrigger-reason"], "upstream-connect-failed");
            failed += 1;
        }
    }
    // Round robin sends every other request to the refusing endpoint, and an empty budget allows
    // no retry: exactly those fail, each counted.
    assert_eq!(failed, 10);
    let metrics = splitter.metrics().await;
    assert_eq!(
        metric(&metrics, "outrigger_splitter_retry_budget_exhausted_total"),
        10.0,
        "{metrics}"
    );
}
