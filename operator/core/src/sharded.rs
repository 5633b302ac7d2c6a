//! Desired children of a ShardedService, and its status from what was observed. Pure.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        core::v1::{
            ConfigMap, Event, PersistentVolumeClaim, PersistentVolumeClaimSpec, Secret, Service, ServicePort,
            ServiceSpec, VolumeMount, VolumeResourceRequirements,
        },
        rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject},
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
    },
};
use outrigger_api::{
    common::condition_type,
    sharded::{ShardAuth, ShardProtocol, ShardStatus},
    ShardedService,
};
use outrigger_contract::{
    shard_map::{Migration, ShardEndpoints, ShardMap, SHARD_MAP_KEY},
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

/// What was observed of one shard's pods: which replica is its primary, and the pod IPs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedShard {
    /// Ordinal of the primary, when one was decided.
    pub primary: Option<i32>,
    /// Pod IP by ordinal, for the pods that have one.
    pub addresses: BTreeMap<i32, String>,
}

/// The rings a shard map names and the shards that exist, from the step a change of the shard
/// count is at ([`crate::reshard::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rings {
    /// Shards of the ring the map routes with.
    pub ring: i32,
    /// Shards of the previous ring the map carries beside it while keys migrate.
    pub previous: Option<i32>,
    /// Shards whose StatefulSets and Services exist (both rings').
    pub keep: i32,
    /// When the migration began, written into the map.
    pub started_at: Option<String>,
}

impl Rings {
    /// No change of the shard count: `shards` shards, one ring.
    pub fn settled(shards: i32) -> Rings {
        Rings {
            ring: shards,
            previous: None,
            keep: shards,
            started_at: None,
        }
    }
}

/// Builds the desired children, each shard's first replica its primary, every endpoint a DNS name.
pub fn build(shsvc: &ShardedService) -> Result<Children, BuildError> {
    build_observed(shsvc, &[], &Rings::settled(shsvc.spec.shards))
}

/// Builds the desired children from what was observed of shard `i` in `observed[i]`: the primary's
/// endpoint comes first in the shard map (the others follow in ordinal order), and a pod with an IP
/// is reached by it (a cluster need not run DNS; the ring is keyed by shard names, so a new IP
/// moves no key); a pod without one by its stable DNS name. `rings` says which shards exist and
/// which the map names.
pub fn build_observed(
    shsvc: &ShardedService,
    observed: &[ObservedShard],
    rings: &Rings,
) -> Result<Children, BuildError> {
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
    for index in 0..rings.keep {
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
        let seen = observed.get(usize::try_from(index).unwrap_or(usize::MAX));
        let primary = seen
            .and_then(|seen| seen.primary)
            .filter(|primary| (0..spec.replicas_per_shard).contains(primary))
            .unwrap_or(0);
        shards.push(ShardEndpoints {
            endpoints: std::iter::once(primary)
                .chain((0..spec.replicas_per_shard).filter(|replica| *replica != primary))
                .map(
                    |replica| match seen.and_then(|seen| seen.addresses.get(&replica)) {
                        Some(ip) => format!("{ip}:{}", spec.port),
                        None => format!("{name}-{replica}.{name}.{}.svc:{}", owner.namespace, spec.port),
                    },
                )
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
        http_key: spec.sharding.http_key.clone(),
        read_policy: spec.read_policy,
        migration: rings.previous.map(|previous| Migration {
            previous_shards: shards
                .iter()
                .take(usize::try_from(previous).unwrap_or(0))
                .cloned()
                .collect(),
            copy_on_read: spec.resharding.copy_on_read,
            started_at: rings.started_at.clone(),
        }),
        shards: shards
            .into_iter()
            .take(usize::try_from(rings.ring).unwrap_or(0))
            .collect(),
        key_ranges: spec.sharding.key_ranges.clone(),
        auth: spec.auth.clone(),
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

/// Name of the Role and RoleBinding that let client pods read the shard map.
pub fn shard_map_reader_name(service: &str) -> String {
    format!("{service}-shard-map-reader")
}

/// The ServiceAccounts of client pods (`spec.serviceAccountName`, `default` when unset), sorted and
/// without repeats, so the binding built from them does not change with pod order.
pub fn client_service_accounts<'a>(accounts: impl IntoIterator<Item = Option<&'a str>>) -> Vec<String> {
    let mut accounts: Vec<String> = accounts
        .into_iter()
        .map(|account| account.filter(|a| !a.is_empty()).unwrap_or("default").to_owned())
        .collect();
    accounts.sort();
    accounts.dedup();
    accounts
}

/// The Role that may get, list and watch exactly the shard-map ConfigMap (and the password Secret
/// of `spec.auth`), and its binding to the ServiceAccounts of the client pods (their ambassadors
/// watch both through the API server).
pub fn shard_map_access(
    shsvc: &ShardedService,
    client_accounts: &[String],
) -> Result<(Role, RoleBinding), BuildError> {
    let owner = Owner::of(shsvc)?;
    let name = shard_map_reader_name(&owner.name);
    let owner_labels = labels::owned_by(labels::SHARDED_SERVICE, &owner.name);
    let read = |resource: &str, name: String| PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec![resource.to_owned()]),
        resource_names: Some(vec![name]),
        verbs: vec!["get".to_owned(), "list".to_owned(), "watch".to_owned()],
        ..PolicyRule::default()
    };
    let role = Role {
        metadata: child_meta(&owner, &name, &owner_labels),
        rules: Some(
            std::iter::once(read("configmaps", shard_map_name(&owner.name)))
                .chain(
                    shsvc
                        .spec
                        .auth
                        .as_ref()
                        .map(|auth| read("secrets", auth.secret_name.clone())),
                )
                .collect(),
        ),
    };
    let binding = RoleBinding {
        metadata: child_meta(&owner, &name, &owner_labels),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name,
        },
        // None rather than empty: the API server stores no empty list, and the cached binding
        // would never match the desired one.
        subjects: (!client_accounts.is_empty()).then(|| {
            client_accounts
                .iter()
                .map(|account| Subject {
                    kind: "ServiceAccount".to_owned(),
                    name: account.clone(),
                    namespace: Some(owner.namespace.clone()),
                    ..Subject::default()
                })
                .collect()
        }),
    };
    Ok((role, binding))
}

