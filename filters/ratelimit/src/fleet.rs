//! Fleet-scoped rules' periodic side ([11/11]): every worker adds the requests it saw to
//! `sg:fl:<rule>:n` and reads each rule's sync state (`sg:fl:<rule>:m`) on its tick; the
//! holder of the `ratelimit-fleet` lease syncs with Redis through webdis once per
//! `fleet.sync_ms` (one `dispatch_http_call`, never on a request's path): it takes what every
//! slot admitted since the last sync, sends it with `EVALSHA`, and writes the answer back into
//! the slots (allowances) and the rule's state (share, Redis' clock, healthy or not).
//! The request path is in `engine` (`FleetCtx`); the pure state in `sg_core::fleetslot`.

use crate::config::{FleetConfig, Plan};
use crate::filter::{Metrics, FILTER};
use sg_core::fleet::{self, Deltas};
use sg_core::fleetslot::{self, parse_wire_key, wire_key, Meta};
use sg_core::fleetsync::{Client, FleetMetrics, Link, Side};
use sg_core::hash::slot_of;
use sg_core::host::Host;
use sg_core::keys::{fl_meta, fl_seen, fl_slot, RL_FLEET_TASK};
use sg_core::lease::Leadership;
use sg_core::shared::{update, SharedStore, Step, Update};
use std::cell::{Cell, RefCell};

/// A holder's answer older than this is not trusted by the workers: the `Health` staleness
/// (2 periods + the timeout) plus one tick for the workers' own reading.
pub fn stale_ms(cfg: &FleetConfig, tick_ms: u64) -> u64 {
    2 * cfg.sync_ms + cfg.timeout_ms + tick_ms
}

/// The tick of a filter with fleet rules: at most a tenth of the sync period (so the sync
/// starts within 10% of it), at least 10 ms.
pub fn tick_ms(cfg: &FleetConfig) -> u64 {
    (cfg.sync_ms / 10).max(10)
}

/// Every worker's part: the requests it saw per fleet rule since its last tick, and the
/// rules' sync state as it last read it.
#[derive(Debug, Default)]
pub struct Worker {
    pub seen: Vec<Cell<u64>>,
    pub metas: RefCell<Vec<Option<Meta>>>,
}

impl Worker {
    pub fn new(plan: &Plan) -> Worker {
        Worker {
            seen: plan.rules.iter().map(|_| Cell::new(0)).collect(),
            metas: RefCell::new(plan.rules.iter().map(|_| None).collect()),
        }
    }

    pub fn saw(&self, idx: usize) {
        if let Some(c) = self.seen.get(idx) {
            c.set(c.get().saturating_add(1));
        }
    }

    /// Tick, every worker: add this worker's seen counts to shared data, then read each fleet
    /// rule's state. A failed add keeps the count for the next tick (nothing counted is lost).
    pub fn tick<S: SharedStore + ?Sized>(&self, store: &S, plan: &Plan) {
        let Ok(mut metas) = self.metas.try_borrow_mut() else {
            return;
        };
        for (idx, rule) in plan.rules.iter().enumerate() {
            if rule.fleet.is_none() {
                continue;
            }
            if let Some(c) = self.seen.get(idx) {
                let n = c.get();
                if n > 0 {
                    let r = update(store, &fl_seen(&rule.name), plan.cas_attempts, |cur| {
                        let total = fleetslot::decode_count(cur).saturating_add(n);
                        Step::Write(fleetslot::encode_count(total), ())
                    });
                    if matches!(r, Update::Done { .. }) {
                        c.set(c.get().saturating_sub(n));
                    }
                }
            }
            if let Some(m) = metas.get_mut(idx) {
                *m = store
                    .get(&fl_meta(&rule.name))
                    .ok()
                    .and_then(|v| v.value)
                    .and_then(|b| Meta::decode(&b));
            }
        }
    }
}

/// The sync (root context; only the lease holder's does anything): the lease and the
/// call side (`sg_core::fleetsync`); what is sent and applied is [`RuleSide`].
#[derive(Debug, Default)]
pub struct Sync {
    lead: Leadership,
    client: Client,
}

/// ratelimit's part of a sync: the fleet rules' slots and seen counters out, allowances and
/// shares in.
struct RuleSide<'a> {
    plan: &'a Plan,
    m: &'a Metrics,
}

impl Sync {
    /// On every tick of every worker: only the lease holder syncs.
    pub fn tick<H: Host + ?Sized>(
        &mut self,
        host: &H,
        plan: &Plan,
        tick: u64,
        m: &Metrics,
        fm: &FleetMetrics,
    ) {
        let Some(cfg) = plan.fleet.as_ref() else {
            return;
        };
        let now = host.now_ms();
        if self
            .lead
            .tick(host, RL_FLEET_TASK, now, tick.saturating_mul(3))
            .is_none()
        {
            return;
        }
        let l = Link {
            filter: FILTER,
            cfg,
            m: fm,
        };
        self.client.tick(host, l, &mut RuleSide { plan, m });
    }

