//! Property tests of the hotkey shared-data codecs: the windowed view (`sg:hk:<rule>:view`)
//! and the published hot set (`sg:hk:shed`).
//!
//! The codec laws and the config are `sg_core::testing::laws`'s. Natively, proptest keeps
//! each failure's seed in `tests/proptests.proptest-regressions` (commit it) and replays it
//! first. On wasm32 nothing is persisted: node:wasi has no filesystem preopened.

use proptest::prelude::*;
use sg_core::testing::laws::{self, bytes, config, edgy_u64};
use sg_hotkey::detect::Hot;
use sg_hotkey::shed::{decode, encode, ShedEntry};
use sg_hotkey::sketch::{Counted, MAX_KEY_BYTES};
use sg_hotkey::window::{Bucket, View, MAX_BUCKETS};

fn key(max: usize) -> impl Strategy<Value = Vec<u8>> {
    bytes(0..=max)
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

/// `shed::encode` over the (seq, entries) pair `shed::decode` returns.
fn shed_encode((seq, entries): &(u64, Vec<ShedEntry>)) -> Vec<u8> {
    encode(*seq, entries)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn view_round_trips(v in view()) {
        laws::round_trip(&v, View::encode, View::decode)?;
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
            laws::round_trip(&v, View::encode, View::decode)?;
        }
    }

    /// An empty value is an empty view (whose encoding is not empty).
    #[test]
    fn view_decode_of_any_bytes_is_canonical_or_none(b in bytes(0..300)) {
        laws::canonical_or_none_empty_is_default(&b, View::encode, View::decode)?;
    }

    #[test]
    fn view_decode_of_framed_garbage_never_panics(nb in 0u8..4, rest in bytes(0..300)) {
        let mut b = vec![sg_hotkey::window::VERSION, nb];
        b.extend_from_slice(&rest);
        laws::canonical_or_none(&b, View::encode, View::decode)?;
    }

    /// An empty value is an empty view; every other prefix is unreadable.
    #[test]
    fn view_truncated_is_none(v in view()) {
        laws::truncated_is_none_empty_is_default(&v, View::encode, View::decode)?;
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
        laws::round_trip_as(&(seq, entries), &(seq, want), shed_encode, decode)?;
    }

    #[test]
    fn shed_decode_of_any_bytes_is_canonical_or_none(b in bytes(0..200)) {
        laws::canonical_or_none(&b, shed_encode, decode)?;
    }

    #[test]
    fn shed_decode_of_framed_garbage_never_panics(n in 0u32..3, rest in bytes(0..200)) {
        let mut b = vec![sg_hotkey::shed::VERSION, 0, 0, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&n.to_le_bytes());
        b.extend_from_slice(&rest);
        laws::canonical_or_none(&b, shed_encode, decode)?;
    }

    #[test]
    fn shed_truncated_is_none(seq in edgy_u64(), entries in shed_entries()) {
        laws::truncated_is_none(&(seq, entries), shed_encode, decode)?;
    }
}
