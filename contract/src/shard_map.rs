//! The shard map: what the operator writes for a ShardedService (ConfigMap `<service>-shard-map`,
//! key [`SHARD_MAP_KEY`]) and a sharding ambassador reads to route every key to its shard. The
//! enums a user also writes in the ShardedService (protocol, function, hash, key ranges) are
//! declared here once; their doc comments become CRD descriptions.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ApiVersion;

/// Key of the shard map inside its ConfigMap.
pub const SHARD_MAP_KEY: &str = "shard-map.json";

/// The shard map: everything needed to route a key to a shard's endpoints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardMap {
    /// Version of this document's format; absent means `outrigger.dev/v1alpha1`.
    #[serde(default)]
    pub api_version: ApiVersion,
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
    /// With protocol `http`: where a request's key is read (a header, a path segment or a query
    /// parameter). Takes precedence over `keyHeader`; without either, the request path is the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_key: Option<HttpKey>,
    /// Where reads go: the shard's primary (its first endpoint), or its replicas too.
    #[serde(default)]
    pub read_policy: ReadPolicy,
    /// The shards in index order. Ring positions depend on shard names only, so adding a shard
    /// moves only the keys the new shard takes over.
    pub shards: Vec<ShardEndpoints>,
    /// With `keyRange`: the ranges.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub key_ranges: Vec<KeyRange>,
    /// While the shard count changes: the ring keys were placed on before. Reads that miss on a
    /// key's new owner look on its previous owner, and writes clear the previous owner's copy.
    /// Absent when no migration runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration: Option<Migration>,
    /// The password the shards require (`AUTH`), from a Secret in the map's namespace. Absent
    /// when the shards require none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ShardAuth>,
}

impl ShardMap {
    /// Parses a shard map as found in its ConfigMap. Absent fields get their defaults; unknown
    /// fields and an unknown `apiVersion` are refused.
    pub fn from_json(text: &[u8]) -> Result<ShardMap, serde_json::Error> {
        serde_json::from_slice(text)
    }

    /// The document as written into its ConfigMap.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

/// Where an HTTP request's key is read. The key then goes through the same ring (and hash tag) as
/// a Redis key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum HttpKey {
    /// A request header, e.g. `x-tenant`.
    Header(String),
    /// A path segment by position from 0 (`/users/42/cart` has `42` at 1), percent-decoded.
    PathSegment(u32),
    /// A query parameter, e.g. `id`, percent-decoded (`+` is a space).
    QueryParameter(String),
}

/// A resharding in progress: the previous ring beside the current one. The previous ring uses the
/// map's hash, hash tag and virtual nodes; only its shards differ.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Migration {
    /// The shards of the previous ring, in its index order.
    pub previous_shards: Vec<ShardEndpoints>,
    /// Whether a read served by a key's previous owner copies the key (value and expiry) to its new
    /// owner, so the next read hits there. Without it, keys move only as they are written again.
    #[serde(default)]
    pub copy_on_read: bool,
    /// When the migration started (RFC 3339), as the operator reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

/// Where the shards' password is: a key of a Secret in the map's namespace. The ambassador reads it
/// through the API server and follows its changes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardAuth {
    /// Name of the Secret.
    pub secret_name: String,
    /// Key of the password in the Secret's data.
    #[serde(default = "default_password_key")]
    pub key: String,
}

/// The Secret key holding the password when none is named.
pub const DEFAULT_PASSWORD_KEY: &str = "password";

fn default_password_key() -> String {
    DEFAULT_PASSWORD_KEY.to_owned()
}

/// Where a shard's reads go. Writes always go to its primary; replicas follow it asynchronously, so
/// a read from a replica may miss the latest writes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ReadPolicy {
    /// Reads go to the primary: every read sees every acknowledged write.
    #[default]
    Primary,
    /// Reads go to a replica, to the primary when no replica is available.
    PreferReplica,
    /// Reads are spread over the primary and the replicas.
    Any,
}

