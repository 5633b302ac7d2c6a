//! The routing table in force: the ring and a connection handle per shard. Clients read it through
//! a `watch` channel, so the proxy does not know or care where shard maps come from.

use std::sync::Arc;

use outrigger_hashring::twemproxy::{KetamaNode, KetamaRing, KeyHash};

use crate::{
    routing::Locate,
    shard::{ShardHandle, ShardSettings},
    shardmap::RingSpec,
};

/// A ring and its shards, in the same order.
#[derive(Debug, Clone)]
pub struct Topology {
    ring: KetamaRing,
    hash: KeyHash,
    tag: Option<(u8, u8)>,
    shards: Vec<ShardHandle>,
}

impl Topology {
    /// No shards: every keyed command gets an error until a map arrives.
    pub fn empty() -> Topology {
        Topology {
            ring: KetamaRing::with_names::<&str>(&[]),
            hash: KeyHash::Fnv1a64,
            tag: None,
            shards: Vec::new(),
        }
    }

    /// Builds the topology of `spec`, keeping the connections of `previous` whose shard kept its
    /// name and primary endpoint. Must run inside a Tokio runtime (new shards start a task).
    pub fn build(spec: &RingSpec, previous: &Topology, settings: &Arc<ShardSettings>) -> Topology {
        let nodes = spec
            .shards
            .iter()
            .map(|shard| KetamaNode::named(&shard.name))
            .collect();
        let shards = spec
            .shards
            .iter()
            .map(|shard| {
                previous
                    .shards
                    .iter()
                    .find(|old| old.name() == shard.name && old.endpoint() == shard.primary)
                    .cloned()
                    .unwrap_or_else(|| ShardHandle::spawn(&shard.name, &shard.primary, settings.clone()))
            })
            .collect();
        Topology {
            ring: KetamaRing::new(nodes, spec.points_per_server),
            hash: spec.hash,
            tag: spec.tag,
            shards,
        }
    }

    /// The shard at `index`.
    pub fn shard(&self, index: usize) -> Option<&ShardHandle> {
        self.shards.get(index)
    }

    /// The shards in ring order.
    pub fn shards(&self) -> &[ShardHandle] {
        &self.shards
    }
}

impl Locate for Topology {
    fn shard_of(&self, key: &[u8]) -> Option<usize> {
        self.ring.index_for_key(key, self.hash, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shardmap::ShardSpec;

    fn spec(shards: &[(&str, &str)]) -> RingSpec {
        RingSpec {
            hash: KeyHash::Fnv1a64,
            tag: None,
            points_per_server: 160,
            shards: shards
                .iter()
                .map(|(name, primary)| ShardSpec {
                    name: (*name).into(),
                    primary: (*primary).into(),
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn a_new_pod_address_keeps_every_key_on_its_shard() {
        let settings = Arc::new(ShardSettings::default());
        let before = Topology::build(
            &spec(&[("s-0", "10.0.0.1:6379"), ("s-1", "10.0.0.2:6379")]),
            &Topology::empty(),
            &settings,
        );
        let after = Topology::build(
            &spec(&[("s-0", "10.0.0.9:6379"), ("s-1", "10.0.0.2:6379")]),
            &before,
            &settings,
        );
        for i in 0..2_000 {
            let key = format!("{i}:key");
            assert_eq!(before.shard_of(key.as_bytes()), after.shard_of(key.as_bytes()));
        }
        assert_eq!(after.shards()[0].endpoint(), "10.0.0.9:6379");
    }

    #[tokio::test]
    async fn a_reload_keeps_the_connections_of_unchanged_shards() {
        let settings = Arc::new(ShardSettings::default());
        let before = Topology::build(
            &spec(&[("s-0", "a:1"), ("s-1", "b:1")]),
            &Topology::empty(),
            &settings,
        );
        let after = Topology::build(
            &spec(&[("s-0", "a:1"), ("s-1", "c:1"), ("s-2", "d:1")]),
            &before,
            &settings,
        );
        assert!(after.shards()[0].same_connection(&before.shards()[0]));
        assert!(
            !after.shards()[1].same_connection(&before.shards()[1]),
            "a moved shard gets a new connection"
        );
    }
}
