#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! The config sync sidecar on the local cluster, injected by the operator's webhook into the pods
//! of a ReplicatedService: edits reach every pod's app (reloaded by HTTP, or by SIGHUP through the
//! shared process namespace), an invalid edit is refused with the file and position in the
//! `ConfigSynced` condition and an Event, an unhealthy config is rolled back, and bad input (a
//! deleted ConfigMap, a value near the 1 MiB limit, a removed key, a Secret the sidecar may not
//! read) never loses the last good files or restarts anything.
//!
//! Images: `OUTRIGGER_IMAGE_PROFILE=image-test hack/images.sh config-sync testapp`; other tags
//! through `OUTRIGGER_CONFIG_SYNC_IMAGE` and `OUTRIGGER_TESTAPP_IMAGE`.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use k8s_openapi::api::{
    core::v1::{ConfigMap, Pod, Secret, Service},
    rbac::v1::Role,
};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use outrigger_api::{
    rollout::{RolloutPhase, RolloutStatus},
    ReplicatedService, RolloutStrategy,
};
use outrigger_tests::{
    admin_client, eventually, http_get_from, image, is_ready, kubectl_ok, TestNamespace, WebhookOperator,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

fn sidecar_image() -> String {
    image("OUTRIGGER_CONFIG_SYNC_IMAGE", "outrigger/config-sync:dev")
}

fn testapp_image() -> String {
    image("OUTRIGGER_TESTAPP_IMAGE", "outrigger/testapp:dev")
}

/// The operator, with its webhook injecting the config sync image under test.
fn operator(ns: &TestNamespace) -> WebhookOperator {
    let sidecar = format!("config-sync={}", sidecar_image());
    WebhookOperator::start(ns, false, &["--sidecar-image", &sidecar]).unwrap()
}

fn app_json(version: &str, extra: &str) -> String {
    format!("{{\"version\": \"{version}\"{extra}}}")
}

async fn put_config(configmaps: &Api<ConfigMap>, data: Value) {
    let configmap: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app-config"}, "data": data,
    }))
    .unwrap();
    configmaps
        .patch(
            "app-config",
            &PatchParams::apply("config-sync-test").force(),
            &Patch::Apply(&configmap),
        )
        .await
        .unwrap();
}

/// The settings of [`service`]'s sidecar, with `extra` added.
fn settings(extra: &Value) -> Value {
    let mut settings = json!({
        "configMaps": "app-config",
        "mountPath": "/etc/app",
        "healthUrl": "http://127.0.0.1:8080/healthz",
        "healthWindow": "8s",
        "healthInterval": "1s",
    });
    for (key, value) in extra.as_object().unwrap() {
        settings[key] = value.clone();
    }
    settings
}

/// A ReplicatedService of two test apps reading `/etc/app/app.json`, with the config sync sidecar.
fn service(name: &str, reload: Value) -> ReplicatedService {
    let settings = settings(&reload);
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService", "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "template": {"spec": {"containers": [{
                "name": "app", "image": testapp_image(), "imagePullPolicy": "Never",
                "env": [{"name": "CONFIG_FILE", "value": "/etc/app/app.json"}],
            }]}},
            "sidecars": [{"name": "config-sync", "image": sidecar_image(), "settings": settings}],
        }
    }))
    .unwrap()
}

async fn ready_pods(pods: &Api<Pod>, service: &str) -> Vec<String> {
    eventually("2 ready pods", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels(&format!("outrigger.dev/replicatedservice={service}")))
            .await?;
        let ready: Vec<String> = list
            .items
            .iter()
            .filter(|pod| is_ready(pod) && pod.metadata.deletion_timestamp.is_none())
            .filter_map(|pod| pod.metadata.name.clone())
            .collect();
        Ok((ready.len() == 2).then_some(ready))
    })
    .await
    .unwrap()
}

/// Runs the test app's binary with `args` in the app container of `pod`.
fn in_app(namespace: &str, pod: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut command = vec![
        "exec",
        "-n",
        namespace,
        pod,
        "-c",
        "app",
        "--",
        "/outrigger-testapp",
    ];
    command.extend_from_slice(args);
    kubectl_ok(&command)
}

