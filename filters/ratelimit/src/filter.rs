//! The filter's life in Envoy, as plain logic over `sg_core::host::Host`: configure, one
//! request (check, then continue, hold for a delay, or reply), its response (RateLimit
//! headers), and the tick (resume held requests, flush counters). `adapter` only forwards
//! proxy-wasm callbacks here.

use crate::config::{Config, Plan};
use crate::engine::{
    check_leased, give_back_expired, Action, FleetCtx, Leases, RuleOutcome, Verdict,
};
use crate::fleet::{self, Sync};
use sg_core::fleetsync::FleetMetrics;
use sg_core::host::{configure, set_tick, Flow, Host, HostRequest, Map, Plugin};
use sg_core::keys::{fl_meta, fl_seen, fl_slot, rl_slot, FL_ENVOY};
use sg_core::metrics::{filter_metric, Counter};
use sg_core::shared::ensure_all;
use std::cell::RefCell;

pub const FILTER: &str = "ratelimit";
/// Resume timer granularity for delayed requests (measured: asked 100 ms, got ~112 ms).
pub const TICK_MS: u64 = 10;
/// Tick period when no rule delays: only counters are flushed (stats lag at most this).
pub const FLUSH_TICK_MS: u64 = 200;

sg_core::metrics! {
    /// Per rule: `sg.ratelimit.<rule>.<what>`.
    pub struct RuleMetrics {
        allowed: Counter = "allowed", "requests the rule let through at once";
        delayed: Counter = "delayed", "requests the rule held to pace them";
        rejected: Counter = "rejected", "requests the rule rejected";
        dry_run_rejected: Counter = "dry_run_rejected", "requests a dry-run rule would have rejected";
        dry_run_delayed: Counter = "dry_run_delayed", "requests a dry-run rule would have delayed";
        store_error: Counter = "store_error", "shared data failed for the rule (on_store_error applied)";
        cas_giveup: Counter = "cas_giveup", "CAS attempts exhausted for the rule (on_store_error applied)";
        skipped_diverted: Counter = "skipped_diverted", "requests diverted to the simple page, not counted (include_diverted: false)";
        fleet_share_ppm: Gauge = "fleet_share_ppm", "fleet rules: this Envoy's share of the rule's fleet traffic at the last sync, in millionths";
    }
}

sg_core::metrics! {
    /// Filter-wide: `sg.ratelimit.<what>`.
    pub struct FilterMetrics {
        evicted_in_debt: Counter = "evicted_in_debt", "keys evicted from a full slot while still in debt";
        resumed: Counter = "resumed", "delayed requests resumed";
        lease_given_back: Counter = "lease_given_back", "leased requests a worker did not use, given back to shared data";
    }
}

/// `sg.ratelimit.*`: no operator side.
pub type Metrics = sg_core::metrics::Metrics<RuleMetrics, FilterMetrics, ()>;

/// Counts a verdict: each applied rule's outcome, and what the store reported.
fn record(m: &Metrics, v: &Verdict) {
    for (idx, outcome) in &v.rules {
        let Some(r) = m.rules.get(*idx) else {
            continue;
        };
        let c: &Counter = match outcome {
            RuleOutcome::Allowed => &r.allowed,
            RuleOutcome::Delayed(_) => &r.delayed,
            RuleOutcome::Rejected => &r.rejected,
            RuleOutcome::DryRunRejected => &r.dry_run_rejected,
            RuleOutcome::DryRunDelayed(_) => &r.dry_run_delayed,
            RuleOutcome::StoreTrouble { gave_up: true } => &r.cas_giveup,
            RuleOutcome::StoreTrouble { gave_up: false } => &r.store_error,
            RuleOutcome::SkippedDiverted => &r.skipped_diverted,
        };
        c.inc();
    }
    m.store.bad_state.add(u64::from(v.bad_state));
    m.filter.evicted_in_debt.add(u64::from(v.evicted_in_debt));
}

