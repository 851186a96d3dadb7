//! The `sli` filter over the core kit's `Host`: classify each request (page type) when it
//! arrives, read the response's status and spikeguard marks when it answers, and count the
//! finished request in VM memory at `on_log` (once per stream, however it ended). The tick
//! flushes the counts to Envoy's stats, merges the summary and the top URLs into shared data,
//! and (lease holder) logs the top URLs. The status page is answered from shared data.

use crate::classify::{local_flags, Action, Code};
use crate::config::{Config, Page, Plan, Status};
use crate::series::{Record, Series};
use crate::status::{lossy_key, render, Facts};
use crate::summary::Summary;
use sg_core::hash::hash64;
use sg_core::host::{configure, property_u64, set_tick, Flow, Host, HostRequest, Map, Plugin};
use sg_core::key::{strip_port, RequestView};
use sg_core::keys::{sli_sum, sli_top, BR_OPEN, HK_DIVERT, HK_SHED, SP_STATE};
use sg_core::normalize::{canonical_query, split_path};
use sg_core::oplist::decode_list;
use sg_core::published::{decode_shed, decode_state};
use sg_core::shared::{ensure_all, Step};
use sg_core::sketch::SpaceSaving;
use sg_core::store::Data;
use sg_core::tick::{Now, Periodic, Steps};
use sg_core::topview::{View, MAX_ENTRIES};
use std::cell::RefCell;

pub const FILTER: &str = "sli";
/// The response header every simple page carries (`simplepage`'s `response_header` default).
pub const SIMPLE_PAGE_HEADER: &str = "x-spikeguard-simple-page";
/// The response header `ratelimit`, `hotkey` and `breaker` mark their answers with.
pub const ACTION_HEADER: &str = "x-spikeguard-action";
/// Entries of an operator-style list read for the status page.
const LIST_ENTRIES: usize = 1024;

sg_core::metrics! {
    /// Per direction: `sg.sli.<direction>.<what>`.
    pub struct SliMetrics {
        status_served: Counter = "status_served", "status-page requests answered";
        status_refused: Counter = "status_refused", "status-page requests answered 404 (not a loopback listener, no or a wrong token)";
        summary_merge_failed: Counter = "summary_merge_failed", "ticks whose summary merge lost every CAS or failed (those counts are missing from the status page only)";
        top_merge_failed: Counter = "top_merge_failed", "ticks whose top-URL merge lost every CAS or failed";
    }
}

pub type Metrics = sg_core::metrics::Metrics<SliMetrics, (), ()>;

/// What one stream remembers.
#[derive(Debug, Default)]
pub struct Stream {
    /// Counted at the end (false: the status page, or no config).
    active: bool,
    done: bool,
    page: usize,
    start_ms: u64,
    /// When the upstream's response headers came (no spikeguard mark on them).
    upstream_at: Option<u64>,
    status: u16,
    action: Option<Action>,
    bytes: u64,
    /// The response reached its end (the last body byte or headers-only).
    complete: bool,
}

struct Worker {
    series: Series,
    top: SpaceSaving,
    /// xorshift64 state for the top-URL sample (never 0).
    rng: u64,
}

impl Worker {
    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// The lease holder's side.
#[derive(Debug, Default)]
pub struct Leader {
    last_log_ms: u64,
}

pub struct Filter {
    pub plan: Plan,
    pub m: Metrics,
    /// `sli:<direction>`: the tick's lease.
    task: String,
    names: Vec<String>,
    local: u64,
    worker: RefCell<Worker>,
}

impl Plugin for Filter {
    type Stream = Stream;
    type Periodic = Periodic<Leader>;

    fn configure<H: Host + ?Sized>(host: &H) -> Option<(Filter, Periodic<Leader>)> {
        let plan = configure::<Config, H>(host, FILTER)?;
        let dir = plan.direction.as_str();
        let names: Vec<String> = plan
            .pages
            .iter()
            .map(|p| p.name.clone())
            .chain(std::iter::once("other".to_string()))
            .collect();
        ensure_all(host, FILTER, [sli_sum(dir), sli_top(dir)]);
        set_tick(
            host,
            FILTER,
            plan.tick_ms,
            "SLI counts will not reach the stats",
        );
        log::info!(
            "{FILTER}: configured {} page types ({dir}), tick {} ms",
            plan.pages.len(),
            plan.tick_ms
        );
        let worker = Worker {
            series: Series::define(host, dir, names.clone(), &plan.buckets_ms, &plan.slo_ms),
            top: SpaceSaving::new(plan.top.capacity),
            rng: hash64(b"sli-sample", &host.now_ms().to_le_bytes()) | 1,
        };
        let f = Filter {
            m: Metrics::define(host, FILTER, [dir]),
            task: format!("{FILTER}:{dir}"),
            names,
            local: local_flags(),
            plan,
            worker: RefCell::new(worker),
        };
        Some((f, Periodic::new(Leader::default())))
    }

    fn stream(_id: u32) -> Stream {
        Stream::default()
    }

    fn flush<H: Host + ?Sized>(&self, host: &H) {
        if let Ok(mut w) = self.worker.try_borrow_mut() {
            w.series.flush(host);
        }
        self.m.flush(host);
    }

