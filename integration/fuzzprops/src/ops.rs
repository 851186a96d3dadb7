//! The sketch and the windows under random operation sequences (structured input from the
//! fuzzer's bytes through `arbitrary::Unstructured`).

use std::collections::HashMap;

use arbitrary::{Result as AResult, Unstructured};
use sg_breaker::machine::{Breaker, Kind, Outcome, Permit, Settings as BreakerSettings};
use sg_breaker::window::{Buckets, Tally as CallTally, WindowKind, MAX_BUCKETS as BR_BUCKETS};
use sg_core::sketch::{SpaceSaving, MAX_KEY_BYTES};
use sg_core::topview::{View, MAX_BUCKETS as VIEW_BUCKETS, MAX_ENTRIES};
use sg_hotkey::top::{TopHistory, TOP_N};
use sg_ratelimit::limiter::{take, Entry, Mode, Params, Slot, WAYS};
use sg_simplepage::overload::{LoadWindow, Tally as LoadTally, MAX_BUCKETS as SP_BUCKETS};

/// Operations per input at most (a bound on one run's time).
const MAX_OPS: usize = 4096;

/// Space-Saving (hotkey's and sli's top-K), the shared windowed view it is merged into, and
/// hotkey's top history. Properties: the sketch never holds more counters than its
/// capacity; keys are cut to `MAX_KEY_BYTES`; a drain is sorted and its total is what was
/// added; each counter bounds its key's true count from above, and from below by
/// `count - error`; every key counted more than total/capacity is held; the view keeps at
/// most `MAX_BUCKETS` buckets of at most `max_entries` entries, epochs ascending, reads back
/// what it is, and no key's rate exceeds the total's; the top history gives at most `TOP_N`
/// keys, highest first.
pub fn sketch(data: &[u8]) {
    let _ = sketch_ops(&mut Unstructured::new(data));
}

fn sketch_ops(u: &mut Unstructured) -> AResult<()> {
    let cap = u.int_in_range(1usize..=64)?;
    let window = u.int_in_range(0u64..=80)?;
    let max_entries = u.int_in_range(0usize..=300)?;
    let mut s = SpaceSaving::new(cap);
    let mut truth: HashMap<u64, u64> = HashMap::new();
    let mut added: u64 = 0;
    let mut view = View::default();
    let mut epoch: u64 = u.arbitrary()?;
    let mut top = TopHistory::default();
    let mut now: u64 = 0;
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=9)? {
            0..=6 => {
                let fp = if u.ratio(7, 8)? {
                    u64::from(u.int_in_range(0u8..=80)?)
                } else {
                    u.arbitrary()?
                };
                let n = match u.int_in_range(0..=9)? {
                    0 => 0,
                    1 => u.arbitrary()?,
                    _ => u.int_in_range(1u64..=100)?,
                };
                let klen = u.int_in_range(0usize..=200)?;
                let key = vec![b'k'; klen];
                s.add(fp, &key, n);
                added = added.saturating_add(n);
                if n > 0 {
                    let t = truth.entry(fp).or_insert(0);
                    *t = t.saturating_add(n);
                }
                assert!(s.len() <= cap, "{} counters over capacity {cap}", s.len());
                assert_eq!(s.total(), added);
            }
            7 | 8 => {
                let (total, out) = s.drain();
                assert!(s.is_empty() && s.total() == 0, "drain left counters");
                assert_eq!(total, added, "drained total");
                assert!(out.len() <= cap);
                for w in out.windows(2) {
                    assert!(
                        w[0].count > w[1].count || (w[0].count == w[1].count && w[0].fp < w[1].fp),
                        "drain not sorted"
                    );
                }
                let exact = total < u64::MAX / 2;
                if exact {
                    let sum: u64 = out.iter().map(|c| c.count).sum();
                    assert_eq!(sum, total, "counters do not sum to the total");
                }
                for c in &out {
                    assert!(c.key.len() <= MAX_KEY_BYTES, "key of {} bytes", c.key.len());
                    assert!(c.error <= c.count, "{c:?}");
                    if exact {
                        let t = truth.get(&c.fp).copied().unwrap_or(0);
                        assert!(c.count >= t, "{c:?} under its true count {t}");
                        assert!(c.count - c.error <= t, "{c:?} over its true count {t}");
                    }
                }
                if exact {
                    for (fp, t) in &truth {
                        if *t > total / cap as u64 {
                            assert!(out.iter().any(|c| c.fp == *fp), "frequent {fp} ({t}) lost");
                        }
                    }
                }
                // Into the shared view, as hotkey's tick does, at this or another epoch.
                epoch = match u.int_in_range(0..=3)? {
                    0 => epoch.wrapping_sub(u.int_in_range(0..=100)?),
                    1 => u.arbitrary()?,
                    _ => epoch.saturating_add(u.int_in_range(0..=3)?),
                };
                view.merge(epoch, total, &out, window, max_entries);
                check_view(&view, max_entries);
                let (all, rates) = view.rates(epoch, window, 1000);
                for r in &rates {
                    assert!(r.milli_rps <= all, "{r:?} over the total {all}");
                }
                now = now.saturating_add(u.int_in_range(0..=200_000)?);
                top.push(
                    now,
                    rates
                        .iter()
                        .map(|r| (String::from_utf8_lossy(&r.key).into_owned(), r.milli_rps)),
                );
                let t = top.top();
                assert!(t.len() <= TOP_N);
                assert!(t.windows(2).all(|w| w[0].1 >= w[1].1), "top not sorted");
                truth.clear();
                added = 0;
            }
            _ => {
                let b = view.encode();
                view = View::decode(&b).unwrap_or_default();
            }
        }
    }
    Ok(())
}

