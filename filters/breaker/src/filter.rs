//! The filter's life in Envoy, as plain logic over `sg_core::host::Host`.
//!
//! Request path (egress): the first API the call matches; its breaker state (`sg:br:s:<api>`,
//! one shared-data read; a CAS only in OPEN past its wait and in HALF_OPEN); its bulkhead slot
//! (`sg:br:b:<api>`, a CAS to take one and one to give it back). A refused call gets the API's
//! fallback as a local reply marked `x-spikeguard-action: breaker`.
//! End of the stream (`on_log`, once per stream whatever ended it): the slot is given back,
//! the outcome is classified from the status, Envoy's response flags and the duration; a
//! half-open probe's outcome is recorded in the state at once (exact), a CLOSED call's in
//! the worker's tally.
//! Tick (`core::tick` outline): every worker merges its tallies into `sg:br:w:<api>` and
//! judges the APIs it merged (so a breaker opens on the tick whose merge crossed the
//! threshold); the lease holder also applies flags, judges every API (time-driven moves),
//! alerts on state changes, publishes the open set and polls the operator flags.

use crate::config::{Api, Config, FailMode, Flag, Plan, FLAG_DC, FLAG_DR, WAIT_TICK_MS};
use crate::machine::{Breaker, Judged, Kind, Outcome, Permit, Transition};
use crate::window::{Buckets, Tally, WindowKind};
use sg_core::alert::Alert;
use sg_core::host::{
    configure, property_u64, response_status, set_tick, Flow, Host, HostRequest, Plugin,
};
use sg_core::key::{strip_port, RequestView};
use sg_core::keys::{br_slots, br_state, br_window, BR_FLAGS, BR_OPEN};
use sg_core::oplist::{decode_list, encode_list, Entry, List};
use sg_core::ops::{refresh_list, Ops};
use sg_core::shared::{ensure_all, Step};
use sg_core::store::{Data, Published};
use sg_core::tick::{Now, Periodic, Steps};
use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};

pub const FILTER: &str = "breaker";
/// Tally entries a worker keeps per API between merges (more only if ticks stop; then the
/// newest entry absorbs the rest, so nothing counted is lost).
const MAX_TALLIES: usize = 16;

sg_core::metrics! {
    /// Per API: `sg.breaker.<api>.<what>`.
    pub struct ApiMetrics {
        state: Gauge = "state", "breaker state: 0 closed, 1 open, 2 half_open, 3 disabled, 4 metrics_only, 5 forced_open";
        transitions: Counter = "transitions", "state changes";
        opened: Counter = "opened", "transitions to OPEN";
        success: Counter = "success", "calls that succeeded in time";
        failure: Counter = "failure", "calls that failed (status or response flag)";
        slow: Counter = "slow", "calls that succeeded but slower than slow_call_ms";
        slow_failure: Counter = "slow_failure", "calls that failed and were slow";
        ignored: Counter = "ignored", "calls not counted (ignored status, client gone)";
        not_permitted: Counter = "not_permitted", "calls refused by the breaker (fallback served)";
        bulkhead_rejected: Counter = "bulkhead_rejected", "calls refused by the bulkhead (fallback served)";
        bulkhead_waited: Counter = "bulkhead_waited", "calls that waited for a bulkhead slot";
        shadow_rejected: Counter = "shadow_rejected", "calls a shadow bulkhead would have refused";
        would_open: Counter = "would_open", "ticks on which a METRICS_ONLY breaker crossed its thresholds";
        in_flight: Gauge = "in_flight", "calls holding a bulkhead slot now (all workers)";
        store_failed: Counter = "store_failed", "calls that met a shared-data failure (on_store_error applied)";
        fallback_refused: Counter = "fallback_refused", "fallback replies the host refused (the call went on)";
    }
}

sg_core::metrics! {
    /// Filter-wide: `sg.breaker.<what>`.
    pub struct FilterMetrics {
        open_apis: Gauge = "open_apis", "APIs whose breaker refuses calls now (open, half_open, forced_open)";
        release_retries: Counter = "release_retries", "bulkhead releases deferred to the tick after a failed CAS";
    }
}

/// `sg.breaker.*`.
pub type Metrics = sg_core::metrics::Metrics<ApiMetrics, FilterMetrics>;

/// Shared-data keys of one API, built once.
#[derive(Debug)]
struct Keys {
    state: String,
    window: String,
    slots: String,
}

