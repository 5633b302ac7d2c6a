#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! The split over real sockets: weights, stickiness across a weight change, routes, correlation.

mod support;

use std::collections::HashMap;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use support::{backend, client, get, send, splitter, Backend, Behaviour};

fn config(stable: &Backend, canary: &Backend, weights: (u32, u32)) -> Value {
    json!({
        "backends": [
            {"name": "stable", "endpoints": [stable.endpoint()]},
            {"name": "canary", "endpoints": [canary.endpoint()]}
        ],
        "weights": {"stable": weights.0, "canary": weights.1}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_converges_to_the_configured_weights_over_ten_thousand_requests() {
    let stable = backend("stable", Behaviour::Named).await;
    let canary = backend("canary", Behaviour::Named).await;
    let splitter = splitter(config(&stable, &canary, (90, 10))).await;
    let url = splitter.url("/");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, url) = (client(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut counts = HashMap::<String, u32>::new();
            for _ in 0..625 {
                let reply = get(&client, &url, &[]).await;
                assert_eq!(reply.status, 200);
                *counts.entry(reply.body).or_default() += 1;
            }
            counts
        }));
    }
    let mut counts = HashMap::<String, u32>::new();
    for task in tasks {
        for (name, count) in task.await.unwrap() {
            *counts.entry(name).or_default() += count;
        }
    }
    let canary_count = counts.get("canary").copied().unwrap_or(0);
    assert_eq!(counts.values().sum::<u32>(), 10_000, "{counts:?}");
    // 10,000 draws at p = 0.1: standard deviation 30. Tolerance ±150 (5 standard deviations, a
    // false failure about once in 1.7 million runs), i.e. 10% ± 1.5 points.
    assert!(
        (850..=1_150).contains(&canary_count),
        "canary got {canary_count} of 10,000: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_clients_keep_their_backend_and_only_the_added_share_moves_when_the_canary_grows() {
    let stable = backend("stable", Behaviour::Named).await;
    let canary = backend("canary", Behaviour::Named).await;
    let sticky = |weights| {
        let mut value = config(&stable, &canary, weights);
        value["stickiness"] = json!({"source": "header", "name": "x-user"});
        value
    };
    let splitter = splitter(sticky((90, 10))).await;
    let client = client();
    let url = splitter.url("/");
    let users: Vec<String> = (0..1_000).map(|i| format!("user-{i}")).collect();
    let mut before = Vec::new();
    for user in &users {
        before.push(get(&client, &url, &[("x-user", user)]).await.body);
    }
    // The same key keeps its backend across repeated requests.
    for (user, first) in users.iter().zip(&before).take(100) {
        for _ in 0..3 {
            assert_eq!(
                &get(&client, &url, &[("x-user", user)]).await.body,
                first,
                "{user}"
            );
        }
    }
    splitter.reconfigure(sticky((80, 20))).await.unwrap();
    let mut moved = 0;
    for (user, old) in users.iter().zip(&before) {
        let new = get(&client, &url, &[("x-user", user)]).await.body;
        if old == "canary" {
            assert_eq!(new, "canary", "{user} was on the canary and must stay there");
        } else if new != *old {
            assert_eq!(new, "canary");
            moved += 1;
        }
    }
    let on_canary_before = before.iter().filter(|b| *b == "canary").count();
    // Expected: 100 of 1,000 on the canary before, and 100 more moving; standard deviation about
    // 9.5 each. Tolerance ±50 (about 5 standard deviations).
    assert!((50..=150).contains(&on_canary_before), "{on_canary_before}");
    assert!((50..=150).contains(&moved), "{moved} moved");
}

#[tokio::test]
async fn header_and_cookie_routes_override_the_split() {
    let stable = backend("stable", Behaviour::Named).await;
    let canary = backend("canary", Behaviour::Named).await;
    let mut value = config(&stable, &canary, (100, 0));
    value["routes"] = json!([
        {"name": "testers", "match": {"header": {"name": "x-canary", "exact": "always"}}, "backend": "canary"},
        {"name": "beta", "match": {"cookie": {"name": "beta", "regex": "on|yes"}}, "backend": "canary"}
    ]);
    let splitter = splitter(value).await;
    let client = client();
    let url = splitter.url("/");
    for _ in 0..20 {
        assert_eq!(get(&client, &url, &[]).await.body, "stable");
        assert_eq!(get(&client, &url, &[("x-canary", "always")]).await.body, "canary");
        assert_eq!(get(&client, &url, &[("x-canary", "never")]).await.body, "stable");
        assert_eq!(
            get(&client, &url, &[("cookie", "a=b; beta=yes")]).await.body,
            "canary"
        );
        assert_eq!(
            get(&client, &url, &[("cookie", "beta=maybe")]).await.body,
            "stable"
        );
    }
    let metrics = splitter.metrics().await;
    assert!(
        support::metric(
            &metrics,
            "outrigger_splitter_route_matches_total{route=\"testers\"}"
        ) >= 20.0,
        "{metrics}"
    );
}

/// Every way a request can take: the plain HTTP/1.1 path, hyper's (a body), and a backend that
/// gets its requests through hyper's client (h2c).
#[tokio::test]
async fn correlation_headers_reach_the_backend_and_come_back() {
    let stable = backend("stable", Behaviour::Named).await;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for protocol in ["http1", "h2c"] {
        let splitter = splitter(json!({
            "backends": [{"name": "stable", "endpoints": [stable.endpoint()], "protocol": protocol}]
        }))
        .await;
        let client = client();
        let url = splitter.url("/");
        let with_body = |headers: &[(&str, &str)]| {
            let mut builder = Request::post(&url);
            for (name, value) in headers {
                builder = builder.header(*name, *value);
            }
            builder.body(Full::new(Bytes::from_static(b"x"))).unwrap()
        };
        let sent = [("x-request-id", "req-123"), ("traceparent", traceparent)];
        for reply in [
            get(&client, &url, &sent).await,
            send(&client, with_body(&sent)).await,
        ] {
            assert_eq!(reply.headers["x-seen-request-id"], "req-123", "{protocol}");
            assert_eq!(reply.headers["x-request-id"], "req-123", "{protocol}");
            assert_eq!(reply.headers["x-seen-traceparent"], traceparent, "{protocol}");
            assert_eq!(reply.headers["x-seen-forwarded-for"], "127.0.0.1", "{protocol}");
            assert_eq!(reply.headers["x-seen-forwarded-proto"], "http", "{protocol}");
        }

        let mut ids = Vec::new();
        for generated in [get(&client, &url, &[]).await, send(&client, with_body(&[])).await] {
            let id = generated.headers["x-seen-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            assert_eq!(id.len(), 32, "{protocol}");
            assert_eq!(
                generated
                    .headers
                    .get_all("x-request-id")
                    .iter()
                    .collect::<Vec<_>>(),
                [&id]
            );
            let started = generated.headers["x-seen-traceparent"].to_str().unwrap();
            assert!(started.len() == 55 && started.starts_with("00-"), "{started}");
            assert_eq!(generated.headers["x-seen-forwarded-proto"], "http", "{protocol}");
            ids.push(id);
        }
        assert_ne!(ids[0], ids[1]);
    }
}