    fn on_tick<H: Host + ?Sized>(&self, host: &H, p: &mut Periodic<Leader>) {
        let steps = &mut Tick {
            f: self,
            leader: &mut p.leader,
        };
        p.ticker.run(host, &self.task, self.plan.tick_ms, steps);
    }

    fn on_request<H: Host + ?Sized>(&self, host: &H, s: &mut Stream) -> Flow {
        let plan = &self.plan;
        let req = HostRequest::new(host);
        if let Some(st) = &plan.status {
            if !plan.shadow && *req.normalized_path() == *st.path {
                return self.serve_status(host, &req, st);
            }
        }
        let route = req.route_if(plan.needs_route);
        s.page = plan
            .pages
            .iter()
            .position(|p| page_matches(p, &req, route.as_deref()))
            .unwrap_or(plan.pages.len());
        s.start_ms = req.now();
        s.active = true;
        if let Ok(mut w) = self.worker.try_borrow_mut() {
            // One request in `sample_1_in`, weighted by it: the top list's rates stay
            // unbiased and a request that is not sampled builds no URL.
            let every = plan.top.sample_1_in;
            if every <= 1 || w.next_random() % every == 0 {
                let url = top_url(&req, plan.top.query_params.as_deref());
                w.top
                    .add(hash64(b"sli", url.as_bytes()), url.as_bytes(), every.max(1));
            }
        }
        Flow::Continue
    }

    fn on_response_headers<H: Host + ?Sized>(&self, host: &H, s: &mut Stream, eos: bool) -> Flow {
        if !s.active {
            return Flow::Continue;
        }
        // One host call for every value needed here.
        let headers = host.headers(Map::Response);
        let find = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        s.status = find(":status")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let action = Action::from_marks(find(ACTION_HEADER), find(SIMPLE_PAGE_HEADER));
        s.action = Some(action);
        s.complete = eos;
        if action == Action::None {
            s.upstream_at = Some(host.now_ms());
        }
        if !self.plan.shadow {
            for h in &self.plan.strip {
                if find(h).is_some() {
                    host.remove_header(Map::Response, h);
                }
            }
        }
        Flow::Continue
    }

    fn on_response_body<H: Host + ?Sized>(
        &self,
        _host: &H,
        s: &mut Stream,
        body_size: usize,
        eos: bool,
    ) -> Flow {
        s.bytes = s.bytes.saturating_add(body_size as u64);
        s.complete |= eos;
        Flow::Continue
    }

    fn on_log<H: Host + ?Sized>(&self, host: &H, s: &mut Stream) {
        if !s.active || s.done {
            return;
        }
        s.done = true;
        let now = host.now_ms();
        // The flags matter only when the response did not end normally below 500 (the
        // client left: 499; Envoy answered itself: no upstream time): an ordinary answer
        // pays no property read.
        let flags = if s.complete && (1..500).contains(&s.status) {
            0
        } else {
            property_u64(host, &["response", "flags"]).unwrap_or(0)
        };
        let upstream_ms = s
            .upstream_at
            .filter(|_| flags & self.local == 0)
            .map(|t| t.saturating_sub(s.start_ms));
        let r = Record {
            page: s.page,
            code: Code::of(s.status, flags, &self.plan.codes),
            action: s.action.unwrap_or(Action::None),
            total_ms: now.saturating_sub(s.start_ms),
            upstream_ms,
            bytes: s.bytes,
        };
        if let Ok(mut w) = self.worker.try_borrow_mut() {
            w.series.record(&r);
        }
    }
}

/// Page type `p` applies to the request.
fn page_matches<R: RequestView + ?Sized>(p: &Page, req: &R, route: Option<&str>) -> bool {
    p.matcher.matches_request(req, route)
        && (p.hosts.is_empty() || {
            let h = strip_port(req.host());
            p.hosts.iter().any(|x| x.eq_ignore_ascii_case(h))
        })
        && p.key.as_ref().is_none_or(|k| k.key(req).is_some())
}

/// The URL the top list counts: the normalised path and the canonical query (only
/// `query_params` when given).
fn top_url<R: RequestView + ?Sized>(req: &R, keep: Option<&[String]>) -> String {
    let query = split_path(req.path()).1;
    let path = req.normalized_path();
    if query.is_empty() {
        return path.into_owned();
    }
    let q = canonical_query(query, keep);
    if q.is_empty() {
        path.into_owned()
    } else {
        format!("{path}?{q}")
    }
}

impl Filter {
    fn data<'a, H: Host + ?Sized>(&'a self, host: &'a H) -> Data<'a, H> {
        Data::new(host, &self.m.store)
    }

    fn dir(&self) -> &'static str {
        self.plan.direction.as_str()
    }

