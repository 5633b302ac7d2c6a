//! The shard map document, read into what the ambassador routes with. The only module that knows
//! the document's type: when the type moves to its own contract crate, only this module changes.

use outrigger_contract::shard_map::{KeyHash, ShardEndpoints, ShardMap, ShardProtocol, ShardingFunction};
pub use outrigger_contract::shard_map::{ReadPolicy, ShardAuth};
use outrigger_hashring::twemproxy;

/// A validated shard map: what a ring and its shard connections are built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingSpec {
    pub hash: twemproxy::KeyHash,
    /// Hash tag delimiters.
    pub tag: Option<(u8, u8)>,
    /// Points per shard of weight 1 (160 places keys as twemproxy does).
    pub points_per_server: u32,
    /// `(shard name, primary endpoint)` in index order.
    pub shards: Vec<ShardSpec>,
    /// Where read-only commands go.
    pub read_policy: ReadPolicy,
    /// While a reshard runs: the ring keys were placed on before.
    pub previous: Option<PreviousRing>,
    /// Where the shards' password is, when they require one.
    pub auth: Option<ShardAuth>,
}

/// The ring of a reshard's previous shard count: same hash, tag and points, other shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousRing {
    pub shards: Vec<ShardSpec>,
    /// Whether a read served by the previous owner copies the key to the new one.
    pub copy_on_read: bool,
}

/// One shard: its name keys the ring, its primary takes the traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpec {
    pub name: String,
    pub primary: String,
    /// The other endpoints: replicas following the primary.
    pub replicas: Vec<String>,
}

/// Why a shard map document can't be routed with.
#[derive(Debug, thiserror::Error)]
pub enum ShardMapError {
    #[error("not a shard map document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("protocol {0:?} is not served by this ambassador")]
    Protocol(ShardProtocol),
    #[error("sharding function {0:?} is not supported yet (only ketama)")]
    Function(ShardingFunction),
    #[error("hash tag {0:?} must be exactly two ASCII characters")]
    HashTag(String),
    #[error("shard {0:?} has no endpoint")]
    NoEndpoint(String),
    #[error("shard name {0:?} appears twice")]
    DuplicateShard(String),
    #[error("virtual nodes must be at least 4")]
    VirtualNodes,
}

impl ShardMapError {
    /// A fixed label for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            ShardMapError::Json(_) => "parse",
            _ => "invalid",
        }
    }
}

/// Parses and validates a shard map document (JSON).
pub fn parse(document: &[u8]) -> Result<RingSpec, ShardMapError> {
    let map: ShardMap = serde_json::from_slice(document)?;
    validate(&map)
}

/// Checks that `map` can be routed with.
pub fn validate(map: &ShardMap) -> Result<RingSpec, ShardMapError> {
    if map.function != ShardingFunction::Ketama {
        return Err(ShardMapError::Function(map.function));
    }
    if map.virtual_nodes < 4 {
        return Err(ShardMapError::VirtualNodes);
    }
    let tag = match map.hash_tag.as_deref() {
        None => None,
        Some(tag) => match tag.as_bytes() {
            [open, close] => Some((*open, *close)),
            _ => return Err(ShardMapError::HashTag(tag.to_owned())),
        },
    };
    let shards = shard_specs(&map.shards)?;
    let previous = match &map.migration {
        Some(migration) if !migration.previous_shards.is_empty() => Some(PreviousRing {
            shards: shard_specs(&migration.previous_shards)?,
            copy_on_read: migration.copy_on_read,
        }),
        _ => None,
    };
    let hash = match map.hash {
        KeyHash::Fnv1a64 => twemproxy::KeyHash::Fnv1a64,
        KeyHash::Md5 => twemproxy::KeyHash::Md5,
        KeyHash::Murmur3 => twemproxy::KeyHash::Murmur3,
    };
    Ok(RingSpec {
        hash,
        tag,
        points_per_server: map.virtual_nodes,
        shards,
        read_policy: map.read_policy,
        previous,
        auth: map.auth.clone(),
    })
}

