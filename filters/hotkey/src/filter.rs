//! The filter's life in Envoy, as plain logic over `sg_core::host::Host`.
//! Request path: match, extract the key, count it in the worker's sketch (VM memory, no host
//! call), and act if the key is in the worker's copy of the published hot set or blocked.
//! Tick (`core::tick` outline): merge the worker's counts into the shared view; the lease
//! holder evaluates the views, publishes the hot set (and the divert contract for
//! `simplepage`), polls the operator list and alerts; every worker refreshes its copies.

use crate::config::{ActionConfig, Config, Plan};
use crate::detect::{Detector, Event};
use crate::fleet::HotFleet;
use crate::shed::{self, decide, Cause, Decision, ShedEntry};
use crate::sketch::SpaceSaving;
use crate::top::TopHistory;
use crate::window::View;
use sg_core::alert::Alert;
use sg_core::fleetsync::FleetMetrics;
use sg_core::hash::hash64;
use sg_core::host::{configure, set_tick, Flow, Host, HostRequest, Map, Plugin};
use sg_core::key::RequestView;
use sg_core::keys::{hk_view, HK_BLOCKLIST, HK_DIVERT, HK_SHED};
use sg_core::metrics::{filter_metric, Counter};
use sg_core::oplist::{decode_list, encode_list, Entry as ListEntry, List};
use sg_core::ops::{refresh_list, Answer, Ops};
use sg_core::shared::{ensure_all, Step};
use sg_core::store::{Data, Published};
use sg_core::tick::{Now, Periodic, Steps};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

pub const FILTER: &str = "hotkey";

sg_core::metrics! {
    /// Per rule: `sg.hotkey.<rule>.<what>`.
    pub struct RuleMetrics {
        seen: Counter = "seen", "requests the rule matched with a key";
        no_key: Counter = "no_key", "requests the rule matched without a key value";
        shed: Counter = "shed", "requests answered by the rule's reject/redirect/limit action";
        diverted: Counter = "diverted", "requests of hot keys of a divert rule";
        observed: Counter = "observed", "requests of hot keys of an observe rule (shadow mode)";
        blocked: Counter = "blocked", "requests of keys on a block list";
    }
}

sg_core::metrics! {
    /// Filter-wide: `sg.hotkey.<what>`.
    pub struct FilterMetrics {
        detections: Counter = "detections", "keys that became hot";
        view_cas_giveup: Counter = "view_cas_giveup", "tick merges of the shared view not written";
        hot_keys: Gauge = "hot_keys", "keys hot now, all rules";
    }
}

/// `sg.hotkey.*`.
pub type Metrics = sg_core::metrics::Metrics<RuleMetrics, FilterMetrics>;

/// A hot key as this worker knows it: its published rate and the `limit` credit.
#[derive(Debug)]
pub struct HotLocal {
    pub milli_rps: u64,
    credit: Cell<u64>,
}

/// The worker's copy of the hot set: (rule index, key fingerprint) -> its rate.
pub type HotSet = HashMap<(u16, u64), HotLocal>;

/// Per-worker state the request path reads and the tick refreshes.
#[derive(Default)]
struct Worker {
    sketches: Vec<SpaceSaving>,
    hot: Published<HotSet>,
    list: Published<List>,
}

/// The configured filter of one worker, shared by its root and HTTP contexts.
pub struct Filter {
    pub plan: Plan,
    pub m: Metrics,
    /// `sg.hotkey.fleet_*`: the fleet sync's own (`sg_core::fleetsync`).
    pub fm: FleetMetrics,
    worker: RefCell<Worker>,
}

/// The leader side (root context only): the periodic work's lease, the leader's detectors, operator side and
/// alert history.
pub struct Leader {
    detectors: Vec<Detector>,
    /// Fleet rules' sync (idle without them).
    fleet: HotFleet,
    ops: Ops,
    tops: Vec<TopHistory>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// (rule, key) of the key entries in force.
fn block_keys(list: &List, now: u64) -> Vec<(Option<String>, String)> {
    list.active(now)
        .filter_map(|e| e.key.clone().map(|k| (e.rule.clone(), k)))
        .collect()
}

/// Decodes a published hot set, carrying each key's `limit` credit over from `old`.
fn hot_set(b: &[u8], old: &HotSet) -> Option<HotSet> {
    let (_, entries) = shed::decode(b)?;
    let mut hot = HashMap::with_capacity(entries.len());
    for e in entries {
        let id = (e.rule, e.hot.fp);
        let credit = old.get(&id).map_or(0, |h| h.credit.get());
        hot.insert(
            id,
            HotLocal {
                milli_rps: e.hot.milli_rps,
                credit: Cell::new(credit),
            },
        );
    }
    Some(hot)
}

impl Plugin for Filter {
    /// The request path keeps nothing between callbacks.
    type Stream = ();
    type Periodic = Periodic<Leader>;

