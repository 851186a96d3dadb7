//! A fleet-scoped limit's state inside one Envoy ([11/11]): what every worker decides on and
//! the sync's lease holder reads and writes, in shared data. Pure: values in, values out; the
//! caller does the CAS (`shared::update`).
//!
//! - `sg:fl:<rule>:<slot>` ([`Slot`]): up to [`WAYS`] keys, each with its fleet window, the
//!   requests admitted in it here (`used`), those no sync has carried yet (`unsent`), and the
//!   allowance the last sync left it (`left`).
//! - `sg:fl:<rule>:m` ([`Meta`]): written by the lease holder on every sync answer: this
//!   Envoy's share of the rule's traffic, Redis' clock offset, whether the sync is healthy.
//! - `sg:fl:<rule>:n`: requests seen for the rule that no sync carried yet (every worker adds
//!   its own on its tick; the holder takes them).
//!
//! A request for a key is admitted, in fleet window `win`:
//! - synced: while the key's `left` is above 0, or, for a key no answer has named yet, while
//!   `used` is below share x limit;
//! - otherwise (starting, engine down, the holder's answers stale): while `used` is below the
//!   fallback limit (limit / expected Envoys).

use crate::codec::{Reader, Writer};
use crate::fleet::allowance;

pub const VERSION: u8 = 1;
/// Keys per slot.
pub const WAYS: usize = 4;
const NO_LEFT: u32 = u32::MAX;

/// One key of a fleet rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Entry {
    pub fp: u64,
    /// The fleet window `used` and `left` belong to.
    pub win: u64,
    /// Admitted here in `win`.
    pub used: u32,
    /// Admitted here and not yet in a sync's body.
    pub unsent: u32,
    /// What the last sync answer left this Envoy for `win` (None: no answer named the key).
    pub left: Option<u32>,
}

/// One shared-data slot of a fleet rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    pub entries: Vec<Entry>,
    /// Unsent admissions of keys evicted from the full slot: no key to report them under;
    /// the holder counts them in `fleet_keys_dropped`.
    pub dropped: u64,
}

/// How a request is decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum View {
    Synced { win: u64, share: f64 },
    Fallback { win: u64 },
}

impl View {
    pub fn win(&self) -> u64 {
        match *self {
            View::Synced { win, .. } | View::Fallback { win } => win,
        }
    }
}

/// A fleet rule's numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Requests per window across the fleet.
    pub limit: u64,
    pub window_ms: u64,
    /// Requests per key and window while not synced.
    pub fallback: u64,
}

fn clamp32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX - 1)
}

impl Entry {
    fn roll(&mut self, win: u64) {
        if self.win != win {
            self.win = win;
            self.used = 0;
            self.left = None;
        }
    }

    fn can_admit(&self, view: View, b: &Budget) -> bool {
        match view {
            View::Synced { share, .. } => match self.left {
                Some(l) => l > 0,
                None => u64::from(self.used) < allowance(b.limit, 0, share),
            },
            View::Fallback { .. } => u64::from(self.used) < b.fallback,
        }
    }
}

impl Slot {
    pub fn decode(b: &[u8]) -> Option<Slot> {
        let mut r = Reader::new(b);
        if r.u8()? != VERSION {
            return None;
        }
        let dropped = r.u64()?;
        let n = usize::from(r.u8()?);
        if n > WAYS {
            return None;
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let fp = r.u64()?;
            let win = r.u64()?;
            let used = r.u32()?;
            let unsent = r.u32()?;
            let left = r.u32()?;
            entries.push(Entry {
                fp,
                win,
                used,
                unsent,
                left: (left != NO_LEFT).then_some(left),
            });
        }
        (r.remaining() == 0).then_some(Slot { entries, dropped })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(10 + self.entries.len() * 28);
        w.u8(VERSION)
            .u64(self.dropped)
            .u8(self.entries.len().min(WAYS) as u8);
        for e in self.entries.iter().take(WAYS) {
            w.u64(e.fp)
                .u64(e.win)
                .u32(e.used)
                .u32(e.unsent)
                .u32(e.left.unwrap_or(NO_LEFT));
        }
        w.finish()
    }

