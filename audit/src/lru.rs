//! A small least-recently-used map: the bounded caches of tiles and decompressed blocks.
//! Entries never change once written (tiles and sealed blocks are immutable), so a hit is
//! never stale.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// An entry and the tick it was last used at.
type Slot<V> = (Arc<V>, u64);

pub struct Lru<K, V> {
    capacity: usize,
    tick: u64,
    entries: HashMap<K, Slot<V>>,
}

impl<K: Hash + Eq + Copy, V> Lru<K, V> {
    pub fn new(capacity: usize) -> Self {
        Lru { capacity: capacity.max(1), tick: 0, entries: HashMap::new() }
    }

    pub fn get(&mut self, key: K) -> Option<Arc<V>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(&key).map(|(v, used)| {
            *used = tick;
            v.clone()
        })
    }

    /// Adds an entry, evicting the least recently used one when full.
    pub fn put(&mut self, key: K, value: Arc<V>) {
        if self.entries.len() >= self.capacity
            && !self.entries.contains_key(&key)
            && let Some(oldest) = self.entries.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| *k)
        {
            self.entries.remove(&oldest);
        }
        self.tick += 1;
        self.entries.insert(key, (value, self.tick));
    }

    pub fn remove(&mut self, key: K) {
        self.entries.remove(&key);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let mut c = Lru::new(2);
        c.put(1, Arc::new("a"));
        c.put(2, Arc::new("b"));
        assert!(c.get(1).is_some());
        c.put(3, Arc::new("c"));
        assert!(c.get(2).is_none());
        assert_eq!((c.get(1).as_deref(), c.get(3).as_deref(), c.len()), (Some(&"a"), Some(&"c"), 2));
    }
}