/// What a stream remembers between its callbacks.
#[derive(Debug, Default)]
pub struct Stream {
    id: u32,
    api: Option<usize>,
    start_ms: u64,
    /// Granted by the breaker: (generation, half-open probe, outcome counted in the window).
    permit: Option<(u64, bool, bool)>,
    slot: bool,
    waiting: bool,
    replied: bool,
    done: bool,
    /// The response's `:status` (read in `on_response_headers`), and whether the response
    /// reached its end of stream (then no reset or timeout cut it).
    status: Option<u16>,
    complete: bool,
}

/// A call waiting for a bulkhead slot.
#[derive(Debug, Clone, Copy)]
struct Waiter {
    id: u32,
    api: usize,
    deadline_ms: u64,
    /// A half-open probe's generation, given back if the wait ends in a refusal.
    probe: Option<u64>,
}

/// Per-worker state the request path and the tick share (VM memory).
#[derive(Default)]
struct Worker {
    /// Per API: (generation, epoch, counts) not yet merged.
    tallies: Vec<Vec<(u64, u64, Tally)>>,
    waiting: VecDeque<Waiter>,
    /// Waiters the tick gave a slot to (they own it from then on).
    granted: HashSet<u32>,
    /// Slots whose release lost every CAS (or ended without a host): given back on the tick.
    releases: Vec<usize>,
    /// Half-open permits of streams destroyed without `on_log`: (API, generation), given
    /// back on the tick (bounded: one per permit, and permits are `half_open_calls`).
    givebacks: Vec<(usize, u64)>,
    last_main_ms: u64,
    /// Per API: the state this worker last read or wrote, and when (`state_cache_ms`).
    states: Vec<Option<(Breaker, u64)>>,
}

/// The configured filter of one worker, shared by its root and HTTP contexts.
pub struct Filter {
    pub plan: Plan,
    pub m: Metrics,
    keys: Vec<Keys>,
    worker: RefCell<Worker>,
}

/// The lease holder's side (root context only).
pub struct Leader {
    ops: Ops,
    flags: Published<List>,
    /// Per API: the (generation, state) last seen, for alerts.
    seen: Vec<Option<(u64, Kind)>>,
}

/// Why a call got the fallback (`x-spikeguard-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Open,
    HalfOpen,
    ForcedOpen,
    Bulkhead,
    StoreError,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Open => "open",
            Reason::HalfOpen => "half_open",
            Reason::ForcedOpen => "forced_open",
            Reason::Bulkhead => "bulkhead",
            Reason::StoreError => "store_error",
        }
    }
}

enum Gate {
    /// Granted: generation, probe, counted in the window (the bulkhead applies).
    Go(u64, bool, bool),
    Refuse(Reason, u64),
    /// No breaker applies (disabled, or a shared-data failure with `on_store_error: allow`).
    Pass,
}

enum Acquire {
    Got,
    Full,
    Failed,
}

fn decode_count(b: &[u8]) -> Option<u64> {
    let a: [u8; 8] = b.try_into().ok()?;
    Some(u64::from_le_bytes(a))
}

/// How a call ended, from Envoy's view of the stream: None = not counted.
pub fn classify(api: &Api, code: u64, flags: u64, duration_ms: u64) -> Option<Outcome> {
    let slow = duration_ms >= api.slow_call_ms;
    if flags & api.failure_flags != 0 {
        return Some(Outcome { failed: true, slow });
    }
    if code == 0 || flags & (FLAG_DC | FLAG_DR) != 0 {
        // No response, or the client left: nothing the API did.
        return None;
    }
    let status = u16::try_from(code).unwrap_or(0);
    api.status_outcome(status)
        .map(|failed| Outcome { failed, slow })
}

impl Plugin for Filter {
    type Stream = Stream;
    type Periodic = Periodic<Leader>;

    fn configure<H: Host + ?Sized>(host: &H) -> Option<(Filter, Periodic<Leader>)> {
        let plan = configure::<Config, H>(host, FILTER)?;
        let keys = plan
            .apis
            .iter()
            .map(|a| Keys {
                state: br_state(&a.name),
                window: br_window(&a.name),
                slots: br_slots(&a.name),
            })
            .collect::<Vec<Keys>>();
        ensure_all(
            host,
            FILTER,
            keys.iter().flat_map(|k| [&k.state, &k.window, &k.slots]),
        );
        let periodic = Periodic::new(Leader {
            ops: Ops::new(FILTER, BR_FLAGS, plan.operator.as_ref(), &plan.alert),
            flags: Published::default(),
            seen: plan.apis.iter().map(|_| None).collect(),
        });
        let tick = if plan.waits {
            WAIT_TICK_MS
        } else {
            plan.tick_ms
        };
        set_tick(
            host,
            FILTER,
            tick,
            "no window merges or flags on this worker",
        );
        log::info!(
            "{FILTER}: configured {} APIs, tick {} ms",
            plan.apis.len(),
            plan.tick_ms
        );
        let worker = Worker {
            tallies: plan.apis.iter().map(|_| Vec::new()).collect(),
            states: plan.apis.iter().map(|_| None).collect(),
            ..Worker::default()
        };
        let f = Filter {
            m: Metrics::define(host, FILTER, plan.apis.iter().map(|a| a.name.as_str())),
            plan,
            keys,
            worker: RefCell::new(worker),
        };
        Some((f, periodic))
    }

