#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! The sidecar runtime's watch against real API servers of the local cluster: it survives an API
//! server restart, relists after `410 Gone`, and recovers from a rotated token by reading its file
//! again after the `401`; EndpointSlices are read in the version discovery names.
//!
//! The shared cluster's API server is never restarted (other tests run beside these). Tests that
//! need one to go away start a second `kube-apiserver` of their own from the cluster's cached
//! binary, on a free loopback port, against the same etcd, with the cluster's certificate and a
//! token file of their own; it serves the same objects, so a change made through the shared server
//! is seen through it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use outrigger_sidecar_runtime::apiserver::{
    discovery::endpoint_slice_version, Api, ApiClient, ApiServerOptions, ConfigMap, EndpointSlice,
    EndpointSliceVersion, Event, Selector, Watcher,
};
use outrigger_tests::{
    admin_token_file, cluster_api_server, cluster_binary, cluster_ca_file, cluster_run_dir, eventually,
    free_port, kubectl_ok, TestNamespace,
};
use tokio::sync::{mpsc, watch};

/// Longest wait for an API server of our own to answer, and for the watch to deliver a version.
/// Generous: a loaded machine starts kube-apiserver slowly, and the watch backs off while it is
/// down.
const WAIT: Duration = Duration::from_secs(180);
const NAME: &str = "watched";

/// A directory of its own for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(prefix: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{}",
            std::process::id(),
            free_port().unwrap()
        ));
        std::fs::create_dir_all(&path).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A kube-apiserver of the test's own against the cluster's etcd, killed when dropped.
struct OwnApiServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    starts: u32,
}

impl OwnApiServer {
    /// Starts one accepting the admin token and `tokens` (each `system:masters`).
    async fn start(dir: &Path, tokens: &[&str]) -> anyhow::Result<OwnApiServer> {
        let mut server = OwnApiServer {
            child: None,
            port: free_port()?,
            dir: dir.to_owned(),
            starts: 0,
        };
        server.restart(tokens).await?;
        Ok(server)
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.join(format!("apiserver-{}.log", self.starts))
    }

