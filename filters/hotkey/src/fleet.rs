//! Fleet-scoped hot-key rules ([11/11]): the leader (one per Envoy, the `hotkey` lease)
//! reports each complete tick bucket of a fleet rule's shared view (the keys it names and
//! the rule's total) and, once per `fleet.sync_ms`, sends them to Redis through webdis
//! (`sg_core::fleetsync`, one `EVALSHA`). The answer is the fleet's top keys of the rule's
//! window with their fleet-wide counts; the leader's detector then sees, for each key, the
//! higher of this Envoy's rate and the fleet's, so a key hot across the fleet but spread thin
//! becomes hot on every Envoy within one sync period of the fleet's rate crossing the
//! threshold. Without a fresh answer (engine away, not joined yet) it detects from this
//! Envoy's traffic alone: the local rule is the fallback. Nothing here runs on a request.

use crate::config::{FleetConfig, Plan, Rule};
use crate::window::{Rate, View};
use sg_core::fleet::{Deltas, Reply};
use sg_core::fleetsync::{Client, FleetMetrics, Link, Side};
use sg_core::hash::hash64;
use sg_core::host::Host;

/// The fleet's view of one rule, from the last sync answer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetView {
    /// When it arrived (this Envoy's clock).
    pub at_ms: u64,
    /// The rule's fleet-wide rate, every key.
    pub total_milli_rps: u64,
    /// The fleet's top keys of the window, the highest first.
    pub rates: Vec<Rate>,
}

/// The leader's fleet state (root context).
#[derive(Debug, Default)]
pub struct HotFleet {
    client: Client,
    /// Per rule: the last tick bucket reported (None: none yet by this leader).
    reported: Vec<Option<u64>>,
    /// What the next sync reports.
    pending: Option<Deltas>,
    /// Per rule: the fleet's answer.
    views: Vec<Option<FleetView>>,
}

/// The answer older than this is not used: two sync periods, the timeout and one tick.
pub fn stale_ms(cfg: &FleetConfig, tick_ms: u64) -> u64 {
    2 * cfg.sync_ms + cfg.timeout_ms + tick_ms
}

impl HotFleet {
    pub fn new(plan: &Plan) -> HotFleet {
        HotFleet {
            reported: plan.rules.iter().map(|_| None).collect(),
            views: plan.rules.iter().map(|_| None).collect(),
            ..HotFleet::default()
        }
    }

    /// A new leader: it reports from the newest complete bucket on (the last leader may
    /// have reported the older ones) and uses no earlier answer.
    pub fn restart(&mut self) {
        self.reported.iter_mut().for_each(|r| *r = None);
        self.views.iter_mut().for_each(|v| *v = None);
        self.pending = None;
    }

    /// Adds the complete buckets of fleet rule `idx`'s view not reported yet (epochs up to
    /// `complete`) to the next report.
    pub fn observe(
        &mut self,
        idx: usize,
        rule: &Rule,
        view: &View,
        complete: u64,
        max_keys: usize,
    ) {
        let Some(top) = rule.fleet_top else {
            return;
        };
        let Some(last) = self.reported.get_mut(idx) else {
            return;
        };
        let from = last.map_or(complete, |l| l.saturating_add(1));
        if from > complete {
            return;
        }
        let d = self.pending.get_or_insert_with(|| Deltas::new(max_keys));
        for b in view
            .buckets
            .iter()
            .filter(|b| b.epoch >= from && b.epoch <= complete)
        {
            d.hot_seen(&rule.name, rule.window_ms, top, b.total);
            for e in &b.entries {
                d.hot(
                    &rule.name,
                    rule.window_ms,
                    top,
                    &String::from_utf8_lossy(&e.key),
                    e.count,
                );
            }
        }
        *last = Some(complete);
    }

    /// The leader's tick, after `observe`: syncs when one is due.
    pub fn tick<H: Host + ?Sized>(
        &mut self,
        host: &H,
        plan: &Plan,
        filter: &str,
        m: &FleetMetrics,
    ) {
        let Some(cfg) = plan.fleet.as_ref() else {
            return;
        };
        let l = Link { filter, cfg, m };
        let mut side = HotSide {
            plan,
            pending: &mut self.pending,
            views: &mut self.views,
        };
        self.client.tick(host, l, &mut side);
    }

