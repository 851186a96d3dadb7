//! Overload of the main backend, measured in the proxy: per rule, requests seen and, for the
//! requests that went to the main backend, their status and time to response headers. Each
//! worker tallies a tick in VM memory and merges it into a windowed view in shared data
//! (`sg:sp:<rule>:load`, one bucket per tick, at most `MAX_BUCKETS`); the lease holder sums
//! the last complete buckets and runs the hysteresis below.

use sg_core::codec::{Reader, Writer};

pub const VERSION: u8 = 1;
pub const MAX_BUCKETS: usize = 64;
/// Upper bounds (ms) of the latency histogram buckets; the last is open.
pub const HIST_BOUNDS_MS: [u64; 16] = [
    5,
    10,
    25,
    50,
    75,
    100,
    150,
    200,
    300,
    500,
    750,
    1000,
    2000,
    5000,
    10_000,
    u64::MAX,
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests of the rule (diverted or not).
    pub requests: u64,
    /// Requests that went to the main backend and got a response (the samples below).
    pub samples: u64,
    /// Samples with status 5xx, or no response at all (reset, timeout).
    pub errors: u64,
    pub hist: [u64; 16],
}

impl Tally {
    /// A response from the main backend: status (0 = none) and time to headers.
    pub fn record(&mut self, status: u16, latency_ms: u64) {
        self.samples = self.samples.saturating_add(1);
        if status == 0 || status >= 500 {
            self.errors = self.errors.saturating_add(1);
        }
        let i = HIST_BOUNDS_MS
            .iter()
            .position(|b| latency_ms <= *b)
            .unwrap_or(HIST_BOUNDS_MS.len() - 1);
        if let Some(c) = self.hist.get_mut(i) {
            *c = c.saturating_add(1);
        }
    }

    pub fn add(&mut self, o: &Tally) {
        self.requests = self.requests.saturating_add(o.requests);
        self.samples = self.samples.saturating_add(o.samples);
        self.errors = self.errors.saturating_add(o.errors);
        for (a, b) in self.hist.iter_mut().zip(o.hist.iter()) {
            *a = a.saturating_add(*b);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.requests == 0 && self.samples == 0
    }

    /// The 99th percentile as the upper bound of its histogram bucket (None without samples).
    /// Summed in u128: the counts may come from shared data, which any plugin of the VM can
    /// write (found by `make fuzz`, target `codecs`: a u64 sum overflowed).
    pub fn p99_ms(&self) -> Option<u64> {
        let n: u128 = self.hist.iter().map(|c| u128::from(*c)).sum();
        if n == 0 {
            return None;
        }
        // Rank of the 99th percentile, 1-based: ceil(0.99 n).
        let rank = (n * 99).div_ceil(100);
        let mut seen = 0u128;
        for (c, b) in self.hist.iter().zip(HIST_BOUNDS_MS.iter()) {
            seen += u128::from(*c);
            if seen >= rank {
                return Some(*b);
            }
        }
        Some(u64::MAX)
    }

    fn write(&self, w: &mut Writer) {
        w.u64(self.requests).u64(self.samples).u64(self.errors);
        for c in &self.hist {
            w.u64(*c);
        }
    }

    fn read(r: &mut Reader) -> Option<Tally> {
        let mut t = Tally {
            requests: r.u64()?,
            samples: r.u64()?,
            errors: r.u64()?,
            hist: [0; 16],
        };
        for c in t.hist.iter_mut() {
            *c = r.u64()?;
        }
        Some(t)
    }
}

/// The shared, windowed view: (tick epoch, tally) buckets, newest last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadWindow {
    pub buckets: Vec<(u64, Tally)>,
}

impl LoadWindow {
    /// Adds a worker's tally for `epoch`, dropping buckets older than `keep` ticks.
    pub fn merge(&mut self, epoch: u64, t: &Tally, keep: u64) {
        let keep = keep.clamp(1, MAX_BUCKETS as u64);
        let newest = self
            .buckets
            .iter()
            .map(|(e, _)| *e)
            .max()
            .unwrap_or(0)
            .max(epoch);
        self.buckets
            .retain(|(e, _)| e.saturating_add(keep) > newest);
        if epoch.saturating_add(keep) <= newest {
            return;
        }
        match self.buckets.iter_mut().find(|(e, _)| *e == epoch) {
            Some((_, b)) => b.add(t),
            None => {
                self.buckets.push((epoch, t.clone()));
                self.buckets.sort_by_key(|(e, _)| *e);
            }
        }
        while self.buckets.len() > MAX_BUCKETS {
            self.buckets.remove(0);
        }
    }

