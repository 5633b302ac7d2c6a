//! The routing table in force: the ring and a connection handle per shard. Clients read it through
//! a `watch` channel, so the proxy does not know or care where shard maps come from.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use outrigger_hashring::twemproxy::{KetamaNode, KetamaRing, KeyHash};

use crate::{
    migration::LocatePrevious,
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
    /// While a reshard runs: the previous ring and its shards' primaries.
    previous: Option<Previous>,
}

/// The ring of a reshard's previous shard count, beside the current one.
#[derive(Debug, Clone)]
struct Previous {
    ring: KetamaRing,
    shards: Vec<ShardHandle>,
    copy_on_read: bool,
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
            previous: None,
        }
    }

    /// Builds the topology of `spec`, keeping the connections of `previous` whose shard kept its
    /// name and endpoint (a replica promoted to primary keeps its connection too). A shard on both
    /// rings of a reshard has one connection. Must run inside a Tokio runtime (new connections
    /// start a task).
    pub fn build(spec: &RingSpec, previous: &Topology, settings: &Arc<ShardSettings>) -> Topology {
        let nodes = spec
            .shards
            .iter()
            .map(|shard| KetamaNode::named(&shard.name))
            .collect();
        let kept = |name: &str, endpoint: &str| {
            previous
                .shards
                .iter()
                .chain(previous.replicas.iter().flatten())
                .chain(previous.previous.iter().flat_map(|ring| &ring.shards))
                .find(|old| old.name() == name && old.endpoint() == endpoint)
                .cloned()
        };
        let connection = |name: &str, endpoint: &str| {
            kept(name, endpoint).unwrap_or_else(|| ShardHandle::spawn(name, endpoint, settings.clone()))
        };
        let shards: Vec<ShardHandle> = spec
            .shards
            .iter()
            .map(|shard| connection(&shard.name, &shard.primary))
            .collect();
        let migrating = spec.previous.as_ref().map(|ring| Previous {
            ring: KetamaRing::new(
                ring.shards
                    .iter()
                    .map(|shard| KetamaNode::named(&shard.name))
                    .collect(),
                spec.points_per_server,
            ),
            shards: ring
                .shards
                .iter()
                .map(|shard| {
                    shards
                        .iter()
                        .find(|now| now.name() == shard.name && now.endpoint() == shard.primary)
                        .cloned()
                        .unwrap_or_else(|| connection(&shard.name, &shard.primary))
                })
                .collect(),
            copy_on_read: ring.copy_on_read,
        });
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
            previous: migrating,
        }
    }

    /// Shard `index` of the previous ring, while a reshard runs.
    pub fn previous_shard(&self, index: usize) -> Option<&ShardHandle> {
        self.previous.as_ref()?.shards.get(index)
    }

    /// Whether a reshard runs (the previous ring is in force beside the current one).
    pub fn is_migrating(&self) -> bool {
        self.previous.is_some()
    }

    /// Shards of the previous ring, 0 when no reshard runs.
    pub fn previous_shards(&self) -> usize {
        self.previous.as_ref().map_or(0, |ring| ring.shards.len())
    }

    /// Whether a read served by a key's previous owner copies the key to its new owner.
    pub fn copies_on_read(&self) -> bool {
        self.previous.as_ref().is_some_and(|ring| ring.copy_on_read)
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

impl LocatePrevious for Topology {
    fn moved_from(&self, key: &[u8]) -> Option<usize> {
        let previous = self.previous.as_ref()?;
        let before = previous.ring.index_for_key(key, self.hash, self.tag)?;
        let now = self.shard_of(key).and_then(|index| self.shards.get(index));
        // Compared by name: the rings index their shards each in their own order.
        match (previous.shards.get(before), now) {
            (Some(old), Some(new)) if old.name() == new.name() => None,
            _ => Some(before),
        }
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
            previous: None,
            auth: None,
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
    async fn during_a_reshard_only_the_keys_the_new_shard_takes_over_moved_and_connections_are_shared() {
        let settings = Arc::new(ShardSettings::default());
        let three = spec(&[("s-0", "a:1"), ("s-1", "b:1"), ("s-2", "c:1")]);
        let before = Topology::build(&three, &Topology::empty(), &settings);
        let mut four = spec(&[("s-0", "a:1"), ("s-1", "b:1"), ("s-2", "c:1"), ("s-3", "d:1")]);
        four.previous = Some(crate::shardmap::PreviousRing {
            shards: three.shards.clone(),
            copy_on_read: true,
        });
        let migrating = Topology::build(&four, &before, &settings);
        assert!(migrating.is_migrating() && migrating.copies_on_read());
        for index in 0..3 {
            assert!(migrating
                .previous_shard(index)
                .unwrap()
                .same_connection(&before.shards()[index]));
            assert!(migrating.shards()[index].same_connection(&before.shards()[index]));
        }
        let mut moved = 0;
        for i in 0..4_000 {
            let key = format!("key:{i}");
            let now = migrating.shard_of(key.as_bytes()).unwrap();
            match migrating.moved_from(key.as_bytes()) {
                Some(from) => {
                    moved += 1;
                    assert_eq!(now, 3, "only keys of the new shard moved");
                    assert_eq!(Some(from), before.shard_of(key.as_bytes()));
                }
                None => assert_eq!(Some(now), before.shard_of(key.as_bytes())),
            }
        }
        assert!((600..1_500).contains(&moved), "{moved} of 4000 keys moved");
        let cut_over = Topology::build(
            &spec(&[("s-0", "a:1"), ("s-1", "b:1"), ("s-2", "c:1"), ("s-3", "d:1")]),
            &migrating,
            &settings,
        );
        assert!(!cut_over.is_migrating());
        assert_eq!(cut_over.moved_from(b"key:1"), None);
        assert!(cut_over.shards()[3].same_connection(&migrating.shards()[3]));
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
