//! Consistent hashing: the same key must reach the same node from the operator's shard map and
//! from every sidecar, so both use this crate. No dependencies, no I/O.
//!
//! [`HashRing`] is the project's own ring; [`twemproxy`] holds a ring and key hashes that place
//! keys exactly as a twemproxy (nutcracker) ketama pool does.

pub mod twemproxy;

/// 64-bit FNV-1a.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// A 64-bit finaliser (splitmix64) so that nearby inputs spread over the whole ring.
fn mix(mut value: u64) -> u64 {
    value ^= value >> 30;
    value = value.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    value ^= value >> 27;
    value = value.wrapping_mul(0x94d0_49bb_1331_11eb);
    value ^ (value >> 31)
}

/// The part of `key` that is hashed: with a hash tag such as `{}`, the text between the first
/// opening character and the next closing one, when that is not empty; otherwise the whole key.
pub fn hashed_part(key: &[u8], tag: Option<(u8, u8)>) -> &[u8] {
    let Some((open, close)) = tag else {
        return key;
    };
    let Some(start) = key.iter().position(|b| *b == open) else {
        return key;
    };
    match key[start + 1..].iter().position(|b| *b == close) {
        Some(len) if len > 0 => &key[start + 1..start + 1 + len],
        _ => key,
    }
}

/// A ketama-style ring: every node owns `virtual_nodes` points; a key belongs to the node owning
/// the first point at or after the key's hash. Adding one node to N moves about 1/(N+1) of the keys,
/// all of them to the new node.
#[derive(Debug, Clone)]
pub struct HashRing {
    points: Vec<(u64, usize)>,
    nodes: Vec<String>,
}

impl HashRing {
    /// Builds the ring. Node order does not matter: the ring depends on the names only.
    pub fn new<S: AsRef<str>>(nodes: &[S], virtual_nodes: u32) -> HashRing {
        let nodes: Vec<String> = nodes.iter().map(|n| n.as_ref().to_owned()).collect();
        let mut points = Vec::with_capacity(nodes.len() * virtual_nodes as usize);
        for (index, node) in nodes.iter().enumerate() {
            for point in 0..virtual_nodes {
                points.push((mix(fnv1a64(format!("{node}#{point}").as_bytes())), index));
            }
        }
        // Ties between nodes are broken by name so every builder of the ring agrees.
        points.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| nodes[a.1].cmp(&nodes[b.1])));
        HashRing { points, nodes }
    }

    /// The node a key hash belongs to, or `None` for an empty ring.
    pub fn node_for_hash(&self, hash: u64) -> Option<&str> {
        if self.points.is_empty() {
            return None;
        }
        let hash = mix(hash);
        let index = self.points.partition_point(|(point, _)| *point < hash);
        let (_, node) = self.points.get(index).unwrap_or(&self.points[0]);
        self.nodes.get(*node).map(String::as_str)
    }

    /// The node a key belongs to, or `None` for an empty ring.
    pub fn node_for(&self, key: &[u8]) -> Option<&str> {
        self.node_for_hash(fnv1a64(key))
    }

    /// The nodes of the ring, as given.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }
}

/// Jump consistent hash (Lamping & Veach): the bucket in `0..buckets` for `key_hash`; growing the
/// bucket count from N to N+1 moves 1/(N+1) of the keys, all to the new bucket.
pub fn jump(mut key_hash: u64, buckets: u32) -> u32 {
    let mut bucket: i64 = -1;
    let mut next: i64 = 0;
    while next < i64::from(buckets) {
        bucket = next;
        key_hash = key_hash.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let divisor = ((key_hash >> 33) + 1) as f64;
        next = ((bucket + 1) as f64 * ((1u64 << 31) as f64 / divisor)) as i64;
    }
    u32::try_from(bucket.max(0)).unwrap_or(0)
}

