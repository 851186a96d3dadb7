//! The filter's root side, as plain logic over `sg_core::host::Host`: configure, metrics, the
//! per-worker copies of published state, the requests waiting for a cache fill, and the tick
//! (`core::tick` outline): every worker merges its load tallies and inbound counts; the lease
//! holder evaluates overload, polls the operator list and sends the alerts; every worker
//! refreshes its copies. The request and response paths are in `stream`.

use crate::cache::{Entry, Lock, State};
use crate::config::{Config, Plan};
use crate::decide::Trigger;
use crate::inbound::{Inbound, UrlTally};
use crate::overload::{decode_state, encode_state, Change, Detector, LoadWindow, Reason, Tally};
use crate::shadow::ShadowLog;
use sg_core::alert::Alert;
use sg_core::codec::Reader;
use sg_core::host::{configure, set_tick, Host};
use sg_core::keys::{
    sp_cache, sp_load, sp_lock, BR_OPEN, HK_DIVERT, SP_CACHE_BYTES, SP_INBOUND, SP_OPLIST, SP_STATE,
};
use sg_core::metrics::Counter;
use sg_core::oplist::{decode_list, List};
use sg_core::ops::{refresh_list, Ops};
use sg_core::shared::{ensure_all, Step};
use sg_core::store::{Data, Published, Refresh};
use sg_core::tick::{Now, Periodic, Steps};
use std::cell::RefCell;
use std::collections::HashMap;

pub const FILTER: &str = "simplepage";
/// Requests of one worker waiting for a cache fill at most (more go to the backend).
pub const MAX_WAITERS: usize = 4096;
/// Tick while any rule's cache has a lock: waiters are answered within this.
pub const FAST_TICK_MS: u64 = 10;
/// Entries of `hotkey`'s divert list read at most.
const MAX_HOT_ENTRIES: usize = 4096;

sg_core::metrics! {
    /// Per rule: `sg.simplepage.<rule>.<what>`.
    pub struct RuleMetrics {
        seen: Counter = "seen", "requests the rule matched";
        diverted_hotkey: Counter = "diverted_hotkey", "diverted: the page's key is hot (hotkey)";
        diverted_operator: Counter = "diverted_operator", "diverted: listed by an operator";
        diverted_overload: Counter = "diverted_overload", "diverted: the main backend is overloaded";
        diverted_always: Counter = "diverted_always", "diverted: maintenance switch";
        diverted_breaker: Counter = "diverted_breaker", "diverted: a breaker API the page needs refuses calls";
        excluded: Counter = "excluded", "would be diverted but unsafe (method, Authorization, cookie)";
        probes: Counter = "probes", "sent to the main backend while overloaded, to see recovery";
        shadow_diverted_hotkey: Counter = "shadow_diverted_hotkey", "shadow mode: would have diverted, the key is hot";
        shadow_diverted_operator: Counter = "shadow_diverted_operator", "shadow mode: would have diverted, listed by an operator";
        shadow_diverted_overload: Counter = "shadow_diverted_overload", "shadow mode: would have diverted, the main backend is overloaded";
        shadow_diverted_always: Counter = "shadow_diverted_always", "shadow mode: would have diverted, maintenance switch";
        shadow_diverted_breaker: Counter = "shadow_diverted_breaker", "shadow mode: would have diverted, a breaker API refuses calls";
    }
}

impl RuleMetrics {
    pub fn diverted(&self, t: Trigger) -> &Counter {
        match t {
            Trigger::Hotkey => &self.diverted_hotkey,
            Trigger::Operator => &self.diverted_operator,
            Trigger::Overload(_) => &self.diverted_overload,
            Trigger::Always => &self.diverted_always,
            Trigger::Breaker => &self.diverted_breaker,
        }
    }

    /// What a shadow rule would have diverted, by trigger.
    pub fn shadow_diverted(&self, t: Trigger) -> &Counter {
        match t {
            Trigger::Hotkey => &self.shadow_diverted_hotkey,
            Trigger::Operator => &self.shadow_diverted_operator,
            Trigger::Overload(_) => &self.shadow_diverted_overload,
            Trigger::Always => &self.shadow_diverted_always,
            Trigger::Breaker => &self.shadow_diverted_breaker,
        }
    }
}

