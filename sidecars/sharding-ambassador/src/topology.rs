//! The routing table in force: the ring and a connection handle per shard. Clients read it through
//! a `watch` channel, so the proxy does not know or care where shard maps come from.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use outrigger_hashring::twemproxy::{KetamaNode, KetamaRing, KeyHash};

use crate::{
    routing::Locate,
    shard::{ShardHandle, ShardSettings},
    shardmap::{ReadPolicy, RingSpec},
};

/// A ring and its shards, in the same order.
#[derive(Debug, Clone)]
pub struct Topology {
    ring: KetamaRing,
    hash: KeyHash,
    tag: Option<(u8, u8)>,
    shards: Vec<ShardHandle>,
    /// The replicas of each shard, in the same order as `shards`.
    replicas: Vec<Vec<ShardHandle>>,
    read_policy: ReadPolicy,
    /// Turns reads over a shard's readers.
    next_reader: Arc<AtomicUsize>,
}

impl Topology {
    /// No shards: every keyed command gets an error until a map arrives.
    pub fn empty() -> Topology {
        Topology {
            ring: KetamaRing::with_names::<&str>(&[]),
            hash: KeyHash::Fnv1a64,
            tag: None,
            shards: Vec::new(),
            replicas: Vec::new(),
            read_policy: ReadPolicy::Primary,
            next_reader: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Builds the topology of `spec`, keeping the connections of `previous` whose shard kept its
    /// name and endpoint (a replica promoted to primary keeps its connection too). Must run inside
    /// a Tokio runtime (new connections start a task).
    pub fn build(spec: &RingSpec, previous: &Topology, settings: &Arc<ShardSettings>) -> Topology {
        let nodes = spec
            .shards
            .iter()
            .map(|shard| KetamaNode::named(&shard.name))
            .collect();
        let connection = |name: &str, endpoint: &str| {
            previous
                .shards
                .iter()
                .chain(previous.replicas.iter().flatten())
                .find(|old| old.name() == name && old.endpoint() == endpoint)
                .cloned()
                .unwrap_or_else(|| ShardHandle::spawn(name, endpoint, settings.clone()))
        };
        let shards = spec
            .shards
            .iter()
            .map(|shard| connection(&shard.name, &shard.primary))
            .collect();
        // Replicas get connections only when reads may go to them.
        let replicas = spec
            .shards
            .iter()
            .map(|shard| match spec.read_policy {
                ReadPolicy::Primary => Vec::new(),
                ReadPolicy::PreferReplica | ReadPolicy::Any => shard
                    .replicas
                    .iter()
                    .map(|endpoint| connection(&shard.name, endpoint))
                    .collect(),
            })
            .collect();
        Topology {
            ring: KetamaRing::new(nodes, spec.points_per_server),
            hash: spec.hash,
            tag: spec.tag,
            shards,
            replicas,
            read_policy: spec.read_policy,
            next_reader: previous.next_reader.clone(),
        }
    }

    /// The shard at `index`.
    pub fn shard(&self, index: usize) -> Option<&ShardHandle> {
        self.shards.get(index)
    }

    /// Where a read-only command for shard `index` goes, by the read policy: the primary;
    /// a replica that is not ejected, else the primary (`preferReplica`); or the primary and the
    /// replicas in turn (`any`).
    pub fn reader(&self, index: usize) -> Option<&ShardHandle> {
        let primary = self.shards.get(index)?;
        let replicas = self.replicas.get(index).map_or(&[][..], Vec::as_slice);
        if replicas.is_empty() {
            return Some(primary);
        }
        let turn = self.next_reader.fetch_add(1, Ordering::Relaxed);
        match self.read_policy {
            ReadPolicy::Primary => Some(primary),
            ReadPolicy::PreferReplica => Some(
                (0..replicas.len())
                    .map(|offset| &replicas[(turn + offset) % replicas.len()])
                    .find(|replica| !replica.is_ejected())
                    .unwrap_or(primary),
            ),
            ReadPolicy::Any => match turn % (replicas.len() + 1) {
                0 => Some(primary),
                n => replicas.get(n - 1),
            },
        }
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
                    replicas: Vec::new(),
                })
                .collect(),
            read_policy: ReadPolicy::Primary,
        }
    }

    fn replicated(policy: ReadPolicy, primary: &str, replicas: &[&str]) -> RingSpec {
        let mut spec = spec(&[("s-0", primary)]);
        spec.shards[0].replicas = replicas.iter().map(|r| (*r).into()).collect();
        spec.read_policy = policy;
        spec
    }

    #[tokio::test]
    async fn reads_go_where_the_read_policy_says() {
        let settings = Arc::new(ShardSettings::default());
        let primary_only = Topology::build(
            &replicated(ReadPolicy::Primary, "p:1", &["r:1"]),
            &Topology::empty(),
            &settings,
        );
        assert_eq!(primary_only.reader(0).unwrap().endpoint(), "p:1");
        let prefer = Topology::build(
            &replicated(ReadPolicy::PreferReplica, "p:1", &["r:1", "r:2"]),
            &Topology::empty(),
            &settings,
        );
        let read: Vec<&str> = (0..4).map(|_| prefer.reader(0).unwrap().endpoint()).collect();
        assert!(read.iter().all(|endpoint| endpoint.starts_with("r:")), "{read:?}");
        assert!(read.contains(&"r:1") && read.contains(&"r:2"), "{read:?}");
        let any = Topology::build(
            &replicated(ReadPolicy::Any, "p:1", &["r:1"]),
            &Topology::empty(),
            &settings,
        );
        let read: Vec<&str> = (0..4).map(|_| any.reader(0).unwrap().endpoint()).collect();
        assert!(read.contains(&"p:1") && read.contains(&"r:1"), "{read:?}");
    }

    #[tokio::test]
    async fn a_promoted_replica_keeps_its_connection_and_other_shards_keep_theirs() {
        let settings = Arc::new(ShardSettings::default());
        let mut two = spec(&[("s-0", "p:1"), ("s-1", "q:1")]);
        two.shards[0].replicas = vec!["r:1".into()];
        two.read_policy = ReadPolicy::PreferReplica;
        let before = Topology::build(&two, &Topology::empty(), &settings);
        let replica = before.reader(0).unwrap().clone();
        let mut failed_over = two.clone();
        failed_over.shards[0].primary = "r:1".into();
        failed_over.shards[0].replicas = Vec::new();
        let after = Topology::build(&failed_over, &before, &settings);
        assert!(after.shards()[0].same_connection(&replica));
        assert!(after.shards()[1].same_connection(&before.shards()[1]));
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
