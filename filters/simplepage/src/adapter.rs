//! The proxy-wasm adapter for `simplepage`. Request path: match the rule, gather the
//! triggers from the worker's copies of the published state (hot keys from `hotkey`, the
//! operator list, overload), check the safety rules, then serve from the micro-cache, mark
//! the request for the `simple_page` route, or redirect. Response path: tag simple pages,
//! fill the cache, replace a backend error with a stale copy, time the main backend.
//! Tick: merge this worker's tallies, refresh the copies; the lease holder evaluates
//! overload, polls the operator list and sends the alerts.

use crate::cache::{self, Entry, Lock, State};
use crate::config::{Config, DivertConfig, Plan, Rule};
use crate::decide::{eligible, is_probe, redirect_location, trigger, Signals, Trigger};
use crate::inbound::{Inbound, MAX_URLS};
use crate::overload::{decode_state, encode_state, Change, Detector, LoadWindow, Reason, Tally};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as HostAction, ContextType, LogLevel};
use sg_core::alert::Alert;
use sg_core::codec::{Reader, Writer};
use sg_core::hash::{hash64, slot_of};
use sg_core::host::{
    get_buffer, get_header, header_pairs, now_ms, plugin_config, remove_header, reply_for,
    resume_request_of, route_name_if, send_reply, set_buffer, set_header, Counter, Gauge,
    HostRequest, HostStore, REQUEST_HEADERS, RESPONSE_BODY, RESPONSE_HEADERS,
};
use sg_core::key::RequestView;
use sg_core::lease::Leadership;
use sg_core::metrics::{filter_metric, rule_metric};
use sg_core::oplist::{decode_list, encode_list, List, PollOutcome};
use sg_core::ops::{Answer, Ops, OpsMetrics};
use sg_core::shared::{update, SharedStore, Step};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

const FILTER: &str = "simplepage";
/// Hot keys of `hotkey`'s divert rules (written by `hotkey`).
const HOTKEY_DIVERT_KEY: &str = "sg:hk:divert";
/// The operator list, published by the lease holder's poller.
const OPLIST_KEY: &str = "sg:sp:oplist";
/// Overload state per rule, published by the lease holder.
const STATE_KEY: &str = "sg:sp:state";
/// Diverted requests of the current alert period: count and top URLs.
const INBOUND_KEY: &str = "sg:sp:inbound";
/// Bytes held in cache slots.
const CACHE_BYTES_KEY: &str = "sg:sp:cbytes";
const MAX_URL_BYTES: usize = 256;
/// Requests of one worker waiting for a cache fill at most (more go to the backend).
const MAX_WAITERS: usize = 4096;
/// Tick while any rule's cache has a lock: waiters are answered within this.
const FAST_TICK_MS: u64 = 10;

fn load_key(rule: &str) -> String {
    format!("sg:sp:{rule}:load")
}
fn slot_key(slot: u32) -> String {
    format!("sg:sp:c:{slot}")
}
fn lock_key(slot: u32) -> String {
    format!("sg:sp:l:{slot}")
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct RuleMetrics {
    seen: Counter,
    /// hotkey, operator, overload, always (see `Trigger::index`).
    diverted: [Counter; 4],
    excluded: Counter,
    probes: Counter,
}

#[derive(Default)]
struct Metrics {
    rules: Vec<RuleMetrics>,
    cache_hit: Counter,
    cache_miss: Counter,
    cache_stale: Counter,
    cache_stale_if_error: Counter,
    cache_refresh: Counter,
    cache_fill: Counter,
    cache_not_cacheable: Counter,
    cache_write_failed: Counter,
    cache_slot_busy: Counter,
    cache_wait_hit: Counter,
    cache_wait_timeout: Counter,
    cache_wait_released: Counter,
    overload_events: Counter,
    operator_applied: Counter,
    operator_errors: Counter,
    alerts: Counter,
    webhook_errors: Counter,
    bad_state: Counter,
    cache_bytes: Gauge,
    overloaded: Gauge,
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
        let f = |what: &str| Counter::define(&filter_metric(FILTER, what));
        Metrics {
            rules: plan
                .rules
                .iter()
                .map(|x| RuleMetrics {
                    seen: r(&x.name, "seen"),
                    diverted: [
                        r(&x.name, "diverted_hotkey"),
                        r(&x.name, "diverted_operator"),
                        r(&x.name, "diverted_overload"),
                        r(&x.name, "diverted_always"),
                    ],
                    excluded: r(&x.name, "excluded"),
                    probes: r(&x.name, "probes"),
                })
                .collect(),
            cache_hit: f("cache_hit"),
            cache_miss: f("cache_miss"),
            cache_stale: f("cache_stale"),
            cache_stale_if_error: f("cache_stale_if_error"),
            cache_refresh: f("cache_refresh"),
            cache_fill: f("cache_fill"),
            cache_not_cacheable: f("cache_not_cacheable"),
            cache_write_failed: f("cache_write_failed"),
            cache_slot_busy: f("cache_slot_busy"),
            cache_wait_hit: f("cache_wait_hit"),
            cache_wait_timeout: f("cache_wait_timeout"),
            cache_wait_released: f("cache_wait_released"),
            overload_events: f("overload_events"),
            operator_applied: f("operator_applied"),
            operator_errors: f("operator_errors"),
            alerts: f("alerts"),
            webhook_errors: f("webhook_errors"),
            bad_state: f("bad_state"),
            cache_bytes: Gauge::define(&filter_metric(FILTER, "cache_bytes")),
            overloaded: Gauge::define(&filter_metric(FILTER, "overloaded_rules")),
        }
    }

    fn flush(&self) {
        for r in &self.rules {
            r.seen.flush();
            r.excluded.flush();
            r.probes.flush();
            for c in &r.diverted {
                c.flush();
            }
        }
        for c in [
            &self.cache_hit,
            &self.cache_miss,
            &self.cache_stale,
            &self.cache_stale_if_error,
            &self.cache_refresh,
            &self.cache_fill,
            &self.cache_not_cacheable,
            &self.cache_write_failed,
            &self.cache_slot_busy,
            &self.cache_wait_hit,
            &self.cache_wait_timeout,
            &self.cache_wait_released,
            &self.overload_events,
            &self.operator_applied,
            &self.operator_errors,
            &self.alerts,
            &self.webhook_errors,
            &self.bad_state,
        ] {
            c.flush();
        }
    }
}

