//! The operator side every filter with a control plane shares (wasm32 only): polling the
//! operator list endpoint and posting alerts to a webhook, both by `dispatch_http_call` from
//! the lease holder's tick, and matching the answers to what was asked.

use crate::alert::{Alert, AlertConfig, Deduper};
use crate::host::Counter;
use crate::oplist::{OperatorConfig, PollOutcome, Poller};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};
use std::collections::HashMap;
use std::time::Duration;

/// Outstanding HTTP calls tracked at most (polls and webhooks).
pub const MAX_CALLS: usize = 64;
/// Webhook POST timeout.
const HOOK_TIMEOUT: Duration = Duration::from_millis(2000);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Poll,
    Hook,
}

/// Counters the caller owns (its own metric names).
pub struct OpsMetrics<'a> {
    pub alerts: &'a Counter,
    pub webhook_errors: &'a Counter,
    pub operator_errors: &'a Counter,
}

pub struct Ops {
    filter: &'static str,
    pub poller: Option<Poller>,
    deduper: Deduper,
    calls: HashMap<u32, Call>,
}

/// What an HTTP call answer was, for the caller to act on.
pub enum Answer {
    /// A poll answer: the poller's verdict (on `Applied`, `poller.list()` is the new list).
    Poll(PollOutcome),
    /// A webhook answer (already checked and counted) or an unknown token.
    Other,
}

impl Ops {
    pub fn new(
        filter: &'static str,
        operator: Option<&OperatorConfig>,
        alert: &AlertConfig,
    ) -> Ops {
        Ops {
            filter,
            poller: operator.map(|o| Poller::new(o.poll_ms, o.max_entries)),
            deduper: Deduper::new(alert.cooldown_ms, 10_000),
            calls: HashMap::new(),
        }
    }

    /// One alert: a structured log line, and a webhook POST if configured. With `dedupe`, at
    /// most one per (rule, key) per `alert.cooldown_ms`. False when suppressed.
    pub fn alert(&mut self, cfg: &AlertConfig, a: &Alert, dedupe: bool, m: &OpsMetrics) -> bool {
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
        let headers = vec![
            (":method", "POST"),
            (":path", cfg.webhook_path.as_str()),
            (":authority", cfg.webhook_authority.as_str()),
            ("content-type", "application/json"),
        ];
        match hostcalls::dispatch_http_call(cluster, headers, Some(&body), vec![], HOOK_TIMEOUT) {
            Ok(token) => {
                self.calls.insert(token, Call::Hook);
            }
            Err(_) => m.webhook_errors.inc(),
        }
        true
    }

    /// Lease holder's tick: poll the operator endpoint when due.
    pub fn poll(&mut self, op: Option<&OperatorConfig>, now: u64, m: &OpsMetrics) {
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
        let timeout = Duration::from_millis(op.timeout_ms);
        match hostcalls::dispatch_http_call(&op.cluster, headers, None, vec![], timeout) {
            Ok(token) => {
                self.calls.insert(token, Call::Poll);
            }
            Err(_) => {
                poller.on_failure(now, "dispatch_http_call refused (unknown cluster?)");
                m.operator_errors.inc();
            }
        }
    }

    /// From the root context's `on_http_call_response`. Webhook answers are checked here;
    /// a poll answer goes through the poller (a kept-last-good outcome is logged and counted).
    pub fn on_response(
        &mut self,
        token: u32,
        body_size: usize,
        now: u64,
        m: &OpsMetrics,
    ) -> Answer {
        let Some(kind) = self.calls.remove(&token) else {
            return Answer::Other;
        };
        let headers: Vec<(String, String)> =
            hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_ascii_lowercase(),
                        String::from_utf8_lossy(&v).into_owned(),
                    )
                })
                .collect();
        let status: u16 = headers
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        match kind {
            Call::Hook => {
                if !(200..300).contains(&status) {
                    m.webhook_errors.inc();
                    log::warn!("{}: alert webhook answered {status}", self.filter);
                }
                Answer::Other
            }
            Call::Poll => {
                let body = hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let Some(poller) = self.poller.as_mut() else {
                    return Answer::Other;
                };
                let out = poller.on_response(now, status, &headers, &body);
                if let PollOutcome::KeptLastGood { reason } = &out {
                    m.operator_errors.inc();
                    log::warn!(
                        "{}: operator list not applied, keeping the last good one: {reason}",
                        self.filter
                    );
                }
                Answer::Poll(out)
            }
        }
    }
}
