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

/// The kubectl built with the cluster (same version as the API server), or the one on PATH.
pub fn kubectl_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("OUTRIGGER_KUBECTL") {
        return PathBuf::from(path);
    }
    let cache = std::env::var_os("OUTRIGGER_CLUSTER_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/outrigger/k8s-v1.20.2"),
        PathBuf::from,
    );
    let built = cache.join("bin/kubectl");
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

/// Reads a manifest under `manifests/examples/` as JSON.
pub fn example(file: &str) -> anyhow::Result<Value> {
    let path = repo_root().join("manifests/examples").join(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_yaml::from_str(&text)?)
}

/// Applies a JSON merge patch (RFC 7386) to `target`: objects merge, `null` deletes, anything else
/// replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_merges_objects_deletes_nulls_and_replaces_arrays() {
        let mut doc = json!({"a": {"b": 1, "c": 2}, "list": [1, 2], "gone": true});
        merge_patch(
            &mut doc,
            &json!({"a": {"b": 5}, "list": [3], "gone": null, "new": "x"}),
        );
        assert_eq!(doc, json!({"a": {"b": 5, "c": 2}, "list": [3], "new": "x"}));
    }
}
