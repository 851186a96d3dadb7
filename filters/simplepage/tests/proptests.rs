//! Property tests of the simplepage shared-data codecs: cache entry and refresh lock
//! (`sg:sp:c:<slot>`, `sg:sp:l:<slot>`), load window (`sg:sp:<rule>:load`), overload state
//! (`sg:sp:state`) and inbound tally (`sg:sp:inbound`).
//!
//! The codec laws and the config are `sg_core::testing::laws`'s. Natively, proptest keeps
//! each failure's seed in `tests/proptests.proptest-regressions` (commit it) and replays it
//! first. On wasm32 nothing is persisted: node:wasi has no filesystem preopened.

use proptest::prelude::*;
use sg_core::testing::laws::{self, config, edgy_u64};
use sg_simplepage::cache::{Entry, Lock, Windows, KEPT_HEADERS, MAX_KEY_BYTES};
use sg_simplepage::inbound::{Inbound, MAX_URLS};
use sg_simplepage::overload::{decode_state, encode_state, LoadWindow, Reason, Tally, MAX_BUCKETS};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    laws::bytes(0..=max)
}

/// Any bytes, half of them behind the layout version (1) so decoding gets past it.
fn garbage(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        bytes(max),
        bytes(max).prop_map(|mut b| {
            b.insert(0, 1);
            b
        }),
    ]
}

/// Entries as `fill` stores them: key at most MAX_KEY_BYTES, at most the kept headers.
fn entry() -> impl Strategy<Value = Entry> {
    (
        prop_oneof![bytes(64), Just(vec![b'k'; MAX_KEY_BYTES])],
        edgy_u64(),
        (edgy_u64(), edgy_u64(), edgy_u64()),
        proptest::collection::vec(("\\PC{0,12}", "\\PC{0,40}"), 0..=KEPT_HEADERS.len()),
        bytes(600),
    )
        .prop_map(|(key, stored_ms, (f, s, e), headers, body)| Entry {
            key,
            stored_ms,
            windows: Windows {
                fresh_until_ms: f,
                swr_until_ms: s,
                sie_until_ms: e,
            },
            headers,
            body,
        })
}

fn lock() -> impl Strategy<Value = Lock> {
    (edgy_u64(), edgy_u64()).prop_map(|(key_fp, until_ms)| Lock { key_fp, until_ms })
}

fn tally() -> impl Strategy<Value = Tally> {
    (
        edgy_u64(),
        edgy_u64(),
        edgy_u64(),
        proptest::array::uniform16(edgy_u64()),
    )
        .prop_map(|(requests, samples, errors, hist)| Tally {
            requests,
            samples,
            errors,
            hist,
        })
}

fn load_window() -> impl Strategy<Value = LoadWindow> {
    proptest::collection::vec((edgy_u64(), tally()), 0..6)
        .prop_map(|buckets| LoadWindow { buckets })
}

fn reason() -> impl Strategy<Value = Reason> {
    prop_oneof![
        Just(Reason::Rate),
        Just(Reason::Errors),
        Just(Reason::Latency)
    ]
}

fn state() -> impl Strategy<Value = Vec<(String, Reason, u64)>> {
    proptest::collection::vec(("\\PC{0,16}", reason(), edgy_u64()), 0..6)
}

fn inbound() -> impl Strategy<Value = Inbound> {
    (
        edgy_u64(),
        edgy_u64(),
        prop_oneof![
            proptest::collection::vec(("\\PC{0,30}", edgy_u64()), 0..5),
            proptest::collection::vec(("/[a-z0-9]{0,8}", edgy_u64()), MAX_URLS),
        ],
    )
        .prop_map(|(period, count, urls)| Inbound {
            period,
            count,
            urls,
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cache_entry_round_trips(e in entry()) {
        laws::round_trip(&e, Entry::encode, Entry::decode)?;
    }

    #[test]
    fn cache_entry_decode_of_any_bytes_is_canonical_or_none(b in garbage(300)) {
        laws::canonical_or_none(&b, Entry::encode, Entry::decode)?;
    }

    #[test]
    fn cache_entry_truncated_is_none(e in entry()) {
        laws::truncated_is_none(&e, Entry::encode, Entry::decode)?;
    }

    #[test]
    fn lock_round_trips(l in lock()) {
        laws::round_trip(&l, Lock::encode, Lock::decode)?;
    }

    #[test]
    fn lock_decode_of_any_bytes_is_canonical_or_none(b in garbage(40)) {
        laws::canonical_or_none(&b, Lock::encode, Lock::decode)?;
    }

    #[test]
    fn lock_truncated_is_none(l in lock()) {
        laws::truncated_is_none(&l, Lock::encode, Lock::decode)?;
    }

    #[test]
    fn load_window_round_trips(w in load_window()) {
        laws::round_trip(&w, LoadWindow::encode, LoadWindow::decode)?;
    }

    /// `merge` output round-trips (what workers actually write), within MAX_BUCKETS.
    #[test]
    fn merged_load_windows_round_trip(merges in proptest::collection::vec((0u64..200, tally(), 1u64..80), 0..10)) {
        let mut w = LoadWindow::default();
        for (epoch, t, keep) in merges {
            w.merge(epoch, &t, keep);
            prop_assert!(w.buckets.len() <= MAX_BUCKETS);
            laws::round_trip(&w, LoadWindow::encode, LoadWindow::decode)?;
        }
    }

    #[test]
    fn load_window_decode_of_any_bytes_is_canonical_or_none(b in garbage(400)) {
        laws::canonical_or_none(&b, LoadWindow::encode, LoadWindow::decode)?;
    }

    #[test]
    fn load_window_truncated_is_none(w in load_window()) {
        laws::truncated_is_none(&w, LoadWindow::encode, LoadWindow::decode)?;
    }

    #[test]
    fn state_round_trips(s in state()) {
        laws::round_trip(&s, |s| encode_state(s), decode_state)?;
    }

    #[test]
    fn state_decode_of_any_bytes_is_canonical_or_none(b in garbage(200)) {
        laws::canonical_or_none(&b, |s| encode_state(s), decode_state)?;
    }

    #[test]
    fn state_truncated_is_none(s in state()) {
        laws::truncated_is_none(&s, |s| encode_state(s), decode_state)?;
    }

    #[test]
    fn inbound_round_trips(i in inbound()) {
        laws::round_trip(&i, Inbound::encode, Inbound::decode)?;
    }

    /// What workers write goes through `add`, which keeps at most MAX_URLS.
    #[test]
    fn added_inbound_round_trips(adds in proptest::collection::vec((edgy_u64(), proptest::collection::hash_map("/[a-z]{0,3}", edgy_u64(), 0..20)), 0..5)) {
        let mut i = Inbound::default();
        for (count, urls) in adds {
            i.add(count, &urls);
            prop_assert!(i.urls.len() <= MAX_URLS);
            laws::round_trip(&i, Inbound::encode, Inbound::decode)?;
        }
    }

    #[test]
    fn inbound_decode_of_any_bytes_is_canonical_or_none(b in garbage(200)) {
        laws::canonical_or_none(&b, Inbound::encode, Inbound::decode)?;
    }

    #[test]
    fn inbound_truncated_is_none(i in inbound()) {
        laws::truncated_is_none(&i, Inbound::encode, Inbound::decode)?;
    }
}