sg_core::metrics! {
    /// Filter-wide: `sg.simplepage.<what>`.
    pub struct FilterMetrics {
        cache_hit: Counter = "cache_hit", "answered from a fresh cached copy";
        cache_miss: Counter = "cache_miss", "diverted requests not in the cache (went to the backend)";
        cache_stale: Counter = "cache_stale", "answered from a stale copy while it is refreshed";
        cache_stale_if_error: Counter = "cache_stale_if_error", "backend errors replaced by a stale copy";
        cache_refresh: Counter = "cache_refresh", "requests sent to refresh a stale copy";
        cache_fill: Counter = "cache_fill", "copies written to the cache";
        cache_not_cacheable: Counter = "cache_not_cacheable", "answers the cache may not keep";
        cache_write_failed: Counter = "cache_write_failed", "copies that could not be written";
        cache_slot_busy: Counter = "cache_slot_busy", "copies not written: the slot holds another fresh page";
        cache_wait_hit: Counter = "cache_wait_hit", "waiters answered from the cache once filled";
        cache_wait_timeout: Counter = "cache_wait_timeout", "waiters sent on when the lock timed out";
        cache_wait_released: Counter = "cache_wait_released", "waiters sent on when the fetch ended uncached";
        overload_events: Counter = "overload_events", "overload episodes started";
        divert_failed: Counter = "divert_failed", "diverted requests the simple-page backend failed (5xx, reset, no answer)";
        divert_fallback: Counter = "divert_fallback", "of those, answered with the rule's fallback page";
        cache_bytes: Gauge = "cache_bytes", "bytes held in the cache slots";
        overloaded_rules: Gauge = "overloaded_rules", "rules whose overload trigger is on";
    }
}

/// `sg.simplepage.*`.
pub type Metrics = sg_core::metrics::Metrics<RuleMetrics, FilterMetrics>;

/// A request waiting for a cache fill (nginx `proxy_cache_lock`).
#[derive(Debug)]
pub(crate) struct Waiter {
    pub id: u32,
    pub slot: u32,
    pub fp: u64,
    pub key: Vec<u8>,
    /// Response header value when answered from the cache.
    pub why: String,
    pub deadline_ms: u64,
}

/// This worker's copies of the published state, and its tallies of the current tick.
#[derive(Default)]
pub(crate) struct Worker {
    pub hot: Published<List>,
    pub list: Published<List>,
    pub state: Published<Vec<(String, Reason, u64)>>,
    /// `breaker`'s open set (`sg:br:open`): (API, state).
    pub breakers: Published<List>,
    /// Per rule index.
    pub overloaded: Vec<Option<Reason>>,
    pub tallies: Vec<Tally>,
    pub probe_n: u64,
    pub inbound: UrlTally,
    /// Requests paused until the page they miss is filled by another request.
    pub waiters: Vec<Waiter>,
    /// Per rule index: the shadow log's pace.
    pub shadow_log: Vec<ShadowLog>,
}

/// The configured filter of one worker, shared by its root and HTTP contexts.
pub struct Filter {
    pub plan: Plan,
    pub m: Metrics,
    pub(crate) worker: RefCell<Worker>,
}

/// The leader side (root context only): the lease, the leader's detectors and operator side, alert periods.
pub struct Leader {
    detectors: Vec<Detector>,
    ops: Ops,
    inbound_period_start: u64,
    /// The periodic work runs every `tick_ms`; the timer may tick faster for waiters.
    next_work_ms: u64,
}

/// Headers of a reply from the cache: the kept ones, `age`, and why it is a simple page.
pub(crate) fn reply_headers(
    e: &Entry,
    why: &str,
    now: u64,
    response_header: &str,
) -> Vec<(String, String)> {
    let mut h = e.headers.clone();
    h.push(("age".to_string(), e.age_s(now).to_string()));
    h.push((response_header.to_string(), why.to_string()));
    h
}

