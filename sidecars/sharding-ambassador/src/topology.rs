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
