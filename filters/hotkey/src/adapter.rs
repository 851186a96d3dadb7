//! The proxy-wasm adapter for `hotkey`. Request path: match, extract the key, count it in the
//! worker's sketch (VM memory, no host call), and act if the key is in the worker's copy of
//! the published hot set or blocked. Tick: merge the worker's counts into the shared view;
//! the lease holder evaluates the view and publishes the hot set; every worker refreshes its
//! copy of the hot set.

use crate::config::{ActionConfig, Config, Plan};
use crate::detect::{Detector, Event};
use crate::shed::{self, decide, Cause, Decision, ShedEntry};
use crate::sketch::SpaceSaving;
use crate::window::View;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as HostAction, ContextType, LogLevel};
use sg_core::alert::Alert;
use sg_core::hash::hash64;
use sg_core::host::{
    now_ms, plugin_config, route_name_if, send_reply, set_header, Counter, Gauge, HostRequest,
    HostStore, REQUEST_HEADERS,
};
use sg_core::key::RequestView;
use sg_core::lease::Leadership;
use sg_core::metrics::{filter_metric, rule_metric};
use sg_core::oplist::{decode_list, encode_list, Entry as ListEntry, List, PollOutcome};
use sg_core::ops::{Answer, Ops, OpsMetrics};
use sg_core::shared::{update, SharedStore, Step};
use std::cell::RefCell;
use std::collections::HashMap;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

const FILTER: &str = "hotkey";
/// Shared-data key of the published hot set.
const SHED_KEY: &str = "sg:hk:shed";
/// Shared-data key of the operator block list, published by the leader's poller.
const BLOCKLIST_KEY: &str = "sg:hk:blocklist";
/// Shared-data key of the hot keys of `divert` rules, read by `simplepage`
/// (an `oplist` list: rule name, key).
const DIVERT_KEY: &str = "sg:hk:divert";
/// "Top 5 keys of the last 3 minutes" in alerts.
const TOP_WINDOW_MS: u64 = 180_000;

/// Per rule: (evaluation time, top 5 (key, milli-rps) of that evaluation).
type TopHistory = VecDeque<(u64, Vec<(String, u64)>)>;

fn view_key(rule: &str) -> String {
    format!("sg:hk:{rule}:view")
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct RuleMetrics {
    seen: Counter,
    no_key: Counter,
    shed: Counter,
    diverted: Counter,
    observed: Counter,
    blocked: Counter,
}

#[derive(Default)]
struct Metrics {
    rules: Vec<RuleMetrics>,
    detections: Counter,
    view_cas_giveup: Counter,
    bad_state: Counter,
    operator_applied: Counter,
    operator_errors: Counter,
    alerts: Counter,
    webhook_errors: Counter,
    hot_keys: Gauge,
}

impl Metrics {
    fn ops(&self) -> OpsMetrics<'_> {
        OpsMetrics {
            alerts: &self.alerts,
            webhook_errors: &self.webhook_errors,
            operator_errors: &self.operator_errors,
        }
    }

    fn define(plan: &Plan) -> Metrics {
        let r = |rule: &str, what: &str| Counter::define(&rule_metric(FILTER, rule, what));
        Metrics {
            rules: plan
                .rules
                .iter()
                .map(|x| RuleMetrics {
                    seen: r(&x.name, "seen"),
                    no_key: r(&x.name, "no_key"),
                    shed: r(&x.name, "shed"),
                    diverted: r(&x.name, "diverted"),
                    observed: r(&x.name, "observed"),
                    blocked: r(&x.name, "blocked"),
                })
                .collect(),
            detections: Counter::define(&filter_metric(FILTER, "detections")),
            view_cas_giveup: Counter::define(&filter_metric(FILTER, "view_cas_giveup")),
            bad_state: Counter::define(&filter_metric(FILTER, "bad_state")),
            operator_applied: Counter::define(&filter_metric(FILTER, "operator_applied")),
            operator_errors: Counter::define(&filter_metric(FILTER, "operator_errors")),
            alerts: Counter::define(&filter_metric(FILTER, "alerts")),
            webhook_errors: Counter::define(&filter_metric(FILTER, "webhook_errors")),
            hot_keys: Gauge::define(&filter_metric(FILTER, "hot_keys")),
        }
    }

    fn flush(&self) {
        for r in &self.rules {
            for c in [
                &r.seen,
                &r.no_key,
                &r.shed,
                &r.diverted,
                &r.observed,
                &r.blocked,
            ] {
                c.flush();
            }
        }
        for c in [
            &self.detections,
            &self.view_cas_giveup,
            &self.bad_state,
            &self.operator_applied,
            &self.operator_errors,
            &self.alerts,
            &self.webhook_errors,
        ] {
            c.flush();
        }
    }
}