fn check_view(v: &View, max_entries: usize) {
    assert!(
        v.buckets.len() <= VIEW_BUCKETS,
        "{} buckets",
        v.buckets.len()
    );
    assert!(
        v.buckets.windows(2).all(|w| w[0].epoch < w[1].epoch),
        "epochs not ascending"
    );
    for b in &v.buckets {
        assert!(b.entries.len() <= max_entries.min(MAX_ENTRIES));
        for e in &b.entries {
            assert!(e.error <= e.count && e.key.len() <= MAX_KEY_BYTES);
            assert!(
                e.count <= b.total,
                "{e:?} over its bucket's total {}",
                b.total
            );
        }
    }
    assert_eq!(
        View::decode(&v.encode()).as_ref(),
        Some(v),
        "view does not read back"
    );
}

/// A key's accounting for the rate bound (monotonic time only).
#[derive(Default)]
struct KeyBook {
    first_ms: Option<u64>,
    /// Accepted requests that were charged 1000 (all but a new key's first).
    charged: u64,
}

/// The windows: ratelimit's limiter slot (nginx `limit_req`, 4-way, eviction floor, leased
/// takes), breaker's call buckets and state machine, simplepage's load window. Properties:
/// a slot holds at most `WAYS` keys, each once, no stored debt above the burst; with time
/// moving forward each key is accepted at most `burst + rate x elapsed` (plus the one
/// request each counts 1000 for) and a leased take never passes the burst; breaker
/// buckets stay ordered, within their bound and `failures, slow <= calls`, an older
/// generation is dropped; a half-open breaker never hands out more permits than configured;
/// the load window keeps at most `MAX_BUCKETS` buckets of the last `keep` epochs; every
/// value written back reads back as itself.
pub fn window(data: &[u8]) {
    let _ = window_ops(&mut Unstructured::new(data));
}

fn params(u: &mut Unstructured) -> AResult<Params> {
    Ok(Params {
        rate: u.int_in_range(1u64..=1_000_000)?,
        burst: u.int_in_range(0u64..=1_000_000)?,
        mode: match u.int_in_range(0..=2)? {
            0 => Mode::NoDelay,
            1 => Mode::Delay,
            _ => Mode::DelayAfter(u.int_in_range(0u64..=100_000)?),
        },
    })
}

