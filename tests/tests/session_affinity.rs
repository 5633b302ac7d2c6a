#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! Session affinity to pods on the local cluster, with the operator as a local process: a
//! ReplicatedService with `sessionAffinity` and no rollout gets the request splitter in front, which
//! hashes each key to one of the ready pods it reads from the EndpointSlices. The test app answers
//! with its pod's name (`VERSION` from the downward API), so each answer says which pod served it.
//!
//! During a rollout the key picks a track by the weights, then a pod within the track by the same
//! hashing: a client stays on one pod, and a stable-track key on the pod it had before.
//!
//! Images: `OUTRIGGER_SPLITTER_IMAGE` (default `outrigger/request-splitter:dev`) and
//! `OUTRIGGER_TESTAPP_IMAGE` (default `outrigger/testapp:dev`, with `/-/unready`).

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use outrigger_api::{rollout::RolloutPhase, ReplicatedService, RolloutStrategy};
use outrigger_tests::{
    admin_client, eventually, http_exchange, image, splitter_fronted_address, OperatorProcess, TestNamespace,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);
/// Session keys sent; enough that each of five pods gets some, few enough for a quick round.
const KEYS: usize = 300;

fn operator(namespace: &str) -> OperatorProcess {
    OperatorProcess::with_splitter(namespace).unwrap()
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
    let mut headers = vec![("Host", "web"), ("Content-Length", "0")];
    headers.extend(user.map(|user| ("x-user", user)));
    let reply = http_exchange(address, method, path, &headers, Duration::from_secs(10))?;
    Ok((reply.status, reply.body))
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

#[tokio::test]
async fn during_a_rollout_each_key_stays_on_one_pod_and_stable_keys_keep_their_pod() {
    let ns = TestNamespace::create("affinity-rollout").unwrap();
    let _operator = operator(&ns.name);
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let strategies: Api<RolloutStrategy> = Api::namespaced(client.clone(), &ns.name);
    let kube_services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(client, &ns.name);
    let strategy: RolloutStrategy = serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "RolloutStrategy", "metadata": {"name": "canary"},
        "spec": {"strategy": {"canary": {"steps": [{"setWeight": 40}, {"pause": {}}]}}},
    }))
    .unwrap();
    strategies
        .create(&PostParams::default(), &strategy)
        .await
        .unwrap();
    let mut sticky = serde_json::to_value(service(3)).unwrap();
    sticky["spec"]["rolloutStrategyRef"] = json!({"name": "canary"});
    services
        .create(&PostParams::default(), &serde_json::from_value(sticky).unwrap())
        .await
        .unwrap();
    let address = eventually("the Service leading to the splitter", WAIT, || async {
        splitter_fronted_address(&kube_services, "web").await
    })
    .await
    .unwrap();
    let before = placement_once("every pod serving some keys", &address, |placement| {
        pods_of(placement).len() == 3
    })
    .await;

    // A new template: canary pods beside the stable ones, 40% of keys on the canary track.
    let mut template = serde_json::to_value(service(3)).unwrap()["spec"]["template"].clone();
    template["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "REVISION", "value": "2"}));
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": template}})),
        )
        .await
        .unwrap();
    eventually("the rollout paused at 40%", WAIT, || async {
        let rollout = services.get("web").await?.status.and_then(|s| s.rollout);
        Ok(rollout
            .filter(|r| r.phase == RolloutPhase::Paused && r.canary_weight == 40)
            .map(drop))
    })
    .await
    .unwrap();
    let tracks = eventually("canary pods ready", WAIT, || async {
        let list = pods
            .list(&ListParams::default().labels("outrigger.dev/replicatedservice=web"))
            .await?;
        let ready = ready_pods(&pods).await?;
        let tracks: BTreeMap<String, String> = list
            .items
            .into_iter()
            .filter(|pod| {
                pod.metadata
                    .name
                    .as_ref()
                    .is_some_and(|name| ready.contains_key(name))
            })
            .filter_map(|pod| {
                let track = pod.metadata.labels?.get("outrigger.dev/track")?.clone();
                Some((pod.metadata.name?, track))
            })
            .collect();
        let canaries = tracks.values().filter(|track| *track == "canary").count();
        Ok((canaries > 0 && tracks.len() > 3).then_some(tracks))
    })
    .await
    .unwrap();
    let during = placement_once("keys on both tracks", &address, |placement| {
        placement
            .iter()
            .any(|pod| tracks.get(pod).is_some_and(|track| track == "canary"))
    })
    .await;
    // Each key on one pod, round after round.
    for _ in 0..2 {
        assert_eq!(
            placement_now(&address).await.unwrap(),
            during,
            "a key changed pods mid-rollout"
        );
    }
    let on_canary = during
        .iter()
        .filter(|pod| tracks.get(*pod).is_some_and(|track| track == "canary"))
        .count();
    let share = on_canary as f64 / KEYS as f64;
    println!("rollout at 40%: {on_canary} of {KEYS} keys on the canary track ({share:.2})");
    assert!((0.2..=0.6).contains(&share), "{share}");
    // A key left on the stable track stays on the pod it had before the rollout, if that pod
    // still serves (the stable track may give up pods to the canary's share).
    let stable_pods: Vec<&String> = tracks
        .iter()
        .filter(|(_, track)| *track == "stable")
        .map(|(pod, _)| pod)
        .collect();
    let mut kept = 0;
    for key in 0..KEYS {
        let on_stable = tracks.get(&during[key]).is_some_and(|track| track == "stable");
        if on_stable && stable_pods.contains(&&before[key]) {
            assert_eq!(
                before[key],
                during[key],
                "stable key {key} changed pods; before {:?}, during {:?}, tracks {tracks:?}",
                pods_of(&before),
                pods_of(&during)
            );
            kept += 1;
        }
    }
    assert!(kept > 0, "no stable key to check: {tracks:?}");
}
