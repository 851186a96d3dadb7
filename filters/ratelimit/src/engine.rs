//! One request against every matching rule, with state in shared data.
//!
//! Like nginx, a request is checked against all rules before anything is charged, and a
//! request rejected by one rule charges none. Charging is a CAS write per rule; a lost race
//! is re-evaluated (and may then reject, while nothing has been charged yet). The first
//! attempt reuses the value read for the check, so an uncontended rule costs one shared-data
//! read and one write.

use crate::config::{FailMode, Plan, Rule};
use crate::limiter::{delay_ms, give_back, reset_s, retry_after_s, take, Probe, Slot};
use sg_core::fleetslot::{self, Budget, Meta, View};
use sg_core::hash::{hash64, slot_of};
use sg_core::key::RequestView;
use sg_core::shared::{update_from, SharedStore, Step, Update, Versioned};
use std::collections::HashMap;

/// Shared-data key of a rule's slot: `sg:rl:<rule>:<slot>`.
pub use sg_core::keys::rl_slot as slot_key;

/// What happened to one rule for one request (drives per-rule metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleOutcome {
    Allowed,
    Delayed(u64),
    Rejected,
    DryRunRejected,
    DryRunDelayed(u64),
    /// Shared data failed or CAS gave up; `on_store_error` decided.
    StoreTrouble {
        gave_up: bool,
    },
    /// Diverted to the simple page: not the main app's budget, neither counted nor limited.
    SkippedDiverted,
}

/// Rate-limit header values from the most restrictive applied rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub rule: usize,
    pub remaining: u64,
    pub reset_s: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Allow,
    Delay(u64),
    Reject { rule: usize, retry_after_s: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// (rule index, outcome) for every rule that applied.
    pub rules: Vec<(usize, RuleOutcome)>,
    pub quota: Option<Quota>,
    /// Slot values that did not decode and were treated as empty.
    pub bad_state: u32,
    /// Entries evicted while still in debt (folded into the slot floor).
    pub evicted_in_debt: u32,
}

/// Leases a worker holds at most (a key beyond them is charged per request).
pub const MAX_LEASES: usize = 4096;

/// What fleet-scoped rules decide on besides their slots: each rule's sync state as this
/// worker last read it (`sg:fl:<rule>:m`, refreshed on its tick), by rule index. Empty (the
/// default): every fleet rule is on its fallback.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetCtx<'a> {
    pub metas: &'a [Option<Meta>],
    /// A holder's answer older than this is not trusted (`Health`'s staleness).
    pub stale_ms: u64,
}

impl FleetCtx<'_> {
    fn meta(&self, idx: usize) -> Option<&Meta> {
        self.metas.get(idx).and_then(Option::as_ref)
    }

    pub fn view(&self, idx: usize, now: u64, b: &Budget) -> View {
        Meta::view(self.meta(idx), now, b.window_ms, self.stale_ms)
    }

    /// Seconds to the end of the fleet window (at least 1): a rejected client's Retry-After.
    pub fn retry_after_s(&self, idx: usize, now: u64, b: &Budget) -> u64 {
        let w = b.window_ms.max(1);
        let win = self
            .meta(idx)
            .map_or(now / w, |m| m.window(now, b.window_ms));
        let offset = self.meta(idx).map_or(0, |m| m.offset_ms);
        let end = i128::from(win.saturating_add(1)) * i128::from(w) - i128::from(offset);
        let left = u64::try_from(end - i128::from(now)).unwrap_or(w);
        left.div_ceil(1000).max(1)
    }
}

/// Shared-data key of a fleet rule's slot: `sg:fl:<rule>:<slot>`.
pub use sg_core::keys::fl_slot;

fn decode_fleet(v: Option<&[u8]>, bad: &mut u32) -> fleetslot::Slot {
    match v {
        None => fleetslot::Slot::default(),
        Some(b) => fleetslot::Slot::decode(b).unwrap_or_else(|| {
            *bad += 1;
            fleetslot::Slot::default()
        }),
    }
}

/// What a worker may still admit locally for one key of a leased rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub left: u32,
    /// Spendable before this time (ms).
    pub until: u64,
}

