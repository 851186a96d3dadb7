//! The shared sliding window: one bucket per tick epoch, each holding the summed totals and
//! the merged top entries of every worker's drained [`SpaceSaving`](crate::sketch::SpaceSaving)
//! for that epoch. Every worker merges its drain on its tick into one shared-data value;
//! rates are read over the last `window_buckets` epochs.
//!
//! A key can be in some buckets' top lists and not in others (or not in every worker's
//! sketch); rates sum what is there, so they under-estimate by at most the dropped counts,
//! which the sketch error and `max_entries` bound. Counts themselves are Space-Saving
//! over-estimates (`count`, not `count - error`).
//!
//! Value layout (little endian), version 1:
//! `u8 VERSION, u8 n_buckets (<= 64)`, then per bucket
//! `u64 epoch, u64 total, u32 n_entries (<= 256)`, then per entry
//! `u64 fp, u64 count, u64 error, u8 key_len (<= 128), key bytes`.
//! Buckets have strictly ascending epochs; fps are unique within a bucket; `error <= count`.

use std::collections::HashMap;

use crate::codec::{Reader, Writer};

use crate::sketch::{by_count_desc, truncate_key, Counted, MAX_KEY_BYTES};

/// Layout version (first byte).
pub const VERSION: u8 = 1;
/// Most buckets a view holds; `window_buckets` is clamped to `1..=MAX_BUCKETS`.
pub const MAX_BUCKETS: usize = 64;
/// Most entries a bucket holds; `max_entries` is clamped to this.
pub const MAX_ENTRIES: usize = 256;

/// One epoch (tick) of the window, summed over workers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    pub epoch: u64,
    /// All requests counted in this epoch, including those of keys not in `entries`.
    pub total: u64,
    /// Top keys, count desc then fp asc.
    pub entries: Vec<Counted>,
}

/// The shared view: buckets ordered by epoch ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    pub buckets: Vec<Bucket>,
}

/// A key's rate over the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rate {
    pub fp: u64,
    pub key: Vec<u8>,
    pub milli_rps: u64,
}

fn clamp_window(window_buckets: u64) -> u64 {
    window_buckets.clamp(1, MAX_BUCKETS as u64)
}

/// `count` requests over `window_ms` ms, in milli-requests per second (saturating).
fn milli_rps(count: u64, window_ms: u128) -> u64 {
    let v = u128::from(count).saturating_mul(1_000_000) / window_ms.max(1);
    u64::try_from(v).unwrap_or(u64::MAX)
}