/// What the app in `pod` says about its config (`config=c2 reloads=1`).
fn app_config(namespace: &str, pod: &str) -> String {
    in_app(namespace, pod, &["get", "http://127.0.0.1:8080/config"]).unwrap_or_default()
}

/// The synced files the app sees, `name size` a line.
fn app_files(namespace: &str, pod: &str) -> String {
    in_app(namespace, pod, &["files", "/etc/app"]).unwrap()
}

async fn every_app_says(namespace: &str, pods: &[String], expected: &str) {
    eventually(&format!("every app on {expected}"), WAIT, || async {
        Ok(pods
            .iter()
            .all(|pod| app_config(namespace, pod).contains(expected))
            .then_some(()))
    })
    .await
    .unwrap();
}

async fn condition(services: &Api<ReplicatedService>, name: &str) -> Option<(String, String, String)> {
    let service = services.get(name).await.ok()?;
    let condition = service
        .status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == "ConfigSynced")?;
    Some((condition.status, condition.reason, condition.message))
}

async fn wait_for_condition(
    services: &Api<ReplicatedService>,
    name: &str,
    status: &str,
    reason: &str,
) -> String {
    eventually(&format!("ConfigSynced={status} ({reason})"), WAIT, || async {
        Ok(condition(services, name)
            .await
            .filter(|(s, r, _)| s == status && r == reason)
            .map(|(_, _, message)| message))
    })
    .await
    .unwrap()
}

fn restarts(namespace: &str, pod: &str) -> String {
    kubectl_ok(&[
        "get",
        "pod",
        "-n",
        namespace,
        pod,
        "-o",
        "jsonpath={.status.containerStatuses[*].restartCount}",
    ])
    .unwrap()
}

#[tokio::test]
async fn edits_reach_every_app_by_http_invalid_ones_are_refused_and_unhealthy_ones_rolled_back() {
    let ns = TestNamespace::create("cfgsync").unwrap();
    let _operator = operator(&ns);
    let client = admin_client().await.unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    put_config(&configmaps, json!({"app.json": app_json("c1", "")})).await;
    services
        .create(
            &PostParams::default(),
            &service("web", json!({"reloadUrl": "http://127.0.0.1:8080/-/reload"})),
        )
        .await
        .unwrap();
    let running = ready_pods(&pods, "web").await;
    every_app_says(&ns.name, &running, "config=c1 reloads=0").await;
    let message = wait_for_condition(&services, "web", "True", "Synced").await;
    assert!(message.starts_with("2 of 2 pods on version "), "{message}");

    // An edit: written, and the app reloaded by HTTP.
    put_config(&configmaps, json!({"app.json": app_json("c2", "")})).await;
    every_app_says(&ns.name, &running, "config=c2 reloads=1").await;

    // An invalid edit: refused, the app stays on c2; the condition and an Event name the file.
    put_config(&configmaps, json!({"app.json": "{\"version\": \"c3\",\n"})).await;
    let message = wait_for_condition(&services, "web", "False", "InvalidConfig").await;
    assert!(message.contains("app.json line"), "{message}");
    let events = kubectl_ok(&["get", "events", "-n", &ns.name, "-o", "json"]).unwrap();
    assert!(
        events.contains("InvalidConfig") && events.contains("app.json line"),
        "{events}"
    );
    for pod in &running {
        assert!(app_config(&ns.name, pod).contains("config=c2 reloads=1"));
    }

    // Fixing the ConfigMap recovers, without a restart.
    put_config(&configmaps, json!({"app.json": app_json("c4", "")})).await;
    every_app_says(&ns.name, &running, "config=c4 reloads=2").await;
    wait_for_condition(&services, "web", "True", "Synced").await;

    // A config that makes the app unhealthy is rolled back within the health window.
    put_config(
        &configmaps,
        json!({"app.json": app_json("c5", ", \"healthy\": false")}),
    )
    .await;
    let message = wait_for_condition(&services, "web", "False", "RolledBack").await;
    assert!(message.contains("unhealthy"), "{message}");
    every_app_says(&ns.name, &running, "config=c4").await;

    // Bad input never takes the sidecar down nor loses the last good files: a deleted ConfigMap…
    configmaps
        .delete("app-config", &DeleteParams::default())
        .await
        .unwrap();
    let message = wait_for_condition(&services, "web", "False", "InvalidConfig").await;
    assert!(message.contains("does not exist"), "{message}");
    for pod in &running {
        assert!(app_config(&ns.name, pod).contains("config=c4"));
    }
    // …a value near the 1 MiB limit (keys and values together may hold 1,048,576 bytes)…
    let big = "x".repeat(1_048_000);
    put_config(
        &configmaps,
        json!({"app.json": app_json("c6", ""), "big.txt": big}),
    )
    .await;
    every_app_says(&ns.name, &running, "config=c6").await;
    for pod in &running {
        assert!(
            app_files(&ns.name, pod).contains("big.txt 1048000"),
            "the whole value is written"
        );
    }
    // …and a key removed (the file goes; the rest stays).
    put_config(&configmaps, json!({"app.json": app_json("c7", "")})).await;
    every_app_says(&ns.name, &running, "config=c7").await;
    for pod in &running {
        let files = app_files(&ns.name, pod);
        assert!(!files.contains("big.txt"), "{files}");
        assert!(files.contains("app.json"), "{files}");
    }
    for pod in &running {
        assert_eq!(restarts(&ns.name, pod), "0 0", "no container restarted in {pod}");
    }
}