    fn stream(id: u32) -> Stream {
        Stream {
            id,
            ..Stream::default()
        }
    }

    fn flush<H: Host + ?Sized>(&self, host: &H) {
        self.m.flush(host);
    }

    fn on_request<H: Host + ?Sized>(&self, host: &H, s: &mut Stream) -> Flow {
        let req = HostRequest::new(host);
        let Some(i) = self.matching(host, &req) else {
            return Flow::Continue;
        };
        let (Some(api), Some(m)) = (self.plan.apis.get(i), self.m.rules.get(i)) else {
            return Flow::Continue;
        };
        let now = req.now();
        s.api = Some(i);
        s.start_ms = now;
        let (generation, probe, counted) = match self.gate(host, i, now) {
            Gate::Pass => return Flow::Continue,
            Gate::Refuse(reason, retry_at) => {
                m.not_permitted.inc();
                return self.refuse(host, s, i, reason, retry_at, now);
            }
            Gate::Go(g, p, c) => (g, p, c),
        };
        s.permit = Some((generation, probe, counted));
        let Some(bh) = api.bulkhead else {
            return Flow::Continue;
        };
        match self.acquire(host, i, bh.max_concurrent) {
            Acquire::Got => {
                s.slot = true;
                Flow::Continue
            }
            Acquire::Full if self.shadow(i) => {
                m.shadow_rejected.inc();
                Flow::Continue
            }
            Acquire::Full => {
                let Ok(mut w) = self.worker.try_borrow_mut() else {
                    return Flow::Continue;
                };
                if bh.max_wait_ms > 0
                    && w.waiting.iter().filter(|x| x.api == i).count() < bh.max_waiting
                {
                    w.waiting.push_back(Waiter {
                        id: s.id,
                        api: i,
                        deadline_ms: now.saturating_add(bh.max_wait_ms),
                        probe: probe.then_some(generation),
                    });
                    s.waiting = true;
                    m.bulkhead_waited.inc();
                    return Flow::Pause;
                }
                drop(w);
                m.bulkhead_rejected.inc();
                if probe {
                    self.record(host, i, generation, None, now);
                }
                s.permit = None;
                self.refuse(host, s, i, Reason::Bulkhead, 0, now)
            }
            Acquire::Failed => {
                m.store_failed.inc();
                if self.plan.on_store_error == FailMode::Reject {
                    if probe {
                        self.record(host, i, generation, None, now);
                    }
                    s.permit = None;
                    return self.refuse(host, s, i, Reason::StoreError, 0, now);
                }
                Flow::Continue
            }
        }
    }

    /// The status of a call the breaker let through (a header read, cheaper than the
    /// `response.code` property in `on_log`).
    fn on_response_headers<H: Host + ?Sized>(&self, host: &H, s: &mut Stream, eos: bool) -> Flow {
        if s.permit.is_some() && !s.replied {
            s.status = Some(response_status(host));
            s.complete = eos;
        }
        Flow::Continue
    }

    fn on_response_body<H: Host + ?Sized>(
        &self,
        _host: &H,
        s: &mut Stream,
        _body_size: usize,
        eos: bool,
    ) -> Flow {
        s.complete |= eos;
        Flow::Continue
    }

    fn on_log<H: Host + ?Sized>(&self, host: &H, s: &mut Stream) {
        self.finish(host, s);
    }

    /// A stream destroyed without `on_log` (no host calls here): its slot is given back on
    /// the next tick; nothing is classified.
    fn on_done(&self, s: &mut Stream) {
        if s.done || s.api.is_none() {
            return;
        }
        s.done = true;
        let Some(i) = s.api else { return };
        let Ok(mut w) = self.worker.try_borrow_mut() else {
            return;
        };
        if let Some(at) = w.waiting.iter().position(|x| x.id == s.id) {
            w.waiting.remove(at);
        }
        if w.granted.remove(&s.id) || s.slot {
            s.slot = false;
            w.releases.push(i);
        }
        if let (Some((g, true, _)), false) = (s.permit, s.replied) {
            w.givebacks.push((i, g));
        }
    }

