//! Property tests of the simplepage shared-data codecs: cache entry and refresh lock
//! (`sg:sp:c:<slot>`, `sg:sp:l:<slot>`), load window (`sg:sp:<rule>:load`), overload state
//! (`sg:sp:state`) and inbound tally (`sg:sp:inbound`).
//!
//! Natively, proptest keeps each failure's seed in `tests/proptests.proptest-regressions`
//! (commit it) and replays it first. On wasm32 nothing is persisted: node:wasi has no
//! filesystem preopened.
#![allow(clippy::indexing_slicing)] // test code: fail loudly

use proptest::prelude::*;
use sg_simplepage::cache::{Entry, Lock, Windows, KEPT_HEADERS, MAX_KEY_BYTES};
use sg_simplepage::inbound::{Inbound, MAX_URLS};
use sg_simplepage::overload::{decode_state, encode_state, LoadWindow, Reason, Tally, MAX_BUCKETS};

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

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..=max)
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
        prop_assert_eq!(Entry::decode(&e.encode()), Some(e));
    }

    #[test]
    fn cache_entry_decode_of_any_bytes_is_canonical_or_none(b in garbage(300)) {
        if let Some(e) = Entry::decode(&b) {
            prop_assert_eq!(e.encode(), b);
        }
    }

    #[test]
    fn cache_entry_truncated_is_none(e in entry()) {
        let b = e.encode();
        for n in 0..b.len() {
            prop_assert_eq!(Entry::decode(&b[..n]), None, "prefix {}", n);
        }
    }

    #[test]
    fn lock_round_trips(l in lock()) {
        prop_assert_eq!(Lock::decode(&l.encode()), Some(l));
    }

    #[test]
    fn lock_decode_of_any_bytes_is_canonical_or_none(b in garbage(40)) {
        if let Some(l) = Lock::decode(&b) {
            prop_assert_eq!(l.encode(), b);
        }
    }

    #[test]
    fn lock_truncated_is_none(l in lock()) {
        let b = l.encode();
        for n in 0..b.len() {
            prop_assert_eq!(Lock::decode(&b[..n]), None, "prefix {}", n);
        }
    }

    #[test]
    fn load_window_round_trips(w in load_window()) {
        prop_assert_eq!(LoadWindow::decode(&w.encode()), Some(w));
    }

    /// `merge` output round-trips (what workers actually write), within MAX_BUCKETS.
    #[test]
    fn merged_load_windows_round_trip(merges in proptest::collection::vec((0u64..200, tally(), 1u64..80), 0..10)) {
        let mut w = LoadWindow::default();
        for (epoch, t, keep) in merges {
            w.merge(epoch, &t, keep);
            prop_assert!(w.buckets.len() <= MAX_BUCKETS);
            prop_assert_eq!(LoadWindow::decode(&w.encode()), Some(w.clone()));
        }
    }

    #[test]
    fn load_window_decode_of_any_bytes_is_canonical_or_none(b in garbage(400)) {
        if let Some(w) = LoadWindow::decode(&b) {
            prop_assert_eq!(w.encode(), b);
        }
    }

    #[test]
    fn load_window_truncated_is_none(w in load_window()) {
        let b = w.encode();
        for n in 0..b.len() {
            prop_assert_eq!(LoadWindow::decode(&b[..n]), None, "prefix {}", n);
        }
    }

    #[test]
    fn state_round_trips(s in state()) {
        prop_assert_eq!(decode_state(&encode_state(&s)), Some(s));
    }

    #[test]
    fn state_decode_of_any_bytes_is_canonical_or_none(b in garbage(200)) {
        if let Some(s) = decode_state(&b) {
            prop_assert_eq!(encode_state(&s), b);
        }
    }

    #[test]
    fn state_truncated_is_none(s in state()) {
        let b = encode_state(&s);
        for n in 0..b.len() {
            prop_assert_eq!(decode_state(&b[..n]), None, "prefix {}", n);
        }
    }

    #[test]
    fn inbound_round_trips(i in inbound()) {
        let b = i.encode();
        prop_assert_eq!(Inbound::decode(&b), Some(i));
    }

    /// What workers write goes through `add`, which keeps at most MAX_URLS.
    #[test]
    fn added_inbound_round_trips(adds in proptest::collection::vec((edgy_u64(), proptest::collection::hash_map("/[a-z]{0,3}", edgy_u64(), 0..20)), 0..5)) {
        let mut i = Inbound::default();
        for (count, urls) in adds {
            i.add(count, &urls);
            prop_assert!(i.urls.len() <= MAX_URLS);
            let back = Inbound::decode(&i.encode());
            prop_assert_eq!(back.as_ref(), Some(&i));
        }
    }

    #[test]
    fn inbound_decode_of_any_bytes_is_canonical_or_none(b in garbage(200)) {
        if let Some(i) = Inbound::decode(&b) {
            prop_assert_eq!(i.encode(), b);
        }
    }

    #[test]
    fn inbound_truncated_is_none(i in inbound()) {
        let b = i.encode();
        for n in 0..b.len() {
            prop_assert_eq!(Inbound::decode(&b[..n]), None, "prefix {}", n);
        }
    }
}
