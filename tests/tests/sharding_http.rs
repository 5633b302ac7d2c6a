#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! HTTP sharding on the cluster: a ShardedService of three HTTP shards (the test app, answering with
//! its pod's name) with `protocol: http` and `keyHeader: x-tenant`, and a client pod naming it, into
//! which the webhook injects the sharding ambassador on 127.0.0.1:8081. Requests through that
//! ambassador (reached through a relay container of the client pod, the test app relaying the pod
//! IP to the ambassador's loopback port) land on the pod of the shard the ring names for their key,
//! over one keep-alive client connection; a request without a key gets a 400 with the reason.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::Duration,
};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PostParams};
use outrigger_api::ShardedService;
use outrigger_contract::shard_map::{ShardMap, ShardProtocol, SHARD_MAP_KEY};
use outrigger_hashring::twemproxy::{KetamaRing, KeyHash};
use outrigger_tests::{
    admin_client, ambassador_image, client_image, create_injected, ensure_crds, eventually, is_ready,
    TestNamespace, WebhookOperator,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);

/// The relay container every client pod here gets: the test app relaying `pod IP:7000` to the
/// ambassador on the pod's loopback, byte for byte (`kubectl port-forward` would need socat on the
/// node).
const RELAY_PORT: u16 = 7000;

fn relay_container(target: &str) -> serde_json::Value {
    json!({
        "name": "relay",
        "image": client_image(),
        "imagePullPolicy": "Never",
        "args": ["relay", format!("0.0.0.0:{RELAY_PORT}"), target],
    })
}

/// A keep-alive HTTP/1.1 client on one connection.
struct Http {
    reader: BufReader<TcpStream>,
}

struct Answer {
    status: u16,
    shard: Option<String>,
    body: String,
}

impl Http {
    fn connect(ip: &str) -> Http {
        let stream = TcpStream::connect((ip, RELAY_PORT)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Http {
            reader: BufReader::new(stream),
        }
    }

    fn get(&mut self, path: &str, tenant: Option<&str>) -> Answer {
        let tenant = tenant.map(|t| format!("x-tenant: {t}\r\n")).unwrap_or_default();
        let request = format!("GET {path} HTTP/1.1\r\nhost: web\r\n{tenant}\r\n");
        self.reader.get_mut().write_all(request.as_bytes()).unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line {status_line:?}"));
        let (mut length, mut shard) = (0, None);
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "x-outrigger-shard" => shard = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        Answer {
            status,
            shard,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

#[tokio::test]
async fn each_http_request_lands_on_the_pod_of_the_shard_the_ring_names_for_its_key() {
    ensure_crds().unwrap();
    let namespace = TestNamespace::create("sharding-http").unwrap();
    let image = format!("sharding-ambassador={}", ambassador_image());
    let _operator = WebhookOperator::start(&namespace, true, &["--sidecar-image", &image]).unwrap();
    let client = admin_client().await.unwrap();
    let services: Api<ShardedService> = Api::namespaced(client.clone(), &namespace.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace.name);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace.name);

    // Each shard pod answers `version=<its pod name>`.
    let web: ShardedService = serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1",
        "kind": "ShardedService",
        "metadata": {"name": "web"},
        "spec": {
            "shards": 3,
            "protocol": "http",
            "port": 8080,
            "sharding": {"function": "ketama", "hash": "fnv1a64", "hashTag": "{}", "keyHeader": "x-tenant"},
            "template": {"spec": {"containers": [{
                "name": "app",
                "image": client_image(),
                "imagePullPolicy": "Never",
                "ports": [{"name": "http", "containerPort": 8080}],
                "env": [{"name": "VERSION", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            }]}},
        },
    }))
    .unwrap();
    services.create(&PostParams::default(), &web).await.unwrap();

    let map = eventually("a shard map with an endpoint for every shard", WAIT, || {
        let configmaps = configmaps.clone();
        async move {
            let Some(data) = configmaps.get_opt("web-shard-map").await?.and_then(|c| c.data) else {
                return Ok(None);
            };
            let map = ShardMap::from_json(data[SHARD_MAP_KEY].as_bytes())?;
            Ok((map.shards.len() == 3 && map.shards.iter().all(|s| !s.endpoints.is_empty())).then_some(map))
        }
    })
    .await
    .unwrap();
    assert_eq!(map.protocol, ShardProtocol::Http);
    assert_eq!(map.key_header.as_deref(), Some("x-tenant"));

    let app: Pod = serde_json::from_value(json!({
        "metadata": {"name": "client", "annotations": {"outrigger.dev/sharded-service": "web:8081"}},
        "spec": {"containers": [
            {"name": "app", "image": client_image(), "imagePullPolicy": "Never"},
            relay_container("127.0.0.1:8081"),
        ]},
    }))
    .unwrap();
    create_injected(&pods, &app, "sharding-ambassador", WAIT)
        .await
        .unwrap();
    let client_ip = eventually("the client pod and its ambassador ready", WAIT, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("client").await?;
            Ok(is_ready(&pod)
                .then(|| pod.status.and_then(|s| s.pod_ip))
                .flatten())
        }
    })
    .await
    .unwrap();

    let names: Vec<String> = map.shards.iter().map(|s| s.name.clone()).collect();
    let ring = KetamaRing::with_names(&names);
    let shard_of = |key: &str| {
        names[ring
            .index_for_key(key.as_bytes(), KeyHash::Fnv1a64, Some((b'{', b'}')))
            .unwrap()]
        .clone()
    };

    // fnv1a64 puts keys that differ only in their last bytes close together on the ring, so the
    // keys are chosen to cover every shard: the first key the ring gives each shard, then more.
    let mut keys: Vec<String> = Vec::new();
    for name in &names {
        let key = (0..)
            .map(|i| format!("tenant-{i}"))
            .find(|key| shard_of(key) == *name)
            .unwrap();
        keys.push(key);
    }
    keys.extend((0..50).map(|i| format!("{i}:tenant")));
    keys.extend((0..10).map(|i| format!("tenant:{{{i}}}:orders")));

    // Shard pods may still be starting when the map first lists them: wait for every shard to answer.
    eventually("every shard answers through the ambassador", WAIT, || async {
        let mut http = Http::connect(&client_ip);
        let answers: Vec<(u16, Option<String>, String)> = keys[..3]
            .iter()
            .map(|key| http.get("/orders", Some(key)))
            .map(|answer| (answer.status, answer.shard, answer.body))
            .collect();
        eprintln!("warming up: {answers:?}");
        Ok(answers.iter().all(|(status, _, _)| *status == 200).then_some(()))
    })
    .await
    .unwrap();

    let mut http = Http::connect(&client_ip);
    let mut seen = BTreeSet::new();
    for (i, key) in keys.iter().enumerate() {
        let home = shard_of(key);
        let answer = http.get(&format!("/orders/{i}"), Some(key));
        assert_eq!(answer.status, 200, "{key}: {}", answer.body);
        assert_eq!(answer.shard.as_deref(), Some(home.as_str()), "{key}");
        assert!(
            answer.body.starts_with(&format!("version={home}-")),
            "{key} served by a pod of {home}: {}",
            answer.body
        );
        seen.insert(home);
    }
    assert_eq!(seen.len(), 3, "the keys spread over every shard");

    let missing = http.get("/orders/1", None);
    assert_eq!(missing.status, 400);
    assert_eq!(missing.body, "no key: the request has no x-tenant header\n");
}
