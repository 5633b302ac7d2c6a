#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! Packaging: the Helm chart (linted, installed, upgraded and uninstalled with a real helm v3.10.1),
//! `manifests/install.yaml`, and the container images, on the local cluster.
//!
//! The cluster is shared with every other test. Each installation here lives in a namespace of its
//! own, manages only an app namespace of its own (`watchNamespace`, `--watch-namespace`), and its
//! webhook only intercepts namespaces carrying a label unique to the test, so it never touches
//! anyone else's objects or pods. The images must have been built: `hack/images.sh operator testapp request-splitter`
//! (`make test-cluster` does it).

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    apps::v1::Deployment,
    core::v1::{Pod, Service},
};
use kube::api::{Api, ListParams};
use outrigger_contract::json::is_subset;
use outrigger_tests::{
    admin_client, docker_ok, dry_run, ensure_crds, eventually, helm, helm_ok, is_ready, kubectl, kubectl_ok,
    kubectl_stdin, repo_root, yaml_documents, TestNamespace,
};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(180);
const SCOPE_LABEL: &str = "outrigger.dev/test-scope";
/// The workspace version: the chart's appVersion, hence the default image tag.
const VERSION: &str = env!("CARGO_PKG_VERSION");
const OPERATOR_SELECTOR: &str = "app.kubernetes.io/component=operator";

fn chart() -> String {
    repo_root()
        .join("charts/outrigger")
        .to_string_lossy()
        .into_owned()
}

/// `helm template` of the chart as release `t` in namespace `ns`, with extra arguments.
fn render(extra: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "t", chart.as_str(), "--namespace", "ns"];
    args.extend_from_slice(extra);
    yaml_documents(&helm_ok(&args).unwrap()).unwrap()
}

fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

fn kinds(documents: &[Value]) -> BTreeSet<String> {
    documents
        .iter()
        .filter_map(|d| d["kind"].as_str().map(str::to_owned))
        .collect()
}

