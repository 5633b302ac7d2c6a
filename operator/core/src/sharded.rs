//! Desired children of a ShardedService, and its status from what was observed. Pure.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        core::v1::{
            ConfigMap, Event, PersistentVolumeClaim, PersistentVolumeClaimSpec, Service, ServicePort,
            ServiceSpec, VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
    },
};
use outrigger_api::{
    common::condition_type,
    sharded::{ShardProtocol, ShardStatus},
    ShardedService,
};
use outrigger_contract::{
    shard_map::{ShardEndpoints, ShardMap, SHARD_MAP_KEY},
    ApiVersion,
};

use crate::{
    conditions::{degraded, ChildFailure, DesiredCondition},
    labels,
    owner::{child_meta, BuildError, Owner},
};

/// Everything a ShardedService should own.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub stateful_sets: Vec<StatefulSet>,
    /// One headless Service per shard, giving every replica a stable DNS name.
    pub services: Vec<Service>,
    pub shard_map: ConfigMap,
    pub selector: String,
}

/// Name of shard `index` of `service` (its StatefulSet, headless Service and ring node).
pub fn shard_name(service: &str, index: i32) -> String {
    format!("{service}-shard-{index}")
}

/// Name of the shard-map ConfigMap.
pub fn shard_map_name(service: &str) -> String {
    format!("{service}-shard-map")
}

const VOLUME_NAME: &str = "data";

/// Builds the desired children.
pub fn build(shsvc: &ShardedService) -> Result<Children, BuildError> {
    let owner = Owner::of(shsvc)?;
    let spec = &shsvc.spec;
    let owner_labels = labels::owned_by(labels::SHARDED_SERVICE, &owner.name);
    let port_name = match spec.protocol {
        ShardProtocol::Redis => "redis",
        ShardProtocol::Http => "http",
    };
    let mut stateful_sets = Vec::new();
    let mut services = Vec::new();
    let mut shards = Vec::new();
    for index in 0..spec.shards {
        let name = shard_name(&owner.name, index);
        let mut shard_labels = owner_labels.clone();
        shard_labels.insert(labels::SHARD.to_owned(), index.to_string());
        let selector = BTreeMap::from([
            (labels::SHARDED_SERVICE.to_owned(), owner.name.clone()),
            (labels::SHARD.to_owned(), index.to_string()),
        ]);
        let mut template = crate::owner::normalized_template(&spec.template);
        let pod_labels = template
            .metadata
            .get_or_insert_with(ObjectMeta::default)
            .labels
            .get_or_insert_with(BTreeMap::new);
        pod_labels.extend(shard_labels.clone());
        let volume_claim_templates = spec.storage.as_ref().map(|storage| {
            if let Some(first) = template.spec.as_mut().and_then(|pod| pod.containers.first_mut()) {
                let mounts = first.volume_mounts.get_or_insert_with(Vec::new);
                if !mounts.iter().any(|mount| mount.name == VOLUME_NAME) {
                    mounts.push(VolumeMount {
                        name: VOLUME_NAME.to_owned(),
                        mount_path: storage.mount_path.clone(),
                        ..VolumeMount::default()
                    });
                }
            }
            vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some(VOLUME_NAME.to_owned()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".to_owned()]),
                    storage_class_name: storage.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_owned(),
                            Quantity(storage.size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                status: None,
            }]
        });
        stateful_sets.push(StatefulSet {
            metadata: child_meta(&owner, &name, &shard_labels),
            spec: Some(StatefulSetSpec {
                replicas: Some(spec.replicas_per_shard),
                service_name: Some(name.clone()),
                selector: LabelSelector {
                    match_labels: Some(selector.clone()),
                    ..LabelSelector::default()
                },
                // Replicas of a shard are peers that start together; ordinal ordering only slows that.
                pod_management_policy: Some("Parallel".to_owned()),
                template,
                volume_claim_templates,
                ..StatefulSetSpec::default()
            }),
            status: None,
        });
        services.push(Service {
            metadata: child_meta(&owner, &name, &shard_labels),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".to_owned()),
                selector: Some(selector),
                ports: Some(vec![ServicePort {
                    name: Some(port_name.to_owned()),
                    port: spec.port,
                    // Server-side apply on 1.20 keys Service ports by port and protocol.
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                }]),
                ..ServiceSpec::default()
            }),
            status: None,
        });
        shards.push(ShardEndpoints {
            endpoints: (0..spec.replicas_per_shard)
                .map(|replica| format!("{name}-{replica}.{name}.{}.svc:{}", owner.namespace, spec.port))
                .collect(),
            name,
        });
    }
    let map = ShardMap {
        api_version: ApiVersion::default(),
        protocol: spec.protocol,
        function: spec.sharding.function,
        hash: spec.sharding.hash,
        virtual_nodes: u32::try_from(spec.sharding.virtual_nodes).unwrap_or(160),
        hash_tag: spec.sharding.hash_tag.clone(),
        key_header: spec.sharding.key_header.clone(),
        shards,
        key_ranges: spec.sharding.key_ranges.clone(),
    };
    let map_json = map.to_json().map_err(|error| BuildError::Serialize {
        what: "shard map",
        message: error.to_string(),
    })?;
    let selector = BTreeMap::from([(labels::SHARDED_SERVICE.to_owned(), owner.name.clone())]);
    Ok(Children {
        stateful_sets,
        services,
        shard_map: ConfigMap {
            metadata: child_meta(&owner, &shard_map_name(&owner.name), &owner_labels),
            data: Some(BTreeMap::from([(SHARD_MAP_KEY.to_owned(), map_json)])),
            ..ConfigMap::default()
        },
        selector: labels::selector_string(&selector),
    })
}