impl View {
    /// Decodes a view; `None` for anything that is not a valid v1 value (wrong version, short,
    /// trailing bytes, too many buckets or entries, a key longer than [`MAX_KEY_BYTES`],
    /// epochs not strictly ascending, a repeated fp in a bucket, `error > count`).
    /// An empty value is an empty view.
    pub fn decode(bytes: &[u8]) -> Option<View> {
        if bytes.is_empty() {
            return Some(View::default());
        }
        let mut r = Reader::new(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let nb = usize::from(r.u8()?);
        if nb > MAX_BUCKETS {
            return None;
        }
        let mut buckets: Vec<Bucket> = Vec::with_capacity(nb);
        for _ in 0..nb {
            let epoch = r.u64()?;
            if buckets.last().is_some_and(|b| b.epoch >= epoch) {
                return None;
            }
            let total = r.u64()?;
            let ne = usize::try_from(r.u32()?).ok()?;
            if ne > MAX_ENTRIES {
                return None;
            }
            let mut entries: Vec<Counted> = Vec::with_capacity(ne);
            for _ in 0..ne {
                let fp = r.u64()?;
                let count = r.u64()?;
                let error = r.u64()?;
                let kl = usize::from(r.u8()?);
                if kl > MAX_KEY_BYTES || error > count || entries.iter().any(|e| e.fp == fp) {
                    return None;
                }
                let key = r.take(kl)?.to_vec();
                entries.push(Counted {
                    fp,
                    key,
                    count,
                    error,
                });
            }
            buckets.push(Bucket {
                epoch,
                total,
                entries,
            });
        }
        if r.remaining() != 0 {
            return None;
        }
        Some(View { buckets })
    }

    /// Encodes the view. A view built by `merge` round-trips exactly; a hand-built one is cut
    /// to its newest [`MAX_BUCKETS`] buckets, [`MAX_ENTRIES`] entries each and keys of at most
    /// [`MAX_KEY_BYTES`].
    pub fn encode(&self) -> Vec<u8> {
        let skip = self.buckets.len().saturating_sub(MAX_BUCKETS);
        let buckets = self.buckets.iter().skip(skip);
        let mut w = Writer::with_capacity(2);
        w.u8(VERSION).u8(buckets.len() as u8);
        for b in buckets {
            let n = b.entries.len().min(MAX_ENTRIES);
            w.u64(b.epoch).u64(b.total).u32(n as u32);
            for e in b.entries.iter().take(n) {
                let key = truncate_key(&e.key);
                w.u64(e.fp)
                    .u64(e.count)
                    .u64(e.error)
                    .u8(key.len() as u8)
                    .bytes(key);
            }
        }
        w.finish()
    }

    /// Adds one worker's drained tick into bucket `epoch` (created if absent; counts and
    /// errors of equal fp are summed), keeps at most `max_entries` (clamped to
    /// [`MAX_ENTRIES`]) entries per bucket, the highest counts (dropped counts stay in
    /// `total`), and drops buckets outside the window `(now - window_buckets, now]`.
    ///
    /// `now` is the newest epoch seen: `epoch`, or a newer bucket another worker already
    /// wrote less than a window ahead, so a worker whose tick is a little behind does not
    /// expire its peers' newer bucket. A bucket a whole window or more ahead of `epoch` means
    /// the clock stepped back (workers read the same clock on their tick): then `now = epoch`
    /// and those future buckets are dropped, so the view never gets stuck in the future.
    pub fn merge(
        &mut self,
        epoch: u64,
        total: u64,
        entries: &[Counted],
        window_buckets: u64,
        max_entries: usize,
    ) {
        let w = clamp_window(window_buckets);
        let max_entries = max_entries.min(MAX_ENTRIES);
        let newest = self.buckets.iter().map(|b| b.epoch).max().unwrap_or(epoch);
        let now = if newest > epoch && newest - epoch < w {
            newest
        } else {
            epoch
        };
        self.buckets
            .retain(|b| b.epoch <= now && b.epoch.saturating_add(w) > now);
        let idx = match self.buckets.binary_search_by_key(&epoch, |b| b.epoch) {
            Ok(i) => i,
            Err(i) => {
                self.buckets.insert(
                    i,
                    Bucket {
                        epoch,
                        ..Bucket::default()
                    },
                );
                i
            }
        };
        let Some(b) = self.buckets.get_mut(idx) else {
            return;
        };
        b.total = b.total.saturating_add(total);
        let mut at: HashMap<u64, usize> = b
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.fp, i))
            .collect();
        for e in entries {
            match at.get(&e.fp).and_then(|&i| b.entries.get_mut(i)) {
                Some(x) => {
                    x.count = x.count.saturating_add(e.count);
                    x.error = x.error.saturating_add(e.error).min(x.count);
                    if x.key.is_empty() {
                        x.key = truncate_key(&e.key).to_vec();
                    }
                }
                None => {
                    at.insert(e.fp, b.entries.len());
                    b.entries.push(Counted {
                        fp: e.fp,
                        key: truncate_key(&e.key).to_vec(),
                        count: e.count,
                        error: e.error.min(e.count),
                    });
                }
            }
        }
        b.entries.sort_unstable_by(by_count_desc);
        b.entries.truncate(max_entries);
    }

    /// Rates over the window ending at `now_epoch` (buckets with epoch in
    /// `(now_epoch - window_buckets, now_epoch]`, `window_buckets` clamped to
    /// `1..=MAX_BUCKETS`), in milli-requests per second:
    /// `sum(count) * 1000 * 1000 / (window_buckets * bucket_ms)`. Returns the total rate and
    /// the per-key rates sorted by rate desc, then fp asc.
    pub fn rates(&self, now_epoch: u64, window_buckets: u64, bucket_ms: u64) -> (u64, Vec<Rate>) {
        let w = clamp_window(window_buckets);
        let window_ms = u128::from(w) * u128::from(bucket_ms.max(1));
        let mut total: u64 = 0;
        let mut sums: HashMap<u64, (usize, u64)> = HashMap::new();
        let mut keys: Vec<(u64, &[u8])> = Vec::new();
        for b in self
            .buckets
            .iter()
            .filter(|b| b.epoch <= now_epoch && b.epoch.saturating_add(w) > now_epoch)
        {
            total = total.saturating_add(b.total);
            for e in &b.entries {
                let slot = sums.entry(e.fp).or_insert_with(|| {
                    keys.push((e.fp, &e.key));
                    (keys.len() - 1, 0)
                });
                slot.1 = slot.1.saturating_add(e.count);
                if let Some(k) = keys.get_mut(slot.0) {
                    if k.1.is_empty() {
                        k.1 = &e.key;
                    }
                }
            }
        }
        let mut out: Vec<Rate> = keys
            .iter()
            .map(|(fp, key)| Rate {
                fp: *fp,
                key: key.to_vec(),
                milli_rps: milli_rps(sums.get(fp).map_or(0, |s| s.1), window_ms),
            })
            .collect();
        out.sort_unstable_by(|a, b| b.milli_rps.cmp(&a.milli_rps).then(a.fp.cmp(&b.fp)));
        (milli_rps(total, window_ms), out)
    }
}

impl crate::store::Decode for View {
    fn decode(b: &[u8]) -> Option<View> {
        View::decode(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(fp: u64, count: u64) -> Counted {
        Counted {
            fp,
            key: vec![b'k', fp as u8],
            count,
            error: 0,
        }
    }

    #[test]
    fn lagging_worker_keeps_newer_bucket_and_clock_step_back_resets() {
        let mut v = View::default();
        v.merge(11, 5, &[c(1, 5)], 3, 8);
        v.merge(10, 4, &[c(1, 4)], 3, 8);
        assert_eq!(
            v.buckets.iter().map(|b| b.epoch).collect::<Vec<_>>(),
            vec![10, 11]
        );
        assert_eq!(v.buckets[0].total, 4);
        // 13 expires 10 (10 + 3 <= 13) but keeps 11.
        v.merge(13, 1, &[c(1, 1)], 3, 8);
        assert_eq!(
            v.buckets.iter().map(|b| b.epoch).collect::<Vec<_>>(),
            vec![11, 13]
        );
        // Clock stepped back by a whole window (13 - 10 >= 3): the future buckets go.
        v.merge(10, 1, &[c(1, 1)], 3, 8);
        assert_eq!(v.buckets.len(), 1);
        assert_eq!(v.buckets[0].epoch, 10);
    }
}