/// This worker's copies of the published state, and its tallies of the current tick.
#[derive(Default)]
struct Worker {
    hot: Rc<List>,
    hot_hash: u64,
    list: Rc<List>,
    list_hash: u64,
    /// Per rule index.
    overloaded: Vec<Option<Reason>>,
    tallies: Vec<Tally>,
    probe_n: u64,
    inbound: u64,
    urls: HashMap<String, u64>,
    /// Requests paused until the page they miss is filled by another request.
    waiters: Vec<Waiter>,
}

/// A request waiting for a cache fill (nginx `proxy_cache_lock`).
struct Waiter {
    id: u32,
    slot: u32,
    fp: u64,
    key: Vec<u8>,
    /// Response header value when answered from the cache.
    why: String,
    deadline_ms: u64,
}

type SharedWorker = Rc<RefCell<Worker>>;

#[derive(Default)]
struct Root {
    plan: Option<Rc<Plan>>,
    worker: SharedWorker,
    metrics: Rc<Metrics>,
    lead: Leadership,
    detectors: Vec<Detector>,
    ops: Option<Ops>,
    inbound_period_start: u64,
    /// The periodic work runs every `tick_ms`; the timer may tick faster for waiters.
    next_work_ms: u64,
}

// ---- root context -----------------------------------------------------------------------

impl Context for Root {
    fn on_http_call_response(&mut self, token: u32, _h: usize, body_size: usize, _t: usize) {
        let now = now_ms();
        let metrics = self.metrics.clone();
        let Some(ops) = self.ops.as_mut() else {
            return;
        };
        if let Answer::Poll(PollOutcome::Applied { entries }) =
            ops.on_response(token, body_size, now, &metrics.ops())
        {
            if let Some(poller) = ops.poller.as_ref() {
                metrics.operator_applied.inc();
                let bytes = encode_list(poller.version(), poller.list());
                let _ = update(&HostStore, OPLIST_KEY, 8, |_| {
                    Step::Write(bytes.clone(), ())
                });
                log::info!("{FILTER}: operator list applied ({entries} entries)");
            }
        }
    }
}

impl Root {
    /// A structured log line and, if configured, a webhook POST; de-duplicated per
    /// (rule, key) for `alert.cooldown_ms` unless `always`.
    #[allow(clippy::too_many_arguments)]
    fn alert(
        &mut self,
        plan: &Plan,
        rule: &str,
        key: &str,
        milli_rps: u64,
        reason: String,
        top: Vec<(String, u64)>,
        now: u64,
        always: bool,
    ) {
        let Some(ops) = self.ops.as_mut() else {
            return;
        };
        let a = Alert {
            filter: FILTER.to_string(),
            rule: rule.to_string(),
            key: key.to_string(),
            milli_rps,
            reason,
            top,
            now_ms: now,
        };
        ops.alert(&plan.alert, &a, !always, &self.metrics.ops());
    }

