//! The proxy-wasm adapter: reads the request, asks `engine::check`, and turns the verdict
//! into continue, pause-then-resume (delay), or a local reply. No algorithm lives here.
//! Host calls go through `hostcalls` functions that return `Result` (the SDK's trait helpers
//! unwrap and would trap the VM on an unexpected status).

use crate::config::{Config, Plan};
use crate::engine::{check, slot_key, Action, RuleOutcome, Verdict};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action as HostAction, ContextType, LogLevel};
use sg_core::host::{
    now_ms, plugin_config, resume_request_of, route_name_if, send_reply, set_header, Counter,
    HostRequest, HostStore, RESPONSE_HEADERS,
};
use sg_core::metrics::{filter_metric, rule_metric};
use sg_core::shared::ensure;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

const FILTER: &str = "ratelimit";
/// Resume timer granularity for delayed requests (measured: asked 100 ms, got ~112 ms).
const TICK_MS: u64 = 10;
/// Tick period when no rule delays: only counters are flushed (stats lag at most this).
const FLUSH_TICK_MS: u64 = 200;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

#[derive(Default)]
struct RuleMetrics {
    allowed: Counter,
    delayed: Counter,
    rejected: Counter,
    dry_run_rejected: Counter,
    dry_run_delayed: Counter,
    store_error: Counter,
    cas_giveup: Counter,
}

#[derive(Default)]
struct Metrics {
    rules: Vec<RuleMetrics>,
    bad_state: Counter,
    evicted_in_debt: Counter,
    resumed: Counter,
}

impl Metrics {
    fn define(plan: &Plan) -> Metrics {
        let r = |rule: &str, what: &str| Counter::define(&rule_metric(FILTER, rule, what));
        Metrics {
            rules: plan
                .rules
                .iter()
                .map(|x| RuleMetrics {
                    allowed: r(&x.name, "allowed"),
                    delayed: r(&x.name, "delayed"),
                    rejected: r(&x.name, "rejected"),
                    dry_run_rejected: r(&x.name, "dry_run_rejected"),
                    dry_run_delayed: r(&x.name, "dry_run_delayed"),
                    store_error: r(&x.name, "store_error"),
                    cas_giveup: r(&x.name, "cas_giveup"),
                })
                .collect(),
            bad_state: Counter::define(&filter_metric(FILTER, "bad_state")),
            evicted_in_debt: Counter::define(&filter_metric(FILTER, "evicted_in_debt")),
            resumed: Counter::define(&filter_metric(FILTER, "resumed")),
        }
    }

    fn flush(&self) {
        for r in &self.rules {
            for c in [
                &r.allowed,
                &r.delayed,
                &r.rejected,
                &r.dry_run_rejected,
                &r.dry_run_delayed,
                &r.store_error,
                &r.cas_giveup,
            ] {
                c.flush();
            }
        }
        for c in [&self.bad_state, &self.evicted_in_debt, &self.resumed] {
            c.flush();
        }
    }

    fn record(&self, v: &Verdict) {
        for (idx, outcome) in &v.rules {
            let Some(m) = self.rules.get(*idx) else {
                continue;
            };
            match outcome {
                RuleOutcome::Allowed => m.allowed.inc(),
                RuleOutcome::Delayed(_) => m.delayed.inc(),
                RuleOutcome::Rejected => m.rejected.inc(),
                RuleOutcome::DryRunRejected => m.dry_run_rejected.inc(),
                RuleOutcome::DryRunDelayed(_) => m.dry_run_delayed.inc(),
                RuleOutcome::StoreTrouble { gave_up: true } => m.cas_giveup.inc(),
                RuleOutcome::StoreTrouble { gave_up: false } => m.store_error.inc(),
            }
        }
        if v.bad_state > 0 {
            self.bad_state.add(i64::from(v.bad_state));
        }
        if v.evicted_in_debt > 0 {
            self.evicted_in_debt.add(i64::from(v.evicted_in_debt));
        }
    }
}

/// Requests held for a delay: (due time ms, context id). Bounded by the requests in flight.
type Held = Rc<RefCell<Vec<(u64, u32)>>>;

