//! Property tests of the breaker's shared-data codecs (`sg:br:<api>` state and window
//! buckets), with the codec laws of `sg_core::testing::laws`, and of the window merge: nothing
//! counted is lost while it stays within the kept buckets.
#![allow(clippy::indexing_slicing)] // test code: fail loudly

use proptest::prelude::*;
use sg_breaker::machine::{Breaker, Kind};
use sg_breaker::window::{Buckets, Tally, WindowKind, MAX_BUCKETS};
use sg_core::testing::laws::{self, bytes, config, edgy_u64};

fn tally() -> impl Strategy<Value = Tally> {
    (0u64..1_000_000, 0u64..=100, 0u64..=100).prop_map(|(calls, f, s)| Tally {
        calls,
        failures: calls * f / 100,
        slow: calls * s / 100,
    })
}

fn breaker() -> impl Strategy<Value = Breaker> {
    (
        0usize..6,
        edgy_u64(),
        any::<u32>(),
        edgy_u64(),
        any::<u32>(),
        tally(),
        edgy_u64(),
    )
        .prop_map(
            |(k, since_ms, attempts, retry_at_ms, permits_left, probes, generation)| {
                let kind = Kind::ALL[k];
                Breaker {
                    kind,
                    since_ms,
                    attempts,
                    retry_at_ms,
                    permits_left,
                    probes,
                    generation,
                }
            },
        )
}

fn buckets() -> impl Strategy<Value = Buckets> {
    (
        edgy_u64(),
        proptest::collection::btree_map(edgy_u64(), tally(), 0..MAX_BUCKETS),
    )
        .prop_map(|(generation, m)| Buckets {
            generation,
            buckets: m.into_iter().collect(),
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn breaker_round_trips(b in breaker()) {
        laws::round_trip(&b, Breaker::encode, Breaker::decode)?;
    }

    #[test]
    fn breaker_decode_of_any_bytes_is_canonical_or_none(b in bytes(0..80)) {
        laws::canonical_or_none(&b, Breaker::encode, Breaker::decode)?;
    }

    #[test]
    fn breaker_truncated_is_none(b in breaker()) {
        laws::truncated_is_none(&b, Breaker::encode, Breaker::decode)?;
    }

    #[test]
    fn buckets_round_trip(b in buckets()) {
        laws::round_trip(&b, Buckets::encode, Buckets::decode)?;
    }

    #[test]
    fn buckets_decode_of_any_bytes_is_canonical_or_none(b in bytes(0..200)) {
        laws::canonical_or_none_empty_is_default(&b, Buckets::encode, Buckets::decode)?;
    }

    #[test]
    fn buckets_truncated_is_none(b in buckets()) {
        prop_assume!(!b.buckets.is_empty());
        laws::truncated_is_none_empty_is_default(&b, Buckets::encode, Buckets::decode)?;
    }

    #[test]
    fn merging_in_any_order_counts_every_call(parts in proptest::collection::vec((0u64..8, tally()), 0..40)) {
        // 8 epochs, all kept: the window over them holds the sum, whatever order workers came in.
        let mut b = Buckets::default();
        let mut want = Tally::default();
        for (e, t) in &parts {
            b.merge(*e, t, MAX_BUCKETS);
            want.add(t);
        }
        prop_assert_eq!(b.window(WindowKind::Time { seconds: 8 }, 7), want);
        prop_assert_eq!(b.window(WindowKind::Count { calls: u64::MAX }, 7), want);
        prop_assert!(b.buckets.windows(2).all(|w| w[0].0 < w[1].0));
        prop_assert_eq!(Buckets::decode(&b.encode()), Some(b));
    }

    #[test]
    fn a_count_window_always_holds_its_last_n_calls_in_bounded_buckets(
        n in 1u64..300,
        calls in proptest::collection::vec(0u64..20, 0..400),
    ) {
        // One merge per tick of 0..20 calls: the window holds at least min(n, all calls so
        // far), whatever the rate, in at most MAX_BUCKETS buckets.
        let kind = WindowKind::Count { calls: n };
        let mut b = Buckets::default();
        let mut total = 0u64;
        for (e, c) in calls.iter().enumerate() {
            b.merge_gen(0, e as u64, &Tally { calls: *c, failures: 0, slow: 0 }, kind, MAX_BUCKETS);
            total += c;
            let w = b.window(kind, e as u64);
            prop_assert!(w.calls >= n.min(total), "{} calls of {} (n {})", w.calls, total, n);
            prop_assert!(b.buckets.len() <= MAX_BUCKETS);
        }
        prop_assert_eq!(Buckets::decode(&b.encode()), Some(b));
    }
}
