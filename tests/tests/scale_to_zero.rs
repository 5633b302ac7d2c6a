#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! AutoscalingPolicies on the local cluster, with the operator as a local process, for what the
//! metrics of `autoscaling.rs` do not cover: a service with `minReplicas: 0` scales to zero when
//! idle, and a request sent meanwhile is held by the request splitter in front of it and answered
//! once the first replica is up; a cpu metric read from the kubelet's summary (through the API
//! server's node proxy) drives a scale-up.
//!
//! Images: `OUTRIGGER_SPLITTER_IMAGE` (default `outrigger/request-splitter:dev`) and
//! `OUTRIGGER_TESTAPP_IMAGE` (default `outrigger/testapp:dev`).

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
};
use kube::api::{Api, ListParams, PostParams};
use outrigger_api::{
    autoscaling::{MetricType, ScalingDecision},
    AutoscalingPolicy, AutoscalingPolicyStatus, ReplicatedService,
};
use outrigger_tests::{admin_client, eventually, http_exchange, image, OperatorProcess, TestNamespace};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(180);

fn operator(namespace: &str) -> OperatorProcess {
    OperatorProcess::with_splitter(namespace).unwrap()
}

/// A service of the test app with a cpu request (so `Utilization` has a base) and a small limit.
fn service(replicas: i32, env: Value) -> ReplicatedService {
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{
                "name": "app",
                "image": image("OUTRIGGER_TESTAPP_IMAGE", "outrigger/testapp:dev"),
                "imagePullPolicy": "Never",
                "ports": [{"containerPort": 8080}],
                "env": env,
                "resources": {"requests": {"cpu": "50m"}, "limits": {"cpu": "100m"}},
            }]}},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            "readiness": {"httpPath": "/healthz", "port": 8080, "periodSeconds": 1},
        },
    }))
    .unwrap()
}

fn policy(spec: Value) -> AutoscalingPolicy {
    let mut full = json!({"scaleTargetRef": {"kind": "ReplicatedService", "name": "web"}});
    for (key, value) in spec.as_object().unwrap() {
        full[key] = value.clone();
    }
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1",
        "kind": "AutoscalingPolicy",
        "metadata": {"name": "web"},
        "spec": full,
    }))
    .unwrap()
}

async fn policy_status(api: &Api<AutoscalingPolicy>) -> anyhow::Result<AutoscalingPolicyStatus> {
    Ok(api.get("web").await?.status.unwrap_or_default())
}

fn latest(status: &AutoscalingPolicyStatus) -> Option<&ScalingDecision> {
    status.decisions.first()
}

/// One GET over HTTP/1.0, read whole, waiting up to `timeout` for the answer: a held request takes
/// as long as a pod's start.
fn get(address: &str, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let reply = http_exchange(address, "GET", path, &[("Host", "web")], timeout)?;
    Ok((reply.status, reply.body))
}

