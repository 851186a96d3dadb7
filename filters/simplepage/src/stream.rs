//! One stream through `simplepage`, as plain logic over `sg_core::host::Host`.
//! Request path: match the rule, gather the triggers from the worker's copies of the
//! published state, check the safety rules, then serve from the micro-cache, wait for a fill,
//! mark the request for the `simple_page` route, or redirect. Response path: tag simple
//! pages, fill the cache, replace a backend error with a stale copy, time the main backend.

use crate::cache::{self, Entry, Lock, State};
use crate::config::{CachePlan, DivertConfig, Rule};
use crate::decide::{
    diverted_answer, eligible, is_probe, redirect_location, trigger, DivertedAnswer, Signals,
    Trigger,
};
use crate::filter::{borrowed, reply_headers, Filter, Leader, Waiter, MAX_WAITERS};
use crate::shadow;
use sg_core::codec::{Reader, Writer};
use sg_core::hash::{hash64, slot_of};
use sg_core::host::{response_status, Flow, Host, HostRequest, Map, Plugin};
use sg_core::key::RequestView;
use sg_core::keys::{sp_cache, sp_lock, SP_CACHE_BYTES};
use sg_core::normalize::{canonical_query, split_path};
use sg_core::shared::Step;
use sg_core::tick::Periodic;

/// What a stream remembers between its callbacks.
#[derive(Debug, Default)]
pub struct Stream {
    pub id: u32,
    /// Diverted: the trigger (the response is tagged).
    diverted: Option<Trigger>,
    /// The rule index of a diverted request.
    rule: usize,
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

impl Stream {
    pub fn new(id: u32) -> Stream {
        Stream {
            id,
            ..Stream::default()
        }
    }
}

#[derive(Debug)]
struct CacheJob {
    rule: usize,
    /// Only a GET's answer fills the cache (a HEAD's has no body).
    fill: bool,
    key: Vec<u8>,
    slot: u32,
    stale: Option<Entry>,
}

#[derive(Debug)]
struct Filling {
    key: Vec<u8>,
    slot: u32,
    windows: cache::Windows,
    headers: Vec<(String, String)>,
    max_body: usize,
}

/// The micro-cache key of a request: rule, host (lower-cased), normalised path and the
/// canonical query (`normalize::canonical_query` of the rule's `query_params`). None when over
/// the bound (the request then goes to the backend uncached).
fn cache_key<R: RequestView + ?Sized>(rule: &Rule, c: &CachePlan, req: &R) -> Option<Vec<u8>> {
    let path = req.normalized_path();
    let query = canonical_query(split_path(req.path()).1, c.query_params.as_deref());
    let mut key =
        Vec::with_capacity(rule.name.len() + req.host().len() + path.len() + query.len() + 2);
    key.extend_from_slice(rule.name.as_bytes());
    key.push(0);
    key.extend(req.host().bytes().map(|b| b.to_ascii_lowercase()));
    key.extend_from_slice(path.as_bytes());
    if !query.is_empty() {
        key.push(b'?');
        key.extend_from_slice(query.as_bytes());
    }
    (key.len() <= cache::MAX_KEY_BYTES).then_some(key)
}

impl Plugin for Filter {
    type Stream = Stream;
    type Periodic = Periodic<Leader>;

    fn configure<H: Host + ?Sized>(host: &H) -> Option<(Filter, Periodic<Leader>)> {
        Filter::new(host)
    }

    fn stream(id: u32) -> Stream {
        Stream::new(id)
    }

    fn flush<H: Host + ?Sized>(&self, host: &H) {
        self.m.flush(host);
    }

    fn on_tick<H: Host + ?Sized>(&self, host: &H, p: &mut Periodic<Leader>) {
        self.tick(host, p);
    }

    /// An operator-list poll or webhook answer (root context).
    fn on_call_response<H: Host + ?Sized>(
        &self,
        host: &H,
        p: &mut Periodic<Leader>,
        token: u32,
        body_size: usize,
    ) {
        self.call_response(host, p, token, body_size);
    }

