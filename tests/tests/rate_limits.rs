#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! Rate limits on the local cluster, with the operator as a local process: a ReplicatedService
//! with `rateLimits` and no rollout gets the request splitter in front, which answers 429 with
//! `Retry-After` to an anonymous client over its limit while identified clients go on, and keeps
//! its count across a reload of its configuration. Bad limits are refused by the CRD's schema or
//! named in a `Degraded` condition.
//!
//! Images: `OUTRIGGER_SPLITTER_IMAGE` (default `outrigger/request-splitter:dev`) and
//! `OUTRIGGER_TESTAPP_IMAGE` (default `outrigger/testapp:dev`).

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use outrigger_api::ReplicatedService;
use outrigger_tests::{
    admin_client, eventually, http_exchange, splitter_fronted_address, test_app_service, OperatorProcess,
    TestNamespace,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(180);

fn operator(namespace: &str) -> OperatorProcess {
    OperatorProcess::with_splitter(namespace).unwrap()
}

/// One replica (so one splitter replica, which gets the whole service-wide limit) of the test app.
fn service(rate_limits: Value) -> ReplicatedService {
    test_app_service(json!({"rateLimits": rate_limits})).unwrap()
}

/// Five anonymous requests an hour, a thousand for each identified client: nothing refills while
/// the test runs.
fn limits() -> Value {
    json!({
        "identityHeader": "x-api-key",
        "anonymous": {"requests": 5, "period": "1h"},
        "identified": {"requests": 1000, "period": "1h"},
    })
}

/// One GET over HTTP/1.0: status, head and body.
fn get(address: &str, path: &str, api_key: Option<&str>) -> anyhow::Result<(u16, String, String)> {
    let mut headers = vec![("Host", "web")];
    headers.extend(api_key.map(|key| ("x-api-key", key)));
    let reply = http_exchange(address, "GET", path, &headers, Duration::from_secs(10))?;
    Ok((reply.status, reply.head.to_ascii_lowercase(), reply.body))
}

/// The address of the Service once it leads to a ready splitter.
async fn fronted_address(namespace: &str) -> String {
    let client = admin_client().await.unwrap();
    let kube_services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let deployments: Api<Deployment> = Api::namespaced(client, namespace);
    eventually("the Service leading to a ready splitter", WAIT, || async {
        let ready = deployments
            .get_opt("web-splitter")
            .await?
            .and_then(|d| d.status?.ready_replicas)
            .unwrap_or(0);
        let address = splitter_fronted_address(&kube_services, "web").await?;
        Ok(address.filter(|_| ready > 0))
    })
    .await
    .unwrap()
}

/// The splitter pod's `/metrics`.
async fn splitter_metrics(namespace: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(admin_client().await.unwrap(), namespace);
    let list = pods
        .list(&ListParams::default().labels("outrigger.dev/splitter=web"))
        .await
        .unwrap();
    let ip = list
        .items
        .iter()
        .find_map(|pod| pod.status.as_ref()?.pod_ip.clone())
        .unwrap();
    let admin = outrigger_core::canary::splitter_admin_port();
    outrigger_tests::http_get_from(&format!("{ip}:{admin}"), "/metrics")
        .unwrap()
        .1
}

fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn the_anonymous_tier_gets_429_at_its_limit_while_identified_clients_go_on_and_a_reload_keeps_the_count(
) {
    let ns = TestNamespace::create("ratelimit").unwrap();
    let _operator = operator(&ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(admin_client().await.unwrap(), &ns.name);
    services
        .create(&PostParams::default(), &service(limits()))
        .await
        .unwrap();
    let address = fronted_address(&ns.name).await;
    // The splitter may be ready before the app: until the app answers, its endpoint may fail and be
    // ejected for a while.
    eventually(
        "the app answering an identified client through the splitter",
        WAIT,
        || async {
            let (status, _, body) = get(&address, "/", Some("warm-up"))?;
            Ok((status == 200 && body.contains("version=")).then_some(()))
        },
    )
    .await
    .unwrap();

    // Until kube-proxy follows the Service to the splitter, a request may still reach the pod
    // directly, uncounted; the limit shows as the first 429.
    let (head, body) = eventually("an anonymous client refused", WAIT, || async {
        let (status, head, body) = get(&address, "/", None)?;
        anyhow::ensure!(status == 200 || status == 429, "{status} {body}");
        Ok((status == 429).then_some((head, body)))
    })
    .await
    .unwrap();
    assert!(head.contains("x-outrigger-reason: rate-limited"), "{head}");
    let retry_after: u64 = head
        .lines()
        .find_map(|line| line.strip_prefix("retry-after: "))
        .expect("a Retry-After header")
        .trim()
        .parse()
        .unwrap();
    assert!(
        (600..=720).contains(&retry_after),
        "one token every 12 minutes: {retry_after}"
    );
    assert_eq!(body, "rate-limited\n");
    for _ in 0..5 {
        assert_eq!(get(&address, "/", None).unwrap().0, 429);
    }
    // The same address with an identity goes on.
    for request in 0..20 {
        let (status, _, body) = get(&address, "/", Some("alice")).unwrap();
        assert_eq!(status, 200, "identified request {request}: {body}");
        assert!(body.contains("version="), "{body}");
    }

    // A new route is a new configuration; the service-wide limits stay, and so does the count.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rateLimits": {"routes": [
                {"pathPrefix": "/fresh", "anonymous": {"requests": 5, "period": "1h"}},
            ]}}})),
        )
        .await
        .unwrap();
    eventually("the new route in force (its own bucket)", WAIT, || async {
        Ok((get(&address, "/fresh", None)?.0 == 200).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        get(&address, "/", None).unwrap().0,
        429,
        "the anonymous bucket was reset by the reload"
    );

    let metrics = splitter_metrics(&ns.name).await;
    let decisions = "outrigger_splitter_rate_limit_decisions_total";
    assert!(
        sample(
            &metrics,
            &format!("{decisions}{{tier=\"anonymous\",result=\"limited\"}}")
        ) >= 7.0,
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            &format!("{decisions}{{tier=\"identified\",result=\"allowed\"}}")
        ) >= 20.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_rate_limits_are_refused_by_the_schema_or_named_in_a_degraded_condition() {
    let ns = TestNamespace::create("ratelimit-bad").unwrap();
    let _operator = operator(&ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(admin_client().await.unwrap(), &ns.name);

    // What the schema can say, the API server says.
    let error = services
        .create(
            &PostParams::default(),
            &service(json!({"anonymous": {"requests": 0}, "routes": [{"pathPrefix": "api"}]})),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("spec.rateLimits.anonymous.requests"), "{error}");
    // Kubernetes 1.20 names a list item's field without its index.
    assert!(
        error.contains("spec.rateLimits.routes.pathPrefix")
            || error.contains("spec.rateLimits.routes[0].pathPrefix"),
        "{error}"
    );

    // What it cannot (identified limits without the header that tells them), the operator says.
    services
        .create(
            &PostParams::default(),
            &service(json!({"identified": {"requests": 10}, "anonymous": {"requests": 5, "period": "48h"}})),
        )
        .await
        .unwrap();
    let message = eventually("the service degraded", WAIT, || async {
        let rsvc = services.get("web").await?;
        Ok(rsvc
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find_map(|c| {
                (c.type_ == "Degraded" && c.status == "True" && c.reason == "InvalidSpec")
                    .then_some(c.message)
            }))
    })
    .await
    .unwrap();
    assert!(message.contains("spec.rateLimits.identityHeader"), "{message}");
    assert!(message.contains("spec.rateLimits.anonymous.period"), "{message}");

    // Fixed, it serves.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"rateLimits": {
                "identityHeader": "x-api-key",
                "anonymous": {"requests": 5, "period": "1h"},
            }}})),
        )
        .await
        .unwrap();
    let address = fronted_address(&ns.name).await;
    eventually("an answer through the splitter", WAIT, || async {
        let (status, _, body) = get(&address, "/", Some("bob"))?;
        Ok((status == 200 && body.contains("version=")).then_some(()))
    })
    .await
    .unwrap();
}
