#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! Session affinity to pods on the local cluster, with the operator as a local process: a
//! ReplicatedService with `sessionAffinity` and no rollout gets the request splitter in front, which
//! hashes each key to one of the ready pods it reads from the EndpointSlices. The test app answers
//! with its pod's name (`VERSION` from the downward API), so each answer says which pod served it.
//!
//! Images: `OUTRIGGER_SPLITTER_IMAGE` (default `outrigger/request-splitter:dev`) and
//! `OUTRIGGER_TESTAPP_IMAGE` (default `outrigger/testapp:dev`, with `/-/unready`).

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use outrigger_api::ReplicatedService;
use outrigger_tests::{admin_client, eventually, splitter_fronted_address, OperatorProcess, TestNamespace};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);
/// Session keys sent; enough that each of five pods gets some, few enough for a quick round.
const KEYS: usize = 300;

fn image(variable: &str, default: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| default.to_owned())
}

fn operator(namespace: &str) -> OperatorProcess {
    OperatorProcess::start_with(
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
    .unwrap()
}

/// A service of the test app answering with its pod's name, sticky on the `x-user` header.
fn service(replicas: i32) -> ReplicatedService {
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{
                "name": "app",
                "image": image("OUTRIGGER_TESTAPP_IMAGE", "outrigger/testapp:dev"),
                "imagePullPolicy": "Never",
                "ports": [{"containerPort": 8080}],
                "env": [
                    {"name": "VERSION", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "DRAIN_SECONDS", "value": "0"},
                ],
            }]}},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            "readiness": {"httpPath": "/healthz", "port": 8080, "periodSeconds": 1, "failureThreshold": 1},
            "sessionAffinity": {"source": "header", "name": "x-user", "virtualNodes": 160},
        },
    }))
    .unwrap()
}

/// One HTTP/1.0 request; returns status and body.
fn request(address: &str, method: &str, path: &str, user: Option<&str>) -> anyhow::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address.parse()?, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let user = user.map(|user| format!("x-user: {user}\r\n")).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: web\r\n{user}Content-Length: 0\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no status line in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The pod that serves each key.
fn placement(address: &str) -> anyhow::Result<Vec<String>> {
    (0..KEYS)
        .map(|key| {
            let (status, body) = request(address, "GET", "/", Some(&format!("user-{key}")))?;
            anyhow::ensure!(status == 200, "key {key}: {status} {body}");
            body.split_whitespace()
                .find_map(|word| word.strip_prefix("version="))
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no pod name in {body:?}"))
        })
        .collect()
}

/// The placement, read off the thread of the test's runtime.
async fn placement_now(address: &str) -> anyhow::Result<Vec<String>> {
    let address = address.to_owned();
    tokio::task::spawn_blocking(move || placement(&address)).await?
}

/// The placement once `settled` holds of it and two rounds in a row agree: a change of the
/// splitters' rings in the middle of a round (or one splitter replica behind the other) would mix
/// two placements. Before the splitter knows the pods, the Service's address spreads keys at random,
/// so two rounds agree only once keys are hashed to pods.
async fn placement_once(what: &str, address: &str, settled: impl Fn(&[String]) -> bool) -> Vec<String> {
    let settled = &settled;
    eventually(what, WAIT, || async move {
        let first = placement_now(address).await?;
        if !settled(&first) {
            return Ok(None);
        }
        let second = placement_now(address).await?;
        Ok((first == second).then_some(second))
    })
    .await
    .unwrap()
}

fn pods_of(placement: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for pod in placement {
        *counts.entry(pod.as_str()).or_insert(0) += 1;
    }
    counts
}

/// Names and IPs of the service's ready pods.
async fn ready_pods(pods: &Api<Pod>) -> anyhow::Result<BTreeMap<String, String>> {
    let list = pods
        .list(&ListParams::default().labels("outrigger.dev/replicatedservice=web"))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|pod| {
            pod.metadata.deletion_timestamp.is_none()
                && pod
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .filter_map(|pod| Some((pod.metadata.name?, pod.status?.pod_ip?)))
        .collect())
}

