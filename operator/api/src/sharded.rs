//! `ShardedService`: keys partitioned over shards, each shard optionally replicated.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, SidecarSpec};

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
}

fn default_replicas_per_shard() -> i32 {
    1
}

/// Protocol of a sharded service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ShardProtocol {
    /// RESP (Redis, KeyDB, Dragonfly, memcached in Redis mode): keys are command arguments.
    Redis,
    /// HTTP: the key is taken from a header or the path.
    Http,
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
    /// With protocol `http`: header carrying the key; without it the request path is the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub key_header: Option<String>,
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
        }
    }
}

fn default_virtual_nodes() -> i32 {
    160
}

/// Function from a key's hash to a shard.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ShardingFunction {
    #[default]
    Ketama,
    Jump,
    Rendezvous,
    KeyRange,
}

/// Hash applied to a key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum KeyHash {
    #[default]
    Fnv1a64,
    Murmur3,
    Md5,
}

/// A lexicographic key range owned by one shard: `start` inclusive, `end` exclusive.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyRange {
    /// Index of the owning shard, from 0.
    #[schemars(range(min = 0, max = 1023))]
    pub shard: i32,
    /// First key of the range; absent means from the beginning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// First key after the range; absent means to the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
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
}

/// The shard map the operator writes (ConfigMap `<service>-shard-map`, key `shard-map.json`) and
/// the sharding ambassador reads: everything needed to route a key to a shard's endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShardMap {
    /// Protocol spoken to the shards.
    pub protocol: ShardProtocol,
    /// Key-to-shard function.
    pub function: ShardingFunction,
    /// Key hash.
    pub hash: KeyHash,
    /// Points per shard on a ketama ring.
    pub virtual_nodes: u32,
    /// Hash tag delimiters, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_tag: Option<String>,
    /// With protocol `http`: header carrying the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_header: Option<String>,
    /// The shards in index order. Ring positions depend on shard names only, so adding a shard
    /// moves only the keys the new shard takes over.
    pub shards: Vec<ShardEndpoints>,
    /// With `keyRange`: the ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_ranges: Vec<KeyRange>,
}

/// One shard in a shard map.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ShardEndpoints {
    /// Shard name, the node name on the hash ring.
    pub name: String,
    /// `host:port` of every replica; the first is the primary.
    pub endpoints: Vec<String>,
}

/// Key of the shard map inside its ConfigMap.
pub const SHARD_MAP_KEY: &str = "shard-map.json";