/// A worker's leases (leased mode), by (rule index, key fingerprint). Bounded by
/// [`MAX_LEASES`]; expired leases are given back on the tick (`give_back_expired`).
#[derive(Debug, Default)]
pub struct Leases {
    held: HashMap<(usize, u64), Held>,
}

impl Leases {
    pub fn len(&self) -> usize {
        self.held.len()
    }
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
    /// Whether the lease of this key can admit a request now.
    fn can_spend(&self, idx: usize, fp: u64, now: u64) -> bool {
        self.held
            .get(&(idx, fp))
            .is_some_and(|h| h.left > 0 && now < h.until)
    }
    fn spend(&mut self, idx: usize, fp: u64) {
        if let Some(h) = self.held.get_mut(&(idx, fp)) {
            h.left = h.left.saturating_sub(1);
        }
    }
    /// Records a new lease. Returns the tokens to give back at once: the new lease's when
    /// the book is full, else those an expired lease of the same key left unused (a lease
    /// is replaced only when spent or expired).
    fn grant(&mut self, idx: usize, fp: u64, held: Held) -> u32 {
        if self.held.len() >= MAX_LEASES && !self.held.contains_key(&(idx, fp)) {
            return held.left;
        }
        self.held.insert((idx, fp), held).map_or(0, |old| old.left)
    }
    fn take_all(&mut self) -> Vec<(usize, u64, u32)> {
        self.held
            .drain()
            .filter(|(_, h)| h.left > 0)
            .map(|((idx, fp), h)| (idx, fp, h.left))
            .collect()
    }
    /// Removes the leases expired at `now` (or spent): (rule, fingerprint, unused).
    fn take_expired(&mut self, now: u64) -> Vec<(usize, u64, u32)> {
        let mut out = Vec::new();
        self.held.retain(|&(idx, fp), h| {
            let keep = h.left > 0 && now < h.until;
            if !keep && h.left > 0 {
                out.push((idx, fp, h.left));
            }
            keep
        });
        out
    }
}

/// Gives the unused tokens of every lease expired at `now` back to shared data (one CAS
/// per lease). Returns how many requests' worth were given back.
pub fn give_back_expired<S: SharedStore + ?Sized>(
    plan: &Plan,
    store: &S,
    leases: &mut Leases,
    now: u64,
) -> u64 {
    let mut given = 0u64;
    for (idx, fp, unused) in leases.take_expired(now) {
        let Some(rule) = plan.rules.get(idx) else {
            continue;
        };
        given += u64::from(unused);
        give_back_one(plan, store, rule, fp, unused);
    }
    given
}

fn give_back_one<S: SharedStore + ?Sized>(
    plan: &Plan,
    store: &S,
    rule: &Rule,
    fp: u64,
    unused: u32,
) {
    let key = slot_key(&rule.name, slot_of(fp, rule.sets));
    let _ = sg_core::shared::update(store, &key, plan.cas_attempts, |cur| {
        let mut bad = 0;
        let mut slot = decode(cur, &mut bad);
        match slot.entries.iter_mut().find(|(f, _)| *f == fp) {
            Some((_, e)) => {
                *e = give_back(*e, unused);
                Step::Write(slot.encode(), ())
            }
            // Evicted meanwhile: its debt is in the floor, shared by the slot; keep it.
            None => Step::Keep(()),
        }
    });
}

struct Pending<'a> {
    idx: usize,
    rule: &'a Rule,
    key: String,
    fp: u64,
    read: Option<Versioned>,
    slot: Option<Slot>,
    probe: Probe,
    /// Admitted from this worker's lease: no shared-data call.
    local: bool,
    /// A fleet rule: its slot as read, the view it was decided on, its budget.
    fleet: Option<(fleetslot::Slot, View, Budget)>,
}

fn decode(v: Option<&[u8]>, bad: &mut u32) -> Slot {
    match v {
        None => Slot::default(),
        Some(b) => Slot::decode(b).unwrap_or_else(|| {
            *bad += 1;
            Slot::default()
        }),
    }
}

