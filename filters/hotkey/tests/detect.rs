//! Behaviour of the hotkey pure logic: sketch -> window -> detector, with fake time.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used)]

use sg_core::codec::Writer;
use sg_hotkey::detect::{Detector, Event, Hot, Thresholds};
use sg_hotkey::sketch::{Counted, SpaceSaving, MAX_KEY_BYTES};
use sg_hotkey::window::{Bucket, Rate, View, VERSION};
use std::collections::HashMap;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }
}

fn key(fp: u64) -> Vec<u8> {
    format!("blog-{fp}").into_bytes()
}

fn counted(fp: u64, count: u64, error: u64) -> Counted {
    Counted {
        fp,
        key: key(fp),
        count,
        error,
    }
}

// ---------------------------------------------------------------- sketch

#[test]
fn sketch_counts_exactly_when_distinct_keys_fit() {
    let mut s = SpaceSaving::new(4);
    for _ in 0..3 {
        s.add(1, b"a", 1);
    }
    s.add(2, b"b", 5);
    s.add(3, b"c", 2);
    assert_eq!(s.total(), 10);
    assert_eq!(s.len(), 3);
    let (total, got) = s.drain();
    assert_eq!(total, 10);
    assert_eq!(
        got,
        vec![
            Counted {
                fp: 2,
                key: b"b".to_vec(),
                count: 5,
                error: 0
            },
            Counted {
                fp: 1,
                key: b"a".to_vec(),
                count: 3,
                error: 0
            },
            Counted {
                fp: 3,
                key: b"c".to_vec(),
                count: 2,
                error: 0
            },
        ]
    );
    // drain resets
    assert!(s.is_empty());
    assert_eq!(s.total(), 0);
    assert_eq!(s.drain(), (0, vec![]));
}

#[test]
fn sketch_full_replaces_the_minimum_with_min_plus_n_and_error_min() {
    let mut s = SpaceSaving::new(2);
    s.add(1, b"a", 3);
    s.add(2, b"b", 1);
    s.add(3, b"c", 2); // evicts b (min 1): count 3, error 1
    let (total, got) = s.drain();
    assert_eq!(total, 6);
    assert_eq!(
        got,
        vec![
            Counted {
                fp: 1,
                key: b"a".to_vec(),
                count: 3,
                error: 0
            },
            Counted {
                fp: 3,
                key: b"c".to_vec(),
                count: 3,
                error: 1
            },
        ]
    );
    // capacity 0 is clamped to 1
    let mut one = SpaceSaving::new(0);
    one.add(1, b"a", 1);
    one.add(2, b"b", 1);
    assert_eq!(
        one.drain(),
        (
            2,
            vec![Counted {
                fp: 2,
                key: b"b".to_vec(),
                count: 2,
                error: 1
            }]
        )
    );
}

#[test]
fn sketch_error_bound_holds_on_zipf_stream() {
    // Zipf(1.0) over 10,000 keys: weight of rank r is 1e9 / r; integer CDF.
    const KEYS: usize = 10_000;
    const ITEMS: u64 = 200_000;
    const CAP: usize = 64;
    let mut cdf = Vec::with_capacity(KEYS);
    let mut acc = 0u64;
    for r in 1..=KEYS as u64 {
        acc += 1_000_000_000 / r;
        cdf.push(acc);
    }
    let mut rng = Lcg(42);
    let mut truth: HashMap<u64, u64> = HashMap::new();
    let mut s = SpaceSaving::new(CAP);
    for _ in 0..ITEMS {
        let u = rng.next() % acc;
        let rank = cdf.partition_point(|&c| c <= u) as u64;
        let fp = rank.wrapping_mul(0x9e37_79b9_7f4a_7c15); // any stable fp
        *truth.entry(fp).or_insert(0) += 1;
        s.add(fp, &key(rank), 1);
    }
    assert_eq!(s.len(), CAP);
    let (total, got) = s.drain();
    assert_eq!(total, ITEMS);
    let byfp: HashMap<u64, &Counted> = got.iter().map(|c| (c.fp, c)).collect();
    let mut heavy = 0;
    for (fp, &t) in &truth {
        if t > total / CAP as u64 {
            heavy += 1;
            assert!(byfp.contains_key(fp), "heavy key {fp} with {t} missing");
        }
    }
    assert!(heavy >= 5, "the stream must have heavy keys, got {heavy}");
    for c in &got {
        let t = truth.get(&c.fp).copied().unwrap_or(0);
        assert!(c.count - c.error <= t && t <= c.count, "{c:?} true {t}");
    }
    // Sorted by count desc; the top key is rank 0.
    assert!(got.windows(2).all(|w| w[0].count >= w[1].count));
    assert_eq!(got[0].key, key(0));
}

