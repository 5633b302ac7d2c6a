#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! Rollouts on the local cluster with real pods: the test app (with a configurable error rate)
//! behind the request splitter image, driven by the operator, while a client sends traffic
//! through the service's Service and records every answer.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use outrigger_api::{
    rollout::{RolloutPhase, RolloutStatus},
    ReplicatedService, RolloutStrategy,
};
use outrigger_tests::{admin_client, eventually, kubectl_ok, OperatorProcess, TestNamespace};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(180);

fn web(strategy: &str) -> ReplicatedService {
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "template": template("v1", 0),
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            "readiness": {"httpPath": "/healthz", "port": 8080, "periodSeconds": 1},
            "rolloutStrategyRef": {"name": strategy},
        }
    }))
    .unwrap()
}

fn template(version: &str, error_percent: u32) -> Value {
    json!({"spec": {"containers": [{
        "name": "app", "image": "outrigger/testapp:dev", "imagePullPolicy": "Never",
        "ports": [{"containerPort": 8080}],
        "env": [
            {"name": "VERSION", "value": version},
            {"name": "ERROR_PERCENT", "value": error_percent.to_string()},
        ],
    }]}})
}

fn strategy(name: &str, canary: Value) -> RolloutStrategy {
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1",
        "kind": "RolloutStrategy",
        "metadata": {"name": name},
        "spec": {"strategy": {"canary": canary}},
    }))
    .unwrap()
}

/// One answer the client got.
#[derive(Debug, Clone)]
struct Answer {
    at: SystemTime,
    status: u16,
    version: Option<String>,
    /// The response head of a failure, for the test's message.
    failure: Option<String>,
}

/// A client sending requests through the service's Service, one at a time per thread, recording
/// every answer (a connection failure is status 0).
struct Load {
    answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(address: String, threads: usize, pause: Duration) -> Load {
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let (answers, stop, address) = (answers.clone(), stop.clone(), address.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let answer = request(&address);
                        answers.lock().unwrap().push(answer);
                        std::thread::sleep(pause);
                    }
                })
            })
            .collect();
        Load {
            answers,
            stop,
            threads,
        }
    }

    fn answers(&self) -> Vec<Answer> {
        self.answers.lock().unwrap().clone()
    }

    fn finish(mut self) -> Vec<Answer> {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
        self.answers()
    }
}

fn request(address: &str) -> Answer {
    let at = SystemTime::now();
    let attempt = || -> std::io::Result<(u16, Option<String>, Option<String>)> {
        let mut stream = TcpStream::connect_timeout(
            &address.parse().map_err(std::io::Error::other)?,
            Duration::from_secs(5),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET /work HTTP/1.0\r\nHost: web\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let version = response
            .lines()
            .find_map(|line| line.strip_prefix("version="))
            .map(str::to_owned);
        let failure =
            (status != 200).then(|| response.split("\r\n\r\n").next().unwrap_or_default().to_owned());
        Ok((status, version, failure))
    };
    let (status, version, failure) = attempt().unwrap_or_else(|error| (0, None, Some(error.to_string())));
    Answer {
        at,
        status,
        version,
        failure,
    }
}

/// Failed answers by second (UTC time of day) and what they were, for a test's message.
fn error_summary(answers: &[Answer]) -> String {
    let mut by_second = std::collections::BTreeMap::<u64, (usize, String)>::new();
    for answer in errors(answers) {
        let second = answer
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let entry = by_second
            .entry(second)
            .or_insert((0, answer.failure.clone().unwrap_or_default()));
        entry.0 += 1;
    }
    let lines: Vec<String> = by_second
        .into_iter()
        .map(|(second, (count, failure))| {
            let (h, m, s) = (second / 3600 % 24, second / 60 % 60, second % 60);
            format!(
                "{h:02}:{m:02}:{s:02} {count} × {}",
                failure.replace("\r\n", " | ")
            )
        })
        .collect();
    format!(
        "{} of {} requests failed:\n{}",
        errors(answers).len(),
        answers.len(),
        lines.join("\n")
    )
}

fn errors(answers: &[Answer]) -> Vec<&Answer> {
    answers.iter().filter(|a| a.status != 200).collect()
}

fn count_version(answers: &[Answer], version: &str) -> usize {
    answers
        .iter()
        .filter(|a| a.version.as_deref() == Some(version))
        .count()
}

async fn rollout_status(api: &Api<ReplicatedService>) -> anyhow::Result<Option<RolloutStatus>> {
    Ok(api.get("web").await?.status.and_then(|s| s.rollout))
}

/// Waits for the service to be ready behind its splitter, and returns the Service's address.
async fn ready_behind_the_splitter(client: &kube::Client, namespace: &str) -> anyhow::Result<String> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let rsvcs: Api<ReplicatedService> = Api::namespaced(client.clone(), namespace);
    eventually("the service ready behind its splitter", WAIT, || async {
        let rsvc = rsvcs.get("web").await?;
        let status = rsvc.status.clone().unwrap_or_default();
        let ready = status.ready_replicas == 2
            && status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
            && status
                .rollout
                .as_ref()
                .is_some_and(|r| r.phase == RolloutPhase::Healthy);
        let Some(address) = outrigger_tests::splitter_fronted_address(&services, "web").await? else {
            return Ok(None);
        };
        // The Service answers only once kube-proxy routes it to a ready splitter.
        let answers = ready && request(&address).status == 200;
        Ok(answers.then_some(address))
    })
    .await
}