/// One shard in a shard map.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ShardEndpoints {
    /// Shard name, the node name on the hash ring.
    pub name: String,
    /// `host:port` of every replica; the first is the primary.
    pub endpoints: Vec<String>,
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
#[serde(rename_all = "camelCase", deny_unknown_fields)]
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn map() -> ShardMap {
        ShardMap {
            api_version: ApiVersion::V1alpha1,
            protocol: ShardProtocol::Redis,
            function: ShardingFunction::Ketama,
            hash: KeyHash::Fnv1a64,
            virtual_nodes: 160,
            hash_tag: Some("{}".to_owned()),
            key_header: None,
            http_key: None,
            read_policy: ReadPolicy::Primary,
            shards: vec![ShardEndpoints {
                name: "cache-shard-0".to_owned(),
                endpoints: vec!["cache-shard-0-0.cache-shard-0.shop.svc:6379".to_owned()],
            }],
            key_ranges: Vec::new(),
            migration: None,
            auth: None,
        }
    }

    #[test]
    fn a_written_map_carries_its_api_version_and_reads_back_equal() {
        let text = map().to_json().unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["apiVersion"], "outrigger.dev/v1alpha1");
        assert_eq!(ShardMap::from_json(text.as_bytes()).unwrap(), map());
    }

    #[test]
    fn a_map_written_before_maps_were_versioned_reads_as_v1alpha1() {
        let text = json!({
            "protocol": "redis", "function": "ketama", "hash": "fnv1a64", "virtualNodes": 160,
            "hashTag": "{}",
            "shards": [{"name": "cache-shard-0", "endpoints": ["cache-shard-0-0.cache-shard-0.shop.svc:6379"]}],
        })
        .to_string();
        assert_eq!(ShardMap::from_json(text.as_bytes()).unwrap(), map());
    }

    #[test]
    fn an_http_key_names_a_header_a_path_segment_or_a_query_parameter() {
        for (value, key) in [
            (
                json!({"header": "x-tenant"}),
                HttpKey::Header("x-tenant".to_owned()),
            ),
            (json!({"pathSegment": 1}), HttpKey::PathSegment(1)),
            (
                json!({"queryParameter": "id"}),
                HttpKey::QueryParameter("id".to_owned()),
            ),
        ] {
            let mut document = serde_json::to_value(map()).unwrap();
            document["protocol"] = json!("http");
            document["httpKey"] = value;
            let parsed = ShardMap::from_json(document.to_string().as_bytes()).unwrap();
            assert_eq!(parsed.http_key, Some(key));
        }
    }

    #[test]
    fn a_map_during_a_migration_carries_the_previous_ring_and_the_password_secret() {
        let text = json!({
            "protocol": "redis", "function": "ketama", "hash": "fnv1a64", "virtualNodes": 160,
            "hashTag": "{}",
            "shards": [{"name": "cache-shard-0", "endpoints": ["cache-shard-0-0.cache-shard-0.shop.svc:6379"]}],
            "migration": {"previousShards": [{"name": "cache-shard-9", "endpoints": ["10.0.0.9:6379"]}]},
            "auth": {"secretName": "cache-auth"},
        })
        .to_string();
        let read = ShardMap::from_json(text.as_bytes()).unwrap();
        let migration = read.migration.clone().unwrap();
        assert_eq!(migration.previous_shards[0].name, "cache-shard-9");
        assert!(!migration.copy_on_read, "copying is asked for, never assumed");
        assert_eq!(
            read.auth,
            Some(ShardAuth {
                secret_name: "cache-auth".into(),
                key: DEFAULT_PASSWORD_KEY.into()
            })
        );
        let written: serde_json::Value = serde_json::from_str(&read.to_json().unwrap()).unwrap();
        assert_eq!(written["migration"]["copyOnRead"], false);
        assert!(
            map().to_json().unwrap().find("migration").is_none(),
            "absent when none runs"
        );
    }

    #[test]
    fn a_map_of_an_unknown_version_or_with_an_unknown_field_is_refused() {
        let mut newer = serde_json::to_value(map()).unwrap();
        newer["apiVersion"] = json!("outrigger.dev/v2");
        let error = ShardMap::from_json(newer.to_string().as_bytes()).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("unknown apiVersion \"outrigger.dev/v2\""),
            "{error}"
        );
        let mut misspelt = serde_json::to_value(map()).unwrap();
        misspelt["virtualNode"] = json!(10);
        let error = ShardMap::from_json(misspelt.to_string().as_bytes()).unwrap_err();
        assert!(error.to_string().contains("virtualNode"), "{error}");
    }
}