/// One stream's state between its callbacks.
#[derive(Debug, Default)]
pub struct Stream {
    pub id: u32,
    /// RateLimit header values to add to the upstream response.
    quota: Option<(String, String)>,
    replied: bool,
}

impl Stream {
    pub fn new(id: u32) -> Stream {
        Stream {
            id,
            ..Stream::default()
        }
    }
}

/// The configured filter of one worker.
#[derive(Debug)]
pub struct Filter {
    pub plan: Plan,
    pub m: Metrics,
    /// Requests held for a delay: (due time ms, context id). Bounded by requests in flight.
    held: RefCell<Vec<(u64, u32)>>,
    /// This worker's leases (leased rules only; bounded by `engine::MAX_LEASES`).
    leases: RefCell<Leases>,
    /// Fleet rules: this worker's seen counts and its copy of their sync state.
    fleet: fleet::Worker,
    /// `sg.ratelimit.fleet_*`: the fleet sync's own (`sg_core::fleetsync`).
    pub fm: FleetMetrics,
    tick_ms: u64,
}

fn quota_headers(plan: &Plan, v: &Verdict) -> Option<(String, String)> {
    let q = v.quota.as_ref()?;
    let rule = plan.rules.get(q.rule)?;
    Some((
        format!(
            "\"{}\";q={};w={}",
            rule.name, rule.rate.quota, rule.rate.window_s
        ),
        format!("\"{}\";r={};t={}", rule.name, q.remaining, q.reset_s),
    ))
}

impl Plugin for Filter {
    type Stream = Stream;
    /// The fleet sync (lease holder only; idle without fleet rules).
    type Periodic = Sync;

    fn configure<H: Host + ?Sized>(host: &H) -> Option<(Filter, Sync)> {
        let plan = configure::<Config, H>(host, FILTER)?;
        // Every slot key now, so request-time writes are always CAS writes.
        ensure_all(
            host,
            FILTER,
            plan.rules.iter().flat_map(|r| {
                let fleet = r.fleet.is_some();
                (0..r.sets).map(move |slot| match fleet {
                    true => fl_slot(&r.name, slot),
                    false => rl_slot(&r.name, slot),
                })
            }),
        );
        if plan.fleet.is_some() {
            ensure_all(
                host,
                FILTER,
                plan.rules
                    .iter()
                    .filter(|r| r.fleet.is_some())
                    .flat_map(|r| [fl_meta(&r.name), fl_seen(&r.name)])
                    .chain([FL_ENVOY.to_string()]),
            );
        }
        // Leases are given back within a tick of their end.
        let lease_ms = plan
            .rules
            .iter()
            .filter_map(|r| r.lease)
            .map(|l| l.ms)
            .min();
        let tick = if plan.delays {
            TICK_MS
        } else {
            lease_ms.map_or(FLUSH_TICK_MS, |ms| ms.clamp(TICK_MS, FLUSH_TICK_MS))
        };
        let tick = plan
            .fleet
            .as_ref()
            .map_or(tick, |f| tick.min(fleet::tick_ms(f)));
        set_tick(
            host,
            FILTER,
            tick,
            "delayed requests would not resume, counters not flush",
        );
        log::info!(
            "{FILTER}: configured {} rules ({} slot keys)",
            plan.rules.len(),
            plan.rules.iter().map(|r| u64::from(r.sets)).sum::<u64>()
        );
        if let Some(f) = plan.fleet.as_ref() {
            log::info!(
                "{FILTER}: {} fleet rules, syncing every {} ms through cluster {}",
                plan.rules.iter().filter(|r| r.fleet.is_some()).count(),
                f.sync_ms,
                f.cluster
            );
        }
        let f = Filter {
            m: Metrics::define(host, FILTER, plan.rules.iter().map(|r| r.name.as_str())),
            fleet: fleet::Worker::new(&plan),
            fm: FleetMetrics::define(host, |w| filter_metric(FILTER, w)),
            plan,
            held: RefCell::default(),
            leases: RefCell::default(),
            tick_ms: tick,
        };
        Some((f, Sync::default()))
    }

    fn stream(id: u32) -> Stream {
        Stream::new(id)
    }

