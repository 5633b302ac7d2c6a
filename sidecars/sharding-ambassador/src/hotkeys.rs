//! Hot keys: which keys take the most commands, estimated with the space-saving algorithm
//! (Metwally et al.) over a sample of the commands, in bounded memory whatever the key space.
//!
//! Every client samples one keyed command in [`HotKeys::every`]; a sampled key goes into a table of
//! [`TRACKED`] counters. A key already tracked counts up; a new key takes over the counter of the
//! least counted key and starts from its count (the over-estimate space-saving is known for, which
//! never hides a key more frequent than 1/`TRACKED` of the sample). Counts halve every
//! [`HALF_LIFE`] samples, so a key that cools down leaves the top. The metrics export the top
//! [`EXPORTED`], so label cardinality stays bounded.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc, Mutex,
};

/// Counters in the table: keys above 1/`TRACKED` of the sample are never missed.
pub const TRACKED: usize = 64;
/// Keys exported as metric series.
pub const EXPORTED: usize = 10;
/// Samples between two halvings of every count.
pub const HALF_LIFE: u64 = 1 << 16;
/// Longest key label, in characters; longer keys are cut and end in `…`.
pub const MAX_KEY_LABEL: usize = 64;
/// One keyed command in this many is sampled by default.
pub const DEFAULT_EVERY: u32 = 16;

/// The sampled hot key table, shared by every client.
#[derive(Debug)]
pub struct HotKeys {
    every: u32,
    table: Mutex<SpaceSaving>,
    sampled: AtomicU64,
    /// Calls of [`HotKeys::record_sampled`].
    calls: AtomicU64,
}

impl Default for HotKeys {
    fn default() -> Self {
        HotKeys::new(DEFAULT_EVERY)
    }
}

/// One of the hottest keys.
#[derive(Debug, Clone, PartialEq)]
pub struct HotKey {
    /// The key as a label: printable, at most [`MAX_KEY_LABEL`] characters.
    pub key: String,
    pub shard: Option<Arc<str>>,
    /// Estimated share of the sampled keyed commands, 0 to 1.
    pub share: f64,
}

impl HotKeys {
    /// Samples one keyed command in `every` (at least 1: every command).
    pub fn new(every: u32) -> HotKeys {
        HotKeys {
            every: every.max(1),
            table: Mutex::new(SpaceSaving::new(TRACKED)),
            sampled: AtomicU64::new(0),
            calls: AtomicU64::new(0),
        }
    }

    /// One keyed command in this many is sampled.
    pub fn every(&self) -> u32 {
        self.every
    }

    /// Samples one call in [`HotKeys::every`], for callers without a sampling counter of their
    /// own (HTTP requests).
    pub fn record_sampled(&self, key: &[u8], shard: Option<Arc<str>>) {
        if self
            .calls
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(u64::from(self.every))
        {
            self.record(key, shard);
        }
    }

    /// Counts a sampled command on `key`. A table busy with another client's sample skips this
    /// one rather than make a client wait.
    pub fn record(&self, key: &[u8], shard: Option<Arc<str>>) {
        let Ok(mut table) = self.table.try_lock() else {
            return;
        };
        table.insert(key, shard);
        if table.total >= HALF_LIFE {
            table.halve();
        }
        drop(table);
        self.sampled.fetch_add(1, Ordering::Relaxed);
    }

    /// Commands sampled since start.
    pub fn sampled(&self) -> u64 {
        self.sampled.load(Ordering::Relaxed)
    }

    /// The hottest keys, hottest first, at most [`EXPORTED`].
    pub fn top(&self) -> Vec<HotKey> {
        let table = self
            .table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        table.top(EXPORTED)
    }
}

/// Space-saving counters. A linear scan of 64 short keys costs less than hashing and is done on
/// sampled commands only.
#[derive(Debug)]
struct SpaceSaving {
    entries: Vec<Entry>,
    capacity: usize,
    /// Samples counted (halved with the counts).
    total: u64,
}

#[derive(Debug)]
struct Entry {
    /// At most [`MAX_KEY_BYTES`] bytes of the key: longer keys sharing a prefix share a counter.
    key: Box<[u8]>,
    shard: Option<Arc<str>>,
    count: u64,
}

/// Bytes of a key kept in the table.
const MAX_KEY_BYTES: usize = 256;