    /// An HTTP-call answer (root context). False when the token is not this sync's.
    pub fn on_response<H: Host + ?Sized>(
        &mut self,
        host: &H,
        plan: &Plan,
        token: u32,
        body_size: usize,
        m: &Metrics,
        fm: &FleetMetrics,
    ) -> bool {
        let Some(cfg) = plan.fleet.as_ref() else {
            return false;
        };
        let l = Link {
            filter: FILTER,
            cfg,
            m: fm,
        };
        self.client
            .on_response(host, l, token, body_size, &mut RuleSide { plan, m })
    }
}

impl<H: Host + ?Sized> Side<H> for RuleSide<'_> {
    /// Takes what every fleet rule's slots and seen counter hold since the last sync.
    fn collect(&mut self, host: &H, max_keys: usize, fm: &FleetMetrics) -> Deltas {
        let plan = self.plan;
        let mut d = Deltas::new(max_keys);
        for rule in &plan.rules {
            let Some(b) = rule.fleet else {
                continue;
            };
            d.touch_limit(&rule.name, b.window_ms);
            let r = update(host, &fl_seen(&rule.name), plan.cas_attempts, |cur| {
                match fleetslot::decode_count(cur) {
                    0 => Step::Keep(0),
                    n => Step::Write(fleetslot::encode_count(0), n),
                }
            });
            if let Update::Done { result: n, .. } = r {
                d.limit_n(&rule.name, b.window_ms, n, None);
            }
            for slot in 0..rule.sets {
                let r = update(host, &fl_slot(&rule.name, slot), plan.cas_attempts, |cur| {
                    let Some(mut s) = cur.and_then(fleetslot::Slot::decode) else {
                        return Step::Keep(None);
                    };
                    match s.take() {
                        Some(t) => Step::Write(s.encode(), Some(t)),
                        None => Step::Keep(None),
                    }
                });
                if let Update::Done {
                    result: Some((keys, dropped)),
                    ..
                } = r
                {
                    fm.fleet_keys_dropped.add(dropped);
                    for (fp, n) in keys {
                        d.limit_n(
                            &rule.name,
                            b.window_ms,
                            0,
                            Some((&wire_key(fp), u64::from(n))),
                        );
                    }
                }
            }
        }
        d
    }

    /// Every fleet rule's state marked unsynced: the workers use the fallback limit from
    /// their next tick.
    fn fell_back(&mut self, host: &H) -> String {
        let plan = self.plan;
        let now = host.now_ms();
        for rule in plan.rules.iter().filter(|r| r.fleet.is_some()) {
            let key = fl_meta(&rule.name);
            let _ = update(host, &key, plan.cas_attempts, |cur| {
                let mut meta = cur.and_then(Meta::decode).unwrap_or_default();
                meta.synced = false;
                meta.updated_ms = now;
                Step::Write(meta.encode(), ())
            });
        }
        format!(
            "each fleet rule falls back to its limit / {} per key",
            plan.fleet.as_ref().map_or(1, |f| f.expected_envoys)
        )
    }

    fn apply(&mut self, host: &H, reply: &fleet::Reply, sent: &Deltas, now: u64) {
        let (plan, m) = (self.plan, self.m);
        let Some(cfg) = plan.fleet.as_ref() else {
            return;
        };
        let offset = i64::try_from(i128::from(reply.t) - i128::from(now)).unwrap_or(0);
        for lr in &reply.l {
            let Some((idx, rule)) = plan.rules.iter().enumerate().find(|(_, r)| r.name == lr.r)
            else {
                continue;
            };
            let Some(b) = rule.fleet else {
                continue;
            };
            let share = lr.share_before(cfg.expected_envoys, sent.seen(&rule.name));
            let meta = Meta {
                synced: true,
                share_ppm: Meta::share_ppm(share),
                offset_ms: offset,
                updated_ms: now,
            };
            let _ = host.set(&fl_meta(&rule.name), &meta.encode(), 0);
            if let Some(r) = m.rules.get(idx) {
                r.fleet_share_ppm.set(u64::from(meta.share_ppm));
            }
            for (k, total) in &lr.k {
                let Some(fp) = parse_wire_key(k) else {
                    continue;
                };
                let key = fl_slot(&rule.name, slot_of(fp, rule.sets));
                let _ = update(host, &key, plan.cas_attempts, |cur| {
                    let Some(mut s) = cur.and_then(fleetslot::Slot::decode) else {
                        return Step::Keep(());
                    };
                    if s.apply(fp, lr.win, *total, share, &b) {
                        Step::Write(s.encode(), ())
                    } else {
                        Step::Keep(())
                    }
                });
            }
        }
    }
}