#[test]
fn sketch_memory_is_bounded_by_capacity() {
    let mut s = SpaceSaving::new(64);
    for i in 0..1_000_000u64 {
        s.add(i, &i.to_le_bytes(), 1);
    }
    assert_eq!(s.len(), 64);
    assert_eq!(s.total(), 1_000_000);
    let (_, got) = s.drain();
    assert_eq!(got.len(), 64);
    assert_eq!(got.iter().map(|c| c.count).sum::<u64>(), 1_000_000);
}

#[test]
fn sketch_truncates_long_keys() {
    let mut s = SpaceSaving::new(2);
    s.add(1, &[b'x'; 500], 1);
    let (_, got) = s.drain();
    assert_eq!(got[0].key, vec![b'x'; MAX_KEY_BYTES]);
}

// ---------------------------------------------------------------- window

fn sample_view() -> View {
    let mut v = View::default();
    v.merge(7, 100, &[counted(1, 40, 2), counted(2, 10, 0)], 4, 16);
    v.merge(
        8,
        60,
        &[
            counted(1, 20, 0),
            Counted {
                fp: 3,
                key: vec![b'k'; MAX_KEY_BYTES],
                count: 30,
                error: 5,
            },
            Counted {
                fp: 4,
                key: vec![],
                count: 1,
                error: 0,
            },
        ],
        4,
        16,
    );
    v
}

#[test]
fn window_encode_decode_round_trips() {
    let v = sample_view();
    assert_eq!(v.buckets.len(), 2);
    let b = v.encode();
    assert_eq!(b[0], VERSION);
    assert_eq!(View::decode(&b), Some(v));
    assert_eq!(View::decode(&[]), Some(View::default()));
    assert_eq!(
        View::decode(&View::default().encode()),
        Some(View::default())
    );
    assert_eq!(View::default().encode(), vec![VERSION, 0]);
}

#[test]
fn window_rejects_garbage_truncated_and_trailing_bytes() {
    let b = sample_view().encode();
    for n in 1..b.len() {
        assert_eq!(View::decode(&b[..n]), None, "prefix {n}");
    }
    let mut long = b.clone();
    long.push(0);
    assert_eq!(View::decode(&long), None);
    let mut wrong = b.clone();
    wrong[0] = 2;
    assert_eq!(View::decode(&wrong), None);
    assert_eq!(View::decode(&[VERSION]), None);
    assert_eq!(View::decode(&[0xff; 64]), None);
    // Random bytes never panic; anything accepted is canonical (re-encodes to itself).
    let mut rng = Lcg(7);
    for i in 0..2000 {
        let len = (rng.next() % 200) as usize;
        let mut x: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if i % 2 == 0 && !x.is_empty() {
            x[0] = VERSION;
            if x.len() > 1 {
                x[1] %= 3;
            }
        }
        match View::decode(&x) {
            Some(v) if !x.is_empty() => assert_eq!(v.encode(), x),
            _ => {}
        }
    }
}

/// (fp, count, error, key_len)
type RawEntry = (u64, u64, u64, usize);