#[tokio::test]
async fn a_signal_reload_reaches_the_app_through_the_shared_process_namespace() {
    let ns = TestNamespace::create("cfgsig").unwrap();
    let _operator = operator(&ns);
    let client = admin_client().await.unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    put_config(&configmaps, json!({"app.json": app_json("s1", "")})).await;
    services
        .create(
            &PostParams::default(),
            &service(
                "sig",
                json!({"reloadProcess": "outrigger-testapp", "reloadSignal": "HUP"}),
            ),
        )
        .await
        .unwrap();
    let running = ready_pods(&pods, "sig").await;
    let pod = pods.get(&running[0]).await.unwrap();
    assert_eq!(pod.spec.unwrap().share_process_namespace, Some(true));
    every_app_says(&ns.name, &running, "config=s1 reloads=0").await;
    put_config(&configmaps, json!({"app.json": app_json("s2", "")})).await;
    every_app_says(&ns.name, &running, "config=s2 reloads=1").await;
    wait_for_condition(&services, "sig", "True", "Synced").await;
}

async fn put_secret(secrets: &Api<Secret>, token: &str) {
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-secret"},
        "stringData": {"token": token},
    }))
    .unwrap();
    secrets
        .patch(
            "app-secret",
            &PatchParams::apply("config-sync-test").force(),
            &Patch::Apply(&secret),
        )
        .await
        .unwrap();
}

/// Replaces the sidecar's settings in the service's spec.
async fn set_settings(services: &Api<ReplicatedService>, name: &str, settings: Value) {
    let patch = json!({"spec": {"sidecars": [
        {"name": "config-sync", "image": sidecar_image(), "settings": settings},
    ]}});
    services
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
}

async fn role_grants_secret(roles: &Api<Role>, name: &str, secret: &str) -> bool {
    roles.get(name).await.ok().is_some_and(|role| {
        role.rules.unwrap_or_default().iter().any(|rule| {
            rule.resources.as_deref() == Some(&["secrets".to_owned()][..])
                && rule
                    .resource_names
                    .as_deref()
                    .is_some_and(|names| names.iter().any(|n| n == secret))
        })
    })
}

/// Restart counts of the pod's containers, by name.
fn restarts_by_container(namespace: &str, pod: &str) -> String {
    kubectl_ok(&[
        "get",
        "pod",
        "-n",
        namespace,
        pod,
        "-o",
        r#"jsonpath={range .status.containerStatuses[*]}{.name}={.restartCount} {end}"#,
    ])
    .unwrap()
}