    /// Every tick: answer the requests waiting for a fill from the cache once it is there;
    /// send those whose wait is over to the backend.
    fn answer_waiters(&self, now: u64) {
        let waiters = {
            let mut w = self.worker.borrow_mut();
            if w.waiters.is_empty() {
                return;
            }
            std::mem::take(&mut w.waiters)
        };
        let read = |key: String| HostStore.get(&key).ok().and_then(|v| v.value);
        let mut slots: HashMap<u32, (Option<Entry>, Option<Lock>)> = HashMap::new();
        let mut keep = Vec::new();
        for wt in waiters {
            let (entry, lock) = slots.entry(wt.slot).or_insert_with(|| {
                (
                    read(slot_key(wt.slot)).and_then(|b| Entry::decode(&b)),
                    read(lock_key(wt.slot)).and_then(|b| Lock::decode(&b)),
                )
            });
            // The fetch this request waits for is over (or its lock was lost to another
            // page of the slot) without a usable copy: go to the backend now.
            let fetch_over = !lock
                .as_ref()
                .is_some_and(|l| l.key_fp == wt.fp && l.until_ms != 0);
            let timed_out = now >= wt.deadline_ms
                || lock
                    .as_ref()
                    .is_some_and(|l| l.key_fp == wt.fp && l.until_ms != 0 && l.until_ms <= now);
            match entry
                .as_ref()
                .filter(|e| e.key == wt.key && e.state(now) != State::Expired)
            {
                Some(e) => {
                    let headers = reply_headers(e, &wt.why, now, &self.response_header());
                    let h: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    if reply_for(wt.id, 200, &h, &e.body) {
                        self.metrics.cache_wait_hit.inc();
                    }
                }
                None if timed_out => {
                    self.metrics.cache_wait_timeout.inc();
                    let _ = resume_request_of(wt.id);
                }
                None if fetch_over => {
                    self.metrics.cache_wait_released.inc();
                    let _ = resume_request_of(wt.id);
                }
                None => keep.push(wt),
            }
        }
        self.worker.borrow_mut().waiters.extend(keep);
    }

    fn response_header(&self) -> String {
        self.plan
            .as_ref()
            .map_or_else(String::new, |p| p.response_header.clone())
    }

    /// Every worker: merge this tick's load tallies and inbound counts into shared data.
    fn merge(&self, plan: &Plan, epoch: u64) {
        let (tallies, inbound, urls) = {
            let mut w = self.worker.borrow_mut();
            let t: Vec<Tally> = w.tallies.iter_mut().map(std::mem::take).collect();
            (
                t,
                std::mem::take(&mut w.inbound),
                std::mem::take(&mut w.urls),
            )
        };
        for (rule, t) in plan.rules.iter().zip(tallies.iter()) {
            let Some(o) = &rule.overload else {
                continue;
            };
            if t.is_empty() {
                continue;
            }
            let _ = update(&HostStore, &load_key(&rule.name), 8, |cur| {
                let mut v = cur.and_then(LoadWindow::decode).unwrap_or_default();
                v.merge(epoch, t, o.window_ticks + 2);
                Step::Write(v.encode(), ())
            });
        }
        if inbound > 0 {
            let _ = update(&HostStore, INBOUND_KEY, 8, |cur| {
                let mut v = cur.and_then(Inbound::decode).unwrap_or_default();
                v.add(inbound, &urls);
                Step::Write(v.encode(), ())
            });
        }
    }

    /// Lease holder: overload detection per rule, published when it changes.
    fn evaluate(&mut self, plan: &Plan, now: u64, epoch: u64, became: bool) {
        if became {
            let published = HostStore
                .get(STATE_KEY)
                .ok()
                .and_then(|v| v.value)
                .and_then(|b| decode_state(&b))
                .unwrap_or_default();
            self.detectors = plan
                .rules
                .iter()
                .map(|r| {
                    published
                        .iter()
                        .find(|(n, _, _)| *n == r.name)
                        .map_or_else(Detector::default, |(_, reason, since)| {
                            Detector::restored(*reason, *since)
                        })
                })
                .collect();
        }
        let mut changed = became;
        let mut events = Vec::new();
        for (i, rule) in plan.rules.iter().enumerate() {
            let Some(o) = &rule.overload else {
                continue;
            };
            let window = HostStore
                .get(&load_key(&rule.name))
                .ok()
                .and_then(|v| v.value)
                .and_then(|b| LoadWindow::decode(&b))
                .unwrap_or_default();
            // The bucket being filled now is partial: judge the complete ones.
            let t = window.sum(epoch.saturating_sub(1), o.window_ticks);
            let Some(d) = self.detectors.get_mut(i) else {
                continue;
            };
            if let Some(ch) = d.update(now, &t, &o.settings) {
                changed = true;
                events.push((rule.name.clone(), ch, t));
            }
        }
        for (name, ch, t) in events {
            let window_ms = plan
                .rules
                .iter()
                .find(|r| r.name == name)
                .and_then(|r| r.overload.as_ref())
                .map_or(1000, |o| o.settings.window_ms.max(1));
            let rate = t.requests.saturating_mul(1_000_000) / window_ms;
            let p99 = t.p99_ms().map_or("none".to_string(), |p| p.to_string());
            let facts = format!(
                "{} requests, {} to the main backend, {} errors, p99 <= {p99} ms in {window_ms} ms",
                t.requests, t.samples, t.errors
            );
            match ch {
                Change::Started(r) => {
                    self.metrics.overload_events.inc();
                    let reason = format!(
                        "main backend overloaded ({}): diverting to the simple page; {facts}",
                        r.as_str()
                    );
                    self.alert(
                        plan,
                        &name,
                        "overload",
                        rate,
                        reason,
                        Vec::new(),
                        now,
                        false,
                    );
                }
                Change::Ended => {
                    log::info!("{FILTER}: rule={name} overload over, main backend back; {facts}");
                }
            }
        }
        let on: Vec<(String, Reason, u64)> = plan
            .rules
            .iter()
            .zip(self.detectors.iter())
            .filter_map(|(r, d)| d.on.map(|reason| (r.name.clone(), reason, d.since_ms)))
            .collect();
        self.metrics.overloaded.set(on.len() as u64);
        if changed {
            let bytes = encode_state(&on);
            let _ = update(&HostStore, STATE_KEY, 8, |_| Step::Write(bytes.clone(), ()));
        }
    }