    fn on_tick<H: Host + ?Sized>(&self, host: &H, p: &mut Periodic<Leader>) {
        let now = host.now_ms();
        self.retry_releases(host);
        if self.plan.waits {
            self.serve_waiters(host, now);
        }
        let due = {
            let Ok(mut w) = self.worker.try_borrow_mut() else {
                return;
            };
            let due = !self.plan.waits
                || now.saturating_sub(w.last_main_ms) >= self.plan.tick_ms
                || now < w.last_main_ms;
            if due {
                w.last_main_ms = now;
            }
            due
        };
        if due {
            let steps = &mut Tick {
                f: self,
                p: &mut p.leader,
                judged: vec![false; self.plan.apis.len()],
            };
            p.ticker.run(host, FILTER, self.plan.tick_ms, steps);
        }
        self.m.flush(host);
    }

    fn on_call_response<H: Host + ?Sized>(
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
}

impl Filter {
    fn data<'a, H: Host + ?Sized>(&'a self, host: &'a H) -> Data<'a, H> {
        Data::new(host, &self.m.store)
    }

    /// API `i`'s state as this worker saw it less than `state_cache_ms` ago; never a
    /// HALF_OPEN one (its permits are counted in the shared state).
    fn cached(&self, i: usize, now: u64) -> Option<Breaker> {
        let ttl = self.plan.state_cache_ms;
        if ttl == 0 {
            return None;
        }
        let w = self.worker.try_borrow().ok()?;
        let (b, at) = (*w.states.get(i)?)?;
        (now >= at && now - at < ttl && b.kind != Kind::HalfOpen).then_some(b)
    }

    /// Keeps (or, with None, forgets) the state of API `i` this worker just read or wrote.
    fn remember(&self, i: usize, b: Option<Breaker>, now: u64) {
        if self.plan.state_cache_ms == 0 {
            return;
        }
        if let Ok(mut w) = self.worker.try_borrow_mut() {
            if let Some(slot) = w.states.get_mut(i) {
                *slot = b.map(|b| (b, now));
            }
        }
    }

    fn shadow(&self, i: usize) -> bool {
        self.plan
            .apis
            .get(i)
            .is_some_and(|a| a.flag == Some(Flag::MetricsOnly))
    }

    /// The first API the request matches.
    fn matching<H: Host + ?Sized>(&self, host: &H, req: &HostRequest<'_, H>) -> Option<usize> {
        let route = req.route_if(self.plan.needs_route);
        let cluster = self
            .plan
            .needs_cluster
            .then(|| host.property(&["xds", "cluster_name"]))
            .flatten();
        self.plan.apis.iter().position(|a| {
            a.cluster
                .as_deref()
                .is_none_or(|c| cluster.as_deref() == Some(c))
                && (a.authorities.is_empty() || {
                    let h = strip_port(req.host());
                    a.authorities.iter().any(|x| x.eq_ignore_ascii_case(h))
                })
                && a.matcher.matches_request(req, route.as_deref())
        })
    }

    /// Counts a transition this worker made.
    fn moved(&self, i: usize, t: &Transition) {
        if let Some(m) = self.m.rules.get(i) {
            m.transitions.inc();
            if t.to == Kind::Open {
                m.opened.inc();
            }
        }
        log::info!(
            "{FILTER}: api={} {} -> {}",
            self.plan.apis.get(i).map_or("?", |a| a.name.as_str()),
            t.from.as_str(),
            t.to.as_str()
        );
    }

    /// The breaker's answer for a call at `now`.
    fn gate<H: Host + ?Sized>(&self, host: &H, i: usize, now: u64) -> Gate {
        let (Some(api), Some(keys)) = (self.plan.apis.get(i), self.keys.get(i)) else {
            return Gate::Pass;
        };
        // The state read a moment ago answers when the permit changes nothing (CLOSED,
        // OPEN before its wait ends, ...): no shared-data read.
        let cached = self.cached(i, now).and_then(|b| {
            let mut c = b;
            let (p, t) = c.permit(&api.settings, now);
            (c == b && t.is_none()).then_some((p, None, b.kind, b.retry_at_ms))
        });
        let data = self.data(host);
        let r = cached.or_else(|| {
            let mut seen = None;
            let r = data.modify(&keys.state, Breaker::decode, |cur| {
                // No state yet (the lease holder has not ticked since start): the config's
                // flag holds from the first call, not from the first tick.
                let (mut b, first) = match cur {
                    Some(b) => (b, None),
                    None => {
                        let mut b = Breaker::default();
                        let t = api
                            .flag
                            .and_then(|f| b.force(f.state(), &api.settings, now));
                        (b, t)
                    }
                };
                let before = cur.unwrap_or_default();
                let (p, t) = b.permit(&api.settings, now);
                let out = (p, t.or(first), b.kind, b.retry_at_ms);
                seen = Some(b);
                if b == before {
                    Step::Keep(out)
                } else {
                    Step::Write(b.encode(), out)
                }
            });
            if r.is_some() {
                self.remember(i, seen, now);
            }
            r
        });
        let Some((p, t, kind, retry_at)) = r else {
            if let Some(m) = self.m.rules.get(i) {
                m.store_failed.inc();
            }
            return match self.plan.on_store_error {
                FailMode::Allow => Gate::Pass,
                FailMode::Reject => Gate::Refuse(Reason::StoreError, 0),
            };
        };
        if let Some(t) = t {
            self.moved(i, &t);
        }
        match (p, kind) {
            (_, Kind::Disabled) => Gate::Pass,
            (Permit::Granted { generation, probe }, k) => {
                Gate::Go(generation, probe, !probe && k != Kind::Disabled)
            }
            (Permit::Rejected, Kind::ForcedOpen) => Gate::Refuse(Reason::ForcedOpen, 0),
            (Permit::Rejected, Kind::HalfOpen) => Gate::Refuse(Reason::HalfOpen, 0),
            (Permit::Rejected, _) => Gate::Refuse(Reason::Open, retry_at),
        }
    }

