#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! What a newcomer does after `make up`: the operator installed with the Helm chart, then
//! `kubectl apply -f manifests/examples/`. Every example becomes ready and serves as its comment
//! says (the web service through its injected splitter, the Redis cache through a client's
//! ambassador, config sync with a live edit, the adapters, autoscaling); `kubectl port-forward`,
//! `exec` and `logs` work on the local cluster; and every `kubectl outrigger` command works against
//! the objects, the rollout controls walking a real rollout.
//!
//! The release is scoped to this test's namespace (watchNamespace, a webhook namespace selector) so
//! it shares the cluster with the other tests. Needs every image (`hack/images.sh`) and the plugin
//! (`cargo build -p kubectl-outrigger`).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use outrigger_api::{rollout::RolloutPhase, AutoscalingPolicy, ReplicatedService, ShardedService};
use outrigger_tests::{
    admin_client, admin_kubeconfig, ensure_crds, eventually, helm_ok, http_get_from, kubectl, kubectl_ok,
    repo_root, workspace_binary, TestNamespace,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(240);

/// The Helm release, uninstalled (cluster-scoped objects included) when the test ends.
struct Release {
    name: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm_ok(&["uninstall", &self.name, "--namespace", &self.name]);
    }
}

fn plugin(namespace: &str, args: &[&str]) -> String {
    let output = Command::new(workspace_binary("kubectl-outrigger"))
        .env("KUBECONFIG", admin_kubeconfig())
        .args(["--namespace", namespace, "--width", "100"])
        .args(args)
        .output()
        .expect("kubectl-outrigger runs (cargo build -p kubectl-outrigger)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kubectl outrigger {} failed: {}{stdout}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

async fn service_address(services: &Api<Service>, name: &str) -> String {
    let spec = services.get(name).await.unwrap().spec.unwrap();
    let port = spec.ports.unwrap()[0].port;
    format!("{}:{port}", spec.cluster_ip.unwrap())
}

/// Polls a GET until its answer is 200 and holds `want`.
async fn serves(what: &str, address: &str, path: &str, want: &str) -> String {
    eventually(what, WAIT, || async {
        Ok(http_get_from(address, path)
            .ok()
            .filter(|(status, body)| *status == 200 && body.contains(want))
            .map(|(_, body)| body))
    })
    .await
    .unwrap()
}

/// At least `count` ready pods of `selector` that run `container` (a service's own pods, not the
/// rollout's splitter pods).
async fn ready_pods(pods: &Api<Pod>, selector: &str, container: &str, count: usize) -> Vec<Pod> {
    eventually(&format!("{count} ready pods {selector}"), WAIT, || async {
        let list = pods.list(&ListParams::default().labels(selector)).await?;
        let ready: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|pod| pod.metadata.deletion_timestamp.is_none())
            .filter(|pod| container_names(pod).iter().any(|c| c == container))
            .filter(|pod| {
                pod.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|statuses| statuses.iter().all(|c| c.ready))
            })
            .collect();
        Ok((ready.len() >= count).then_some(ready))
    })
    .await
    .unwrap()
}

fn container_names(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| c.name.clone())
        .collect()
}

async fn rollout_phase(services: &Api<ReplicatedService>, want: &[RolloutPhase]) -> RolloutPhase {
    eventually(&format!("the rollout in phase {want:?}"), WAIT, || async {
        let rollout = services.get("web").await?.status.and_then(|s| s.rollout);
        Ok(rollout.map(|r| r.phase).filter(|phase| want.contains(phase)))
    })
    .await
    .unwrap()
}