/// Hand-built value: buckets of (epoch, total, entries).
fn raw(nb: u8, buckets: &[(u64, u64, Vec<RawEntry>)]) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(VERSION).u8(nb);
    for (epoch, total, entries) in buckets {
        w.u64(*epoch).u64(*total).u32(entries.len() as u32);
        for (fp, count, error, kl) in entries {
            w.u64(*fp)
                .u64(*count)
                .u64(*error)
                .u8(*kl as u8)
                .bytes(&vec![b'k'; *kl]);
        }
    }
    w.finish()
}

#[test]
fn window_rejects_oversized_and_inconsistent_values() {
    let empty_buckets = |n: u64| (0..n).map(|e| (e, 0, vec![])).collect::<Vec<_>>();
    assert!(View::decode(&raw(64, &empty_buckets(64))).is_some());
    assert_eq!(View::decode(&raw(65, &empty_buckets(65))), None);
    let entries = |n: u64| (0..n).map(|fp| (fp, 1, 0, 0)).collect::<Vec<_>>();
    assert!(View::decode(&raw(1, &[(1, 0, entries(256))])).is_some());
    assert_eq!(View::decode(&raw(1, &[(1, 0, entries(257))])), None);
    assert!(View::decode(&raw(1, &[(1, 0, vec![(1, 1, 0, 128)])])).is_some());
    assert_eq!(View::decode(&raw(1, &[(1, 0, vec![(1, 1, 0, 129)])])), None);
    // epochs must ascend strictly; fps unique per bucket; error <= count
    assert_eq!(
        View::decode(&raw(2, &[(5, 0, vec![]), (5, 0, vec![])])),
        None
    );
    assert_eq!(
        View::decode(&raw(2, &[(6, 0, vec![]), (5, 0, vec![])])),
        None
    );
    assert_eq!(
        View::decode(&raw(1, &[(1, 0, vec![(1, 1, 0, 0), (1, 1, 0, 0)])])),
        None
    );
    assert_eq!(View::decode(&raw(1, &[(1, 0, vec![(1, 1, 2, 0)])])), None);
    // an entry count larger than the bytes present
    let mut short = raw(1, &[(1, 0, vec![])]);
    short[18] = 5;
    assert_eq!(View::decode(&short), None);
}

#[test]
fn window_encode_caps_hand_built_views_to_decodable_size() {
    let v = View {
        buckets: (0..70)
            .map(|e| Bucket {
                epoch: e,
                total: 1,
                entries: (0..300).map(|fp| counted(fp, 300 - fp, 0)).collect(),
            })
            .collect(),
    };
    let mut big = v.clone();
    big.buckets[69].entries[0].key = vec![b'z'; 1000];
    let d = View::decode(&big.encode()).unwrap();
    assert_eq!(d.buckets.len(), 64);
    assert_eq!(d.buckets[0].epoch, 6);
    assert!(d.buckets.iter().all(|b| b.entries.len() == 256));
    assert_eq!(d.buckets[63].entries[0].key, vec![b'z'; MAX_KEY_BYTES]);
}

#[test]
fn window_merge_of_two_workers_sums_into_one_epoch() {
    let mut v = View::default();
    v.merge(5, 10, &[counted(1, 5, 0), counted(2, 3, 0)], 3, 8);
    v.merge(5, 7, &[counted(1, 2, 1), counted(3, 4, 0)], 3, 8);
    assert_eq!(
        v,
        View {
            buckets: vec![Bucket {
                epoch: 5,
                total: 17,
                entries: vec![counted(1, 7, 1), counted(3, 4, 0), counted(2, 3, 0)],
            }]
        }
    );
    // max_entries keeps the highest counts; dropped counts stay in total.
    let mut small = View::default();
    small.merge(5, 10, &[counted(1, 5, 0), counted(2, 3, 0)], 3, 2);
    small.merge(5, 7, &[counted(1, 2, 1), counted(3, 4, 0)], 3, 2);
    assert_eq!(small.buckets[0].total, 17);
    assert_eq!(
        small.buckets[0].entries,
        vec![counted(1, 7, 1), counted(3, 4, 0)]
    );
    // the view survives the shared-data round trip between the two merges
    let mut via = View::default();
    via.merge(5, 10, &[counted(1, 5, 0), counted(2, 3, 0)], 3, 8);
    let mut via = View::decode(&via.encode()).unwrap();
    via.merge(5, 7, &[counted(1, 2, 1), counted(3, 4, 0)], 3, 8);
    assert_eq!(via, v);
}