/// Per-shard readiness from the observed StatefulSets, in shard order (missing ones count as empty).
pub fn shard_statuses(service: &str, shards: i32, observed: &[StatefulSet]) -> Vec<ShardStatus> {
    (0..shards)
        .map(|index| {
            let name = shard_name(service, index);
            let status = observed
                .iter()
                .find(|sts| sts.metadata.name.as_deref() == Some(name.as_str()))
                .and_then(|sts| sts.status.clone())
                .unwrap_or_default();
            ShardStatus {
                name,
                replicas: status.replicas,
                ready_replicas: status.ready_replicas.unwrap_or(0),
            }
        })
        .collect()
}

/// The failures of shards whose StatefulSet cannot create all its pods (e.g. pods a ResourceQuota
/// forbids). The StatefulSet controller of Kubernetes 1.20 records those only as `FailedCreate`
/// Events about the StatefulSet, so `events` are those Events; the latest one about a StatefulSet
/// still short of pods is its failure.
pub fn failures(stateful_sets: &[StatefulSet], events: &[Event]) -> Vec<ChildFailure> {
    stateful_sets
        .iter()
        .filter(|sts| {
            let wanted = sts.spec.as_ref().and_then(|spec| spec.replicas).unwrap_or(1);
            sts.status.as_ref().map_or(0, |status| status.replicas) < wanted
        })
        .filter_map(|sts| {
            let latest = events
                .iter()
                .filter(|event| {
                    event.reason.as_deref() == Some("FailedCreate")
                        && event.involved_object.name == sts.metadata.name
                        && event.involved_object.uid == sts.metadata.uid
                })
                .max_by_key(|event| event.last_timestamp.as_ref().map(|time| time.0))?;
            Some(ChildFailure {
                reason: "FailedCreate",
                message: format!(
                    "StatefulSet {}: FailedCreate: {}",
                    sts.metadata.name.as_deref().unwrap_or_default(),
                    latest.message.as_deref().unwrap_or_default()
                ),
            })
        })
        .collect()
}

/// The name of the ShardedService whose shard is `child` (`<service>-shard-<index>`).
pub fn service_of_shard(child: &str) -> Option<&str> {
    let (service, index) = child.rsplit_once("-shard-")?;
    (!index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())).then_some(service)
}

/// The conditions of a valid ShardedService given its shards' readiness.
pub fn conditions(
    replicas_per_shard: i32,
    shards: &[ShardStatus],
    failures: &[ChildFailure],
) -> Vec<DesiredCondition> {
    let ready_shards = shards
        .iter()
        .filter(|s| s.ready_replicas >= replicas_per_shard)
        .count();
    let settled = shards.iter().all(|s| s.replicas == replicas_per_shard);
    let all_ready = ready_shards == shards.len();
    let message = format!("{ready_shards} of {} shards ready", shards.len());
    vec![
        DesiredCondition::new(
            condition_type::READY,
            all_ready,
            if all_ready { "Available" } else { "ShardsNotReady" },
            message.clone(),
        ),
        if settled && all_ready {
            DesiredCondition::new(condition_type::PROGRESSING, false, "Settled", message)
        } else {
            DesiredCondition::new(condition_type::PROGRESSING, true, "Scaling", message)
        },
        degraded(failures),
    ]
}

#[cfg(test)]
mod tests {
    use outrigger_hashring::HashRing;
    use serde_json::{json, Value};

    use super::*;

    fn shsvc(shards: i32, extra: Value) -> ShardedService {
        let mut spec = json!({
            "shards": shards, "replicasPerShard": 2, "protocol": "redis", "port": 6379,
            "template": {"spec": {"containers": [{"name": "redis", "image": "redis:7"}]}},
        });
        if let (Value::Object(spec), Value::Object(extra)) = (&mut spec, extra) {
            spec.extend(extra);
        }
        serde_json::from_value(json!({
            "apiVersion": "outrigger.dev/v1alpha1", "kind": "ShardedService",
            "metadata": {"name": "cache", "namespace": "shop", "uid": "u-2"},
            "spec": spec,
        }))
        .unwrap()
    }

    fn map(children: &Children) -> ShardMap {
        ShardMap::from_json(children.shard_map.data.as_ref().unwrap()[SHARD_MAP_KEY].as_bytes()).unwrap()
    }