    /// Would a request for `fp` be admitted now? (No change.)
    pub fn would_admit(&self, fp: u64, view: View, b: &Budget) -> bool {
        let mut e = self
            .entries
            .iter()
            .find(|e| e.fp == fp)
            .copied()
            .unwrap_or(Entry {
                fp,
                win: view.win(),
                ..Entry::default()
            });
        e.roll(view.win());
        e.can_admit(view, b)
    }

    /// Decides one request for `fp` and, if admitted, charges it. A new key takes a free way
    /// or evicts, in order: a key of an older window with nothing unsent, then the key with
    /// the least admitted (its unsent admissions go to `dropped`).
    pub fn admit(&mut self, fp: u64, view: View, b: &Budget) -> bool {
        let win = view.win();
        let i = match self.entries.iter().position(|e| e.fp == fp) {
            Some(i) => i,
            None => {
                let fresh = Entry {
                    fp,
                    win,
                    ..Entry::default()
                };
                if self.entries.len() < WAYS {
                    self.entries.push(fresh);
                    self.entries.len() - 1
                } else {
                    let Some(victim) = (0..self.entries.len()).min_by_key(|&j| {
                        self.entries.get(j).map_or((true, true, u32::MAX), |e| {
                            (e.win == win, e.unsent > 0, e.used)
                        })
                    }) else {
                        return false;
                    };
                    let Some(slot) = self.entries.get_mut(victim) else {
                        return false;
                    };
                    self.dropped = self.dropped.saturating_add(u64::from(slot.unsent));
                    *slot = fresh;
                    victim
                }
            }
        };
        let Some(e) = self.entries.get_mut(i) else {
            return false;
        };
        e.roll(win);
        if !e.can_admit(view, b) {
            return false;
        }
        e.used = e.used.saturating_add(1);
        e.unsent = e.unsent.saturating_add(1);
        if let Some(l) = e.left.as_mut() {
            *l = l.saturating_sub(1);
        }
        true
    }

    /// The sync takes what no sync carried yet: (key, admitted) per key, and the dropped
    /// count. Leaves them zero. None when there is nothing to take (no write needed).
    pub fn take(&mut self) -> Option<(Vec<(u64, u32)>, u64)> {
        let keys: Vec<(u64, u32)> = self
            .entries
            .iter()
            .filter(|e| e.unsent > 0)
            .map(|e| (e.fp, e.unsent))
            .collect();
        if keys.is_empty() && self.dropped == 0 {
            return None;
        }
        self.entries.iter_mut().for_each(|e| e.unsent = 0);
        let dropped = std::mem::take(&mut self.dropped);
        Some((keys, dropped))
    }

    /// A sync answer: the fleet admitted `total` for `fp` in fleet window `win`. The key's
    /// allowance becomes the lesser of this Envoy's part of what the fleet left (less what it
    /// admitted since the body was taken: `unsent`) and what is left of its quota (share x
    /// limit, less what it admitted this window). False when the key is not here or the
    /// answer is for a window this slot has left (no write needed).
    pub fn apply(&mut self, fp: u64, win: u64, total: u64, share: f64, b: &Budget) -> bool {
        let Some(e) = self.entries.iter_mut().find(|e| e.fp == fp) else {
            return false;
        };
        if e.win > win {
            return false;
        }
        e.roll(win);
        let fleet_left = allowance(b.limit, total, share).saturating_sub(u64::from(e.unsent));
        let quota_left = allowance(b.limit, 0, share).saturating_sub(u64::from(e.used));
        e.left = Some(clamp32(fleet_left.min(quota_left)));
        true
    }
}

/// A fleet rule's sync state, as the lease holder last wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    pub synced: bool,
    /// This Envoy's share of the rule's traffic, in millionths.
    pub share_ppm: u32,
    /// Redis' clock minus this Envoy's, ms.
    pub offset_ms: i64,
    /// When the holder wrote it (this Envoy's clock).
    pub updated_ms: u64,
}

impl Meta {
    pub fn decode(b: &[u8]) -> Option<Meta> {
        let mut r = Reader::new(b);
        if r.u8()? != VERSION {
            return None;
        }
        let m = Meta {
            synced: r.u8()? == 1,
            share_ppm: r.u32()?,
            offset_ms: r.u64()? as i64,
            updated_ms: r.u64()?,
        };
        (r.remaining() == 0).then_some(m)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(22);
        w.u8(VERSION)
            .u8(u8::from(self.synced))
            .u32(self.share_ppm)
            .u64(self.offset_ms as u64)
            .u64(self.updated_ms);
        w.finish()
    }

