//! `ShardedService`: keys partitioned over shards, each shard optionally replicated.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use outrigger_contract::duration::ConfigDuration;

use crate::common::{Condition, SidecarSpec};
/// Declared with the shard map, which carries them unchanged.
pub use outrigger_contract::shard_map::{
    HttpKey, KeyHash, KeyRange, ReadPolicy, ShardAuth, ShardProtocol, ShardingFunction,
};

/// A sharded service: `shards` StatefulSets of `replicasPerShard` replicas each, and a shard map
/// the sharding ambassador of client pods reads to route every key to its shard.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "outrigger.dev",
    version = "v1alpha1",
    kind = "ShardedService",
    namespaced,
    shortname = "shsvc",
    category = "outrigger",
    status = "ShardedServiceStatus",
    scale(
        spec_replicas_path = ".spec.shards",
        status_replicas_path = ".status.shards",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Shards",
        type_ = "integer",
        json_path = ".spec.shards",
        description = "Desired shards"
    ),
    printcolumn(
        name = "Per-Shard",
        type_ = "integer",
        json_path = ".spec.replicasPerShard",
        description = "Replicas per shard"
    ),
    printcolumn(
        name = "Ready-Shards",
        type_ = "integer",
        json_path = ".status.readyShards",
        description = "Shards with every replica ready"
    ),
    printcolumn(
        name = "Protocol",
        type_ = "string",
        json_path = ".spec.protocol",
        description = "Ambassador protocol"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the service is or is not ready"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct ShardedServiceSpec {
    /// Number of shards. Also settable through the scale subresource (`kubectl scale` changes the
    /// shard count); with a consistent-hash function only about 1/N of the keys move.
    #[schemars(range(min = 1, max = 1024))]
    pub shards: i32,
    /// Replicas of every shard (a replicated sharded service).
    #[serde(default = "default_replicas_per_shard")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas_per_shard: i32,
    /// With more than one replica per shard, where the ambassadors send reads: `primary` (the
    /// default), `preferReplica` or `any`. Writes always go to the shard's primary, which the
    /// replicas follow with Redis replication; the operator promotes a replica when the primary
    /// is lost.
    #[serde(default)]
    pub read_policy: ReadPolicy,
    /// How keys map to shards.
    #[serde(default)]
    pub sharding: ShardingSpec,
    /// Protocol the sharding ambassador speaks to clients and shards: `redis` or `http`.
    pub protocol: ShardProtocol,
    /// Port every shard replica serves on.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Pod template of the shard replicas.
    #[schemars(schema_with = "crate::schema::pod_template")]
    pub template: PodTemplateSpec,
    /// Persistent storage per replica; without it shards keep data only for the pod's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<ShardStorage>,
    /// Sidecars to attach to every shard replica.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 6))]
    pub sidecars: Vec<SidecarSpec>,
    /// How a change of `shards` moves keys: new shards are prepared while the ambassadors keep
    /// the old ring, then the ambassadors hold both rings for the migration window (reads of a
    /// moved key that miss on its new shard are served by its previous one), then the operator
    /// cuts over to the new ring alone.
    #[serde(default)]
    pub resharding: ReshardingSpec,
    /// The password the shards require: the operator sets it on every Redis shard (`requirepass`,
    /// and `masterauth` for replicas) and the ambassadors authenticate with it, following changes
    /// of the Secret (in the service's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ShardAuth>,
}

/// How a change of the shard count moves keys.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReshardingSpec {
    /// How long the ambassadors keep the previous ring beside the new one once every new shard is
    /// ready (`30s`, `5m`, `1h`): long enough for the working set to be read (and copied) or
    /// written again. `0s` cuts over at once, as a plain ring swap.
    #[serde(default = "default_migration_window")]
    pub migration_window: ConfigDuration,
    /// Whether a read served by a key's previous shard copies the key (value and expiry) to its
    /// new shard, so it is found there after the cut-over.
    #[serde(default = "default_copy_on_read")]
    pub copy_on_read: bool,
}

impl Default for ReshardingSpec {
    fn default() -> Self {
        ReshardingSpec {
            migration_window: default_migration_window(),
            copy_on_read: default_copy_on_read(),
        }
    }
}