async fn change_template(api: &Api<ReplicatedService>, version: &str, error_percent: u32) {
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"template": template(version, error_percent)}})),
    )
    .await
    .unwrap();
}

fn decisions(status: &RolloutStatus) -> Vec<String> {
    status.history.iter().map(|h| h.decision.clone()).collect()
}

fn seconds_between(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from)
        .map_or_else(|e| -e.duration().as_secs_f64(), |d| d.as_secs_f64())
}

fn decision_time(status: &RolloutStatus, decision: &str) -> SystemTime {
    let at = status
        .history
        .iter()
        .rev()
        .find(|h| h.decision == decision)
        .unwrap_or_else(|| panic!("no {decision} decision in {:?}", decisions(status)))
        .at
        .0;
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(at.as_millisecond()).unwrap())
}

async fn start(
    prefix: &str,
    canary: Value,
) -> (
    TestNamespace,
    OperatorProcess,
    kube::Client,
    Api<ReplicatedService>,
) {
    let namespace = TestNamespace::create(prefix).unwrap();
    let operator = OperatorProcess::for_namespace(&namespace.name).unwrap();
    let client = admin_client().await.unwrap();
    let strategies: Api<RolloutStrategy> = Api::namespaced(client.clone(), &namespace.name);
    strategies
        .create(&PostParams::default(), &strategy("canary", canary))
        .await
        .unwrap();
    let api: Api<ReplicatedService> = Api::namespaced(client.clone(), &namespace.name);
    api.create(&PostParams::default(), &web("canary")).await.unwrap();
    (namespace, operator, client, api)
}