    /// Sum of the `n` buckets ending at `last` (inclusive).
    pub fn sum(&self, last: u64, n: u64) -> Tally {
        let mut t = Tally::default();
        for (e, b) in &self.buckets {
            if *e <= last && e.saturating_add(n) > last {
                t.add(b);
            }
        }
        t
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(8 + self.buckets.len() * 160);
        let n = self.buckets.len().min(MAX_BUCKETS);
        w.u8(VERSION).u32(n as u32);
        for (e, t) in self.buckets.iter().take(n) {
            w.u64(*e);
            t.write(&mut w);
        }
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Option<LoadWindow> {
        let mut r = Reader::new(b);
        if r.u8()? != VERSION {
            return None;
        }
        let n = r.u32()? as usize;
        if n > MAX_BUCKETS {
            return None;
        }
        let mut buckets = Vec::with_capacity(n);
        for _ in 0..n {
            let e = r.u64()?;
            buckets.push((e, Tally::read(&mut r)?));
        }
        (r.remaining() == 0).then_some(LoadWindow { buckets })
    }
}

/// Overload thresholds of a rule; any one crossed is overload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Requests per second of the rule above which the main backend is over capacity.
    pub capacity_rps: Option<u64>,
    /// Error share of main-backend responses (per mille).
    pub error_permille: Option<u64>,
    /// p99 time to response headers.
    pub p99_ms: Option<u64>,
    /// Error and latency conditions need at least this many samples in the window.
    pub min_samples: u64,
    pub window_ms: u64,
    /// Overload ends after every condition stayed clear for this long.
    pub clear_after_ms: u64,
}

/// Which condition fired, and the published overload state's codec (`sg:sp:state`, also read
/// by `sli`), live in `sg_core::published`; re-exported under their old paths.
pub use sg_core::published::{decode_state, encode_state, Reason};

/// The first condition crossed by the window's tally, if any.
pub fn crossed(t: &Tally, s: &Settings) -> Option<Reason> {
    let window_ms = s.window_ms.max(1);
    if let Some(cap) = s.capacity_rps {
        // requests / window > cap  <=>  requests * 1000 > cap * window_ms
        if t.requests.saturating_mul(1000) > cap.saturating_mul(window_ms) {
            return Some(Reason::Rate);
        }
    }
    if t.samples >= s.min_samples.max(1) {
        if let Some(pm) = s.error_permille {
            if t.errors.saturating_mul(1000) > pm.saturating_mul(t.samples) {
                return Some(Reason::Errors);
            }
        }
        if let (Some(limit), Some(p99)) = (s.p99_ms, t.p99_ms()) {
            if p99 > limit {
                return Some(Reason::Latency);
            }
        }
    }
    None
}

/// Overload state with hysteresis: on at the first crossed window, off after
/// `clear_after_ms` of clear windows. Windows with too few samples for the error and latency
/// conditions count as clear only for the rate condition; while diverting, `probe_percent` of
/// the rule's requests keep going to the main backend so recovery can be seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detector {
    pub on: Option<Reason>,
    pub since_ms: u64,
    clear_since_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Started(Reason),
    Ended,
}

impl Detector {
    /// A detector continuing a published overload (a new lease holder).
    pub fn restored(reason: Reason, since_ms: u64) -> Detector {
        Detector {
            on: Some(reason),
            since_ms,
            clear_since_ms: None,
        }
    }