#[test]
fn window_old_buckets_expire() {
    let mut v = View::default();
    for e in 1..=3 {
        v.merge(e, e, &[counted(1, e, 0)], 3, 8);
    }
    let epochs = |v: &View| v.buckets.iter().map(|b| b.epoch).collect::<Vec<_>>();
    assert_eq!(epochs(&v), vec![1, 2, 3]);
    v.merge(4, 4, &[], 3, 8); // 1 + 3 <= 4: bucket 1 goes
    assert_eq!(epochs(&v), vec![2, 3, 4]);
    v.merge(10, 1, &[], 3, 8); // long idle: only the new bucket remains
    assert_eq!(epochs(&v), vec![10]);
}

#[test]
fn window_rates_are_exact_on_a_small_example() {
    let mut v = View::default();
    v.merge(9, 100, &[counted(1, 40, 0), counted(2, 10, 0)], 2, 8);
    v.merge(10, 60, &[counted(1, 20, 0), counted(3, 30, 0)], 2, 8);
    let r = |fp: u64, m: u64| Rate {
        fp,
        key: key(fp),
        milli_rps: m,
    };
    // window (8, 10] = 2 buckets of 1000 ms = 2 s: a 60 req -> 30 rps, c 30 -> 15, b 10 -> 5
    assert_eq!(
        v.rates(10, 2, 1000),
        (80_000, vec![r(1, 30_000), r(3, 15_000), r(2, 5_000)])
    );
    // window (9, 11]: only bucket 10
    assert_eq!(
        v.rates(11, 2, 1000),
        (30_000, vec![r(3, 15_000), r(1, 10_000)])
    );
    // window (10, 12]: nothing
    assert_eq!(v.rates(12, 2, 1000), (0, vec![]));
    // bucket 10 not yet in a window ending at 9; bucket_ms 0 does not divide by zero
    assert_eq!(v.rates(9, 1, 500).0, 200_000);
    assert_eq!(v.rates(10, 1, 0).0, 60_000_000);
    // saturates instead of overflowing
    let mut huge = View::default();
    huge.merge(1, u64::MAX, &[counted(1, u64::MAX, 0)], 1, 8);
    huge.merge(1, u64::MAX, &[counted(1, u64::MAX, 0)], 1, 8);
    assert_eq!(huge.rates(1, 1, 1), (u64::MAX, vec![r(1, u64::MAX)]));
}

