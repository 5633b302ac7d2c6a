#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! The request splitter's ConfigMap watch against the real API server of the local cluster. The
//! splitter runs on the host with the out-of-cluster flags (`--api-server`, `--api-token-file`,
//! `--api-ca-file`), under a ServiceAccount with exactly the RBAC the operator gives a standalone
//! splitter (get, list, watch on ConfigMaps in its namespace), and splits between two loopback
//! backends. The binary must have been built: `cargo build -p outrigger-request-splitter`.

use std::{
    io::{BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

use anyhow::Context;
use outrigger_tests::{
    admin_kubeconfig, cluster_run_dir, eventually, free_port, http_get, kubectl_ok, kubectl_stdin,
    workspace_binary, TestNamespace,
};
use serde_json::{json, Value};

/// The operator promises a weight change reaches the splitter within about a second; a few seconds
/// leaves room for a loaded machine.
const PICKUP: Duration = Duration::from_secs(5);
const WAIT: Duration = Duration::from_secs(60);
const NAME: &str = "checkout-splitter";
const KEY: &str = "request-splitter.json";

/// A backend answering every HTTP/1.1 request on a keep-alive connection with its name.
fn backend(name: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || serve(name, stream));
        }
    });
    port
}

fn serve(name: &str, stream: TcpStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        // Requests here have no body: the head ends at the first empty line.
        let mut line = String::new();
        let mut head_lines = 0;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" && head_lines > 0 => break,
                Ok(_) => head_lines += 1,
            }
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{name}",
            name.len()
        );
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// The splitter process, killed when dropped.
struct SplitterProcess {
    child: Child,
    proxy_port: u16,
    admin_port: u16,
    log: PathBuf,
}

impl Drop for SplitterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl SplitterProcess {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The backend that served `count` requests in a row, or `None` when they were not all the
    /// same (or failed).
    fn served_by(&self, count: usize) -> Option<String> {
        let mut seen = None;
        for _ in 0..count {
            let (status, body) = http_get(self.proxy_port, "/").ok()?;
            if status != 200 || seen.as_ref().is_some_and(|seen| *seen != body) {
                return None;
            }
            seen = Some(body);
        }
        seen
    }

    fn rejected(&self) -> f64 {
        let Ok((200, body)) = http_get(self.admin_port, "/metrics") else {
            return 0.0;
        };
        body.lines()
            .find_map(|line| {
                line.strip_prefix(
                    "outrigger_splitter_config_reloads_total{source=\"configmap\",result=\"rejected\"} ",
                )
            })
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

/// Standard base64 (the kubeconfig's CA data, a Secret's token).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |byte: u8| match byte {
        b'A'..=b'Z' => byte - b'A',
        b'a'..=b'z' => byte - b'a' + 26,
        b'0'..=b'9' => byte - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {byte}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|byte| !byte.is_ascii_whitespace() && *byte != b'=')
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let bits = chunk.iter().enumerate().fold(0u32, |bits, (index, digit)| {
            bits | (u32::from(*digit) << (18 - 6 * index))
        });
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// The API server URL and CA bundle from the admin kubeconfig.
fn cluster_endpoint() -> anyhow::Result<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(admin_kubeconfig()).context("reading the admin kubeconfig")?;
    let kubeconfig: Value = serde_yaml::from_str(&text)?;
    let cluster = &kubeconfig["clusters"][0]["cluster"];
    let server = cluster["server"]
        .as_str()
        .context("no server in the kubeconfig")?;
    let ca = cluster["certificate-authority-data"]
        .as_str()
        .context("no CA data in the kubeconfig")?;
    Ok((server.to_owned(), base64_decode(ca)))
}

/// A ServiceAccount with the splitter's RBAC in `namespace`; returns its token.
async fn splitter_identity(namespace: &str) -> anyhow::Result<String> {
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": NAME, "namespace": namespace}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": NAME, "namespace": namespace},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": NAME, "namespace": namespace},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": NAME},
         "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}]}
    ]});
    let output = kubectl_stdin(&["apply", "-f", "-"], &objects.to_string())?;
    anyhow::ensure!(
        output.status.success(),
        "creating the splitter's identity: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Kubernetes 1.20's token controller writes the ServiceAccount's token into a Secret.
    eventually("the ServiceAccount's token", WAIT, || async {
        let secret = kubectl_ok(&[
            "get",
            "serviceaccount",
            NAME,
            "-n",
            namespace,
            "-o",
            "jsonpath={.secrets[0].name}",
        ])?;
        if secret.trim().is_empty() {
            return Ok(None);
        }
        let token = kubectl_ok(&[
            "get",
            "secret",
            secret.trim(),
            "-n",
            namespace,
            "-o",
            "jsonpath={.data.token}",
        ])?;
        Ok((!token.trim().is_empty()).then(|| String::from_utf8_lossy(&base64_decode(&token)).into_owned()))
    })
    .await
}