struct Fronted {
    _ns: TestNamespace,
    _operator: OperatorProcess,
    services: Api<ReplicatedService>,
    pods: Api<Pod>,
    address: String,
}

/// A sticky service of `replicas` pods, fronted by its splitter, every pod known to it.
async fn fronted(prefix: &str, replicas: usize) -> Fronted {
    let ns = TestNamespace::create(prefix).unwrap();
    let operator = operator(&ns.name);
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let kube_services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns.name);
    services
        .create(&PostParams::default(), &service(i32::try_from(replicas).unwrap()))
        .await
        .unwrap();
    // Affinity alone, without a rollout, puts the splitter in front.
    let address = eventually("the Service leading to a ready splitter", WAIT, || async {
        let ready = deployments
            .get_opt("web-splitter")
            .await?
            .and_then(|d| d.status?.ready_replicas)
            .unwrap_or(0);
        let address = splitter_fronted_address(&kube_services, "web").await?;
        Ok(address.filter(|_| ready > 0))
    })
    .await
    .unwrap();
    placement_once("every pod serving some keys", &address, |placement| {
        pods_of(placement).len() == replicas
    })
    .await;
    Fronted {
        _ns: ns,
        _operator: operator,
        services,
        pods,
        address,
    }
}

#[tokio::test]
async fn the_same_key_reaches_the_same_pod_and_scaling_from_four_to_five_moves_about_a_fifth_of_keys() {
    let service = fronted("affinity-scale", 4).await;
    let before = placement_now(&service.address).await.unwrap();
    let again = placement_now(&service.address).await.unwrap();
    assert_eq!(before, again, "a key reached another pod with nothing changed");
    let counts = pods_of(&before);
    assert_eq!(counts.len(), 4, "{counts:?}");
    // No pod is starved or swamped (160 points each: within a factor of about two of a quarter).
    assert!(
        counts.values().all(|n| (KEYS / 8..=KEYS / 2).contains(n)),
        "{counts:?}"
    );

    service
        .services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    let after = placement_once("the fifth pod serving keys", &service.address, |placement| {
        pods_of(placement).len() == 5
    })
    .await;
    let newcomer = pods_of(&after)
        .into_keys()
        .find(|pod| !counts.contains_key(pod))
        .unwrap()
        .to_owned();
    let moved: Vec<usize> = (0..KEYS).filter(|&key| before[key] != after[key]).collect();
    // Consistent hashing: a key moves only to the new pod, and about 1/5 of them do.
    for &key in &moved {
        assert_eq!(after[key], newcomer, "key {key} moved between old pods");
    }
    let share = moved.len() as f64 / KEYS as f64;
    println!(
        "4→5 pods: {} of {KEYS} keys moved ({share:.3}; ideal 0.2)",
        moved.len()
    );
    assert!((0.08..=0.35).contains(&share), "{share}");
}

#[tokio::test]
async fn the_keys_of_an_unready_pod_move_away_and_come_back_when_it_is_ready_again() {
    let service = fronted("affinity-ready", 3).await;
    let before = placement_now(&service.address).await.unwrap();
    let pods = ready_pods(&service.pods).await.unwrap();
    let victim = before[0].clone();
    let victim_address = format!("{}:8080", pods[&victim]);
    let (status, _) = request(&victim_address, "POST", "/-/unready", None).unwrap();
    assert_eq!(status, 200);

    let during = placement_once(
        "the unready pod's keys served elsewhere",
        &service.address,
        |placement| !placement.contains(&victim),
    )
    .await;
    assert!(!during.contains(&victim));
    for key in 0..KEYS {
        if before[key] != victim {
            assert_eq!(before[key], during[key], "key {key} of a ready pod moved");
        }
    }

    let (status, _) = request(&victim_address, "POST", "/-/ready", None).unwrap();
    assert_eq!(status, 200);
    let back = placement_once("the pod's keys back on it", &service.address, |placement| {
        placement.contains(&victim)
    })
    .await;
    assert_eq!(
        before, back,
        "every key is where it was before the pod turned unready"
    );
}