#[test]
fn window_surge_to_five_percent_reaches_the_top_within_one_window() {
    // 2 workers x 1000 requests per 1 s tick, background uniform over 5000 keys.
    // Epochs 0..50: key OLD takes 8%. From epoch 50: OLD stops, NEW takes 5%.
    const OLD: u64 = 1_000_001;
    const NEW: u64 = 1_000_002;
    const W: u64 = 10;
    let mut rng = Lcg(99);
    let mut view = View::default();
    let mut cumulative = SpaceSaving::new(64);
    let mut top_at = Vec::new();
    for epoch in 0..(50 + W) {
        for _worker in 0..2 {
            let mut s = SpaceSaving::new(64);
            for i in 0..1000u64 {
                let fp = if epoch < 50 && i % 25 < 2 {
                    OLD
                } else if epoch >= 50 && i % 20 == 0 {
                    NEW
                } else {
                    rng.next() % 5000
                };
                s.add(fp, &key(fp), 1);
                cumulative.add(fp, &key(fp), 1);
            }
            let (total, entries) = s.drain();
            // through shared data, like the adapter
            let mut shared = View::decode(&view.encode()).unwrap();
            shared.merge(epoch, total, &entries, W, 32);
            view = shared;
        }
        let (_, rates) = view.rates(epoch, W, 1000);
        top_at.push(rates[0].fp);
    }
    // Before the surge OLD leads; a full window after it starts NEW leads and OLD is gone.
    assert_eq!(top_at[49], OLD);
    let (total, rates) = view.rates(50 + W - 1, W, 1000);
    assert_eq!(total, 2_000_000); // 2000 req/s
    assert_eq!(
        rates[0],
        Rate {
            fp: NEW,
            key: key(NEW),
            milli_rps: 100_000
        }
    ); // 5% = 100 rps
    assert!(rates.iter().all(|r| r.fp != OLD));
    let first_new = top_at.iter().position(|&fp| fp == NEW).unwrap() as u64;
    assert!(
        (50..50 + W).contains(&first_new),
        "NEW on top at epoch {first_new}"
    );
    // A cumulative top-K still ranks OLD first (50 s at 8% vs 10 s at 5%).
    let (_, cum) = cumulative.drain();
    assert_eq!(cum[0].fp, OLD);
}

// ---------------------------------------------------------------- detector

fn rate(fp: u64, m: u64) -> Rate {
    Rate {
        fp,
        key: key(fp),
        milli_rps: m,
    }
}

fn th() -> Thresholds {
    Thresholds {
        enter_milli_rps: 10_000,
        enter_share_permille: 0,
        exit_permille: 500, // exit level 5_000
        cooldown_ms: 3_000,
        max_hot: 2,
    }
}

fn enter(fp: u64, m: u64) -> Event {
    Event::Enter {
        fp,
        key: key(fp),
        milli_rps: m,
    }
}

fn exit(fp: u64) -> Event {
    Event::Exit { fp, key: key(fp) }
}

#[test]
fn detector_enters_at_threshold_not_below() {
    let mut d = Detector::new();
    assert_eq!(d.update(0, 100_000, &[rate(1, 9_999)], &th()), vec![]);
    assert!(d.hot().is_empty());
    assert_eq!(
        d.update(1_000, 100_000, &[rate(1, 10_000)], &th()),
        vec![enter(1, 10_000)]
    );
    assert_eq!(
        d.hot(),
        &[Hot {
            fp: 1,
            key: key(1),
            since_ms: 1_000,
            milli_rps: 10_000,
            below_since_ms: None
        }]
    );
    // already hot: no second Enter
    assert_eq!(d.update(2_000, 100_000, &[rate(1, 20_000)], &th()), vec![]);
    assert_eq!(d.hot()[0].milli_rps, 20_000);
    assert_eq!(d.hot()[0].since_ms, 1_000);
}

#[test]
fn detector_share_condition_gates_entry() {
    let t = Thresholds {
        enter_share_permille: 100,
        ..th()
    }; // 10% of the total
    let mut d = Detector::new();
    // 19_999 / 200_000 < 10%
    assert_eq!(d.update(0, 200_000, &[rate(1, 19_999)], &t), vec![]);
    // 20_000 / 200_000 = 10%
    assert_eq!(
        d.update(1, 200_000, &[rate(1, 20_000)], &t),
        vec![enter(1, 20_000)]
    );
    // share met but rate below enter
    let mut d2 = Detector::new();
    assert_eq!(d2.update(0, 50_000, &[rate(2, 9_000)], &t), vec![]);
    // no share condition: 10_000 of 1_000_000 (1%) enters
    let mut d3 = Detector::new();
    assert_eq!(
        d3.update(0, 1_000_000, &[rate(3, 10_000)], &th()),
        vec![enter(3, 10_000)]
    );
}

