#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! The front tier's HTTP cache on the local cluster, with the operator as a local process: a
//! ReplicatedService with `spec.cache` gets the request splitter in front of it; cacheable responses
//! are then served from the cache (the test app counts what reaches it), `Vary` and `no-store` are
//! honoured, and a flood of distinct URLs keeps the cache within `maxBytes` (its size metric). A
//! cache size the schema refuses never gets in; one only the operator can judge makes the service
//! `Degraded`, naming the field.
//!
//! Images: `OUTRIGGER_SPLITTER_IMAGE` (default `outrigger/request-splitter:dev`) and
//! `OUTRIGGER_TESTAPP_IMAGE` (default `outrigger/testapp:dev`), with `/cache/` support.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use outrigger_api::ReplicatedService;
use outrigger_tests::{
    admin_client, eventually, http_exchange, splitter_fronted_address, test_app_service, OperatorProcess,
    TestNamespace,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(180);
/// The splitter's admin port (`canary::splitter_admin_port`).
const SPLITTER_ADMIN: u16 = 9903;
const MAX_BYTES: u64 = 1 << 20;

fn operator(namespace: &str) -> OperatorProcess {
    OperatorProcess::with_splitter(namespace).unwrap()
}

fn service(cache: Value) -> ReplicatedService {
    test_app_service(json!({"cache": cache})).unwrap()
}

/// A response read whole: status, lower-cased header lines, body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// One GET over HTTP/1.0 with extra headers.
fn get(address: &str, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<Reply> {
    let mut all = vec![("Host", "web")];
    all.extend_from_slice(headers);
    let reply = http_exchange(address, "GET", path, &all, Duration::from_secs(10))?;
    let headers = reply
        .head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(Reply {
        status: reply.status,
        headers,
        body: reply.body,
    })
}

async fn pod_ip(pods: &Api<Pod>, selector: &str) -> String {
    eventually("a running pod", WAIT, || async {
        let list = pods.list(&ListParams::default().labels(selector)).await?;
        Ok(list
            .items
            .iter()
            .find(|pod| pod.metadata.deletion_timestamp.is_none())
            .and_then(|pod| pod.status.as_ref()?.pod_ip.clone()))
    })
    .await
    .unwrap()
}

/// `/cache/` requests the app answered.
fn backend_count(app: &str) -> u64 {
    get(&format!("{app}:8080"), "/-/cache-count", &[])
        .unwrap()
        .body
        .trim()
        .parse()
        .unwrap()
}

fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_front_tier_serves_cacheable_responses_from_its_cache_within_its_memory_bound() {
    let ns = TestNamespace::create("edge-cache").unwrap();
    let _operator = operator(&ns.name);
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let kube_services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    services
        .create(
            &PostParams::default(),
            &service(json!({"maxBytes": MAX_BYTES, "maxObjectBytes": 65_536})),
        )
        .await
        .unwrap();
    let address = eventually("the Service to send clients to the splitter", WAIT, || async {
        let Some(address) = splitter_fronted_address(&kube_services, "web").await? else {
            return Ok(None);
        };
        // The app answers /healthz too: only the splitter's request id shows that kube-proxy
        // already sends the Service's clients to the splitter.
        Ok(get(&address, "/healthz", &[])
            .ok()
            .filter(|reply| reply.status == 200 && reply.header("x-request-id").is_some())
            .map(|_| address))
    })
    .await
    .unwrap();
    let app = pod_ip(&pods, "outrigger.dev/track=stable").await;
    let splitter = pod_ip(&pods, "outrigger.dev/splitter=web").await;

    // A cacheable response: the second request is answered by the cache.
    let before = backend_count(&app);
    let first = get(&address, "/cache/page?cc=max-age=300", &[]).unwrap();
    let second = get(&address, "/cache/page?cc=max-age=300", &[]).unwrap();
    assert_eq!((first.status, first.body.as_str()), (200, "v1"));
    assert_eq!((second.status, second.body.as_str()), (200, "v1"));
    assert_eq!(
        (first.header("x-cache"), second.header("x-cache")),
        (Some("MISS"), Some("HIT"))
    );
    assert_eq!(backend_count(&app), before + 1, "one request reached the app");

    // `Vary`: one stored response per language.
    let before = backend_count(&app);
    let path = "/cache/greeting?cc=max-age=300&vary=accept-language";
    for (language, expected) in [("en", "MISS"), ("fr", "MISS"), ("en", "HIT"), ("fr", "HIT")] {
        let reply = get(&address, path, &[("accept-language", language)]).unwrap();
        assert_eq!(reply.body, format!("v1:{language}"));
        assert_eq!(reply.header("x-cache"), Some(expected), "{language}");
    }
    assert_eq!(backend_count(&app), before + 2);

    // `no-store`: every request reaches the app.
    let before = backend_count(&app);
    for _ in 0..3 {
        get(&address, "/cache/secret?cc=no-store", &[]).unwrap();
    }
    assert_eq!(backend_count(&app), before + 3);

    // A flood of distinct URLs: the cache evicts and stays within maxBytes.
    for index in 0..600 {
        let reply = get(
            &address,
            &format!("/cache/flood/{index}?cc=max-age=600&size=4096"),
            &[],
        )
        .unwrap();
        assert_eq!(reply.body.len(), 4096);
    }
    let metrics = get(&format!("{splitter}:{SPLITTER_ADMIN}"), "/metrics", &[])
        .unwrap()
        .body;
    let bytes = sample(&metrics, "outrigger_splitter_cache_size_bytes");
    assert!(bytes > 0.0 && bytes <= MAX_BYTES as f64, "{bytes} bytes held");
    assert!(
        sample(&metrics, "outrigger_splitter_cache_evictions_total") > 0.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "outrigger_splitter_cache_requests_total{result=\"hit\"}"
        ) >= 3.0
    );
}

#[tokio::test]
async fn a_bad_cache_size_is_refused_by_the_schema_or_makes_the_service_degraded() {
    let ns = TestNamespace::create("edge-cache-bad").unwrap();
    let _operator = operator(&ns.name);
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    for cache in [
        json!({"maxBytes": 10}),
        json!({"maxBytes": MAX_BYTES, "maxObjectBytes": 100}),
    ] {
        let error = services
            .create(&PostParams::default(), &service(cache.clone()))
            .await
            .unwrap_err()
            .to_string();
        assert!(error.contains("spec.cache.max"), "{cache}: {error}");
    }
    services
        .create(
            &PostParams::default(),
            &service(json!({"maxBytes": MAX_BYTES, "maxObjectBytes": 2 * MAX_BYTES})),
        )
        .await
        .unwrap();
    let message = eventually("a Degraded condition naming the field", WAIT, || async {
        let status = services.get("web").await?.status.unwrap_or_default();
        Ok(status
            .conditions
            .iter()
            .find(|condition| condition.type_ == "Degraded" && condition.status == "True")
            .map(|condition| condition.message.clone()))
    })
    .await
    .unwrap();
    assert!(message.contains("spec.cache.maxObjectBytes"), "{message}");
}
