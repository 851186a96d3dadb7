//! The operator side every filter with a control plane shares: polling the operator list
//! endpoint, publishing the list it applied for every worker, and posting alerts to a
//! webhook, all by HTTP calls from the lease holder's tick, matching answers to what was
//! asked. Generic over `Host`, so it runs in native tests.

use crate::alert::{Alert, AlertConfig, Deduper};
use crate::host::{Call, Host};
use crate::metrics::OpsMetrics;
use crate::oplist::{decode_list, encode_list, List, OperatorConfig, PollOutcome, Poller};
use crate::store::{Data, Published};
use std::collections::HashMap;

/// Outstanding HTTP calls tracked at most (polls and webhooks).
pub const MAX_CALLS: usize = 64;
/// Webhook POST timeout.
const HOOK_TIMEOUT_MS: u64 = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Poll,
    Hook,
}

pub struct Ops {
    filter: &'static str,
    /// Where the applied list is published for every worker.
    list_key: &'static str,
    poller: Option<Poller>,
    deduper: Deduper,
    calls: HashMap<u32, CallKind>,
}

/// What an HTTP call answer was, for the caller to act on.
pub enum Answer {
    /// A poll answer applied a new list (already published); the list before it.
    Applied { previous: List },
    /// Anything else (a webhook answer, a kept-last-good poll: checked and counted here).
    Other,
}

impl Ops {
    pub fn new(
        filter: &'static str,
        list_key: &'static str,
        operator: Option<&OperatorConfig>,
        alert: &AlertConfig,
    ) -> Ops {
        Ops {
            filter,
            list_key,
            poller: operator.map(|o| Poller::new(o.poll_ms, o.max_entries)),
            deduper: Deduper::new(alert.cooldown_ms, 10_000),
            calls: HashMap::new(),
        }
    }

    /// The list the poller holds (the leader's own; workers read `Published` copies).
    pub fn list(&self) -> Option<&List> {
        self.poller.as_ref().map(Poller::list)
    }

    /// One alert: a structured log line, and a webhook POST if configured. With `dedupe`, at
    /// most one per (rule, key) per `alert.cooldown_ms`. False when suppressed.
    pub fn alert<H: Host + ?Sized>(
        &mut self,
        host: &H,
        cfg: &AlertConfig,
        a: &Alert,
        dedupe: bool,
        m: &OpsMetrics,
    ) -> bool {
        if dedupe && !self.deduper.should_send(&a.rule, &a.key, a.now_ms) {
            return false;
        }
        m.alerts.inc();
        log::warn!("{}", a.log_line());
        let Some(cluster) = cfg.webhook_cluster.as_deref() else {
            return true;
        };
        if self.calls.len() >= MAX_CALLS {
            m.webhook_errors.inc();
            return true;
        }
        let body = a.slack_body(cfg.link_template.as_deref());
        let call = Call {
            cluster,
            headers: vec![
                (":method", "POST"),
                (":path", cfg.webhook_path.as_str()),
                (":authority", cfg.webhook_authority.as_str()),
                ("content-type", "application/json"),
            ],
            body: Some(&body),
            timeout_ms: HOOK_TIMEOUT_MS,
        };
        match host.dispatch(&call) {
            Some(token) => {
                self.calls.insert(token, CallKind::Hook);
            }
            None => m.webhook_errors.inc(),
        }
        true
    }

    /// Lease holder's tick: poll the operator endpoint when due.
    pub fn poll<H: Host + ?Sized>(
        &mut self,
        host: &H,
        op: Option<&OperatorConfig>,
        now: u64,
        m: &OpsMetrics,
    ) {
        let (Some(op), Some(poller)) = (op, self.poller.as_mut()) else {
            return;
        };
        if self.calls.len() >= MAX_CALLS || !poller.due(now) {
            return;
        }
        let extra = poller.request_headers();
        let mut headers = vec![
            (":method", "GET"),
            (":path", op.path.as_str()),
            (":authority", op.authority.as_str()),
        ];
        headers.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let call = Call {
            cluster: &op.cluster,
            headers,
            body: None,
            timeout_ms: op.timeout_ms,
        };
        match host.dispatch(&call) {
            Some(token) => {
                self.calls.insert(token, CallKind::Poll);
            }
            None => {
                poller.on_failure(now, "dispatch_http_call refused (unknown cluster?)");
                m.operator_errors.inc();
            }
        }
    }