    /// A probe's outcome (None: its permit is given back), exactly, in the state.
    fn record<H: Host + ?Sized>(
        &self,
        host: &H,
        i: usize,
        generation: u64,
        outcome: Option<Outcome>,
        now: u64,
    ) {
        let (Some(api), Some(keys)) = (self.plan.apis.get(i), self.keys.get(i)) else {
            return;
        };
        let data = self.data(host);
        self.remember(i, None, now);
        let t = data.modify(&keys.state, Breaker::decode, |cur| {
            let mut b = cur.unwrap_or_default();
            let before = b;
            let t = b.record(&api.settings, generation, outcome, now);
            if b == before {
                Step::Keep(t)
            } else {
                Step::Write(b.encode(), t)
            }
        });
        if let Some(Some(t)) = t {
            self.moved(i, &t);
        }
    }

    fn acquire<H: Host + ?Sized>(&self, host: &H, i: usize, max: u64) -> Acquire {
        let Some(keys) = self.keys.get(i) else {
            return Acquire::Failed;
        };
        let data = self.data(host);
        let r = data.modify(&keys.slots, decode_count, |n| {
            let n = n.unwrap_or(0);
            if n < max {
                Step::Write(n.saturating_add(1).to_le_bytes().to_vec(), true)
            } else {
                Step::Keep(false)
            }
        });
        match r {
            Some(true) => Acquire::Got,
            Some(false) => Acquire::Full,
            None => Acquire::Failed,
        }
    }

    /// Gives a slot back; false when the CAS was lost (the caller defers it to the tick).
    fn release<H: Host + ?Sized>(&self, host: &H, i: usize) -> bool {
        let Some(keys) = self.keys.get(i) else {
            return true;
        };
        let data = self.data(host);
        data.modify(&keys.slots, decode_count, |n| {
            Step::Write(n.unwrap_or(0).saturating_sub(1).to_le_bytes().to_vec(), ())
        })
        .is_some()
    }

    fn defer_release(&self, i: usize) {
        self.m.filter.release_retries.inc();
        if let Ok(mut w) = self.worker.try_borrow_mut() {
            w.releases.push(i);
        }
    }

    fn retry_releases<H: Host + ?Sized>(&self, host: &H) {
        let (pending, givebacks) = match self.worker.try_borrow_mut() {
            Ok(mut w) => (
                std::mem::take(&mut w.releases),
                std::mem::take(&mut w.givebacks),
            ),
            Err(_) => return,
        };
        let now = host.now_ms();
        for (i, g) in givebacks {
            self.record(host, i, g, None, now);
        }
        for i in pending {
            if !self.release(host, i) {
                self.defer_release(i);
            }
        }
    }

    /// The API's fallback as a local reply.
    fn refuse<H: Host + ?Sized>(
        &self,
        host: &H,
        s: &mut Stream,
        i: usize,
        reason: Reason,
        retry_at: u64,
        now: u64,
    ) -> Flow {
        let sent = self.reply(host, None, i, reason, retry_at, now);
        s.replied = sent;
        if !sent {
            if let Some(m) = self.m.rules.get(i) {
                m.fallback_refused.inc();
            }
        }
        Flow::replied(sent)
    }

