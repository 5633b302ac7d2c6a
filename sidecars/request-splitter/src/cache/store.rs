//! The cache's memory: values by key, bounded in bytes, the least recently used evicted first.
//! Pure: no locks, no clock (recency is a counter), so that the accounting is tested exactly.

use std::collections::{BTreeMap, HashMap};

/// What a value costs in memory, in bytes (its key is counted by the store).
pub trait Weigh {
    fn weight(&self) -> u64;
}

/// Bytes of bookkeeping counted per entry beside its key (twice: map and order) and value.
pub const ENTRY_OVERHEAD: u64 = 96;

/// A store bounded by `capacity` bytes.
#[derive(Debug)]
pub struct Lru<V> {
    entries: HashMap<String, Slot<V>>,
    /// Recency: tick → key, oldest first.
    order: BTreeMap<u64, String>,
    next_tick: u64,
    bytes: u64,
    capacity: u64,
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    tick: u64,
    weight: u64,
}

/// What an insertion did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inserted {
    /// The value is in the store (false when it alone is larger than the capacity).
    pub stored: bool,
    /// Entries evicted to make room.
    pub evicted: u64,
}

impl<V: Weigh> Lru<V> {
    pub fn new(capacity: u64) -> Lru<V> {
        Lru {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_tick: 0,
            bytes: 0,
            capacity,
        }
    }

    /// Bytes held now (never more than the capacity).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// The value of `key`, marked as the most recently used.
    pub fn get(&mut self, key: &str) -> Option<&V> {
        let tick = self.tick();
        let slot = self.entries.get_mut(key)?;
        if let Some(owned) = self.order.remove(&slot.tick) {
            self.order.insert(tick, owned);
        }
        slot.tick = tick;
        Some(&slot.value)
    }

    /// Stores `value` under `key` (replacing what was there), evicting the least recently used
    /// entries until everything fits. A value larger than the whole capacity is not stored, and
    /// evicts nothing.
    pub fn insert(&mut self, key: String, value: V) -> Inserted {
        let weight = weight_of(&key, &value);
        self.remove(&key);
        if weight > self.capacity {
            return Inserted {
                stored: false,
                evicted: 0,
            };
        }
        let evicted = self.evict_to(self.capacity - weight);
        let tick = self.tick();
        self.order.insert(tick, key.clone());
        self.entries.insert(key, Slot { value, tick, weight });
        self.bytes += weight;
        Inserted {
            stored: true,
            evicted,
        }
    }

    /// Takes `key` out.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let slot = self.entries.remove(key)?;
        self.order.remove(&slot.tick);
        self.bytes -= slot.weight;
        Some(slot.value)
    }

    /// Changes the capacity, evicting what no longer fits; returns the entries evicted.
    pub fn set_capacity(&mut self, capacity: u64) -> u64 {
        self.capacity = capacity;
        self.evict_to(capacity)
    }

    /// Removes every entry whose key `matches`; returns how many.
    pub fn purge(&mut self, mut matches: impl FnMut(&str) -> bool) -> u64 {
        let doomed: Vec<String> = self.entries.keys().filter(|key| matches(key)).cloned().collect();
        for key in &doomed {
            self.remove(key);
        }
        doomed.len() as u64
    }

    /// Evicts the least recently used entries until at most `limit` bytes are held.
    fn evict_to(&mut self, limit: u64) -> u64 {
        let mut evicted = 0;
        while self.bytes > limit {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(slot) = self.entries.remove(&key) {
                self.bytes -= slot.weight;
                evicted += 1;
            }
        }
        evicted
    }

    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }
}

fn weight_of<V: Weigh>(key: &str, value: &V) -> u64 {
    2 * key.len() as u64 + ENTRY_OVERHEAD + value.weight()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Blob(u64);

    impl Weigh for Blob {
        fn weight(&self) -> u64 {
            self.0
        }
    }

    /// Weight of a one-letter key with a blob of `n` bytes.
    fn w(n: u64) -> u64 {
        2 + ENTRY_OVERHEAD + n
    }

    #[test]
    fn the_least_recently_used_entry_goes_first_and_bytes_stay_within_the_capacity() {
        let mut lru = Lru::new(3 * w(100));
        for key in ["a", "b", "c"] {
            assert_eq!(lru.insert(key.to_owned(), Blob(100)).evicted, 0);
        }
        assert_eq!(lru.bytes(), 3 * w(100));
        // Reading `a` makes `b` the oldest.
        assert!(lru.get("a").is_some());
        let inserted = lru.insert("d".to_owned(), Blob(100));
        assert_eq!(
            inserted,
            Inserted {
                stored: true,
                evicted: 1
            }
        );
        assert!(lru.get("b").is_none());
        assert!(lru.get("a").is_some() && lru.get("c").is_some() && lru.get("d").is_some());
        // A large value evicts as many as it needs.
        let inserted = lru.insert("e".to_owned(), Blob(2 * w(100) - w(0)));
        assert_eq!(inserted.evicted, 2);
        assert!(lru.bytes() <= lru.capacity());
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn a_value_larger_than_the_capacity_is_refused_without_evicting() {
        let mut lru = Lru::new(w(100));
        lru.insert("a".to_owned(), Blob(100));
        assert_eq!(
            lru.insert("b".to_owned(), Blob(101)),
            Inserted {
                stored: false,
                evicted: 0
            }
        );
        assert_eq!(lru.get("a"), Some(&Blob(100)));
    }

    #[test]
    fn replacing_a_key_counts_only_the_new_value() {
        let mut lru = Lru::new(10 * w(100));
        lru.insert("a".to_owned(), Blob(100));
        lru.insert("a".to_owned(), Blob(50));
        assert_eq!(lru.bytes(), w(50));
        assert_eq!(lru.len(), 1);
        assert_eq!(lru.remove("a"), Some(Blob(50)));
        assert_eq!(lru.bytes(), 0);
        assert!(lru.is_empty());
    }

    #[test]
    fn shrinking_the_capacity_evicts_and_purge_removes_matching_keys() {
        let mut lru = Lru::new(4 * w(10));
        for key in ["a", "b", "c", "d"] {
            lru.insert(key.to_owned(), Blob(10));
        }
        assert_eq!(lru.set_capacity(2 * w(10)), 2);
        assert!(lru.get("a").is_none() && lru.get("b").is_none());
        assert_eq!(lru.purge(|key| key == "c"), 1);
        assert_eq!(lru.len(), 1);
        assert_eq!(lru.purge(|_| true), 1);
        assert_eq!(lru.bytes(), 0);
    }

    #[test]
    fn a_flood_of_distinct_keys_never_holds_more_than_the_capacity() {
        let capacity = 50 * w(1000);
        let mut lru = Lru::new(capacity);
        let mut evicted = 0;
        for index in 0..10_000u64 {
            let key = format!("/page/{index}");
            evicted += lru.insert(key, Blob(index % 2000)).evicted;
            assert!(lru.bytes() <= capacity);
        }
        assert!(evicted > 9_000);
    }
}
