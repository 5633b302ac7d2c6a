#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // integration tests fail by panicking

//! The operator on the local cluster, under its own ServiceAccount identity: services become real
//! running workloads, follow edits, report status, are garbage-collected; resyncs write nothing;
//! a second replica takes over when the leader dies.

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    core::v1::{ConfigMap, Pod, Service},
};
use kube::{
    api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams},
    Client,
};
use outrigger_api::{ReplicatedService, ShardedService};
use outrigger_contract::shard_map::{ShardMap, SHARD_MAP_KEY};
use outrigger_tests::{admin_client, eventually, operator_writes_in, OperatorProcess, TestNamespace};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

fn web(replicas: i32) -> ReplicatedService {
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1",
        "kind": "ReplicatedService",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{
                "name": "app", "image": "outrigger/testapp:dev", "imagePullPolicy": "Never",
                "ports": [{"containerPort": 8080}],
            }]}},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            "readiness": {"httpPath": "/healthz", "port": 8080, "periodSeconds": 1},
        }
    }))
    .unwrap()
}

fn cache(shards: i32) -> ShardedService {
    serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1",
        "kind": "ShardedService",
        "metadata": {"name": "cache"},
        "spec": {
            "shards": shards, "replicasPerShard": 2, "protocol": "redis", "port": 6379,
            // A plain ring swap: the shards leave as soon as the new count is in force (live
            // resharding with a migration window is tests/tests/resharding.rs).
            "resharding": {"migrationWindow": "0s"},
            "template": {"spec": {"containers": [{
                "name": "store", "image": "outrigger/testapp:dev", "imagePullPolicy": "Never",
                "env": [{"name": "PORT", "value": "6379"}],
            }]}},
        }
    }))
    .unwrap()
}

async fn ready_replicas(api: &Api<ReplicatedService>, name: &str, want: i32) -> anyhow::Result<Option<()>> {
    let rsvc = api.get(name).await?;
    let status = rsvc.status.unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    Ok((ready
        && status.ready_replicas == want
        && status.replicas == want
        && status.observed_generation == rsvc.metadata.generation)
        .then_some(()))
}

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

async fn wait_gone<K>(api: &Api<K>, name: &str) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{name} to be garbage-collected"), WAIT, || async {
        Ok(api.get_opt(name).await?.is_none().then_some(()))
    })
    .await
}