    fn configure<H: Host + ?Sized>(host: &H) -> Option<(Filter, Periodic<Leader>)> {
        let plan = configure::<Config, H>(host, FILTER)?;
        let worker = Worker {
            sketches: plan
                .rules
                .iter()
                .map(|_| SpaceSaving::new(plan.sketch_capacity))
                .collect(),
            ..Worker::default()
        };
        let periodic = Periodic::new(Leader {
            detectors: plan.rules.iter().map(|_| Detector::new()).collect(),
            fleet: HotFleet::new(&plan),
            ops: Ops::new(FILTER, HK_BLOCKLIST, plan.operator.as_ref(), &plan.alert),
            tops: plan.rules.iter().map(|_| TopHistory::default()).collect(),
        });
        ensure_all(host, FILTER, plan.rules.iter().map(|r| hk_view(&r.name)));
        set_tick(host, FILTER, plan.tick_ms, "no detection on this worker");
        log::info!(
            "{FILTER}: configured {} rules, tick {} ms",
            plan.rules.len(),
            plan.tick_ms
        );
        let f = Filter {
            m: Metrics::define(host, FILTER, plan.rules.iter().map(|r| r.name.as_str())),
            fm: FleetMetrics::define(host, |w| filter_metric(FILTER, w)),
            plan,
            worker: RefCell::new(worker),
        };
        Some((f, periodic))
    }

    fn stream(_id: u32) {}

    fn flush<H: Host + ?Sized>(&self, host: &H) {
        self.m.flush(host);
        self.fm.flush(host);
    }

    /// The request path: no shared-data call.
    fn on_request<H: Host + ?Sized>(&self, host: &H, _s: &mut ()) -> Flow {
        let plan = &self.plan;
        let req = HostRequest::new(host);
        let route = req.route_if(plan.needs_route);
        let Ok(mut w) = self.worker.try_borrow_mut() else {
            return Flow::Continue;
        };
        for (i, rule) in plan.rules.iter().enumerate() {
            if !rule.matcher.matches_request(&req, route.as_deref()) {
                continue;
            }
            let m = self.m.rules.get(i);
            let Some(key) = rule.key.key(&req) else {
                m.inspect(|m| m.no_key.inc());
                continue;
            };
            let fp = hash64(rule.name.as_bytes(), &key);
            let rule_idx = u16::try_from(i).unwrap_or(u16::MAX);
            let list = w.list.get();
            let blocked = rule.block.iter().any(|(k, exp)| {
                k.as_slice() == key.as_slice() && exp.is_none_or(|e| req.now() < e)
            }) || (!list.entries.is_empty()
                && list.blocks_key(&rule.name, &key, req.now()));
            if let Some(s) = w.sketches.get_mut(i) {
                s.add(fp, &key, 1);
            }
            let hot = w.hot.get().get(&(rule_idx, fp));
            let mut credit = hot.map_or(0, |h| h.credit.get());
            let decision = decide(rule, &key, blocked, hot.map(|h| h.milli_rps), &mut credit);
            if let Some(h) = hot {
                h.credit.set(credit);
            }
            if let Some(m) = m {
                self.count(m, &decision);
            }
            match decision {
                Decision::Pass | Decision::Observe(_) => {}
                Decision::Divert { header, .. } => {
                    // Only reads go to the read-only simple page; `simplepage` applies its
                    // own rules to the published key.
                    if let Some(h) = header {
                        if matches!(req.method(), "GET" | "HEAD") {
                            host.set_header(Map::Request, &h, &rule.name);
                            host.set_header(Map::Request, "x-spikeguard-action", FILTER);
                        }
                    }
                }
                Decision::Reject {
                    status,
                    body,
                    retry_after_s,
                    ..
                } => {
                    let retry = retry_after_s.to_string();
                    let headers = [
                        ("content-type", "text/plain"),
                        ("retry-after", retry.as_str()),
                        ("x-spikeguard-action", FILTER),
                    ];
                    if host.send_reply(status, &headers, body.as_bytes()) {
                        return Flow::Pause;
                    }
                }
                Decision::Redirect {
                    status, location, ..
                } => {
                    let headers = [
                        ("location", location.as_str()),
                        ("x-spikeguard-action", FILTER),
                    ];
                    if host.send_reply(status, &headers, b"") {
                        return Flow::Pause;
                    }
                }
            }
        }
        Flow::Continue
    }