// The operator's Role lets the sidecars read exactly the Secrets the service's settings name, and a
// pod keeps the settings it was created with. So taking the Secret out of the settings is how this
// test takes the pods' access away (as a stale or hand-edited Role would), and putting it back is
// granting it. A watch opened while access was granted goes on; the sidecar meets the refusal when
// it reads again, here after a restart of its container (its files stay in the pod's volume).
#[tokio::test]
async fn a_secret_the_sidecar_may_not_read_keeps_the_last_good_files_and_granting_access_recovers() {
    let ns = TestNamespace::create("cfgdeny").unwrap();
    let _operator = operator(&ns);
    let client = admin_client().await.unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    put_config(&configmaps, json!({"app.json": app_json("d1", "")})).await;
    put_secret(&secrets, "t1").await;
    // A signal reload shares the pod's process namespace, through which the test stops the sidecar.
    let with_secret = json!({"reloadProcess": "outrigger-testapp", "secrets": "app-secret"});
    services
        .create(&PostParams::default(), &service("vault", with_secret.clone()))
        .await
        .unwrap();
    let running = ready_pods(&pods, "vault").await;
    every_app_says(&ns.name, &running, "config=d1").await;
    wait_for_condition(&services, "vault", "True", "Synced").await;
    let files_before = app_files(&ns.name, &running[0]);
    assert!(files_before.contains("token 2"), "{files_before}");

    // Access taken away, and the sidecar of one pod restarted: it reads again and is refused.
    set_settings(
        &services,
        "vault",
        settings(&json!({"reloadProcess": "outrigger-testapp"})),
    )
    .await;
    eventually("the Role without the Secret", WAIT, || async {
        Ok((!role_grants_secret(&roles, "vault-config-sync", "app-secret").await).then_some(()))
    })
    .await
    .unwrap();
    let pod = &running[0];
    in_app(&ns.name, pod, &["stop", "outrigger-config-sync"]).unwrap();
    let message = wait_for_condition(&services, "vault", "False", "InvalidConfig").await;
    assert!(
        message.contains(&format!("pod {pod}"))
            && message.contains("Secret/app-secret")
            && message.contains("403 Forbidden"),
        "{message}"
    );
    let events = kubectl_ok(&["get", "events", "-n", &ns.name, "-o", "json"]).unwrap();
    assert!(
        events.contains("Secret/app-secret") && events.contains("403 Forbidden"),
        "{events}"
    );
    // The restarted sidecar serves the files it left in the volume, and the pod stays ready.
    assert_eq!(ready_pods(&pods, "vault").await.len(), 2);
    assert_eq!(app_files(&ns.name, pod), files_before);
    assert!(app_config(&ns.name, pod).contains("config=d1"));
    // The kubelet reports the restart with its next status update.
    let restarted = eventually("the sidecar's one restart in the pod's status", WAIT, || async {
        let restarted = restarts_by_container(&ns.name, pod);
        Ok((restarted.contains("config-sync=1") && restarted.contains("app=0")).then_some(restarted))
    })
    .await
    .unwrap();

    // Access granted again: the sidecar's next read succeeds, with no further restart.
    set_settings(&services, "vault", settings(&with_secret)).await;
    let message = wait_for_condition(&services, "vault", "True", "Synced").await;
    assert!(message.starts_with("2 of 2 pods"), "{message}");
    put_secret(&secrets, "t22").await;
    eventually("the new Secret in every pod", WAIT, || async {
        Ok(running
            .iter()
            .all(|pod| app_files(&ns.name, pod).contains("token 3"))
            .then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        restarts_by_container(&ns.name, pod),
        restarted,
        "no restart after access was granted"
    );
}

/// A ReplicatedService of three test apps behind the request splitter, rolling out through the
/// strategy `canary`, with the config sync sidecar reloading the app by HTTP.
fn canary_service() -> ReplicatedService {
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService", "metadata": {"name": "web"},
        "spec": {
            "replicas": 3,
            "template": {"spec": {"containers": [{
                "name": "app", "image": testapp_image(), "imagePullPolicy": "Never",
                "ports": [{"containerPort": 8080}],
                "env": [{"name": "CONFIG_FILE", "value": "/etc/app/app.json"}],
            }]}},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            "readiness": {"httpPath": "/healthz", "port": 8080, "periodSeconds": 1},
            "rolloutStrategyRef": {"name": "canary"},
            "sidecars": [{"name": "config-sync", "image": sidecar_image(), "settings": {
                "configMaps": "app-config",
                "mountPath": "/etc/app",
                "reloadUrl": "http://127.0.0.1:8080/-/reload",
            }}],
        }
    }))
    .unwrap()
}

