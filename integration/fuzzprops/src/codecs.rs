//! Every shared-data codec's decode. Shared data is per `vm_id`, and any plugin in that VM
//! can write any `sg:` key, so a filter must read whatever bytes a key holds as either
//! garbage (None, counted) or a value, and then use that value without a trap.
//!
//! Input: byte 0 picks the codec (`% CODECS`), bytes 1..9 are the time (LE), the rest is
//! the value. Properties: decoding is canonical or None (a decoded value encodes back to
//! exactly those bytes; where the codec reads the empty value as the empty state, that is
//! `Default`), so decode(encode(x)) == x for every x a decode can produce; and the filter's
//! own operations on the decoded value (rates, merges, windows, probes, state changes) do
//! not panic, and what they write back decodes again.

use std::collections::HashMap;

use sg_breaker::machine::{Breaker, Kind, Outcome, Settings as BreakerSettings};
use sg_breaker::window::{Buckets, Tally as CallTally, WindowKind};
use sg_core::lease::Lease;
use sg_core::oplist::{decode_list, encode_list};
use sg_core::published::{decode_shed, decode_state, encode_shed, encode_state};
use sg_core::sketch::Counted;
use sg_core::topview::View;
use sg_ratelimit::limiter::{Mode, Params, Slot};
use sg_simplepage::cache::{take_lock, Entry as CacheEntry, Lock};
use sg_simplepage::inbound::Inbound;
use sg_simplepage::overload::{LoadWindow, Tally as LoadTally};
use sg_sli::summary::Summary;

/// How many codecs `codecs` covers.
pub const CODECS: u8 = 13;

/// `decode(b)` is None or the value whose encoding is exactly `b`.
fn canonical<T: std::fmt::Debug>(
    what: &str,
    b: &[u8],
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Option<T>,
) -> Option<T> {
    let v = decode(b)?;
    assert_eq!(
        encode(&v),
        b,
        "{what}: {b:?} decoded as {v:?}, which encodes otherwise"
    );
    Some(v)
}

/// As `canonical`, for a codec whose empty value is the empty state.
fn canonical_empty_default<T: std::fmt::Debug + Default + PartialEq>(
    what: &str,
    b: &[u8],
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Option<T>,
) -> Option<T> {
    if b.is_empty() {
        assert_eq!(decode(b), Some(T::default()), "{what}: the empty value");
        return Some(T::default());
    }
    canonical(what, b, encode, decode)
}

/// A value a filter writes back reads back as itself.
fn writes_back<T: std::fmt::Debug + PartialEq>(
    what: &str,
    v: &T,
    encode: impl Fn(&T) -> Vec<u8>,
    decode: impl Fn(&[u8]) -> Option<T>,
) {
    assert_eq!(
        decode(&encode(v)).as_ref(),
        Some(v),
        "{what}: written value does not read back"
    );
}

pub fn codecs(data: &[u8]) {
    let which = data.first().copied().unwrap_or(0) % CODECS;
    let now = data
        .get(1..9)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    let b = data.get(9..).unwrap_or_default();
    match which {
        0 => {
            canonical("lease", b, Lease::encode, Lease::decode);
        }
        1 => view(b, now),
        2 => {
            let enc = |(seq, e): &(u64, Vec<_>)| encode_shed(*seq, e);
            canonical("shed", b, enc, decode_shed);
        }
        3 => {
            canonical("state", b, |s: &Vec<_>| encode_state(s), decode_state);
        }
        4 => {
            // JSON inside: decoding is not canonical in spelling, but what it decodes to
            // round-trips.
            if let Some((v, l)) = decode_list(b, 100) {
                assert_eq!(
                    decode_list(&encode_list(v, &l), 100),
                    Some((v, l)),
                    "oplist"
                );
            }
        }
        5 => slot(b, now),
        6 => breaker(b, now),
        7 => buckets(b, now),
        8 => {
            if let Some(e) = canonical("cache entry", b, CacheEntry::encode, CacheEntry::decode) {
                let _ = e.state(now);
                let _ = e.age_s(now);
            }
        }
        9 => {
            let l = canonical("lock", b, Lock::encode, Lock::decode);
            if let Some(n) = take_lock(l, 7, now, 1000) {
                writes_back("lock", &n, Lock::encode, Lock::decode);
            }
        }
        10 => load_window(b, now),
        11 => {
            if let Some(mut i) = canonical("inbound", b, Inbound::encode, Inbound::decode) {
                let urls: HashMap<String, u64> =
                    [("/a".to_string(), 3), ("/b".to_string(), u64::MAX)].into();
                i.add(now, &urls);
                writes_back("inbound", &i, Inbound::encode, Inbound::decode);
            }
        }
        _ => {
            if let Some(s) = canonical("summary", b, Summary::encode, Summary::decode) {
                let edges = [1, 10, 100, 1000];
                for p in &s.pages {
                    let _ = p.avg_ms();
                    for q in [0, 500, 990, 1000, now % 2000] {
                        let _ = p.quantile_le(q, &edges);
                    }
                }
            }
        }
    }
}

