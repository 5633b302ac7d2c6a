//! A ketama ring and key hashes that place keys exactly as twemproxy (nutcracker) does with
//! `distribution: ketama`, so a client can move between nutcracker and the sharding ambassador
//! without a single key changing shard.
//!
//! This ring is not [`crate::HashRing`]: that one is the project's own ring (64-bit points,
//! `node#index` labels) and places keys differently. Anything that must agree with a twemproxy
//! pool uses this module.
//!
//! What twemproxy does, and so what this module reproduces bit for bit:
//! - every node gets `floor(weight / total_weight * 160 / 4 * live_nodes) * 4` points, computed in
//!   single precision (equal weights can round to 156 instead of 160, and that must match too);
//! - the points of a node are MD5 digests of `"<name>-<i>"`, each digest giving four 32-bit
//!   little-endian points;
//! - points are sorted by value, ties keeping node order, and a key belongs to the first point at
//!   or after its hash, wrapping to the first point;
//! - the key hash is 32 bits; `fnv1a_64` is twemproxy's (a 64-bit FNV-1a folded into 32-bit
//!   arithmetic, with bytes sign-extended as a C `char` is on x86-64 and most Linux targets).

use crate::hashed_part;

/// Points of a node of weight 1 in a ring of equal weights: twemproxy's fixed
/// `KETAMA_POINTS_PER_SERVER`.
pub const POINTS_PER_SERVER: u32 = 160;

/// Points made from one MD5 digest.
const POINTS_PER_HASH: u32 = 4;

/// Longest `"<name>-<i>"` label twemproxy hashes; longer labels are truncated to it.
const MAX_LABEL_LEN: usize = 272;

/// A key hash of twemproxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyHash {
    /// twemproxy's `fnv1a_64`.
    Fnv1a64,
    /// twemproxy's `md5`: the first four digest bytes, little-endian.
    Md5,
    /// twemproxy's `murmur`: a MurmurHash2 variant seeded with the key length.
    Murmur,
    /// MurmurHash3 x86_32 with seed 0. twemproxy has no such hash; a ring using it places keys
    /// consistently but no nutcracker pool can share the placement.
    Murmur3,
}

impl KeyHash {
    /// The 32-bit hash of `key`.
    pub fn hash(self, key: &[u8]) -> u32 {
        match self {
            KeyHash::Fnv1a64 => fnv1a_64(key),
            KeyHash::Md5 => {
                let digest = md5(key);
                u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
            }
            KeyHash::Murmur => murmur(key),
            KeyHash::Murmur3 => murmur3_32(key, 0),
        }
    }
}

/// twemproxy's `fnv1a_64`: despite the name, 32-bit arithmetic on the low halves of the 64-bit
/// FNV offset basis and prime. Bytes above 0x7f are sign-extended first, as twemproxy's
/// `(uint32_t)key[x]` does with a signed `char`.
pub fn fnv1a_64(key: &[u8]) -> u32 {
    let mut hash: u32 = 0x8422_2325;
    for byte in key {
        // `as` conversions spell out the C promotion being reproduced: i8 → i32 → u32.
        #[allow(clippy::cast_possible_wrap, clippy::cast_sign_loss)]
        let value = i32::from(*byte as i8) as u32;
        hash ^= value;
        hash = hash.wrapping_mul(0x0000_01b3);
    }
    hash
}

/// twemproxy's `murmur` (MurmurHash2 with `seed = 0xdeadbeef * len`), little-endian.
pub fn murmur(key: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    // twemproxy takes the length as a 32-bit value; keys are far shorter than 4 GiB.
    #[allow(clippy::cast_possible_truncation)]
    let length = key.len() as u32;
    let mut hash = 0xdead_beef_u32.wrapping_mul(length) ^ length;
    let mut blocks = key.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        hash = hash.wrapping_mul(M) ^ k;
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        for (shift, byte) in tail.iter().enumerate().rev() {
            hash ^= u32::from(*byte) << (8 * shift);
        }
        hash = hash.wrapping_mul(M);
    }
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(M);
    hash ^ (hash >> 15)
}