    /// Lease holder: the periodic "simple page inbound" alert, while anything was diverted.
    fn inbound_alert(&mut self, plan: &Plan, now: u64) {
        if self.inbound_period_start == 0 {
            self.inbound_period_start = now;
            return;
        }
        if now.saturating_sub(self.inbound_period_start) < plan.inbound_alert_ms {
            return;
        }
        let period_ms = now.saturating_sub(self.inbound_period_start).max(1);
        self.inbound_period_start = now;
        let taken = update(&HostStore, INBOUND_KEY, 8, |cur| {
            let v = cur.and_then(Inbound::decode).unwrap_or_default();
            Step::Write(
                Inbound {
                    period: now,
                    ..Inbound::default()
                }
                .encode(),
                v,
            )
        });
        let sg_core::shared::Update::Done { result: v, .. } = taken else {
            return;
        };
        if v.count == 0 {
            return;
        }
        let top = v
            .urls
            .iter()
            .take(5)
            .map(|(u, c)| (u.clone(), c.saturating_mul(1_000_000) / period_ms))
            .collect();
        let reason = format!(
            "simple page inbound: {} requests diverted in the last {} s",
            v.count,
            period_ms / 1000
        );
        let rate = v.count.saturating_mul(1_000_000) / period_ms;
        self.alert(plan, "*", "inbound", rate, reason, top, now, true);
    }