/// A hot key as this worker knows it: its published rate and the `limit` credit.
struct HotLocal {
    milli_rps: u64,
    credit: u64,
}

/// Per-worker state shared by the root and the HTTP contexts.
#[derive(Default)]
struct Worker {
    sketches: Vec<SpaceSaving>,
    hot: HashMap<(u16, u64), HotLocal>,
    shed_seq: Option<u64>,
    /// The operator list as published, and a hash of its bytes (to notice a new one).
    list: Rc<List>,
    list_hash: u64,
}

type SharedWorker = Rc<RefCell<Worker>>;

#[derive(Default)]
struct Root {
    plan: Option<Rc<Plan>>,
    worker: SharedWorker,
    metrics: Rc<Metrics>,
    detectors: Vec<Detector>,
    lead: Leadership,
    /// Leader only: the operator endpoint's poller, calls in flight, alert state.
    ops: Option<Ops>,
    /// Per rule: (time, top 5 of that evaluation), for the alert's top keys of 3 minutes.
    recent_top: Vec<TopHistory>,
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let now = now_ms();
        let metrics = self.metrics.clone();
        let Some(ops) = self.ops.as_mut() else {
            return;
        };
        let before: Vec<(Option<String>, String)> = ops
            .poller
            .as_ref()
            .map(|p| block_keys(p.list(), now))
            .unwrap_or_default();
        let Answer::Poll(PollOutcome::Applied { entries }) =
            ops.on_response(token, body_size, now, &metrics.ops())
        else {
            return;
        };
        let Some(poller) = ops.poller.as_ref() else {
            return;
        };
        metrics.operator_applied.inc();
        let bytes = encode_list(poller.version(), poller.list());
        let added: Vec<(Option<String>, String)> = block_keys(poller.list(), now)
            .into_iter()
            .filter(|k| !before.contains(k))
            .collect();
        let _ = update(&HostStore, BLOCKLIST_KEY, 8, |_| {
            Step::Write(bytes.clone(), ())
        });
        log::info!("{FILTER}: operator list applied ({entries} entries)");
        for (rule, key) in added {
            let rule = rule.unwrap_or_else(|| "*".to_string());
            self.alert(&rule, &key, 0, "blocked by operator", now, Vec::new());
        }
    }
}

/// The top 5 keys of the recent evaluations: each key's highest rate, highest first.
fn top_of(recent: &TopHistory) -> Vec<(String, u64)> {
    let mut best: HashMap<&str, u64> = HashMap::new();
    for (_, top) in recent {
        for (k, r) in top {
            let e = best.entry(k.as_str()).or_insert(0);
            *e = (*e).max(*r);
        }
    }
    let mut v: Vec<(String, u64)> = best.into_iter().map(|(k, r)| (k.to_string(), r)).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.truncate(5);
    v
}

/// (rule, key) of the key entries in force.
fn block_keys(list: &List, now: u64) -> Vec<(Option<String>, String)> {
    list.active(now)
        .filter_map(|e| e.key.clone().map(|k| (e.rule.clone(), k)))
        .collect()
}