#[tokio::test]
#[ignore = "not yet shown passing on the cluster: run with `cargo test -p outrigger-tests --test examples -- --ignored`, then drop this"]
async fn every_example_becomes_ready_and_serves_and_the_plugin_drives_a_rollout() {
    ensure_crds().unwrap();
    let system = TestNamespace::create("ex-system").unwrap();
    let app = TestNamespace::create("ex-app").unwrap();
    let release = Release {
        name: system.name.clone(),
    };
    let chart = repo_root().join("charts/outrigger");
    kubectl_ok(&[
        "label",
        "namespace",
        &app.name,
        &format!("outrigger.dev/test-scope={}", app.name),
    ])
    .unwrap();
    helm_ok(&[
        "install",
        &release.name,
        &chart.to_string_lossy(),
        "--namespace",
        &system.name,
        "--wait",
        "--timeout",
        "3m",
        "--set",
        "replicaCount=1",
        "--set",
        &format!("watchNamespace={}", app.name),
        "--set-string",
        &format!(
            "webhook.namespaceSelector.matchLabels.outrigger\\.dev/test-scope={}",
            app.name
        ),
    ])
    .unwrap();
    // Injection works once the operator has put its CA in the webhook configuration.
    let webhook = format!("{}-outrigger-injector", release.name);
    eventually("the webhook's caBundle", WAIT, || async {
        let ca = kubectl_ok(&[
            "get",
            "mutatingwebhookconfiguration",
            &webhook,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ])?;
        Ok((!ca.trim().is_empty()).then_some(()))
    })
    .await
    .unwrap();

    let examples = repo_root().join("manifests/examples");
    kubectl_ok(&["apply", "-n", &app.name, "-f", &examples.to_string_lossy()]).unwrap();

    let client = admin_client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &app.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &app.name);
    let rsvcs: Api<ReplicatedService> = Api::namespaced(client.clone(), &app.name);

    // The web service: three replicas, each with its injected request splitter, serving through
    // the Service.
    let web = ready_pods(&pods, "outrigger.dev/replicatedservice=web", "app", 3).await;
    for pod in &web {
        assert!(
            container_names(pod).contains(&"request-splitter".to_owned()),
            "web pods get their splitter: {:?}",
            container_names(pod)
        );
    }
    let web_address = service_address(&services, "web").await;
    serves("web through its Service", &web_address, "/", "version=v1").await;

    // The cache: three shards of real Redis, reached by the client through its ambassador.
    eventually("every shard ready", WAIT, || async {
        let cache = Api::<ShardedService>::namespaced(client.clone(), &app.name)
            .get("cache")
            .await?;
        Ok(cache
            .status
            .filter(|s| s.ready_shards == 3 && s.ready_replicas == 6)
            .map(drop))
    })
    .await
    .unwrap();
    let cache_client = ready_pods(&pods, "outrigger.dev/replicatedservice=cache-client", "app", 1).await;
    assert!(container_names(&cache_client[0]).contains(&"sharding-ambassador".to_owned()));
    let client_address = service_address(&services, "cache-client").await;
    serves(
        "SET through the ambassador",
        &client_address,
        "/redis/SET/user:%7B42%7D:name/ada",
        "+OK",
    )
    .await;
    serves(
        "GET through the ambassador",
        &client_address,
        "/redis/GET/user:%7B42%7D:name",
        "ada",
    )
    .await;

    // Config sync: the app starts with its config and follows an edit without a restart.
    let configured = service_address(&services, "configured").await;
    serves("the synced config", &configured, "/", "config=c1").await;
    kubectl_ok(&[
        "patch",
        "configmap",
        "app-config",
        "-n",
        &app.name,
        "--type",
        "merge",
        "-p",
        r#"{"data":{"app.json":"{\"version\": \"c2\"}"}}"#,
    ])
    .unwrap();
    serves("the edited config", &configured, "/", "config=c2").await;

    // The adapters: Redis' metrics from the metrics adapter, and the log adapter's records
    // (through `kubectl logs`).
    let redis = ready_pods(
        &pods,
        "outrigger.dev/replicatedservice=observed-redis",
        "redis",
        1,
    )
    .await;
    let names = container_names(&redis[0]);
    assert!(names.contains(&"metrics-adapter".to_owned()) && names.contains(&"health-adapter".to_owned()));
    let redis_ip = redis[0].status.as_ref().unwrap().pod_ip.clone().unwrap();
    serves(
        "redis_up from the metrics adapter",
        &format!("{redis_ip}:9905"),
        "/metrics",
        "redis_up 1",
    )
    .await;
    let logging = ready_pods(&pods, "outrigger.dev/replicatedservice=logging", "app", 1).await;
    let logging_pod = logging[0].metadata.name.clone().unwrap();
    eventually("structured records from the log adapter", WAIT, || async {
        let logs = kubectl_ok(&["logs", "-n", &app.name, &logging_pod, "-c", "log-adapter"])?;
        Ok(logs.contains("ReplicatedService/logging").then_some(()))
    })
    .await
    .unwrap();

    // Autoscaling: the policy reads the web service's splitters and reports it.
    eventually("the autoscaling policy's metrics", WAIT, || async {
        let policy = Api::<AutoscalingPolicy>::namespaced(client.clone(), &app.name)
            .get("web")
            .await?;
        Ok(policy
            .status
            .filter(|s| s.current_replicas >= 2 && !s.current_metrics.is_empty())
            .map(drop))
    })
    .await
    .unwrap();

    // The cluster serves what users expect: port-forward (socat on the node), exec, logs.
    let web_pod = web[0].metadata.name.clone().unwrap();
    let mut forward = kubectl()
        .args([
            "port-forward",
            "-n",
            &app.name,
            &format!("pod/{web_pod}"),
            ":8080",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(forward.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // "Forwarding from 127.0.0.1:PORT -> 8080"
    let local = line
        .split_whitespace()
        .nth(2)
        .unwrap_or_else(|| panic!("port-forward printed {line:?}"))
        .to_owned();
    let (status, _) = http_get_from(&local, "/healthz").unwrap();
    assert_eq!(status, 200, "through kubectl port-forward");
    forward.kill().unwrap();
    let _ = forward.wait();
    kubectl_ok(&[
        "exec",
        "-n",
        &app.name,
        &web_pod,
        "-c",
        "app",
        "--",
        "/outrigger-testapp",
        "get",
        "http://127.0.0.1:8080/healthz",
    ])
    .unwrap();

    // The plugin's read commands.
    let shown = plugin(&app.name, &["get", "rollout", "web"]);
    assert!(shown.contains("Strategy:     Canary (progressive)"), "{shown}");
    let shards = plugin(&app.name, &["shards", "cache"]);
    assert!(
        shards.contains("cache-shard-2") && shards.contains(&cache_client[0].metadata.name.clone().unwrap()),
        "{shards}"
    );
    assert!(
        !shards.contains("unreadable"),
        "the ambassador's metrics are read: {shards}"
    );
    let scaling = plugin(&app.name, &["scaling", "web"]);
    assert!(
        scaling.contains("Target:       ReplicatedService/web"),
        "{scaling}"
    );
    let example = plugin(&app.name, &["example", "web"]);
    assert!(example.contains("kind: RolloutStrategy"));

    // The controls, on a real rollout: pause and resume it, abort it; then promote the next one.
    let set_version = |version: &str| {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{
            "name": "app", "image": "outrigger/testapp:dev", "env": [{"name": "VERSION", "value": version}],
        }]}}}});
        let rsvcs = rsvcs.clone();
        async move {
            rsvcs
                .patch("web", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    set_version("v2").await;
    rollout_phase(&rsvcs, &[RolloutPhase::Progressing]).await;
    plugin(&app.name, &["pause", "web"]);
    rollout_phase(&rsvcs, &[RolloutPhase::Paused]).await;
    let shown = plugin(&app.name, &["get", "rollout", "web"]);
    assert!(shown.contains("Status:       Paused"), "{shown}");
    plugin(&app.name, &["resume", "web"]);
    rollout_phase(&rsvcs, &[RolloutPhase::Progressing]).await;
    plugin(&app.name, &["abort", "web"]);
    rollout_phase(&rsvcs, &[RolloutPhase::Aborted]).await;
    serves("stable after the abort", &web_address, "/", "version=v1").await;

    set_version("v3").await;
    rollout_phase(&rsvcs, &[RolloutPhase::Progressing]).await;
    plugin(&app.name, &["promote", "web"]);
    rollout_phase(&rsvcs, &[RolloutPhase::Promoted, RolloutPhase::Healthy]).await;
    serves("the promoted version", &web_address, "/", "version=v3").await;
    let shown = plugin(&app.name, &["get", "rollout", "web"]);
    assert!(
        shown.contains("Promote"),
        "the decision is in the history: {shown}"
    );
    drop(release);
}