fn operator_args(documents: &[Value]) -> Vec<String> {
    let deployment = documents.iter().find(|d| d["kind"] == "Deployment").unwrap();
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn helm_lint_passes_with_the_default_values_and_with_every_option_on() {
    let chart = chart();
    let output = helm_ok(&["lint", "--strict", &chart]).unwrap();
    assert!(output.contains("0 chart(s) failed"), "{output}");
    let output = helm_ok(&[
        "lint",
        "--strict",
        &chart,
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true",
        "--set",
        "podDisruptionBudget.enabled=true,watchNamespace=apps,webhook.failurePolicy=Fail",
        "--set",
        "replicaCount=1,leaderElection.enabled=false,log.level=debug,log.format=text",
        "--set-string",
        "webhook.namespaceSelector.matchLabels.team=a,sidecars.images.request-splitter=r/rs:1",
    ])
    .unwrap();
    assert!(output.contains("0 chart(s) failed"), "{output}");
}

#[test]
fn optional_objects_render_only_when_enabled_and_rbac_follows_the_watched_namespace() {
    let default = render(&[]);
    let default_kinds = kinds(&default);
    for absent in ["ServiceMonitor", "PodMonitor", "PodDisruptionBudget"] {
        assert!(!default_kinds.contains(absent), "{absent} rendered by default");
    }
    assert!(
        find(&default, "ClusterRoleBinding", "t-outrigger-operator").is_some(),
        "without watchNamespace the operator manages the whole cluster"
    );
    // The post-delete hooks that let `helm uninstall` remove what the operator created at run time.
    for (kind, name) in [
        ("Lease", "t-outrigger-operator-leader"),
        ("Secret", "t-outrigger-webhook-tls"),
    ] {
        let hook = find(&default, kind, name).unwrap();
        assert_eq!(hook["metadata"]["annotations"]["helm.sh/hook"], "post-delete");
    }

    let everything = render(&[
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true",
        "--set",
        "podDisruptionBudget.enabled=true,watchNamespace=apps",
    ]);
    for present in ["ServiceMonitor", "PodMonitor", "PodDisruptionBudget"] {
        assert!(kinds(&everything).contains(present), "{present} missing");
    }
    let watch = find(&everything, "RoleBinding", "t-outrigger-operator-watch").unwrap();
    assert_eq!(watch["metadata"]["namespace"], "apps");
    assert!(find(&everything, "ClusterRoleBinding", "t-outrigger-operator").is_none());
    assert!(operator_args(&everything).contains(&"--watch-namespace=apps".to_owned()));

    let no_webhook = render(&["--set", "webhook.enabled=false"]);
    assert!(!kinds(&no_webhook).contains("MutatingWebhookConfiguration"));
    assert!(find(&no_webhook, "Service", "t-outrigger-webhook").is_none());
    assert!(operator_args(&no_webhook).contains(&"--no-webhook".to_owned()));
}

#[test]
fn install_yaml_is_the_chart_rendered_with_default_values() {
    let root = repo_root();
    let output = std::process::Command::new(root.join("hack/install-manifest.sh"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let committed = std::fs::read_to_string(root.join("manifests/install.yaml")).unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout) == committed,
        "manifests/install.yaml is stale: run `make install-manifest`"
    );
    // The chart carries exactly the generated CRDs.
    let mut generated: Vec<_> = std::fs::read_dir(root.join("crds"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    generated.sort();
    let mut in_chart: Vec<_> = std::fs::read_dir(root.join("charts/outrigger/crds"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    in_chart.sort();
    assert_eq!(in_chart, generated, "run `make install-manifest`");
    for name in generated {
        assert_eq!(
            std::fs::read(root.join("charts/outrigger/crds").join(&name)).unwrap(),
            std::fs::read(root.join("crds").join(&name)).unwrap(),
            "charts/outrigger/crds/{name:?} is stale: run `make install-manifest`"
        );
    }
    let chart_yaml: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join("charts/outrigger/Chart.yaml")).unwrap())
            .unwrap();
    assert_eq!(
        chart_yaml["appVersion"], VERSION,
        "the chart's appVersion is the workspace version"
    );
}

#[test]
fn invalid_values_fail_at_install_with_the_schema_message() {
    let ns = TestNamespace::create("pk-invalid").unwrap();
    let chart = chart();
    for (value, message) in [
        (
            "replicaCount=-1",
            "replicaCount: Must be greater than or equal to 1",
        ),
        (
            "log.level=verbose",
            "log.level must be one of the following: \"error\", \"warn\", \"info\", \"debug\", \"trace\"",
        ),
        (
            "webhook.failurePolicy=Sometimes",
            "webhook.failurePolicy must be one of the following: \"Ignore\", \"Fail\"",
        ),
        (
            "securityContext.readOnlyRootFilesystem=false",
            "securityContext.readOnlyRootFilesystem does not match: true",
        ),
    ] {
        let output = helm()
            .unwrap()
            .args(["install", &ns.name, &chart, "--namespace", &ns.name])
            .args(["--set", value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{value} was accepted");
        assert!(
            stderr.contains("values don't meet the specifications of the schema") && stderr.contains(message),
            "{value}: {stderr}"
        );
    }
    let releases = helm_ok(&["list", "--all", "--short", "--namespace", &ns.name]).unwrap();
    assert_eq!(releases.trim(), "", "nothing was installed");
    let objects = kubectl_ok(&[
        "get",
        "deployments,services,serviceaccounts",
        "-n",
        &ns.name,
        "-o",
        "name",
    ])
    .unwrap();
    assert_eq!(objects.trim(), "serviceaccount/default");
}

/// The files a container created from `image` holds, unpacked under `dir`, leaving out what Docker
/// itself adds to every container.
fn image_files(image: &str, dir: &std::path::Path) -> Vec<String> {
    let container = docker_ok(&["create", image]).unwrap().trim().to_owned();
    std::fs::create_dir_all(dir).unwrap();
    let tar = dir.join("image.tar");
    docker_ok(&["export", "-o", &tar.to_string_lossy(), &container]).unwrap();
    docker_ok(&["rm", &container]).unwrap();
    let unpack = std::process::Command::new("tar")
        .args(["-x", "-f", &tar.to_string_lossy(), "-C", &dir.to_string_lossy()])
        .status()
        .unwrap();
    assert!(unpack.success());
    let listing = std::process::Command::new("tar")
        .args(["-t", "-f", &tar.to_string_lossy()])
        .output()
        .unwrap();
    let added_by_docker = [
        ".dockerenv",
        "dev/",
        "dev/console",
        "dev/pts/",
        "dev/shm/",
        "etc/",
        "etc/hostname",
        "etc/hosts",
        "etc/mtab",
        "etc/resolv.conf",
        "proc/",
        "sys/",
    ];
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .filter(|file| !added_by_docker.contains(file))
        .map(str::to_owned)
        .collect()
}

/// Whether an ELF executable asks for a dynamic loader (a `PT_INTERP` program header): such a
/// binary cannot start in an image without libc.
fn needs_a_loader(elf: &[u8]) -> bool {
    assert!(
        elf.starts_with(b"\x7fELF") && elf[4] == 2,
        "not a 64-bit ELF file"
    );
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([elf[at], elf[at + 1]]));
    let offset = usize::try_from(u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap())).unwrap();
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let header = offset + i * size;
        u32::from_le_bytes(elf[header..header + 4].try_into().unwrap()) == 3
    })
}

/// Paths of the regular files under `dir`, relative to it (none when it does not exist).
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(relative) = path.strip_prefix(dir) {
                found.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    found
}

#[test]
fn images_are_non_root_labelled_and_hold_nothing_but_their_binaries() {
    // The check itself tells a dynamically linked program (this machine's shell) from a static one.
    assert!(needs_a_loader(&std::fs::read("/bin/sh").unwrap()));
    let mut checked = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("images")).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".Dockerfile") else {
            continue;
        };
        let image = format!("outrigger/{name}:{VERSION}");
        let Ok(inspect) = docker_ok(&["image", "inspect", &image]) else {
            // The operator, the test app and the splitter are needed by the cluster tests; others are optional.
            assert!(
                !["operator", "testapp", "request-splitter"].contains(&name),
                "{image} is missing: run `hack/images.sh operator testapp request-splitter`"
            );
            continue;
        };
        let inspect: Value = serde_json::from_str(&inspect).unwrap();
        let config = &inspect[0]["Config"];
        let user = config["User"].as_str().unwrap_or_default();
        let uid: u32 = user.split(':').next().unwrap().parse().unwrap_or(0);
        assert!(
            uid > 0,
            "{image} runs as {user:?}, not as a numeric non-root user"
        );
        for label in ["title", "description", "licenses", "version", "revision"] {
            let key = format!("org.opencontainers.image.{label}");
            assert!(
                config["Labels"][&key].as_str().is_some_and(|v| !v.is_empty()),
                "{image} lacks the OCI label {key}"
            );
        }
        assert_eq!(config["Labels"]["org.opencontainers.image.version"], VERSION);
        // (Sizes are reported in docs/benchmarks.md, not asserted.)
        let dir = std::env::temp_dir().join(format!("pk-image-{name}-{}", std::process::id()));
        let files = image_files(&image, &dir);
        let dockerfile = std::fs::read_to_string(repo_root().join("images").join(&file)).unwrap();
        let debian_binaries: Vec<String> = dockerfile
            .lines()
            .filter_map(|line| line.strip_prefix("# debian-binaries:"))
            .flat_map(|list| list.split(','))
            .filter_map(|entry| entry.trim().split_once(':'))
            .map(|(_, path)| path.trim_start_matches('/').to_owned())
            .collect();
        if debian_binaries.is_empty() {
            // Nothing but our statically linked binaries: no shell, no libc, no package manager.
            assert!(
                !files.is_empty() && files.iter().all(|f| f.starts_with("outrigger-")),
                "{image} holds {files:?}"
            );
            for file in &files {
                let elf = std::fs::read(dir.join(file)).unwrap();
                assert!(!needs_a_loader(&elf), "{image}: {file} is dynamically linked");
            }
        } else {
            // An image of Debian's binaries: those binaries, their loader and shared libraries,
            // the configuration under images/<name>/, and empty directories; no shell, no package
            // manager.
            let configuration = files_under(&repo_root().join("images").join(name));
            let regular: Vec<&String> = files.iter().filter(|f| !f.ends_with('/')).collect();
            for binary in debian_binaries.iter().chain(&configuration) {
                assert!(regular.contains(&binary), "{image} lacks {binary}: {files:?}");
            }
            for file in regular {
                let library = file.starts_with("lib") && file.contains(".so");
                assert!(
                    debian_binaries.contains(file) || configuration.contains(file) || library,
                    "{image} holds {file}, neither a listed binary, its configuration nor a shared library: {files:?}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
        checked.push(name.to_owned());
    }
    assert!(checked.contains(&"operator".to_owned()), "{checked:?}");
}

/// One installation under test: its namespaces and the names of its objects.
struct Installation {
    operator_ns: TestNamespace,
    app_ns: TestNamespace,
    deployment: String,
    webhook_config: String,
    service_account: String,
    /// Cluster-scoped objects it creates, as `kind/name`.
    cluster_objects: Vec<String>,
}

impl Installation {
    /// Two fresh namespaces: one for the operator, one for the apps it manages (opted in to
    /// annotation-driven injection and carrying this test's scope label).
    fn new(prefix: &str, names: impl Fn(&str) -> (String, String, String, Vec<String>)) -> Self {
        for image in ["operator", "testapp", "request-splitter"] {
            // Without the image the kubelet would try to pull it; fail here instead.
            docker_ok(&["image", "inspect", &format!("outrigger/{image}:{VERSION}")])
                .unwrap_or_else(|_| panic!("run `hack/images.sh operator testapp request-splitter` first"));
        }
        ensure_crds().unwrap();
        let operator_ns = TestNamespace::create(prefix).unwrap();
        let app_ns = TestNamespace::create(&format!("{prefix}-app")).unwrap();
        kubectl_ok(&[
            "label",
            "namespace",
            &app_ns.name,
            &format!("{SCOPE_LABEL}={}", app_ns.name),
            "outrigger.dev/injection=enabled",
        ])
        .unwrap();
        let (deployment, webhook_config, service_account, cluster_objects) = names(&operator_ns.name);
        Installation {
            operator_ns,
            app_ns,
            deployment,
            webhook_config,
            service_account,
            cluster_objects,
        }
    }

    fn operator_user(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.operator_ns.name, self.service_account
        )
    }

    /// Waits for every replica to be Ready, the webhook configuration to trust the operator's CA
    /// and the API server to get sidecars injected through the webhook.
    async fn wait_until_serving(&self) {
        let client = admin_client().await.unwrap();
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &self.operator_ns.name);
        eventually("2 ready operator replicas", WAIT, || async {
            let deployment = deployments.get(&self.deployment).await?;
            let ready = deployment.status.and_then(|s| s.ready_replicas).unwrap_or(0);
            Ok((ready == 2).then_some(()))
        })
        .await
        .unwrap();
        let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        eventually("the caBundle in the webhook configuration", WAIT, || async {
            let config = configs.get(&self.webhook_config).await?;
            let webhooks = config.webhooks.unwrap_or_default();
            Ok((webhooks.len() == 2
                && webhooks.iter().all(|w| {
                    w.client_config
                        .ca_bundle
                        .as_ref()
                        .is_some_and(|b| !b.0.is_empty())
                }))
            .then_some(()))
        })
        .await
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(client, &self.app_ns.name);
        eventually("a sidecar injected through the webhook", WAIT, || async {
            let created = pods.create(&dry_run(), &annotated_pod("first")).await?;
            Ok((container_names(&created) == ["metrics-adapter", "app"]).then_some(()))
        })
        .await
        .unwrap();
    }

    /// The webhook configuration installed is the one the operator builds: its server-side apply
    /// added the caBundle and changed nothing the installation set.
    async fn assert_webhook_config_is_the_operators(&self, installed: &[Value]) {
        let installed = installed
            .iter()
            .find(|d| d["kind"] == "MutatingWebhookConfiguration")
            .unwrap();
        let live = Api::<MutatingWebhookConfiguration>::all(admin_client().await.unwrap())
            .get(&self.webhook_config)
            .await
            .unwrap();
        let live = serde_json::to_value(live).unwrap();
        for webhook in installed["webhooks"].as_array().unwrap() {
            let live_webhook = live["webhooks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["name"] == webhook["name"])
                .unwrap();
            assert!(
                is_subset(webhook, live_webhook),
                "installed {webhook}\nlive {live_webhook}"
            );
        }
    }

    /// The operator may patch its own webhook configuration and nothing else of the kind.
    fn assert_webhook_rbac_is_least_privilege(&self) {
        let can = |verb: &str, resource: &str| {
            let output = kubectl()
                .args(["auth", "can-i", verb, resource, "--as", &self.operator_user()])
                .output()
                .unwrap();
            String::from_utf8_lossy(&output.stdout).trim() == "yes"
        };
        let own = format!("mutatingwebhookconfigurations/{}", self.webhook_config);
        assert!(can("patch", &own));
        assert!(can("get", &own));
        assert!(!can("create", "mutatingwebhookconfigurations"));
        assert!(!can("delete", &own));
        assert!(!can("patch", "mutatingwebhookconfigurations/outrigger-injector"));
    }

    /// Applies the example RolloutStrategy and ReplicatedService to the app namespace and waits for
    /// its three pods to be Ready with the injected sidecar.
    async fn run_the_example(&self) {
        let examples = repo_root().join("manifests/examples");
        kubectl_ok(&[
            "apply",
            "-n",
            &self.app_ns.name,
            "-f",
            &examples.join("rolloutstrategy.yaml").to_string_lossy(),
            "-f",
            &examples.join("replicatedservice.yaml").to_string_lossy(),
        ])
        .unwrap();
        let pods: Api<Pod> = Api::namespaced(admin_client().await.unwrap(), &self.app_ns.name);
        let running = eventually("3 ready pods of the example with their sidecar", WAIT, || async {
            let list = pods
                .list(&ListParams::default().labels("outrigger.dev/replicatedservice=web"))
                .await?;
            let ready: Vec<Pod> = list.items.into_iter().filter(is_ready).collect();
            Ok((ready.len() == 3).then_some(ready))
        })
        .await
        .unwrap();
        for pod in &running {
            assert_eq!(container_names(pod), ["request-splitter", "app"]);
            let sidecar = &pod.spec.as_ref().unwrap().containers[0];
            assert_eq!(
                sidecar.image.as_deref(),
                Some(format!("outrigger/request-splitter:{VERSION}").as_str())
            );
        }
        // Requests reach the app through the rollout's splitter and each pod's injected splitter.
        let services: Api<Service> = Api::namespaced(admin_client().await.unwrap(), &self.app_ns.name);
        eventually("an answer of the app through the Service", WAIT, || async {
            let Some(address) = outrigger_tests::splitter_fronted_address(&services, "web").await? else {
                return Ok(None);
            };
            let answer = outrigger_tests::http_get_from(&address, "/hello")?;
            Ok((answer.0 == 200 && answer.1.contains("version=")).then_some(()))
        })
        .await
        .unwrap();
    }

    /// Triggers a rollout of the operator while creating pods through the webhook without a pause,
    /// until every replica has been replaced; every one of those pods must get its sidecar.
    async fn roll_without_webhook_downtime(
        &self,
        trigger: impl FnOnce() -> anyhow::Result<()> + Send + 'static,
        rolled: impl Fn(&Pod) -> bool,
    ) {
        let client = admin_client().await.unwrap();
        let operator_pods: Api<Pod> = Api::namespaced(client.clone(), &self.operator_ns.name);
        let selector = ListParams::default().labels(OPERATOR_SELECTOR);
        let stop = Arc::new(AtomicBool::new(false));
        let probe = tokio::spawn(probe_injection(
            Api::namespaced(client, &self.app_ns.name),
            stop.clone(),
        ));
        tokio::task::spawn_blocking(trigger).await.unwrap().unwrap();
        eventually("every operator replica replaced", WAIT, || async {
            let pods = operator_pods.list(&selector).await?.items;
            let done = pods.len() == 2
                && pods
                    .iter()
                    .all(|p| p.metadata.deletion_timestamp.is_none() && rolled(p) && is_ready(p));
            Ok(done.then_some(()))
        })
        .await
        .unwrap();
        stop.store(true, Ordering::Relaxed);
        let results = probe.await.unwrap();
        assert!(
            results.len() >= 10,
            "only {} probes during the rollout",
            results.len()
        );
        let missed: Vec<_> = results
            .iter()
            .filter(|r| {
                r.as_deref()
                    .map_or(true, |names| names != ["metrics-adapter", "app"])
            })
            .collect();
        assert!(
            missed.is_empty(),
            "{} of {} pods created during the rollout missed the webhook: {missed:?}",
            missed.len(),
            results.len()
        );
    }

    /// Nothing the installation created is left, but the CRDs; `namespace_deleted` when the
    /// operator's namespace was part of it.
    async fn assert_nothing_left(&self, namespace_deleted: bool) {
        let ns = &self.operator_ns.name;
        if namespace_deleted {
            eventually("the operator's namespace to be gone", WAIT, || async {
                let output = kubectl().args(["get", "namespace", ns]).output()?;
                Ok((!output.status.success()).then_some(()))
            })
            .await
            .unwrap();
        } else {
            eventually("the operator's pods to be gone", WAIT, || async {
                let left = kubectl_ok(&["get", "pods", "-n", ns, "-o", "name"])?;
                Ok(left.trim().is_empty().then_some(()))
            })
            .await
            .unwrap();
            let left = kubectl_ok(&[
                "get",
                "deployments,replicasets,services,serviceaccounts,roles,rolebindings,leases,configmaps,secrets",
                "-n",
                ns,
                "-o",
                "name",
            ])
            .unwrap();
            let left: Vec<&str> = left
                .lines()
                .filter(|name| {
                    // What every namespace has, whoever installed what.
                    *name != "serviceaccount/default"
                        && *name != "configmap/kube-root-ca.crt"
                        && !name.starts_with("secret/default-token-")
                })
                .collect();
            assert!(left.is_empty(), "left behind in {ns}: {left:?}");
        }
        // The example service's own children (its splitter's Role) stay with it; the installation's
        // RBAC in the app namespace must not.
        let in_app_ns = kubectl_ok(&[
            "get",
            "roles,rolebindings",
            "-n",
            &self.app_ns.name,
            "-l",
            "app.kubernetes.io/managed-by!=outrigger",
            "-o",
            "name",
        ])
        .unwrap();
        assert_eq!(in_app_ns.trim(), "", "left behind in the app namespace");
        for object in &self.cluster_objects {
            let output = kubectl().args(["get", object]).output().unwrap();
            assert!(!output.status.success(), "{object} was left behind");
        }
        kubectl_ok(&["get", "crd", "replicatedservices.outrigger.dev"]).expect("the CRDs stay");
    }
}

