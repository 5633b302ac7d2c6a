#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! Sidecar injection through the real API server: the API server calls the operator's webhook over
//! TLS, the stored pods carry the sidecars, the kubelet runs them, and the app reaches them on
//! localhost. Also: failure policies with the operator down, and certificate rotation.

use std::time::Duration;

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    core::v1::{Pod, Secret},
};
use kube::api::{Api, ListParams, PostParams};
use outrigger_api::ReplicatedService;
use outrigger_tests::{
    admin_client, dry_run, eventually, free_port, kubectl, kubectl_ok, OperatorProcess, TestNamespace,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
const SCOPE_LABEL: &str = "outrigger.dev/test-scope";

/// An operator with its webhook, scoped to one test namespace; removes its webhook configuration
/// and Secret when dropped so no other test's pods are ever intercepted by it.
struct WebhookOperator {
    process: Option<OperatorProcess>,
    config_name: String,
    secret_name: String,
    port: u16,
}

impl WebhookOperator {
    fn start(ns: &TestNamespace, extra: &[&str]) -> WebhookOperator {
        let port = free_port().unwrap();
        let mut operator = WebhookOperator {
            process: None,
            config_name: format!("{}-injector", ns.name),
            secret_name: format!("{}-tls", ns.name),
            port,
        };
        kubectl_ok(&[
            "label",
            "namespace",
            &ns.name,
            &format!("{SCOPE_LABEL}={}", ns.name),
            "--overwrite",
        ])
        .unwrap();
        operator.restart(ns, extra);
        operator
    }

    fn restart(&mut self, ns: &TestNamespace, extra: &[&str]) {
        self.process = None;
        let mut args: Vec<String> = [
            "--webhook-addr",
            &format!("127.0.0.1:{}", self.port),
            "--webhook-url",
            &format!("https://127.0.0.1:{}", self.port),
            "--webhook-config-name",
            &self.config_name,
            "--webhook-secret",
            &self.secret_name,
            "--webhook-namespace-label",
            &format!("{SCOPE_LABEL}={}", ns.name),
            "--sidecar-image",
            "metrics-adapter=outrigger/testapp:dev",
            "--sidecar-image",
            "health-adapter=outrigger/testapp:dev",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        self.process = Some(
            OperatorProcess::start_with(
                &ns.name,
                &format!("{}-op", ns.name),
                &format!("{}-leader", ns.name),
                15,
                &args,
            )
            .unwrap(),
        );
    }

    fn stop(&mut self) {
        self.process = None;
    }
}

impl Drop for WebhookOperator {
    fn drop(&mut self) {
        self.process = None;
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

async fn webhook_policy(name: &str) -> anyhow::Result<Option<String>> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(admin_client().await?);
    Ok(api
        .get_opt(name)
        .await?
        .and_then(|config| config.webhooks?.first()?.failure_policy.clone()))
}

fn plain_pod(name: &str, annotation: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"outrigger.dev/inject": annotation}},
        "spec": {"containers": [{"name": "app", "image": "outrigger/testapp:dev", "imagePullPolicy": "Never"}]},
    }))
    .unwrap()
}

fn container_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.clone())
        .collect()
}

/// Waits until the API server calls the webhook and gets sidecars back, with dry-run pods (nothing
/// is created): the configuration being stored does not mean the API server uses it yet.
async fn wait_for_injection(pods: &Api<Pod>) {
    eventually("the webhook injecting", WAIT, || async {
        let pod = pods
            .create(&dry_run(), &plain_pod("dry-run", "metrics-adapter"))
            .await?;
        Ok((container_names(&pod) == ["metrics-adapter", "app"]).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn injected_sidecars_run_next_to_the_app_and_answer_it_on_localhost() {
    let ns = TestNamespace::create("inject").unwrap();
    let operator = WebhookOperator::start(&ns, &[]);
    eventually("the webhook configuration", WAIT, || async {
        webhook_policy(&operator.config_name).await
    })
    .await
    .unwrap();

    let client = admin_client().await.unwrap();
    let rsvc: ReplicatedService = serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "ReplicatedService", "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "template": {"spec": {"containers": [{"name": "app", "image": "outrigger/testapp:dev", "imagePullPolicy": "Never"}]}},
            "sidecars": [{"name": "metrics-adapter"}, {"name": "health-adapter", "settings": {"mode": "strict"}}],
        }
    }))
    .unwrap();
    Api::<ReplicatedService>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &rsvc)
        .await
        .unwrap();

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    let running = eventually("2 ready pods with their sidecars", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("outrigger.dev/replicatedservice=web"))
            .await?;
        let ready: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|pod| {
                pod.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|conditions| {
                        conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
            })
            .collect();
        Ok((ready.len() == 2).then_some(ready))
    })
    .await
    .unwrap();
    let pod = &running[0];
    assert_eq!(container_names(pod), ["metrics-adapter", "health-adapter", "app"]);
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap()["outrigger.dev/injected"],
        "metrics-adapter,health-adapter"
    );
    for sidecar in &pod.spec.as_ref().unwrap().containers[..2] {
        let security = sidecar.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(true));
    }
    let statuses = pod.status.as_ref().unwrap().container_statuses.as_ref().unwrap();
    assert!(
        statuses.iter().all(|s| s.ready),
        "every container ready: {statuses:?}"
    );

    // From inside the app container: both sidecars answer on localhost.
    let pod_name = pod.metadata.name.clone().unwrap();
    for port in [9905, 9906] {
        let url = format!("http://127.0.0.1:{port}/healthz");
        let output = kubectl_ok(&[
            "exec",
            "-n",
            &ns.name,
            &pod_name,
            "-c",
            "app",
            "--",
            "/outrigger-testapp",
            "get",
            &url,
        ])
        .unwrap();
        assert!(output.contains("200"), "{output}");
    }

    // Plain pods opt in by annotation in a namespace that opted in; unknown sidecars are refused.
    kubectl_ok(&["label", "namespace", &ns.name, "outrigger.dev/injection=enabled"]).unwrap();
    let created = pods
        .create(&PostParams::default(), &plain_pod("annotated", "metrics-adapter"))
        .await
        .unwrap();
    assert_eq!(container_names(&created), ["metrics-adapter", "app"]);
    let refused = pods
        .create(
            &PostParams::default(),
            &plain_pod("unknown", "metrics-adapter,teleporter"),
        )
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(message.contains("unknown sidecar \"teleporter\""), "{message}");
}