fn write_configmap(namespace: &str, document: &Value) {
    let object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": NAME, "namespace": namespace},
        "data": {KEY: document.to_string()}
    });
    let output = kubectl_stdin(&["apply", "-f", "-"], &object.to_string()).unwrap();
    assert!(
        output.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Waits until every request goes to `backend`; returns how long after `since` that was.
async fn until_served_by(
    splitter: &SplitterProcess,
    backend: &str,
    since: Instant,
    within: Duration,
) -> Duration {
    eventually(&format!("every request served by {backend}"), within, || async {
        Ok((splitter.served_by(10).as_deref() == Some(backend)).then_some(()))
    })
    .await
    .unwrap_or_else(|error| panic!("{error:#}\nsplitter log:\n{}", splitter.log()));
    since.elapsed()
}

#[tokio::test]
async fn the_splitter_follows_its_configmap_through_changes_bad_versions_and_recreation() {
    let (server, ca) = cluster_endpoint().expect("the local cluster's kubeconfig");
    kubectl_ok(&["get", "--raw", "/readyz"]).expect("the local cluster is not running");
    let namespace = TestNamespace::create("splitter-cm").unwrap();
    let ns = namespace.name.as_str();
    let token = splitter_identity(ns).await.unwrap();
    let files = std::env::temp_dir().join(format!("splitter-cm-{}", std::process::id()));
    std::fs::create_dir_all(&files).unwrap();
    let token_file = write_file(&files, "token", token.as_bytes());
    let ca_file = write_file(&files, "ca.crt", &ca);

    let (stable, canary) = (backend("stable"), backend("canary"));
    let proxy_port = free_port().unwrap();
    let admin_port = free_port().unwrap();
    let document = |stable_weight: u32, canary_weight: u32| {
        json!({
            "listen": format!("127.0.0.1:{proxy_port}"),
            "accessLog": false,
            "backends": [
                {"name": "stable", "endpoints": [format!("127.0.0.1:{stable}")]},
                {"name": "canary", "endpoints": [format!("127.0.0.1:{canary}")]}
            ],
            "weights": {"stable": stable_weight, "canary": canary_weight}
        })
    };
    write_configmap(ns, &document(100, 0));

    let log = cluster_run_dir().join(format!("splitter-{ns}.log"));
    let binary = workspace_binary("outrigger-request-splitter");
    let log_file = std::fs::File::create(&log).unwrap();
    let child = Command::new(&binary)
        .args(["--configmap", &format!("{ns}/{NAME}")])
        .args(["--api-server", &server])
        .args(["--api-token-file", &token_file.to_string_lossy()])
        .args(["--api-ca-file", &ca_file.to_string_lossy()])
        .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
        .args(["--log-format", "text", "--log", "info"])
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .spawn()
        .unwrap_or_else(|error| {
            panic!(
                "starting {} ({error}); run `cargo build -p outrigger-request-splitter`",
                binary.display()
            )
        });
    let splitter = SplitterProcess {
        child,
        proxy_port,
        admin_port,
        log,
    };

    // The first document is read from the API before the splitter listens.
    until_served_by(&splitter, "stable", Instant::now(), WAIT).await;

    // A weight change written the way the operator writes it reaches the running splitter.
    let written = Instant::now();
    write_configmap(ns, &document(0, 100));
    let took = until_served_by(&splitter, "canary", written, PICKUP).await;
    eprintln!("weight change served {took:?} after kubectl apply started");

    // An invalid version is rejected and counted; the previous one keeps serving.
    write_configmap(ns, &document(70, 0));
    eventually("the rejection", PICKUP, || async {
        Ok((splitter.rejected() >= 1.0).then_some(()))
    })
    .await
    .unwrap_or_else(|error| panic!("{error:#}\nsplitter log:\n{}", splitter.log()));
    assert_eq!(splitter.served_by(20).as_deref(), Some("canary"));
    assert!(
        splitter.log().contains("the weights add up to 70"),
        "{}",
        splitter.log()
    );

    // Deleting the ConfigMap leaves the configuration in effect, and says so.
    kubectl_ok(&["delete", "configmap", NAME, "-n", ns]).unwrap();
    eventually("the deletion in the log", PICKUP, || async {
        Ok(splitter.log().contains("The ConfigMap was deleted").then_some(()))
    })
    .await
    .unwrap_or_else(|error| panic!("{error:#}\nsplitter log:\n{}", splitter.log()));
    assert_eq!(splitter.served_by(20).as_deref(), Some("canary"));

    // Recreated, it applies again.
    let written = Instant::now();
    write_configmap(ns, &document(100, 0));
    let took = until_served_by(&splitter, "stable", written, PICKUP).await;
    eprintln!("recreated ConfigMap served {took:?} after kubectl apply started");
    let _ = std::fs::remove_dir_all(&files);
}