    #[test]
    fn three_shards_of_two_replicas_become_three_stateful_sets_services_and_a_map() {
        let children = build(&shsvc(3, json!({}))).unwrap();
        assert_eq!(children.stateful_sets.len(), 3);
        assert_eq!(children.services.len(), 3);
        let sts = &children.stateful_sets[1];
        assert_eq!(sts.metadata.name.as_deref(), Some("cache-shard-1"));
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(spec.service_name.as_deref(), Some("cache-shard-1"));
        let pod_labels = spec.template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        for (key, value) in spec.selector.match_labels.as_ref().unwrap() {
            assert_eq!(&pod_labels[key], value);
        }
        assert_eq!(
            children.services[1].spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None")
        );
        let map = map(&children);
        assert_eq!(map.shards.len(), 3);
        assert_eq!(
            map.shards[2].endpoints,
            [
                "cache-shard-2-0.cache-shard-2.shop.svc:6379",
                "cache-shard-2-1.cache-shard-2.shop.svc:6379"
            ]
        );
    }

    #[test]
    fn resharding_from_three_to_four_keeps_existing_shards_and_moves_about_a_quarter_of_keys() {
        let before = build(&shsvc(3, json!({}))).unwrap();
        let after = build(&shsvc(4, json!({}))).unwrap();
        assert_eq!(
            before.stateful_sets[..],
            after.stateful_sets[..3],
            "existing shards are untouched"
        );
        let ring = |children: &Children| {
            let map = map(children);
            let names: Vec<String> = map.shards.into_iter().map(|s| s.name).collect();
            HashRing::new(&names, map.virtual_nodes)
        };
        let (old, new) = (ring(&before), ring(&after));
        let moved = (0..10_000)
            .filter(|i| {
                let key = format!("key:{i}");
                old.node_for(key.as_bytes()) != new.node_for(key.as_bytes())
            })
            .count();
        assert!((1_800..3_200).contains(&moved), "{moved} of 10000 keys moved");
    }

    #[test]
    fn storage_adds_a_claim_template_and_mounts_it() {
        let children = build(&shsvc(
            1,
            json!({"storage": {"size": "1Gi", "mountPath": "/data"}}),
        ))
        .unwrap();
        let spec = children.stateful_sets[0].spec.as_ref().unwrap();
        let claims = spec.volume_claim_templates.as_ref().unwrap();
        assert_eq!(
            claims[0]
                .spec
                .as_ref()
                .unwrap()
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"]
                .0,
            "1Gi"
        );
        let mounts = spec.template.spec.as_ref().unwrap().containers[0]
            .volume_mounts
            .as_ref()
            .unwrap();
        assert_eq!(mounts[0].mount_path, "/data");
    }

    #[test]
    fn a_statefulset_short_of_pods_is_degraded_with_its_latest_failed_create_event() {
        let sts: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": "cache-shard-1", "uid": "s-1"},
            "spec": {"replicas": 2, "selector": {}, "serviceName": "cache-shard-1", "template": {}},
            "status": {"replicas": 0},
        }))
        .unwrap();
        let event = |uid: &str, at: &str, message: &str| -> Event {
            serde_json::from_value(json!({
                "metadata": {"name": format!("e-{at}")},
                "involvedObject": {"kind": "StatefulSet", "name": "cache-shard-1", "uid": uid},
                "reason": "FailedCreate", "message": message,
                "lastTimestamp": format!("2026-12-06T00:00:{at}Z"),
            }))
            .unwrap()
        };
        let events = [
            event("s-1", "01", "older"),
            event(
                "s-1",
                "09",
                "pods \"cache-shard-1-0\" is forbidden: must specify limits",
            ),
            event("s-0", "10", "about a deleted StatefulSet of the same name"),
        ];
        let failures = failures(std::slice::from_ref(&sts), &events);
        assert_eq!(
            failures,
            [ChildFailure {
                reason: "FailedCreate",
                message: "StatefulSet cache-shard-1: FailedCreate: pods \"cache-shard-1-0\" is forbidden: must specify limits"
                    .to_owned(),
            }]
        );
        let mut complete = sts;
        complete.status.as_mut().unwrap().replicas = 2;
        assert_eq!(
            super::failures(&[complete], &events),
            [],
            "all pods created: past events are history"
        );
    }

    #[test]
    fn a_shard_name_leads_to_its_service() {
        assert_eq!(service_of_shard("cache-shard-12"), Some("cache"));
        assert_eq!(service_of_shard("my-shard-x"), None);
        assert_eq!(service_of_shard("cache-shard-"), None);
    }

    #[test]
    fn shard_status_and_conditions() {
        let statuses = shard_statuses("cache", 2, &[]);
        assert_eq!(statuses[0].name, "cache-shard-0");
        assert_eq!(statuses[0].ready_replicas, 0);
        let conditions = conditions(2, &statuses, &[]);
        assert!(!conditions[0].status);
        let ready = vec![
            ShardStatus {
                name: "a".into(),
                replicas: 2,
                ready_replicas: 2,
            },
            ShardStatus {
                name: "b".into(),
                replicas: 2,
                ready_replicas: 2,
            },
        ];
        let conditions = super::conditions(2, &ready, &[]);
        assert!(conditions[0].status && !conditions[1].status);
    }
}