fn default_migration_window() -> ConfigDuration {
    ConfigDuration(std::time::Duration::from_secs(300))
}

fn default_copy_on_read() -> bool {
    true
}

fn default_replicas_per_shard() -> i32 {
    1
}

/// How keys map to shards.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardingSpec {
    /// `ketama` (consistent hash ring, twemproxy-compatible), `jump` (jump consistent hash),
    /// `rendezvous` (highest random weight) or `keyRange` (explicit ranges in `keyRanges`).
    #[serde(default)]
    pub function: ShardingFunction,
    /// Hash of the key: `fnv1a64`, `murmur3` or `md5`.
    #[serde(default)]
    pub hash: KeyHash,
    /// Points per shard on a `ketama` ring.
    #[serde(default = "default_virtual_nodes")]
    #[schemars(range(min = 1, max = 1000))]
    pub virtual_nodes: i32,
    /// Two characters that delimit the hashed part of a key, e.g. `{}` so `user:{42}:cart` and
    /// `user:{42}:profile` land on the same shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 2, max = 2))]
    pub hash_tag: Option<String>,
    /// With `keyRange`: which shard owns which keys, by lexicographic range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_ranges: Vec<KeyRange>,
    /// With protocol `http`: header carrying the key; without it (and without `httpKey`) the
    /// request path is the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub key_header: Option<String>,
    /// With protocol `http`: where the ambassador reads a request's key, exactly one of `header`
    /// (a header name), `pathSegment` (a path segment by position from 0) or `queryParameter` (a
    /// query parameter name). Takes precedence over `keyHeader`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_key: Option<HttpKey>,
}

impl Default for ShardingSpec {
    fn default() -> Self {
        ShardingSpec {
            function: ShardingFunction::default(),
            hash: KeyHash::default(),
            virtual_nodes: default_virtual_nodes(),
            hash_tag: None,
            key_ranges: Vec::new(),
            key_header: None,
            http_key: None,
        }
    }
}

fn default_virtual_nodes() -> i32 {
    160
}

/// Persistent storage of each shard replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardStorage {
    /// Size of each replica's volume, e.g. `1Gi`.
    #[schemars(pattern(r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"))]
    pub size: String,
    /// StorageClass of the volumes; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// Where the volume is mounted in the first container.
    #[schemars(pattern(r"^/"))]
    pub mount_path: String,
}

/// Observed state of a ShardedService.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardedServiceStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Shards that exist (for the scale subresource).
    #[serde(default)]
    pub shards: i32,
    /// Shards whose every replica is ready.
    #[serde(default)]
    pub ready_shards: i32,
    /// Replicas across all shards.
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas across all shards.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of all shard replicas, in string form, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Readiness of every shard.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shard_statuses: Vec<ShardStatus>,
    /// Shards of the ring the shard map routes with; it differs from `spec.shards` while a
    /// change of the shard count is prepared.
    #[serde(default)]
    pub ring_shards: i32,
    /// A change of the shard count in progress, absent when none runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resharding: Option<ReshardingStatus>,
}

/// Progress of a change of the shard count.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReshardingStatus {
    /// Shards before the change.
    pub from_shards: i32,
    /// Shards after it.
    pub to_shards: i32,
    /// `Preparing` (new shards starting; the map keeps the old ring) or `Migrating` (the map
    /// routes with the new ring and carries the old one beside it).
    pub phase: ReshardPhase,
    /// When the migration began (the new shards were all ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_started_at: Option<Time>,
    /// The migration window, in seconds.
    pub window_seconds: i64,
    /// Seconds of the window elapsed, as of the last look.
    pub elapsed_seconds: i64,
}

/// Step of a change of the shard count.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ReshardPhase {
    Preparing,
    Migrating,
}

/// Readiness of one shard.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardStatus {
    /// Shard name (`<service>-shard-<index>`).
    pub name: String,
    /// Replicas of the shard that exist.
    pub replicas: i32,
    /// Replicas of the shard that are ready.
    pub ready_replicas: i32,
    /// The pod that is the shard's primary (with more than one replica per shard): the first
    /// endpoint of the shard map; the other replicas follow it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    /// UID of the primary pod: a pod recreated under the same name comes back empty, so it is not
    /// the primary any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary_uid: Option<String>,
}