    fn flush<H: Host + ?Sized>(&self, host: &H) {
        self.m.flush(host);
        self.fm.flush(host);
    }

    fn on_request<H: Host + ?Sized>(&self, host: &H, s: &mut Stream) -> Flow {
        let plan = &self.plan;
        let req = HostRequest::new(host);
        let route = req.route_if(plan.needs_route);
        let metas = self.fleet.metas.try_borrow().ok();
        let ctx = FleetCtx {
            metas: metas.as_deref().map_or(&[], |m| m.as_slice()),
            stale_ms: plan
                .fleet
                .as_ref()
                .map_or(0, |f| fleet::stale_ms(f, self.tick_ms)),
        };
        let mut spare = Leases::default();
        let mut borrowed = self.leases.try_borrow_mut().ok();
        let leases = borrowed.as_deref_mut().unwrap_or(&mut spare);
        let verdict = check_leased(
            plan,
            host,
            &req,
            route.as_deref(),
            || req.now(),
            leases,
            ctx,
        );
        drop(borrowed);
        drop(metas);
        if plan.fleet.is_some() {
            for (idx, outcome) in &verdict.rules {
                let fleet_rule = plan.rules.get(*idx).is_some_and(|r| r.fleet.is_some());
                if fleet_rule && *outcome != RuleOutcome::SkippedDiverted {
                    self.fleet.saw(*idx);
                }
            }
        }
        record(&self.m, &verdict);
        let rejected = matches!(verdict.action, Action::Reject { .. });
        if plan.rate_limit_headers || rejected {
            s.quota = quota_headers(plan, &verdict);
        }
        match verdict.action {
            Action::Allow => Flow::Continue,
            Action::Delay(ms) => {
                if let Ok(mut held) = self.held.try_borrow_mut() {
                    held.push((req.now().saturating_add(ms), s.id));
                    return Flow::Pause;
                }
                Flow::Continue
            }
            Action::Reject { retry_after_s, .. } => {
                s.replied = true;
                let retry = retry_after_s.to_string();
                let mut headers: Vec<(&str, &str)> = vec![
                    ("content-type", plan.reject.content_type.as_str()),
                    ("retry-after", retry.as_str()),
                    ("x-spikeguard-action", FILTER),
                ];
                if let Some((policy, state)) = &s.quota {
                    headers.push(("ratelimit-policy", policy.as_str()));
                    headers.push(("ratelimit", state.as_str()));
                }
                let sent =
                    host.send_reply(plan.reject.status, &headers, plan.reject.body.as_bytes());
                if !sent {
                    log::warn!("{FILTER}: could not send the local reply; request continues");
                }
                Flow::replied(sent)
            }
        }
    }

    fn on_response_headers<H: Host + ?Sized>(&self, host: &H, s: &mut Stream, _eos: bool) -> Flow {
        if s.replied {
            return Flow::Continue;
        }
        if let Some((policy, state)) = s.quota.take() {
            host.set_header(Map::Response, "ratelimit-policy", &policy);
            host.set_header(Map::Response, "ratelimit", &state);
        }
        Flow::Continue
    }

    /// The fleet sync's answer (root context).
    fn on_call_response<H: Host + ?Sized>(
        &self,
        host: &H,
        sync: &mut Sync,
        token: u32,
        body_size: usize,
    ) {
        sync.on_response(host, &self.plan, token, body_size, &self.m, &self.fm);
    }

    /// The stream is gone: a held request whose client went away is no longer tracked.
    fn on_done(&self, s: &mut Stream) {
        if let Ok(mut held) = self.held.try_borrow_mut() {
            held.retain(|(_, id)| *id != s.id);
        }
    }