    /// An HTTP-call answer; false when it is not the sync's.
    pub fn on_response<H: Host + ?Sized>(
        &mut self,
        host: &H,
        plan: &Plan,
        filter: &str,
        token: u32,
        body_size: usize,
        m: &FleetMetrics,
    ) -> bool {
        let Some(cfg) = plan.fleet.as_ref() else {
            return false;
        };
        let l = Link { filter, cfg, m };
        let mut side = HotSide {
            plan,
            pending: &mut self.pending,
            views: &mut self.views,
        };
        self.client
            .on_response(host, l, token, body_size, &mut side)
    }

    /// The rates fleet rule `idx` is judged on at `now`: this Envoy's, and the fleet's while
    /// its answer is fresh (the detector takes each key's higher rate); the total likewise.
    pub fn rates(
        &self,
        idx: usize,
        plan: &Plan,
        now: u64,
        local_total: u64,
        local: Vec<Rate>,
    ) -> (u64, Vec<Rate>) {
        let fresh = plan.fleet.as_ref().is_some_and(|cfg| {
            self.views
                .get(idx)
                .and_then(Option::as_ref)
                .is_some_and(|v| {
                    self.client.synced()
                        && now.saturating_sub(v.at_ms) <= stale_ms(cfg, plan.tick_ms)
                })
        });
        match self.views.get(idx).and_then(Option::as_ref) {
            Some(v) if fresh => {
                let mut rates = local;
                rates.extend(v.rates.iter().cloned());
                rates.sort_by(|a, b| b.milli_rps.cmp(&a.milli_rps).then(a.fp.cmp(&b.fp)));
                (local_total.max(v.total_milli_rps), rates)
            }
            _ => (local_total, local),
        }
    }
}

/// hotkey's part of a sync: the pending report out, the fleet's views in.
struct HotSide<'a> {
    plan: &'a Plan,
    pending: &'a mut Option<Deltas>,
    views: &'a mut Vec<Option<FleetView>>,
}

impl<H: Host + ?Sized> Side<H> for HotSide<'_> {
    fn collect(&mut self, _host: &H, max_keys: usize, _m: &FleetMetrics) -> Deltas {
        let mut d = self.pending.take().unwrap_or_else(|| Deltas::new(max_keys));
        // Every fleet rule is asked for, so an Envoy without its traffic still learns the
        // fleet's hot keys.
        for r in &self.plan.rules {
            if let Some(top) = r.fleet_top {
                d.touch_hot(&r.name, r.window_ms, top);
            }
        }
        d
    }

    fn apply(&mut self, _host: &H, reply: &Reply, _sent: &Deltas, now: u64) {
        for hr in &reply.h {
            let Some((idx, rule)) = self
                .plan
                .rules
                .iter()
                .enumerate()
                .find(|(_, r)| r.name == hr.r && r.fleet_top.is_some())
            else {
                continue;
            };
            let milli = |rps: f64| (rps * 1000.0).clamp(0.0, 1e15) as u64;
            let view = FleetView {
                at_ms: now,
                total_milli_rps: milli(hr.total_rps(rule.window_ms)),
                rates: hr
                    .rates(rule.window_ms)
                    .into_iter()
                    .map(|(k, rps)| Rate {
                        fp: hash64(rule.name.as_bytes(), k.as_bytes()),
                        key: k.into_bytes(),
                        milli_rps: milli(rps),
                    })
                    .collect(),
            };
            if let Some(v) = self.views.get_mut(idx) {
                *v = Some(view);
            }
        }
    }

    /// A hot-key count is only worth its window: one a failed sync carried is dropped, not
    /// added to a later window (where it would make a key look hotter than it is).
    fn resend_failed(&self) -> bool {
        false
    }

    fn fell_back(&mut self, _host: &H) -> String {
        self.views.iter_mut().for_each(|v| *v = None);
        "fleet hot-key rules detect from this Envoy's traffic alone".into()
    }
}