/// The value of the first sample whose line starts with `prefix`, or 0.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_idle_service_scales_to_zero_and_a_request_sent_meanwhile_is_held_and_answered() {
    let ns = TestNamespace::create("asp-zero").unwrap();
    let _operator = operator(&ns.name);
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<AutoscalingPolicy> = Api::namespaced(client.clone(), &ns.name);
    let kube_services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    services
        .create(
            &PostParams::default(),
            &service(1, json!([{"name": "DRAIN_SECONDS", "value": "0"}])),
        )
        .await
        .unwrap();
    policies
        .create(
            &PostParams::default(),
            &policy(json!({
                "minReplicas": 0, "maxReplicas": 2,
                "metrics": [{"type": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}},
            })),
        )
        .await
        .unwrap();

    // A policy that may scale to zero puts the splitter in front, and the Service leads to it.
    eventually("the Service leading to the request splitter", WAIT, || async {
        let ready = deployments
            .get_opt("web-splitter")
            .await?
            .and_then(|d| d.status?.ready_replicas)
            .unwrap_or(0);
        let selector = kube_services
            .get("web")
            .await?
            .spec
            .and_then(|s| s.selector)
            .unwrap_or_default();
        Ok((ready > 0 && selector.contains_key("outrigger.dev/splitter")).then_some(()))
    })
    .await
    .unwrap();

    // Nobody sends anything: after the 10 s window, zero replicas, and the decision says why.
    let status = eventually("the idle service scaled to zero", WAIT, || async {
        let status = policy_status(&policies).await?;
        let zero = services.get("web").await?.spec.replicas == 0;
        Ok((zero && latest(&status).is_some_and(|d| d.reason == "ScaleToZero")).then_some(status))
    })
    .await
    .unwrap();
    let down = latest(&status).unwrap();
    assert_eq!((down.from_replicas, down.to_replicas), (1, 0), "{down:?}");
    assert!(
        down.summary.starts_with("1→0 ScaleToZero (no requests for "),
        "{down:?}"
    );
    eventually("the last pod gone", WAIT, || async {
        let left = pods
            .list(&ListParams::default().labels("outrigger.dev/replicatedservice=web"))
            .await?;
        Ok(left.items.is_empty().then_some(()))
    })
    .await
    .unwrap();
    let status = policy_status(&policies).await.unwrap();
    let scaling = status
        .conditions
        .iter()
        .find(|c| c.type_ == "ScalingActive")
        .unwrap();
    assert_eq!(
        (scaling.status.as_str(), scaling.reason.as_str()),
        ("True", "ScaledToZero")
    );

    // A request at zero: held by the splitter, it scales the service to one, and gets its answer.
    let service_ip = kube_services
        .get("web")
        .await
        .unwrap()
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap();
    let sent = Instant::now();
    let address = format!("{service_ip}:80");
    let answer = tokio::task::spawn_blocking(move || get(&address, "/cold", Duration::from_secs(90)))
        .await
        .unwrap()
        .unwrap();
    let first_request = sent.elapsed();
    assert_eq!(answer, (200, "version=v1\n".to_owned()), "no client error");

    let status = policy_status(&policies).await.unwrap();
    let up = status
        .decisions
        .iter()
        .find(|d| d.reason == "ScaleFromZero")
        .unwrap_or_else(|| panic!("{:#?}", status.decisions));
    assert_eq!((up.from_replicas, up.to_replicas), (0, 1), "{up:?}");
    assert_eq!(up.summary, "0→1 ScaleFromZero (1 requests held)");
    assert_eq!(services.get("web").await.unwrap().spec.replicas, 1);

    // The splitter reports the cold start it just held a request through.
    let splitter_pods = pods
        .list(&ListParams::default().labels("outrigger.dev/splitter=web"))
        .await
        .unwrap();
    let mut metrics = String::new();
    for pod in &splitter_pods.items {
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
        metrics.push_str(
            &outrigger_tests::http_get_from(&format!("{ip}:9903"), "/metrics")
                .unwrap()
                .1,
        );
    }
    assert_eq!(
        sample(&metrics, "outrigger_splitter_cold_start_seconds_count"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "outrigger_splitter_held_total{outcome=\"served\"}"),
        1.0
    );
    assert_eq!(sample(&metrics, "outrigger_splitter_held_requests "), 0.0);
    let cold_start = sample(&metrics, "outrigger_splitter_cold_start_seconds_sum");
    assert!(cold_start > 0.0 && cold_start <= first_request.as_secs_f64() + 0.5);
    // Measurements for bench/autoscaling.sh; nothing is asserted on them.
    eprintln!(
        "autoscaling: cold start from zero → first response {:.1} s (splitter's cold_start_seconds {cold_start:.1} s)",
        first_request.as_secs_f64()
    );
}

#[tokio::test]
async fn a_cpu_metric_from_the_kubelet_summary_drives_a_scale_up() {
    let ns = TestNamespace::create("asp-kubelet").unwrap();
    let _operator = operator(&ns.name);
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<AutoscalingPolicy> = Api::namespaced(client, &ns.name);
    // The pod spins one thread, held to its limit of 100m: twice its request of 50m.
    services
        .create(
            &PostParams::default(),
            &service(
                1,
                json!([{"name": "DRAIN_SECONDS", "value": "0"}, {"name": "BURN_CPU", "value": "1"}]),
            ),
        )
        .await
        .unwrap();
    policies
        .create(
            &PostParams::default(),
            &policy(json!({
                "minReplicas": 1, "maxReplicas": 2,
                "metrics": [{"type": "cpu", "target": {"type": "Utilization", "averageUtilization": 100}}],
            })),
        )
        .await
        .unwrap();
    let status = eventually("a scale-up on the pod's cpu", WAIT, || async {
        let status = policy_status(&policies).await?;
        let up = latest(&status).is_some_and(|d| d.reason == "ScaleUp" && d.to_replicas == 2);
        Ok((up && services.get("web").await?.spec.replicas == 2).then_some(status))
    })
    .await
    .unwrap();
    let up = latest(&status).unwrap();
    let cpu = &up.metrics[0];
    assert_eq!(cpu.metric_type, MetricType::Cpu);
    assert_eq!(cpu.target, "100%");
    // The kubelet reports about 100m against a request of 50m: about 200%.
    let percent: f64 = cpu.value.trim_end_matches('m').parse().unwrap();
    let percent = if cpu.value.ends_with('m') {
        percent / 1000.0
    } else {
        percent
    };
    assert!(percent > 110.0, "{up:?}");
    assert!(up.summary.starts_with("1→2 ScaleUp (cpu "), "{up:?}");
    eprintln!(
        "autoscaling: kubelet summary cpu {percent:.0}% of request → {}",
        up.summary
    );
}