#[test]
fn detector_hysteresis_stays_hot_between_levels_and_leaves_after_cooldown() {
    let t = th();
    let mut d = Detector::new();
    let below = |d: &Detector| d.hot()[0].below_since_ms;
    assert_eq!(
        d.update(0, 0, &[rate(1, 12_000)], &t),
        vec![enter(1, 12_000)]
    );
    // between exit (5_000) and enter (10_000): stays, not a leave candidate
    assert_eq!(d.update(1_000, 0, &[rate(1, 6_000)], &t), vec![]);
    assert_eq!(below(&d), None);
    // below exit: candidate since 2_000
    assert_eq!(d.update(2_000, 0, &[rate(1, 4_999)], &t), vec![]);
    assert_eq!(below(&d), Some(2_000));
    // back at the exit level: reset
    assert_eq!(d.update(3_000, 0, &[rate(1, 5_000)], &t), vec![]);
    assert_eq!(below(&d), None);
    // below again from 4_000; absent from rates counts as 0
    assert_eq!(d.update(4_000, 0, &[rate(1, 1_000)], &t), vec![]);
    assert_eq!(d.update(5_000, 0, &[], &t), vec![]);
    assert_eq!(d.hot()[0].milli_rps, 0);
    assert_eq!(d.update(6_000, 0, &[rate(1, 100)], &t), vec![]);
    assert_eq!(d.update(6_999, 0, &[rate(1, 100)], &t), vec![]);
    assert_eq!(below(&d), Some(4_000));
    assert_eq!(d.update(7_000, 0, &[rate(1, 100)], &t), vec![exit(1)]);
    assert!(d.hot().is_empty());
    // re-entry needs the enter level again, and starts fresh
    assert_eq!(d.update(8_000, 0, &[rate(1, 9_999)], &t), vec![]);
    assert_eq!(
        d.update(9_000, 0, &[rate(1, 10_000)], &t),
        vec![enter(1, 10_000)]
    );
    assert_eq!(
        d.hot(),
        &[Hot {
            fp: 1,
            key: key(1),
            since_ms: 9_000,
            milli_rps: 10_000,
            below_since_ms: None
        }]
    );
}

#[test]
fn detector_does_not_flap_on_a_rate_oscillating_around_enter() {
    let t = th();
    let mut d = Detector::new();
    let mut events = Vec::new();
    for i in 0..100u64 {
        let m = if i % 2 == 0 { 10_500 } else { 9_500 };
        events.extend(d.update(i * 1_000, 0, &[rate(1, m)], &t));
    }
    assert_eq!(events, vec![enter(1, 10_500)]);
    // cooldown 0 leaves on the first round below the exit level
    let t0 = Thresholds {
        cooldown_ms: 0,
        ..t
    };
    assert_eq!(d.update(200_000, 0, &[rate(1, 4_000)], &t0), vec![exit(1)]);
}

#[test]
fn detector_max_hot_keeps_the_hottest() {
    let t = th(); // max_hot 2
    let mut d = Detector::new();
    let ev = d.update(
        0,
        0,
        &[rate(1, 30_000), rate(2, 20_000), rate(3, 15_000)],
        &t,
    );
    assert_eq!(ev, vec![enter(1, 30_000), enter(2, 20_000)]);
    // a tie with an incumbent keeps the incumbent
    let ev = d.update(
        1_000,
        0,
        &[rate(1, 30_000), rate(3, 20_000), rate(2, 20_000)],
        &t,
    );
    assert_eq!(ev, vec![]);
    // a hotter newcomer pushes the coolest hot key out
    let ev = d.update(
        2_000,
        0,
        &[rate(1, 30_000), rate(3, 25_000), rate(2, 20_000)],
        &t,
    );
    assert_eq!(ev, vec![exit(2), enter(3, 25_000)]);
    assert_eq!(d.hot().iter().map(|h| h.fp).collect::<Vec<_>>(), vec![1, 3]);
    // max_hot 0: everything leaves
    let ev = d.update(
        3_000,
        0,
        &[rate(1, 30_000)],
        &Thresholds { max_hot: 0, ..t },
    );
    assert_eq!(ev, vec![exit(1), exit(3)]);
    assert!(d.hot().is_empty());
}