    fn on_request<H: Host + ?Sized>(&self, host: &H, s: &mut Stream) -> Flow {
        let plan = &self.plan;
        let req = HostRequest::new(host);
        let route = req.route_if(plan.needs_route);
        let Some((i, rule)) = plan
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.matcher.matches_request(&req, route.as_deref()))
        else {
            return Flow::Continue;
        };
        let m = self.m.rules.get(i);
        m.inspect(|m| m.seen.inc());
        let mut sig = self.signals(rule, i, &req);
        if let Some(o) = &rule.overload {
            let mut w = self.worker.borrow_mut();
            if let Some(t) = w.tallies.get_mut(i) {
                t.requests = t.requests.saturating_add(1);
            }
            if sig.overloaded.is_some() {
                w.probe_n = w.probe_n.wrapping_add(1);
                sig.probe = is_probe(w.probe_n, o.probe_percent);
            }
        }
        let Some(trig) = trigger(&sig) else {
            if sig.probe {
                m.inspect(|m| m.probes.inc());
            }
            if rule.overload.is_some() {
                s.timed = Some((i, req.now()));
            }
            return Flow::Continue;
        };
        if eligible(rule, &req).is_err() {
            m.inspect(|m| m.excluded.inc());
            if rule.overload.is_some() {
                s.timed = Some((i, req.now()));
            }
            return Flow::Continue;
        }
        if rule.shadow {
            // Decided and counted, never acted on: no mark, no cache, no redirect; the
            // request goes to the main backend as without the filter (and is timed).
            m.inspect(|m| m.shadow_diverted(trig).inc());
            self.shadow_log(i, rule, trig, &req);
            if rule.overload.is_some() {
                s.timed = Some((i, req.now()));
            }
            return Flow::Continue;
        }
        m.inspect(|m| m.diverted(trig).inc());
        self.worker.borrow_mut().inbound.add(req.path());
        s.diverted = Some(trig);
        s.rule = i;
        // Marked before the cache is asked: a request that waits for a fill and then times
        // out must still go to the simple page (the cache exists only in header mode).
        if let DivertConfig::Header { name } = &rule.divert {
            host.set_header(Map::Request, name, trig.as_str());
        }
        if let Some(flow) = self.cache_request(host, s, i, rule, trig, &req) {
            return flow;
        }
        match &rule.divert {
            DivertConfig::Header { .. } => Flow::Continue,
            DivertConfig::Redirect { status, base_url } => {
                let location = redirect_location(base_url, req.path());
                let headers = [
                    ("location", location.as_str()),
                    (plan.response_header.as_str(), trig.as_str()),
                    ("cache-control", "no-store"),
                ];
                Flow::replied(host.send_reply(*status, &headers, b""))
            }
        }
    }

