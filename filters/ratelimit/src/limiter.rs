//! nginx `limit_req` arithmetic (ngx_http_limit_req_module.c, 1.15.7+) on one key, and the
//! fixed-size, 4-way slot that holds per-key state in shared data.
//!
//! Units are nginx's: `excess` and `burst` in milli-requests, `rate` in milli-requests per
//! second, time in ms. It decides accept/reject/delay for a key; it does not read the host.
//!
//! Slot policy (memory bounded by config, not by clients): a key hashes to one slot of 4
//! entries. A new key takes a free entry, else evicts the entry with the least remaining
//! debt. The evicted debt is folded into the slot's `floor` (max of debts, decaying at the
//! rate), and any key not found in the slot starts from the floor while it is still in debt.
//! So a key pushed out while still over its rate comes back with at least the debt it had,
//! never with a full bucket; the price is that other new keys of that slot inherit the same
//! residual debt until it drains.

use sg_core::codec::{Reader, Writer};

/// Entries per slot.
pub const WAYS: usize = 4;
/// Slot value layout version (first byte); unknown versions read as an empty slot.
pub const VERSION: u8 = 1;

/// When an accepted request above the rate is held (nginx `limit_req ... [nodelay |
/// delay=N]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `nodelay`: every accepted request passes at once.
    NoDelay,
    /// nginx's default: every request above the rate is held, so they leave at the rate.
    Delay,
    /// `delay=N`: the first N excess requests pass at once, later ones are held. In
    /// milli-requests (N * 1000), the unit of `excess`.
    DelayAfter(u64),
}

impl Mode {
    /// Excess (milli-requests) above which a request is held; None for `nodelay`.
    pub fn threshold(self) -> Option<u64> {
        match self {
            Mode::NoDelay => None,
            Mode::Delay => Some(0),
            Mode::DelayAfter(d) => Some(d),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    /// milli-requests per second (nginx `ctx->rate`).
    pub rate: u64,
    /// milli-requests (nginx `limit->burst`).
    pub burst: u64,
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entry {
    pub excess: u64,
    pub last: u64,
}

/// nginx: `ms = now - last`, with `ms < -60000 -> 1` and `ms < 0 -> 0`.
fn elapsed(now: u64, last: u64) -> u64 {
    if now >= last {
        now - last
    } else if last - now > 60_000 {
        1
    } else {
        0
    }
}

fn refill(rate: u64, ms: u64) -> u128 {
    u128::from(rate) * u128::from(ms) / 1000
}

/// Debt left at `now` without charging (nginx's expiry test `excess - rate*ms/1000`).
pub fn remaining_debt(e: Entry, rate: u64, now: u64) -> u64 {
    let r = refill(rate, elapsed(now, e.last));
    u128::from(e.excess).saturating_sub(r) as u64
}

/// nginx lookup of an existing node: the excess this request would produce, and the `last`
/// that charging it would store (`if (ms) lr->last = now`).
pub fn next(e: Entry, rate: u64, now: u64) -> Entry {
    let ms = elapsed(now, e.last);
    let v = i128::from(e.excess) - refill(rate, ms) as i128 + 1000;
    Entry {
        excess: v.clamp(0, i128::from(u64::MAX)) as u64,
        last: if ms != 0 { now } else { e.last },
    }
}

/// Delay nginx applies to a charged request with `excess` (ms), 0 when not delayed.
pub fn delay_ms(p: &Params, excess: u64) -> u64 {
    match p.mode.threshold() {
        Some(d) if excess > d => {
            ((u128::from(excess - d) * 1000) / u128::from(p.rate.max(1))) as u64
        }
        _ => 0,
    }
}

/// Seconds until a rejected key (candidate `excess`) would be admitted again (at least 1).
pub fn retry_after_s(p: &Params, excess: u64) -> u64 {
    let over = excess.saturating_sub(p.burst);
    let ms = (u128::from(over) * 1000).div_ceil(u128::from(p.rate.max(1)));
    (ms.div_ceil(1000) as u64).max(1)
}

/// Seconds until `excess` drains to zero (RateLimit `t`).
pub fn reset_s(p: &Params, excess: u64) -> u64 {
    let ms = (u128::from(excess) * 1000).div_ceil(u128::from(p.rate.max(1)));
    ms.div_ceil(1000) as u64
}

/// What one request would do to one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Candidate excess (nginx `*ep`).
    pub excess: u64,
    /// `excess > burst`: rejected, and not charged.
    pub busy: bool,
    /// State to store if charged.
    pub charged: Entry,
}

/// Leased mode: the state after charging up to `n` requests at once, starting with the
/// accepted `probe` (nginx's arithmetic for `n` requests arriving together: each adds 1000,
/// and one that would pass `burst` is not taken). Returns that state and how many were
/// taken (at least 1).
pub fn take(probe: &Probe, n: u32, p: &Params) -> (Entry, u32) {
    let mut e = probe.charged;
    let mut taken = 1u32;
    while taken < n && e.excess.saturating_add(1000) <= p.burst {
        e.excess += 1000;
        taken += 1;
    }
    (e, taken)
}

/// Leased mode: `unused` requests taken earlier are given back to the key, as if they had
/// never been charged (its excess less `unused` x 1000, never below 0; `last` unchanged, so
/// the refill since then still counts).
pub fn give_back(e: Entry, unused: u32) -> Entry {
    Entry {
        excess: e.excess.saturating_sub(u64::from(unused) * 1000),
        last: e.last,
    }
}

/// One shared-data slot: up to WAYS (fingerprint, entry) pairs and the eviction floor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slot {
    pub floor: Entry,
    pub entries: Vec<(u64, Entry)>,
}

impl Slot {
    /// Decodes a slot; `None` for a value that is not a valid v1 slot (callers treat that as
    /// "no state yet" and count it). An empty value is an empty slot.
    pub fn decode(bytes: &[u8]) -> Option<Slot> {
        if bytes.is_empty() {
            return Some(Slot::default());
        }
        let mut r = Reader::new(bytes);
        if r.u8()? != VERSION {
            return None;
        }
        let n = usize::from(r.u8()?);
        if n > WAYS {
            return None;
        }
        let floor = Entry {
            excess: r.u64()?,
            last: r.u64()?,
        };
        let mut entries = Vec::with_capacity(WAYS);
        for _ in 0..n {
            let fp = r.u64()?;
            let e = Entry {
                excess: r.u64()?,
                last: r.u64()?,
            };
            entries.push((fp, e));
        }
        if r.remaining() != 0 {
            return None;
        }
        Some(Slot { floor, entries })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(18 + 24 * WAYS);
        w.u8(VERSION)
            .u8(self.entries.len().min(WAYS) as u8)
            .u64(self.floor.excess)
            .u64(self.floor.last);
        for (fp, e) in self.entries.iter().take(WAYS) {
            w.u64(*fp).u64(e.excess).u64(e.last);
        }
        w.finish()
    }

