//! Hot-key detection with hysteresis over the window's rates, run by one leader per Envoy on
//! its tick.
//!
//! - A key enters when its rate is `>= enter_milli_rps` and, if `enter_share_permille > 0`,
//!   its share of the rule's total rate is `>= enter_share_permille / 1000`.
//! - A hot key is a leave candidate while its rate is `< enter * exit_permille / 1000`
//!   (`exit_permille` clamped to 1000, so the exit level never exceeds the enter level); it
//!   leaves once it has stayed below that level continuously for `cooldown_ms`. Going back
//!   to or above the exit level resets the wait. A hot key absent from the rates counts as 0.
//! - At most `max_hot` keys are hot: the hottest win (ties go to keys already hot, then to
//!   the lower fp); a hot key pushed out by a hotter one exits.
//!
//! Time is ms passed in; state is integers only.

use std::collections::{HashMap, HashSet};

use crate::sketch::truncate_key;
use crate::window::Rate;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// A key enters when its rate is >= this ...
    pub enter_milli_rps: u64,
    /// ... and its share of the rule's total rate is >= this (0 = no share condition).
    pub enter_share_permille: u32,
    /// It becomes a leave candidate when rate < enter * exit_permille / 1000 (e.g. 500).
    pub exit_permille: u32,
    /// And leaves after staying below that continuously for this long.
    pub cooldown_ms: u64,
    /// At most this many hot keys at once (the hottest win).
    pub max_hot: usize,
}

impl Thresholds {
    /// `enter * min(exit_permille, 1000) / 1000`.
    pub fn exit_milli_rps(&self) -> u64 {
        let v = u128::from(self.enter_milli_rps) * u128::from(self.exit_permille.min(1000)) / 1000;
        u64::try_from(v).unwrap_or(u64::MAX)
    }

    fn may_enter(&self, rate: u64, total_milli_rps: u64) -> bool {
        rate >= self.enter_milli_rps
            && (self.enter_share_permille == 0
                || u128::from(rate) * 1000
                    >= u128::from(total_milli_rps) * u128::from(self.enter_share_permille))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Enter {
        fp: u64,
        key: Vec<u8>,
        milli_rps: u64,
    },
    Exit {
        fp: u64,
        key: Vec<u8>,
    },
}

/// One hot key (published in `sg:hk:shed`, so its type lives in `sg_core::published`).
pub use sg_core::published::Hot;

/// Current hot keys of one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Detector {
    hot: Vec<Hot>,
}

fn by_rate_desc(a: &Hot, b: &Hot) -> std::cmp::Ordering {
    b.milli_rps.cmp(&a.milli_rps).then(a.fp.cmp(&b.fp))
}

impl Detector {
    pub fn new() -> Self {
        Detector { hot: Vec::new() }
    }

    /// One evaluation at `now_ms` with the window's rates; returns the transitions: exits
    /// first, then enters (hottest first).
    pub fn update(
        &mut self,
        now_ms: u64,
        total_milli_rps: u64,
        rates: &[Rate],
        th: &Thresholds,
    ) -> Vec<Event> {
        let exit_level = th.exit_milli_rps();
        let mut by_fp: HashMap<u64, u64> = HashMap::with_capacity(rates.len());
        for r in rates {
            let v = by_fp.entry(r.fp).or_insert(0);
            *v = (*v).max(r.milli_rps);
        }

        let mut events = Vec::new();
        // (hot, was already hot)
        let mut pool: Vec<(Hot, bool)> = Vec::with_capacity(self.hot.len());
        for mut h in self.hot.drain(..) {
            h.milli_rps = by_fp.get(&h.fp).copied().unwrap_or(0);
            if h.milli_rps < exit_level {
                let since = *h.below_since_ms.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= th.cooldown_ms {
                    events.push(Event::Exit {
                        fp: h.fp,
                        key: h.key,
                    });
                    continue;
                }
            } else {
                h.below_since_ms = None;
            }
            pool.push((h, true));
        }

        let mut seen: HashSet<u64> = pool.iter().map(|(h, _)| h.fp).collect();
        for r in rates {
            if th.may_enter(r.milli_rps, total_milli_rps) && seen.insert(r.fp) {
                pool.push((
                    Hot {
                        fp: r.fp,
                        key: truncate_key(&r.key).to_vec(),
                        since_ms: now_ms,
                        milli_rps: by_fp.get(&r.fp).copied().unwrap_or(r.milli_rps),
                        below_since_ms: None,
                    },
                    false,
                ));
            }
        }

        // The hottest win; ties go to incumbents, then to the lower fp.
        pool.sort_by(|(a, a_old), (b, b_old)| {
            b.milli_rps
                .cmp(&a.milli_rps)
                .then(b_old.cmp(a_old))
                .then(a.fp.cmp(&b.fp))
        });
        let mut enters = Vec::new();
        for (i, (h, was_hot)) in pool.into_iter().enumerate() {
            if i < th.max_hot {
                if !was_hot {
                    enters.push(Event::Enter {
                        fp: h.fp,
                        key: h.key.clone(),
                        milli_rps: h.milli_rps,
                    });
                }
                self.hot.push(h);
            } else if was_hot {
                events.push(Event::Exit {
                    fp: h.fp,
                    key: h.key,
                });
            }
        }
        self.hot.sort_by(by_rate_desc);
        events.extend(enters);
        events
    }

    /// Current hot keys, sorted by rate desc then fp asc.
    pub fn hot(&self) -> &[Hot] {
        &self.hot
    }

    /// A new leader continues from the published state (sorted, one entry per fp; `max_hot`
    /// is applied at the next update).
    pub fn restore(&mut self, hot: Vec<Hot>) {
        let mut seen = HashSet::with_capacity(hot.len());
        self.hot = hot.into_iter().filter(|h| seen.insert(h.fp)).collect();
        for h in &mut self.hot {
            h.key.truncate(crate::sketch::MAX_KEY_BYTES);
        }
        self.hot.sort_by(by_rate_desc);
    }
}
