//! The documented `simplepage` config (README "simplepage", config/simplepage.json) compiled
//! into an immutable plan. Any invalid field refuses the whole config.

use crate::{cache, overload};
use serde::Deserialize;
use sg_core::config::require_rules;
pub use sg_core::config::Compile;

use sg_core::key::{KeyConfig, KeyPlan};
use sg_core::matcher::Matcher;
use sg_core::ConfigError;

pub use sg_core::alert::AlertConfig;
pub use sg_core::oplist::OperatorConfig;

/// Where the operator list is polled when `operator.path` is not given.
pub const DEFAULT_OPERATOR_PATH: &str = "/simplepage";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub rules: Vec<RuleConfig>,
    /// Workers merge load tallies and pick up published state every tick.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    #[serde(default)]
    pub cache: CacheConfig,
    /// Operator list (keys or path prefixes, per rule, with expiry) polled from an endpoint.
    #[serde(default)]
    pub operator: Option<OperatorConfig>,
    #[serde(default)]
    pub alert: AlertConfig,
    /// While anything is diverted: one "simple page inbound" alert per this period with the
    /// count and the top URLs (the talk's "simple page inbound in the last minute").
    #[serde(default = "default_inbound_alert_ms")]
    pub inbound_alert_ms: u64,
    /// Response header naming why a response is a simple page (`hotkey`, `operator`,
    /// `overload:latency`, `always`; `; cache=hit|stale|stale-if-error` when served here).
    #[serde(default = "default_response_header")]
    pub response_header: String,
    /// Every rule in shadow mode: the decision is made, counted (`shadow_diverted_*`) and
    /// logged, but nothing is diverted and nothing is answered from the micro-cache.
    #[serde(default)]
    pub shadow: bool,
}

/// The micro-cache's memory: `slots` entries of at most `max_body_bytes`, shared by all rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    #[serde(default = "default_slots")]
    pub slots: u32,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            slots: default_slots(),
            max_body_bytes: default_max_body(),
        }
    }
}

sg_core::rule_config! {
    pub struct RuleConfig {
        /// The page key (same extractors and normalisation as `hotkey`); needed by the
        /// `hotkey` trigger and by operator key entries. It must be the same key spec as the
        /// `hotkey` rule.
        #[serde(default)]
        key: Option<KeyConfig>,
        pub triggers: TriggerConfig,
        #[serde(default)]
        pub divert: DivertConfig,
        /// Requests carrying any of these cookies are never diverted (`"*"`: any cookie).
        #[serde(default)]
        pub exclude_cookies: Vec<String>,
        /// Requests with `Authorization` are never diverted.
        #[serde(default = "yes")]
        pub exclude_authorization: bool,
        /// Micro-cache for this rule's diverted pages.
        #[serde(default)]
        pub cache: Option<RuleCacheConfig>,
        /// This rule in shadow mode (as the top-level `shadow`, for one rule).
        #[serde(default)]
        pub shadow: bool,
        /// Header divert: the answer to a diverted request when the simple-page backend
        /// fails (5xx, reset, no answer) and no stale copy can be used. Default: a 503 "try
        /// again" page; `null`: the failure goes to the client as it is.
        #[serde(default = "default_fallback")]
        pub fallback: Option<FallbackConfig>,
    }
}

/// The fixed page answered when the simple-page backend fails (`rules[].fallback`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    /// Response headers (lower-case names); replace the defaults when given.
    #[serde(default = "default_fallback_headers")]
    pub headers: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_fallback_body")]
    pub body: String,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            status: default_fallback_status(),
            headers: default_fallback_headers(),
            body: default_fallback_body(),
        }
    }
}

/// Largest fallback body, bytes.
pub const MAX_FALLBACK_BODY: usize = 65_536;