    /// The state a key starts from: its own entry, else the floor while it is in debt, else
    /// nothing (nginx's new node: excess 0, accepted, `last = now`).
    pub fn probe(&self, fp: u64, p: &Params, now: u64) -> Probe {
        let prior = match self.entries.iter().find(|(f, _)| *f == fp) {
            Some((_, e)) => Some(*e),
            None if remaining_debt(self.floor, p.rate, now) > 0 => Some(self.floor),
            None => None,
        };
        match prior {
            Some(e) => {
                let charged = next(e, p.rate, now);
                Probe {
                    excess: charged.excess,
                    busy: charged.excess > p.burst,
                    charged,
                }
            }
            None => Probe {
                excess: 0,
                busy: false,
                charged: Entry {
                    excess: 0,
                    last: now,
                },
            },
        }
    }

    /// Charges (stores) `state` for `fp`, evicting if the slot is full. Returns true when an
    /// entry that still had debt was evicted (counted as `evicted_in_debt`).
    pub fn store(&mut self, fp: u64, state: Entry, p: &Params, now: u64) -> bool {
        if let Some(slot) = self.entries.iter_mut().find(|(f, _)| *f == fp) {
            slot.1 = state;
            return false;
        }
        if self.entries.len() < WAYS {
            self.entries.push((fp, state));
            return false;
        }
        // Victim: least remaining debt, then least recently charged.
        let mut victim = 0;
        let mut best = (u64::MAX, u64::MAX);
        for (i, (_, e)) in self.entries.iter().enumerate() {
            let k = (remaining_debt(*e, p.rate, now), e.last);
            if k < best {
                best = k;
                victim = i;
            }
        }
        let debt = best.0;
        if debt > 0 {
            let floor = remaining_debt(self.floor, p.rate, now).max(debt);
            self.floor = Entry {
                excess: floor,
                last: now,
            };
        }
        if let Some(v) = self.entries.get_mut(victim) {
            *v = (fp, state);
        }
        debt > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(rps: u64, burst: u64, mode: Mode) -> Params {
        Params {
            rate: rps * 1000,
            burst: burst * 1000,
            mode,
        }
    }

    /// Drives one key the way nginx does: probe, reject if busy (no charge), else charge.
    fn run(p: &Params, times: &[u64]) -> Vec<(bool, u64)> {
        let mut slot = Slot::default();
        times
            .iter()
            .map(|&t| {
                let pr = slot.probe(7, p, t);
                if pr.busy {
                    (false, 0)
                } else {
                    slot.store(7, pr.charged, p, t);
                    (true, delay_ms(p, pr.excess))
                }
            })
            .collect()
    }

    #[test]
    fn burst_of_five_nodelay_admits_six_then_rejects_until_refill() {
        // rate=10r/s burst=5 nodelay; 7 requests in the same ms: 1 + 5 accepted, 7th rejected.
        let p = params(10, 5, Mode::NoDelay);
        let r = run(&p, &[1000; 7]);
        assert_eq!(r.iter().filter(|x| x.0).count(), 6);
        assert_eq!(r.get(6), Some(&(false, 0)));
        // 100 ms later one token has drained: excess 5000 - 1000 + 1000 = 5000 <= 5000 ok.
        let mut slot = Slot::default();
        for t in [1000u64; 6] {
            let pr = slot.probe(1, &p, t);
            slot.store(1, pr.charged, &p, t);
        }
        assert!(slot.probe(1, &p, 1099).busy);
        assert!(!slot.probe(1, &p, 1100).busy);
    }

    #[test]
    fn default_delay_paces_excess_at_the_rate() {
        // rate=10r/s burst=5 (no nodelay): delays 0,100,..,500 ms, 7th rejected (nginx table).
        let p = params(10, 5, Mode::Delay);
        let r = run(&p, &[5000; 7]);
        let got: Vec<_> = r.iter().map(|x| x.1).collect();
        assert_eq!(got, vec![0, 100, 200, 300, 400, 500, 0]);
        assert_eq!(r.get(6).map(|x| x.0), Some(false));
    }

    #[test]
    fn two_stage_delay_passes_first_n_then_delays() {
        // rate=10r/s burst=5 delay=2: 0,0,0,100,200,300, then reject.
        let p = params(10, 5, Mode::DelayAfter(2000));
        let got: Vec<_> = run(&p, &[5000; 7]).iter().map(|x| x.1).collect();
        assert_eq!(got, vec![0, 0, 0, 100, 200, 300, 0]);
    }

    #[test]
    fn burst_zero_allows_exactly_the_rate() {
        // 2 r/s, burst 0: one every 500 ms; a request at +499 is rejected and not charged.
        let p = params(2, 0, Mode::Delay);
        let r = run(&p, &[0, 499, 500, 999, 1000, 1000]);
        let acc: Vec<_> = r.iter().map(|x| x.0).collect();
        assert_eq!(acc, vec![true, false, true, false, true, false]);
    }

    #[test]
    fn per_minute_rates_use_nginx_integer_rounding() {
        // 1 r/m is 1000/60 = 16 milli-requests per second in nginx.
        let p = Params {
            rate: 1000 / 60,
            burst: 0,
            mode: Mode::NoDelay,
        };
        let r = run(&p, &[0, 60_000, 62_500, 62_600]);
        // After 60 s only 960 milli drained: rejected; at 62.5 s 1000 drained: accepted.
        assert_eq!(
            r.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![true, false, true, false]
        );
    }

    #[test]
    fn last_is_kept_within_the_same_millisecond_and_clock_steps_back() {
        let e = Entry {
            excess: 3000,
            last: 100,
        };
        assert_eq!(
            next(e, 1000, 100),
            Entry {
                excess: 4000,
                last: 100
            }
        );
        assert_eq!(next(e, 1000, 90).last, 100); // small step back: ms = 0
        assert_eq!(next(e, 1000, 90).excess, 4000);
        let far = Entry {
            excess: 3000,
            last: 100_000,
        };
        assert_eq!(
            next(far, 1000, 1),
            Entry {
                excess: 3999,
                last: 1
            }
        ); // < -60 s: ms = 1
    }

    #[test]
    fn huge_elapsed_and_rates_do_not_overflow() {
        let e = Entry {
            excess: u64::MAX,
            last: 0,
        };
        assert_eq!(next(e, u64::MAX, u64::MAX).excess, 0);
        assert_eq!(
            next(
                Entry {
                    excess: u64::MAX,
                    last: 5
                },
                1,
                5
            )
            .excess,
            u64::MAX
        );
        let p = params(1, 0, Mode::Delay);
        assert!(delay_ms(&p, u64::MAX) > 0);
        assert!(retry_after_s(&p, u64::MAX) > 0);
    }

    #[test]
    fn retry_after_is_time_until_the_key_fits() {
        let p = params(10, 5, Mode::NoDelay);
        // candidate 6000 > 5000: 1000 over at 10 r/s = 100 ms -> 1 s (rounded up).
        assert_eq!(retry_after_s(&p, 6000), 1);
        let slow = params(1, 0, Mode::NoDelay);
        assert_eq!(retry_after_s(&slow, 3000), 3);
        assert_eq!(reset_s(&slow, 2500), 3);
    }

    #[test]
    fn slot_round_trips_and_rejects_garbage() {
        let mut s = Slot::default();
        let p = params(10, 5, Mode::NoDelay);
        for fp in 1..=4 {
            s.store(
                fp,
                Entry {
                    excess: fp * 10,
                    last: 9,
                },
                &p,
                9,
            );
        }
        let b = s.encode();
        assert_eq!(b.len(), 18 + 24 * WAYS);
        assert_eq!(Slot::decode(&b), Some(s));
        assert_eq!(Slot::decode(&[]), Some(Slot::default()));
        assert_eq!(Slot::decode(&[2, 0]), None);
        assert_eq!(Slot::decode(&b[..b.len() - 1]), None);
        let mut long = b.clone();
        long.push(0);
        assert_eq!(Slot::decode(&long), None);
        let mut many = b;
        if let Some(n) = many.get_mut(1) {
            *n = 9;
        }
        assert_eq!(Slot::decode(&many), None);
    }

    #[test]
    fn evicted_key_in_debt_comes_back_with_its_debt_not_a_full_bucket() {
        // 1 r/s, burst 2. Key 1 spends its burst at t=0 (excess 2000 after 3 requests).
        let p = params(1, 2, Mode::NoDelay);
        let mut s = Slot::default();
        for _ in 0..3 {
            let pr = s.probe(1, &p, 0);
            assert!(!pr.busy);
            s.store(1, pr.charged, &p, 0);
        }
        assert!(s.probe(1, &p, 0).busy);
        // Four other keys arrive at t=100, each spending its burst (debt 2000 > key 1's 1900):
        // the fifth key finds the slot full and evicts key 1, the least indebted.
        for fp in 2..=5 {
            for _ in 0..3 {
                let pr = s.probe(fp, &p, 100);
                s.store(fp, pr.charged, &p, 100);
            }
        }
        assert!(s.entries.iter().all(|(f, _)| *f != 1), "{s:?}");
        assert_eq!(
            s.floor,
            Entry {
                excess: 1900,
                last: 100
            }
        );
        // Key 1 must still be refused at t=100 (debt 1900 + 1000 > 2000).
        assert!(s.probe(1, &p, 100).busy, "{s:?}");
        // Once the debt drained (t >= 1000 + 100), key 1 gets in again.
        assert!(!s.probe(1, &p, 1100).busy);
    }

    #[test]
    fn idle_entries_are_evicted_first_and_leave_no_floor() {
        let p = params(10, 0, Mode::NoDelay);
        let mut s = Slot::default();
        for fp in 1..=4 {
            s.store(fp, Entry { excess: 0, last: 0 }, &p, 0);
        }
        assert!(!s.store(
            9,
            Entry {
                excess: 0,
                last: 5000
            },
            &p,
            5000
        ));
        assert_eq!(s.floor, Entry::default());
        // A brand-new key is accepted with excess 0, like an nginx new node.
        assert_eq!(s.probe(42, &p, 5000).excess, 0);
    }
}