    /// Sends the fallback to the current request (`id` None) or to waiting context `id`.
    fn reply<H: Host + ?Sized>(
        &self,
        host: &H,
        id: Option<u32>,
        i: usize,
        reason: Reason,
        retry_at: u64,
        now: u64,
    ) -> bool {
        let Some(api) = self.plan.apis.get(i) else {
            return false;
        };
        let fb = &api.fallback;
        let retry = retry_at
            .saturating_sub(now)
            .div_ceil(1000)
            .max(1)
            .to_string();
        let mut headers: Vec<(&str, &str)> = fb
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if fb.add_retry_after && matches!(fb.status, 429 | 503) {
            headers.push(("retry-after", retry.as_str()));
        }
        headers.push(("x-spikeguard-action", FILTER));
        headers.push(("x-spikeguard-reason", reason.as_str()));
        match id {
            None => host.send_reply(fb.status, &headers, fb.body.as_bytes()),
            Some(id) => host.reply_for(id, fb.status, &headers, fb.body.as_bytes()),
        }
    }

    /// The tick's bulkhead queue: time-outs get the fallback, the first waiters get the
    /// slots freed since (FIFO per API).
    fn serve_waiters<H: Host + ?Sized>(&self, host: &H, now: u64) {
        let queue = match self.worker.try_borrow_mut() {
            Ok(mut w) => std::mem::take(&mut w.waiting),
            Err(_) => return,
        };
        let mut keep = VecDeque::with_capacity(queue.len());
        let mut full: Vec<usize> = Vec::new();
        for w in queue {
            let max = self
                .plan
                .apis
                .get(w.api)
                .and_then(|a| a.bulkhead)
                .map_or(0, |b| b.max_concurrent);
            if !full.contains(&w.api) {
                match self.acquire(host, w.api, max) {
                    Acquire::Got => {
                        if host.resume(w.id) {
                            if let Ok(mut wk) = self.worker.try_borrow_mut() {
                                wk.granted.insert(w.id);
                            }
                        } else if !self.release(host, w.api) {
                            self.defer_release(w.api);
                        }
                        continue;
                    }
                    Acquire::Full => full.push(w.api),
                    Acquire::Failed => full.push(w.api),
                }
            }
            if now >= w.deadline_ms {
                if let Some(m) = self.m.rules.get(w.api) {
                    m.bulkhead_rejected.inc();
                }
                if let Some(g) = w.probe {
                    self.record(host, w.api, g, None, now);
                }
                if !self.reply(host, Some(w.id), w.api, Reason::Bulkhead, 0, now) {
                    // Gone, or the host refused: let it go on rather than hang.
                    host.resume(w.id);
                }
                continue;
            }
            keep.push_back(w);
        }
        if let Ok(mut w) = self.worker.try_borrow_mut() {
            // Waiters added while serving (none in practice: one thread) go after.
            keep.extend(w.waiting.drain(..));
            w.waiting = keep;
        }
    }

    /// The end of a stream, however it ended (`on_log`): release, classify, record.
    fn finish<H: Host + ?Sized>(&self, host: &H, s: &mut Stream) {
        if s.done {
            return;
        }
        s.done = true;
        let Some(i) = s.api else {
            return;
        };
        if s.waiting {
            if let Ok(mut w) = self.worker.try_borrow_mut() {
                let queued = w.waiting.iter().position(|x| x.id == s.id);
                if let Some(at) = queued {
                    // The client left while waiting.
                    w.waiting.remove(at);
                    drop(w);
                    if let Some((g, true, _)) = s.permit {
                        self.record(host, i, g, None, host.now_ms());
                    }
                    return;
                }
                if w.granted.remove(&s.id) {
                    s.slot = true;
                } else {
                    // Refused on the tick (fallback sent there).
                    return;
                }
            }
        }
        if s.slot {
            s.slot = false;
            if !self.release(host, i) {
                self.defer_release(i);
            }
        }
        let (Some((generation, probe, counted)), false) = (s.permit, s.replied) else {
            return;
        };
        let Some(api) = self.plan.apis.get(i) else {
            return;
        };
        let now = host.now_ms();
        let code = s.status.unwrap_or(0);
        // Envoy's response flags can change the outcome only when the status has not already
        // made it a failure and the response did not end normally below 500 (a reset or time-out
        // cuts the stream; Envoy's own local replies are 5xx): the property read is skipped
        // for an ordinary answer.
        let flags =
            if api.status_outcome(code) == Some(true) || (s.complete && (1..500).contains(&code)) {
                0
            } else {
                property_u64(host, &["response", "flags"]).unwrap_or(0)
            };
        let outcome = classify(api, u64::from(code), flags, now.saturating_sub(s.start_ms));
        if let Some(m) = self.m.rules.get(i) {
            let c = match outcome {
                None => &m.ignored,
                Some(Outcome {
                    failed: true,
                    slow: true,
                }) => &m.slow_failure,
                Some(Outcome { failed: true, .. }) => &m.failure,
                Some(Outcome { slow: true, .. }) => &m.slow,
                Some(_) => &m.success,
            };
            c.inc();
        }
        if probe {
            self.record(host, i, generation, outcome, now);
            return;
        }
        let (Some(o), true) = (outcome, counted) else {
            return;
        };
        let epoch = self.epoch(api, now);
        let t = Tally {
            calls: 1,
            failures: u64::from(o.failed),
            slow: u64::from(o.slow),
        };
        if let Ok(mut w) = self.worker.try_borrow_mut() {
            if let Some(list) = w.tallies.get_mut(i) {
                let at = list
                    .iter()
                    .position(|(g, e, _)| *g == generation && *e == epoch);
                let full = list.len() >= MAX_TALLIES;
                let target = match at {
                    Some(k) => list.get_mut(k),
                    None if full => list.last_mut(),
                    None => {
                        list.push((generation, epoch, Tally::default()));
                        list.last_mut()
                    }
                };
                if let Some((_, _, x)) = target {
                    x.add(&t);
                }
            }
        }
    }