fn quota_of(rule: &Rule, excess: u64) -> (u64, u64) {
    let p = &rule.params;
    (p.burst.saturating_sub(excess) / 1000, reset_s(p, excess))
}

/// Evaluates `req` against `plan`, charging the shared store. `clock` gives the time in ms;
/// it is read once, and only if a rule applies (a host call in the adapter).
pub fn check<S: SharedStore + ?Sized, R: RequestView + ?Sized>(
    plan: &Plan,
    store: &S,
    req: &R,
    route: Option<&str>,
    clock: impl FnOnce() -> u64,
) -> Verdict {
    let mut leases = Leases::default();
    let v = check_leased(
        plan,
        store,
        req,
        route,
        clock,
        &mut leases,
        FleetCtx::default(),
    );
    // Without a worker to keep them, leases are given back at once.
    for (idx, fp, unused) in leases.take_all() {
        if let Some(rule) = plan.rules.get(idx) {
            give_back_one(plan, store, rule, fp, unused);
        }
    }
    v
}

/// As [`check`], with this worker's leases: a leased rule admits from a lease when it can,
/// and otherwise takes a new one when it charges shared data.
pub fn check_leased<S: SharedStore + ?Sized, R: RequestView + ?Sized>(
    plan: &Plan,
    store: &S,
    req: &R,
    route: Option<&str>,
    clock: impl FnOnce() -> u64,
    leases: &mut Leases,
    fleet: FleetCtx,
) -> Verdict {
    let mut clock = Some(clock);
    let mut now_cell: Option<u64> = None;
    let mut now = || *now_cell.get_or_insert_with(|| clock.take().map_or(0, |c| c()));
    let mut v = Verdict {
        action: Action::Allow,
        rules: Vec::new(),
        quota: None,
        bad_state: 0,
        evicted_in_debt: 0,
    };
    let mut pending: Vec<Pending> = Vec::new();
    // Read once, and only when a rule that excludes diverted requests matches.
    let mut diverted: Option<bool> = None;
    let note_quota = |v: &mut Verdict, idx: usize, rule: &Rule, excess: u64| {
        let (remaining, reset) = quota_of(rule, excess);
        if v.quota.as_ref().is_none_or(|q| remaining < q.remaining) {
            v.quota = Some(Quota {
                rule: idx,
                remaining,
                reset_s: reset,
            });
        }
    };

    // Phase 1: read and check every rule; charge nothing.
    for (idx, rule) in plan.rules.iter().enumerate() {
        if !rule.matcher.matches_request(req, route) {
            continue;
        }
        if !rule.include_diverted
            && *diverted.get_or_insert_with(|| req.header(&plan.divert_header).is_some())
        {
            v.rules.push((idx, RuleOutcome::SkippedDiverted));
            continue;
        }
        // nginx: an empty key means the rule does not apply to this request.
        let Some(key_bytes) = rule.key.key(req) else {
            continue;
        };
        let fp = hash64(rule.name.as_bytes(), &key_bytes);
        if let Some(b) = rule.fleet {
            let key = fl_slot(&rule.name, slot_of(fp, rule.sets));
            let t = now();
            let view = fleet.view(idx, t, &b);
            let read = match store.get(&key) {
                Ok(r) => r,
                Err(_) => {
                    v.rules
                        .push((idx, RuleOutcome::StoreTrouble { gave_up: false }));
                    if plan.on_store_error == FailMode::Reject && !rule.dry_run {
                        v.action = Action::Reject {
                            rule: idx,
                            retry_after_s: 1,
                        };
                        return v;
                    }
                    continue;
                }
            };
            let slot = decode_fleet(read.value.as_deref(), &mut v.bad_state);
            if !slot.would_admit(fp, view, &b) {
                if rule.dry_run {
                    v.rules.push((idx, RuleOutcome::DryRunRejected));
                    continue;
                }
                let retry = fleet.retry_after_s(idx, t, &b);
                v.rules.retain(|(_, o)| !matches!(o, RuleOutcome::Allowed));
                v.rules.push((idx, RuleOutcome::Rejected));
                v.action = Action::Reject {
                    rule: idx,
                    retry_after_s: retry,
                };
                v.quota = Some(Quota {
                    rule: idx,
                    remaining: 0,
                    reset_s: retry,
                });
                return v;
            }
            pending.push(Pending {
                idx,
                rule,
                key,
                fp,
                read: Some(read),
                slot: None,
                probe: Probe {
                    excess: 0,
                    busy: false,
                    charged: Default::default(),
                },
                local: false,
                fleet: Some((slot, view, b)),
            });
            continue;
        }
        let key = slot_key(&rule.name, slot_of(fp, rule.sets));
        if rule.lease.is_some() && leases.can_spend(idx, fp, now()) {
            pending.push(Pending {
                idx,
                rule,
                key,
                fp,
                read: None,
                slot: None,
                probe: Probe {
                    excess: 0,
                    busy: false,
                    charged: Default::default(),
                },
                local: true,
                fleet: None,
            });
            continue;
        }
        let read = match store.get(&key) {
            Ok(r) => r,
            Err(_) => {
                v.rules
                    .push((idx, RuleOutcome::StoreTrouble { gave_up: false }));
                if plan.on_store_error == FailMode::Reject && !rule.dry_run {
                    v.action = Action::Reject {
                        rule: idx,
                        retry_after_s: 1,
                    };
                    return v;
                }
                continue;
            }
        };
        let slot = decode(read.value.as_deref(), &mut v.bad_state);
        let probe = slot.probe(fp, &rule.params, now());
        if probe.busy {
            if rule.dry_run {
                v.rules.push((idx, RuleOutcome::DryRunRejected));
                continue;
            }
            v.rules.push((idx, RuleOutcome::Rejected));
            v.action = Action::Reject {
                rule: idx,
                retry_after_s: retry_after_s(&rule.params, probe.excess),
            };
            v.quota = Some(Quota {
                rule: idx,
                remaining: 0,
                reset_s: reset_s(&rule.params, probe.excess.saturating_sub(1000)),
            });
            // Outcomes of rules checked before this one are dropped: nothing was charged.
            v.rules.retain(|(_, o)| !matches!(o, RuleOutcome::Allowed));
            return v;
        }
        pending.push(Pending {
            idx,
            rule,
            key,
            fp,
            read: Some(read),
            slot: Some(slot),
            probe,
            local: false,
            fleet: None,
        });
    }

    let now = now_cell.unwrap_or(0);
    // Phase 2: charge. A lost CAS race re-probes; it may reject only while nothing has
    // been charged yet (as nginx's account step, later rules are then charged regardless).
    let mut max_delay = 0u64;
    let mut charged_any = false;
    for p in pending.iter_mut() {
        let rule = p.rule;
        if p.local {
            leases.spend(p.idx, p.fp);
            charged_any = true;
            v.rules.push((p.idx, RuleOutcome::Allowed));
            continue;
        }
        if let Some((slot, view, b)) = p.fleet.take() {
            let mut first = Some(slot);
            let mut bad = 0u32;
            let fp = p.fp;
            let res = update_from(store, &p.key, p.read.take(), plan.cas_attempts, |cur| {
                let mut slot = first.take().unwrap_or_else(|| decode_fleet(cur, &mut bad));
                if slot.admit(fp, view, &b) {
                    Step::Write(slot.encode(), true)
                } else {
                    Step::Keep(false)
                }
            });
            v.bad_state += bad;
            match res {
                Update::Done { result: true, .. } => {
                    charged_any = true;
                    v.rules.push((p.idx, RuleOutcome::Allowed));
                }
                // Spent meanwhile by another worker (a lost race): rejected while nothing
                // else is charged; else let through uncounted, as nginx's account step.
                Update::Done { result: false, .. } if rule.dry_run => {
                    v.rules.push((p.idx, RuleOutcome::DryRunRejected));
                }
                Update::Done { result: false, .. } if !charged_any => {
                    let retry = fleet.retry_after_s(p.idx, now, &b);
                    v.rules.push((p.idx, RuleOutcome::Rejected));
                    v.action = Action::Reject {
                        rule: p.idx,
                        retry_after_s: retry,
                    };
                    v.quota = Some(Quota {
                        rule: p.idx,
                        remaining: 0,
                        reset_s: retry,
                    });
                    return v;
                }
                Update::Done { result: false, .. } => {
                    v.rules.push((p.idx, RuleOutcome::Allowed));
                }
                Update::GaveUp { .. } | Update::Failed(_) => {
                    let gave_up = matches!(res, Update::GaveUp { .. });
                    v.rules.push((p.idx, RuleOutcome::StoreTrouble { gave_up }));
                    if plan.on_store_error == FailMode::Reject && !rule.dry_run {
                        v.action = Action::Reject {
                            rule: p.idx,
                            retry_after_s: 1,
                        };
                        return v;
                    }
                }
            }
            continue;
        }
        let want = rule.lease.map_or(1, |l| l.tokens);
        let first_probe = p.probe;
        let mut first = p.slot.take();
        let mut bad = 0u32;
        let mut evicted = false;
        let res = update_from(store, &p.key, p.read.take(), plan.cas_attempts, |cur| {
            // The first attempt reuses what phase 1 decoded and probed.
            let (mut slot, probe) = match first.take() {
                Some(slot) => (slot, first_probe),
                None => {
                    let slot = decode(cur, &mut bad);
                    let probe = slot.probe(p.fp, &rule.params, now);
                    (slot, probe)
                }
            };
            // A dry-run rule is never charged past its burst; a real one only while nothing
            // else has been charged for this request.
            if probe.busy && (rule.dry_run || !charged_any) {
                return Step::Keep(Err(probe.excess));
            }
            let (state, n) = take(&probe, want, &rule.params);
            evicted = slot.store(p.fp, state, &rule.params, now);
            Step::Write(slot.encode(), Ok((probe.excess, n)))
        });
        v.bad_state += bad;
        match res {
            Update::Done {
                result: Ok((excess, n)),
                ..
            } => {
                charged_any = true;
                if let Some(l) = rule.lease.filter(|_| n > 1) {
                    let held = Held {
                        left: n - 1,
                        until: now.saturating_add(l.ms),
                    };
                    let back = leases.grant(p.idx, p.fp, held);
                    if back > 0 {
                        give_back_one(plan, store, rule, p.fp, back);
                    }
                }
                if evicted {
                    v.evicted_in_debt += 1;
                }
                let d = delay_ms(&rule.params, excess);
                let outcome = match (rule.dry_run, d) {
                    (false, 0) => RuleOutcome::Allowed,
                    (false, d) => {
                        max_delay = max_delay.max(d);
                        RuleOutcome::Delayed(d)
                    }
                    (true, 0) => RuleOutcome::Allowed,
                    (true, d) => RuleOutcome::DryRunDelayed(d),
                };
                v.rules.push((p.idx, outcome));
                note_quota(&mut v, p.idx, rule, excess);
            }
            Update::Done { result: Err(_), .. } if rule.dry_run => {
                v.rules.push((p.idx, RuleOutcome::DryRunRejected));
            }
            Update::Done {
                result: Err(excess),
                ..
            } => {
                v.rules.push((p.idx, RuleOutcome::Rejected));
                v.action = Action::Reject {
                    rule: p.idx,
                    retry_after_s: retry_after_s(&rule.params, excess),
                };
                v.quota = Some(Quota {
                    rule: p.idx,
                    remaining: 0,
                    reset_s: reset_s(&rule.params, excess.saturating_sub(1000)),
                });
                return v;
            }
            Update::GaveUp { .. } | Update::Failed(_) => {
                let gave_up = matches!(res, Update::GaveUp { .. });
                v.rules.push((p.idx, RuleOutcome::StoreTrouble { gave_up }));
                if plan.on_store_error == FailMode::Reject && !rule.dry_run {
                    v.action = Action::Reject {
                        rule: p.idx,
                        retry_after_s: 1,
                    };
                    return v;
                }
            }
        }
    }
    if max_delay > 0 {
        v.action = Action::Delay(max_delay);
    }
    v
}
