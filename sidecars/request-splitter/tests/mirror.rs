#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Shadow traffic over real sockets: copies reach the shadow and are compared with the primary, and
//! a shadow that never answers changes nothing the client sees.

mod support;

use std::{sync::atomic::Ordering, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::json;
use support::{backend, client, get, metric, send, splitter, Behaviour, Splitter, STEP};

/// Polls the metrics until `prefix` reaches `at_least` (bounded by [`STEP`]).
async fn wait_for_metric(splitter: &Splitter, prefix: &str, at_least: f64) -> String {
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let text = splitter.metrics().await;
        if metric(&text, prefix) >= at_least {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{prefix} never reached {at_least}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_shadow_never_changes_what_the_client_sees() {
    let stable = backend("stable", Behaviour::Named).await;
    let shadow = backend("shadow", Behaviour::Hang).await;
    let splitter = splitter(json!({
        "backends": [
            {"name": "stable", "endpoints": [stable.endpoint()]},
            {"name": "shadow", "endpoints": [shadow.endpoint()], "timeout": "1h"}
        ],
        "weights": {"stable": 100},
        "mirror": {"backend": "shadow", "percent": 100},
        "limits": {"mirrorQueue": 4, "mirrorInFlight": 2}
    }))
    .await;
    let client = client();
    let url = splitter.url("/orders?id=7");
    for _ in 0..200 {
        let reply = get(&client, &url, &[]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "stable");
        assert_eq!(reply.backend(), "stable");
        assert!(!reply.headers.contains_key("x-outrigger-reason"));
    }
    // Every request was answered while the shadow had answered none: at most the two copies in
    // flight ever reached it, four more waited in the queue and the rest were dropped.
    assert_eq!(stable.hits.load(Ordering::SeqCst), 200);
    assert!(shadow.hits.load(Ordering::SeqCst) <= 2);
    let metrics = splitter.metrics().await;
    let queued = metric(
        &metrics,
        "outrigger_splitter_mirror_requests_total{backend=\"shadow\",outcome=\"queued\"}",
    );
    let dropped = metric(
        &metrics,
        "outrigger_splitter_mirror_requests_total{backend=\"shadow\",outcome=\"queue_full\"}",
    );
    assert_eq!(queued + dropped, 200.0, "{metrics}");
    assert!((4.0..=7.0).contains(&queued), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_copies_reach_the_shadow_and_are_compared_with_the_primary() {
    let stable = backend("stable", Behaviour::Named).await;
    let shadow = backend("shadow", Behaviour::Named).await;
    let splitter = splitter(json!({
        "backends": [
            {"name": "stable", "endpoints": [stable.endpoint()]},
            {"name": "shadow", "endpoints": [shadow.endpoint()]}
        ],
        "weights": {"stable": 100},
        "mirror": {"backend": "shadow", "percent": 100},
        "limits": {"maxBufferedBodyBytes": 1024}
    }))
    .await;
    let client = client();
    for index in 0..20 {
        let request = Request::post(splitter.url("/submit"))
            .header("x-request-id", format!("req-{index}"))
            .body(Full::new(Bytes::from(format!("payload-{index}"))))
            .unwrap();
        let reply = send(&client, request).await;
        assert_eq!((reply.status.as_u16(), reply.body.as_str()), (200, "stable"));
    }
    let metrics = wait_for_metric(
        &splitter,
        "outrigger_splitter_mirror_responses_total{backend=\"shadow\",role=\"shadow\",class=\"2xx\"}",
        20.0,
    )
    .await;
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_mirror_responses_total{backend=\"shadow\",role=\"primary\",class=\"2xx\"}"
        ),
        20.0
    );
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_mirror_latency_seconds_count{backend=\"shadow\",role=\"shadow\"}"
        ),
        20.0
    );
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_mirror_divergence_total{backend=\"shadow\"}"
        ),
        0.0
    );
    let mut copies = shadow.seen();
    copies.sort_by_key(|seen| seen.headers["x-request-id"].to_str().unwrap().to_owned());
    assert_eq!(copies.len(), 20);
    for seen in &copies {
        let id = seen.headers["x-request-id"].to_str().unwrap();
        let index = id.trim_start_matches("req-");
        assert_eq!(seen.method, "POST");
        assert_eq!(seen.path, "/submit");
        assert_eq!(seen.body, format!("payload-{index}").as_bytes());
        assert_eq!(seen.headers["x-outrigger-shadow"], "true");
    }

    // A body larger than the buffer limit streams to the primary and is not mirrored.
    let large = Request::post(splitter.url("/upload"))
        .body(Full::new(Bytes::from(vec![b'x'; 4096])))
        .unwrap();
    assert_eq!(send(&client, large).await.body, "stable");
    wait_for_metric(
        &splitter,
        "outrigger_splitter_mirror_requests_total{backend=\"shadow\",outcome=\"body_too_large\"}",
        1.0,
    )
    .await;

    // A shadow that fails while the primary succeeds is divergence.
    shadow.kill();
    for _ in 0..5 {
        assert_eq!(get(&client, &splitter.url("/"), &[]).await.body, "stable");
    }
    wait_for_metric(
        &splitter,
        "outrigger_splitter_mirror_divergence_total{backend=\"shadow\"}",
        5.0,
    )
    .await;
}