    fn on_response_headers<H: Host + ?Sized>(&self, host: &H, s: &mut Stream, eos: bool) -> Flow {
        if s.timed.is_none() && s.diverted.is_none() {
            return Flow::Continue;
        }
        let plan = &self.plan;
        let status = response_status(host);
        let now = host.now_ms();
        self.record_timing(s, status, now);
        let Some(trig) = s.diverted else {
            return Flow::Continue;
        };
        let tag = |why: &str| host.set_header(Map::Response, &plan.response_header, why);
        // A reply from the cache made by this filter (e.g. to a request that waited for a
        // fill) already says what it is.
        if host.header(Map::Response, &plan.response_header).is_some() {
            s.cache = None;
            return Flow::Continue;
        }
        let mut job = s.cache.take();
        let stale = job
            .as_mut()
            .and_then(|j| j.stale.take())
            .filter(|e| e.state(now) != State::Expired);
        let fallback = plan.rules.get(s.rule).and_then(|r| r.fallback.as_ref());
        let m = &self.m.filter;
        match diverted_answer(status, eos, stale.is_some(), fallback.is_some()) {
            DivertedAnswer::Good => {}
            DivertedAnswer::StaleCopy => {
                // A failing backend and a stale copy within stale-if-error: the copy.
                m.divert_failed.inc();
                if let Some(e) = stale {
                    replace_response(host, 200, &e.headers);
                    tag(&format!("{}; cache=stale-if-error", trig.as_str()));
                    m.cache_stale_if_error.inc();
                    s.replace_body = Some(e.body);
                }
                return Flow::Continue;
            }
            DivertedAnswer::Fallback => {
                // The simple-page backend failed and no copy is at hand: the rule's fixed
                // page (fail safe: the diverted request never goes back to the main app).
                m.divert_failed.inc();
                if let Some(f) = fallback {
                    replace_response(host, f.status, &f.headers);
                    host.set_header(Map::Response, "content-length", &f.body.len().to_string());
                    tag(&format!("{}; fallback", trig.as_str()));
                    m.divert_fallback.inc();
                    if !eos {
                        s.replace_body = Some(f.body.clone());
                    }
                }
                return Flow::Continue;
            }
            DivertedAnswer::Failed => {
                m.divert_failed.inc();
                tag(trig.as_str());
                return Flow::Continue;
            }
        }
        let Some(job) = job else {
            tag(trig.as_str());
            return Flow::Continue;
        };
        tag(trig.as_str());
        let Some(c) = plan.rules.get(job.rule).and_then(|r| r.cache.as_ref()) else {
            return Flow::Continue;
        };
        if !job.fill {
            return Flow::Continue;
        }
        let headers = host.headers(Map::Response);
        let length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.trim().parse::<usize>().ok());
        match cache::policy(status, &headers, length, &c.settings, now) {
            Ok(windows) => {
                let f = Filling {
                    key: job.key,
                    slot: job.slot,
                    windows,
                    headers: cache::kept_headers(&headers),
                    max_body: c.settings.max_body_bytes,
                };
                if eos {
                    self.store(host, &f, Vec::new(), now);
                } else {
                    s.filling = Some(f);
                }
            }
            Err(_) => self.m.filter.cache_not_cacheable.inc(),
        }
        Flow::Continue
    }

    fn on_response_body<H: Host + ?Sized>(
        &self,
        host: &H,
        s: &mut Stream,
        body_size: usize,
        eos: bool,
    ) -> Flow {
        if let Some(stale) = &s.replace_body {
            if !eos {
                return Flow::Pause;
            }
            host.set_response_body(0, body_size, stale);
            s.replace_body = None;
            return Flow::Continue;
        }
        let Some(f) = &s.filling else {
            return Flow::Continue;
        };
        if body_size > f.max_body {
            self.m.filter.cache_not_cacheable.inc();
            s.filling = None;
            return Flow::Continue;
        }
        if !eos {
            // Envoy buffers the body until the end (bounded by max_body above).
            return Flow::Pause;
        }
        if let Some(f) = s.filling.take() {
            match host.response_body(0, body_size) {
                Some(body) if body.len() == body_size => self.store(host, &f, body, host.now_ms()),
                _ => self.m.filter.cache_write_failed.inc(),
            }
        }
        Flow::Continue
    }

    fn on_log<H: Host + ?Sized>(&self, host: &H, s: &mut Stream) {
        // The fetch of a missing page is over (its answer is in the cache or was not
        // cacheable): free the waiters now rather than at their timeout.
        if let Some((slot, fp)) = s.lock.take() {
            self.data(host)
                .modify(&sp_lock(slot), Lock::decode, |cur| match cur {
                    Some(l) if l.key_fp == fp => Step::Write(
                        Lock {
                            key_fp: fp,
                            until_ms: 0,
                        }
                        .encode(),
                        (),
                    ),
                    _ => Step::Keep(()),
                });
        }
        // Went to the main backend and never got response headers (reset, timeout).
        if s.timed.is_some() {
            self.record_timing(s, 0, host.now_ms());
        }
    }
}