/// A plain pod asking for the metrics adapter by annotation.
fn annotated_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": {"outrigger.dev/inject": "metrics-adapter"}},
        "spec": {"containers": [{"name": "app", "image": "outrigger/testapp:dev", "imagePullPolicy": "Never"}]},
    }))
    .unwrap()
}

fn container_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .as_ref()
        .map(|spec| spec.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default()
}

/// Creates (dry run: the webhook is called, nothing is stored) one annotated pod after another until
/// `stop`; returns the containers each one came back with.
async fn probe_injection(pods: Api<Pod>, stop: Arc<AtomicBool>) -> Vec<Result<Vec<String>, String>> {
    let mut results = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let name = format!("probe-{}", results.len());
        let result = pods
            .create(&dry_run(), &annotated_pod(&name))
            .await
            .map(|pod| container_names(&pod))
            .map_err(|error| error.to_string());
        results.push(result);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    results
}

fn operator_args_of(pod: &Pod) -> Vec<String> {
    pod.spec.as_ref().unwrap().containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

/// Every container in `namespace` runs as a non-root user on a read-only root filesystem: as the
/// pods declare it, and as Docker actually runs them. Returns how many containers it checked.
async fn assert_unprivileged_and_read_only(namespace: &str) -> usize {
    let pods = Api::<Pod>::namespaced(admin_client().await.unwrap(), namespace)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        let pod_non_root = spec.security_context.as_ref().and_then(|s| s.run_as_non_root);
        for container in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let security = container.security_context.clone().unwrap_or_default();
            let name = format!("{}/{}", pod.metadata.name.as_deref().unwrap(), container.name);
            assert_eq!(security.run_as_non_root.or(pod_non_root), Some(true), "{name}");
            assert_eq!(security.read_only_root_filesystem, Some(true), "{name}");
            assert_eq!(security.allow_privilege_escalation, Some(false), "{name}");
        }
    }
    let ids = docker_ok(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.kubernetes.pod.namespace={namespace}"),
        "--filter",
        "label=io.kubernetes.docker.type=container",
    ])
    .unwrap();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    for id in &ids {
        let inspect: Value = serde_json::from_str(&docker_ok(&["inspect", id]).unwrap()).unwrap();
        let container = &inspect[0];
        let name = container["Name"].as_str().unwrap_or_default();
        let user = container["Config"]["User"].as_str().unwrap_or_default();
        let uid: u32 = user.split(':').next().unwrap().parse().unwrap_or(0);
        assert!(uid > 0, "{name} runs as {user:?}");
        assert_eq!(container["HostConfig"]["ReadonlyRootfs"], true, "{name}");
    }
    ids.len()
}

