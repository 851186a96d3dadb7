//! Sliding windows of call outcomes, kept as buckets a worker can merge into shared data on its
//! tick (one CAS per API per tick, none per request). A bucket is keyed by its epoch (the
//! tick or second it covers) and holds counts.
//!
//! - Time-based (`Time { seconds }`): the buckets of the last `seconds` epoch seconds, as
//!   resilience4j's `SlidingTimeWindowMetrics` (a call in second `s` counts while
//!   `now_s - s < seconds`).
//! - Count-based (`Count { calls }`): the newest buckets until they hold `calls` calls. Whole
//!   buckets are taken, so the window may hold up to one tick's calls more than `calls`
//!   (resilience4j keeps exactly the last N; the difference is in docs/BREAKER.md).

use sg_core::codec::{Reader, Writer};

pub const VERSION: u8 = 1;
/// Buckets kept at most (a time window of up to 60 s, or a count window over up to 64 ticks).
pub const MAX_BUCKETS: usize = 64;

/// Counts of calls: all recorded calls, those that failed, those slower than the threshold.
/// A call can be both failed and slow (it then counts toward both rates).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub calls: u64,
    pub failures: u64,
    pub slow: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.calls = self.calls.saturating_add(o.calls);
        self.failures = self.failures.saturating_add(o.failures);
        self.slow = self.slow.saturating_add(o.slow);
    }

    pub fn is_empty(&self) -> bool {
        self.calls == 0
    }

    /// Failure rate in per mille, None when there are no calls.
    pub fn failure_permille(&self) -> Option<u64> {
        (self.calls > 0).then(|| self.failures.saturating_mul(1000) / self.calls)
    }

    /// Slow-call rate in per mille, None when there are no calls.
    pub fn slow_permille(&self) -> Option<u64> {
        (self.calls > 0).then(|| self.slow.saturating_mul(1000) / self.calls)
    }
}

/// Which window a breaker judges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// The last `calls` calls (at least; whole buckets).
    Count { calls: u64 },
    /// The calls of the last `seconds` epoch seconds.
    Time { seconds: u64 },
}

/// Buckets newest last, each (epoch, counts), of one CLOSED period: `generation` is the
/// breaker's generation (`machine::Breaker::generation`) the counted calls were permitted in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Buckets {
    pub generation: u64,
    pub buckets: Vec<(u64, Tally)>,
}

impl Buckets {
    /// Adds a worker's counts of calls permitted in `generation`: a newer generation starts
    /// a new window (resilience4j resets its metrics on every transition), an older one is
    /// dropped (those calls belong to a period that is over). False when dropped. `keep` is
    /// the most buckets a time window needs (its seconds); a count window keeps what holds
    /// its last `calls` calls, in at most `MAX_BUCKETS` buckets (see `trim_count`).
    pub fn merge_gen(
        &mut self,
        generation: u64,
        epoch: u64,
        t: &Tally,
        kind: WindowKind,
        keep: usize,
    ) -> bool {
        if generation < self.generation {
            return false;
        }
        if generation > self.generation {
            *self = Buckets {
                generation,
                buckets: Vec::new(),
            };
        }
        match kind {
            WindowKind::Time { .. } => self.merge(epoch, t, keep),
            WindowKind::Count { calls } => {
                self.merge(epoch, t, usize::MAX);
                self.trim_count(calls);
            }
        }
        true
    }

    /// A count window's buckets: the oldest bucket goes once the newer ones hold `calls`
    /// calls without it; past `MAX_BUCKETS` the adjacent pair with the fewest calls is
    /// combined (into the newer epoch), so a slow trickle of calls over many ticks still
    /// fills the window and buckets stay of similar size (little more than `calls` kept).
    pub fn trim_count(&mut self, calls: u64) {
        loop {
            // Saturating: the counts may come from shared data, which any plugin of the VM
            // can write (found by `make fuzz`, targets `codecs` and `window`).
            let rest = self
                .buckets
                .iter()
                .skip(1)
                .fold(0u64, |a, (_, t)| a.saturating_add(t.calls));
            if self.buckets.len() > 1 && rest >= calls {
                self.buckets.remove(0);
            } else {
                break;
            }
        }
        while self.buckets.len() > MAX_BUCKETS {
            let mut best: Option<(usize, u64)> = None;
            for (i, w) in self.buckets.windows(2).enumerate() {
                if let [(_, a), (_, b)] = w {
                    let n = a.calls.saturating_add(b.calls);
                    if best.is_none_or(|(_, m)| n < m) {
                        best = Some((i, n));
                    }
                }
            }
            let Some((i, _)) = best else { break };
            let (_, older) = self.buckets.remove(i);
            if let Some((_, newer)) = self.buckets.get_mut(i) {
                newer.add(&older);
            }
        }
    }

    /// The counts of the window if it belongs to `generation`, else an empty tally (the
    /// breaker moved since these calls were counted).
    pub fn window_of(&self, generation: u64, kind: WindowKind, now_epoch: u64) -> Tally {
        if generation == self.generation {
            self.window(kind, now_epoch)
        } else {
            Tally::default()
        }
    }

