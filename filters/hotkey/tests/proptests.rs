//! Property tests of the hotkey shared-data codecs: the windowed view (`sg:hk:<rule>:view`)
//! and the published hot set (`sg:hk:shed`).
//!
//! Natively, proptest keeps each failure's seed in `tests/proptests.proptest-regressions`
//! (commit it) and replays it first. On wasm32 nothing is persisted: node:wasi has no
//! filesystem preopened.
#![allow(clippy::indexing_slicing)] // test code: fail loudly

use proptest::prelude::*;
use sg_hotkey::detect::Hot;
use sg_hotkey::shed::{decode, encode, ShedEntry};
use sg_hotkey::sketch::{Counted, MAX_KEY_BYTES};
use sg_hotkey::window::{Bucket, View, MAX_BUCKETS};

fn config() -> ProptestConfig {
    #[allow(unused_mut)] // mutated on wasm32 only
    let mut c = ProptestConfig::default();
    #[cfg(target_arch = "wasm32")]
    {
        c.failure_persistence = None;
    }
    c
}

fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), Just(0), Just(u64::MAX), 0u64..1000]
}

fn key(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
}

/// A bucket as `View::decode` accepts it: unique fps, `error <= count`, keys within bound.
fn bucket(epoch: u64) -> impl Strategy<Value = Bucket> {
    (
        edgy_u64(),
        proptest::collection::btree_map(
            edgy_u64(),
            (edgy_u64(), any::<u64>(), key(MAX_KEY_BYTES)),
            0..6,
        ),
    )
        .prop_map(move |(total, m)| Bucket {
            epoch,
            total,
            entries: m
                .into_iter()
                .map(|(fp, (count, e, key))| Counted {
                    fp,
                    key,
                    count,
                    error: if count == 0 {
                        0
                    } else {
                        e % (count.saturating_add(1).max(1))
                    },
                })
                .collect(),
        })
}

/// A view with strictly ascending epochs (at most 6 buckets here; the bound is 64).
fn view() -> impl Strategy<Value = View> {
    proptest::collection::btree_set(edgy_u64(), 0..6)
        .prop_flat_map(|epochs| epochs.into_iter().map(bucket).collect::<Vec<_>>())
        .prop_map(|buckets| View { buckets })
}

fn hot() -> impl Strategy<Value = Hot> {
    // below_since_ms is stored +1 with 0 for None, so the layout holds times below u64::MAX
    // (ms since the Unix epoch: always).
    (
        edgy_u64(),
        key(MAX_KEY_BYTES + 40),
        edgy_u64(),
        edgy_u64(),
        proptest::option::of(0..u64::MAX),
    )
        .prop_map(|(fp, key, since_ms, milli_rps, below_since_ms)| Hot {
            fp,
            key,
            since_ms,
            milli_rps,
            below_since_ms,
        })
}

fn shed_entries() -> impl Strategy<Value = Vec<ShedEntry>> {
    proptest::collection::vec(
        (any::<u16>(), hot()).prop_map(|(rule, hot)| ShedEntry { rule, hot }),
        0..8,
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn view_round_trips(v in view()) {
        prop_assert_eq!(View::decode(&v.encode()), Some(v));
    }

    /// `merge` output round-trips exactly (what workers actually write).
    #[test]
    fn merged_views_round_trip(
        merges in proptest::collection::vec(
            (0u64..20, edgy_u64(), proptest::collection::vec((0u64..8, edgy_u64(), edgy_u64(), key(MAX_KEY_BYTES + 20)), 0..5), 1u64..70, 0usize..300),
            0..8,
        )
    ) {
        let mut v = View::default();
        for (epoch, total, entries, window, max_entries) in merges {
            let mut seen = std::collections::BTreeSet::new();
            let entries: Vec<Counted> = entries
                .into_iter()
                .filter(|e| seen.insert(e.0))
                .map(|(fp, count, error, key)| Counted { fp, key, count, error: error.min(count) })
                .collect();
            v.merge(epoch, total, &entries, window, max_entries);
            prop_assert!(v.buckets.len() <= MAX_BUCKETS);
            prop_assert_eq!(View::decode(&v.encode()), Some(v.clone()));
        }
    }

    #[test]
    fn view_decode_of_any_bytes_is_canonical_or_none(b in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Some(v) = View::decode(&b) {
            if !b.is_empty() {
                prop_assert_eq!(v.encode(), b);
            }
        }
    }

    #[test]
    fn view_decode_of_framed_garbage_never_panics(nb in 0u8..4, rest in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut b = vec![sg_hotkey::window::VERSION, nb];
        b.extend_from_slice(&rest);
        if let Some(v) = View::decode(&b) {
            prop_assert_eq!(v.encode(), b);
        }
    }

    /// An empty value is an empty view; every other prefix is unreadable.
    #[test]
    fn view_truncated_is_none(v in view()) {
        let b = v.encode();
        for n in 1..b.len() {
            prop_assert_eq!(View::decode(&b[..n]), None, "prefix {}", n);
        }
    }

    /// Round trip up to the documented key cut (MAX_KEY_BYTES).
    #[test]
    fn shed_round_trips(seq in edgy_u64(), entries in shed_entries()) {
        let want: Vec<ShedEntry> = entries
            .iter()
            .cloned()
            .map(|mut e| {
                e.hot.key.truncate(MAX_KEY_BYTES);
                e
            })
            .collect();
        prop_assert_eq!(decode(&encode(seq, &entries)), Some((seq, want)));
    }

    #[test]
    fn shed_decode_of_any_bytes_is_canonical_or_none(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        if let Some((seq, entries)) = decode(&b) {
            prop_assert_eq!(encode(seq, &entries), b);
        }
    }

    #[test]
    fn shed_decode_of_framed_garbage_never_panics(n in 0u32..3, rest in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut b = vec![sg_hotkey::shed::VERSION, 0, 0, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&rest);
        if let Some((seq, entries)) = decode(&b) {
            prop_assert_eq!(encode(seq, &entries), b);
        }
    }

    #[test]
    fn shed_truncated_is_none(seq in edgy_u64(), entries in shed_entries()) {
        let b = encode(seq, &entries);
        for n in 0..b.len() {
            prop_assert_eq!(decode(&b[..n]), None, "prefix {}", n);
        }
    }
}