fn default_fallback() -> Option<FallbackConfig> {
    Some(FallbackConfig::default())
}
fn default_fallback_status() -> u16 {
    503
}
fn default_fallback_headers() -> std::collections::BTreeMap<String, String> {
    [
        ("content-type", "text/plain; charset=utf-8"),
        ("cache-control", "no-store"),
        ("retry-after", "5"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
fn default_fallback_body() -> String {
    "This page is very busy right now. Please try again in a few seconds.\n".to_string()
}

/// A compiled `fallback`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerConfig {
    /// Name of the `hotkey` rule whose hot keys (action `divert`) this rule diverts.
    #[serde(default)]
    pub hotkey: Option<String>,
    /// Entries of the operator list for this rule (or for all rules).
    #[serde(default)]
    pub operator: bool,
    #[serde(default)]
    pub overload: Option<OverloadConfig>,
    /// Maintenance switch: divert every eligible request.
    #[serde(default)]
    pub always: bool,
    /// `breaker` APIs the page needs: while one of them refuses calls (open, half-open,
    /// forced open; published by `breaker` in `sg:br:open`), divert (`"*"`: any API).
    #[serde(default)]
    pub breaker: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverloadConfig {
    #[serde(default)]
    pub capacity_rps: Option<u64>,
    #[serde(default)]
    pub error_percent: Option<u64>,
    #[serde(default)]
    pub p99_ms: Option<u64>,
    #[serde(default = "default_min_samples")]
    pub min_samples: u64,
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    #[serde(default = "default_clear_after_ms")]
    pub clear_after_ms: u64,
    /// While overloaded, this share of requests still goes to the main backend, so its
    /// recovery is measured (0 = none: overload then ends only by the rate condition).
    #[serde(default = "default_probe_percent")]
    pub probe_percent: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DivertConfig {
    /// Set this request header (value: the trigger); `envoy.yaml` routes it to `simple_page`.
    Header {
        #[serde(default = "default_divert_header")]
        name: String,
    },
    /// 302/307 to `base_url` + the request's path and query.
    Redirect {
        #[serde(default = "default_redirect_status")]
        status: u16,
        base_url: String,
    },
}

impl Default for DivertConfig {
    fn default() -> Self {
        DivertConfig::Header {
            name: default_divert_header(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleCacheConfig {
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: u64,
    /// Used when the backend sends no `stale-while-revalidate`.
    #[serde(default = "default_swr_ms")]
    pub stale_while_revalidate_ms: u64,
    /// Used when the backend sends no `stale-if-error`.
    #[serde(default = "default_sie_ms")]
    pub stale_if_error_ms: u64,
    /// At most one backend request per key per this period (default: `ttl_ms`).
    #[serde(default)]
    pub refresh_interval_ms: Option<u64>,
    /// A page not in the cache is fetched by one request; the others wait up to this long
    /// for it (nginx `proxy_cache_lock_timeout`), then go to the backend (0: no waiting).
    #[serde(default = "default_lock_timeout_ms")]
    pub lock_timeout_ms: u64,
    /// The query parameters that select the page (e.g. `["blogId", "logNo"]`): the cache key
    /// keeps only these (decoded, sorted, re-encoded one way), so a cache-buster or a
    /// reordered query is the same entry. Absent: every parameter is kept (canonicalised), so
    /// two different pages never share an entry. Like nginx `proxy_cache_key` built from
    /// `$arg_blogId$arg_logNo` instead of `$request_uri`, or Varnish/Fastly query-string
    /// filtering (`querystring.filter_except` + `sort`).
    #[serde(default)]
    pub query_params: Option<Vec<String>>,
}

fn yes() -> bool {
    true
}
fn default_tick_ms() -> u64 {
    100
}
fn default_inbound_alert_ms() -> u64 {
    60_000
}
fn default_response_header() -> String {
    "x-spikeguard-simple-page".to_string()
}
fn default_slots() -> u32 {
    64
}
fn default_max_body() -> usize {
    65_536
}
fn default_min_samples() -> u64 {
    20
}
fn default_window_ms() -> u64 {
    2000
}
fn default_clear_after_ms() -> u64 {
    10_000
}
fn default_probe_percent() -> u64 {
    5
}
fn default_divert_header() -> String {
    "x-spikeguard-divert".to_string()
}
fn default_redirect_status() -> u16 {
    302
}
fn default_ttl_ms() -> u64 {
    1000
}
fn default_swr_ms() -> u64 {
    10_000
}
fn default_sie_ms() -> u64 {
    300_000
}
fn default_lock_timeout_ms() -> u64 {
    500
}

#[derive(Debug, Clone)]
pub struct CachePlan {
    pub settings: cache::Settings,
    pub refresh_interval_ms: u64,
    pub lock_timeout_ms: u64,
    /// `query_params`: None keeps every parameter.
    pub query_params: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
pub struct OverloadPlan {
    pub settings: overload::Settings,
    pub probe_percent: u64,
    /// Window length in ticks.
    pub window_ticks: u64,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub key: Option<KeyPlan>,
    pub hotkey_rule: Option<String>,
    pub operator: bool,
    pub overload: Option<OverloadPlan>,
    pub always: bool,
    /// `breaker` API names (`"*"`: any) whose open breaker diverts.
    pub breaker_apis: Vec<String>,
    pub divert: DivertConfig,
    pub exclude_cookies: Vec<String>,
    pub exclude_authorization: bool,
    pub cache: Option<CachePlan>,
    /// Shadow mode (the rule's or the top-level `shadow`): count and log, never divert.
    pub shadow: bool,
    /// What a diverted request gets when the simple-page backend fails (header divert).
    pub fallback: Option<Fallback>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub rules: Vec<Rule>,
    pub tick_ms: u64,
    pub slots: u32,
    pub max_body_bytes: usize,
    pub needs_route: bool,
    pub operator: Option<OperatorConfig>,
    pub alert: AlertConfig,
    pub inbound_alert_ms: u64,
    pub response_header: String,
}

/// Checks a `fallback`: a status from 200 to 599, lower-case header names (no pseudo-headers,
/// not `response_header`, which the filter sets, nor `content-length`), values without
/// control characters, a body of at most [`MAX_FALLBACK_BODY`] bytes. Err: (field, why).
pub fn compile_fallback(
    f: &FallbackConfig,
    response_header: &str,
) -> Result<Fallback, (String, String)> {
    if !(200..=599).contains(&f.status) {
        return Err((
            "status".into(),
            format!("{} is not from 200 to 599", f.status),
        ));
    }
    for (k, v) in &f.headers {
        if !header_name_ok(k) || k == response_header || k == "content-length" {
            return Err((
                "headers".into(),
                format!("{k:?} is not a lower-case header name the fallback may set"),
            ));
        }
        if v.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
            return Err((
                "headers".into(),
                format!("{k}: control character in the value"),
            ));
        }
    }
    if f.body.len() > MAX_FALLBACK_BODY {
        return Err((
            "body".into(),
            format!("{} bytes, at most {MAX_FALLBACK_BODY}", f.body.len()),
        ));
    }
    Ok(Fallback {
        status: f.status,
        headers: f
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        body: f.body.as_bytes().to_vec(),
    })
}

fn header_name_ok(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Compile for Config {
    type Plan = Plan;

    fn compile(&self) -> Result<Plan, ConfigError> {
        require_rules(&self.rules)?;
        if !(50..=1000).contains(&self.tick_ms) {
            return Err(ConfigError::new("tick_ms", "must be from 50 to 1000"));
        }
        if !(1..=4096).contains(&self.cache.slots) {
            return Err(ConfigError::new("cache.slots", "must be from 1 to 4096"));
        }
        if !(1..=524_288).contains(&self.cache.max_body_bytes) {
            return Err(ConfigError::new(
                "cache.max_body_bytes",
                "must be from 1 to 524288 (a body is buffered up to this size; Envoy's default buffer limit is 1 MiB)",
            ));
        }
        let operator = self
            .operator
            .as_ref()
            .map(|op| op.compile("operator", DEFAULT_OPERATOR_PATH))
            .transpose()?;
        self.alert.validate("alert")?;
        if !(1000..=3_600_000).contains(&self.inbound_alert_ms) {
            return Err(ConfigError::new(
                "inbound_alert_ms",
                "must be from 1000 to 3600000",
            ));
        }
        if !header_name_ok(&self.response_header) {
            return Err(ConfigError::new(
                "response_header",
                format!("{:?} is not a lower-case header name", self.response_header),
            ));
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            let path = format!("rules[{i}]");
            let bad = |field: &str, why: String| ConfigError::new(format!("{path}.{field}"), why);
            let head = r.head(&path, rules.iter().any(|x| x.name == r.name))?;
            let t = &r.triggers;
            if t.hotkey.is_none()
                && !t.operator
                && t.overload.is_none()
                && !t.always
                && t.breaker.is_empty()
            {
                return Err(bad(
                    "triggers",
                    "at least one of hotkey, operator, overload, breaker, always".into(),
                ));
            }
            for (j, api) in t.breaker.iter().enumerate() {
                if api != "*" && !sg_core::metrics::valid_name(api) {
                    return Err(bad(
                        &format!("triggers.breaker[{j}]"),
                        format!("{api:?} is not a breaker API name (or \"*\")"),
                    ));
                }
            }
            if t.hotkey.as_deref() == Some("") {
                return Err(bad("triggers.hotkey", "must name a hotkey rule".into()));
            }
            if t.hotkey.is_some() && r.key.is_none() {
                return Err(bad(
                    "key",
                    "the hotkey trigger needs the page key (same spec as the hotkey rule)".into(),
                ));
            }
            if t.operator && self.operator.is_none() {
                return Err(bad(
                    "triggers.operator",
                    "needs the top-level `operator` endpoint".into(),
                ));
            }
            let overload = match &t.overload {
                None => None,
                Some(o) => {
                    let b = |f: &str, why: &str| bad(&format!("triggers.overload.{f}"), why.into());
                    if o.capacity_rps.is_none() && o.error_percent.is_none() && o.p99_ms.is_none() {
                        return Err(b(
                            "capacity_rps",
                            "set at least one of capacity_rps, error_percent, p99_ms",
                        ));
                    }
                    if o.capacity_rps == Some(0) {
                        return Err(b("capacity_rps", "must be at least 1"));
                    }
                    if o.error_percent.is_some_and(|p| !(1..=100).contains(&p)) {
                        return Err(b("error_percent", "must be from 1 to 100"));
                    }
                    if o.p99_ms == Some(0) {
                        return Err(b("p99_ms", "must be at least 1"));
                    }
                    if o.window_ms < self.tick_ms
                        || o.window_ms % self.tick_ms != 0
                        || o.window_ms / self.tick_ms > overload::MAX_BUCKETS as u64 - 2
                    {
                        return Err(b(
                            "window_ms",
                            "must be a whole number of ticks, at most 62 of them",
                        ));
                    }
                    if o.clear_after_ms > 86_400_000 {
                        return Err(b("clear_after_ms", "must be at most one day"));
                    }
                    if o.probe_percent > 50 {
                        return Err(b("probe_percent", "must be from 0 to 50"));
                    }
                    Some(OverloadPlan {
                        settings: overload::Settings {
                            capacity_rps: o.capacity_rps,
                            error_permille: o.error_percent.map(|p| p * 10),
                            p99_ms: o.p99_ms,
                            min_samples: o.min_samples,
                            window_ms: o.window_ms,
                            clear_after_ms: o.clear_after_ms,
                        },
                        probe_percent: o.probe_percent,
                        window_ticks: o.window_ms / self.tick_ms,
                    })
                }
            };
            match &r.divert {
                DivertConfig::Header { name } if !header_name_ok(name) => {
                    return Err(bad(
                        "divert.header.name",
                        format!("{name:?} is not a lower-case header name"),
                    ));
                }
                DivertConfig::Redirect { status, .. } if *status != 302 && *status != 307 => {
                    return Err(bad(
                        "divert.redirect.status",
                        format!("{status} is not 302 or 307"),
                    ));
                }
                DivertConfig::Redirect { base_url, .. }
                    if !(base_url.starts_with("http://") || base_url.starts_with("https://"))
                        || base_url.bytes().any(|b| b <= b' ' || b == 0x7f) =>
                {
                    return Err(bad(
                        "divert.redirect.base_url",
                        format!("{base_url:?} is not an http(s) URL"),
                    ));
                }
                _ => {}
            }
            let fallback = match &r.fallback {
                None => None,
                Some(f) => Some(
                    compile_fallback(f, &self.response_header)
                        .map_err(|(field, why)| bad(&format!("fallback.{field}"), why))?,
                ),
            };
            let cache = match &r.cache {
                None => None,
                Some(_) if matches!(r.divert, DivertConfig::Redirect { .. }) => {
                    return Err(bad(
                        "cache",
                        "the micro-cache needs the header divert (a redirect leaves the proxy)"
                            .into(),
                    ));
                }
                Some(c) => {
                    if !(1..=86_400_000).contains(&c.ttl_ms) {
                        return Err(bad("cache.ttl_ms", "must be from 1 to 86400000".into()));
                    }
                    let refresh = c.refresh_interval_ms.unwrap_or(c.ttl_ms);
                    if !(1..=86_400_000).contains(&refresh) {
                        return Err(bad(
                            "cache.refresh_interval_ms",
                            "must be from 1 to 86400000".into(),
                        ));
                    }
                    if c.stale_while_revalidate_ms > 86_400_000
                        || c.stale_if_error_ms > 7 * 86_400_000
                    {
                        return Err(bad(
                            "cache.stale_if_error_ms",
                            "stale windows are at most a day (revalidate) and a week (error)"
                                .into(),
                        ));
                    }
                    if c.lock_timeout_ms > 10_000 {
                        return Err(bad(
                            "cache.lock_timeout_ms",
                            "must be from 0 to 10000".into(),
                        ));
                    }
                    if let Some(q) = &c.query_params {
                        if q.is_empty() || q.len() > 16 || q.iter().any(String::is_empty) {
                            return Err(bad(
                                "cache.query_params",
                                "1 to 16 non-empty parameter names".into(),
                            ));
                        }
                    }
                    Some(CachePlan {
                        settings: cache::Settings {
                            ttl_ms: c.ttl_ms,
                            default_swr_ms: c.stale_while_revalidate_ms,
                            default_sie_ms: c.stale_if_error_ms,
                            max_body_bytes: self.cache.max_body_bytes,
                        },
                        refresh_interval_ms: refresh,
                        lock_timeout_ms: c.lock_timeout_ms,
                        query_params: c.query_params.clone(),
                    })
                }
            };
            rules.push(Rule {
                name: r.name.clone(),
                matcher: head.matcher,
                key: head.key,
                hotkey_rule: t.hotkey.clone(),
                operator: t.operator,
                overload,
                always: t.always,
                breaker_apis: t.breaker.clone(),
                divert: r.divert.clone(),
                exclude_cookies: r.exclude_cookies.clone(),
                exclude_authorization: r.exclude_authorization,
                cache,
                shadow: r.shadow || self.shadow,
                fallback,
            });
        }
        Ok(Plan {
            needs_route: rules.iter().any(|r| r.matcher.needs_route()),
            rules,
            tick_ms: self.tick_ms,
            slots: self.cache.slots,
            max_body_bytes: self.cache.max_body_bytes,
            operator,
            alert: self.alert.clone(),
            inbound_alert_ms: self.inbound_alert_ms,
            response_header: self.response_header.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_list_path_defaults_to_this_filters_own() {
        let p = Config::parse(
            r#"{"rules":[{"name":"r","triggers":{"operator":true}}],"operator":{"cluster":"c"}}"#
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(p.operator.map(|o| o.path).as_deref(), Some("/simplepage"));
    }

    sg_core::shipped_config_tests!("simplepage");

    #[test]
    fn shadow_holds_every_rule_from_the_top_or_one_rule_alone() {
        let rule = |name: &str, extra: &str| {
            format!(r#"{{"name":"{name}","triggers":{{"always":true}}{extra}}}"#)
        };
        let shadows = |json: String| -> Vec<bool> {
            Config::parse(json.as_bytes())
                .map(|p| p.rules.iter().map(|r| r.shadow).collect())
                .unwrap_or_default()
        };
        let (a, b) = (rule("a", ""), rule("b", r#","shadow":true"#));
        assert_eq!(shadows(format!(r#"{{"rules":[{a},{b}]}}"#)), [false, true]);
        assert_eq!(
            shadows(format!(r#"{{"shadow":true,"rules":[{a},{b}]}}"#)),
            [true, true]
        );
        assert_eq!(
            shadows(format!(r#"{{"rules":[{a}]}}"#)),
            [false],
            "off by default"
        );
        let bad = Config::parse(
            r#"{"shadow":1,"rules":[{"name":"a","triggers":{"always":true}}]}"#.as_bytes(),
        );
        assert!(bad
            .err()
            .is_some_and(|e| e.to_string().starts_with("shadow:")));
    }

    #[test]
    fn bad_fields_are_named() {
        let ok_rule = r#""name":"r","key":{"query":"blogId"},"triggers":{"always":true}"#;
        let cases = [
            (r#"{"rules":[]}"#.to_string(), "rules"),
            (
                r#"{"rules":[{"name":"r","triggers":{}}]}"#.to_string(),
                "rules[0].triggers",
            ),
            (
                r#"{"rules":[{"name":"r","triggers":{"hotkey":"post_view"}}]}"#.to_string(),
                "rules[0].key",
            ),
            (
                r#"{"rules":[{"name":"r","triggers":{"operator":true}}]}"#.to_string(),
                "rules[0].triggers.operator",
            ),
            (
                r#"{"rules":[{"name":"r","triggers":{"overload":{"window_ms":2000}}}]}"#
                    .to_string(),
                "rules[0].triggers.overload.capacity_rps",
            ),
            (
                r#"{"rules":[{"name":"r","triggers":{"overload":{"p99_ms":100,"window_ms":150}}}]}"#
                    .to_string(),
                "rules[0].triggers.overload.window_ms",
            ),
            (
                format!(r#"{{"rules":[{{{ok_rule},"divert":{{"redirect":{{"base_url":"ftp://x"}}}}}}]}}"#),
                "rules[0].divert.redirect.base_url",
            ),
            (
                format!(r#"{{"rules":[{{{ok_rule},"divert":{{"header":{{"name":"X-Up"}}}}}}]}}"#),
                "rules[0].divert.header.name",
            ),
            (
                format!(r#"{{"rules":[{{{ok_rule},"cache":{{"ttl_ms":0}}}}]}}"#),
                "rules[0].cache.ttl_ms",
            ),
            (
                format!(r#"{{"rules":[{{{ok_rule},"cache":{{}},"divert":{{"redirect":{{"base_url":"https://s"}}}}}}]}}"#),
                "rules[0].cache",
            ),
            (
                format!(r#"{{"cache":{{"slots":0}},"rules":[{{{ok_rule}}}]}}"#),
                "cache.slots",
            ),
            (
                format!(r#"{{"rules":[{{{ok_rule},"cache":{{"ttl_ms":"x"}}}}]}}"#),
                "rules[0].cache.ttl_ms",
            ),
        ];
        for (cfg, field) in cases {
            let e = Config::parse(cfg.as_bytes()).err();
            let msg = e.map(|e| e.to_string()).unwrap_or_default();
            assert!(msg.starts_with(&format!("{field}:")), "{cfg} -> {msg:?}");
        }
    }
}