    /// Adds a worker's counts for `epoch` (a late worker's older epoch goes into its own
    /// bucket, in order), keeping at most `keep` buckets (`usize::MAX`: all): the oldest are
    /// dropped, since they have left the time window the breaker judges.
    pub fn merge(&mut self, epoch: u64, t: &Tally, keep: usize) {
        if t.is_empty() {
            return;
        }
        let keep = keep.max(1);
        match self.buckets.iter_mut().find(|(e, _)| *e == epoch) {
            Some((_, b)) => b.add(t),
            None => {
                let at = self.buckets.partition_point(|(e, _)| *e < epoch);
                self.buckets.insert(at, (epoch, *t));
            }
        }
        while self.buckets.len() > keep {
            self.buckets.remove(0);
        }
    }

    /// The counts a breaker judges now. `now_epoch` is the current second for a time window.
    pub fn window(&self, kind: WindowKind, now_epoch: u64) -> Tally {
        let mut t = Tally::default();
        match kind {
            WindowKind::Time { seconds } => {
                for (e, b) in &self.buckets {
                    if now_epoch.saturating_sub(*e) < seconds && *e <= now_epoch {
                        t.add(b);
                    }
                }
            }
            WindowKind::Count { calls } => {
                for (_, b) in self.buckets.iter().rev() {
                    if t.calls >= calls {
                        break;
                    }
                    t.add(b);
                }
            }
        }
        t
    }

    pub fn encode(&self) -> Vec<u8> {
        let n = self.buckets.len().min(MAX_BUCKETS);
        let mut w = Writer::with_capacity(13 + n * 32);
        w.u8(VERSION).u64(self.generation).u32(n as u32);
        for (e, b) in self.buckets.iter().skip(self.buckets.len() - n) {
            w.u64(*e).u64(b.calls).u64(b.failures).u64(b.slow);
        }
        w.finish()
    }

    /// None for anything but a value `encode` could write (wrong version, counts out of
    /// order, epochs not increasing, trailing bytes). An empty value is an empty window.
    pub fn decode(b: &[u8]) -> Option<Buckets> {
        if b.is_empty() {
            return Some(Buckets::default());
        }
        let mut r = Reader::new(b);
        if r.u8()? != VERSION {
            return None;
        }
        let generation = r.u64()?;
        let n = r.u32()? as usize;
        if n > MAX_BUCKETS {
            return None;
        }
        let mut buckets: Vec<(u64, Tally)> = Vec::with_capacity(n);
        for _ in 0..n {
            let e = r.u64()?;
            let t = Tally {
                calls: r.u64()?,
                failures: r.u64()?,
                slow: r.u64()?,
            };
            if t.failures > t.calls || t.slow > t.calls {
                return None;
            }
            if buckets.last().is_some_and(|(last, _)| *last >= e) {
                return None;
            }
            buckets.push((e, t));
        }
        (r.remaining() == 0).then_some(Buckets {
            generation,
            buckets,
        })
    }
}

