#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Rate limits over real sockets: the anonymous tier gets 429 with `Retry-After` at its limit while
//! identified clients go on, on the fast path and through hyper alike, and a reload that keeps the
//! limits keeps the buckets.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};
use support::{backend, client, get, metric, send, splitter, Backend, Behaviour};

fn config(stable: &Backend, access_log: bool) -> Value {
    json!({
        "backends": [{"name": "stable", "endpoints": [stable.endpoint()]}],
        // A token a thousand seconds: nothing refills during the test.
        "rateLimits": {
            "identityHeader": "x-api-key",
            "anonymous": {"requestsPerSecond": 0.001, "burst": 3},
            "identified": {"requestsPerSecond": 0.001, "burst": 20}
        },
        "accessLog": access_log
    })
}

#[tokio::test]
async fn the_anonymous_tier_gets_429_at_its_limit_while_identified_clients_go_on_and_a_reload_keeps_the_count(
) {
    let stable = backend("stable", Behaviour::Named).await;
    let splitter = splitter(config(&stable, true)).await;
    let client = client();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&client, &splitter.url("/"), &[]).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    let refused = get(&client, &splitter.url("/"), &[]).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.headers["x-outrigger-reason"], "rate-limited");
    let retry_after: u64 = refused.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((900..=1000).contains(&retry_after), "{retry_after}");
    // A request with a body takes hyper's path, and is counted in the same bucket.
    let post = Request::post(splitter.url("/upload"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    assert_eq!(send(&client, post).await.status, 429);

    for _ in 0..10 {
        let reply = get(&client, &splitter.url("/"), &[("x-api-key", "alice")]).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    // A reload with the same limits (another field changed) keeps the anonymous bucket empty.
    splitter.reconfigure(config(&stable, false)).await.unwrap();
    assert_eq!(get(&client, &splitter.url("/"), &[]).await.status, 429);
    assert_eq!(
        get(&client, &splitter.url("/"), &[("x-api-key", "bob")])
            .await
            .status,
        200
    );

    let metrics = splitter.metrics().await;
    let sample = |labels: &str| {
        metric(
            &metrics,
            &format!("outrigger_splitter_rate_limit_decisions_total{{{labels}}}"),
        )
    };
    assert_eq!(sample("tier=\"anonymous\",result=\"allowed\""), 3.0, "{metrics}");
    assert_eq!(sample("tier=\"anonymous\",result=\"limited\""), 4.0, "{metrics}");
    assert_eq!(
        sample("tier=\"identified\",result=\"allowed\""),
        11.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "outrigger_splitter_local_responses_total{reason=\"rate-limited\"}"
        ),
        4.0
    );
    assert_eq!(stable.seen().len(), 14);
}
