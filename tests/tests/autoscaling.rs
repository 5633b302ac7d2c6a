#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! AutoscalingPolicies on the local cluster, with the operator as a local process: a load step
//! through the injected request splitters scales a ReplicatedService up and a drop scales it down
//! within the policies; a metrics source that goes away yields the fallback replicas; an HPA on the
//! same target is reported, and nobody fights over the replicas.

use std::{
    cell::Cell,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use outrigger_api::{
    autoscaling::ScalingDecision,
    common::{Condition, LocalObjectReference},
    rollout::RolloutPhase,
    AutoscalingPolicy, AutoscalingPolicyStatus, ReplicatedService, RolloutStrategy,
};
use outrigger_tests::{
    admin_client, dry_run, eventually, kubectl_ok, kubectl_stdin, OperatorProcess, TestNamespace,
    WebhookOperator,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(180);

fn service(replicas: i32, sidecar: bool) -> ReplicatedService {
    let mut spec = json!({
        "replicas": replicas,
        "template": {"spec": {"containers": [{
            "name": "app", "image": "outrigger/testapp:dev", "imagePullPolicy": "Never",
            "ports": [{"containerPort": 8080}],
            "env": [{"name": "DRAIN_SECONDS", "value": "0"}],
        }]}},
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        "readiness": {"httpPath": "/healthz", "port": 8080, "periodSeconds": 1},
    });
    if sidecar {
        // Clients reach the app through each pod's request splitter, which counts every request.
        spec["sidecars"] =
            json!([{"name": "request-splitter", "settings": {"listenPort": "15001", "appPort": "8080"}}]);
        spec["ports"][0]["targetPort"] = json!(15001);
    }
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "web"},
        "spec": spec,
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

/// A stand-in Prometheus on loopback answering every instant query with one settable value, until
/// it is stopped (then connections are refused, as with a Prometheus that is gone).
struct FakePrometheus {
    port: u16,
    value: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakePrometheus {
    fn start(value: f64) -> FakePrometheus {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(AtomicU64::new(value.to_bits()));
        let stop = Arc::new(AtomicBool::new(false));
        let (answer, stopped) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => respond(stream, f64::from_bits(answer.load(Ordering::Relaxed))),
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        FakePrometheus {
            port,
            value: shared,
            stop,
            thread: Some(thread),
        }
    }

    fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn set(&self, value: f64) {
        self.value.store(value.to_bits(), Ordering::Relaxed);
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

fn respond(mut stream: TcpStream, value: f64) {
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut request = [0u8; 4096];
    let _ = stream.read(&mut request);
    let body =
        json!({"status": "success", "data": {"resultType": "scalar", "result": [0, value.to_string()]}})
            .to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

async fn policy_status(api: &Api<AutoscalingPolicy>) -> anyhow::Result<AutoscalingPolicyStatus> {
    Ok(api.get("web").await?.status.unwrap_or_default())
}

fn condition<'a>(status: &'a AutoscalingPolicyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

async fn replicas(api: &Api<ReplicatedService>) -> anyhow::Result<i32> {
    Ok(api.get("web").await?.spec.replicas)
}

/// Waits for the policy to say it scales and reads metrics.
async fn wait_scaling(policies: &Api<AutoscalingPolicy>) {
    eventually("the policy measuring and scaling", WAIT, || async {
        let status = policy_status(policies).await?;
        Ok(condition(&status, "Ready")
            .filter(|c| c.status == "True")
            .map(drop))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn killing_the_metrics_source_yields_the_fallback_replicas_with_a_condition_saying_why() {
    let ns = TestNamespace::create("asp-fallback").unwrap();
    let _operator = OperatorProcess::for_namespace(&ns.name).unwrap();
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<AutoscalingPolicy> = Api::namespaced(client, &ns.name);
    let mut prometheus = FakePrometheus::start(10.0);
    services
        .create(&PostParams::default(), &service(1, false))
        .await
        .unwrap();
    let spec = policy(json!({
        "minReplicas": 1, "maxReplicas": 4,
        "metrics": [{"type": "prometheus", "target": {"type": "Value", "value": "10"},
                     "prometheus": {"address": prometheus.address(), "query": "sum(rate(requests[1m]))"}}],
        "fallback": {"replicas": 3, "afterSeconds": 3},
    }));
    policies.create(&PostParams::default(), &spec).await.unwrap();
    wait_scaling(&policies).await;
    assert_eq!(
        replicas(&services).await.unwrap(),
        1,
        "the query is at its target"
    );

    // Twice the target: twice the replicas.
    prometheus.set(20.0);
    let status = eventually("a scale-up on the query", WAIT, || async {
        let status = policy_status(&policies).await?;
        let recorded = status.decisions.first().is_some_and(|d| d.to_replicas == 2);
        Ok((recorded && replicas(&services).await? == 2).then_some(status))
    })
    .await
    .unwrap();
    let up = &status.decisions[0];
    assert_eq!(
        (up.reason.as_str(), up.raw_recommendation),
        ("ScaleUp", Some(2)),
        "{up:?}"
    );
    assert_eq!(
        (up.metrics[0].value.as_str(), up.metrics[0].target.as_str()),
        ("20", "10")
    );

    prometheus.stop();
    let status = eventually("the fallback replicas", WAIT, || async {
        let status = policy_status(&policies).await?;
        let recorded = status.decisions.first().is_some_and(|d| d.reason == "Fallback");
        Ok((recorded && replicas(&services).await? == 3).then_some(status))
    })
    .await
    .unwrap();
    let metrics = condition(&status, "MetricsAvailable").unwrap();
    assert_eq!(
        (metrics.status.as_str(), metrics.reason.as_str()),
        ("False", "FallbackActive")
    );
    assert!(
        metrics.message.contains("Prometheus query"),
        "{}",
        metrics.message
    );
    let decision = &status.decisions[0];
    assert_eq!(
        (
            decision.from_replicas,
            decision.to_replicas,
            decision.reason.as_str()
        ),
        (2, 3, "Fallback")
    );
    assert!(decision.metrics[0].error.is_some(), "{decision:?}");
}

#[tokio::test]
async fn an_hpa_on_the_same_target_is_reported_and_neither_controller_flaps() {
    let ns = TestNamespace::create("asp-hpa").unwrap();
    let operator = OperatorProcess::for_namespace(&ns.name).unwrap();
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<AutoscalingPolicy> = Api::namespaced(client, &ns.name);
    // The query asks for twice the replicas: the policy would scale 2 → 4 if it owned them.
    let prometheus = FakePrometheus::start(20.0);
    services
        .create(&PostParams::default(), &service(2, false))
        .await
        .unwrap();
    let hpa = json!({
        "apiVersion": "autoscaling/v2beta2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "web-hpa", "namespace": ns.name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService", "name": "web"},
            "minReplicas": 1, "maxReplicas": 5,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
        },
    });
    let applied = kubectl_stdin(&["apply", "-f", "-"], &hpa.to_string()).unwrap();
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let spec = policy(json!({
        "minReplicas": 1, "maxReplicas": 4,
        "metrics": [{"type": "prometheus", "target": {"type": "Value", "value": "10"},
                     "prometheus": {"address": prometheus.address(), "query": "load"}}],
    }));
    policies.create(&PostParams::default(), &spec).await.unwrap();

    let status = eventually("the HPA reported", WAIT, || async {
        let status = policy_status(&policies).await?;
        let reported = condition(&status, "ScalingActive").is_some_and(|c| c.status == "False");
        // Once the pods are ready the policy also knows what it would do.
        Ok((reported && status.desired_replicas == 4).then_some(status))
    })
    .await
    .unwrap();
    let scaling = condition(&status, "ScalingActive").unwrap();
    assert_eq!(scaling.reason, "HorizontalPodAutoscalerPresent");
    assert!(scaling.message.contains("web-hpa"), "{}", scaling.message);

    // Longer than an HPA sync (15 s) and many polls: the replicas stay, the policy writes none.
    for _ in 0..20 {
        assert_eq!(replicas(&services).await.unwrap(), 2);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let scale_writes = r#"outrigger_api_writes_total{controller="autoscalingpolicy",verb="scale"}"#;
    assert_eq!(operator.metric(scale_writes).unwrap_or(0.0), 0.0);

    // Once the HPA is gone the policy takes over.
    kubectl_ok(&["delete", "hpa", "web-hpa", "-n", &ns.name]).unwrap();
    let status = eventually("the policy scaling after the HPA left", WAIT, || async {
        let status = policy_status(&policies).await?;
        let recorded = status.decisions.first().is_some_and(|d| d.to_replicas == 4);
        Ok((recorded && replicas(&services).await? == 4).then_some(status))
    })
    .await
    .unwrap();
    assert_eq!(condition(&status, "ScalingActive").unwrap().status, "True");
    assert_eq!(status.decisions[0].to_replicas, 4);
}

/// Requests to an address from a few threads, each pausing between requests, until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Each thread sends one request every `interval`: at most `threads / interval` requests per
    /// second. A thread that falls behind (a slow answer on a busy machine) skips the slots it
    /// missed instead of sending them in a burst, which a 3 s rate window would see as a step.
    fn paced(address: String, threads: usize, interval: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (stop, address) = (stop.clone(), address.clone());
                std::thread::spawn(move || {
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let _ = outrigger_tests::http_get_from(&address, "/work");
                        next = (next + interval).max(Instant::now());
                        std::thread::sleep(next.saturating_duration_since(Instant::now()));
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }

    fn start(address: String, threads: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (stop, address) = (stop.clone(), address.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = outrigger_tests::http_get_from(&address, "/work");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        Load { stop, threads }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A quantity as the policy writes it: whole (`37`) or in milli-units (`37500m`).
fn quantity(text: &str) -> f64 {
    match text.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().unwrap() / 1000.0,
        None => text.parse().unwrap(),
    }
}

fn summary(decisions: &[ScalingDecision]) -> Vec<(i32, i32, String, Option<String>)> {
    decisions
        .iter()
        .map(|d| {
            (
                d.from_replicas,
                d.to_replicas,
                d.reason.clone(),
                d.limited_by.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_load_step_scales_up_and_a_drop_scales_down_within_the_window_and_policies() {
    let ns = TestNamespace::create("asp-load").unwrap();
    let _operator = WebhookOperator::start(
        &ns,
        true,
        &["--sidecar-image", "metrics-adapter=outrigger/testapp:dev"],
    )
    .unwrap();
    let client = admin_client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // The webhook answers before the service's pods are created, so they get their splitter.
    eventually("the webhook injecting", WAIT, || async {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "dry-run", "annotations": {"outrigger.dev/inject": "metrics-adapter"}},
            "spec": {"containers": [{"name": "app", "image": "outrigger/testapp:dev"}]},
        }))?;
        let pod = pods.create(&dry_run(), &pod).await?;
        Ok((pod.spec.unwrap_or_default().containers.len() == 2).then_some(()))
    })
    .await
    .unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<AutoscalingPolicy> = Api::namespaced(client.clone(), &ns.name);
    services
        .create(&PostParams::default(), &service(1, true))
        .await
        .unwrap();
    let spec = policy(json!({
        "minReplicas": 1, "maxReplicas": 3,
        "metrics": [{"type": "requestRate", "target": {"type": "AverageValue", "averageValue": "4"}}],
        "behavior": {"scaleDown": {
            "stabilizationWindowSeconds": 5,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 5}],
        }},
    }));
    policies.create(&PostParams::default(), &spec).await.unwrap();
    eventually("a ready pod with its request splitter", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("outrigger.dev/replicatedservice=web"))
            .await?;
        Ok(list
            .items
            .iter()
            .any(|pod| {
                let containers = pod.spec.as_ref().map_or(0, |s| s.containers.len());
                let ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
                containers == 2 && ready
            })
            .then_some(()))
    })
    .await
    .unwrap();
    wait_scaling(&policies).await;
    assert_eq!(replicas(&services).await.unwrap(), 1, "idle: the minimum");

    let service_ip = service_cluster_ip(&ns).await;
    let step = Instant::now();
    let load = Load::start(format!("{service_ip}:80"), 3);
    let written = Cell::new(None);
    let status = eventually("a scale-up to the maximum", WAIT, || async {
        let status = policy_status(&policies).await?;
        let current = replicas(&services).await?;
        if current > 1 && written.get().is_none() {
            written.set(Some(step.elapsed()));
        }
        let recorded = status.decisions.first().is_some_and(|d| d.to_replicas == 3);
        Ok((recorded && current == 3).then_some(status))
    })
    .await
    .unwrap();
    eventually("3 ready replicas", WAIT, || async {
        let ready = services.get("web").await?.status.map_or(0, |s| s.ready_replicas);
        Ok((ready == 3).then_some(()))
    })
    .await
    .unwrap();
    // Measurements for bench/autoscaling.sh; nothing is asserted on them.
    eprintln!(
        "autoscaling: load step → replicas written {:.1} s, → 3 replicas ready {:.1} s",
        written.get().unwrap_or_default().as_secs_f64(),
        step.elapsed().as_secs_f64()
    );
    // The step may take one decision or two (while the rate window fills); the last reaches 3.
    let up = &status.decisions[0];
    assert_eq!((up.to_replicas, up.reason.as_str()), (3, "ScaleUp"), "{up:?}");
    assert!(up.raw_recommendation.unwrap() >= 3, "{up:?}");
    assert!(quantity(&up.metrics[0].value) > 4.0, "{up:?}");
    if up.raw_recommendation.unwrap() > 3 {
        assert_eq!(up.limited_by.as_deref(), Some("maxReplicas"), "{up:?}");
    }

    drop(load);
    let drop_at = Instant::now();
    let held = Cell::new(None);
    let status = eventually("a scale-down to the minimum", WAIT, || async {
        let status = policy_status(&policies).await?;
        if held.get().is_none() && status.decisions.first().is_some_and(|d| d.reason == "ScaleDown") {
            held.set(Some(drop_at.elapsed()));
        }
        let recorded = status.decisions.first().is_some_and(|d| d.to_replicas == 1);
        Ok((recorded && replicas(&services).await? == 1).then_some(status))
    })
    .await
    .unwrap();
    // One pod per period, the last limited by the minimum. The first is limited by the policy,
    // unless the stabilization window's recommendation was already 2 (a tick caught the rate
    // half-way down), when both limits agree.
    assert_eq!(
        summary(&status.decisions[..1]),
        vec![(2, 1, "ScaleDown".to_owned(), Some("minReplicas".to_owned()))],
        "{:#?}",
        status.decisions
    );
    let first = &status.decisions[1];
    assert_eq!(
        (first.from_replicas, first.to_replicas, first.reason.as_str()),
        (3, 2, "ScaleDown")
    );
    assert!(
        first.limited_by.as_deref() == Some("scaleDown policy 1 Pods per 5s")
            || (first.limited_by.is_none() && first.stabilized_recommendation == Some(2)),
        "{first:#?}"
    );
    let period = status.decisions[0].at.0.as_second() - first.at.0.as_second();
    assert!(period >= 4, "one pod per 5 s period: {:#?}", status.decisions);
    eprintln!(
        "autoscaling: load stopped → first scale-down {:.1} s (stabilization window 5 s, rate window 3 s)",
        held.get().unwrap_or_default().as_secs_f64()
    );
    for decision in &status.decisions[..2] {
        assert_eq!(decision.raw_recommendation, Some(0), "no traffic: {decision:?}");
        assert!(!decision.summary.is_empty());
    }
}

#[tokio::test]
async fn a_rollout_in_progress_scales_both_tracks_and_keeps_the_canary_weight() {
    let ns = TestNamespace::create("asp-rollout").unwrap();
    let _operator = OperatorProcess::for_namespace(&ns.name).unwrap();
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<AutoscalingPolicy> = Api::namespaced(client.clone(), &ns.name);
    let strategies: Api<RolloutStrategy> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client, &ns.name);
    let prometheus = FakePrometheus::start(10.0);
    let strategy: RolloutStrategy = serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1",
        "kind": "RolloutStrategy",
        "metadata": {"name": "half"},
        "spec": {"strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}}},
    }))
    .unwrap();
    strategies
        .create(&PostParams::default(), &strategy)
        .await
        .unwrap();
    let mut rsvc = service(2, false);
    rsvc.spec.rollout_strategy_ref = Some(LocalObjectReference {
        name: "half".to_owned(),
    });
    services.create(&PostParams::default(), &rsvc).await.unwrap();
    let spec = policy(json!({
        "minReplicas": 1, "maxReplicas": 6,
        "metrics": [{"type": "prometheus", "target": {"type": "Value", "value": "10"},
                     "prometheus": {"address": prometheus.address(), "query": "load"}}],
    }));
    policies.create(&PostParams::default(), &spec).await.unwrap();
    wait_scaling(&policies).await;

    // A new version pauses at 50%: one replica per track.
    let v2 = json!({"spec": {"template": {"spec": {"containers": [{
        "name": "app", "image": "outrigger/testapp:dev", "imagePullPolicy": "Never",
        "ports": [{"containerPort": 8080}],
        "env": [{"name": "VERSION", "value": "v2"}, {"name": "DRAIN_SECONDS", "value": "0"}],
    }]}}}});
    services
        .patch("web", &PatchParams::default(), &Patch::Merge(&v2))
        .await
        .unwrap();
    let track_replicas = || async {
        let stable = deployments.get("web").await?.spec.and_then(|s| s.replicas);
        let canary = deployments
            .get_opt("web-canary")
            .await?
            .and_then(|d| d.spec?.replicas);
        anyhow::Ok((stable, canary))
    };
    eventually("the rollout paused at 50%", WAIT, || async {
        let rollout = services.get("web").await?.status.and_then(|s| s.rollout);
        let paused = rollout.is_some_and(|r| r.phase == RolloutPhase::Paused && r.canary_weight == 50);
        Ok((paused && track_replicas().await? == (Some(1), Some(1))).then_some(()))
    })
    .await
    .unwrap();

    // Twice the load: the policy doubles the service, both tracks grow, the weight stays.
    prometheus.set(20.0);
    eventually("both tracks scaled", WAIT, || async {
        Ok((replicas(&services).await? == 4 && track_replicas().await? == (Some(2), Some(2))).then_some(()))
    })
    .await
    .unwrap();
    let rollout = services
        .get("web")
        .await
        .unwrap()
        .status
        .unwrap()
        .rollout
        .unwrap();
    assert_eq!((rollout.phase, rollout.canary_weight), (RolloutPhase::Paused, 50));
}

/// Starts a webhook operator and a service of one replica whose pods get their request splitter,
/// and waits for a ready pod with it; returns the operator (kept alive by the caller) and the
/// Service's cluster IP.
async fn service_with_splitters(ns: &TestNamespace, policy_spec: Value) -> (WebhookOperator, String) {
    let operator = WebhookOperator::start(
        ns,
        true,
        &["--sidecar-image", "metrics-adapter=outrigger/testapp:dev"],
    )
    .unwrap();
    let client = admin_client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    eventually("the webhook injecting", WAIT, || async {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "dry-run", "annotations": {"outrigger.dev/inject": "metrics-adapter"}},
            "spec": {"containers": [{"name": "app", "image": "outrigger/testapp:dev"}]},
        }))?;
        let pod = pods.create(&dry_run(), &pod).await?;
        Ok((pod.spec.unwrap_or_default().containers.len() == 2).then_some(()))
    })
    .await
    .unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<AutoscalingPolicy> = Api::namespaced(client.clone(), &ns.name);
    services
        .create(&PostParams::default(), &service(1, true))
        .await
        .unwrap();
    policies
        .create(&PostParams::default(), &policy(policy_spec))
        .await
        .unwrap();
    wait_scaling(&policies).await;
    (operator, service_cluster_ip(ns).await)
}