/// Clients sending requests through the service's Service from two threads, recording the config
/// version of each answer (`c2`), or `error <status>`.
struct ConfigLoad {
    answers: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl ConfigLoad {
    fn start(address: &str) -> ConfigLoad {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let (answers, stop, address) = (answers.clone(), stop.clone(), address.to_owned());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = match http_get_from(&address, "/work") {
                            Ok((200, body)) => body
                                .split_whitespace()
                                .find_map(|word| word.strip_prefix("config="))
                                .unwrap_or("none")
                                .to_owned(),
                            // The splitter's reason is the body of its own error answers.
                            Ok((status, body)) => format!("error {status} {}", body.trim()),
                            Err(error) => format!("error {error}"),
                        };
                        answers.lock().unwrap().push(answer);
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            })
            .collect();
        ConfigLoad {
            answers,
            stop,
            threads,
        }
    }

    /// The answers so far, and forgets them.
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.answers.lock().unwrap())
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }
}

fn count(answers: &[String], what: &str) -> usize {
    answers.iter().filter(|answer| *answer == what).count()
}

async fn rollout_of(services: &Api<ReplicatedService>) -> Option<RolloutStatus> {
    services.get("web").await.ok()?.status?.rollout
}

async fn wait_for_rollout(
    services: &Api<ReplicatedService>,
    what: &str,
    done: impl Fn(&RolloutStatus) -> bool,
) -> RolloutStatus {
    eventually(what, WAIT, || async {
        Ok(rollout_of(services).await.filter(|status| done(status)))
    })
    .await
    .unwrap_or_else(|error| panic!("{error}; last status: {:?}", last_rollout(services)))
}

fn last_rollout(services: &Api<ReplicatedService>) -> String {
    let namespace = services.namespace().unwrap_or_default().to_owned();
    kubectl_ok(&[
        "get",
        "rsvc",
        "web",
        "-n",
        &namespace,
        "-o",
        "jsonpath={.status.rollout}",
    ])
    .unwrap_or_default()
}

/// The config version each pod's app runs, by pod.
fn configs_by_pod(namespace: &str, pods: &[String]) -> Vec<(String, String)> {
    pods.iter()
        .map(|pod| {
            let config = app_config(namespace, pod);
            let version = config
                .split_whitespace()
                .find_map(|word| word.strip_prefix("config="))
                .unwrap_or("none")
                .to_owned();
            (pod.clone(), version)
        })
        .collect()
}

