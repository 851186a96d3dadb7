//! Per-worker, per-tick heavy-hitter counting in bounded memory: Space-Saving (Metwally,
//! Agrawal, El Abbadi, "Efficient Computation of Frequent and Top-k Elements in Data
//! Streams", 2005).
//!
//! `capacity` counters are kept in a binary min-heap indexed by fingerprint, so `add` is
//! O(log capacity). When a new key arrives and every counter is taken, the minimum counter
//! is given to it: `count = min + n`, `error = min`. Guarantees (for the items added since the
//! last `drain`, with `total` their sum):
//! - every key whose true count is greater than `total / capacity` holds a counter;
//! - for every counter, `count - error <= true count <= count`.
//!
//! Memory is `capacity` counters (each with a key of at most [`MAX_KEY_BYTES`]) plus the
//! index, whatever the number of distinct keys.

use std::collections::HashMap;

/// Keys kept for naming are truncated to this many bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// One counter: fingerprint, (truncated) key, over-estimated count and its maximum error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counted {
    pub fp: u64,
    pub key: Vec<u8>,
    pub count: u64,
    pub error: u64,
}

/// `key` cut to at most [`MAX_KEY_BYTES`].
pub fn truncate_key(key: &[u8]) -> &[u8] {
    key.get(..MAX_KEY_BYTES).unwrap_or(key)
}

/// Sort order of drained counters and window entries: count desc, then fp asc.
pub fn by_count_desc(a: &Counted, b: &Counted) -> std::cmp::Ordering {
    b.count.cmp(&a.count).then(a.fp.cmp(&b.fp))
}

/// Space-Saving with a fixed number of counters.
#[derive(Debug, Clone)]
pub struct SpaceSaving {
    capacity: usize,
    total: u64,
    /// Min-heap on `count`.
    heap: Vec<Counted>,
    /// fp -> index in `heap`.
    pos: HashMap<u64, usize>,
}

impl SpaceSaving {
    /// `capacity` counters (at least 1).
    pub fn new(capacity: usize) -> Self {
        SpaceSaving {
            capacity: capacity.max(1),
            total: 0,
            heap: Vec::new(),
            pos: HashMap::new(),
        }
    }

    /// Counts `n` occurrences of the key `fp` (named `key`, truncated to [`MAX_KEY_BYTES`]).
    /// `n == 0` changes nothing.
    pub fn add(&mut self, fp: u64, key: &[u8], n: u64) {
        if n == 0 {
            return;
        }
        self.total = self.total.saturating_add(n);
        if let Some(&i) = self.pos.get(&fp) {
            if let Some(c) = self.heap.get_mut(i) {
                c.count = c.count.saturating_add(n);
            }
            self.sift_down(i);
            return;
        }
        if self.heap.len() < self.capacity {
            let i = self.heap.len();
            self.heap.push(Counted {
                fp,
                key: truncate_key(key).to_vec(),
                count: n,
                error: 0,
            });
            self.pos.insert(fp, i);
            self.sift_up(i);
            return;
        }
        // Full: the minimum counter (heap root) is taken over by the new key.
        if let Some(c) = self.heap.first_mut() {
            let min = c.count;
            self.pos.remove(&c.fp);
            c.fp = fp;
            c.key.clear();
            c.key.extend_from_slice(truncate_key(key));
            c.count = min.saturating_add(n);
            c.error = min;
            self.pos.insert(fp, 0);
            self.sift_down(0);
        }
    }

    /// Sum of all `n` added since the last drain.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Counters in use (at most the capacity).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// `(total, counters sorted by count desc then fp asc)`, and resets to empty (keeping the
    /// allocations for the next tick).
    pub fn drain(&mut self) -> (u64, Vec<Counted>) {
        let mut out: Vec<Counted> = self.heap.drain(..).collect();
        out.sort_unstable_by(by_count_desc);
        self.pos.clear();
        let total = std::mem::take(&mut self.total);
        (total, out)
    }

    fn count_at(&self, i: usize) -> u64 {
        self.heap.get(i).map_or(u64::MAX, |c| c.count)
    }

    fn swap(&mut self, i: usize, j: usize) {
        if i >= self.heap.len() || j >= self.heap.len() {
            return;
        }
        self.heap.swap(i, j);
        for k in [i, j] {
            if let Some(c) = self.heap.get(k) {
                self.pos.insert(c.fp, k);
            }
        }
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.count_at(i) < self.count_at(parent) {
                self.swap(i, parent);
                i = parent;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let len = self.heap.len();
        loop {
            let left = i.saturating_mul(2).saturating_add(1);
            let right = left.saturating_add(1);
            let mut smallest = i;
            if left < len && self.count_at(left) < self.count_at(smallest) {
                smallest = left;
            }
            if right < len && self.count_at(right) < self.count_at(smallest) {
                smallest = right;
            }
            if smallest == i {
                break;
            }
            self.swap(i, smallest);
            i = smallest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_invariants(s: &SpaceSaving) {
        assert_eq!(s.pos.len(), s.heap.len());
        for (i, c) in s.heap.iter().enumerate() {
            assert_eq!(s.pos.get(&c.fp), Some(&i));
            if i > 0 {
                assert!(s.heap[(i - 1) / 2].count <= c.count);
            }
            assert!(c.error <= c.count);
        }
        let sum: u64 = s.heap.iter().map(|c| c.count).sum();
        assert_eq!(sum, s.total, "Space-Saving keeps sum(count) == total");
    }

    #[test]
    fn heap_and_index_stay_consistent_under_churn() {
        let mut s = SpaceSaving::new(8);
        let mut x: u64 = 1;
        for _ in 0..5000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let fp = (x >> 33) % 40;
            s.add(fp, &fp.to_le_bytes(), 1 + (x >> 60));
            check_invariants(&s);
        }
        assert_eq!(s.len(), 8);
        let (_, d) = s.drain();
        assert_eq!(d.len(), 8);
        check_invariants(&s);
        assert!(s.is_empty());
    }

    #[test]
    fn long_keys_are_truncated_and_zero_adds_are_ignored() {
        let mut s = SpaceSaving::new(0);
        s.add(1, &[7u8; 300], 0);
        assert!(s.is_empty());
        s.add(1, &[7u8; 300], 2);
        let (t, d) = s.drain();
        assert_eq!(t, 2);
        assert_eq!(d[0].key.len(), MAX_KEY_BYTES);
    }
}