/// Bench `bench/session-remap.sh`: 10,000 session keys, then 4→5 replicas; prints the share of keys
/// that moved to another pod through the splitter, through nginx's `hash $http_x_user consistent`
/// (on loopback, over the same pod IPs) and through kube-proxy's `ClientIP` affinity (which keys
/// on the source address only: measured with `SOURCES` addresses added to docker0 for the run).
#[tokio::test]
#[ignore = "a benchmark: run by bench/session-remap.sh"]
async fn session_remapping_benchmark() {
    const BENCH_KEYS: usize = 10_000;
    const SOURCES: u8 = 200;
    let service = fronted("affinity-bench", 4).await;
    let kube_services: Api<Service> = Api::namespaced(admin_client().await.unwrap(), &service._ns.name);
    kube_services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web-clientip"},
                "spec": {
                    "selector": {"outrigger.dev/replicatedservice": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                    "sessionAffinity": "ClientIP",
                },
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let clientip = kube_services.get("web-clientip").await.unwrap();
    let clientip = format!("{}:80", clientip.spec.unwrap().cluster_ip.unwrap());
    let sources = bench::SourceAddresses::add(SOURCES);

    let keys: Vec<String> = (0..BENCH_KEYS).map(|key| format!("session-{key}")).collect();
    let measure = |pods: BTreeMap<String, String>| {
        let address = service.address.clone();
        let keys = keys.clone();
        let clientip = clientip.clone();
        let sources = sources.addresses();
        async move {
            tokio::task::spawn_blocking(move || {
                let splitter = bench::placement(&address, &keys).unwrap();
                let nginx = bench::Nginx::start(pods.values()).unwrap();
                let through_nginx = bench::placement(&nginx.address(), &keys).unwrap();
                let by_source = bench::placement_by_source(&clientip, &sources).unwrap();
                (splitter, through_nginx, by_source)
            })
            .await
            .unwrap()
        }
    };
    let before = measure(ready_pods(&service.pods).await.unwrap()).await;
    service
        .services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    placement_once("the fifth pod serving keys", &service.address, |placement| {
        pods_of(placement).len() == 5
    })
    .await;
    let pods = eventually("five ready pods", WAIT, || async {
        let pods = ready_pods(&service.pods).await?;
        Ok((pods.len() == 5).then_some(pods))
    })
    .await
    .unwrap();
    let after = measure(pods).await;
    let moved = |a: &[String], b: &[String]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    let newcomer_share = |before: &[String], after: &[String]| {
        let old: std::collections::BTreeSet<&String> = before.iter().collect();
        after.iter().filter(|pod| !old.contains(pod)).count() as f64 / after.len() as f64
    };
    println!("| method | clients | moved to another pod | share moved | share on the new pod |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (method, a, b) in [
        ("request splitter (ring by pod name)", &before.0, &after.0),
        ("nginx `hash $http_x_user consistent`", &before.1, &after.1),
        ("kube-proxy `sessionAffinity: ClientIP`", &before.2, &after.2),
    ] {
        println!(
            "| {method} | {} | {} | {:.3} | {:.3} |",
            a.len(),
            moved(a, b),
            moved(a, b) as f64 / a.len() as f64,
            newcomer_share(a, b)
        );
    }
    println!("session-remap: 4→5 replicas, ideal share moved 0.200");
    drop(sources);
}

/// What the remapping benchmark needs besides the tests' helpers.
mod bench {
    use std::{
        io::{BufRead, BufReader, Read, Write},
        net::{SocketAddr, TcpStream},
        process::{Child, Command},
        time::Duration,
    };

    /// The pod each key reaches, over one keep-alive connection.
    pub fn placement(address: &str, keys: &[String]) -> anyhow::Result<Vec<String>> {
        let mut stream = BufReader::new(TcpStream::connect(address)?);
        stream.get_ref().set_read_timeout(Some(Duration::from_secs(10)))?;
        keys.iter()
            .map(|key| {
                write!(
                    stream.get_mut(),
                    "GET / HTTP/1.1\r\nHost: web\r\nx-user: {key}\r\n\r\n"
                )?;
                read_pod(&mut stream)
            })
            .collect()
    }

    fn read_pod(stream: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
        let mut length = 0;
        let mut status = String::new();
        stream.read_line(&mut status)?;
        anyhow::ensure!(status.contains(" 200 "), "{status:?}");
        loop {
            let mut line = String::new();
            stream.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; length];
        stream.read_exact(&mut body)?;
        let body = String::from_utf8(body)?;
        body.split_whitespace()
            .find_map(|word| word.strip_prefix("version="))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no pod name in {body:?}"))
    }

    /// The pod each source address reaches (one new connection each).
    pub fn placement_by_source(address: &str, sources: &[String]) -> anyhow::Result<Vec<String>> {
        let target: SocketAddr = address.parse()?;
        sources
            .iter()
            .map(|source| {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(format!("{source}:0").parse()?)?;
                let std_socket = socket2_connect(socket, target)?;
                let mut stream = BufReader::new(std_socket);
                write!(stream.get_mut(), "GET / HTTP/1.1\r\nHost: web\r\n\r\n")?;
                read_pod(&mut stream)
            })
            .collect()
    }

    /// Connects a bound socket, then hands it over as a blocking stream.
    fn socket2_connect(socket: tokio::net::TcpSocket, target: SocketAddr) -> anyhow::Result<TcpStream> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let stream = runtime.block_on(socket.connect(target))?.into_std()?;
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(stream)
    }

    /// Addresses 172.17.254.1… added to docker0 for the run, removed when dropped.
    pub struct SourceAddresses(Vec<String>);

    impl SourceAddresses {
        pub fn add(count: u8) -> SourceAddresses {
            let mut added = Vec::new();
            for host in 1..=count {
                let address = format!("172.17.254.{host}");
                let ok = Command::new("ip")
                    .args(["addr", "add", &format!("{address}/32"), "dev", "docker0"])
                    .status()
                    .is_ok_and(|status| status.success());
                assert!(ok, "adding {address} to docker0");
                added.push(address);
            }
            SourceAddresses(added)
        }

        pub fn addresses(&self) -> Vec<String> {
            self.0.clone()
        }
    }

    impl Drop for SourceAddresses {
        fn drop(&mut self) {
            for address in &self.0 {
                let _ = Command::new("ip")
                    .args(["addr", "del", &format!("{address}/32"), "dev", "docker0"])
                    .status();
            }
        }
    }

    /// nginx on loopback balancing over `servers` with `hash $http_x_user consistent`.
    pub struct Nginx {
        child: Child,
        port: u16,
        dir: std::path::PathBuf,
    }

    impl Nginx {
        pub fn start<'a>(servers: impl Iterator<Item = &'a String>) -> anyhow::Result<Nginx> {
            let port = outrigger_tests::free_port()?;
            let dir = std::env::temp_dir().join(format!("remap-nginx-{port}"));
            std::fs::create_dir_all(&dir)?;
            let upstreams: String = servers.map(|ip| format!("    server {ip}:8080;\n")).collect();
            let config = format!(
                "worker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/error.log;\n\
                 events {{}}\nhttp {{\n  access_log off;\n  client_body_temp_path {dir};\n\
                   proxy_temp_path {dir};\n  fastcgi_temp_path {dir};\n  uwsgi_temp_path {dir};\n\
                   scgi_temp_path {dir};\n  upstream pods {{\n    hash $http_x_user consistent;\n{upstreams}    keepalive 8;\n  }}\n\
                   server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://pods;\n\
                       proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
                dir = dir.display()
            );
            std::fs::write(dir.join("nginx.conf"), config)?;
            let child = Command::new("nginx")
                .args(["-c"])
                .arg(dir.join("nginx.conf"))
                .args(["-g", "daemon off;"])
                .spawn()?;
            let nginx = Nginx { child, port, dir };
            for _ in 0..100 {
                if TcpStream::connect(nginx.address()).is_ok() {
                    return Ok(nginx);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            anyhow::bail!("nginx did not listen")
        }

        pub fn address(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }
    }

    impl Drop for Nginx {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