#[tokio::test]
async fn a_healthy_version_is_promoted_through_every_step_without_a_client_error() {
    let (namespace, _operator, client, api) = start(
        "rollout-healthy",
        json!({
            "steps": [
                {"setWeight": 20},
                {"analysis": {"interval": "5s", "count": 2, "minRequestCount": 10,
                    "metrics": [{"name": "success-rate", "type": "successRate", "min": 99}]}},
                {"setWeight": 50},
                {"pause": {"duration": "5s"}},
            ],
            "scaleDownDelaySeconds": 3,
        }),
    )
    .await;
    let address = ready_behind_the_splitter(&client, &namespace.name).await.unwrap();
    let load = Load::start(address, 2, Duration::from_millis(20));
    change_template(&api, "v2", 0).await;

    let status = eventually("the canary promoted and drained", WAIT, || async {
        let status = rollout_status(&api).await?;
        Ok(status.filter(|s| s.phase == RolloutPhase::Promoted && s.canary_revision.is_none()))
    })
    .await
    .unwrap();
    assert_eq!(
        decisions(&status),
        [
            "Start",
            "SetWeight",
            "AnalysisPassed",
            "SetWeight",
            "Promote",
            "Drain"
        ]
    );
    let passed = status
        .history
        .iter()
        .find(|h| h.decision == "AnalysisPassed")
        .unwrap();
    assert!(
        passed.reason.contains("success-rate canary 100.00"),
        "{}",
        passed.reason
    );

    // Only v2 once the canary is gone, and stable runs it.
    let promoted_at = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let answers = load.finish();
    let after: Vec<_> = answers.iter().filter(|a| a.at > promoted_at).cloned().collect();
    assert!(!after.is_empty());
    assert_eq!(
        count_version(&after, "v2"),
        after.len(),
        "only the promoted version serves"
    );
    assert!(count_version(&answers, "v1") > 0 && count_version(&answers, "v2") > 0);
    assert!(errors(&answers).is_empty(), "{}", error_summary(&answers));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace.name);
    assert!(deployments.get_opt("web-canary").await.unwrap().is_none());
    let stable = deployments.get("web").await.unwrap();
    let env = serde_json::to_value(&stable.spec.unwrap().template).unwrap();
    assert_eq!(env["spec"]["containers"][0]["env"][0]["value"], "v2");
}

#[tokio::test]
async fn a_version_failing_a_fifth_of_its_requests_is_rolled_back_with_the_numbers() {
    // Default analysis settings: a 10 s interval, one failed measurement fails the analysis.
    let (namespace, _operator, client, api) = start(
        "rollout-failing",
        json!({
            "steps": [
                {"setWeight": 20},
                {"analysis": {"metrics": [{"name": "success-rate", "type": "successRate", "min": 95}]}},
                {"setWeight": 100},
            ],
        }),
    )
    .await;
    let address = ready_behind_the_splitter(&client, &namespace.name).await.unwrap();
    let load = Load::start(address, 2, Duration::from_millis(10));
    change_template(&api, "v2", 20).await;

    let status = eventually("the rollback", WAIT, || async {
        let status = rollout_status(&api).await?;
        Ok(status.filter(|s| s.phase == RolloutPhase::Aborted))
    })
    .await
    .unwrap();
    let rollback = status.history.iter().find(|h| h.decision == "Rollback").unwrap();
    assert!(
        rollback.reason.contains("success-rate canary ") && rollback.reason.contains("min 95"),
        "the reason names the metric, the observed value and the threshold: {}",
        rollback.reason
    );
    let measured = status.last_analysis.as_ref().unwrap();
    let canary_rate = measured.metrics[0].canary.unwrap();
    assert!(
        (70.0..90.0).contains(&canary_rate),
        "canary success rate {canary_rate}"
    );
    assert!(measured.metrics[0].stable.unwrap() > 99.0);

    // Nothing fails once traffic is back on stable.
    let rolled_back_at = decision_time(&status, "Rollback");
    tokio::time::sleep(Duration::from_secs(8)).await;
    let answers = load.finish();
    let first_canary = answers
        .iter()
        .find(|a| a.version.as_deref() == Some("v2"))
        .expect("the canary served some requests")
        .at;
    let errors = errors(&answers);
    assert!(
        !errors.is_empty(),
        "the canary's errors reached clients while it was measured"
    );
    // Config propagation to the splitter takes well under a second; allow for clock granularity.
    let settle = rolled_back_at + Duration::from_secs(3);
    let late: Vec<_> = errors.iter().filter(|a| a.at > settle).collect();
    assert!(late.is_empty(), "errors after the rollback: {late:?}");
    let late_v2: Vec<_> = answers
        .iter()
        .filter(|a| a.at > settle && a.version.as_deref() == Some("v2"))
        .collect();
    assert!(late_v2.is_empty(), "the canary served after the rollback");
    println!(
        "time from the canary's first answer to the rollback decision: {:.1} s ({} requests, {} errors, all within the analysis window)",
        seconds_between(first_canary, rolled_back_at),
        answers.len(),
        errors.len()
    );

    let events = kubectl_ok(&[
        "get",
        "events",
        "-n",
        &namespace.name,
        "--field-selector",
        "reason=RolloutRollback",
        "-o",
        "json",
    ])
    .unwrap();
    assert!(events.contains("success-rate canary"), "{events}");
    // The stable Deployment kept v1 throughout.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace.name);
    let stable = serde_json::to_value(deployments.get("web").await.unwrap().spec.unwrap().template).unwrap();
    assert_eq!(stable["spec"]["containers"][0]["env"][0]["value"], "v1");
}