pub(crate) fn borrowed(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

impl Filter {
    /// `on_configure`: None (logged, naming the field) when the config is refused.
    pub(crate) fn new<H: Host + ?Sized>(host: &H) -> Option<(Filter, Periodic<Leader>)> {
        let plan = configure::<Config, H>(host, FILTER)?;
        let worker = Worker {
            overloaded: vec![None; plan.rules.len()],
            tallies: vec![Tally::default(); plan.rules.len()],
            shadow_log: vec![ShadowLog::default(); plan.rules.len()],
            ..Worker::default()
        };
        let periodic = Periodic::new(Leader {
            detectors: plan.rules.iter().map(|_| Detector::default()).collect(),
            ops: Ops::new(FILTER, SP_OPLIST, plan.operator.as_ref(), &plan.alert),
            inbound_period_start: 0,
            next_work_ms: 0,
        });
        let locks = plan
            .rules
            .iter()
            .any(|r| r.cache.as_ref().is_some_and(|c| c.lock_timeout_ms > 0));
        ensure_all(
            host,
            FILTER,
            plan.rules
                .iter()
                .map(|r| sp_load(&r.name))
                .chain([SP_INBOUND.to_string(), SP_CACHE_BYTES.to_string()])
                .chain((0..plan.slots).map(sp_lock)),
        );
        let period = if locks { FAST_TICK_MS } else { plan.tick_ms };
        set_tick(host, FILTER, period, "state will not refresh");
        log::info!(
            "{FILTER}: configured {} rules ({} in shadow mode), tick {} ms, cache {} slots x {} bytes",
            plan.rules.len(),
            plan.rules.iter().filter(|r| r.shadow).count(),
            plan.tick_ms,
            plan.slots,
            plan.max_body_bytes
        );
        let f = Filter {
            m: Metrics::define(host, FILTER, plan.rules.iter().map(|r| r.name.as_str())),
            plan,
            worker: RefCell::new(worker),
        };
        Some((f, periodic))
    }

    pub(crate) fn tick<H: Host + ?Sized>(&self, host: &H, p: &mut Periodic<Leader>) {
        let now = host.now_ms();
        self.answer_waiters(host, now);
        if now < p.leader.next_work_ms {
            return;
        }
        p.leader.next_work_ms = now
            .saturating_add(self.plan.tick_ms)
            .saturating_sub(FAST_TICK_MS / 2);
        let steps = &mut Tick {
            f: self,
            p: &mut p.leader,
        };
        p.ticker.run(host, FILTER, self.plan.tick_ms, steps);
        self.m.flush(host);
    }

    /// An operator-list poll or webhook answer (root context).
    pub(crate) fn call_response<H: Host + ?Sized>(
        &self,
        host: &H,
        p: &mut Periodic<Leader>,
        token: u32,
        body_size: usize,
    ) {
        let data = self.data(host);
        p.leader
            .ops
            .on_response(host, &data, token, body_size, &self.m.ops);
    }

    pub(crate) fn data<'a, H: Host + ?Sized>(&'a self, host: &'a H) -> Data<'a, H> {
        Data::new(host, &self.m.store)
    }

    /// Requests waiting for a cache fill on this worker (tests and diagnostics).
    pub fn waiting(&self) -> usize {
        self.worker.borrow().waiters.len()
    }

    /// Every tick: answer the requests waiting for a fill from the cache once it is there;
    /// send those whose wait is over to the backend.
    fn answer_waiters<H: Host + ?Sized>(&self, host: &H, now: u64) {
        let waiters = {
            let mut w = self.worker.borrow_mut();
            if w.waiters.is_empty() {
                return;
            }
            std::mem::take(&mut w.waiters)
        };
        let data = self.data(host);
        let m = &self.m.filter;
        let mut slots: HashMap<u32, (Option<Entry>, Option<Lock>)> = HashMap::new();
        let mut keep = Vec::new();
        for wt in waiters {
            let (entry, lock) = slots.entry(wt.slot).or_insert_with(|| {
                (
                    data.read_with(&sp_cache(wt.slot), Entry::decode),
                    data.read_with(&sp_lock(wt.slot), Lock::decode),
                )
            });
            let our_lock = lock
                .as_ref()
                .filter(|l| l.key_fp == wt.fp && l.until_ms != 0);
            // The fetch this request waits for is over (or its lock was lost to another
            // page of the slot) without a usable copy: go to the backend now.
            let fetch_over = our_lock.is_none();
            let timed_out = now >= wt.deadline_ms || our_lock.is_some_and(|l| l.until_ms <= now);
            match entry
                .as_ref()
                .filter(|e| e.key == wt.key && e.state(now) != State::Expired)
            {
                Some(e) => {
                    let headers = reply_headers(e, &wt.why, now, &self.plan.response_header);
                    if host.reply_for(wt.id, 200, &borrowed(&headers), &e.body) {
                        m.cache_wait_hit.inc();
                    }
                }
                None if timed_out => {
                    m.cache_wait_timeout.inc();
                    host.resume(wt.id);
                }
                None if fetch_over => {
                    m.cache_wait_released.inc();
                    host.resume(wt.id);
                }
                None => keep.push(wt),
            }
        }
        self.worker.borrow_mut().waiters.extend(keep);
    }
}

/// One tick's steps (`core::tick`).
struct Tick<'a> {
    f: &'a Filter,
    p: &'a mut Leader,
}