    /// Every worker: pick up new published state.
    fn refresh(&self, plan: &Plan) {
        let read = |key: &str| HostStore.get(key).ok().and_then(|v| v.value);
        let max = plan.operator.as_ref().map_or(1000, |o| o.max_entries);
        let mut w = self.worker.borrow_mut();
        if plan.rules.iter().any(|r| r.hotkey_rule.is_some()) {
            match read(HOTKEY_DIVERT_KEY) {
                Some(b) => {
                    let h = hash64(b"hk", &b);
                    if h != w.hot_hash {
                        match decode_list(&b, 4096) {
                            Some((_, l)) => {
                                w.hot = Rc::new(l);
                                w.hot_hash = h;
                            }
                            None => self.metrics.bad_state.inc(),
                        }
                    }
                }
                None => w.hot = Rc::new(List::default()),
            }
        }
        if plan.operator.is_some() {
            if let Some(b) = read(OPLIST_KEY) {
                let h = hash64(b"op", &b);
                if h != w.list_hash {
                    match decode_list(&b, max) {
                        Some((_, l)) => {
                            w.list = Rc::new(l);
                            w.list_hash = h;
                        }
                        None => self.metrics.bad_state.inc(),
                    }
                }
            }
        }
        if plan.rules.iter().any(|r| r.overload.is_some()) {
            let state = read(STATE_KEY)
                .and_then(|b| decode_state(&b))
                .unwrap_or_default();
            w.overloaded = plan
                .rules
                .iter()
                .map(|r| {
                    state
                        .iter()
                        .find(|(n, _, _)| *n == r.name)
                        .map(|(_, reason, _)| *reason)
                })
                .collect();
        }
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
            w.overloaded = vec![None; plan.rules.len()];
            w.tallies = vec![Tally::default(); plan.rules.len()];
        }
        self.detectors = plan.rules.iter().map(|_| Detector::default()).collect();
        self.ops = Some(Ops::new(FILTER, plan.operator.as_ref(), &plan.alert));
        self.lead = Leadership::default();
        self.inbound_period_start = 0;
        let locks = plan
            .rules
            .iter()
            .any(|r| r.cache.as_ref().is_some_and(|c| c.lock_timeout_ms > 0));
        let period = if locks { FAST_TICK_MS } else { plan.tick_ms };
        self.next_work_ms = 0;
        if hostcalls::set_tick_period(Duration::from_millis(period)).is_err() {
            log::warn!("{FILTER}: could not set the tick period; state will not refresh");
        }
        self.metrics.flush();
        self.metrics = Rc::new(Metrics::define(&plan));
        log::info!(
            "{FILTER}: configured {} rules, tick {} ms, cache {} slots x {} bytes",
            plan.rules.len(),
            plan.tick_ms,
            plan.slots,
            plan.max_body_bytes
        );
        self.plan = Some(Rc::new(plan));
        true
    }

    fn on_tick(&mut self) {
        let Some(plan) = self.plan.clone() else {
            return;
        };
        let now = now_ms();
        self.answer_waiters(now);
        if now < self.next_work_ms {
            return;
        }
        self.next_work_ms = now
            .saturating_add(plan.tick_ms)
            .saturating_sub(FAST_TICK_MS / 2);
        let epoch = now / plan.tick_ms.max(1);
        self.merge(&plan, epoch);
        let lead = self
            .lead
            .tick(&HostStore, FILTER, now, plan.tick_ms.saturating_mul(3));
        if let Some(became) = lead {
            self.evaluate(&plan, now, epoch, became);
            if let Some(ops) = self.ops.as_mut() {
                ops.poll(plan.operator.as_ref(), now, &self.metrics.ops());
            }
            self.inbound_alert(&plan, now);
            let bytes = HostStore
                .get(CACHE_BYTES_KEY)
                .ok()
                .and_then(|v| v.value)
                .and_then(|b| Reader::new(&b).u64());
            self.metrics.cache_bytes.set(bytes.unwrap_or(0));
        }
        self.refresh(&plan);
        self.metrics.flush();
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            id,
            plan: self.plan.clone(),
            worker: self.worker.clone(),
            metrics: self.metrics.clone(),
            state: Stream::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Takes the slot's lock for page `fp` for `ms` (one backend request per page per lock);
/// false when another request of this page holds it, or shared data fails.
fn take_slot_lock(slot: u32, fp: u64, now: u64, ms: u64) -> bool {
    let r = update(
        &HostStore,
        &lock_key(slot),
        4,
        |cur| match cache::take_lock(cur.and_then(Lock::decode), fp, now, ms) {
            Some(l) => Step::Write(l.encode(), true),
            None => Step::Keep(false),
        },
    );
    matches!(r, sg_core::shared::Update::Done { result: true, .. })
}

/// Headers of a reply from the cache: the kept ones, `age`, and why it is a simple page.
fn reply_headers(e: &Entry, why: &str, now: u64, response_header: &str) -> Vec<(String, String)> {
    let mut h = e.headers.clone();
    h.push(("age".to_string(), e.age_s(now).to_string()));
    h.push((response_header.to_string(), why.to_string()));
    h
}

// ---- stream context ----------------------------------------------------------------------

/// What a stream remembers between its callbacks.
#[derive(Default)]
struct Stream {
    /// Diverted: the trigger (the response is tagged).
    diverted: Option<Trigger>,
    /// Going to the main backend and timed: (rule index, start ms).
    timed: Option<(usize, u64)>,
    /// Cache work for the response: fill the slot, or fall back to a stale copy on error.
    cache: Option<CacheJob>,
    /// The response is being replaced by this stale body.
    replace_body: Option<Vec<u8>>,
    /// Collecting the response body for the cache, within these windows.
    filling: Option<Filling>,
    /// The fill lock this stream holds for a missing page: (slot, key fingerprint).
    lock: Option<(u32, u64)>,
}

struct CacheJob {
    rule: usize,
    /// Only a GET's answer fills the cache (a HEAD's has no body).
    fill: bool,
    key: Vec<u8>,
    slot: u32,
    stale: Option<Entry>,
}

struct Filling {
    key: Vec<u8>,
    slot: u32,
    windows: cache::Windows,
    headers: Vec<(String, String)>,
    max_body: usize,
}

struct Http {
    id: u32,
    plan: Option<Rc<Plan>>,
    worker: SharedWorker,
    metrics: Rc<Metrics>,
    state: Stream,
}

impl Context for Http {}

impl Http {
    fn signals(&self, rule: &Rule, i: usize, req: &HostRequest) -> Signals {
        let w = self.worker.borrow();
        // The key is extracted only when a published list could name it.
        let wanted = (rule.operator && !w.list.entries.is_empty())
            || (rule.hotkey_rule.is_some() && !w.hot.entries.is_empty());
        let key = if wanted {
            rule.key.as_ref().and_then(|k| k.key(req))
        } else {
            None
        };
        let mut s = Signals {
            always: rule.always,
            ..Signals::default()
        };
        if rule.operator && !w.list.entries.is_empty() {
            let now = now_ms();
            // Normalised (percent-decoded, `//` and trailing `/` folded) so `/PostList//42/`
            // or `/Post%4Cist/42` cannot escape a `/PostList/42` entry.
            let (path_only, _) = sg_core::normalize::split_path(req.path());
            let norm = sg_core::normalize::normalize_path(path_only);
            let norm = String::from_utf8_lossy(&norm);
            s.listed = w.list.blocks_path(&rule.name, &norm, now)
                || key
                    .as_deref()
                    .is_some_and(|k| w.list.blocks_key(&rule.name, k, now));
        }
        if let (Some(hk), Some(k)) = (rule.hotkey_rule.as_deref(), key.as_deref()) {
            if !w.hot.entries.is_empty() {
                s.hot = w.hot.blocks_key(hk, k, u64::MAX - 1);
            }
        }
        s.overloaded = w.overloaded.get(i).copied().flatten();
        s
    }

    /// A response served from the cache (hit or stale).
    fn serve(&self, e: &Entry, why: &str, now: u64) -> bool {
        let plan = match &self.plan {
            Some(p) => p.clone(),
            None => return false,
        };
        let headers = reply_headers(e, why, now, &plan.response_header);
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        send_reply(200, &h, &e.body)
    }

    /// Answered from the cache: the local reply passes through this filter's response
    /// callbacks, which must leave it alone.
    fn served(&mut self) -> Option<HostAction> {
        self.state.diverted = None;
        self.state.cache = None;
        Some(HostAction::Pause)
    }

    /// The cache part of a diverted request. Some(action) when answered from the proxy.
    fn cache_request(
        &mut self,
        plan: &Plan,
        i: usize,
        rule: &Rule,
        trig: Trigger,
        req: &HostRequest,
    ) -> Option<HostAction> {
        let c = rule.cache.as_ref()?;
        let mut key = Vec::with_capacity(rule.name.len() + 1 + req.path().len());
        key.extend_from_slice(rule.name.as_bytes());
        key.push(0);
        key.extend_from_slice(req.host().as_bytes());
        key.extend_from_slice(req.path().as_bytes());
        if key.len() > cache::MAX_KEY_BYTES {
            return None;
        }
        let fp = hash64(b"sg-sp-cache", &key);
        let slot = slot_of(fp, plan.slots);
        let now = now_ms();
        let entry = HostStore
            .get(&slot_key(slot))
            .ok()
            .and_then(|v| v.value)
            .and_then(|b| Entry::decode(&b))
            .filter(|e| e.key == key);
        let state = entry.as_ref().map_or(State::Expired, |e| e.state(now));
        let why = |c: &str| format!("{}; cache={c}", trig.as_str());
        match (state, &entry) {
            (State::Fresh, Some(e)) => {
                if self.serve(e, &why("hit"), now) {
                    self.metrics.cache_hit.inc();
                    return self.served();
                }
            }
            (State::StaleWhileRevalidate, Some(e)) => {
                let won = take_slot_lock(slot, fp, now, c.refresh_interval_ms);
                if !won {
                    if self.serve(e, &why("stale"), now) {
                        self.metrics.cache_stale.inc();
                        return self.served();
                    }
                } else {
                    self.metrics.cache_refresh.inc();
                }
            }
            _ => {
                // A page not in the cache: one request fetches it, the others wait for it.
                if c.lock_timeout_ms > 0 {
                    let won = take_slot_lock(slot, fp, now, c.lock_timeout_ms);
                    if won {
                        // Released when this stream ends (filled or not), so waiters never
                        // wait longer than the fetch.
                        self.state.lock = Some((slot, fp));
                    }
                    let mut w = self.worker.borrow_mut();
                    if !won && w.waiters.len() < MAX_WAITERS {
                        w.waiters.push(Waiter {
                            id: self.id,
                            slot,
                            fp,
                            key: key.clone(),
                            why: why("hit"),
                            deadline_ms: now.saturating_add(c.lock_timeout_ms),
                        });
                        // If the wait times out, the request goes on as a miss (tagged,
                        // and its answer may fill the cache).
                        self.state.cache = Some(CacheJob {
                            rule: i,
                            fill: req.method() == "GET",
                            key,
                            slot,
                            stale: None,
                        });
                        return Some(HostAction::Pause);
                    }
                }
                self.metrics.cache_miss.inc();
            }
        }
        // To the backend: fill the cache with the answer; keep a stale copy for errors.
        let stale = entry.filter(|e| e.state(now) != State::Expired);
        self.state.cache = Some(CacheJob {
            rule: i,
            fill: req.method() == "GET",
            key,
            slot,
            stale,
        });
        None
    }

    fn store(&self, f: &Filling, body: Vec<u8>) {
        let entry = Entry {
            key: f.key.clone(),
            stored_ms: now_ms(),
            windows: f.windows,
            headers: f.headers.clone(),
            body,
        };
        let bytes = entry.encode();
        let new_len = bytes.len() as u64;
        let now = entry.stored_ms;
        // A slot holding another page that is still fresh keeps it (no thrashing between two
        // pages of one slot); the newcomer gets the slot once that page goes stale.
        let r = update(&HostStore, &slot_key(f.slot), 4, |cur| {
            let busy = cur
                .and_then(Entry::decode)
                .is_some_and(|e| e.key != f.key && e.state(now) == State::Fresh);
            if busy {
                Step::Keep(None)
            } else {
                Step::Write(bytes.clone(), Some(cur.map_or(0, |c| c.len() as u64)))
            }
        });
        match r {
            sg_core::shared::Update::Done { result: None, .. } => {
                self.metrics.cache_slot_busy.inc();
            }
            sg_core::shared::Update::Done {
                result: Some(old), ..
            } => {
                self.metrics.cache_fill.inc();
                if old != new_len {
                    let _ = update(&HostStore, CACHE_BYTES_KEY, 8, |cur| {
                        let v = cur.and_then(|b| Reader::new(b).u64()).unwrap_or(0);
                        let n = v.saturating_add(new_len).saturating_sub(old);
                        let mut w = Writer::with_capacity(8);
                        w.u64(n);
                        Step::Write(w.finish(), ())
                    });
                }
            }
            _ => self.metrics.cache_write_failed.inc(),
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> HostAction {
        let Some(plan) = self.plan.clone() else {
            return HostAction::Continue;
        };
        let req = HostRequest::default();
        let route = route_name_if(plan.needs_route);
        let Some((i, rule)) = plan
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matcher.matches_request(&req, route.as_deref()))
        else {
            return HostAction::Continue;
        };
        let m = self.metrics.rules.get(i);
        if let Some(m) = m {
            m.seen.inc();
        }
        let mut s = self.signals(rule, i, &req);
        if let Some(o) = &rule.overload {
            let mut w = self.worker.borrow_mut();
            if let Some(t) = w.tallies.get_mut(i) {
                t.requests = t.requests.saturating_add(1);
            }
            if s.overloaded.is_some() {
                w.probe_n = w.probe_n.wrapping_add(1);
                s.probe = is_probe(w.probe_n, o.probe_percent);
            }
        }
        let trig = match trigger(&s) {
            Some(t) => t,
            None => {
                if s.probe {
                    if let Some(m) = m {
                        m.probes.inc();
                    }
                }
                if rule.overload.is_some() {
                    self.state.timed = Some((i, now_ms()));
                }
                return HostAction::Continue;
            }
        };
        if eligible(rule, &req).is_err() {
            if let Some(m) = m {
                m.excluded.inc();
            }
            if rule.overload.is_some() {
                self.state.timed = Some((i, now_ms()));
            }
            return HostAction::Continue;
        }
        if let Some(c) = m.and_then(|m| m.diverted.get(trig.index())) {
            c.inc();
        }
        {
            let mut w = self.worker.borrow_mut();
            w.inbound = w.inbound.saturating_add(1);
            let path = req.path();
            let mut cut = path.len().min(MAX_URL_BYTES);
            while !path.is_char_boundary(cut) {
                cut -= 1;
            }
            let url = path.get(..cut).unwrap_or("");
            if let Some(n) = w.urls.get_mut(url) {
                *n = n.saturating_add(1);
            } else if w.urls.len() < MAX_URLS {
                w.urls.insert(url.to_string(), 1);
            }
        }
        self.state.diverted = Some(trig);
        // Marked before the cache is asked: a request that waits for a fill and then times
        // out must still go to the simple page (the cache exists only in header mode).
        if let DivertConfig::Header { name } = &rule.divert {
            set_header(REQUEST_HEADERS, name, trig.as_str());
        }
        if let Some(a) = self.cache_request(&plan, i, rule, trig, &req) {
            return a;
        }
        match &rule.divert {
            DivertConfig::Header { .. } => HostAction::Continue,
            DivertConfig::Redirect { status, base_url } => {
                let location = redirect_location(base_url, req.path());
                let headers = [
                    ("location", location.as_str()),
                    (plan.response_header.as_str(), trig.as_str()),
                    ("cache-control", "no-store"),
                ];
                if send_reply(*status, &headers, b"") {
                    HostAction::Pause
                } else {
                    HostAction::Continue
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _n: usize, eos: bool) -> HostAction {
        if self.state.timed.is_none() && self.state.diverted.is_none() {
            return HostAction::Continue;
        }
        let Some(plan) = self.plan.clone() else {
            return HostAction::Continue;
        };
        let status: u16 = get_header(RESPONSE_HEADERS, ":status")
            .and_then(|v| std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()))
            .unwrap_or(0);
        if let Some((i, start)) = self.state.timed.take() {
            let latency = now_ms().saturating_sub(start);
            if let Some(t) = self.worker.borrow_mut().tallies.get_mut(i) {
                t.record(status, latency);
            }
        }
        let Some(trig) = self.state.diverted else {
            return HostAction::Continue;
        };
        // A reply from the cache made by this filter (e.g. to a request that waited for a
        // fill) already says what it is.
        if get_header(RESPONSE_HEADERS, &plan.response_header).is_some() {
            self.state.cache = None;
            return HostAction::Continue;
        }
        let Some(job) = self.state.cache.take() else {
            set_header(RESPONSE_HEADERS, &plan.response_header, trig.as_str());
            return HostAction::Continue;
        };
        // A failing backend and a stale copy within stale-if-error: answer with the copy.
        if status == 0 || status >= 500 {
            if let Some(e) = job.stale {
                if !eos && e.state(now_ms()) != State::Expired {
                    set_header(RESPONSE_HEADERS, ":status", "200");
                    for (k, _) in header_pairs(RESPONSE_HEADERS) {
                        if !k.starts_with(':') {
                            remove_header(RESPONSE_HEADERS, &k);
                        }
                    }
                    for (k, v) in &e.headers {
                        set_header(RESPONSE_HEADERS, k, v);
                    }
                    let why = format!("{}; cache=stale-if-error", trig.as_str());
                    set_header(RESPONSE_HEADERS, &plan.response_header, &why);
                    self.metrics.cache_stale_if_error.inc();
                    self.state.replace_body = Some(e.body);
                    return HostAction::Continue;
                }
            }
            set_header(RESPONSE_HEADERS, &plan.response_header, trig.as_str());
            return HostAction::Continue;
        }
        set_header(RESPONSE_HEADERS, &plan.response_header, trig.as_str());
        let Some(c) = plan.rules.get(job.rule).and_then(|r| r.cache.as_ref()) else {
            return HostAction::Continue;
        };
        if !job.fill {
            return HostAction::Continue;
        }
        let headers = header_pairs(RESPONSE_HEADERS);
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.trim().parse::<usize>().ok());
        match cache::policy(status, &headers, length, &c.settings, now_ms()) {
            Ok(windows) => {
                let f = Filling {
                    key: job.key,
                    slot: job.slot,
                    windows,
                    headers: cache::kept_headers(&headers),
                    max_body: c.settings.max_body_bytes,
                };
                if eos {
                    self.store(&f, Vec::new());
                } else {
                    self.state.filling = Some(f);
                }
            }
            Err(_) => self.metrics.cache_not_cacheable.inc(),
        }
        HostAction::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, eos: bool) -> HostAction {
        if let Some(stale) = &self.state.replace_body {
            if !eos {
                return HostAction::Pause;
            }
            let _ = set_buffer(RESPONSE_BODY, 0, body_size, stale);
            self.state.replace_body = None;
            return HostAction::Continue;
        }
        let Some(f) = &self.state.filling else {
            return HostAction::Continue;
        };
        if body_size > f.max_body {
            self.metrics.cache_not_cacheable.inc();
            self.state.filling = None;
            return HostAction::Continue;
        }
        if !eos {
            // Envoy buffers the body until the end (bounded by max_body above).
            return HostAction::Pause;
        }
        if let Some(f) = self.state.filling.take() {
            match get_buffer(RESPONSE_BODY, 0, body_size) {
                Some(body) if body.len() == body_size => self.store(&f, body),
                _ => self.metrics.cache_write_failed.inc(),
            }
        }
        HostAction::Continue
    }

    fn on_log(&mut self) {
        // The fetch of a missing page is over (its answer is in the cache or was not
        // cacheable): free the waiters now rather than at their timeout.
        if let Some((slot, fp)) = self.state.lock.take() {
            let _ = update(&HostStore, &lock_key(slot), 4, |cur| {
                match cur.and_then(Lock::decode) {
                    Some(l) if l.key_fp == fp => Step::Write(
                        Lock {
                            key_fp: fp,
                            until_ms: 0,
                        }
                        .encode(),
                        (),
                    ),
                    _ => Step::Keep(()),
                }
            });
        }
        // Went to the main backend and never got response headers (reset, timeout).
        if let Some((i, start)) = self.state.timed.take() {
            let latency = now_ms().saturating_sub(start);
            if let Some(t) = self.worker.borrow_mut().tallies.get_mut(i) {
                t.record(0, latency);
            }
        }
    }
}