#[tokio::test]
async fn replicated_service_runs_follows_edits_and_is_garbage_collected() {
    let ns = TestNamespace::create("op-rsvc").unwrap();
    let _operator = OperatorProcess::for_namespace(&ns.name).unwrap();
    let client: Client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let created = services.create(&PostParams::default(), &web(3)).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();

    eventually("3 ready replicas", WAIT, || ready_replicas(&services, "web", 3))
        .await
        .unwrap();
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get("web")
        .await
        .unwrap();
    let service = Api::<Service>::namespaced(client.clone(), &ns.name)
        .get("web")
        .await
        .unwrap();
    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns.name)
        .get("web-outrigger")
        .await
        .unwrap();
    for meta in [&deployment.metadata, &service.metadata, &config.metadata] {
        assert!(owned_by(meta, &uid), "{:?} lacks the owner reference", meta.name);
    }
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().labels("outrigger.dev/replicatedservice=web"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 3);
    assert!(pods
        .items
        .iter()
        .all(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")));
    let status = services.get_status("web").await.unwrap().status.unwrap();
    assert_eq!(
        status.selector.as_deref(),
        Some("outrigger.dev/replicatedservice=web")
    );

    // Edit replicas: the Deployment follows and so does the status.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    eventually("1 ready replica", WAIT, || ready_replicas(&services, "web", 1))
        .await
        .unwrap();
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get("web")
        .await
        .unwrap();
    assert_eq!(deployment.spec.unwrap().replicas, Some(1));

    // Delete: the children are garbage-collected through their owner references.
    services.delete("web", &DeleteParams::foreground()).await.unwrap();
    wait_gone(&Api::<Deployment>::namespaced(client.clone(), &ns.name), "web")
        .await
        .unwrap();
    wait_gone(&Api::<Service>::namespaced(client.clone(), &ns.name), "web")
        .await
        .unwrap();
    wait_gone(
        &Api::<ConfigMap>::namespaced(client.clone(), &ns.name),
        "web-outrigger",
    )
    .await
    .unwrap();
}

async fn shard_map(client: &Client, namespace: &str) -> anyhow::Result<ShardMap> {
    let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get("cache-shard-map")
        .await?;
    let json = map
        .data
        .unwrap_or_default()
        .remove(SHARD_MAP_KEY)
        .unwrap_or_default();
    Ok(ShardMap::from_json(json.as_bytes())?)
}

async fn ready_shards(api: &Api<ShardedService>, want: i32) -> anyhow::Result<Option<()>> {
    let shsvc = api.get("cache").await?;
    let status = shsvc.status.unwrap_or_default();
    Ok((status.ready_shards == want
        && status.shard_statuses.len() == usize::try_from(want)?
        && status.ready_replicas == want * 2
        && status.observed_generation == shsvc.metadata.generation
        && status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"))
    .then_some(()))
}

#[tokio::test]
async fn sharded_service_of_three_by_two_reshards_to_four() {
    let ns = TestNamespace::create("op-shsvc").unwrap();
    let _operator = OperatorProcess::for_namespace(&ns.name).unwrap();
    let client = admin_client().await.unwrap();
    let services: Api<ShardedService> = Api::namespaced(client.clone(), &ns.name);
    services.create(&PostParams::default(), &cache(3)).await.unwrap();

    eventually("3 ready shards", WAIT, || ready_shards(&services, 3))
        .await
        .unwrap();
    let sets = Api::<StatefulSet>::namespaced(client.clone(), &ns.name);
    for shard in 0..3 {
        let sts = sets.get(&format!("cache-shard-{shard}")).await.unwrap();
        assert_eq!(sts.spec.unwrap().replicas, Some(2));
    }
    let before = shard_map(&client, &ns.name).await.unwrap();
    assert_eq!(before.shards.len(), 3);
    let status = services.get_status("cache").await.unwrap().status.unwrap();
    assert!(
        status.shard_statuses.iter().all(|s| s.ready_replicas == 2),
        "{:?}",
        status.shard_statuses
    );

    // Reshard through the scale subresource, like `kubectl scale`.
    services
        .patch_scale(
            "cache",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .unwrap();
    eventually("4 ready shards", WAIT, || ready_shards(&services, 4))
        .await
        .unwrap();
    let after = shard_map(&client, &ns.name).await.unwrap();
    assert_eq!(after.shards.len(), 4);
    assert_eq!(
        before.shards[..],
        after.shards[..3],
        "existing shards keep their place in the map"
    );

    // Shrinking deletes the shards beyond the new count.
    services
        .patch(
            "cache",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"shards": 2}})),
        )
        .await
        .unwrap();
    wait_gone(&sets, "cache-shard-3").await.unwrap();
    wait_gone(&sets, "cache-shard-2").await.unwrap();
    eventually("2 ready shards", WAIT, || ready_shards(&services, 2))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_missing_rollout_strategy_is_a_condition_and_the_operator_waits_without_writing() {
    let ns = TestNamespace::create("op-invalid").unwrap();
    let operator = OperatorProcess::for_namespace(&ns.name).unwrap();
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    let mut rsvc = web(1);
    rsvc.spec.rollout_strategy_ref =
        Some(outrigger_api::common::LocalObjectReference { name: "nope".into() });
    services.create(&PostParams::default(), &rsvc).await.unwrap();

    let condition = eventually("a Degraded condition", WAIT, || async {
        let status = services.get_status("web").await?.status.unwrap_or_default();
        Ok(status
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Degraded" && c.status == "True"))
    })
    .await
    .unwrap();
    assert_eq!(condition.reason, "MissingReference");
    assert!(
        condition.message.contains("spec.rolloutStrategyRef") && condition.message.contains("\"nope\""),
        "{}",
        condition.message
    );

    // No hot loop: nothing is reconciled or written again while nothing changes.
    // The operator's own status write causes one more (writeless) reconcile; let that pass first.
    let reconciles = settled_reconciles(&operator).await;
    let writes = operator_writes_in(&ns.name).unwrap().len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(operator.metric_sum("outrigger_reconcile_total"), reconciles);
    assert_eq!(operator_writes_in(&ns.name).unwrap().len(), writes);
    assert!(Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .get_opt("web")
        .await
        .unwrap()
        .is_none());

    // Creating the strategy unblocks the service.
    let strategy: outrigger_api::RolloutStrategy = serde_json::from_value(json!({
        "apiVersion": "outrigger.dev/v1alpha1", "kind": "RolloutStrategy", "metadata": {"name": "nope"},
        "spec": {"strategy": {"canary": {"steps": [{"setWeight": 50}]}}},
    }))
    .unwrap();
    Api::<outrigger_api::RolloutStrategy>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &strategy)
        .await
        .unwrap();
    eventually("1 ready replica", WAIT, || ready_replicas(&services, "web", 1))
        .await
        .unwrap();
}

