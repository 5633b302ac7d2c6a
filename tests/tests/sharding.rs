#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! Sharding acceptance on the cluster: a ShardedService of three shards of two real Redis replicas
//! each, and a client pod naming it in `outrigger.dev/sharded-service`, into which the webhook
//! injects the sharding ambassador on 127.0.0.1:6379. The client writes through its localhost
//! ambassador (the testapp's `/redis/...` endpoint, as images have no shell); every key is found on
//! the primary of the shard the ring names, asked directly by pod IP. Then a shard's primary is
//! killed: only that shard's keys fail, and only until the operator promotes its replica; the
//! ambassador follows the new map without a restart.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams};
use outrigger_api::ShardedService;
use outrigger_contract::shard_map::{ShardMap, SHARD_MAP_KEY};
use outrigger_hashring::twemproxy::{KetamaRing, KeyHash};
use outrigger_tests::{
    admin_client, ambassador_image, client_image, ensure_crds, eventually, example, http_get_from, is_ready,
    kubectl_ok, TestNamespace, WebhookOperator,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);
fn pod_ip(pod: &Pod) -> Option<String> {
    pod.status.as_ref()?.pod_ip.clone()
}

/// Percent-encodes the braces of hash-tagged keys for a path segment.
fn segment(word: &str) -> String {
    word.replace('{', "%7B").replace('}', "%7D")
}

/// One Redis command through the client pod's ambassador: `(HTTP status, raw RESP reply)`.
fn through_ambassador(client: &str, words: &[&str]) -> (u16, String) {
    let path: Vec<String> = words.iter().map(|w| segment(w)).collect();
    http_get_from(&format!("{client}:8080"), &format!("/redis/{}", path.join("/")))
        .unwrap_or((0, String::new()))
}

/// One Redis command sent directly to `address` (a shard replica's pod IP and port).
fn direct(address: &str, words: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(2)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut request = format!("*{}\r\n", words.len());
    for word in words {
        request.push_str(&format!("${}\r\n{word}\r\n", word.len()));
    }
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = vec![0; 4096];
    let read = stream.read(&mut reply).unwrap();
    String::from_utf8_lossy(&reply[..read]).into_owned()
}

fn bulk(value: &str) -> String {
    format!("${}\r\n{value}\r\n", value.len())
}

/// The primary pod (name, IP:port) of every shard, from the status and the pods.
async fn primaries(
    services: &Api<ShardedService>,
    pods: &Api<Pod>,
) -> anyhow::Result<Option<BTreeMap<String, (String, String)>>> {
    let cache = services.get("cache").await?;
    let listed = pods.list(&ListParams::default()).await?;
    let mut primaries = BTreeMap::new();
    for shard in cache.status.map(|s| s.shard_statuses).unwrap_or_default() {
        let (Some(primary), true) = (shard.primary.clone(), shard.ready_replicas == 2) else {
            return Ok(None);
        };
        let Some(pod) = listed
            .items
            .iter()
            .find(|pod| pod.metadata.name.as_deref() == Some(primary.as_str()) && is_ready(pod))
        else {
            return Ok(None);
        };
        let Some(ip) = pod_ip(pod) else {
            return Ok(None);
        };
        primaries.insert(shard.name, (primary, format!("{ip}:6379")));
    }
    Ok((primaries.len() == 3).then_some(primaries))
}