fn call_tally(u: &mut Unstructured) -> AResult<CallTally> {
    let calls = if u.ratio(1, 16)? {
        u.arbitrary()?
    } else {
        u.int_in_range(0u64..=1000)?
    };
    Ok(CallTally {
        calls,
        failures: u.int_in_range(0..=calls)?,
        slow: u.int_in_range(0..=calls)?,
    })
}

fn window_ops(u: &mut Unstructured) -> AResult<()> {
    let p = params(u)?;
    let mut slot = Slot::default();
    let mut now: u64 = u.int_in_range(0u64..=1 << 40)?;
    let mut monotone = true;
    let mut books: HashMap<u64, KeyBook> = HashMap::new();

    let mut buckets = Buckets::default();
    let mut br = Breaker::default();
    let bs = BreakerSettings {
        half_open_calls: u.int_in_range(0u32..=20)?,
        min_calls: u.int_in_range(0u64..=50)?,
        wait_open_ms: u.int_in_range(0u64..=10_000)?,
        ..BreakerSettings::resilience4j_defaults()
    };
    // One API's window is of one kind (its config).
    let (kind, keep) = if u.arbitrary()? {
        let calls = u.int_in_range(1u64..=500)?;
        (WindowKind::Count { calls }, usize::MAX)
    } else {
        let seconds = u.int_in_range(1u64..=60)?;
        (WindowKind::Time { seconds }, seconds as usize)
    };
    let mut load = LoadWindow::default();
    let mut epoch: u64 = u.int_in_range(0u64..=1000)?;

    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=11)? {
            0..=4 => {
                now = now.saturating_add(u.int_in_range(0u64..=2000)?);
                let fp = u64::from(u.int_in_range(0u8..=7)?);
                let probe = slot.probe(fp, &p, now);
                assert_eq!(probe.busy, probe.excess > p.burst);
                if probe.busy {
                    continue;
                }
                let known = slot.entries.iter().any(|(f, _)| *f == fp);
                let fresh = probe.charged.excess == 0 && !known;
                let (state, taken) = if u.ratio(1, 4)? {
                    let n = u.int_in_range(1u32..=50)?;
                    let (e, taken) = take(&probe, n, &p);
                    assert!(taken >= 1 && taken <= n, "took {taken} of {n}");
                    (e, taken)
                } else {
                    (probe.charged, 1)
                };
                slot.store(fp, state, &p, now);
                let book = books.entry(fp).or_default();
                let first = *book.first_ms.get_or_insert(now);
                book.charged += u64::from(taken) - u64::from(fresh);
                if monotone {
                    let refill = u128::from(p.rate) * u128::from(now - first) / 1000;
                    let bound = u128::from(p.burst) + refill + 1000;
                    assert!(
                        u128::from(book.charged) * 1000 <= bound,
                        "key {fp}: {} charged in {} ms at rate {} burst {}",
                        book.charged,
                        now - first,
                        p.rate,
                        p.burst
                    );
                }
                check_slot(&slot, &p);
            }
            5 => {
                // The clock steps back (another worker's clock, a restart).
                now = now.saturating_sub(u.int_in_range(0u64..=120_000)?);
                monotone = false;
                let fp = u64::from(u.int_in_range(0u8..=7)?);
                let probe = slot.probe(fp, &p, now);
                if !probe.busy {
                    slot.store(fp, probe.charged, &p, now);
                }
                check_slot(&slot, &p);
            }
            6 | 7 => {
                let generation = match u.int_in_range(0..=3)? {
                    0 => buckets.generation.saturating_sub(1),
                    1 => buckets.generation.saturating_add(1),
                    _ => buckets.generation,
                };
                epoch = epoch.saturating_add(u.int_in_range(0u64..=3)?);
                let e = epoch.saturating_sub(u.int_in_range(0u64..=2)?);
                let t = call_tally(u)?;
                let before = buckets.clone();
                let merged = buckets.merge_gen(generation, e, &t, kind, keep);
                assert_eq!(merged, generation >= before.generation);
                if !merged {
                    assert_eq!(buckets, before, "an older generation changed the window");
                }
                assert!(
                    buckets.buckets.len() <= keep.min(BR_BUCKETS),
                    "{} buckets",
                    buckets.buckets.len()
                );
                assert!(
                    buckets.buckets.windows(2).all(|w| w[0].0 < w[1].0),
                    "epochs"
                );
                for (_, t) in &buckets.buckets {
                    assert!(t.failures <= t.calls && t.slow <= t.calls, "{t:?}");
                }
                let w = buckets.window(kind, epoch);
                assert!(w.failures <= w.calls && w.slow <= w.calls);
                assert_eq!(
                    Buckets::decode(&buckets.encode()).as_ref(),
                    Some(&buckets),
                    "buckets do not read back"
                );
            }
            8 | 9 => {
                now = now.saturating_add(u.int_in_range(0u64..=5000)?);
                match u.int_in_range(0..=4)? {
                    0 | 1 => {
                        if let (Permit::Granted { generation, .. }, _) = br.permit(&bs, now) {
                            let o = match u.int_in_range(0..=2)? {
                                0 => None,
                                _ => Some(Outcome {
                                    failed: u.arbitrary()?,
                                    slow: u.arbitrary()?,
                                }),
                            };
                            let g = if u.ratio(1, 8)? {
                                generation.wrapping_add(1)
                            } else {
                                generation
                            };
                            let _ = br.record(&bs, g, o, now);
                        }
                    }
                    2 => {
                        let t = call_tally(u)?;
                        let min = u.int_in_range(0u64..=200)?;
                        let _ = br.judge(&bs, &t, min, now);
                    }
                    3 => {
                        let _ = br.advance(&bs, now);
                    }
                    _ => {
                        let k = Kind::ALL[u.choose_index(Kind::ALL.len())?];
                        let _ = br.force(k, &bs, now);
                    }
                }
                if br.kind == Kind::HalfOpen {
                    assert!(br.permits_left <= bs.half_open_calls.max(1), "{br:?}");
                }
                assert_eq!(
                    Breaker::decode(&br.encode()),
                    Some(br),
                    "breaker does not read back"
                );
            }
            _ => {
                epoch = epoch.saturating_add(u.int_in_range(0u64..=3)?);
                let e = epoch.saturating_sub(u.int_in_range(0u64..=5)?);
                let keep = u.int_in_range(0u64..=80)?;
                let mut t = LoadTally {
                    requests: u.int_in_range(0u64..=100)?,
                    ..LoadTally::default()
                };
                for _ in 0..u.int_in_range(0..=5)? {
                    let status = [0, 200, 404, 503][u.choose_index(4)?];
                    t.record(status, u.int_in_range(0u64..=20_000)?);
                }
                load.merge(e, &t, keep);
                assert!(load.buckets.len() <= SP_BUCKETS);
                let newest = load.buckets.iter().map(|(e, _)| *e).max().unwrap_or(0);
                let k = keep.clamp(1, SP_BUCKETS as u64);
                assert!(load
                    .buckets
                    .iter()
                    .all(|(e, _)| e.saturating_add(k) > newest));
                let _ = load.sum(epoch, k).p99_ms();
                assert_eq!(LoadWindow::decode(&load.encode()).as_ref(), Some(&load));
            }
        }
    }
    Ok(())
}

fn check_slot(s: &Slot, p: &Params) {
    assert!(s.entries.len() <= WAYS, "{} entries", s.entries.len());
    for (i, (fp, e)) in s.entries.iter().enumerate() {
        assert!(
            !s.entries[..i].iter().any(|(f, _)| f == fp),
            "fp {fp} twice"
        );
        assert!(e.excess <= p.burst, "{e:?} over burst {}", p.burst);
    }
    assert!(
        s.floor.excess <= p.burst,
        "floor {:?} over burst {}",
        s.floor,
        p.burst
    );
    let _: Entry = s.floor;
    assert_eq!(
        Slot::decode(&s.encode()).as_ref(),
        Some(s),
        "slot does not read back"
    );
}