/// MurmurHash3, x86 32-bit variant.
pub fn murmur3_32(key: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let scramble = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut hash = seed;
    let mut blocks = key.chunks_exact(4);
    for block in &mut blocks {
        hash ^= scramble(u32::from_le_bytes([block[0], block[1], block[2], block[3]]));
        hash = hash.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (shift, byte) in tail.iter().enumerate() {
            k |= u32::from(*byte) << (8 * shift);
        }
        hash ^= scramble(k);
    }
    // The length enters modulo 2^32, as in the reference.
    #[allow(clippy::cast_possible_truncation)]
    let length = key.len() as u32;
    hash ^= length;
    hash ^= hash >> 16;
    hash = hash.wrapping_mul(0x85eb_ca6b);
    hash ^= hash >> 13;
    hash = hash.wrapping_mul(0xc2b2_ae35);
    hash ^ (hash >> 16)
}

/// The RFC 1321 sine table: `floor(|sin(i + 1)| * 2^32)`.
const MD5_K: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];

/// Per-round left rotations of RFC 1321.
const MD5_SHIFTS: [u32; 16] = [7, 12, 17, 22, 5, 9, 14, 20, 4, 11, 16, 23, 6, 10, 15, 21];

/// The MD5 digest of `input` (RFC 1321). Used for ring points and the `md5` key hash only, never
/// for anything that needs collision resistance.
pub fn md5(input: &[u8]) -> [u8; 16] {
    let mut state: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    let bit_length = (input.len() as u64).wrapping_mul(8);
    let mut message = Vec::with_capacity(input.len() + 72);
    message.extend_from_slice(input);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bit_length.to_le_bytes());
    for block in message.chunks_exact(64) {
        let mut words = [0u32; 16];
        for (word, bytes) in words.iter_mut().zip(block.chunks_exact(4)) {
            *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        let [mut a, mut b, mut c, mut d] = state;
        for (i, k) in MD5_K.iter().enumerate() {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let rotated = a
                .wrapping_add(f)
                .wrapping_add(*k)
                .wrapping_add(words[g])
                .rotate_left(MD5_SHIFTS[(i / 16) * 4 + i % 4]);
            a = d;
            d = c;
            c = b;
            b = b.wrapping_add(rotated);
        }
        for (word, add) in state.iter_mut().zip([a, b, c, d]) {
            *word = word.wrapping_add(add);
        }
    }
    let mut digest = [0u8; 16];
    for (bytes, word) in digest.chunks_exact_mut(4).zip(state) {
        bytes.copy_from_slice(&word.to_le_bytes());
    }
    digest
}

/// A node of a ketama ring: its name (what is hashed, so addresses can change without moving
/// keys) and its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KetamaNode {
    pub name: String,
    pub weight: u32,
}

impl KetamaNode {
    /// A node of weight 1.
    pub fn named(name: impl Into<String>) -> KetamaNode {
        KetamaNode {
            name: name.into(),
            weight: 1,
        }
    }
}

/// twemproxy's ketama continuum over a fixed list of nodes.
#[derive(Debug, Clone)]
pub struct KetamaRing {
    /// `(point, node index)`, sorted by point.
    continuum: Vec<(u32, usize)>,
    nodes: Vec<KetamaNode>,
}