#[tokio::test]
async fn with_the_operator_down_ignore_lets_pods_through_and_fail_refuses_them() {
    let ns = TestNamespace::create("inject-policy").unwrap();
    kubectl_ok(&["label", "namespace", &ns.name, "outrigger.dev/injection=enabled"]).unwrap();
    let mut operator = WebhookOperator::start(&ns, &[]);
    eventually("the Ignore policy", WAIT, || async {
        Ok(webhook_policy(&operator.config_name)
            .await?
            .filter(|p| p == "Ignore"))
    })
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin_client().await.unwrap(), &ns.name);
    wait_for_injection(&pods).await;
    let injected = pods
        .create(&PostParams::default(), &plain_pod("while-up", "metrics-adapter"))
        .await
        .unwrap();
    assert_eq!(container_names(&injected), ["metrics-adapter", "app"]);

    operator.stop();
    let through = pods
        .create(&PostParams::default(), &plain_pod("ignored", "metrics-adapter"))
        .await
        .unwrap();
    assert_eq!(
        container_names(&through),
        ["app"],
        "created without sidecars while the webhook is down"
    );

    operator.restart(&ns, &["--webhook-failure-policy", "Fail"]);
    eventually("the Fail policy", WAIT, || async {
        Ok(webhook_policy(&operator.config_name)
            .await?
            .filter(|p| p == "Fail"))
    })
    .await
    .unwrap();
    operator.stop();
    let refused = pods
        .create(&PostParams::default(), &plain_pod("refused", "metrics-adapter"))
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(message.contains("failed calling webhook"), "{message}");
}

async fn served_certificate(name: &str) -> anyhow::Result<Option<Vec<u8>>> {
    let secrets: Api<Secret> = Api::namespaced(admin_client().await?, "outrigger-system");
    Ok(secrets
        .get_opt(name)
        .await?
        .and_then(|s| s.data?.remove("tls.crt"))
        .map(|b| b.0))
}

#[tokio::test]
async fn a_near_expiry_certificate_is_replaced_and_the_webhook_keeps_answering() {
    let ns = TestNamespace::create("inject-rotate").unwrap();
    kubectl_ok(&["label", "namespace", &ns.name, "outrigger.dev/injection=enabled"]).unwrap();
    // Certificates live 30 s and are replaced when less than 25 s remain: a rotation every ~5 s.
    let operator = WebhookOperator::start(
        &ns,
        &[
            "--cert-validity-seconds",
            "30",
            "--cert-renew-before-seconds",
            "25",
            "--cert-check-seconds",
            "1",
        ],
    );
    let first = eventually("a certificate", WAIT, || {
        served_certificate(&operator.secret_name)
    })
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(admin_client().await.unwrap(), &ns.name);
    for round in 0..2 {
        let previous = served_certificate(&operator.secret_name).await.unwrap();
        eventually("a rotated certificate", WAIT, || async {
            Ok(served_certificate(&operator.secret_name)
                .await?
                .filter(|c| Some(c) != previous.as_ref()))
        })
        .await
        .unwrap();
        let pod = pods
            .create(
                &PostParams::default(),
                &plain_pod(&format!("after-rotation-{round}"), "metrics-adapter"),
            )
            .await
            .unwrap();
        assert_eq!(
            container_names(&pod),
            ["metrics-adapter", "app"],
            "the webhook answered with the new certificate"
        );
    }
    assert_ne!(
        served_certificate(&operator.secret_name).await.unwrap().unwrap(),
        first
    );
    let config = Api::<MutatingWebhookConfiguration>::all(admin_client().await.unwrap())
        .get(&operator.config_name)
        .await
        .unwrap();
    let secret = Api::<Secret>::namespaced(admin_client().await.unwrap(), "outrigger-system")
        .get(&operator.secret_name)
        .await
        .unwrap();
    assert_eq!(
        config.webhooks.unwrap()[0]
            .client_config
            .ca_bundle
            .as_ref()
            .unwrap()
            .0,
        secret.data.unwrap()["ca.crt"].0,
        "the webhook configuration trusts the CA that signed the served certificate"
    );
}