fn shard_specs(endpoints: &[ShardEndpoints]) -> Result<Vec<ShardSpec>, ShardMapError> {
    let mut shards: Vec<ShardSpec> = Vec::with_capacity(endpoints.len());
    for shard in endpoints {
        if shards.iter().any(|seen| seen.name == shard.name) {
            return Err(ShardMapError::DuplicateShard(shard.name.clone()));
        }
        let primary = shard
            .endpoints
            .first()
            .ok_or_else(|| ShardMapError::NoEndpoint(shard.name.clone()))?;
        shards.push(ShardSpec {
            name: shard.name.clone(),
            primary: primary.clone(),
            replicas: shard.endpoints[1..].to_vec(),
        });
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(extra: &str) -> String {
        format!(
            r#"{{"protocol":"redis","function":"ketama","hash":"fnv1a64","virtualNodes":160,{extra}
               "shards":[{{"name":"cache-shard-0","endpoints":["10.0.0.1:6379","10.0.0.2:6379"]}},
                         {{"name":"cache-shard-1","endpoints":["cache-shard-1-0.cache:6379"]}}]}}"#
        )
    }

    #[test]
    fn a_redis_ketama_map_routes_to_each_shards_primary() {
        let spec = parse(document(r#""hashTag":"{}","#).as_bytes()).unwrap();
        assert_eq!(spec.hash, twemproxy::KeyHash::Fnv1a64);
        assert_eq!(spec.tag, Some((b'{', b'}')));
        assert_eq!(spec.points_per_server, 160);
        assert_eq!(
            spec.shards,
            vec![
                ShardSpec {
                    name: "cache-shard-0".into(),
                    primary: "10.0.0.1:6379".into(),
                    replicas: vec!["10.0.0.2:6379".into()],
                },
                ShardSpec {
                    name: "cache-shard-1".into(),
                    primary: "cache-shard-1-0.cache:6379".into(),
                    replicas: Vec::new(),
                },
            ]
        );
    }

    #[test]
    fn other_functions_are_refused_and_http_maps_route_with_the_same_ring() {
        let http = document("").replace(r#""protocol":"redis""#, r#""protocol":"http""#);
        assert_eq!(
            parse(http.as_bytes()).unwrap(),
            parse(document("").as_bytes()).unwrap()
        );
        let jump = document("").replace("ketama", "jump");
        assert!(matches!(
            parse(jump.as_bytes()),
            Err(ShardMapError::Function(ShardingFunction::Jump))
        ));
    }

    #[test]
    fn a_shard_without_endpoints_or_a_bad_tag_is_refused() {
        let empty = document("").replace(r#"["cache-shard-1-0.cache:6379"]"#, "[]");
        assert!(
            matches!(parse(empty.as_bytes()), Err(ShardMapError::NoEndpoint(name)) if name == "cache-shard-1")
        );
        let tag = document(r#""hashTag":"{","#);
        assert!(matches!(parse(tag.as_bytes()), Err(ShardMapError::HashTag(_))));
        assert!(matches!(parse(b"{not json"), Err(ShardMapError::Json(_))));
    }

    #[test]
    fn a_migrating_map_carries_its_previous_ring_and_a_bad_previous_ring_is_refused() {
        let spec = parse(
            document(
                r#""migration":{"previousShards":[{"name":"cache-shard-0","endpoints":["10.0.0.1:6379"]}],
                   "copyOnRead":true},"auth":{"secretName":"cache-auth","key":"pw"},"#,
            )
            .as_bytes(),
        )
        .unwrap();
        let previous = spec.previous.unwrap();
        assert_eq!(previous.shards.len(), 1);
        assert!(previous.copy_on_read);
        assert_eq!(spec.auth.unwrap().key, "pw");
        let empty = document(r#""migration":{"previousShards":[{"name":"cache-shard-0","endpoints":[]}]},"#);
        assert!(matches!(
            parse(empty.as_bytes()),
            Err(ShardMapError::NoEndpoint(_))
        ));
        let none = parse(document(r#""migration":{"previousShards":[]},"#).as_bytes()).unwrap();
        assert_eq!(none.previous, None, "an empty previous ring is no migration");
    }
}