impl KetamaRing {
    /// Builds the continuum twemproxy builds for these nodes, in this order (with unequal weights
    /// or colliding points the order matters, as it does in a nutcracker pool).
    /// `points_per_server` is 160 ([`POINTS_PER_SERVER`]) for twemproxy's placement; other values
    /// give a ring built the same way with more or fewer points. Nodes of weight 0 get no points.
    pub fn new(nodes: Vec<KetamaNode>, points_per_server: u32) -> KetamaRing {
        let total_weight: u64 = nodes.iter().map(|node| u64::from(node.weight)).sum();
        let mut continuum = Vec::new();
        if total_weight > 0 {
            let live = nodes.iter().filter(|node| node.weight > 0).count();
            for (index, node) in nodes.iter().enumerate() {
                if node.weight == 0 {
                    continue;
                }
                let points = points_for(node.weight, total_weight, live, points_per_server);
                for hash_index in 0..points / POINTS_PER_HASH {
                    let label = format!("{}-{hash_index}", node.name);
                    let label = &label.as_bytes()[..label.len().min(MAX_LABEL_LEN)];
                    let digest = md5(label);
                    for quarter in digest.chunks_exact(4) {
                        let value = u32::from_le_bytes([quarter[0], quarter[1], quarter[2], quarter[3]]);
                        continuum.push((value, index));
                    }
                }
            }
        }
        // Stable: equal points keep node order, as glibc's merge-sorting qsort keeps them.
        continuum.sort_by_key(|(value, _)| *value);
        KetamaRing { continuum, nodes }
    }

    /// A ring of equally weighted nodes with twemproxy's 160 points each.
    pub fn with_names<S: AsRef<str>>(names: &[S]) -> KetamaRing {
        KetamaRing::new(
            names
                .iter()
                .map(|name| KetamaNode::named(name.as_ref()))
                .collect(),
            POINTS_PER_SERVER,
        )
    }

    /// Index (into [`Self::nodes`]) of the node owning `hash`, or `None` for an empty ring.
    pub fn index_for_hash(&self, hash: u32) -> Option<usize> {
        let position = self.continuum.partition_point(|(value, _)| *value < hash);
        self.continuum
            .get(position)
            .or_else(|| self.continuum.first())
            .map(|(_, index)| *index)
    }

    /// Index of the node owning `key` hashed with `hash`, after the hash tag is applied.
    pub fn index_for_key(&self, key: &[u8], hash: KeyHash, tag: Option<(u8, u8)>) -> Option<usize> {
        self.index_for_hash(hash.hash(hashed_part(key, tag)))
    }

    /// The nodes, in the order given.
    pub fn nodes(&self) -> &[KetamaNode] {
        &self.nodes
    }

    /// Points on the continuum.
    pub fn points(&self) -> usize {
        self.continuum.len()
    }
}