    /// (Re)starts the process on the same port with a token file of `tokens` (and the admin's),
    /// and waits until it serves.
    async fn restart(&mut self, tokens: &[&str]) -> anyhow::Result<()> {
        self.kill();
        let run = cluster_run_dir();
        let admin = std::fs::read_to_string(admin_token_file()).context("reading the admin token")?;
        let mut lines = vec![format!("{},admin,admin,\"system:masters\"", admin.trim())];
        for (index, token) in tokens.iter().enumerate() {
            lines.push(format!(
                "{token},runtime-watch-{index},runtime-watch-{index},\"system:masters\""
            ));
        }
        let token_file = self.dir.join("tokens.csv");
        std::fs::write(&token_file, lines.join("\n") + "\n")?;
        self.starts += 1;
        let log = std::fs::File::create(self.log())?;
        let path = |name: &str| run.join(name).to_string_lossy().into_owned();
        let child = Command::new(cluster_binary("kube-apiserver"))
            .arg("--etcd-servers=http://127.0.0.1:23790")
            .arg(format!("--secure-port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg("--insecure-port=0")
            // The shared server keeps the `kubernetes` Service's endpoints; this one must not
            // write its own port there.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--cert-dir={}", self.dir.join("certs").display()))
            .arg(format!("--tls-cert-file={}", path("certs/apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", path("certs/apiserver.key")))
            .arg(format!("--token-auth-file={}", token_file.display()))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-key-file={}", path("sa.pub")))
            .arg(format!("--service-account-signing-key-file={}", path("sa.key")))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--allow-privileged=true")
            .arg("--enable-admission-plugins=NamespaceLifecycle,ServiceAccount")
            .arg("--profiling=false")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting kube-apiserver (is the cluster built? `hack/cluster.sh up`)")?;
        self.child = Some(child);
        let client = client(&self.url(), &admin_token_file())?;
        let log = self.log();
        eventually("our own API server to serve", WAIT, || {
            let client = client.clone();
            let log = log.clone();
            async move {
                match client
                    .get::<serde_json::Value>("/api/v1/namespaces/default")
                    .await
                {
                    Ok(Some(_)) => Ok(Some(())),
                    Ok(None) => Ok(None),
                    Err(error) => bail!("{error}; log tail: {}", tail(&log)),
                }
            }
        })
        .await
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnApiServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<_> = text.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn client(server: &str, token_file: &Path) -> anyhow::Result<ApiClient> {
    Ok(ApiClient::new(&ApiServerOptions {
        server: Some(server.to_owned()),
        token_file: Some(token_file.to_owned()),
        ca_file: Some(cluster_ca_file()),
    })?)
}

fn set_value(namespace: &str, value: &str) -> anyhow::Result<()> {
    let patch = format!(r#"{{"data":{{"k":"{value}"}}}}"#);
    kubectl_ok(&[
        "-n",
        namespace,
        "patch",
        "configmap",
        NAME,
        "--type",
        "merge",
        "-p",
        &patch,
    ])?;
    Ok(())
}

fn create(namespace: &str, value: &str) -> anyhow::Result<()> {
    kubectl_ok(&[
        "-n",
        namespace,
        "create",
        "configmap",
        NAME,
        &format!("--from-literal=k={value}"),
    ])?;
    Ok(())
}

/// A running watch on the ConfigMap `watched` and what it reported.
struct Watching {
    events: mpsc::UnboundedReceiver<Event<ConfigMap>>,
    stop: watch::Sender<bool>,
    /// Every event seen, as `restarted`/`applied`/`deleted` with the value, for failure messages.
    seen: Vec<String>,
}

impl Watching {
    fn start(watcher: Watcher<ConfigMap>) -> Watching {
        let (sender, events) = mpsc::unbounded_channel();
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(watcher.run(
            move |event| {
                let _ = sender.send(event);
            },
            stopped,
        ));
        Watching {
            events,
            stop,
            seen: Vec::new(),
        }
    }

    fn named(client: ApiClient, namespace: &str) -> Watcher<ConfigMap> {
        Watcher::new(
            Api::configmaps(client, namespace),
            Selector::Named(NAME.to_owned()),
        )
    }

    /// Waits until an event carries `value`; returns the kind of that event. Fails after [`WAIT`]
    /// with every event seen.
    async fn until(&mut self, value: &str) -> anyhow::Result<&'static str> {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match tokio::time::timeout(left, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => bail!("the watch stopped; seen: {:?}", self.seen),
                Err(_) => bail!(
                    "no event carried {value:?} within {WAIT:?}; seen: {:?}",
                    self.seen
                ),
            };
            let value_of = |object: &ConfigMap| {
                object
                    .data
                    .as_ref()
                    .and_then(|data| data.get("k"))
                    .cloned()
                    .unwrap_or_default()
            };
            let (kind, values): (&'static str, Vec<String>) = match &event {
                Event::Restarted(objects) => ("restarted", objects.iter().map(value_of).collect()),
                Event::Applied(object) => ("applied", vec![value_of(object)]),
                Event::Deleted(object) => ("deleted", vec![value_of(object)]),
            };
            self.seen.push(format!("{kind} {values:?}"));
            if values.iter().any(|seen| seen == value) {
                return Ok(kind);
            }
        }
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[tokio::test]
async fn the_watch_delivers_the_latest_version_after_its_api_server_restarts() {
    let namespace = TestNamespace::create("runtime-restart").unwrap();
    let ns = &namespace.name;
    let scratch = Scratch::new("runtime-restart");
    let mut server = OwnApiServer::start(&scratch.0, &[]).await.unwrap();
    create(ns, "v1").unwrap();
    let mut watching = Watching::start(Watching::named(
        client(&server.url(), &admin_token_file()).unwrap(),
        ns,
    ));
    assert_eq!(watching.until("v1").await.unwrap(), "restarted");
    set_value(ns, "v2").unwrap();
    // Either event delivers the version: under load the other tests' writes can push a resume point
    // out of the API server's watch cache, and a relist is the right answer to that.
    assert_delivered(watching.until("v2").await.unwrap());

    server.kill();
    // Changed while the watch's API server is gone: only a watch resumed from v2 sees it.
    set_value(ns, "v3").unwrap();
    server.restart(&[]).await.unwrap();
    watching
        .until("v3")
        .await
        .expect("the version written while the API server was down");
    set_value(ns, "v4").unwrap();
    assert_delivered(watching.until("v4").await.unwrap());
}

/// The watch went on and delivered a version: as a change (`applied`) or from a relist
/// (`restarted`).
fn assert_delivered(how: &str) {
    assert!(how == "applied" || how == "restarted", "the watch goes on: {how}");
}

#[tokio::test]
async fn a_watch_from_an_expired_version_gets_410_relists_and_goes_on() {
    let namespace = TestNamespace::create("runtime-gone").unwrap();
    let ns = &namespace.name;
    create(ns, "current").unwrap();
    // An API server's watch cache starts at the version etcd has when it starts: ours starts now,
    // long after version 1, so a watch from version 1 is answered `410 Gone` and the only way to
    // the object is reading it again. (The shared server started with an empty etcd; its cache
    // may still hold version 1.)
    let scratch = Scratch::new("runtime-gone");
    let server = OwnApiServer::start(&scratch.0, &[]).await.unwrap();
    let client = client(&server.url(), &admin_token_file()).unwrap();
    let mut watching = Watching::start(Watching::named(client, ns).resume_from("1"));
    assert_eq!(
        watching.until("current").await.unwrap(),
        "restarted",
        "the object comes from a relist"
    );
    set_value(ns, "after").unwrap();
    assert_delivered(watching.until("after").await.unwrap());
}

#[tokio::test]
async fn a_rotated_token_is_read_again_from_its_file_after_the_401() {
    let namespace = TestNamespace::create("runtime-token").unwrap();
    let ns = &namespace.name;
    let scratch = Scratch::new("runtime-token");
    let (first, second) = (
        format!("first-{}", free_port().unwrap()),
        format!("second-{}", free_port().unwrap()),
    );
    let mut server = OwnApiServer::start(&scratch.0, &[&first]).await.unwrap();
    let token_file = scratch.0.join("token");
    std::fs::write(&token_file, format!("{first}\n")).unwrap();
    create(ns, "v1").unwrap();
    let mut watching = Watching::start(Watching::named(client(&server.url(), &token_file).unwrap(), ns));
    assert_eq!(watching.until("v1").await.unwrap(), "restarted");

    // The first token is revoked and a second one issued (a static token file is read only at
    // start-up, hence the restart), and the token file is rewritten. The watch still holds the
    // first token: its next request is refused with 401, after which it reads the file again.
    std::fs::write(&token_file, format!("{second}\n")).unwrap();
    server.restart(&[&second]).await.unwrap();
    set_value(ns, "v2").unwrap();
    watching
        .until("v2")
        .await
        .expect("the change, seen with the second token");
    let first_token = scratch.0.join("first-token");
    std::fs::write(&first_token, &first).unwrap();
    let error = client(&server.url(), &first_token)
        .unwrap()
        .get::<ConfigMap>(&format!("/api/v1/namespaces/{ns}/configmaps/{NAME}"))
        .await
        .expect_err("the first token is refused now");
    assert!(error.to_string().contains("401"), "{error}");
}

#[tokio::test]
async fn endpoint_slices_are_read_in_the_version_discovery_names() {
    let client = client(&cluster_api_server(), &admin_token_file()).unwrap();
    let version = endpoint_slice_version(&client).await.unwrap();
    assert_eq!(
        version,
        EndpointSliceVersion::V1Beta1,
        "Kubernetes 1.20 serves discovery.k8s.io/v1beta1 only"
    );
    let slices = Api::<EndpointSlice>::endpoint_slices(client, "default", version)
        .list(&Selector::Labels(None))
        .await
        .unwrap();
    assert!(
        slices.metadata.resource_version.is_some(),
        "a LIST carries the version to watch from"
    );
}