#[tokio::test]
async fn mirroring_catches_a_broken_version_before_any_client_reaches_it() {
    let (namespace, _operator, client, api) = start(
        "rollout-mirror",
        json!({
            "steps": [
                {"setMirror": 50},
                {"analysis": {"interval": "5s", "minRequestCount": 10,
                    "metrics": [{"name": "success-rate", "type": "successRate", "min": 99}]}},
                {"setMirror": 0},
                {"setWeight": 50},
            ],
        }),
    )
    .await;
    let address = ready_behind_the_splitter(&client, &namespace.name).await.unwrap();
    let load = Load::start(address, 2, Duration::from_millis(10));
    change_template(&api, "v2", 50).await;

    let status = eventually("the rollback", WAIT, || async {
        let status = rollout_status(&api).await?;
        Ok(status.filter(|s| s.phase == RolloutPhase::Aborted))
    })
    .await
    .unwrap();
    assert_eq!(decisions(&status), ["Start", "SetMirror", "Rollback"]);
    let measured = status.last_analysis.as_ref().unwrap();
    assert!(measured.metrics[0].canary.unwrap() < 70.0, "{measured:?}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let answers = load.finish();
    assert!(answers.len() > 100);
    assert_eq!(
        count_version(&answers, "v2"),
        0,
        "no client ever reached the broken version"
    );
    assert!(
        errors(&answers).is_empty(),
        "clients only ever saw stable's answers: {}",
        error_summary(&answers)
    );
}

fn annotate(namespace: &str, control: &str) {
    kubectl_ok(&[
        "annotate",
        "-n",
        namespace,
        "replicatedservice",
        "web",
        &format!("outrigger.dev/rollout={control}"),
        "--overwrite",
    ])
    .unwrap();
}

async fn phase_and_weight(
    api: &Api<ReplicatedService>,
    what: &str,
    phase: RolloutPhase,
    weight: i32,
) -> RolloutStatus {
    eventually(what, WAIT, || async {
        let rsvc = api.get("web").await?;
        let handled = !rsvc
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("outrigger.dev/rollout");
        let status = rsvc.status.and_then(|s| s.rollout);
        Ok(status.filter(|s| handled && s.phase == phase && s.canary_weight == weight))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn kubectl_pauses_resumes_promotes_and_aborts() {
    let (namespace, _operator, client, api) = start(
        "rollout-controls",
        json!({
            "steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}, {"pause": {"duration": "1h"}}],
            "scaleDownDelaySeconds": 0,
        }),
    )
    .await;
    ready_behind_the_splitter(&client, &namespace.name).await.unwrap();
    let ns = namespace.name.as_str();

    change_template(&api, "v2", 0).await;
    phase_and_weight(&api, "a pause without duration", RolloutPhase::Paused, 25).await;
    // On a freshly started cluster kubectl may not know the short name until its discovery cache
    // is refreshed, which a failed lookup triggers.
    let columns = eventually("kubectl get rsvc", WAIT, || async {
        kubectl_ok(&["get", "-n", ns, "rsvc", "web", "--no-headers"]).map(Some)
    })
    .await
    .unwrap();
    assert!(columns.contains("Paused") && columns.contains("25"), "{columns}");

    annotate(ns, "resume");
    let status = phase_and_weight(
        &api,
        "resumed into the timed pause",
        RolloutPhase::Progressing,
        50,
    )
    .await;
    assert_eq!(status.current_step, Some(3));
    let config = kubectl_ok(&[
        "get",
        "-n",
        ns,
        "configmap",
        "web-splitter",
        "-o",
        "jsonpath={.data.request-splitter\\.json}",
    ])
    .unwrap();
    let config: Value = serde_json::from_str(&config).unwrap();
    assert_eq!(config["weights"], json!({"stable": 50, "canary": 50}));

    annotate(ns, "pause");
    phase_and_weight(&api, "paused by kubectl", RolloutPhase::Paused, 50).await;

    annotate(ns, "promote");
    let status = eventually("promoted by kubectl", WAIT, || async {
        Ok(rollout_status(&api)
            .await?
            .filter(|s| s.phase == RolloutPhase::Promoted && s.canary_revision.is_none()))
    })
    .await
    .unwrap();
    assert!(decisions(&status).ends_with(&["Promote".to_owned(), "Drain".to_owned()]));

    // A value that is not a control is reported and cleared.
    annotate(ns, "faster");
    eventually("the unknown control cleared", WAIT, || async {
        let rsvc = api.get("web").await?;
        Ok((!rsvc
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key("outrigger.dev/rollout"))
        .then_some(()))
    })
    .await
    .unwrap();
    let events = kubectl_ok(&[
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        "reason=InvalidRolloutControl",
        "-o",
        "name",
    ])
    .unwrap();
    assert!(!events.trim().is_empty());

    change_template(&api, "v3", 0).await;
    phase_and_weight(&api, "the next rollout paused", RolloutPhase::Paused, 25).await;
    annotate(ns, "abort");
    let status = phase_and_weight(&api, "aborted by kubectl", RolloutPhase::Aborted, 0).await;
    assert!(decisions(&status).contains(&"Abort".to_owned()));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    eventually("the aborted canary removed", WAIT, || async {
        Ok(deployments.get_opt("web-canary").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    let stable = serde_json::to_value(deployments.get("web").await.unwrap().spec.unwrap().template).unwrap();
    assert_eq!(
        stable["spec"]["containers"][0]["env"][0]["value"], "v2",
        "stable keeps the promoted version"
    );
}

#[tokio::test]
async fn removing_the_strategy_returns_to_plain_replicas_and_removes_the_splitter() {
    let (namespace, _operator, client, api) =
        start("rollout-removed", json!({"steps": [{"setWeight": 50}]})).await;
    ready_behind_the_splitter(&client, &namespace.name).await.unwrap();
    api.patch(
        "web",
        &PatchParams::default(),
        &Patch::Json::<()>(
            serde_json::from_value(json!([{"op": "remove", "path": "/spec/rolloutStrategyRef"}])).unwrap(),
        ),
    )
    .await
    .unwrap();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace.name);
    eventually("the splitter and track Services removed", WAIT, || async {
        let gone = deployments.get_opt("web-splitter").await?.is_none()
            && services.get_opt("web-stable").await?.is_none()
            && services.get_opt("web-canary").await?.is_none();
        let selector = services
            .get("web")
            .await?
            .spec
            .unwrap_or_default()
            .selector
            .unwrap_or_default();
        let rollout = rollout_status(&api).await?;
        Ok(
            (gone && selector.contains_key("outrigger.dev/replicatedservice") && rollout.is_none())
                .then_some(()),
        )
    })
    .await
    .unwrap();
    for kind in ["serviceaccount", "role", "rolebinding", "configmap"] {
        let left = kubectl_ok(&[
            "get",
            kind,
            "-n",
            &namespace.name,
            "web-splitter",
            "--ignore-not-found",
            "-o",
            "name",
        ])
        .unwrap();
        assert!(left.trim().is_empty(), "{kind} web-splitter left behind");
    }
}