    fn on_tick<H: Host + ?Sized>(&self, host: &H, p: &mut Periodic<Leader>) {
        let steps = &mut Tick {
            f: self,
            p: &mut p.leader,
        };
        p.ticker.run(host, FILTER, self.plan.tick_ms, steps);
        self.m.flush(host);
        self.fm.flush(host);
    }

    /// A fleet sync, operator-list poll or webhook answer (root context).
    fn on_call_response<H: Host + ?Sized>(
        &self,
        host: &H,
        p: &mut Periodic<Leader>,
        token: u32,
        body_size: usize,
    ) {
        let fleet = &mut p.leader.fleet;
        if fleet.on_response(host, &self.plan, FILTER, token, body_size, &self.fm) {
            return;
        }
        let data = self.data(host);
        let Answer::Applied { previous } =
            p.leader
                .ops
                .on_response(host, &data, token, body_size, &self.m.ops)
        else {
            return;
        };
        let now = host.now_ms();
        let before = block_keys(&previous, now);
        let added: Vec<(Option<String>, String)> = p
            .leader
            .ops
            .list()
            .map(|l| block_keys(l, now))
            .unwrap_or_default()
            .into_iter()
            .filter(|k| !before.contains(k))
            .collect();
        for (rule, key) in added {
            let rule = rule.unwrap_or_else(|| "*".to_string());
            self.alert(
                host,
                &mut p.leader,
                &rule,
                &key,
                0,
                "blocked by operator",
                now,
                Vec::new(),
            );
        }
    }
}

impl Filter {
    fn data<'a, H: Host + ?Sized>(&'a self, host: &'a H) -> Data<'a, H> {
        Data::new(host, &self.m.store)
    }

    fn count(&self, m: &RuleMetrics, d: &Decision) {
        m.seen.inc();
        let c: Option<&Counter> = match d {
            Decision::Pass => None,
            Decision::Observe(_) => Some(&m.observed),
            Decision::Divert { .. } => Some(&m.diverted),
            Decision::Reject { .. } | Decision::Redirect { .. } => Some(&m.shed),
        };
        c.inspect(|c| c.inc());
        let cause = match d {
            Decision::Pass => None,
            Decision::Observe(c) => Some(*c),
            Decision::Reject { cause, .. }
            | Decision::Redirect { cause, .. }
            | Decision::Divert { cause, .. } => Some(*cause),
        };
        if cause == Some(Cause::Blocked) {
            m.blocked.inc();
        }
    }

    /// One alert: a structured log line, and a webhook POST if configured; at most one per
    /// rule and key per `alert.cooldown_ms`.
    #[allow(clippy::too_many_arguments)]
    fn alert<H: Host + ?Sized>(
        &self,
        host: &H,
        p: &mut Leader,
        rule: &str,
        key: &str,
        milli_rps: u64,
        reason: &str,
        now: u64,
        top: Vec<(String, u64)>,
    ) {
        let a = Alert {
            filter: FILTER.to_string(),
            rule: rule.to_string(),
            key: key.to_string(),
            milli_rps,
            reason: reason.to_string(),
            top,
            now_ms: now,
        };
        p.ops.alert(host, &self.plan.alert, &a, true, &self.m.ops);
    }

    /// Copies of the published hot set (for tests and diagnostics).
    pub fn hot_keys(&self) -> usize {
        self.worker.borrow().hot.get().len()
    }
}

/// One tick's steps (`core::tick`).
struct Tick<'a> {
    f: &'a Filter,
    p: &'a mut Leader,
}