#[test]
fn detector_restore_continues_the_published_state() {
    let t = th();
    let mut a = Detector::new();
    a.update(0, 0, &[rate(1, 12_000), rate(2, 11_000)], &t);
    a.update(1_000, 0, &[rate(1, 12_000), rate(2, 1_000)], &t); // 2 below since 1_000
    let published = a.hot().to_vec();
    let mut b = Detector::default();
    let mut shuffled = published.clone();
    shuffled.reverse();
    shuffled.push(published[0].clone()); // duplicate is dropped
    b.restore(shuffled);
    assert_eq!(b.hot(), &published[..]);
    // the new leader exits key 2 exactly when the old one would have
    assert_eq!(b.update(3_999, 0, &[rate(1, 12_000)], &t), vec![]);
    assert_eq!(b.update(4_000, 0, &[rate(1, 12_000)], &t), vec![exit(2)]);
    assert_eq!(b.hot()[0].since_ms, 0);
    assert_eq!(a.update(3_999, 0, &[rate(1, 12_000)], &t), vec![]);
    assert_eq!(a.update(4_000, 0, &[rate(1, 12_000)], &t), vec![exit(2)]);
    assert_eq!(a.hot(), b.hot());
}

#[test]
fn end_to_end_sketch_window_detector() {
    // 1 worker, 1 s ticks, 5 s window; key 7 jumps from 2% to 20% of 1000 req/s at t=10 s.
    let t = Thresholds {
        enter_milli_rps: 100_000, // 100 rps
        enter_share_permille: 50,
        exit_permille: 500,
        cooldown_ms: 2_000,
        max_hot: 4,
    };
    let mut rng = Lcg(5);
    let mut view = View::default();
    let mut det = Detector::new();
    let mut log = Vec::new();
    for epoch in 0..30u64 {
        // capacity 64: key 7 (>= 2%) is never evicted, so its counts are exact
        let mut s = SpaceSaving::new(64);
        let share = if (10..20).contains(&epoch) { 5 } else { 50 };
        for i in 0..1000u64 {
            let fp = if i % share == 0 {
                7
            } else {
                100 + rng.next() % 10_000
            };
            s.add(fp, &key(fp), 1);
        }
        let (total, entries) = s.drain();
        view.merge(epoch, total, &entries, 5, 64);
        let (tot, rates) = view.rates(epoch, 5, 1000);
        for e in det.update(epoch * 1000, tot, &rates, &t) {
            log.push((epoch, e));
        }
    }
    // key 7 over the 5 s window with k surge buckets: (200 * k + 20 * (5 - k)) / 5 rps.
    // enter (>= 100 rps, share 12.8% >= 5%): k = 1 -> 56, k = 2 -> 92, k = 3 -> 128 (epoch 12)
    let enter_epoch = log
        .iter()
        .find(|(_, e)| matches!(e, Event::Enter { .. }))
        .unwrap()
        .0;
    let exit_epoch = log
        .iter()
        .find(|(_, e)| matches!(e, Event::Exit { .. }))
        .unwrap()
        .0;
    assert_eq!(enter_epoch, 12);
    // rates after the surge ends (epoch 20 onwards): k surge buckets left in the window:
    // 20: 4 -> 164, 21: 3 -> 128, 22: 2 -> 92, 23: 1 -> 56, 24: 0 -> 20 rps (< 50 exit level)
    // below from 24, cooldown 2 s -> exit at epoch 26
    assert_eq!(exit_epoch, 26);
    assert_eq!(log.len(), 2);
}