#[tokio::test]
async fn helm_install_runs_the_example_upgrades_without_webhook_downtime_and_uninstalls_cleanly() {
    let install = Installation::new("pk-helm", |release| {
        let fullname = format!("{release}-outrigger");
        (
            format!("{fullname}-operator"),
            format!("{fullname}-injector"),
            format!("{fullname}-operator"),
            vec![
                format!("mutatingwebhookconfiguration/{fullname}-injector"),
                format!("clusterrole/{fullname}-operator"),
                format!("clusterrole/{fullname}-operator-webhook"),
                format!("clusterrolebinding/{fullname}-operator-webhook"),
            ],
        )
    });
    let release = install.operator_ns.name.clone();
    let ns = release.clone();
    let app = install.app_ns.name.clone();
    let chart = chart();
    // The default values, plus the scope every installation on this shared cluster needs, and the
    // request splitter image hack/images.sh builds.
    let scope = [
        "--set".to_owned(),
        format!("watchNamespace={app}"),
        "--set-string".to_owned(),
        format!("webhook.namespaceSelector.matchLabels.outrigger\\.dev/test-scope={app}"),
        "--set-string".to_owned(),
        format!("sidecars.images.request-splitter=outrigger/request-splitter:{VERSION}"),
    ];
    let mut args: Vec<&str> = vec![
        "install",
        &release,
        &chart,
        "--namespace",
        &ns,
        "--wait",
        "--timeout",
        "3m",
    ];
    args.extend(scope.iter().map(String::as_str));
    let notes = helm_ok(&args).unwrap();
    assert!(
        notes.contains(&format!(
            "kubectl -n {ns} rollout status deployment/{}",
            install.deployment
        )),
        "the notes say what to do next: {notes}"
    );

    install.wait_until_serving().await;
    let manifest =
        yaml_documents(&helm_ok(&["get", "manifest", &release, "--namespace", &ns]).unwrap()).unwrap();
    install.assert_webhook_config_is_the_operators(&manifest).await;
    install.assert_webhook_rbac_is_least_privilege();
    let user = install.operator_user();
    let can = |args: &[&str]| {
        let output = kubectl()
            .args(["auth", "can-i"])
            .args(args)
            .args(["--as", &user])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim() == "yes"
    };
    assert!(can(&["create", "deployments", "-n", &app]));
    assert!(
        !can(&["create", "deployments", "-n", "default"]),
        "it manages its watched namespace only"
    );
    assert!(
        !can(&["get", "secrets", "-n", &ns]),
        "it reads its own Secret only"
    );

    install.run_the_example().await;
    assert_eq!(assert_unprivileged_and_read_only(&ns).await, 2);
    // Three replicas with their injected splitter, and the rollout's two splitter pods.
    assert_eq!(assert_unprivileged_and_read_only(&app).await, 8);

    let (upgrade_release, upgrade_ns, upgrade_chart) = (release.clone(), ns.clone(), chart.clone());
    install
        .roll_without_webhook_downtime(
            move || {
                helm_ok(&[
                    "upgrade",
                    &upgrade_release,
                    &upgrade_chart,
                    "--namespace",
                    &upgrade_ns,
                    "--reuse-values",
                    "--set",
                    "log.level=debug",
                    "--wait",
                    "--timeout",
                    "3m",
                ])
                .map(drop)
            },
            |pod| operator_args_of(pod).contains(&"--log=debug,kube_runtime=warn".to_owned()),
        )
        .await;
    install.wait_until_serving().await;

    helm_ok(&["uninstall", &release, "--namespace", &ns, "--wait"]).unwrap();
    install.assert_nothing_left(false).await;
    let releases = helm_ok(&["list", "--all", "--short", "--namespace", &ns]).unwrap();
    assert_eq!(releases.trim(), "");
}