/// The cluster IP of the Service `web`, waited for: the policy can measure before the service's
/// own reconcile has applied its Service.
async fn service_cluster_ip(ns: &TestNamespace) -> String {
    eventually("the Service web and its cluster IP", WAIT, || async {
        let ip = kubectl_ok(&[
            "get",
            "service",
            "web",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?;
        Ok(Some(ip.trim().to_owned()).filter(|ip| !ip.is_empty()))
    })
    .await
    .unwrap()
}

/// A steady load between two replica counts' targets must settle and stay: the tolerance and the
/// windows keep the rate's noise from turning into changes.
#[tokio::test]
async fn a_steady_load_settles_on_its_replicas_without_flapping() {
    let ns = TestNamespace::create("asp-steady").unwrap();
    // 15 requests/s against 8 per replica: 2 replicas, each then at 7.5 (within the 10% tolerance).
    let (_operator, service_ip) = service_with_splitters(
        &ns,
        json!({
            "minReplicas": 1, "maxReplicas": 4,
            "metrics": [{"type": "requestRate", "target": {"type": "AverageValue", "averageValue": "8"}}],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}},
        }),
    )
    .await;
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let policies: Api<AutoscalingPolicy> = Api::namespaced(client, &ns.name);
    let _load = Load::paced(format!("{service_ip}:80"), 3, Duration::from_millis(200));
    eventually("2 ready replicas under the steady load", WAIT, || async {
        let ready = services.get("web").await?.status.map_or(0, |s| s.ready_replicas);
        Ok((ready == 2 && replicas(&services).await? == 2).then_some(()))
    })
    .await
    .unwrap();
    // Past the rate window and the scale-down window, then watched for 30 s.
    tokio::time::sleep(Duration::from_secs(8)).await;
    // Decisions are kept 10 deep, so the newest one before marks where the new ones end.
    let before = policy_status(&policies)
        .await
        .unwrap()
        .decisions
        .first()
        .map(|d| d.at.clone());
    let watched = Instant::now();
    let mut counts = Vec::new();
    while watched.elapsed() < Duration::from_secs(30) {
        counts.push(replicas(&services).await.unwrap());
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let status = policy_status(&policies).await.unwrap();
    let changes = status
        .decisions
        .iter()
        .take_while(|d| Some(&d.at) != before.as_ref())
        .count();
    // Measurements for bench/autoscaling.sh.
    eprintln!(
        "autoscaling: steady load 15 requests/s against 8 per replica → {changes} changes in 30 s at {:?} replicas",
        counts.iter().min().zip(counts.iter().max())
    );
    let summaries: Vec<&str> = status.decisions.iter().map(|d| d.summary.as_str()).collect();
    assert_eq!(changes, 0, "{summaries:#?}");
    assert!(counts.iter().all(|count| *count == 2), "{counts:?}");
}
