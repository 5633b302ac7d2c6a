#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! Every error reaches the user on the object, never only in the operator's log: a name too long
//! for the children it would get, a write the API server forbids, children whose pods a quota
//! forbids. And injected sidecars carry requests and limits, so they fit a namespace whose
//! ResourceQuota demands them.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, PostParams};
use outrigger_api::{ReplicatedService, ShardedService};
use outrigger_tests::{
    admin_client, dry_run, eventually, free_port, kubectl, kubectl_ok, kubectl_stdin, OperatorProcess,
    TestNamespace,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
const SCOPE_LABEL: &str = "outrigger.dev/test-scope";

fn service(name: &str, container: Value, sidecars: Value) -> ReplicatedService {
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "template": {"spec": {"containers": [container]}},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            "readiness": {"httpPath": "/healthz", "port": 8080, "periodSeconds": 1},
            "sidecars": sidecars,
        }
    }))
    .unwrap()
}

fn app(resources: Value) -> Value {
    json!({
        "name": "app", "image": "outrigger/testapp:dev", "imagePullPolicy": "Never",
        "ports": [{"containerPort": 8080}],
        "resources": resources,
    })
}

async fn create(namespace: &str, rsvc: &ReplicatedService) -> Api<ReplicatedService> {
    let api = Api::namespaced(admin_client().await.unwrap(), namespace);
    api.create(&PostParams::default(), rsvc).await.unwrap();
    api
}

/// The `Degraded=True` condition's reason and message, once the operator has written one.
async fn degraded(api: &Api<ReplicatedService>, name: &str) -> anyhow::Result<Option<(String, String)>> {
    let rsvc = api.get(name).await?;
    Ok(rsvc
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find_map(|c| (c.type_ == "Degraded" && c.status == "True").then_some((c.reason, c.message))))
}

/// The Warning Event about `name` with `reason`, once published.
async fn warning(namespace: &str, name: &str, reason: &str) -> anyhow::Result<Option<String>> {
    let events: Api<Event> = Api::namespaced(admin_client().await?, namespace);
    let list = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?;
    Ok(list.items.into_iter().find_map(|event| {
        (event.type_.as_deref() == Some("Warning") && event.reason.as_deref() == Some(reason))
            .then(|| event.message.unwrap_or_default())
    }))
}

fn quota(namespace: &str, name: &str, hard: Value) {
    let quota = json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hard": hard},
    });
    let output = kubectl_stdin(&["apply", "-f", "-"], &quota.to_string()).unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Requests and limits on every container and nothing more in the namespace than this.
fn demanding_quota(namespace: &str) {
    quota(
        namespace,
        "demands-requests-and-limits",
        json!({
            "requests.cpu": "4", "requests.memory": "4Gi",
            "limits.cpu": "8", "limits.memory": "8Gi",
        }),
    );
}

#[tokio::test]
async fn a_name_too_long_for_its_children_is_refused_with_a_condition_naming_the_field() {
    let ns = TestNamespace::create("errors-name").unwrap();
    let _operator = OperatorProcess::for_namespace(&ns.name).unwrap();
    // A valid object name (up to 253 characters), but its Service could never be created.
    let name = format!("web-{}", "x".repeat(66));
    let api = create(&ns.name, &service(&name, app(json!({})), json!([]))).await;

    let (reason, message) = eventually("the service degraded", WAIT, || degraded(&api, &name))
        .await
        .unwrap();
    assert_eq!(reason, "InvalidSpec");
    assert!(message.contains("metadata.name"), "{message}");
    assert!(message.contains("is 70 characters, 63 at most"), "{message}");
    let ready = api.get(&name).await.unwrap().status.unwrap().conditions;
    assert!(
        ready.iter().any(|c| c.type_ == "Ready" && c.status == "False"),
        "{ready:?}"
    );
    let event = eventually("a warning Event", WAIT, || {
        warning(&ns.name, &name, "InvalidSpec")
    })
    .await
    .unwrap();
    assert!(event.contains("metadata.name"), "{event}");
}