#[derive(Default)]
struct Root {
    plan: Option<Rc<Plan>>,
    metrics: Rc<Metrics>,
    held: Held,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let plan = match Config::parse(&plugin_config()) {
            Ok(p) => p,
            Err(e) => {
                log::error!("{FILTER}: {e}");
                return false;
            }
        };
        // Create every slot key now so request-time writes are always CAS writes.
        let mut failed = 0u32;
        for rule in &plan.rules {
            for slot in 0..rule.sets {
                if ensure(&HostStore, &slot_key(&rule.name, slot), &[]).is_err() {
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            log::warn!(
                "{FILTER}: {failed} slot keys could not be created; they are created on first use"
            );
        }
        let tick = if plan.delays { TICK_MS } else { FLUSH_TICK_MS };
        if hostcalls::set_tick_period(Duration::from_millis(tick)).is_err() {
            log::warn!(
                "{FILTER}: could not set the tick period; delayed requests would not resume, counters not flush"
            );
        }
        self.metrics.flush();
        self.metrics = Rc::new(Metrics::define(&plan));
        log::info!(
            "{FILTER}: configured {} rules ({} slot keys)",
            plan.rules.len(),
            plan.rules.iter().map(|r| u64::from(r.sets)).sum::<u64>()
        );
        self.plan = Some(Rc::new(plan));
        true
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        let due: Vec<u32> = {
            let mut held = self.held.borrow_mut();
            let (due, keep): (Vec<_>, Vec<_>) = held.drain(..).partition(|(t, _)| *t <= now);
            *held = keep;
            due.into_iter().map(|(_, id)| id).collect()
        };
        for id in due {
            // A context that is gone (client went away) is refused here; nothing to resume.
            if resume_request_of(id) {
                self.metrics.resumed.inc();
            }
        }
        self.metrics.flush();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http {
            id: context_id,
            plan: self.plan.clone(),
            metrics: self.metrics.clone(),
            held: self.held.clone(),
            quota: None,
            replied: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    id: u32,
    plan: Option<Rc<Plan>>,
    metrics: Rc<Metrics>,
    held: Held,
    /// RateLimit header values to add to the upstream response.
    quota: Option<(String, String)>,
    replied: bool,
}

impl Context for Http {}

fn quota_headers(plan: &Plan, v: &Verdict) -> Option<(String, String)> {
    let q = v.quota.as_ref()?;
    let rule = plan.rules.get(q.rule)?;
    Some((
        format!("\"{}\";q={};w={}", rule.name, rule.quota, rule.window_s),
        format!("\"{}\";r={};t={}", rule.name, q.remaining, q.reset_s),
    ))
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> HostAction {
        let Some(plan) = self.plan.clone() else {
            return HostAction::Continue;
        };
        let req = HostRequest::default();
        let route = route_name_if(plan.needs_route);
        let verdict = check(&plan, &HostStore, &req, route.as_deref(), now_ms);
        self.metrics.record(&verdict);
        let rejected = matches!(verdict.action, Action::Reject { .. });
        if plan.rate_limit_headers || rejected {
            self.quota = quota_headers(&plan, &verdict);
        }
        match verdict.action {
            Action::Allow => HostAction::Continue,
            Action::Delay(ms) => {
                self.held
                    .borrow_mut()
                    .push((now_ms().saturating_add(ms), self.id));
                HostAction::Pause
            }
            Action::Reject { retry_after_s, .. } => {
                self.replied = true;
                let retry = retry_after_s.to_string();
                let mut headers: Vec<(&str, &str)> = vec![
                    ("content-type", plan.reject.content_type.as_str()),
                    ("retry-after", retry.as_str()),
                    ("x-spikeguard-action", FILTER),
                ];
                if let Some((policy, state)) = &self.quota {
                    headers.push(("ratelimit-policy", policy.as_str()));
                    headers.push(("ratelimit", state.as_str()));
                }
                if !send_reply(plan.reject.status, &headers, plan.reject.body.as_bytes()) {
                    log::warn!("{FILTER}: could not send the local reply; request continues");
                    return HostAction::Continue;
                }
                HostAction::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> HostAction {
        if !self.replied {
            if let Some((policy, state)) = self.quota.take() {
                set_header(RESPONSE_HEADERS, "ratelimit-policy", &policy);
                set_header(RESPONSE_HEADERS, "ratelimit", &state);
            }
        }
        HostAction::Continue
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        // A held request whose client went away: stop tracking it.
        if let Ok(mut held) = self.held.try_borrow_mut() {
            held.retain(|(_, id)| *id != self.id);
        }
    }
}