#[tokio::test]
async fn a_client_pod_writes_through_its_ambassador_onto_the_shards_the_ring_names_and_survives_a_failover() {
    ensure_crds().unwrap();
    let namespace = TestNamespace::create("sharding").unwrap();
    let image = format!("sharding-ambassador={}", ambassador_image());
    let _operator = WebhookOperator::start(&namespace, true, &["--sidecar-image", &image]).unwrap();
    let client = admin_client().await.unwrap();
    let services: Api<ShardedService> = Api::namespaced(client.clone(), &namespace.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace.name);

    let mut cache = example("shardedservice.yaml").unwrap();
    cache["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("Never");
    let cache: ShardedService = serde_json::from_value(cache).unwrap();
    services.create(&PostParams::default(), &cache).await.unwrap();
    let before = eventually("every shard has a ready primary and replica", WAIT, || {
        primaries(&services, &pods)
    })
    .await
    .unwrap();

    let app: Pod = serde_json::from_value(json!({
        "metadata": {"name": "client", "annotations": {"outrigger.dev/sharded-service": "cache"}},
        "spec": {"containers": [{"name": "app", "image": client_image(), "imagePullPolicy": "Never"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &app).await.unwrap();
    let client_ip = eventually("the client pod and its ambassador ready", WAIT, || {
        let pods = pods.clone();
        async move {
            let pod = pods.get("client").await?;
            Ok(is_ready(&pod).then(|| pod_ip(&pod)).flatten())
        }
    })
    .await
    .unwrap();
    let stored = pods.get("client").await.unwrap();
    let containers: Vec<&str> = stored
        .spec
        .as_ref()
        .unwrap()
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(containers, ["sharding-ambassador", "app"]);

    // The ring the ambassador routes with: the shard names of the map the operator wrote.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace.name);
    let document = configmaps.get("cache-shard-map").await.unwrap().data.unwrap()[SHARD_MAP_KEY].clone();
    let map = ShardMap::from_json(document.as_bytes()).unwrap();
    let names: Vec<String> = map.shards.iter().map(|s| s.name.clone()).collect();
    let ring = KetamaRing::with_names(&names);
    let shard_of = |key: &str| {
        names[ring
            .index_for_key(key.as_bytes(), KeyHash::Fnv1a64, Some((b'{', b'}')))
            .unwrap()]
        .clone()
    };

    let mut keys: Vec<String> = (0..24).map(|i| format!("item:{i}:{}", i * 7919)).collect();
    let tagged: Vec<String> = ["cart", "profile", "orders", "visits"]
        .iter()
        .map(|part| format!("user:{{42}}:{part}"))
        .collect();
    keys.extend(tagged.iter().cloned());
    for key in &keys {
        let (status, reply) = eventually(&format!("SET {key} through the ambassador"), WAIT, || async {
            let (status, reply) = through_ambassador(&client_ip, &["SET", key, key]);
            Ok((reply == "+OK\r\n").then_some((status, reply)))
        })
        .await
        .unwrap();
        assert_eq!((status, reply.as_str()), (200, "+OK\r\n"));
    }
    for key in &keys {
        let home = shard_of(key);
        for (shard, (_, address)) in &before {
            let reply = direct(address, &["GET", key]);
            if *shard == home {
                assert_eq!(reply, bulk(key), "{key} is on {shard}, as the ring says");
            } else {
                assert_eq!(reply, "$-1\r\n", "{key} is not on {shard}");
            }
        }
    }
    let tag_home = shard_of(&tagged[0]);
    assert!(
        tagged.iter().all(|key| shard_of(key) == tag_home),
        "hash-tagged keys are together"
    );
    let count = direct(
        &before[&tag_home].1,
        &["EXISTS", &tagged[0], &tagged[1], &tagged[2], &tagged[3]],
    );
    assert_eq!(count, ":4\r\n", "all four tagged keys on one primary");

    // Replication is asynchronous (and Redis waits a few seconds before a first sync): the replica
    // holds the tagged keys before its primary is killed, as in any failover worth testing.
    let replica_address = {
        let listed = pods.list(&ListParams::default()).await.unwrap();
        let replica = listed
            .items
            .iter()
            .find(|pod| {
                let name = pod.metadata.name.as_deref().unwrap_or_default();
                name.starts_with(&format!("{tag_home}-")) && name != before[&tag_home].0
            })
            .expect("the shard's replica pod");
        format!("{}:6379", pod_ip(replica).expect("the replica's IP"))
    };
    eventually("the replica holds the tagged keys", WAIT, || async {
        let count = direct(
            &replica_address,
            &["EXISTS", &tagged[0], &tagged[1], &tagged[2], &tagged[3]],
        );
        Ok((count == ":4\r\n").then_some(()))
    })
    .await
    .unwrap();

    // Kill the primary of the shard with the tagged keys.
    let (victim, _) = before[&tag_home].clone();
    kubectl_ok(&[
        "delete",
        "pod",
        "-n",
        &namespace.name,
        &victim,
        "--grace-period=0",
        "--force",
    ])
    .unwrap();
    let elsewhere: Vec<&String> = keys.iter().filter(|key| shard_of(key) != tag_home).collect();
    assert!(!elsewhere.is_empty(), "some keys live on the other shards");
    let started = std::time::Instant::now();
    let mut failed_during_outage = 0;
    let recovered = loop {
        assert!(started.elapsed() < WAIT, "the shard never recovered");
        // Keys of other shards never fail.
        for key in elsewhere.iter().take(4) {
            assert_eq!(
                through_ambassador(&client_ip, &["GET", key]).1,
                bulk(key),
                "{key} on a healthy shard answers during the outage"
            );
        }
        let reply = through_ambassador(&client_ip, &["GET", &tagged[0]]).1;
        if reply == bulk(&tagged[0]) && started.elapsed() > Duration::from_secs(1) {
            let after = primaries(&services, &pods).await.unwrap();
            if let Some(after) = after.filter(|after| after[&tag_home].0 != victim) {
                break after;
            }
        } else {
            failed_during_outage += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        failed_during_outage > 0,
        "the lost primary's keys fail until a replica is promoted"
    );
    // The promoted replica had the data: every tagged key reads back through the ambassador, and
    // writes go to the new primary.
    for key in &tagged {
        assert_eq!(through_ambassador(&client_ip, &["GET", key]).1, bulk(key));
    }
    assert_eq!(
        through_ambassador(&client_ip, &["SET", &tagged[0], "after"]).1,
        "+OK\r\n"
    );
    assert_eq!(
        direct(&recovered[&tag_home].1, &["GET", &tagged[0]]),
        bulk("after")
    );
    let ambassador_restarts: i32 = pods
        .get("client")
        .await
        .unwrap()
        .status
        .and_then(|s| s.container_statuses)
        .unwrap_or_default()
        .iter()
        .filter(|c| c.name == "sharding-ambassador")
        .map(|c| c.restart_count)
        .sum();
    assert_eq!(
        ambassador_restarts, 0,
        "the ambassador followed the new map without a restart"
    );
}