/// `manifests/install.yaml` moved to this test's namespaces: its namespace, and the names of its
/// cluster-scoped objects, follow the operator's namespace; the operator manages the app namespace
/// only and its webhook is scoped to it. The CRDs are left out: they are shared with every other
/// test, `ensure_crds` installs the same files (`install_yaml_is_the_chart_rendered_with_default_values`
/// proves it), and deleting them would delete everyone's objects.
fn relocated_install_yaml(operator_ns: &str, app_ns: &str, log_level: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("manifests/install.yaml")).unwrap();
    let text = text
        .replace("outrigger-system", operator_ns)
        .replace("outrigger-operator", &format!("{operator_ns}-operator"))
        .replace("outrigger-injector", &format!("{operator_ns}-injector"));
    let mut documents = Vec::new();
    for mut document in yaml_documents(&text).unwrap() {
        match document["kind"].as_str().unwrap() {
            "CustomResourceDefinition" => continue,
            "Deployment" => {
                let args = document["spec"]["template"]["spec"]["containers"][0]["args"]
                    .as_array_mut()
                    .unwrap();
                let log = args
                    .iter_mut()
                    .find(|a| a.as_str().is_some_and(|a| a.starts_with("--log=")))
                    .unwrap();
                *log = json!(format!("--log={log_level},kube_runtime=warn"));
                args.push(json!(format!("--watch-namespace={app_ns}")));
                args.push(json!(format!("--webhook-namespace-label={SCOPE_LABEL}={app_ns}")));
                args.push(json!(format!(
                    "--sidecar-image=request-splitter=outrigger/request-splitter:{VERSION}"
                )));
            }
            "MutatingWebhookConfiguration" => {
                for webhook in document["webhooks"].as_array_mut().unwrap() {
                    webhook["namespaceSelector"]["matchLabels"][SCOPE_LABEL] = json!(app_ns);
                }
            }
            _ => {}
        }
        documents.push(serde_yaml::to_string(&document).unwrap());
    }
    documents.join("---\n")
}