impl Root {
    /// One alert: a structured log line, and a webhook POST if configured; at most one per
    /// rule and key per `alert.cooldown_ms`.
    fn alert(
        &mut self,
        rule: &str,
        key: &str,
        milli_rps: u64,
        reason: &str,
        now: u64,
        top: Vec<(String, u64)>,
    ) {
        let (Some(plan), Some(ops)) = (self.plan.clone(), self.ops.as_mut()) else {
            return;
        };
        let a = Alert {
            filter: FILTER.to_string(),
            rule: rule.to_string(),
            key: key.to_string(),
            milli_rps,
            reason: reason.to_string(),
            top,
            now_ms: now,
        };
        ops.alert(&plan.alert, &a, true, &self.metrics.ops());
    }

    /// Every worker: pick up a newly published operator list.
    fn refresh_list(&self, plan: &Plan) {
        let Some(bytes) = HostStore.get(BLOCKLIST_KEY).ok().and_then(|v| v.value) else {
            return;
        };
        let h = hash64(b"blocklist", &bytes);
        let mut w = self.worker.borrow_mut();
        if w.list_hash == h {
            return;
        }
        let max = plan.operator.as_ref().map_or(1000, |o| o.max_entries);
        match decode_list(&bytes, max) {
            Some((_, list)) => {
                w.list = Rc::new(list);
                w.list_hash = h;
            }
            None => self.metrics.bad_state.inc(),
        }
    }

    fn merge_counts(&self, plan: &Plan, epoch: u64) {
        let drained: Vec<(u64, Vec<crate::sketch::Counted>)> = {
            let mut w = self.worker.borrow_mut();
            w.sketches.iter_mut().map(|s| s.drain()).collect()
        };
        for (rule, (total, entries)) in plan.rules.iter().zip(drained) {
            if total == 0 {
                continue;
            }
            let mut bad = false;
            let r = update(&HostStore, &view_key(&rule.name), 8, |cur| {
                let mut v = match cur {
                    None => View::default(),
                    Some(b) => View::decode(b).unwrap_or_else(|| {
                        bad = true;
                        View::default()
                    }),
                };
                v.merge(
                    epoch,
                    total,
                    &entries,
                    rule.window_buckets,
                    plan.view_entries,
                );
                Step::Write(v.encode(), ())
            });
            if bad {
                self.metrics.bad_state.inc();
            }
            if !matches!(r, sg_core::shared::Update::Done { .. }) {
                self.metrics.view_cas_giveup.inc();
            }
        }
    }

    fn read_shed() -> Option<(u64, Vec<ShedEntry>)> {
        let v = HostStore.get(SHED_KEY).ok()?;
        shed::decode(v.value.as_deref()?)
    }