    /// The top URLs of the last complete window, (url, milli-rps), highest first.
    fn top_urls<H: Host + ?Sized>(&self, host: &H, now_ms: u64) -> Vec<(String, u64)> {
        let t = &self.plan.top;
        let view: View = self
            .data(host)
            .read(&sli_top(self.dir()))
            .unwrap_or_default();
        let epoch = (now_ms / t.bucket_ms.max(1)).saturating_sub(1);
        let (_, rates) = view.rates(epoch, t.buckets, t.bucket_ms);
        rates
            .iter()
            .take(t.n)
            .map(|r| (lossy_key(r), r.milli_rps))
            .collect()
    }

    fn serve_status<H: Host + ?Sized>(
        &self,
        host: &H,
        req: &HostRequest<'_, H>,
        st: &Status,
    ) -> Flow {
        let m = self.m.rules.first();
        let loopback = host
            .property(&["destination", "address"])
            .is_some_and(|a| a.starts_with("127.") || a.starts_with("[::1]"));
        let token_ok = st.token.as_ref().is_some_and(|t| {
            req.header("authorization")
                .is_some_and(|v| v.strip_prefix("Bearer ") == Some(t.as_str()))
        });
        if !(loopback || token_ok) {
            m.inspect(|m| m.status_refused.inc());
            return Flow::replied(host.send_reply(
                404,
                &[("content-type", "text/plain")],
                b"not found\n",
            ));
        }
        let now = req.now();
        let data = self.data(host);
        let list = |key: &str| {
            data.bytes(key)
                .and_then(|b| decode_list(&b, LIST_ENTRIES))
                .map(|x| x.1)
        };
        let facts = Facts {
            direction: self.dir(),
            now_ms: now,
            edges: self.plan.buckets_ms.clone(),
            summary: data
                .read::<Summary>(&sli_sum(self.dir()))
                .unwrap_or_default(),
            top_urls: self.top_urls(host, now),
            window_s: self.plan.top.window_s,
            breakers: list(BR_OPEN),
            diverted: list(HK_DIVERT),
            shed: data
                .bytes(HK_SHED)
                .and_then(|b| decode_shed(&b))
                .map(|x| x.1)
                .unwrap_or_default(),
            overloaded: data
                .bytes(SP_STATE)
                .and_then(|b| decode_state(&b))
                .unwrap_or_default(),
        };
        m.inspect(|m| m.status_served.inc());
        let body = render(&facts).to_string();
        Flow::replied(host.send_reply(
            200,
            &[
                ("content-type", "application/json"),
                ("cache-control", "no-store"),
            ],
            body.as_bytes(),
        ))
    }
}

/// One tick's steps.
struct Tick<'a> {
    f: &'a Filter,
    leader: &'a mut Leader,
}

impl<H: Host + ?Sized> Steps<H> for Tick<'_> {
    /// Flush this worker's counts to the stats; merge them into the summary and the top URLs.
    fn merge(&mut self, host: &H, now: Now) {
        let f = self.f;
        let (flushed, (total, entries)) = match f.worker.try_borrow_mut() {
            Ok(mut w) => (w.series.flush(host), w.top.drain()),
            Err(_) => return,
        };
        f.m.flush(host);
        let data = f.data(host);
        let m = f.m.rules.first();
        if flushed.iter().any(|t| t.total > 0) {
            let r = data.modify(&sli_sum(f.dir()), Summary::decode, |cur| {
                let mut s = cur.unwrap_or_default();
                s.merge(&f.names, &flushed);
                Step::Write(s.encode(), ())
            });
            if r.is_none() {
                m.inspect(|m| m.summary_merge_failed.inc());
            }
        }
        if total > 0 {
            let t = &f.plan.top;
            let epoch = now.ms / t.bucket_ms.max(1);
            let keep = t.n.saturating_mul(4).clamp(64, MAX_ENTRIES);
            let r = data.modify(&sli_top(f.dir()), View::decode, |v| {
                let mut v = v.unwrap_or_default();
                v.merge(epoch, total, &entries, t.buckets.saturating_add(1), keep);
                Step::Write(v.encode(), ())
            });
            if r.is_none() {
                m.inspect(|m| m.top_merge_failed.inc());
            }
        }
    }

    /// The lease holder logs the top URLs every `log_every_s`.
    fn lead(&mut self, host: &H, now: Now, _became: bool) {
        let f = self.f;
        let every = f.plan.top.log_every_s.saturating_mul(1000);
        if every == 0 || now.ms.saturating_sub(self.leader.last_log_ms) < every {
            return;
        }
        self.leader.last_log_ms = now.ms;
        let top = f.top_urls(host, now.ms);
        if top.is_empty() {
            return;
        }
        let list: Vec<String> = top
            .iter()
            .map(|(u, r)| {
                format!(
                    "{} {}/s",
                    sg_core::alert::escape(u, &[','], 256),
                    sg_core::alert::rate(*r)
                )
            })
            .collect();
        log::info!(
            "{FILTER}: top URLs ({}, last {} s): {}",
            f.dir(),
            f.plan.top.window_s,
            list.join(", ")
        );
    }

    fn refresh(&mut self, _host: &H, _now: Now) {}
}

impl Filter {
    /// Series of `spikeguard_requests_total` this worker defined (tests).
    pub fn request_series(&self) -> usize {
        self.worker
            .try_borrow()
            .map_or(0, |w| w.series.request_series())
    }
}