/// The settings that make a Redis pod require `password` (`requirepass`) and, as a replica,
/// authenticate to its primary with it (`masterauth`, set first so replication never stops).
pub fn password_settings(password: &str) -> [Vec<String>; 2] {
    ["masterauth", "requirepass"]
        .map(|setting| ["CONFIG", "SET", setting, password].map(str::to_owned).to_vec())
}

/// Why the Secret of `spec.auth` gives no password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("Secret {0:?} (spec.auth.secretName) does not exist")]
    NoSecret(String),
    #[error("Secret {secret:?} has no key {key:?} (spec.auth.key)")]
    NoKey { secret: String, key: String },
    #[error("the value of {key:?} in Secret {secret:?} is not UTF-8 text")]
    NotText { secret: String, key: String },
    #[error("the value of {key:?} in Secret {secret:?} is empty")]
    Empty { secret: String, key: String },
}

/// The password `auth` names in `secret` (`None`: it does not exist). A trailing newline (what
/// `--from-file` of an edited file leaves) is dropped, as the ambassador drops it.
pub fn password(secret: Option<&Secret>, auth: &ShardAuth) -> Result<String, PasswordError> {
    let (name, key) = (auth.secret_name.clone(), auth.key.clone());
    let secret = secret.ok_or_else(|| PasswordError::NoSecret(name.clone()))?;
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(&auth.key))
        .ok_or_else(|| PasswordError::NoKey {
            secret: name.clone(),
            key: key.clone(),
        })?;
    let text = std::str::from_utf8(&value.0).map_err(|_| PasswordError::NotText {
        secret: name.clone(),
        key: key.clone(),
    })?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Err(PasswordError::Empty { secret: name, key });
    }
    Ok(text.to_owned())
}

/// Whether an `AUTH` error says the pod requires no password yet (a new pod): Redis 6 and later,
/// then Redis 5.
pub fn no_password_set(reply: &str) -> bool {
    reply.contains("without any password configured") || reply.contains("no password is set")
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
                primary: None,
                primary_uid: None,
            }
        })
        .collect()
}