impl SpaceSaving {
    fn new(capacity: usize) -> SpaceSaving {
        SpaceSaving {
            entries: Vec::with_capacity(capacity),
            capacity: capacity.max(1),
            total: 0,
        }
    }

    fn insert(&mut self, key: &[u8], shard: Option<Arc<str>>) {
        let key = &key[..key.len().min(MAX_KEY_BYTES)];
        self.total += 1;
        if let Some(entry) = self.entries.iter_mut().find(|entry| &*entry.key == key) {
            entry.count += 1;
            entry.shard = shard;
            return;
        }
        if self.entries.len() < self.capacity {
            self.entries.push(Entry {
                key: key.into(),
                shard,
                count: 1,
            });
            return;
        }
        if let Some(least) = self.entries.iter_mut().min_by_key(|entry| entry.count) {
            // The newcomer inherits the count it displaces: space-saving's bounded over-estimate.
            least.key = key.into();
            least.shard = shard;
            least.count += 1;
        }
    }

    fn halve(&mut self) {
        self.total /= 2;
        for entry in &mut self.entries {
            entry.count /= 2;
        }
    }

    #[allow(clippy::cast_precision_loss)] // counts below 2^17
    fn top(&self, n: usize) -> Vec<HotKey> {
        let mut ranked: Vec<&Entry> = self.entries.iter().filter(|entry| entry.count > 0).collect();
        ranked.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        ranked
            .into_iter()
            .take(n)
            .map(|entry| HotKey {
                key: key_label(&entry.key),
                shard: entry.shard.clone(),
                share: entry.count as f64 / self.total.max(1) as f64,
            })
            .collect()
    }
}

/// A key as a metric label: printable ASCII kept, other bytes as `\xNN`, cut at [`MAX_KEY_LABEL`]
/// characters.
pub fn key_label(key: &[u8]) -> String {
    let mut label = String::with_capacity(key.len().min(MAX_KEY_LABEL));
    for byte in key {
        let next = if byte.is_ascii_graphic() || *byte == b' ' {
            char::from(*byte).to_string()
        } else {
            format!("\\x{byte:02x}")
        };
        if label.chars().count() + next.len() > MAX_KEY_LABEL {
            label.push('…');
            break;
        }
        label.push_str(&next);
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hottest_keys_come_first_with_their_share() {
        let hot = HotKeys::new(1);
        for i in 0..1_000 {
            hot.record(b"popular", Some(Arc::from("s-0")));
            if i % 4 == 0 {
                hot.record(b"warm", Some(Arc::from("s-1")));
            }
            hot.record(format!("cold:{i}").as_bytes(), None);
        }
        let top = hot.top();
        assert_eq!(top[0].key, "popular");
        assert_eq!(top[0].shard.as_deref(), Some("s-0"));
        assert_eq!(top[1].key, "warm");
        let share = 1_000.0 / 2_250.0;
        assert!((top[0].share - share).abs() < 0.01, "{}", top[0].share);
        assert!(top.len() <= EXPORTED);
    }

    #[test]
    fn a_million_distinct_keys_keep_the_table_bounded() {
        let mut table = SpaceSaving::new(TRACKED);
        for i in 0..1_000_000_u32 {
            table.insert(&i.to_be_bytes(), None);
            table.insert(b"hot", None);
        }
        assert_eq!(table.entries.len(), TRACKED);
        assert_eq!(table.top(1)[0].key, "hot");
    }

    #[test]
    fn a_key_that_cools_down_leaves_the_top() {
        let hot = HotKeys::new(1);
        for _ in 0..HALF_LIFE {
            hot.record(b"yesterday", None);
        }
        for round in 0..4 * HALF_LIFE {
            hot.record(b"today", None);
            hot.record(format!("noise:{}", round % 1_000).as_bytes(), None);
        }
        assert_eq!(hot.top()[0].key, "today");
    }

    #[test]
    fn labels_are_printable_and_short() {
        assert_eq!(key_label(b"user:{42}"), "user:{42}");
        assert_eq!(key_label(b"a\r\n\x00"), "a\\x0d\\x0a\\x00");
        let long = key_label(&[b'k'; 500]);
        assert_eq!(long.chars().count(), MAX_KEY_LABEL + 1);
        assert!(long.ends_with('…'));
    }
}
