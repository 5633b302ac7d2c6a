#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! Live resharding and AUTH on the cluster: a ShardedService of three real Redis shards requiring a
//! password from a Secret, a client pod with the injected ambassador reading keys through
//! localhost without a pause, and the shard count changed to four. The operator prepares the new
//! shard, writes the map with the previous ring beside the new one for the migration window,
//! reports the progress in the status, then cuts over. The client sees no error, and the hit rate
//! through the reshard is reported. Before the Secret exists, the ShardedService says so.
//!
//! The reading client is load: run this test under the bench lock
//! (`flock /tmp/outrigger-bench.lock cargo test -p outrigger-tests --test resharding`).
//! The ambassador image comes from `OUTRIGGER_TEST_AMBASSADOR_IMAGE` (default
//! `outrigger/sharding-ambassador:dev`).

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use outrigger_api::{sharded::ReshardPhase, ShardedService};
use outrigger_contract::shard_map::{ShardMap, SHARD_MAP_KEY};
use outrigger_tests::{
    admin_client, ambassador_image, client_image, ensure_crds, eventually, example, http_get_from, is_ready,
    TestNamespace, WebhookOperator,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);

/// One Redis command through the client pod's ambassador: the raw RESP reply, or why none came.
fn through_ambassador(client: &str, words: &[&str]) -> Result<String, String> {
    match http_get_from(&format!("{client}:8080"), &format!("/redis/{}", words.join("/"))) {
        Ok((200, reply)) => Ok(reply),
        Ok((status, body)) => Err(format!("HTTP {status}: {body}")),
        Err(error) => Err(error.to_string()),
    }
}

/// One Redis command sent directly to `address` (a shard pod's IP and port): its first reply line.
fn direct(address: &str, words: &[&str]) -> String {
    use std::io::{Read, Write};
    let Ok(mut stream) =
        std::net::TcpStream::connect_timeout(&address.parse().unwrap(), Duration::from_secs(2))
    else {
        return String::new();
    };
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut request = format!("*{}\r\n", words.len());
    for word in words {
        request.push_str(&format!("${}\r\n{word}\r\n", word.len()));
    }
    stream.write_all(request.as_bytes()).unwrap();
    let mut reply = vec![0; 4096];
    let read = stream.read(&mut reply).unwrap_or(0);
    String::from_utf8_lossy(&reply[..read]).into_owned()
}

#[derive(Default)]
struct Tally {
    hits: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
}