    pub fn share(&self) -> f64 {
        f64::from(self.share_ppm.min(1_000_000)) / 1e6
    }

    pub fn share_ppm(share: f64) -> u32 {
        if share.is_finite() {
            (share.clamp(0.0, 1.0) * 1e6).round() as u32
        } else {
            0
        }
    }

    /// The fleet window at `now` (Redis' `floor(time / window)`, through the offset).
    pub fn window(&self, now_ms: u64, window_ms: u64) -> u64 {
        let t = i128::from(now_ms) + i128::from(self.offset_ms);
        u64::try_from(t.max(0)).unwrap_or(0) / window_ms.max(1)
    }

    /// The view a request decides on: synced while the holder's last answer is at most
    /// `stale_ms` old; else the fallback.
    pub fn view(meta: Option<&Meta>, now_ms: u64, window_ms: u64, stale_ms: u64) -> View {
        match meta {
            Some(m) if m.synced && now_ms.saturating_sub(m.updated_ms) <= stale_ms => {
                View::Synced {
                    win: m.window(now_ms, window_ms),
                    share: m.share(),
                }
            }
            Some(m) => View::Fallback {
                win: m.window(now_ms, window_ms),
            },
            None => View::Fallback {
                win: now_ms / window_ms.max(1),
            },
        }
    }
}

/// The key a fleet rule's key goes to Redis as: its fingerprint in hex (the same on every
/// Envoy; fixed length, no escaping).
pub fn wire_key(fp: u64) -> String {
    format!("{fp:016x}")
}