impl<H: Host + ?Sized> Steps<H> for Tick<'_> {
    fn merge(&mut self, host: &H, now: Now) {
        let (f, plan) = (self.f, &self.f.plan);
        let drained: Vec<(u64, Vec<crate::sketch::Counted>)> = {
            let mut w = f.worker.borrow_mut();
            w.sketches.iter_mut().map(|s| s.drain()).collect()
        };
        let data = f.data(host);
        for (rule, (total, entries)) in plan.rules.iter().zip(drained) {
            if total == 0 {
                continue;
            }
            let r = data.modify(&hk_view(&rule.name), View::decode, |v| {
                let mut v = v.unwrap_or_default();
                v.merge(
                    now.epoch,
                    total,
                    &entries,
                    rule.window_buckets,
                    plan.view_entries,
                );
                Step::Write(v.encode(), ())
            });
            if r.is_none() {
                f.m.filter.view_cas_giveup.inc();
            }
        }
    }

    /// Evaluate every rule's view, publish the hot set, poll, alert.
    fn lead(&mut self, host: &H, now: Now, became: bool) {
        let (f, plan) = (self.f, &self.f.plan);
        let data = f.data(host);
        if became {
            self.p.fleet.restart();
            // Continue from what the previous leader published.
            let published = data
                .read_with(HK_SHED, shed::decode)
                .map(|x| x.1)
                .unwrap_or_default();
            for (i, d) in self.p.detectors.iter_mut().enumerate() {
                d.restore(
                    published
                        .iter()
                        .filter(|e| usize::from(e.rule) == i)
                        .map(|e| e.hot.clone())
                        .collect(),
                );
            }
        }
        let mut entries = Vec::new();
        let mut divert = List::default();
        let mut enters = Vec::new();
        for (i, rule) in plan.rules.iter().enumerate() {
            let view: View = data.read(&hk_view(&rule.name)).unwrap_or_default();
            // The bucket being filled now is partial: evaluate the window of complete ones.
            let complete = now.epoch.saturating_sub(1);
            let (mut total, mut rates) = view.rates(complete, rule.window_buckets, plan.tick_ms);
            if let Some(cfg) = plan.fleet.as_ref().filter(|_| rule.fleet_top.is_some()) {
                self.p.fleet.observe(i, rule, &view, complete, cfg.max_keys);
                (total, rates) = self.p.fleet.rates(i, plan, now.ms, total, rates);
            }
            if let Some(t) = self.p.tops.get_mut(i) {
                t.push(now.ms, rates.iter().map(|r| (lossy(&r.key), r.milli_rps)));
            }
            let Some(det) = self.p.detectors.get_mut(i) else {
                continue;
            };
            for ev in det.update(now.ms, total, &rates, &rule.thresholds) {
                match ev {
                    Event::Enter { key, milli_rps, .. } => {
                        f.m.filter.detections.inc();
                        enters.push((rule.name.clone(), lossy(&key), milli_rps, i));
                    }
                    Event::Exit { key, .. } => {
                        log::info!(
                            "{FILTER}: rule={} key={:?} cooled down; shedding stopped",
                            rule.name,
                            lossy(&key)
                        );
                    }
                }
            }
            let rule_idx = u16::try_from(i).unwrap_or(u16::MAX);
            if matches!(rule.action, ActionConfig::Divert { .. }) {
                divert.entries.extend(det.hot().iter().map(|h| ListEntry {
                    rule: Some(rule.name.clone()),
                    key: Some(lossy(&h.key)),
                    path_prefix: None,
                    expires_at_ms: None,
                }));
            }
            entries.extend(det.hot().iter().map(|h| ShedEntry {
                rule: rule_idx,
                hot: h.clone(),
            }));
        }
        for (rule, key, milli_rps, i) in enters {
            let top = self.p.tops.get(i).map(TopHistory::top).unwrap_or_default();
            f.alert(
                host,
                self.p,
                &rule,
                &key,
                milli_rps,
                "hot key: shedding started",
                now.ms,
                top,
            );
        }
        f.m.filter.hot_keys.set(entries.len() as u64);
        data.update(HK_SHED, |cur| {
            let seq = cur
                .and_then(shed::decode)
                .map_or(0, |x| x.0)
                .wrapping_add(1);
            Step::Write(shed::encode(seq, &entries), ())
        });
        // For `simplepage`: the hot keys of `divert` rules, by rule name (rewritten only when
        // they change, so readers can skip an unchanged version).
        data.update(HK_DIVERT, |cur| {
            match cur.and_then(|b| decode_list(b, shed::MAX_ENTRIES)) {
                Some((_, l)) if l == divert => Step::Keep(()),
                o => Step::Write(
                    encode_list(o.map_or(0, |x| x.0).wrapping_add(1), &divert),
                    (),
                ),
            }
        });
        self.p
            .ops
            .poll(host, plan.operator.as_ref(), now.ms, &f.m.ops);
        self.p.fleet.tick(host, plan, FILTER, &f.fm);
    }

    fn refresh(&mut self, host: &H, _now: Now) {
        let f = self.f;
        let data = f.data(host);
        let mut w = f.worker.borrow_mut();
        let old = w.hot.get().clone();
        w.hot.refresh(&data, HK_SHED, |b| hot_set(b, &old));
        let max = f.plan.operator.as_ref().map_or(1000, |o| o.max_entries);
        refresh_list(&mut w.list, &data, HK_BLOCKLIST, max);
    }
}