#[tokio::test]
async fn resharding_from_three_to_four_under_load_loses_no_read_and_reports_its_progress() {
    ensure_crds().unwrap();
    let namespace = TestNamespace::create("resharding").unwrap();
    let image = format!("sharding-ambassador={}", ambassador_image());
    let _operator = WebhookOperator::start(&namespace, true, &["--sidecar-image", &image]).unwrap();
    let client = admin_client().await.unwrap();
    let services: Api<ShardedService> = Api::namespaced(client.clone(), &namespace.name);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace.name);

    let mut cache = example("shardedservice.yaml").unwrap();
    cache["spec"]["replicasPerShard"] = json!(1);
    cache["spec"]["resharding"] = json!({"migrationWindow": "20s", "copyOnRead": true});
    cache["spec"]["auth"] = json!({"secretName": "cache-auth"});
    cache["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = json!("Never");
    let cache: ShardedService = serde_json::from_value(cache).unwrap();
    services.create(&PostParams::default(), &cache).await.unwrap();

    // Without its Secret, the service says what is missing.
    let degraded = eventually("the missing Secret shown on the status", WAIT, || async {
        let status = services.get("cache").await?.status.unwrap_or_default();
        Ok(status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True" && c.reason == "AuthSecretUnusable"))
    })
    .await
    .unwrap();
    assert!(degraded.message.contains("cache-auth"), "{}", degraded.message);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace.name);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "cache-auth"},
        "stringData": {"password": "correct-horse"},
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &secret).await.unwrap();
    eventually("three ready shards", WAIT, || async {
        let status = services.get("cache").await?.status.unwrap_or_default();
        Ok((status.ready_shards == 3 && status.ring_shards == 3).then_some(()))
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
            Ok(is_ready(&pod)
                .then(|| pod.status.and_then(|s| s.pod_ip))
                .flatten())
        }
    })
    .await
    .unwrap();

    // The shards require the password: a connection without it is refused.
    let shard_pod = pods.get("cache-shard-0-0").await.unwrap();
    let shard_ip = shard_pod.status.and_then(|s| s.pod_ip).unwrap();
    let refused = eventually("the shard requires its password", WAIT, || {
        let address = format!("{shard_ip}:6379");
        async move {
            let reply = direct(&address, &["GET", "item:0"]);
            Ok(reply.starts_with("-NOAUTH").then_some(reply))
        }
    })
    .await
    .unwrap();
    assert!(refused.contains("NOAUTH"), "{refused}");

    let keys: Vec<String> = (0..200).map(|i| format!("item:{i}")).collect();
    for key in &keys {
        eventually(&format!("SET {key}"), WAIT, || async {
            Ok(
                (through_ambassador(&client_ip, &["SET", key, key]).as_deref() == Ok("+OK\r\n"))
                    .then_some(()),
            )
        })
        .await
        .unwrap();
    }

    // The client reads without a pause, through the reshard and its cut-over.
    let (tally, stop) = (Arc::new(Tally::default()), Arc::new(AtomicBool::new(false)));
    let reader = {
        let (tally, stop, keys, client_ip) = (tally.clone(), stop.clone(), keys.clone(), client_ip.clone());
        std::thread::spawn(move || {
            let mut next = 0usize;
            let mut first_error = None;
            while !stop.load(Ordering::Relaxed) {
                next = (next + 7) % keys.len();
                let key = &keys[next];
                match through_ambassador(&client_ip, &["GET", key]) {
                    Ok(reply) if reply == format!("${}\r\n{key}\r\n", key.len()) => {
                        tally.hits.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(reply) if reply == "$-1\r\n" => {
                        tally.misses.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        tally.errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(format!("GET {key}: {other:?}"));
                    }
                }
            }
            first_error
        })
    };

    services
        .patch(
            "cache",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"shards": 4}})),
        )
        .await
        .unwrap();
    let migrating = eventually(
        "the map carries the previous ring beside the new one",
        WAIT,
        || async {
            let status = services.get("cache").await?.status.unwrap_or_default();
            Ok(status
                .resharding
                .filter(|r| r.phase == ReshardPhase::Migrating)
                .map(|r| (r, status.conditions)))
        },
    )
    .await
    .unwrap();
    assert_eq!((migrating.0.from_shards, migrating.0.to_shards), (3, 4));
    assert!(
        migrating
            .1
            .iter()
            .any(|c| c.type_ == "Resharding" && c.status == "True" && c.reason == "Migrating"),
        "{:?}",
        migrating.1
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace.name);
    let document = configmaps.get("cache-shard-map").await.unwrap().data.unwrap()[SHARD_MAP_KEY].clone();
    let map = ShardMap::from_json(document.as_bytes()).unwrap();
    assert_eq!(map.shards.len(), 4);
    let migration = map.migration.expect("the previous ring while migrating");
    assert_eq!(migration.previous_shards.len(), 3);
    assert!(migration.copy_on_read);

    eventually("the cut-over to four shards", WAIT, || async {
        let status = services.get("cache").await?.status.unwrap_or_default();
        Ok((status.resharding.is_none() && status.ring_shards == 4).then_some(()))
    })
    .await
    .unwrap();
    let document = configmaps.get("cache-shard-map").await.unwrap().data.unwrap()[SHARD_MAP_KEY].clone();
    assert!(ShardMap::from_json(document.as_bytes())
        .unwrap()
        .migration
        .is_none());
    // A few seconds on the new ring alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let first_error = reader.join().unwrap();

    let (hits, misses, errors) = (
        tally.hits.load(Ordering::Relaxed),
        tally.misses.load(Ordering::Relaxed),
        tally.errors.load(Ordering::Relaxed),
    );
    #[allow(clippy::cast_precision_loss)]
    let hit_rate = hits as f64 / (hits + misses).max(1) as f64;
    println!("resharding 3 → 4: {hits} hits, {misses} misses (hit rate {hit_rate:.4}), {errors} errors");
    assert_eq!(errors, 0, "no client error through the reshard: {first_error:?}");
    assert!(hits > 100, "the client kept reading: {hits} hits");
    assert!(
        hit_rate > 0.95,
        "moved keys are found during the migration: {hit_rate}"
    );
}