    /// The window bucket a call ending at `now` belongs to: its second (time window) or its
    /// tick (count window).
    fn epoch(&self, api: &Api, now: u64) -> u64 {
        match api.window {
            WindowKind::Time { .. } => now / 1000,
            WindowKind::Count { .. } => now / self.plan.tick_ms.max(1),
        }
    }

    /// Judges API `i` now (under CAS); counts a move and reports a METRICS_ONLY crossing.
    fn judge<H: Host + ?Sized>(&self, host: &H, i: usize, window: Option<&Buckets>, now: u64) {
        let (Some(api), Some(keys)) = (self.plan.apis.get(i), self.keys.get(i)) else {
            return;
        };
        let data = self.data(host);
        let owned;
        let window = match window {
            Some(w) => w,
            None => {
                owned = data.read::<Buckets>(&keys.window).unwrap_or_default();
                &owned
            }
        };
        let epoch = self.epoch(api, now);
        self.remember(i, None, now);
        let r = data.modify(&keys.state, Breaker::decode, |cur| {
            let mut b = cur.unwrap_or_default();
            let before = b;
            let tally = window.window_of(b.generation, api.window, epoch);
            let j = b.judge(&api.settings, &tally, api.min_calls, now);
            if b == before {
                Step::Keep(j)
            } else {
                Step::Write(b.encode(), j)
            }
        });
        match r {
            Some(Judged::Moved(t)) => self.moved(i, &t),
            Some(Judged::WouldOpen) => {
                if let Some(m) = self.m.rules.get(i) {
                    m.would_open.inc();
                }
            }
            _ => {}
        }
    }

    /// The flag in force for API `i`: an operator entry (`rule` = the API or absent, `key` =
    /// the flag) wins over the config's.
    fn flag(&self, i: usize, list: &List, now: u64) -> Option<Flag> {
        let api = self.plan.apis.get(i)?;
        list.active(now)
            .filter(|e| e.rule.as_deref().is_none_or(|r| r == api.name))
            .find_map(|e| e.key.as_deref().and_then(Flag::parse))
            .or(api.flag)
    }

    /// Holds API `i` in the state its flag asks for, or back to CLOSED when none does.
    fn apply_flag<H: Host + ?Sized>(&self, host: &H, i: usize, flag: Option<Flag>, now: u64) {
        let (Some(api), Some(keys)) = (self.plan.apis.get(i), self.keys.get(i)) else {
            return;
        };
        let want = flag.map(Flag::state);
        self.remember(i, None, now);
        let data = self.data(host);
        let r = data.modify(&keys.state, Breaker::decode, |cur| {
            let mut b = cur.unwrap_or_default();
            let to = match want {
                Some(k) => Some(k),
                None if matches!(
                    b.kind,
                    Kind::Disabled | Kind::MetricsOnly | Kind::ForcedOpen
                ) =>
                {
                    Some(Kind::Closed)
                }
                None => None,
            };
            match to.and_then(|k| b.force(k, &api.settings, now)) {
                Some(t) => Step::Write(b.encode(), Some(t)),
                None => Step::Keep(None),
            }
        });
        if let Some(Some(t)) = r {
            self.moved(i, &t);
        }
    }

    /// The worker's unmerged counts (tests and diagnostics).
    pub fn pending_calls(&self) -> u64 {
        self.worker
            .borrow()
            .tallies
            .iter()
            .flatten()
            .map(|(_, _, t)| t.calls)
            .sum()
    }