    fn on_tick<H: Host + ?Sized>(&self, host: &H, sync: &mut Sync) {
        if self.plan.fleet.is_some() {
            self.fleet.tick(host, &self.plan);
            sync.tick(host, &self.plan, self.tick_ms, &self.m, &self.fm);
        }
        let now = host.now_ms();
        if let Ok(mut leases) = self.leases.try_borrow_mut() {
            if !leases.is_empty() {
                let n = give_back_expired(&self.plan, host, &mut leases, now);
                self.m.filter.lease_given_back.add(n);
            }
        }
        let due: Vec<u32> = match self.held.try_borrow_mut() {
            Ok(mut held) => {
                let (due, keep): (Vec<_>, Vec<_>) = held.drain(..).partition(|(t, _)| *t <= now);
                *held = keep;
                due.into_iter().map(|(_, id)| id).collect()
            }
            Err(_) => Vec::new(),
        };
        for id in due {
            // A context that is gone (client went away) is refused here; nothing to resume.
            if host.resume(id) {
                self.m.filter.resumed.inc();
            }
        }
        self.m.flush(host);
        self.fm.flush(host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sg_core::testing::MemHost;

    fn filter(h: &MemHost, json: &str) -> Filter {
        h.set_config(json);
        Filter::configure(h).expect("config accepted").0
    }

    fn request(f: &Filter, h: &MemHost, id: u32, path: &str) -> (Flow, Stream) {
        h.get("blog", path);
        let mut s = Stream::new(id);
        (f.on_request(h, &mut s), s)
    }

    const LEASED: &str = r#"{"rules":[{"name":"all","key":{"fixed":"x"},"rate":"10r/s","burst":20,"mode":"nodelay","lease":{"tokens":8,"ms":100}}]}"#;
    const EXACT: &str = r#"{"rules":[{"name":"all","key":{"fixed":"x"},"rate":"10r/s","burst":20,"mode":"nodelay"}]}"#;

    fn admitted(f: &Filter, h: &MemHost, n: u32) -> u32 {
        (0..n)
            .filter(|i| request(f, h, *i, "/").0 == Flow::Continue)
            .count() as u32
    }

    #[test]
    fn leased_workers_never_admit_more_at_once_than_the_exact_limit() {
        // Two workers on one shared store, requests at one instant, in turn.
        let h = MemHost::new();
        h.set_now(1_000);
        let (a, b) = (filter(&h, LEASED), filter(&h, LEASED));
        let mut ok = 0;
        for i in 0..40 {
            let w = if i % 2 == 0 { &a } else { &b };
            ok += admitted(w, &h, 1);
        }
        h.take_replies();
        // nginx admits burst + 1 = 21 at one instant; leases only move tokens between
        // workers (the second worker's last lease may hold some unused).
        assert!(ok <= 21, "{ok}");
        assert!(ok >= 21 - 7, "at most one lease of 8 left unused: {ok}");
        assert_eq!(
            h.tick_period_ms(),
            100,
            "give-back within a tick of a lease's end"
        );
    }

    #[test]
    fn a_leases_unused_tokens_are_given_back_after_it_ends() {
        let h = MemHost::new();
        h.set_now(1_000);
        let leased = filter(&h, LEASED);
        assert_eq!(admitted(&leased, &h, 1), 1, "takes 8, uses 1");
        // Another worker, exact, sees 8 taken: 21 - 8 = 13 left at this instant.
        let probe = filter(&h, EXACT);
        h.set_now(1_001);
        assert_eq!(admitted(&probe, &h, 30), 13);
        // Same again, but the lease ends and its tick gives the 7 unused back first.
        let h = MemHost::new();
        h.set_now(1_000);
        let leased = filter(&h, LEASED);
        assert_eq!(admitted(&leased, &h, 1), 1);
        h.set_now(1_100);
        leased.on_tick(&h, &mut Sync::default());
        assert_eq!(h.metric("sg.ratelimit.lease_given_back"), Some(7));
        let probe = filter(&h, EXACT);
        h.set_now(1_100);
        let after_give_back = admitted(&probe, &h, 30);
        // Exactly what the same history (one request at 1,000, then 30 at 1,100) gets with no
        // lease at all: the unused 7 are not lost.
        let e = MemHost::new();
        e.set_now(1_000);
        let exact = filter(&e, EXACT);
        assert_eq!(admitted(&exact, &e, 1), 1);
        e.set_now(1_100);
        assert_eq!(after_give_back, admitted(&exact, &e, 30));
        assert_eq!(after_give_back, 21);
    }

    #[test]
    fn a_steady_overload_through_a_leased_rule_admits_the_rate_within_the_bound() {
        // 100 r/s offered for 10 s to a 10 r/s, burst 20 rule by two workers in turn:
        // exact nginx admits 21 + 10 x 10 = 121 (within one); leased may be early by at most
        // rate x lease ms (1 request) and late by what the last leases hold unused.
        for config in [EXACT, LEASED] {
            let h = MemHost::new();
            let (a, b) = (filter(&h, config), filter(&h, config));
            let mut ok = 0;
            for t in 0..1000u64 {
                h.set_now(10_000 + t * 10);
                let w = if t % 2 == 0 { &a } else { &b };
                ok += admitted(w, &h, 1);
                if t % 10 == 0 {
                    a.on_tick(&h, &mut Sync::default());
                    b.on_tick(&h, &mut Sync::default());
                }
            }
            h.take_replies();
            assert!((106..=122).contains(&ok), "{config}: {ok}");
        }
    }

    #[test]
    fn lease_config_is_refused_where_it_cannot_hold() {
        let h = MemHost::new();
        for (bad, field) in [
            (
                r#""mode":"delay","lease":{"tokens":8,"ms":100}"#,
                "rules[0].lease",
            ),
            (
                r#""mode":"nodelay","dry_run":true,"lease":{"tokens":8,"ms":100}"#,
                "rules[0].lease",
            ),
            (
                r#""mode":"nodelay","lease":{"tokens":1,"ms":100}"#,
                "rules[0].lease.tokens",
            ),
            (
                r#""mode":"nodelay","lease":{"tokens":8,"ms":0}"#,
                "rules[0].lease.ms",
            ),
        ] {
            h.set_config(&format!(
                r#"{{"rules":[{{"name":"r","key":{{"fixed":"x"}},"rate":"1r/s",{bad}}}]}}"#
            ));
            let e = <crate::config::Config as sg_core::config::Compile>::parse(&h.plugin_config())
                .expect_err(bad);
            assert_eq!(e.path, field, "{bad}: {e}");
        }
    }

    #[test]
    fn burst_then_reject_with_retry_after_and_the_counters_flushed() {
        let h = MemHost::new();
        h.set_now(1_000);
        let f = filter(
            &h,
            r#"{"rules":[{"name":"per_blog","key":{"query":"blogId"},"rate":"1r/s","burst":1,"mode":"nodelay"}]}"#,
        );
        assert_eq!(h.tick_period_ms(), FLUSH_TICK_MS);
        assert_eq!(request(&f, &h, 1, "/?blogId=a").0, Flow::Continue);
        assert_eq!(request(&f, &h, 2, "/?blogId=a").0, Flow::Continue);
        assert_eq!(request(&f, &h, 3, "/?blogId=a").0, Flow::Pause);
        let r = h.take_replies();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, 429);
        assert_eq!(r[0].header("retry-after"), Some("1"));
        assert_eq!(r[0].header("x-spikeguard-action"), Some("ratelimit"));
        assert_eq!(request(&f, &h, 4, "/?blogId=b").0, Flow::Continue);
        f.on_tick(&h, &mut Sync::default());
        assert_eq!(h.metric("sg.ratelimit.per_blog.allowed"), Some(3));
        assert_eq!(h.metric("sg.ratelimit.per_blog.rejected"), Some(1));
    }

    #[test]
    fn a_refused_reply_lets_the_request_go_on() {
        let h = MemHost::new();
        let f = filter(
            &h,
            r#"{"rules":[{"name":"g","key":{"fixed":"x"},"rate":"1r/s","mode":"nodelay"}]}"#,
        );
        request(&f, &h, 1, "/");
        h.refuse_replies(true);
        assert_eq!(request(&f, &h, 2, "/").0, Flow::Continue);
    }

    #[test]
    fn a_delayed_request_is_resumed_when_due_and_a_gone_one_is_forgotten() {
        let h = MemHost::new();
        h.set_now(0);
        let f = filter(
            &h,
            r#"{"rules":[{"name":"g","key":{"fixed":"x"},"rate":"10r/s","burst":5}]}"#,
        );
        assert_eq!(h.tick_period_ms(), TICK_MS);
        assert_eq!(request(&f, &h, 1, "/").0, Flow::Continue);
        assert_eq!(request(&f, &h, 2, "/").0, Flow::Pause, "held 100 ms");
        let (flow, mut gone) = request(&f, &h, 3, "/");
        assert_eq!(flow, Flow::Pause, "held 200 ms");
        f.on_done(&mut gone);
        h.set_now(99);
        f.on_tick(&h, &mut Sync::default());
        assert!(h.take_resumed().is_empty());
        h.set_now(250);
        f.on_tick(&h, &mut Sync::default());
        assert_eq!(h.take_resumed(), [2]);
        assert_eq!(h.metric("sg.ratelimit.resumed"), Some(1));
        assert_eq!(h.metric("sg.ratelimit.g.delayed"), Some(2));
    }

    #[test]
    fn rate_limit_headers_go_on_the_upstream_response() {
        let h = MemHost::new();
        let f = filter(
            &h,
            r#"{"rate_limit_headers": true, "rules":[{"name":"g","key":{"fixed":"x"},"rate":"10r/s","burst":4,"mode":"nodelay"}]}"#,
        );
        let (_, mut s) = request(&f, &h, 1, "/");
        h.respond(200, &[], b"");
        f.on_response_headers(&h, &mut s, false);
        assert_eq!(
            h.resp_header("ratelimit-policy").as_deref(),
            Some("\"g\";q=10;w=1")
        );
        assert!(h
            .resp_header("ratelimit")
            .is_some_and(|v| v.starts_with("\"g\";r=")));
    }

    #[test]
    fn a_request_diverted_to_the_simple_page_is_neither_counted_nor_rejected() {
        let h = MemHost::new();
        let f = filter(
            &h,
            r#"{"rules":[{"name":"app","key":{"fixed":"x"},"rate":"1r/s","mode":"nodelay"},
                {"name":"simple","match":{"path_prefix":"/p"},"key":{"fixed":"x"},"rate":"1r/s","mode":"nodelay","include_diverted":true}]}"#,
        );
        let diverted = |id| {
            h.request(&[
                (":method", "GET"),
                (":path", "/p"),
                ("x-spikeguard-divert", "hotkey"),
            ]);
            f.on_request(&h, &mut Stream::new(id))
        };
        assert_eq!(
            diverted(1),
            Flow::Continue,
            "charges only the opted-in rule"
        );
        assert_eq!(
            diverted(2),
            Flow::Pause,
            "the opted-in rule caps diverted traffic"
        );
        let _ = h.take_replies();
        // The app's own budget is untouched by the diverted requests.
        h.get("blog", "/q");
        let mut s = Stream::new(3);
        let _ = f.on_request(&h, &mut s);
        f.on_tick(&h, &mut Sync::default());
        assert_eq!(h.metric("sg.ratelimit.app.skipped_diverted"), Some(2));
        assert_eq!(h.metric("sg.ratelimit.app.allowed"), Some(1));
        assert_eq!(h.metric("sg.ratelimit.simple.skipped_diverted"), Some(0));
    }

    #[test]
    fn a_store_failure_fails_open_and_is_counted() {
        let h = MemHost::new();
        let f = filter(
            &h,
            r#"{"rules":[{"name":"g","key":{"fixed":"x"},"rate":"1r/s","mode":"nodelay"}]}"#,
        );
        h.store.set_failing(true);
        for id in 0..3 {
            assert_eq!(request(&f, &h, id, "/").0, Flow::Continue);
        }
        h.store.set_failing(false);
        f.on_tick(&h, &mut Sync::default());
        assert_eq!(h.metric("sg.ratelimit.g.store_error"), Some(3));
    }
}