#[tokio::test]
async fn a_write_the_api_server_forbids_shows_as_degraded_with_its_message() {
    let ns = TestNamespace::create("errors-forbidden").unwrap();
    quota(&ns.name, "no-services", json!({"services": "0"}));
    let _operator = OperatorProcess::for_namespace(&ns.name).unwrap();
    let api = create(&ns.name, &service("web", app(json!({})), json!([]))).await;

    let (reason, message) = eventually("the service degraded", WAIT, || degraded(&api, "web"))
        .await
        .unwrap();
    assert_eq!(reason, "Forbidden");
    assert!(message.contains("exceeded quota: no-services"), "{message}");
    let event = eventually("a warning Event", WAIT, || warning(&ns.name, "web", "Forbidden"))
        .await
        .unwrap();
    assert!(event.contains("exceeded quota"), "{event}");

    // The quota raised, the operator's retry gets through without any change of the service.
    quota(&ns.name, "no-services", json!({"services": "5"}));
    eventually("the degradation cleared", WAIT, || async {
        Ok(degraded(&api, "web").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn pods_a_quota_forbids_make_the_service_degraded_with_the_replica_sets_message() {
    let ns = TestNamespace::create("errors-quota").unwrap();
    demanding_quota(&ns.name);
    let _operator = OperatorProcess::for_namespace(&ns.name).unwrap();
    // The app container has neither requests nor limits: every pod is forbidden.
    let api = create(&ns.name, &service("web", app(json!({})), json!([]))).await;

    let (reason, message) = eventually("the service degraded", WAIT, || degraded(&api, "web"))
        .await
        .unwrap();
    assert_eq!(reason, "ReplicaFailure");
    assert!(message.starts_with("Deployment web: FailedCreate: "), "{message}");
    assert!(message.contains("must specify"), "{message}");
    let event = eventually("a warning Event", WAIT, || {
        warning(&ns.name, "web", "ReplicaFailure")
    })
    .await
    .unwrap();
    assert!(event.contains("forbidden"), "{event}");
}

#[tokio::test]
async fn a_statefulset_that_cannot_create_pods_makes_the_sharded_service_degraded_with_its_message() {
    let ns = TestNamespace::create("errors-shards").unwrap();
    demanding_quota(&ns.name);
    let _operator = OperatorProcess::for_namespace(&ns.name).unwrap();
    let shsvc: ShardedService = serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "ShardedService", "metadata": {"name": "cache"},
        "spec": {
            "shards": 1, "replicasPerShard": 1, "protocol": "redis", "port": 6379,
            "template": {"spec": {"containers": [{"name": "store", "image": "outrigger/testapp:dev"}]}},
        }
    }))
    .unwrap();
    let api: Api<ShardedService> = Api::namespaced(admin_client().await.unwrap(), &ns.name);
    api.create(&PostParams::default(), &shsvc).await.unwrap();

    let (reason, message) = eventually("the sharded service degraded", WAIT, || async {
        let status = api.get("cache").await?.status.unwrap_or_default();
        Ok(status
            .conditions
            .into_iter()
            .find_map(|c| (c.type_ == "Degraded" && c.status == "True").then_some((c.reason, c.message))))
    })
    .await
    .unwrap();
    assert_eq!(reason, "FailedCreate");
    assert!(
        message.starts_with("StatefulSet cache-shard-0: FailedCreate: "),
        "{message}"
    );
    assert!(message.contains("forbidden"), "{message}");
}

/// An operator with its webhook, scoped to one namespace by a label; removes its webhook
/// configuration and Secret when dropped.
struct WebhookOperator {
    _process: OperatorProcess,
    config_name: String,
    secret_name: String,
}

impl WebhookOperator {
    fn start(ns: &TestNamespace) -> WebhookOperator {
        let port = free_port().unwrap();
        let config_name = format!("{}-injector", ns.name);
        let secret_name = format!("{}-tls", ns.name);
        let scope = format!("{SCOPE_LABEL}={}", ns.name);
        kubectl_ok(&["label", "namespace", &ns.name, &scope, "--overwrite"]).unwrap();
        let args: Vec<String> = [
            "--webhook-addr",
            &format!("127.0.0.1:{port}"),
            "--webhook-url",
            &format!("https://127.0.0.1:{port}"),
            "--webhook-config-name",
            &config_name,
            "--webhook-secret",
            &secret_name,
            "--webhook-namespace-label",
            &scope,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let process = OperatorProcess::start_with(
            &ns.name,
            &format!("{}-op", ns.name),
            &format!("{}-leader", ns.name),
            15,
            &args,
        )
        .unwrap();
        WebhookOperator {
            _process: process,
            config_name,
            secret_name,
        }
    }
}

impl Drop for WebhookOperator {
    fn drop(&mut self) {
        let _ = kubectl()
            .args([
                "delete",
                "mutatingwebhookconfiguration",
                &self.config_name,
                "--ignore-not-found",
            ])
            .output();
        let _ = kubectl()
            .args([
                "delete",
                "secret",
                "-n",
                "outrigger-system",
                &self.secret_name,
                "--ignore-not-found",
            ])
            .output();
    }
}

#[tokio::test]
async fn injected_sidecars_fit_a_quota_that_demands_requests_and_limits() {
    let ns = TestNamespace::create("errors-sidecar").unwrap();
    demanding_quota(&ns.name);
    let _operator = WebhookOperator::start(&ns);
    let client = admin_client().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    // The API server calls the webhook only once it has the configuration.
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe", "annotations": {"outrigger.dev/inject": "request-splitter"}},
        "spec": {"containers": [{"name": "app", "image": "outrigger/testapp:dev",
            "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}]},
    }))
    .unwrap();
    kubectl_ok(&["label", "namespace", &ns.name, "outrigger.dev/injection=enabled"]).unwrap();
    eventually("the webhook injecting", WAIT, || async {
        let pod = pods.create(&dry_run(), &probe).await?;
        Ok((pod.spec.unwrap_or_default().containers.len() == 2).then_some(()))
    })
    .await
    .unwrap();

    // The app sets its own requests and limits, as the quota demands; the splitter gets the defaults.
    let resources =
        json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "64Mi"}});
    let sidecars = json!([{"name": "request-splitter", "settings": {"listenPort": "8000"}}]);
    let api = create(&ns.name, &service("web", app(resources), sidecars)).await;

    let pod = eventually("a ready pod with its splitter", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("outrigger.dev/replicatedservice=web"))
            .await?;
        Ok(list.items.into_iter().find(|pod| {
            pod.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }))
    })
    .await
    .unwrap();
    let splitter = &pod.spec.unwrap().containers[0];
    assert_eq!(splitter.name, "request-splitter");
    assert_eq!(
        serde_json::to_value(&splitter.resources).unwrap(),
        json!({"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}})
    );
    eventually("the service ready and not degraded", WAIT, || async {
        let status = api.get("web").await?.status.unwrap_or_default();
        let is = |type_: &str, value: &str| {
            status
                .conditions
                .iter()
                .any(|c| c.type_ == type_ && c.status == value)
        };
        Ok((is("Ready", "True") && is("Degraded", "False")).then_some(()))
    })
    .await
    .unwrap();
}