/// One observed pod of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaPod {
    /// The StatefulSet ordinal (`<shard>-<ordinal>`).
    pub ordinal: i32,
    pub name: String,
    pub uid: String,
    pub ip: Option<String>,
    pub ready: bool,
}

/// A Redis replication command the operator sends to one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationCommand {
    /// `REPLICAOF NO ONE`: the pod is the primary (a no-op when it already is).
    Lead { pod: String, address: String },
    /// `REPLICAOF <primary ip> <port>`: the pod follows the primary (a no-op when it already does).
    Follow {
        pod: String,
        address: String,
        primary_ip: String,
        port: i32,
    },
}

/// What the operator does for one replicated shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardReplication {
    /// The primary pod `(ordinal, name, uid)`, `None` while no replica can lead.
    pub primary: Option<(i32, String, String)>,
    /// Whether the primary changed from a lost one to a replica (a failover).
    pub promoted: bool,
    pub commands: Vec<ReplicationCommand>,
}

/// Decides the primary of one shard and the commands that make every ready replica follow it. The
/// primary recorded in `previous` stays while that very pod (same UID) is ready; when it is lost
/// (not ready, gone, or recreated empty under its name), the ready replica of lowest ordinal that
/// is not the lost primary's name is promoted. Recomputed every time: the commands are idempotent.
pub fn replication(previous: Option<&ShardStatus>, pods: &[ReplicaPod], port: i32) -> ShardReplication {
    let mut ready: Vec<&ReplicaPod> = pods.iter().filter(|pod| pod.ready && pod.ip.is_some()).collect();
    ready.sort_by_key(|pod| pod.ordinal);
    let recorded =
        previous.and_then(|status| Some((status.primary.as_deref()?, status.primary_uid.as_deref()?)));
    let (primary, promoted) = match recorded {
        Some((name, uid)) => match ready.iter().find(|pod| pod.name == name && pod.uid == uid) {
            Some(kept) => (Some(*kept), false),
            None => (ready.iter().find(|pod| pod.name != name).copied(), true),
        },
        None => (ready.first().copied(), false),
    };
    let Some(primary) = primary else {
        return ShardReplication {
            primary: None,
            promoted: false,
            commands: Vec::new(),
        };
    };
    let address = |pod: &ReplicaPod| format!("{}:{port}", pod.ip.as_deref().unwrap_or_default());
    let primary_ip = primary.ip.clone().unwrap_or_default();
    let commands = std::iter::once(ReplicationCommand::Lead {
        pod: primary.name.clone(),
        address: address(primary),
    })
    .chain(
        ready
            .iter()
            .filter(|pod| pod.name != primary.name)
            .map(|pod| ReplicationCommand::Follow {
                pod: pod.name.clone(),
                address: address(pod),
                primary_ip: primary_ip.clone(),
                port,
            }),
    )
    .collect();
    ShardReplication {
        primary: Some((primary.ordinal, primary.name.clone(), primary.uid.clone())),
        promoted,
        commands,
    }
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
                ..ShardStatus::default()
            },
            ShardStatus {
                name: "b".into(),
                replicas: 2,
                ready_replicas: 2,
                ..ShardStatus::default()
            },
        ];
        let conditions = super::conditions(2, &ready, &[]);
        assert!(conditions[0].status && !conditions[1].status);
    }

    #[test]
    fn while_keys_migrate_the_map_carries_the_previous_ring_and_both_rings_shards_exist() {
        let service = shsvc(
            4,
            json!({"resharding": {"migrationWindow": "1m", "copyOnRead": false}}),
        );
        let rings = Rings {
            ring: 4,
            previous: Some(3),
            keep: 4,
            started_at: Some("2026-12-06T03:00:00Z".into()),
        };
        let children = build_observed(&service, &[], &rings).unwrap();
        let map = map(&children);
        assert_eq!(map.shards.len(), 4);
        let migration = map.migration.unwrap();
        let previous: Vec<&str> = migration
            .previous_shards
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(previous, ["cache-shard-0", "cache-shard-1", "cache-shard-2"]);
        assert!(!migration.copy_on_read);
        assert_eq!(migration.started_at.as_deref(), Some("2026-12-06T03:00:00Z"));

        // Preparing a growth: the new shard exists, the map routes with the old ring alone.
        let preparing = Rings {
            ring: 3,
            previous: None,
            keep: 4,
            started_at: None,
        };
        let children = build_observed(&service, &[], &preparing).unwrap();
        assert_eq!(children.stateful_sets.len(), 4);
        let map = super::tests::map(&children);
        assert_eq!((map.shards.len(), map.migration), (3, None));

        // A shrink migrating: the leaving shard still exists and is still in the previous ring.
        let shrinking = Rings {
            ring: 3,
            previous: Some(4),
            keep: 4,
            started_at: None,
        };
        let children = build_observed(&shsvc(3, json!({})), &[], &shrinking).unwrap();
        assert_eq!(children.stateful_sets.len(), 4);
        let map = super::tests::map(&children);
        assert_eq!(map.shards.len(), 3);
        assert_eq!(map.migration.unwrap().previous_shards.len(), 4);
    }

    #[test]
    fn a_password_secret_goes_into_the_map_and_its_readers_may_read_it() {
        let service = shsvc(2, json!({"auth": {"secretName": "cache-auth"}}));
        let map = map(&build(&service).unwrap());
        let auth = map.auth.unwrap();
        assert_eq!(
            (auth.secret_name.as_str(), auth.key.as_str()),
            ("cache-auth", "password")
        );
        let (role, _) = shard_map_access(&service, &[]).unwrap();
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[1].resources.as_deref(), Some(&["secrets".to_owned()][..]));
        assert_eq!(
            rules[1].resource_names.as_deref(),
            Some(&["cache-auth".to_owned()][..])
        );
        assert_eq!(rules[1].verbs, ["get", "list", "watch"]);
        let (role, _) = shard_map_access(&shsvc(2, json!({})), &[]).unwrap();
        assert_eq!(role.rules.unwrap().len(), 1, "no Secret without auth");
    }

    #[test]
    fn the_password_is_the_named_value_and_every_way_it_can_be_missing_says_so() {
        use k8s_openapi::ByteString;
        let auth = ShardAuth {
            secret_name: "cache-auth".into(),
            key: "password".into(),
        };
        let secret = |value: &[u8]| Secret {
            data: Some(BTreeMap::from([(
                "password".to_owned(),
                ByteString(value.to_vec()),
            )])),
            ..Secret::default()
        };
        assert_eq!(password(Some(&secret(b"s3cret\n")), &auth).unwrap(), "s3cret");
        let cases = [
            (None, "does not exist"),
            (Some(Secret::default()), "has no key \"password\""),
            (Some(secret(b"\xff")), "not UTF-8"),
            (Some(secret(b"\n")), "is empty"),
        ];
        for (secret, message) in cases {
            let error = password(secret.as_ref(), &auth).unwrap_err().to_string();
            assert!(error.contains(message) && error.contains("cache-auth"), "{error}");
        }
    }

    #[test]
    fn a_pod_is_given_its_password_for_clients_and_for_replication() {
        assert_eq!(
            password_settings("s3cret"),
            [
                ["CONFIG", "SET", "masterauth", "s3cret"]
                    .map(str::to_owned)
                    .to_vec(),
                ["CONFIG", "SET", "requirepass", "s3cret"]
                    .map(str::to_owned)
                    .to_vec(),
            ]
        );
        assert!(no_password_set(
            "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"
        ));
        assert!(no_password_set("-ERR Client sent AUTH, but no password is set"));
        assert!(!no_password_set(
            "-WRONGPASS invalid username-password pair or user is disabled."
        ));
    }

    #[test]
    fn clients_may_read_exactly_the_shard_map_through_their_service_accounts() {
        let accounts = client_service_accounts([Some("web"), None, Some("web"), Some("")]);
        assert_eq!(accounts, ["default", "web"]);
        let (role, binding) = shard_map_access(&shsvc(3, json!({})), &accounts).unwrap();
        let rule = &role.rules.as_ref().unwrap()[0];
        assert_eq!(
            rule.resource_names.as_deref(),
            Some(&["cache-shard-map".to_owned()][..])
        );
        assert_eq!(rule.verbs, ["get", "list", "watch"]);
        assert_eq!(binding.role_ref.name, "cache-shard-map-reader");
        let subjects: Vec<_> = binding
            .subjects
            .unwrap()
            .into_iter()
            .map(|s| (s.name, s.namespace.unwrap()))
            .collect();
        assert_eq!(
            subjects,
            [
                ("default".to_owned(), "shop".to_owned()),
                ("web".to_owned(), "shop".to_owned())
            ]
        );
    }

    fn replica(ordinal: i32, uid: &str, ready: bool) -> ReplicaPod {
        ReplicaPod {
            ordinal,
            name: format!("cache-shard-0-{ordinal}"),
            uid: uid.to_owned(),
            ip: Some(format!("10.0.0.{ordinal}")),
            ready,
        }
    }

    fn recorded(ordinal: i32, uid: &str) -> ShardStatus {
        ShardStatus {
            name: "cache-shard-0".into(),
            primary: Some(format!("cache-shard-0-{ordinal}")),
            primary_uid: Some(uid.to_owned()),
            ..ShardStatus::default()
        }
    }

    #[test]
    fn the_first_ready_replica_leads_and_the_others_follow_it() {
        let decision = replication(None, &[replica(1, "b", true), replica(0, "a", true)], 6379);
        assert_eq!(decision.primary, Some((0, "cache-shard-0-0".into(), "a".into())));
        assert!(!decision.promoted);
        assert_eq!(
            decision.commands,
            [
                ReplicationCommand::Lead {
                    pod: "cache-shard-0-0".into(),
                    address: "10.0.0.0:6379".into()
                },
                ReplicationCommand::Follow {
                    pod: "cache-shard-0-1".into(),
                    address: "10.0.0.1:6379".into(),
                    primary_ip: "10.0.0.0".into(),
                    port: 6379
                },
            ]
        );
    }

    #[test]
    fn a_lost_primary_is_replaced_by_a_ready_replica_and_not_by_its_empty_successor() {
        let status = recorded(0, "a");
        let kept = replication(
            Some(&status),
            &[replica(0, "a", true), replica(1, "b", true)],
            6379,
        );
        assert_eq!(kept.primary.unwrap().0, 0);
        let not_ready = replication(
            Some(&status),
            &[replica(0, "a", false), replica(1, "b", true)],
            6379,
        );
        assert_eq!(not_ready.primary.unwrap().0, 1);
        assert!(not_ready.promoted);
        assert_eq!(not_ready.commands.len(), 1, "only the new primary is ready");
        let recreated = replication(
            Some(&status),
            &[replica(0, "a2", true), replica(1, "b", true)],
            6379,
        );
        assert_eq!(
            recreated.primary.unwrap().0,
            1,
            "a pod recreated under the primary's name is empty"
        );
        assert!(matches!(
            &recreated.commands[1],
            ReplicationCommand::Follow { pod, primary_ip, .. } if pod == "cache-shard-0-0" && primary_ip == "10.0.0.1"
        ));
        let alone = replication(Some(&status), &[replica(0, "a2", true)], 6379);
        assert_eq!(
            alone.primary, None,
            "an empty pod never leads a shard that had data"
        );
    }

    #[test]
    fn the_primary_comes_first_in_the_shard_map_by_its_ip_and_the_read_policy_is_carried() {
        let observed = [
            ObservedShard::default(),
            ObservedShard {
                primary: Some(1),
                addresses: BTreeMap::from([(1, "10.0.0.7".to_owned())]),
            },
        ];
        let children = build_observed(
            &shsvc(2, json!({"readPolicy": "preferReplica"})),
            &observed,
            &Rings::settled(2),
        )
        .unwrap();
        let map = map(&children);
        assert_eq!(
            map.read_policy,
            outrigger_contract::shard_map::ReadPolicy::PreferReplica
        );
        assert_eq!(
            map.shards[0].endpoints[0],
            "cache-shard-0-0.cache-shard-0.shop.svc:6379"
        );
        assert_eq!(
            map.shards[1].endpoints,
            ["10.0.0.7:6379", "cache-shard-1-0.cache-shard-1.shop.svc:6379"],
            "a pod with an IP is reached by it"
        );
    }
}