fn view(b: &[u8], now: u64) {
    let Some(mut v) = canonical_empty_default("view", b, View::encode, View::decode) else {
        return;
    };
    for (w, ms) in [(1, 1000), (10, 100), (64, 1), (0, 0), (u64::MAX, u64::MAX)] {
        let (total, rates) = v.rates(now, w, ms);
        assert!(rates.iter().all(|r| r.milli_rps <= total.max(r.milli_rps)));
    }
    let entries = [Counted {
        fp: now,
        key: b"k".to_vec(),
        count: 5,
        error: 1,
    }];
    v.merge(now, 5, &entries, 10, 16);
    writes_back("view", &v, View::encode, View::decode);
}

fn slot(b: &[u8], now: u64) {
    let Some(mut s) = canonical_empty_default("slot", b, Slot::encode, Slot::decode) else {
        return;
    };
    let p = Params {
        rate: 10_000,
        burst: 5_000,
        mode: Mode::Delay,
    };
    for fp in [0, now, 1] {
        let probe = s.probe(fp, &p, now);
        if !probe.busy {
            s.store(fp, probe.charged, &p, now);
        }
    }
    writes_back("slot", &s, Slot::encode, Slot::decode);
}

fn breaker(b: &[u8], now: u64) {
    let Some(mut br) = canonical("breaker", b, Breaker::encode, Breaker::decode) else {
        return;
    };
    let s = BreakerSettings::resilience4j_defaults();
    let _ = br.advance(&s, now);
    if let (sg_breaker::machine::Permit::Granted { generation, .. }, _) = br.permit(&s, now) {
        let _ = br.record(
            &s,
            generation,
            Some(Outcome {
                failed: true,
                slow: false,
            }),
            now,
        );
    }
    let w = CallTally {
        calls: 100,
        failures: 60,
        slow: 0,
    };
    let _ = br.judge(&s, &w, 100, now);
    let _ = br.force(Kind::Closed, &s, now);
    writes_back("breaker", &br, Breaker::encode, Breaker::decode);
}

fn buckets(b: &[u8], now: u64) {
    let Some(bk) = canonical_empty_default("buckets", b, Buckets::encode, Buckets::decode) else {
        return;
    };
    let t = CallTally {
        calls: 3,
        failures: 1,
        slow: 2,
    };
    for kind in [
        WindowKind::Count { calls: 100 },
        WindowKind::Time { seconds: 60 },
    ] {
        let _ = bk.window(kind, now);
        let _ = bk.window_of(bk.generation, kind, now);
        let mut m = bk.clone();
        m.merge_gen(bk.generation, now, &t, kind, 60);
        writes_back("buckets", &m, Buckets::encode, Buckets::decode);
    }
}

fn load_window(b: &[u8], now: u64) {
    let Some(mut w) = canonical("load window", b, LoadWindow::encode, LoadWindow::decode) else {
        return;
    };
    for n in [1, 10, 64, u64::MAX] {
        let t = w.sum(now, n);
        let _ = t.p99_ms();
        let _ = t.is_empty();
    }
    let mut t = LoadTally::default();
    t.record(503, 1234);
    w.merge(now, &t, 10);
    writes_back("load window", &w, LoadWindow::encode, LoadWindow::decode);
}
