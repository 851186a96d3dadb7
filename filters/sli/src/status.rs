//! The status page: one JSON document for humans and chat bots, built from shared data (so
//! it shows the whole Envoy whichever worker serves it): the SLI summary per page type, the
//! top URLs, the breakers refusing calls, the keys hotkey sheds or diverts and the
//! simplepage rules diverting for overload.

use crate::summary::Summary;
use serde_json::{json, Value};
use sg_core::oplist::List;
use sg_core::published::{Reason, ShedEntry};
use sg_core::topview::Rate;

/// Everything the page shows, already read and decoded.
#[derive(Debug, Default)]
pub struct Facts {
    pub direction: &'static str,
    pub now_ms: u64,
    pub edges: Vec<u64>,
    pub summary: Summary,
    /// Top URLs of the window: (url, milli-rps).
    pub top_urls: Vec<(String, u64)>,
    pub window_s: u64,
    /// `sg:br:open`: (API, state).
    pub breakers: Option<List>,
    /// `sg:hk:divert`: (hotkey rule, key).
    pub diverted: Option<List>,
    /// `sg:hk:shed`: the hot keys hotkey acts on (its rule's index, key, milli-rps).
    pub shed: Vec<ShedEntry>,
    /// `sg:sp:state`: simplepage rules diverting for overload (rule, reason, since).
    pub overloaded: Vec<(String, Reason, u64)>,
}

/// Milli-requests per second as requests per second with one decimal.
fn rps(milli: u64) -> f64 {
    (milli / 100) as f64 / 10.0
}

pub fn lossy_key(r: &Rate) -> String {
    String::from_utf8_lossy(&r.key).into_owned()
}

pub fn render(f: &Facts) -> Value {
    let pages: Vec<Value> = f
        .summary
        .pages
        .iter()
        .map(|p| {
            let errors = p.errors_5xx.saturating_add(p.code_499);
            json!({
                "page": p.name,
                "requests": p.requests,
                "errors_5xx": p.errors_5xx,
                "code_499": p.code_499,
                "error_percent": errors.saturating_mul(10_000).checked_div(p.requests).map_or(0.0, |x| x as f64 / 100.0),
                "avg_ms": p.avg_ms(),
                "p50_le_ms": p.quantile_le(500, &f.edges),
                "p99_le_ms": p.quantile_le(990, &f.edges),
                "p999_le_ms": p.quantile_le(999, &f.edges),
            })
        })
        .collect();
    let entries = |l: &Option<List>, a: &str, b: &str| -> Vec<Value> {
        l.as_ref()
            .map(|l| {
                l.active(f.now_ms)
                    .map(|e| json!({ a: e.rule, b: e.key }))
                    .collect()
            })
            .unwrap_or_default()
    };
    json!({
        "direction": f.direction,
        "now_ms": f.now_ms,
        "pages": pages,
        "top_urls": {
            "window_s": f.window_s,
            "urls": f.top_urls.iter().map(|(u, r)| json!({"url": u, "rps": rps(*r)})).collect::<Vec<_>>(),
        },
        "breakers_refusing": entries(&f.breakers, "api", "state"),
        "hotkey_diverted": entries(&f.diverted, "rule", "key"),
        "hotkey_hot": f.shed.iter().map(|e| json!({
            "rule_index": e.rule,
            "key": String::from_utf8_lossy(&e.hot.key),
            "rps": rps(e.hot.milli_rps),
            "since_ms": e.hot.since_ms,
        })).collect::<Vec<_>>(),
        "simplepage_overloaded": f.overloaded.iter().map(|(rule, reason, since)| json!({
            "rule": rule, "reason": reason.as_str(), "since_ms": since,
        })).collect::<Vec<_>>(),
    })
}