    /// From the root context's `on_http_call_response`. Webhook answers are checked here; a
    /// poll answer goes through the poller, and a list it applies is published at `list_key`
    /// (a kept-last-good outcome is logged and counted).
    pub fn on_response<H: Host + ?Sized>(
        &mut self,
        host: &H,
        data: &Data<H>,
        token: u32,
        body_size: usize,
        m: &OpsMetrics,
    ) -> Answer {
        let Some(kind) = self.calls.remove(&token) else {
            return Answer::Other;
        };
        let headers = host.call_response_headers();
        let status: u16 = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        match kind {
            CallKind::Hook => {
                if !(200..300).contains(&status) {
                    m.webhook_errors.inc();
                    log::warn!("{}: alert webhook answered {status}", self.filter);
                }
                Answer::Other
            }
            CallKind::Poll => {
                let body = host.call_response_body(body_size);
                let Some(poller) = self.poller.as_mut() else {
                    return Answer::Other;
                };
                let previous = poller.list().clone();
                match poller.on_response(host.now_ms(), status, &headers, &body) {
                    PollOutcome::Applied { entries } => {
                        m.operator_applied.inc();
                        data.put(self.list_key, &encode_list(poller.version(), poller.list()));
                        // An endpoint without ETags answers every poll in full: log changes only.
                        if poller.list() != &previous {
                            log::info!(
                                "{}: operator list applied ({entries} entries)",
                                self.filter
                            );
                        }
                        Answer::Applied { previous }
                    }
                    PollOutcome::KeptLastGood { reason } => {
                        m.operator_errors.inc();
                        log::warn!(
                            "{}: operator list not applied, keeping the last good one: {reason}",
                            self.filter
                        );
                        Answer::Other
                    }
                    _ => Answer::Other,
                }
            }
        }
    }
}

/// Every worker: picks up a newly published operator list (at most `max_entries`).
pub fn refresh_list<S: crate::shared::SharedStore + ?Sized>(
    copy: &mut Published<List>,
    data: &Data<S>,
    key: &str,
    max_entries: usize,
) {
    copy.refresh(data, key, |b| decode_list(b, max_entries).map(|x| x.1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{filter_metric, StoreMetrics};
    use crate::testing::MemHost;

    fn op() -> OperatorConfig {
        crate::error::parse_json(br#"{"cluster": "control"}"#).unwrap()
    }

    #[test]
    fn an_applied_poll_is_published_and_a_bad_answer_keeps_the_last_good_list() {
        let h = MemHost::new();
        h.set_now(1_000);
        let sm = StoreMetrics::default();
        let data = Data::new(&h, &sm);
        let m = OpsMetrics::define(&h, |w| filter_metric("t", w));
        let o = op();
        let mut ops = Ops::new("t", "sg:t:list", Some(&o), &AlertConfig::default());
        ops.poll(&h, Some(&o), 1_000, &m);
        let calls = h.take_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].cluster, "control");
        assert_eq!(calls[0].header(":method"), Some("GET"));
        h.answer_call(200, &[], br#"{"entries":[{"key":"hot"}]}"#);
        let body = br#"{"entries":[{"key":"hot"}]}"#.len();
        assert!(matches!(
            ops.on_response(&h, &data, calls[0].token, body, &m),
            Answer::Applied { .. }
        ));
        let mut copy = Published::<List>::default();
        refresh_list(&mut copy, &data, "sg:t:list", 100);
        assert!(copy.get().blocks_key("r", b"hot", 2_000));
        // The next answer is garbage: counted, the published list stays.
        h.advance(10_000);
        ops.poll(&h, Some(&o), h.now_ms(), &m);
        let calls = h.take_calls();
        h.answer_call(200, &[], b"not json");
        assert!(matches!(
            ops.on_response(&h, &data, calls[0].token, 8, &m),
            Answer::Other
        ));
        refresh_list(&mut copy, &data, "sg:t:list", 100);
        assert!(copy.get().blocks_key("r", b"hot", 20_000));
        m.flush(&h);
        assert_eq!(h.metric("sg.t.operator_applied"), Some(1));
        assert_eq!(h.metric("sg.t.operator_errors"), Some(1));
    }

    #[test]
    fn alerts_post_to_the_webhook_deduplicated_and_failures_are_counted() {
        let h = MemHost::new();
        let m = OpsMetrics::define(&h, |w| filter_metric("t", w));
        let cfg: AlertConfig =
            crate::error::parse_json(br#"{"webhook_cluster": "hooks", "cooldown_ms": 1000}"#)
                .unwrap();
        let mut ops = Ops::new("t", "sg:t:list", None, &cfg);
        let a = Alert {
            filter: "t".into(),
            rule: "r".into(),
            key: "k".into(),
            milli_rps: 1500,
            reason: "hot".into(),
            top: vec![],
            now_ms: 0,
        };
        assert!(ops.alert(&h, &cfg, &a, true, &m));
        assert!(!ops.alert(&h, &cfg, &a, true, &m), "within the cooldown");
        let calls = h.take_calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].cluster, "hooks");
        assert!(String::from_utf8_lossy(calls[0].body.as_deref().unwrap()).contains("hot"));
        let sm = StoreMetrics::default();
        h.answer_call(500, &[], b"");
        ops.on_response(&h, &Data::new(&h, &sm), calls[0].token, 0, &m);
        h.refuse_calls(true);
        assert!(ops.alert(&h, &cfg, &a, false, &m));
        assert_eq!(m.alerts.get(), 2);
        assert_eq!(
            m.webhook_errors.get(),
            2,
            "a 500 answer and a refused dispatch"
        );
    }
}