/// Replaces the response's status and every header but the pseudo-headers by `headers`
/// (the body is replaced in the body callback).
fn replace_response<H: Host + ?Sized>(host: &H, status: u16, headers: &[(String, String)]) {
    host.set_header(Map::Response, ":status", &status.to_string());
    for (k, _) in host.headers(Map::Response) {
        if !k.starts_with(':') {
            host.remove_header(Map::Response, &k);
        }
    }
    for (k, v) in headers {
        host.set_header(Map::Response, k, v);
    }
}

impl Filter {
    /// The triggers for this request, from the worker's copies (no shared-data call).
    fn signals<H: Host + ?Sized>(&self, rule: &Rule, i: usize, req: &HostRequest<H>) -> Signals {
        let w = self.worker.borrow();
        let (list, hot) = (w.list.get(), w.hot.get());
        // The key is extracted only when a published list could name it.
        let wanted = (rule.operator && !list.entries.is_empty())
            || (rule.hotkey_rule.is_some() && !hot.entries.is_empty());
        let key = if wanted {
            rule.key.as_ref().and_then(|k| k.key(req))
        } else {
            None
        };
        let mut sig = Signals {
            always: rule.always,
            ..Signals::default()
        };
        if rule.operator && !list.entries.is_empty() {
            let now = req.now();
            sig.listed = list.blocks_request_path(&rule.name, req.path(), now)
                || key
                    .as_deref()
                    .is_some_and(|k| list.blocks_key(&rule.name, k, now));
        }
        if let (Some(hk), Some(k)) = (rule.hotkey_rule.as_deref(), key.as_deref()) {
            // Hot entries do not expire: the publisher removes them.
            sig.hot = hot.blocks_key(hk, k, u64::MAX - 1);
        }
        if !rule.breaker_apis.is_empty() {
            let open = w.breakers.get();
            sig.breaker_open = open.entries.iter().any(|e| {
                rule.breaker_apis
                    .iter()
                    .any(|a| a == "*" || e.rule.as_deref() == Some(a.as_str()))
            });
        }
        sig.overloaded = w.overloaded.get(i).copied().flatten();
        sig
    }

    /// Shadow mode's log line, paced per rule (`shadow::ShadowLog`).
    fn shadow_log<H: Host + ?Sized>(
        &self,
        i: usize,
        rule: &Rule,
        trig: Trigger,
        req: &HostRequest<H>,
    ) {
        let n = {
            let Ok(mut w) = self.worker.try_borrow_mut() else {
                return;
            };
            match w.shadow_log.get_mut(i) {
                Some(l) => l.record(req.now()),
                None => None,
            }
        };
        if let Some(n) = n {
            log::info!(
                "{}",
                shadow::line(&rule.name, trig, req.method(), req.path(), n)
            );
        }
    }

    /// A response served from the cache (hit or stale). The local reply passes through this
    /// filter's response callbacks, which must then leave it alone.
    fn serve<H: Host + ?Sized>(
        &self,
        host: &H,
        s: &mut Stream,
        e: &Entry,
        why: &str,
        now: u64,
    ) -> bool {
        let headers = reply_headers(e, why, now, &self.plan.response_header);
        let sent = host.send_reply(200, &borrowed(&headers), &e.body);
        if sent {
            s.diverted = None;
            s.cache = None;
        }
        sent
    }