    /// Leader only: evaluate every rule's view and publish the hot set.
    fn detect_and_publish(&mut self, plan: &Plan, now: u64, epoch: u64, became_leader: bool) {
        if became_leader {
            // Continue from what the previous leader published.
            let published = Self::read_shed().map(|x| x.1).unwrap_or_default();
            for (i, d) in self.detectors.iter_mut().enumerate() {
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
            let view = HostStore
                .get(&view_key(&rule.name))
                .ok()
                .and_then(|v| v.value)
                .and_then(|b| View::decode(&b))
                .unwrap_or_default();
            // The bucket being filled now is partial: evaluate the window of complete ones.
            let (total, rates) =
                view.rates(epoch.saturating_sub(1), rule.window_buckets, plan.tick_ms);
            if let Some(recent) = self.recent_top.get_mut(i) {
                let top5 = rates
                    .iter()
                    .take(5)
                    .map(|r| (lossy(&r.key), r.milli_rps))
                    .collect();
                recent.push_back((now, top5));
                while recent
                    .front()
                    .is_some_and(|(t, _)| t.saturating_add(TOP_WINDOW_MS) < now)
                {
                    recent.pop_front();
                }
            }
            let Some(det) = self.detectors.get_mut(i) else {
                continue;
            };
            for ev in det.update(now, total, &rates, &rule.thresholds) {
                match ev {
                    Event::Enter { key, milli_rps, .. } => {
                        self.metrics.detections.inc();
                        enters.push((rule.name.clone(), lossy(&key), milli_rps, i));
                    }
                    Event::Exit { key, .. } => {
                        log::info!(
                            "hotkey: rule={} key={:?} cooled down; shedding stopped",
                            rule.name,
                            String::from_utf8_lossy(&key)
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
            let top = self.recent_top.get(i).map(top_of).unwrap_or_default();
            self.alert(
                &rule,
                &key,
                milli_rps,
                "hot key: shedding started",
                now,
                top,
            );
        }
        self.metrics.hot_keys.set(entries.len() as u64);
        let _ = update(&HostStore, SHED_KEY, 8, |cur| {
            let seq = cur
                .and_then(shed::decode)
                .map_or(0, |x| x.0)
                .wrapping_add(1);
            Step::Write(shed::encode(seq, &entries), ())
        });
        // For `simplepage`: the hot keys of `divert` rules, by rule name (rewritten only when
        // they change, so readers can skip an unchanged version).
        let _ = update(&HostStore, DIVERT_KEY, 8, |cur| {
            let old = cur.and_then(|b| decode_list(b, shed::MAX_ENTRIES));
            match old {
                Some((_, l)) if l == divert => Step::Keep(()),
                o => Step::Write(
                    encode_list(o.map_or(0, |x| x.0).wrapping_add(1), &divert),
                    (),
                ),
            }
        });
    }

    /// Every worker: refresh the local copy of the hot set when it changed.
    fn refresh_hot(&self) {
        let Some((seq, entries)) = Self::read_shed() else {
            return;
        };
        let mut w = self.worker.borrow_mut();
        if w.shed_seq == Some(seq) {
            return;
        }
        let mut hot = HashMap::with_capacity(entries.len());
        for e in entries {
            let id = (e.rule, e.hot.fp);
            let credit = w.hot.get(&id).map_or(0, |h| h.credit);
            hot.insert(
                id,
                HotLocal {
                    milli_rps: e.hot.milli_rps,
                    credit,
                },
            );
        }
        w.hot = hot;
        w.shed_seq = Some(seq);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let plan = match Config::parse(&plugin_config()) {
            Ok(p) => p,
            Err(e) => {
                log::error!("{FILTER}: {e}");
                return false;
            }
        };
        {
            let mut w = self.worker.borrow_mut();
            w.sketches = plan
                .rules
                .iter()
                .map(|_| SpaceSaving::new(plan.sketch_capacity))
                .collect();
            w.hot.clear();
            w.shed_seq = None;
        }
        self.detectors = plan.rules.iter().map(|_| Detector::new()).collect();
        self.recent_top = plan.rules.iter().map(|_| VecDeque::new()).collect();
        self.ops = Some(Ops::new(FILTER, plan.operator.as_ref(), &plan.alert));
        self.lead = Leadership::default();
        if hostcalls::set_tick_period(Duration::from_millis(plan.tick_ms)).is_err() {
            log::warn!("{FILTER}: could not set the tick period; no detection on this worker");
        }
        self.metrics.flush();
        self.metrics = Rc::new(Metrics::define(&plan));
        log::info!(
            "{FILTER}: configured {} rules, tick {} ms",
            plan.rules.len(),
            plan.tick_ms
        );
        self.plan = Some(Rc::new(plan));
        true
    }

    fn on_tick(&mut self) {
        let Some(plan) = self.plan.clone() else {
            return;
        };
        let now = now_ms();
        let epoch = now / plan.tick_ms.max(1);
        self.merge_counts(&plan, epoch);
        let lead = self
            .lead
            .tick(&HostStore, FILTER, now, plan.tick_ms.saturating_mul(3));
        if let Some(became) = lead {
            self.detect_and_publish(&plan, now, epoch, became);
            if let Some(ops) = self.ops.as_mut() {
                ops.poll(plan.operator.as_ref(), now, &self.metrics.ops());
            }
        }
        self.refresh_hot();
        self.refresh_list(&plan);
        self.metrics.flush();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            plan: self.plan.clone(),
            worker: self.worker.clone(),
            metrics: self.metrics.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    plan: Option<Rc<Plan>>,
    worker: SharedWorker,
    metrics: Rc<Metrics>,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> HostAction {
        let Some(plan) = self.plan.clone() else {
            return HostAction::Continue;
        };
        let req = HostRequest::default();
        let route = route_name_if(plan.needs_route);
        let mut now: Option<u64> = None;
        for (i, rule) in plan.rules.iter().enumerate() {
            if !rule.matcher.matches_request(&req, route.as_deref()) {
                continue;
            }
            let m = self.metrics.rules.get(i);
            let Some(key) = rule.key.key(&req) else {
                if let Some(m) = m {
                    m.no_key.inc();
                }
                continue;
            };
            let fp = hash64(rule.name.as_bytes(), &key);
            let rule_idx = u16::try_from(i).unwrap_or(u16::MAX);
            let list = self
                .worker
                .try_borrow()
                .map(|w| w.list.clone())
                .unwrap_or_default();
            let blocked = rule.block.iter().any(|(k, exp)| {
                k.as_slice() == key.as_slice()
                    && exp.is_none_or(|e| *now.get_or_insert_with(now_ms) < e)
            }) || (!list.entries.is_empty()
                && list.blocks_key(&rule.name, &key, *now.get_or_insert_with(now_ms)));
            let decision = {
                let Ok(mut w) = self.worker.try_borrow_mut() else {
                    return HostAction::Continue;
                };
                if let Some(s) = w.sketches.get_mut(i) {
                    s.add(fp, &key, 1);
                }
                let mut credit = 0;
                let hot = w.hot.get(&(rule_idx, fp)).map(|h| {
                    credit = h.credit;
                    h.milli_rps
                });
                let d = decide(rule, &key, blocked, hot, &mut credit);
                if let Some(h) = w.hot.get_mut(&(rule_idx, fp)) {
                    h.credit = credit;
                }
                d
            };
            if let Some(m) = m {
                m.seen.inc();
                if matches!(
                    decision,
                    Decision::Observe(Cause::Blocked)
                        | Decision::Reject {
                            cause: Cause::Blocked,
                            ..
                        }
                        | Decision::Redirect {
                            cause: Cause::Blocked,
                            ..
                        }
                        | Decision::Divert {
                            cause: Cause::Blocked,
                            ..
                        }
                ) {
                    m.blocked.inc();
                }
            }
            match decision {
                Decision::Pass => {}
                Decision::Observe(_) => {
                    if let Some(m) = m {
                        m.observed.inc();
                    }
                }
                Decision::Divert { header, .. } => {
                    if let Some(m) = m {
                        m.diverted.inc();
                    }
                    // Only reads go to the read-only simple page; `simplepage` applies its
                    // own rules to the published key.
                    if let Some(h) = header {
                        if matches!(req.method(), "GET" | "HEAD") {
                            set_header(REQUEST_HEADERS, &h, &rule.name);
                            set_header(REQUEST_HEADERS, "x-spikeguard-action", FILTER);
                        }
                    }
                }
                Decision::Reject {
                    status,
                    body,
                    retry_after_s,
                    ..
                } => {
                    if let Some(m) = m {
                        m.shed.inc();
                    }
                    let retry = retry_after_s.to_string();
                    let headers = [
                        ("content-type", "text/plain"),
                        ("retry-after", retry.as_str()),
                        ("x-spikeguard-action", FILTER),
                    ];
                    if send_reply(status, &headers, body.as_bytes()) {
                        return HostAction::Pause;
                    }
                }
                Decision::Redirect {
                    status, location, ..
                } => {
                    if let Some(m) = m {
                        m.shed.inc();
                    }
                    let headers = [
                        ("location", location.as_str()),
                        ("x-spikeguard-action", FILTER),
                    ];
                    if send_reply(status, &headers, b"") {
                        return HostAction::Pause;
                    }
                }
            }
        }
        HostAction::Continue
    }
}