impl sg_core::store::Decode for Buckets {
    fn decode(b: &[u8]) -> Option<Buckets> {
        Buckets::decode(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(calls: u64, failures: u64, slow: u64) -> Tally {
        Tally {
            calls,
            failures,
            slow,
        }
    }

    /// Regression (`make fuzz`, targets `codecs` and `window`, filters/fuzz/regressions/): a
    /// count window read from shared data with call counts near u64::MAX; trimming sums
    /// them without overflow, and the result is still a value `decode` accepts.
    #[test]
    fn trimming_counts_near_u64_max_does_not_overflow() {
        let mut b = Buckets {
            generation: 3,
            buckets: vec![
                (1, t(u64::MAX, 0, 0)),
                (2, t(u64::MAX, 1, 1)),
                (3, t(u64::MAX - 1, 0, 0)),
            ],
        };
        assert_eq!(Buckets::decode(&b.encode()).as_ref(), Some(&b));
        assert!(b.merge_gen(
            3,
            4,
            &t(5, 1, 0),
            WindowKind::Count { calls: 100 },
            usize::MAX
        ));
        assert_eq!(
            b.buckets,
            vec![(3, t(u64::MAX - 1, 0, 0)), (4, t(5, 1, 0))],
            "the oldest go once the newer hold the window's calls"
        );
        let mut c = Buckets {
            generation: 0,
            buckets: vec![
                (1, t(10, 0, 0)),
                (2, t(u64::MAX, 0, 0)),
                (3, t(u64::MAX, 0, 0)),
            ],
        };
        c.trim_count(u64::MAX);
        assert_eq!(
            c.buckets,
            vec![(3, t(u64::MAX, 0, 0))],
            "the newest holds u64::MAX calls"
        );
        assert_eq!(Buckets::decode(&c.encode()).as_ref(), Some(&c));
    }

    #[test]
    fn a_time_window_counts_the_last_n_epoch_seconds() {
        // resilience4j's SlidingTimeWindowMetricsTest with N = 5, by whole seconds.
        let mut b = Buckets::default();
        b.merge(0, &t(3, 1, 0), 64);
        b.merge(1, &t(1, 0, 0), 64);
        b.merge(2, &t(1, 0, 0), 64);
        b.merge(3, &t(1, 1, 0), 64);
        b.merge(4, &t(1, 0, 0), 64);
        let w = WindowKind::Time { seconds: 5 };
        assert_eq!(b.window(w, 4), t(7, 2, 0));
        assert_eq!(b.window(w, 5), t(4, 1, 0), "second 0 left the window");
        assert_eq!(b.window(w, 9), t(0, 0, 0));
    }

    #[test]
    fn a_count_window_takes_the_newest_whole_buckets_until_it_holds_n_calls() {
        let mut b = Buckets::default();
        for e in 0..5 {
            b.merge(e, &t(4, e, 0), 64);
        }
        let w = |calls| b.window(WindowKind::Count { calls }, 0);
        assert_eq!(w(4), t(4, 4, 0));
        assert_eq!(w(5), t(8, 7, 0), "whole buckets: one more than asked");
        assert_eq!(w(100), t(20, 10, 0));
    }

    #[test]
    fn late_and_repeated_epochs_merge_and_the_oldest_buckets_go() {
        let mut b = Buckets::default();
        b.merge(10, &t(1, 0, 0), 3);
        b.merge(12, &t(1, 0, 0), 3);
        b.merge(11, &t(2, 1, 1), 3);
        b.merge(12, &t(1, 1, 0), 3);
        assert_eq!(
            b.buckets,
            vec![(10, t(1, 0, 0)), (11, t(2, 1, 1)), (12, t(2, 1, 0))]
        );
        b.merge(13, &t(1, 0, 0), 3);
        assert_eq!(b.buckets.first().map(|x| x.0), Some(11));
        b.merge(14, &Tally::default(), 3);
        assert_eq!(b.buckets.len(), 3, "an empty tally adds no bucket");
    }

    const C100: WindowKind = WindowKind::Count { calls: 100 };

    #[test]
    fn a_newer_generation_starts_a_new_window_and_an_older_one_is_dropped() {
        let mut b = Buckets::default();
        assert!(b.merge_gen(3, 1, &t(5, 5, 0), C100, 64));
        assert!(
            !b.merge_gen(2, 1, &t(9, 9, 0), C100, 64),
            "calls of a period that is over"
        );
        assert_eq!(
            b.window_of(3, WindowKind::Count { calls: 100 }, 1),
            t(5, 5, 0)
        );
        assert_eq!(
            b.window_of(4, WindowKind::Count { calls: 100 }, 1),
            t(0, 0, 0)
        );
        assert!(b.merge_gen(4, 2, &t(1, 0, 0), C100, 64));
        assert_eq!(b.generation, 4);
        assert_eq!(b.buckets, vec![(2, t(1, 0, 0))]);
    }

    #[test]
    fn a_count_window_fed_one_call_per_tick_still_fills_and_drops_what_it_no_longer_needs() {
        let c = WindowKind::Count { calls: 100 };
        let mut b = Buckets::default();
        for e in 0..500 {
            b.merge_gen(0, e, &t(1, e % 2, 0), c, 64);
            assert!(b.buckets.len() <= MAX_BUCKETS);
        }
        let w = b.window(c, 0);
        assert!(
            w.calls >= 100,
            "a trickle over 500 ticks fills a 100-call window: {w:?}"
        );
        assert!(w.calls <= 110, "and keeps little more than it needs: {w:?}");
        // A burst: the old trickle is no longer needed.
        b.merge_gen(0, 600, &t(200, 200, 0), c, 64);
        assert_eq!(b.buckets.len(), 1);
        assert_eq!(b.window(c, 0), t(200, 200, 0));
    }

    #[test]
    fn rates_in_per_mille() {
        assert_eq!(t(3, 1, 0).failure_permille(), Some(333));
        assert_eq!(t(6, 3, 6).failure_permille(), Some(500));
        assert_eq!(t(6, 3, 6).slow_permille(), Some(1000));
        assert_eq!(Tally::default().failure_permille(), None);
    }

    #[test]
    fn codec_round_trips_and_refuses_odd_values() {
        let mut b = Buckets::default();
        b.merge(5, &t(9, 2, 1), 64);
        b.merge(7, &t(1, 1, 1), 64);
        assert_eq!(Buckets::decode(&b.encode()), Some(b.clone()));
        assert_eq!(Buckets::decode(&[]), Some(Buckets::default()));
        let mut bad = Writer::default();
        bad.u8(VERSION).u64(0).u32(1).u64(1).u64(1).u64(2).u64(0);
        assert_eq!(
            Buckets::decode(&bad.finish()),
            None,
            "more failures than calls"
        );
        let e = b.encode();
        assert_eq!(Buckets::decode(&e[..e.len() - 1]), None);
    }
}