#[tokio::test]
async fn kubectl_apply_of_install_yaml_runs_the_example_upgrades_without_webhook_downtime_and_deletes_cleanly(
) {
    let install = Installation::new("pk-apply", |ns| {
        (
            format!("{ns}-operator"),
            format!("{ns}-injector"),
            format!("{ns}-operator"),
            vec![
                format!("mutatingwebhookconfiguration/{ns}-injector"),
                format!("clusterrole/{ns}-operator"),
                format!("clusterrole/{ns}-operator-webhook"),
                format!("clusterrolebinding/{ns}-operator"),
                format!("clusterrolebinding/{ns}-operator-webhook"),
            ],
        )
    });
    let (ns, app) = (install.operator_ns.name.clone(), install.app_ns.name.clone());
    let apply = |manifest: &str| {
        let output = kubectl_stdin(&["apply", "-f", "-"], manifest).unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let manifest = relocated_install_yaml(&ns, &app, "info");
    apply(&manifest);

    install.wait_until_serving().await;
    install
        .assert_webhook_config_is_the_operators(&yaml_documents(&manifest).unwrap())
        .await;
    install.assert_webhook_rbac_is_least_privilege();
    install.run_the_example().await;
    assert_eq!(assert_unprivileged_and_read_only(&ns).await, 2);
    // Three replicas with their injected splitter, and the rollout's two splitter pods.
    assert_eq!(assert_unprivileged_and_read_only(&app).await, 8);

    let changed = relocated_install_yaml(&ns, &app, "debug");
    install
        .roll_without_webhook_downtime(
            move || {
                let output = kubectl_stdin(&["apply", "-f", "-"], &changed)?;
                anyhow::ensure!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                Ok(())
            },
            |pod| operator_args_of(pod).contains(&"--log=debug,kube_runtime=warn".to_owned()),
        )
        .await;
    install.wait_until_serving().await;

    // The documented uninstall: everything labelled part-of=outrigger, which is all but the CRDs.
    let output = kubectl_stdin(
        &[
            "delete",
            "-f",
            "-",
            "-l",
            "app.kubernetes.io/part-of=outrigger",
            "--wait=false",
        ],
        &manifest,
    )
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    install.assert_nothing_left(true).await;
}