    /// The cache part of a diverted request. Some(flow) when answered or paused here.
    fn cache_request<H: Host + ?Sized>(
        &self,
        host: &H,
        s: &mut Stream,
        i: usize,
        rule: &Rule,
        trig: Trigger,
        req: &HostRequest<H>,
    ) -> Option<Flow> {
        let c = rule.cache.as_ref()?;
        let key = cache_key(rule, c, req)?;
        let fp = hash64(b"sg-sp-cache", &key);
        let slot = slot_of(fp, self.plan.slots);
        let now = req.now();
        let m = &self.m.filter;
        let data = self.data(host);
        let entry = data
            .read_with(&sp_cache(slot), Entry::decode)
            .filter(|e| e.key == key);
        let state = entry.as_ref().map_or(State::Expired, |e| e.state(now));
        let why = |c: &str| format!("{}; cache={c}", trig.as_str());
        let fill = req.method() == "GET";
        match (state, &entry) {
            (State::Fresh, Some(e)) => {
                if self.serve(host, s, e, &why("hit"), now) {
                    m.cache_hit.inc();
                    return Some(Flow::Pause);
                }
            }
            (State::StaleWhileRevalidate, Some(e)) => {
                if self.take_slot_lock(host, slot, fp, now, c.refresh_interval_ms) {
                    m.cache_refresh.inc();
                } else if self.serve(host, s, e, &why("stale"), now) {
                    m.cache_stale.inc();
                    return Some(Flow::Pause);
                }
            }
            _ => {
                // A page not in the cache: one request fetches it, the others wait for it.
                if c.lock_timeout_ms > 0 {
                    let won = self.take_slot_lock(host, slot, fp, now, c.lock_timeout_ms);
                    if won {
                        // Released when this stream ends (filled or not), so waiters never
                        // wait longer than the fetch.
                        s.lock = Some((slot, fp));
                    }
                    let mut w = self.worker.borrow_mut();
                    if !won && w.waiters.len() < MAX_WAITERS {
                        w.waiters.push(Waiter {
                            id: s.id,
                            slot,
                            fp,
                            key: key.clone(),
                            why: why("hit"),
                            deadline_ms: now.saturating_add(c.lock_timeout_ms),
                        });
                        // If the wait times out, the request goes on as a miss (tagged,
                        // and its answer may fill the cache).
                        s.cache = Some(CacheJob {
                            rule: i,
                            fill,
                            key,
                            slot,
                            stale: None,
                        });
                        return Some(Flow::Pause);
                    }
                }
                m.cache_miss.inc();
            }
        }
        // To the backend: fill the cache with the answer; keep a stale copy for errors.
        s.cache = Some(CacheJob {
            rule: i,
            fill,
            key,
            slot,
            stale: entry.filter(|e| e.state(now) != State::Expired),
        });
        None
    }

    /// Takes the slot's lock for page `fp` for `ms` (one backend request per page per lock);
    /// false when another request of this page holds it, or shared data fails.
    fn take_slot_lock<H: Host + ?Sized>(
        &self,
        host: &H,
        slot: u32,
        fp: u64,
        now: u64,
        ms: u64,
    ) -> bool {
        self.data(host)
            .modify(&sp_lock(slot), Lock::decode, |cur| {
                match cache::take_lock(cur, fp, now, ms) {
                    Some(l) => Step::Write(l.encode(), true),
                    None => Step::Keep(false),
                }
            })
            .unwrap_or(false)
    }

    fn store<H: Host + ?Sized>(&self, host: &H, f: &Filling, body: Vec<u8>, now: u64) {
        let entry = Entry {
            key: f.key.clone(),
            stored_ms: now,
            windows: f.windows,
            headers: f.headers.clone(),
            body,
        };
        let bytes = entry.encode();
        let new_len = bytes.len() as u64;
        let m = &self.m.filter;
        let data = self.data(host);
        // A slot holding another page that is still fresh keeps it (no thrashing between two
        // pages of one slot); the newcomer gets the slot once that page goes stale.
        let r = data.update(&sp_cache(f.slot), |cur| {
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
            Some(None) => m.cache_slot_busy.inc(),
            Some(Some(old)) => {
                m.cache_fill.inc();
                if old != new_len {
                    data.update(SP_CACHE_BYTES, |cur| {
                        let v = cur.and_then(|b| Reader::new(b).u64()).unwrap_or(0);
                        let mut w = Writer::with_capacity(8);
                        w.u64(v.saturating_add(new_len).saturating_sub(old));
                        Step::Write(w.finish(), ())
                    });
                }
            }
            None => m.cache_write_failed.inc(),
        }
    }

    /// The backend's time to response headers, for the overload tally.
    fn record_timing(&self, s: &mut Stream, status: u16, now: u64) {
        if let Some((i, start)) = s.timed.take() {
            let latency = now.saturating_sub(start);
            if let Some(t) = self.worker.borrow_mut().tallies.get_mut(i) {
                t.record(status, latency);
            }
        }
    }
}