/// The reconcile count once it has stopped moving for two seconds.
async fn settled_reconciles(operator: &OperatorProcess) -> f64 {
    let mut last = operator.metric_sum("outrigger_reconcile_total");
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = operator.metric_sum("outrigger_reconcile_total");
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("the operator never stopped reconciling (hot loop?)");
}

async fn reconciled_past(operator: &OperatorProcess, count: f64) {
    eventually("a reconcile", WAIT, || async {
        Ok((operator.metric_sum("outrigger_reconcile_total") > count).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_resync_of_a_settled_service_writes_nothing() {
    let ns = TestNamespace::create("op-resync").unwrap();
    let operator = OperatorProcess::for_namespace(&ns.name).unwrap();
    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    services.create(&PostParams::default(), &web(2)).await.unwrap();
    eventually("2 ready replicas", WAIT, || ready_replicas(&services, "web", 2))
        .await
        .unwrap();
    // Let the last status write and child events settle.
    settled_reconciles(&operator).await;

    let writes_before = operator_writes_in(&ns.name).unwrap();
    // Every touch of the service or a child triggers a full reconcile; none of them changes anything
    // the operator owns. One touch at a time, so the controller cannot merge them into one run.
    let touch = json!({"metadata": {"annotations": {"touch": "1"}}});
    let reconciles = settled_reconciles(&operator).await;
    services
        .patch("web", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    reconciled_past(&operator, reconciles).await;
    let reconciles = settled_reconciles(&operator).await;
    Api::<Service>::namespaced(client.clone(), &ns.name)
        .patch("web", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    reconciled_past(&operator, reconciles).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_after = operator_writes_in(&ns.name).unwrap();
    assert_eq!(
        writes_after[writes_before.len()..],
        [] as [String; 0],
        "a resync wrote to the API server"
    );
}

#[tokio::test]
async fn when_the_leader_dies_the_other_replica_takes_over_within_the_lease_and_nothing_is_written_twice() {
    const LEASE_SECONDS: u32 = 6;
    let ns = TestNamespace::create("op-failover").unwrap();
    let lease = format!("{}-leader", ns.name);
    let mut first =
        OperatorProcess::start(&ns.name, &format!("{}-a", ns.name), &lease, LEASE_SECONDS).unwrap();
    eventually("the first replica to lead", WAIT, || async {
        Ok(first.is_leader().then_some(()))
    })
    .await
    .unwrap();
    let second = OperatorProcess::start(&ns.name, &format!("{}-b", ns.name), &lease, LEASE_SECONDS).unwrap();
    eventually("the second replica to serve metrics", WAIT, || async {
        Ok(second.metric("outrigger_leader").map(drop))
    })
    .await
    .unwrap();

    let client = admin_client().await.unwrap();
    let services: Api<ReplicatedService> = Api::namespaced(client.clone(), &ns.name);
    services.create(&PostParams::default(), &web(1)).await.unwrap();
    eventually("1 ready replica", WAIT, || ready_replicas(&services, "web", 1))
        .await
        .unwrap();
    assert!(!second.is_leader());
    assert_eq!(
        second.metric_sum("outrigger_api_writes_total"),
        0.0,
        "the follower must not write"
    );

    let killed = Instant::now();
    first.kill();
    eventually("the second replica to lead", WAIT, || async {
        Ok(second.is_leader().then_some(()))
    })
    .await
    .unwrap();
    let takeover = killed.elapsed();
    println!("failover took {takeover:?} with a {LEASE_SECONDS}s lease");
    // The lease was renewed at most a renew interval before the kill, and the follower retries
    // every fifth of the lease.
    assert!(
        takeover
            <= Duration::from_secs(u64::from(LEASE_SECONDS))
                + Duration::from_secs(u64::from(LEASE_SECONDS) / 5 + 1),
        "takeover took {takeover:?}"
    );

    // The new leader reconciles the edits.
    services
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await
        .unwrap();
    eventually("2 ready replicas", WAIT, || ready_replicas(&services, "web", 2))
        .await
        .unwrap();

    // Every write the API server recorded for this namespace was made by exactly one replica:
    // the first's writes before the kill plus the second's after add up to the audit log.
    let audited = operator_writes_in(&ns.name).unwrap();
    let second_writes = second.metric_sum("outrigger_api_writes_total");
    assert!(second_writes > 0.0);
    let apply_and_status: Vec<_> = audited.iter().filter(|w| !w.contains(" events")).collect();
    let deployment_writes = apply_and_status
        .iter()
        .filter(|w| w.contains("deployments/web"))
        .count();
    // Created once, scaled once: a second writer would have doubled these.
    assert!(
        deployment_writes <= 2,
        "deployment written {deployment_writes} times: {apply_and_status:?}"
    );
}