pub fn parse_wire_key(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// The `sg:fl:<rule>:n` counter.
pub fn decode_count(b: Option<&[u8]>) -> u64 {
    b.and_then(|b| Reader::new(b).u64()).unwrap_or(0)
}

pub fn encode_count(n: u64) -> Vec<u8> {
    let mut w = Writer::with_capacity(8);
    w.u64(n);
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Budget = Budget {
        limit: 90,
        window_ms: 1000,
        fallback: 30,
    };

    fn admitted(s: &mut Slot, fp: u64, view: View, n: u32) -> u32 {
        (0..n).filter(|_| s.admit(fp, view, &B)).count() as u32
    }

    #[test]
    fn synced_a_new_key_gets_share_times_limit_then_the_answer_decides() {
        let mut s = Slot::default();
        let v = View::Synced {
            win: 7,
            share: 1.0 / 3.0,
        };
        assert_eq!(admitted(&mut s, 1, v, 50), 30, "share x limit");
        let (keys, dropped) = s.take().unwrap_or_default();
        assert_eq!((keys, dropped), (vec![(1, 30)], 0));
        assert!(s.take().is_none(), "nothing new to take");
        // The fleet admitted 60 for the key (the others' 30 each): 30 x 1/3 = 10 left of the
        // fleet, but the quota of 30 is spent.
        assert!(s.apply(1, 7, 60, 1.0 / 3.0, &B));
        assert_eq!(admitted(&mut s, 1, v, 5), 0);
        // Next window: the quota again.
        let v8 = View::Synced {
            win: 8,
            share: 1.0 / 3.0,
        };
        assert_eq!(admitted(&mut s, 1, v8, 50), 30);
    }

    #[test]
    fn the_allowance_is_the_fleet_left_less_what_was_admitted_since_the_take() {
        let mut s = Slot::default();
        let v = View::Synced { win: 1, share: 0.5 };
        assert_eq!(admitted(&mut s, 9, v, 10), 10);
        let _ = s.take();
        assert_eq!(
            admitted(&mut s, 9, v, 4),
            4,
            "after the take, before the answer"
        );
        // Fleet total 70 (10 of them ours): 0.5 x 20 = 10, less the 4 since the take = 6;
        // quota 45 - 14 = 31.
        assert!(s.apply(9, 1, 70, 0.5, &B));
        assert_eq!(admitted(&mut s, 9, v, 20), 6);
        // A late answer for a window the key has left changes nothing.
        let mut late = s.clone();
        let v2 = View::Synced { win: 2, share: 0.5 };
        assert_eq!(admitted(&mut late, 9, v2, 1), 1);
        assert!(!late.apply(9, 1, 0, 0.5, &B));
    }

    #[test]
    fn fallback_admits_the_fallback_limit_per_key_and_window() {
        let mut s = Slot::default();
        let f = View::Fallback { win: 3 };
        assert_eq!(admitted(&mut s, 5, f, 40), 30);
        assert_eq!(admitted(&mut s, 5, View::Fallback { win: 4 }, 40), 30);
        assert!(!s.would_admit(5, View::Fallback { win: 4 }, &B));
        assert!(s.would_admit(6, View::Fallback { win: 4 }, &B));
    }

    #[test]
    fn a_full_slot_evicts_an_old_key_first_and_counts_lost_unsent() {
        let mut s = Slot::default();
        let v = View::Fallback { win: 1 };
        for fp in 1..=4 {
            assert!(s.admit(fp, v, &B));
        }
        let _ = s.take();
        let v2 = View::Fallback { win: 2 };
        for fp in 1..=3 {
            assert!(s.admit(fp, v2, &B));
        }
        // 4 is of window 1 with nothing unsent: it goes.
        assert!(s.admit(10, v2, &B));
        assert!(s.entries.iter().all(|e| e.fp != 4));
        assert_eq!(s.dropped, 0);
        // All of window 2 now, each with 1 unsent: the least admitted goes, its 1 is dropped.
        assert!(s.admit(1, v2, &B));
        assert!(s.admit(11, v2, &B));
        assert_eq!(s.dropped, 1);
        assert_eq!(s.entries.len(), WAYS);
        let (_, dropped) = s.take().unwrap_or_default();
        assert_eq!(dropped, 1);
    }

    #[test]
    fn codecs_round_trip_and_refuse_garbage() {
        let mut s = Slot::default();
        assert!(s.admit(u64::MAX, View::Synced { win: 9, share: 1.0 }, &B));
        assert!(s.apply(u64::MAX, 9, 3, 1.0, &B));
        assert!(s.admit(2, View::Fallback { win: 9 }, &B));
        s.dropped = 7;
        assert_eq!(Slot::decode(&s.encode()), Some(s.clone()));
        let mut long = s.encode();
        long.push(0);
        assert_eq!(Slot::decode(&long), None);
        assert_eq!(Slot::decode(&[VERSION, 0, 0]), None);
        let mut bad = Slot::default().encode();
        if let Some(n) = bad.get_mut(9) {
            *n = 5;
        }
        assert_eq!(Slot::decode(&bad), None, "more ways than a slot has");
        let m = Meta {
            synced: true,
            share_ppm: 333_333,
            offset_ms: -42,
            updated_ms: 1_000,
        };
        assert_eq!(Meta::decode(&m.encode()), Some(m));
        assert_eq!(Meta::decode(b"x"), None);
        assert_eq!(parse_wire_key(&wire_key(0xdead_beef)), Some(0xdead_beef));
        assert_eq!(parse_wire_key("zz"), None);
        assert_eq!(decode_count(Some(&encode_count(12))), 12);
        assert_eq!(decode_count(None), 0);
    }

    #[test]
    fn the_view_follows_the_holders_answers_and_redis_clock() {
        let m = Meta {
            synced: true,
            share_ppm: 500_000,
            offset_ms: 300,
            updated_ms: 10_000,
        };
        assert_eq!(
            Meta::view(Some(&m), 10_800, 1000, 900),
            View::Synced {
                win: 11,
                share: 0.5
            },
            "Redis is 300 ms ahead: 11,100"
        );
        assert_eq!(
            Meta::view(Some(&m), 10_701, 1000, 700),
            View::Fallback { win: 11 },
            "answers older than stale_ms"
        );
        let down = Meta { synced: false, ..m };
        assert_eq!(
            Meta::view(Some(&down), 10_100, 1000, 700),
            View::Fallback { win: 10 }
        );
        assert_eq!(
            Meta::view(None, 5_500, 1000, 700),
            View::Fallback { win: 5 }
        );
        assert_eq!(Meta::share_ppm(f64::NAN), 0);
        assert_eq!(Meta::share_ppm(2.0), 1_000_000);
    }
}