impl<H: Host + ?Sized> Steps<H> for Tick<'_> {
    /// Every worker: merge this tick's load tallies and inbound counts into shared data.
    fn merge(&mut self, host: &H, now: Now) {
        let f = self.f;
        let (tallies, inbound) = {
            let mut w = f.worker.borrow_mut();
            let t: Vec<Tally> = w.tallies.iter_mut().map(std::mem::take).collect();
            (t, std::mem::take(&mut w.inbound))
        };
        let data = f.data(host);
        for (rule, t) in f.plan.rules.iter().zip(tallies.iter()) {
            let Some(o) = &rule.overload else {
                continue;
            };
            if t.is_empty() {
                continue;
            }
            data.modify(&sp_load(&rule.name), LoadWindow::decode, |v| {
                let mut v = v.unwrap_or_default();
                v.merge(now.epoch, t, o.window_ticks + 2);
                Step::Write(v.encode(), ())
            });
        }
        if inbound.count > 0 {
            data.modify(SP_INBOUND, Inbound::decode, |v| {
                let mut v = v.unwrap_or_default();
                v.add(inbound.count, &inbound.urls);
                Step::Write(v.encode(), ())
            });
        }
    }

    fn lead(&mut self, host: &H, now: Now, became: bool) {
        let f = self.f;
        self.evaluate(host, now, became);
        self.p
            .ops
            .poll(host, f.plan.operator.as_ref(), now.ms, &f.m.ops);
        self.inbound_alert(host, now.ms);
        let bytes = f
            .data(host)
            .read_with(SP_CACHE_BYTES, |b| Reader::new(b).u64());
        f.m.filter.cache_bytes.set(bytes.unwrap_or(0));
    }

    /// Every worker: pick up new published state.
    fn refresh(&mut self, host: &H, _now: Now) {
        let (f, plan) = (self.f, &self.f.plan);
        let data = f.data(host);
        let mut w = f.worker.borrow_mut();
        if plan.rules.iter().any(|r| r.hotkey_rule.is_some()) {
            let r = w.hot.refresh(&data, HK_DIVERT, |b| {
                decode_list(b, MAX_HOT_ENTRIES).map(|x| x.1)
            });
            if r == Refresh::Absent {
                w.hot.clear();
            }
        }
        if plan.operator.is_some() {
            let max = plan.operator.as_ref().map_or(1000, |o| o.max_entries);
            refresh_list(&mut w.list, &data, SP_OPLIST, max);
        }
        if plan.rules.iter().any(|r| !r.breaker_apis.is_empty()) {
            // Absent or unreadable: no breaker is open (fail open).
            let r = w
                .breakers
                .refresh(&data, BR_OPEN, |b| decode_list(b, 64).map(|x| x.1));
            if r == Refresh::Absent {
                w.breakers.clear();
            }
        }
        if plan.rules.iter().any(|r| r.overload.is_some()) {
            // Unreadable or absent state means "not overloaded" (fail open).
            match w.state.refresh(&data, SP_STATE, decode_state) {
                Refresh::Unchanged => return,
                Refresh::Absent | Refresh::Bad => w.state.clear(),
                Refresh::Updated => {}
            }
            let state = w.state.get().clone();
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

impl<'a> Tick<'a> {
    /// A structured log line and, if configured, a webhook POST; de-duplicated per
    /// (rule, key) for `alert.cooldown_ms` unless `always`.
    #[allow(clippy::too_many_arguments)]
    fn alert<H: Host + ?Sized>(
        &mut self,
        host: &H,
        rule: &str,
        key: &str,
        milli_rps: u64,
        reason: String,
        top: Vec<(String, u64)>,
        now: u64,
        always: bool,
    ) {
        let a = Alert {
            filter: FILTER.to_string(),
            rule: rule.to_string(),
            key: key.to_string(),
            milli_rps,
            reason,
            top,
            now_ms: now,
        };
        self.p
            .ops
            .alert(host, &self.f.plan.alert, &a, !always, &self.f.m.ops);
    }

    /// Lease holder: overload detection per rule, published when it changes.
    fn evaluate<H: Host + ?Sized>(&mut self, host: &H, now: Now, became: bool) {
        let (f, plan) = (self.f, &self.f.plan);
        let data = f.data(host);
        if became {
            let published = data.read_with(SP_STATE, decode_state).unwrap_or_default();
            self.p.detectors = plan
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
            let window: LoadWindow = data
                .read_with(&sp_load(&rule.name), LoadWindow::decode)
                .unwrap_or_default();
            // The bucket being filled now is partial: judge the complete ones.
            let t = window.sum(now.epoch.saturating_sub(1), o.window_ticks);
            let Some(d) = self.p.detectors.get_mut(i) else {
                continue;
            };
            if let Some(ch) = d.update(now.ms, &t, &o.settings) {
                changed = true;
                let window_ms = o.settings.window_ms.max(1);
                events.push((rule.name.clone(), ch, t, window_ms));
            }
        }
        for (name, ch, t, window_ms) in events {
            let rate = t.requests.saturating_mul(1_000_000) / window_ms;
            let p99 = t.p99_ms().map_or("none".to_string(), |p| p.to_string());
            let facts = format!(
                "{} requests, {} to the main backend, {} errors, p99 <= {p99} ms in {window_ms} ms",
                t.requests, t.samples, t.errors
            );
            match ch {
                Change::Started(r) => {
                    f.m.filter.overload_events.inc();
                    let reason = format!(
                        "main backend overloaded ({}): diverting to the simple page; {facts}",
                        r.as_str()
                    );
                    self.alert(
                        host,
                        &name,
                        "overload",
                        rate,
                        reason,
                        Vec::new(),
                        now.ms,
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
            .zip(self.p.detectors.iter())
            .filter_map(|(r, d)| d.on.map(|reason| (r.name.clone(), reason, d.since_ms)))
            .collect();
        f.m.filter.overloaded_rules.set(on.len() as u64);
        if changed {
            data.put(SP_STATE, &encode_state(&on));
        }
    }

    /// Lease holder: the periodic "simple page inbound" alert, while anything was diverted.
    fn inbound_alert<H: Host + ?Sized>(&mut self, host: &H, now: u64) {
        let p = &mut *self.p;
        if p.inbound_period_start == 0 {
            p.inbound_period_start = now;
            return;
        }
        if now.saturating_sub(p.inbound_period_start) < self.f.plan.inbound_alert_ms {
            return;
        }
        let period_ms = now.saturating_sub(p.inbound_period_start).max(1);
        p.inbound_period_start = now;
        let reset = Inbound {
            period: now,
            ..Inbound::default()
        }
        .encode();
        let taken = self.f.data(host).modify(SP_INBOUND, Inbound::decode, |v| {
            Step::Write(reset.clone(), v.unwrap_or_default())
        });
        let Some(v) = taken else {
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
        self.alert(host, "*", "inbound", rate, reason, top, now, true);
    }
}