/// Points of one node, in twemproxy's single-precision arithmetic:
/// `floorf((float)(pct * 160 / 4 * (float)live + 1e-10)) * 4`.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
fn points_for(weight: u32, total_weight: u64, live: usize, points_per_server: u32) -> u32 {
    let share = weight as f32 / total_weight as f32;
    let quarter = share * points_per_server as f32 / POINTS_PER_HASH as f32 * live as f32;
    // The `1e-10` literal is a double in C: the sum is taken in double, then narrowed again.
    let quarter = (f64::from(quarter) + 1e-10) as f32;
    (quarter.floor() as u32).saturating_mul(POINTS_PER_HASH)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(digest: [u8; 16]) -> String {
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn md5_matches_the_rfc_1321_test_suite() {
        let cases = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            ("abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, digest) in cases {
            assert_eq!(hex(md5(input.as_bytes())), digest, "md5({input:?})");
        }
    }

    #[test]
    fn md5_table_is_the_sine_table() {
        for (i, k) in MD5_K.iter().enumerate() {
            let expected = ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0).floor() as u32;
            assert_eq!(*k, expected, "K[{i}]");
        }
    }

    #[test]
    fn fnv1a_64_is_the_low_half_of_real_fnv1a_for_ascii() {
        for key in ["", "a", "foobar", "user:1234"] {
            #[allow(clippy::cast_possible_truncation)]
            let low = crate::fnv1a64(key.as_bytes()) as u32;
            assert_eq!(fnv1a_64(key.as_bytes()), low, "{key}");
        }
    }

    #[test]
    fn fnv1a_64_sign_extends_high_bytes_like_a_c_char() {
        #[allow(clippy::cast_possible_truncation)]
        let unsigned = crate::fnv1a64("é".as_bytes()) as u32;
        assert_ne!(fnv1a_64("é".as_bytes()), unsigned);
    }

    #[test]
    fn murmur3_matches_reference_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"hello", 0), 0x248b_fa47);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    #[test]
    fn equal_weights_give_every_node_the_same_number_of_points() {
        for count in 1..12 {
            let names: Vec<String> = (0..count).map(|i| format!("shard-{i}")).collect();
            let ring = KetamaRing::with_names(&names);
            assert_eq!(
                ring.points() % count,
                0,
                "{count} nodes: {} points",
                ring.points()
            );
        }
    }

    #[test]
    fn heavier_nodes_get_proportionally_more_points() {
        let ring = KetamaRing::new(
            vec![
                KetamaNode {
                    name: "a".into(),
                    weight: 1,
                },
                KetamaNode {
                    name: "b".into(),
                    weight: 3,
                },
            ],
            POINTS_PER_SERVER,
        );
        let heavy = ring.continuum.iter().filter(|(_, index)| *index == 1).count();
        let light = ring.continuum.iter().filter(|(_, index)| *index == 0).count();
        assert_eq!((light, heavy), (80, 240));
    }

    #[test]
    fn a_key_belongs_to_the_first_point_at_or_after_its_hash_wrapping_around() {
        let ring = KetamaRing::with_names(&["a", "b", "c"]);
        let (first_value, first_node) = ring.continuum[0];
        let (second_value, second_node) = ring.continuum[1];
        assert_eq!(ring.index_for_hash(first_value), Some(first_node));
        assert_eq!(ring.index_for_hash(first_value + 1), Some(second_node));
        assert_eq!(ring.index_for_hash(second_value), Some(second_node));
        let (last_value, _) = ring.continuum[ring.continuum.len() - 1];
        assert!(last_value < u32::MAX, "480 points leave room after the last one");
        assert_eq!(ring.index_for_hash(last_value + 1), Some(first_node));
        assert_eq!(ring.index_for_hash(0), Some(first_node));
    }

    #[test]
    fn adding_a_node_moves_keys_only_to_it() {
        let before = KetamaRing::with_names(&["s0", "s1", "s2"]);
        let after = KetamaRing::with_names(&["s0", "s1", "s2", "s3"]);
        let mut moved = 0;
        for i in 0..10_000 {
            let key = format!("key:{i}");
            let old = before
                .index_for_key(key.as_bytes(), KeyHash::Fnv1a64, None)
                .unwrap();
            let new = after
                .index_for_key(key.as_bytes(), KeyHash::Fnv1a64, None)
                .unwrap();
            if old != new {
                moved += 1;
                assert_eq!(new, 3);
            }
        }
        assert!((1_500..3_500).contains(&moved), "{moved}");
    }

    #[test]
    fn hash_tags_keep_related_keys_together() {
        let ring = KetamaRing::with_names(&["s0", "s1", "s2", "s3"]);
        let tag = Some((b'{', b'}'));
        for user in 0..200 {
            let cart = format!("user:{{{user}}}:cart");
            let profile = format!("user:{{{user}}}:profile");
            assert_eq!(
                ring.index_for_key(cart.as_bytes(), KeyHash::Md5, tag),
                ring.index_for_key(profile.as_bytes(), KeyHash::Md5, tag)
            );
        }
    }

    #[test]
    fn an_empty_ring_owns_nothing() {
        assert_eq!(KetamaRing::with_names::<&str>(&[]).index_for_hash(7), None);
        let zero = KetamaRing::new(
            vec![KetamaNode {
                name: "z".into(),
                weight: 0,
            }],
            160,
        );
        assert_eq!(zero.index_for_hash(7), None);
    }
}