    /// Calls waiting for a bulkhead slot on this worker.
    pub fn waiting(&self) -> usize {
        self.worker.borrow().waiting.len()
    }
}

/// One tick's steps (`core::tick`).
struct Tick<'a> {
    f: &'a Filter,
    p: &'a mut Leader,
    /// APIs this tick's merge already judged (the lead step need not again).
    judged: Vec<bool>,
}

impl<H: Host + ?Sized> Steps<H> for Tick<'_> {
    fn merge(&mut self, host: &H, now: Now) {
        let f = self.f;
        let drained: Vec<Vec<(u64, u64, Tally)>> = match f.worker.try_borrow_mut() {
            Ok(mut w) => w.tallies.iter_mut().map(std::mem::take).collect(),
            Err(_) => return,
        };
        let data = f.data(host);
        for (i, list) in drained.into_iter().enumerate() {
            if list.is_empty() {
                continue;
            }
            let (Some(api), Some(keys)) = (f.plan.apis.get(i), f.keys.get(i)) else {
                continue;
            };
            let merged = data.modify(&keys.window, Buckets::decode, |cur| {
                let mut b = cur.unwrap_or_default();
                for (g, e, t) in &list {
                    b.merge_gen(*g, *e, t, api.window, api.keep);
                }
                Step::Write(b.encode(), b)
            });
            match merged {
                Some(b) => {
                    f.judge(host, i, Some(&b), now.ms);
                    if let Some(j) = self.judged.get_mut(i) {
                        *j = true;
                    }
                }
                None => {
                    // Lost every CAS: keep the counts for the next tick (nothing is lost).
                    if let Ok(mut w) = f.worker.try_borrow_mut() {
                        if let Some(t) = w.tallies.get_mut(i) {
                            t.extend(list);
                            t.truncate(MAX_TALLIES);
                        }
                    }
                }
            }
        }
    }

    fn lead(&mut self, host: &H, now: Now, _became: bool) {
        let f = self.f;
        let data = f.data(host);
        let max = f.plan.operator.as_ref().map_or(1000, |o| o.max_entries);
        refresh_list(&mut self.p.flags, &data, BR_FLAGS, max);
        let flags = self.p.flags.get().clone();
        let mut open = List::default();
        for (i, api) in f.plan.apis.iter().enumerate() {
            f.apply_flag(host, i, f.flag(i, &flags, now.ms), now.ms);
            if !self.judged.get(i).copied().unwrap_or(false) {
                f.judge(host, i, None, now.ms);
            }
            let Some(keys) = f.keys.get(i) else {
                continue;
            };
            let b = data.read::<Breaker>(&keys.state).unwrap_or_default();
            if let Some(m) = f.m.rules.get(i) {
                m.state.set(b.kind.gauge());
                let slots = data.read_with(&keys.slots, decode_count).unwrap_or(0);
                m.in_flight.set(slots);
            }
            if matches!(b.kind, Kind::Open | Kind::HalfOpen | Kind::ForcedOpen) {
                open.entries.push(Entry {
                    rule: Some(api.name.clone()),
                    key: Some(b.kind.as_str().to_string()),
                    path_prefix: None,
                    expires_at_ms: None,
                });
            }
            let seen = self.p.seen.get_mut(i);
            let Some(seen) = seen else { continue };
            match *seen {
                Some((g, k)) if g != b.generation => {
                    let n = b.generation.wrapping_sub(g);
                    let mut reason =
                        format!("circuit breaker {} (was {})", b.kind.as_str(), k.as_str());
                    if n > 1 {
                        reason.push_str(&format!(", {n} transitions since the last alert"));
                    }
                    let a = Alert {
                        filter: FILTER.to_string(),
                        rule: api.name.clone(),
                        key: b.kind.as_str().to_string(),
                        milli_rps: 0,
                        reason,
                        top: Vec::new(),
                        now_ms: now.ms,
                    };
                    self.p.ops.alert(host, &f.plan.alert, &a, false, &f.m.ops);
                }
                _ => {}
            }
            *seen = Some((b.generation, b.kind));
        }
        f.m.filter.open_apis.set(open.entries.len() as u64);
        data.update(BR_OPEN, |cur| {
            match cur.and_then(|b| decode_list(b, crate::config::MAX_APIS)) {
                Some((_, l)) if l == open => Step::Keep(()),
                o => Step::Write(encode_list(o.map_or(0, |x| x.0).wrapping_add(1), &open), ()),
            }
        });
        self.p
            .ops
            .poll(host, f.plan.operator.as_ref(), now.ms, &f.m.ops);
    }

    fn refresh(&mut self, _host: &H, _now: Now) {}
}