#[tokio::test]
async fn a_config_change_is_rolled_out_like_code_to_a_canary_share_then_promoted_or_rolled_back() {
    let ns = TestNamespace::create("cfgcanary").unwrap();
    let _operator = operator(&ns);
    let client = admin_client().await.unwrap();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let strategies: Api<RolloutStrategy> = Api::namespaced(client.clone(), &ns.name);
    let kube_services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let strategy: RolloutStrategy = serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "RolloutStrategy", "metadata": {"name": "canary"},
        "spec": {"strategy": {"canary": {
            "steps": [
                {"setWeight": 33},
                {"analysis": {"interval": "5s", "count": 2, "minRequestCount": 10,
                    "metrics": [{"name": "success-rate", "type": "successRate", "min": 95}]}},
                {"pause": {}},
            ],
            "scaleDownDelaySeconds": 3,
        }}},
    }))
    .unwrap();
    strategies
        .create(&PostParams::default(), &strategy)
        .await
        .unwrap();
    put_config(&configmaps, json!({"app.json": app_json("c1", "")})).await;
    services
        .create(&PostParams::default(), &canary_service())
        .await
        .unwrap();

    let running = eventually("3 ready pods", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("outrigger.dev/replicatedservice=web"))
            .await?;
        let ready: Vec<String> = list
            .items
            .iter()
            .filter(|pod| is_ready(pod) && pod.metadata.deletion_timestamp.is_none())
            .filter_map(|pod| pod.metadata.name.clone())
            .collect();
        Ok((ready.len() == 3).then_some(ready))
    })
    .await
    .unwrap();
    every_app_says(&ns.name, &running, "config=c1 reloads=0").await;
    let address = eventually("the service behind its splitter", WAIT, || async {
        let healthy = rollout_of(&services)
            .await
            .is_some_and(|status| status.phase == RolloutPhase::Healthy);
        let Some(address) = outrigger_tests::splitter_fronted_address(&kube_services, "web").await? else {
            return Ok(None);
        };
        let answers = healthy && http_get_from(&address, "/work").is_ok_and(|(status, _)| status == 200);
        Ok(answers.then_some(address))
    })
    .await
    .unwrap();
    let load = ConfigLoad::start(&address);

    // An edit: one pod in three (weight 33) applies it, judged by the analysis, then held for a
    // person; the others keep c1.
    put_config(&configmaps, json!({"app.json": app_json("c2", "")})).await;
    let held = wait_for_rollout(&services, "the config canary held at the pause", |status| {
        status.current_step == Some(2) && status.phase == RolloutPhase::Paused
    })
    .await;
    assert!(
        held.canary_revision
            .as_deref()
            .is_some_and(|r| r.starts_with("config-")),
        "{held:?}"
    );
    assert_eq!(held.canary_weight, 33);
    let configs = configs_by_pod(&ns.name, &running);
    let canaries: Vec<&String> = configs
        .iter()
        .filter(|(_, config)| config == "c2")
        .map(|(pod, _)| pod)
        .collect();
    assert_eq!(canaries.len(), 1, "one canary pod: {configs:?}");
    assert_eq!(
        configs.iter().filter(|(_, config)| config == "c1").count(),
        2,
        "the others stay: {configs:?}"
    );
    let track = kubectl_ok(&[
        "get",
        "pod",
        "-n",
        &ns.name,
        canaries[0],
        "-o",
        "jsonpath={.metadata.labels.outrigger\\.dev/config-track}",
    ])
    .unwrap();
    assert_eq!(track, "canary");
    let answers = load.take();
    assert!(
        count(&answers, "c1") > 0 && count(&answers, "c2") > 0,
        "clients see both versions while the canary runs"
    );
    assert!(
        answers.iter().all(|answer| !answer.starts_with("error")),
        "{:?}",
        answers
            .iter()
            .filter(|a| a.starts_with("error"))
            .collect::<Vec<_>>()
    );

    // Promotion moves every pod, without a restart.
    kubectl_ok(&[
        "annotate",
        "rsvc",
        "web",
        "-n",
        &ns.name,
        "outrigger.dev/rollout=resume",
        "--overwrite",
    ])
    .unwrap();
    let promoted = wait_for_rollout(&services, "the config promoted", |status| {
        status.phase == RolloutPhase::Promoted && status.canary_revision.is_none()
    })
    .await;
    let decisions: Vec<&str> = promoted.history.iter().map(|h| h.decision.as_str()).collect();
    assert!(
        decisions.contains(&"AnalysisPassed") && decisions.contains(&"Promote"),
        "{decisions:?}"
    );
    every_app_says(&ns.name, &running, "config=c2 reloads=1").await;
    load.take();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = load.take();
    assert_eq!(count(&answers, "c2"), answers.len(), "only c2 after promotion");

    // An edit that makes the app fail half its requests: the analysis fails, and the canary pod
    // swaps the stable files back in place.
    put_config(
        &configmaps,
        json!({"app.json": app_json("c3", ", \"errorPercent\": 50")}),
    )
    .await;
    let aborted = wait_for_rollout(&services, "the bad config rolled back", |status| {
        status.phase == RolloutPhase::Aborted
    })
    .await;
    let rollback = aborted
        .history
        .iter()
        .rev()
        .find(|h| h.decision == "Rollback")
        .unwrap_or_else(|| panic!("no Rollback in {:?}", aborted.history));
    assert!(rollback.reason.contains("success-rate"), "{}", rollback.reason);
    every_app_says(&ns.name, &running, "config=c2").await;
    let reloads: Vec<String> = running.iter().map(|pod| app_config(&ns.name, pod)).collect();
    assert_eq!(
        reloads.iter().filter(|r| r.contains("reloads=3")).count(),
        1,
        "the canary applied c3 and then c2 again: {reloads:?}"
    );
    load.finish();
    for pod in &running {
        assert_eq!(restarts(&ns.name, pod), "0 0", "no container restarted in {pod}");
    }
}