    pub fn update(&mut self, now: u64, t: &Tally, s: &Settings) -> Option<Change> {
        match (self.on, crossed(t, s)) {
            (None, Some(r)) => {
                self.on = Some(r);
                self.since_ms = now;
                self.clear_since_ms = None;
                Some(Change::Started(r))
            }
            (None, None) => None,
            (Some(_), Some(_)) => {
                self.clear_since_ms = None;
                None
            }
            (Some(_), None) => {
                let since = *self.clear_since_ms.get_or_insert(now);
                if now.saturating_sub(since) >= s.clear_after_ms {
                    self.on = None;
                    self.clear_since_ms = None;
                    Some(Change::Ended)
                } else {
                    None
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (`make fuzz`, target `codecs`, filters/fuzz/regressions/codecs/): a load
    /// window a neighbour wrote with histogram counts near u64::MAX; the p99 is defined.
    #[test]
    fn p99_of_counts_near_u64_max_does_not_overflow() {
        let mut t = Tally::default();
        t.hist[0] = u64::MAX - 1;
        t.hist[3] = u64::MAX;
        assert_eq!(t.p99_ms(), Some(HIST_BOUNDS_MS[3]));
        t.hist = [u64::MAX / 10; 16];
        assert!(t.p99_ms().is_some());
        let w = LoadWindow {
            buckets: vec![(1, t.clone()), (2, t)],
        };
        assert!(w.sum(2, 2).p99_ms().is_some());
    }

    const S: Settings = Settings {
        capacity_rps: Some(100),
        error_permille: Some(200),
        p99_ms: Some(500),
        min_samples: 10,
        window_ms: 1000,
        clear_after_ms: 2000,
    };

    fn tally(requests: u64, ok: u64, errors: u64, latency: u64) -> Tally {
        let mut t = Tally {
            requests,
            ..Tally::default()
        };
        for _ in 0..ok {
            t.record(200, latency);
        }
        for _ in 0..errors {
            t.record(503, latency);
        }
        t
    }

    #[test]
    fn p99_from_the_histogram() {
        let mut t = tally(0, 98, 0, 20);
        t.record(200, 900);
        t.record(200, 900);
        assert_eq!(
            t.p99_ms(),
            Some(1000),
            "2 of 100 slow: p99 in the slow bucket"
        );
        let t = tally(0, 100, 0, 20);
        assert_eq!(t.p99_ms(), Some(25));
        assert_eq!(Tally::default().p99_ms(), None);
        let mut t = Tally::default();
        t.record(200, 60_000);
        assert_eq!(t.p99_ms(), Some(u64::MAX));
    }

    #[test]
    fn each_condition_and_the_sample_floor() {
        assert_eq!(crossed(&tally(101, 0, 0, 0), &S), Some(Reason::Rate));
        assert_eq!(crossed(&tally(100, 0, 0, 0), &S), None);
        assert_eq!(crossed(&tally(50, 30, 10, 10), &S), Some(Reason::Errors));
        assert_eq!(
            crossed(&tally(50, 40, 10, 10), &S),
            None,
            "20% is not above 20%"
        );
        assert_eq!(crossed(&tally(50, 40, 0, 800), &S), Some(Reason::Latency));
        // Too few samples: errors and latency are not judged.
        assert_eq!(crossed(&tally(5, 0, 5, 9000), &S), None);
    }

    #[test]
    fn hysteresis_holds_until_clear_for_the_whole_period() {
        let mut d = Detector::default();
        let hot = tally(50, 40, 0, 800);
        let ok = tally(50, 40, 0, 10);
        assert_eq!(d.update(0, &ok, &S), None);
        assert_eq!(
            d.update(100, &hot, &S),
            Some(Change::Started(Reason::Latency))
        );
        assert_eq!(d.update(200, &ok, &S), None);
        assert_eq!(
            d.update(1000, &hot, &S),
            None,
            "crossed again: clear timer restarts"
        );
        assert_eq!(d.update(1100, &ok, &S), None);
        assert_eq!(d.update(3000, &ok, &S), None);
        assert_eq!(d.update(3100, &ok, &S), Some(Change::Ended));
        assert_eq!(d.on, None);
    }

    #[test]
    fn window_merges_workers_and_forgets_old_ticks() {
        let mut w = LoadWindow::default();
        w.merge(10, &tally(5, 5, 0, 1), 3);
        w.merge(10, &tally(7, 1, 1, 1), 3);
        w.merge(11, &tally(1, 0, 0, 1), 3);
        w.merge(13, &tally(2, 0, 0, 1), 3);
        assert_eq!(w.buckets.len(), 2, "epoch 10 fell out of 3 ticks: {w:?}");
        w.merge(12, &tally(4, 0, 0, 1), 3);
        let s = w.sum(12, 2);
        assert_eq!(s.requests, 5);
        let all = w.sum(13, 3);
        assert_eq!(all.requests, 7);
        let b = w.encode();
        assert_eq!(LoadWindow::decode(&b), Some(w));
        assert_eq!(LoadWindow::decode(&b[..b.len() - 1]), None);
        // A tally of epoch 10 merged now (a late worker) is dropped, not added to a newer bucket.
        let mut w2 = LoadWindow::default();
        w2.merge(20, &tally(1, 0, 0, 1), 5);
        w2.merge(10, &tally(9, 0, 0, 1), 5);
        assert_eq!(w2.sum(20, 5).requests, 1);
    }
}