/// Rendezvous (highest random weight) hashing: the node whose combined hash with the key is largest.
pub fn rendezvous<S: AsRef<str>>(key_hash: u64, nodes: &[S]) -> Option<&str> {
    nodes
        .iter()
        .map(AsRef::as_ref)
        .max_by_key(|node| (mix(key_hash ^ fnv1a64(node.as_bytes())), *node))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards(count: usize) -> Vec<String> {
        (0..count).map(|i| format!("cache-shard-{i}")).collect()
    }

    fn keys() -> impl Iterator<Item = Vec<u8>> {
        (0..20_000).map(|i| format!("user:{i}").into_bytes())
    }

    #[test]
    fn fnv1a64_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn growing_the_ring_from_three_to_four_moves_about_a_quarter_of_keys_all_to_the_new_shard() {
        let before = HashRing::new(&shards(3), 160);
        let after = HashRing::new(&shards(4), 160);
        let mut moved = 0;
        for key in keys() {
            let (old, new) = (before.node_for(&key).unwrap(), after.node_for(&key).unwrap());
            if old != new {
                moved += 1;
                assert_eq!(new, "cache-shard-3", "a moved key must go to the new shard");
            }
        }
        let fraction = f64::from(moved) / 20_000.0;
        assert!(
            (0.18..0.32).contains(&fraction),
            "moved {fraction:.3}, expected about 0.25"
        );
    }

    #[test]
    fn shrinking_the_ring_moves_only_the_removed_shards_keys() {
        let before = HashRing::new(&shards(4), 160);
        let after = HashRing::new(&shards(3), 160);
        for key in keys() {
            let old = before.node_for(&key).unwrap();
            if old != "cache-shard-3" {
                assert_eq!(after.node_for(&key).unwrap(), old);
            }
        }
    }

    #[test]
    fn keys_spread_evenly_over_the_ring() {
        let ring = HashRing::new(&shards(4), 160);
        let mut counts = [0u32; 4];
        for key in keys() {
            let node = ring.node_for(&key).unwrap();
            counts[node.trim_start_matches("cache-shard-").parse::<usize>().unwrap()] += 1;
        }
        for count in counts {
            assert!((3_500..6_500).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn node_order_does_not_change_the_ring() {
        let forward = HashRing::new(&shards(5), 100);
        let mut reversed_names = shards(5);
        reversed_names.reverse();
        let reversed = HashRing::new(&reversed_names, 100);
        for key in keys().take(2_000) {
            assert_eq!(forward.node_for(&key), reversed.node_for(&key));
        }
    }

    #[test]
    fn empty_ring_has_no_node() {
        assert_eq!(HashRing::new::<String>(&[], 160).node_for(b"x"), None);
    }

    #[test]
    fn hash_tags_select_the_tagged_part() {
        let tag = Some((b'{', b'}'));
        let cases: [(&[u8], &[u8]); 5] = [
            (b"user:{42}:cart", b"42"),
            (b"user:{42}:profile", b"42"),
            (b"plain", b"plain"),
            (b"empty:{}:tag", b"empty:{}:tag"),
            (b"unclosed:{42", b"unclosed:{42"),
        ];
        for (key, hashed) in cases {
            assert_eq!(hashed_part(key, tag), hashed);
        }
        assert_eq!(hashed_part(b"user:{42}", None), b"user:{42}");
    }

    #[test]
    fn jump_hash_moves_one_in_n_plus_one_keys_to_the_new_bucket() {
        let mut moved = 0;
        for key in keys() {
            let hash = fnv1a64(&key);
            let (old, new) = (jump(hash, 3), jump(hash, 4));
            assert!(old < 3 && new < 4);
            if old != new {
                moved += 1;
                assert_eq!(new, 3);
            }
        }
        let fraction = f64::from(moved) / 20_000.0;
        assert!((0.2..0.3).contains(&fraction), "{fraction}");
    }

    #[test]
    fn rendezvous_moves_only_keys_that_go_to_the_new_node() {
        let (three, four) = (shards(3), shards(4));
        for key in keys().take(5_000) {
            let hash = fnv1a64(&key);
            let (old, new) = (
                rendezvous(hash, &three).unwrap(),
                rendezvous(hash, &four).unwrap(),
            );
            if old != new {
                assert_eq!(new, "cache-shard-3");
            }
        }
    }
}
