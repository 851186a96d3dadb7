//! The documented `breaker` config (README "breaker", config/breaker.json) compiled into an
//! immutable plan. Any invalid field refuses the whole config with one line naming it.

use crate::machine::{Backoff, Kind, Settings};
use crate::window::{WindowKind, MAX_BUCKETS};
use serde::Deserialize;
pub use sg_core::alert::AlertConfig;
pub use sg_core::config::Compile;
use sg_core::matcher::{MatchConfig, Matcher, OneOrMany};
use sg_core::metrics::check_rule_name;
pub use sg_core::oplist::OperatorConfig;
use sg_core::ConfigError;
use std::collections::BTreeMap;

/// Where the operator flag list is polled when `operator.path` is not given.
pub const DEFAULT_OPERATOR_PATH: &str = "/breaker/flags";
/// APIs per config (each costs a few shared-data keys and metrics).
pub const MAX_APIS: usize = 64;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub apis: Vec<ApiConfig>,
    /// Each worker merges its outcome counts and judges the windows every tick: a breaker
    /// opens within one tick of its threshold being crossed.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// How long a worker may answer from the state it last read (CLOSED, OPEN before its
    /// wait ends, FORCED_OPEN, DISABLED, METRICS_ONLY) instead of reading the shared state
    /// again: saves one shared-data read per call; a transition made by another worker
    /// reaches this one within this time. HALF_OPEN permits and an OPEN state whose wait is
    /// over are always read and changed under CAS. 0 = read on every call.
    #[serde(default = "default_state_cache_ms")]
    pub state_cache_ms: u64,
    /// Every API in shadow mode (METRICS_ONLY: judged and reported, never acts).
    #[serde(default)]
    pub shadow: bool,
    /// What a call gets when shared data fails: `allow` (fail open, the default: the breaker
    /// is a protection, a proxy hiccup must not cut an API off) or `reject` (the fallback).
    #[serde(default)]
    pub on_store_error: FailMode,
    /// Operator flags polled from an HTTP endpoint (one poller per Envoy, the lease holder):
    /// `{"entries":[{"rule":"<api>","key":"force_open"}]}`.
    #[serde(default)]
    pub operator: Option<OperatorConfig>,
    /// An alert (log line, optional webhook) on every state change.
    #[serde(default)]
    pub alert: AlertConfig,
}

pub use sg_core::config::FailMode;

fn default_tick_ms() -> u64 {
    100
}
fn default_state_cache_ms() -> u64 {
    10
}

/// A status code (`503`) or a class (`"5xx"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusSpec {
    Code(u16),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowConfig {
    /// The last N calls (resilience4j COUNT_BASED).
    Count(u64),
    /// The calls of the last N seconds (resilience4j TIME_BASED).
    Seconds(u64),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackoffConfig {
    /// Each consecutive opening waits this many times longer (resilience4j
    /// `IntervalFunction.ofExponentialBackoff`).
    pub multiplier: f64,
    pub max_wait_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    #[serde(default = "default_fallback_status")]
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_fallback_body")]
    pub body: String,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            status: default_fallback_status(),
            headers: BTreeMap::new(),
            body: default_fallback_body(),
        }
    }
}

fn default_fallback_status() -> u16 {
    503
}
fn default_fallback_body() -> String {
    "upstream unavailable\n".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkheadConfig {
    /// Calls in flight to the API at most, across all workers of this Envoy.
    pub max_concurrent: u64,
    /// A call over the limit waits up to this long for a slot (0: rejected at once).
    #[serde(default)]
    pub max_wait_ms: u64,
    /// Calls waiting per worker at most; beyond, rejected at once (bounded memory).
    #[serde(default = "default_max_waiting")]
    pub max_waiting: usize,
}

fn default_max_waiting() -> usize {
    1000
}

/// An operator or config flag on one API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flag {
    /// FORCED_OPEN: every call gets the fallback; the upstream is never called.
    ForceOpen,
    /// Held closed (METRICS_ONLY): every call goes on, outcomes are judged and a crossing is
    /// reported (`would_open`), the breaker never opens. The bulkhead still applies.
    ForceClosed,
    /// Same state as `force_closed` (resilience4j's name).
    MetricsOnly,
    /// DISABLED: no breaker and no bulkhead for this API; outcomes are not judged.
    Disable,
}

impl Flag {
    pub fn parse(s: &str) -> Option<Flag> {
        match s {
            "force_open" => Some(Flag::ForceOpen),
            "force_closed" => Some(Flag::ForceClosed),
            "metrics_only" => Some(Flag::MetricsOnly),
            "disable" => Some(Flag::Disable),
            _ => None,
        }
    }

    /// The state a flag holds the breaker in.
    pub fn state(self) -> Kind {
        match self {
            Flag::ForceOpen => Kind::ForcedOpen,
            Flag::ForceClosed | Flag::MetricsOnly => Kind::MetricsOnly,
            Flag::Disable => Kind::Disabled,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Letters, digits, `_`: appears in metric names, shared-data keys and operator flags.
    pub name: String,
    /// The selected route's upstream cluster (`xds.cluster_name`) is this.
    #[serde(default)]
    pub cluster: Option<String>,
    /// The request's `:authority` (port stripped, case-insensitive) is this, or one of these.
    #[serde(default)]
    pub authority: OneOrMany,
    /// Path prefix / regex, methods, route name (`core::matcher`).
    #[serde(default, rename = "match")]
    pub match_: MatchConfig,
    /// Statuses counted as failures (codes or classes such as "5xx").
    #[serde(default = "default_failure_status")]
    pub failure_status: Vec<StatusSpec>,
    /// Statuses not counted at all (neither success nor failure; a half-open permit is given
    /// back).
    #[serde(default = "default_ignore_status")]
    pub ignore_status: Vec<StatusSpec>,
    /// Envoy response flags counted as failures whatever the status (short names: UF, UH,
    /// UT, UR, LR, UC, UO, URX, UPE, ...).
    #[serde(default = "default_failure_flags")]
    pub failure_flags: Vec<String>,
    /// A call at least this long is slow.
    #[serde(default = "default_slow_call_ms")]
    pub slow_call_ms: u64,
    #[serde(default = "default_window")]
    pub window: WindowConfig,
    #[serde(default = "default_failure_rate")]
    pub failure_rate_percent: f64,
    #[serde(default = "default_slow_rate")]
    pub slow_call_rate_percent: f64,
    #[serde(default = "default_min_calls")]
    pub min_calls: u64,
    #[serde(default = "default_wait_open_ms")]
    pub wait_open_ms: u64,
    #[serde(default)]
    pub backoff: Option<BackoffConfig>,
    #[serde(default = "default_half_open_calls")]
    pub half_open_calls: u32,
    /// The longest stay in HALF_OPEN (then `after_half_open_wait`), so a breaker whose probes
    /// never report is never stuck there. Default 60 s; 0: no limit (resilience4j's default).
    #[serde(default = "default_half_open_max_wait_ms")]
    pub half_open_max_wait_ms: u64,
    /// Where the half-open limit leads: "open" (resilience4j) or "closed".
    #[serde(default = "default_after_half_open")]
    pub after_half_open_wait: String,
    #[serde(default)]
    pub fallback: FallbackConfig,
    #[serde(default)]
    pub bulkhead: Option<BulkheadConfig>,
    /// A flag from config (ECDS updates apply it with no restart); an operator flag wins.
    #[serde(default)]
    pub flag: Option<Flag>,
    /// This API in shadow mode (METRICS_ONLY, bulkhead counts but never rejects).
    #[serde(default)]
    pub shadow: bool,
}

fn default_failure_status() -> Vec<StatusSpec> {
    vec![StatusSpec::Text("5xx".into())]
}
fn default_ignore_status() -> Vec<StatusSpec> {
    vec![StatusSpec::Text("4xx".into())]
}
fn default_failure_flags() -> Vec<String> {
    [
        "UF", "UH", "UT", "UR", "LR", "UC", "UO", "URX", "UPE", "NC", "DF",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
fn default_slow_call_ms() -> u64 {
    60_000
}
fn default_window() -> WindowConfig {
    WindowConfig::Count(100)
}
fn default_failure_rate() -> f64 {
    50.0
}
fn default_slow_rate() -> f64 {
    100.0
}
fn default_min_calls() -> u64 {
    100
}
fn default_wait_open_ms() -> u64 {
    60_000
}
fn default_half_open_calls() -> u32 {
    10
}
fn default_half_open_max_wait_ms() -> u64 {
    60_000
}
fn default_after_half_open() -> String {
    "open".into()
}

/// Envoy's response flags (`StreamInfo::CoreResponseFlag`), by short name: bit `1 << i` of
/// the `response.flags` property.
pub use sg_core::flags::{FLAG_DC, FLAG_DR, RESPONSE_FLAGS};

/// One API's compiled plan.
#[derive(Debug, Clone)]
pub struct Api {
    pub name: String,
    pub cluster: Option<String>,
    /// Lower-case.
    pub authorities: Vec<String>,
    pub matcher: Matcher,
    /// Inclusive status ranges.
    pub failure_status: Vec<(u16, u16)>,
    pub ignore_status: Vec<(u16, u16)>,
    pub failure_flags: u64,
    pub slow_call_ms: u64,
    pub window: WindowKind,
    /// The window's minimum calls (count window: at most its size, as resilience4j).
    pub min_calls: u64,
    /// Buckets kept in shared data for the window.
    pub keep: usize,
    pub settings: Settings,
    pub fallback: Fallback,
    pub bulkhead: Option<Bulkhead>,
    pub flag: Option<Flag>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// No `retry-after` configured: one is added to 503/429 replies.
    pub add_retry_after: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bulkhead {
    pub max_concurrent: u64,
    pub max_wait_ms: u64,
    pub max_waiting: usize,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub apis: Vec<Api>,
    pub tick_ms: u64,
    pub state_cache_ms: u64,
    pub on_store_error: FailMode,
    pub operator: Option<OperatorConfig>,
    pub alert: AlertConfig,
    /// Some API matches on `route` (the route name is read per request only then).
    pub needs_route: bool,
    /// Some API has a cluster condition (`xds.cluster_name` is read per request only then).
    pub needs_cluster: bool,
    /// Some bulkhead lets calls wait: the root context ticks every `WAIT_TICK_MS`.
    pub waits: bool,
}

/// The tick period while calls may wait for a bulkhead slot (a waiting call is admitted
/// within this of a slot freeing on another worker; at once on its own worker).
pub const WAIT_TICK_MS: u64 = 10;

fn statuses(specs: &[StatusSpec], at: &str) -> Result<Vec<(u16, u16)>, ConfigError> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let bad = |why: String| ConfigError::new(format!("{at}[{i}]"), why);
            match s {
                StatusSpec::Code(c) if (100..=599).contains(c) => Ok((*c, *c)),
                StatusSpec::Code(c) => Err(bad(format!("{c} is not an HTTP status"))),
                StatusSpec::Text(t) => {
                    let b = t.as_bytes();
                    match b {
                        [d @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                            let lo = u16::from(d - b'0') * 100;
                            Ok((lo, lo + 99))
                        }
                        _ => match t.parse::<u16>() {
                            Ok(c) if (100..=599).contains(&c) => Ok((c, c)),
                            _ => Err(bad(format!(
                                "{t:?} is neither a status nor a class (\"5xx\")"
                            ))),
                        },
                    }
                }
            }
        })
        .collect()
}

fn percent_permille(p: f64, at: &str) -> Result<u64, ConfigError> {
    if !(p.is_finite() && p > 0.0 && p <= 100.0) {
        return Err(ConfigError::new(at, "must be above 0 and at most 100"));
    }
    Ok(((p * 10.0).round() as u64).clamp(1, 1000))
}

impl ApiConfig {
    fn compile(&self, at: &str, taken: bool) -> Result<Api, ConfigError> {
        check_rule_name(&self.name, taken, at)?;
        let f = |field: &str| format!("{at}.{field}");
        let bad = |field: &str, why: &str| Err(ConfigError::new(f(field), why));
        if self.cluster.as_deref() == Some("") {
            return bad("cluster", "must not be empty");
        }
        let mut failure_flags = 0u64;
        for (i, name) in self.failure_flags.iter().enumerate() {
            match RESPONSE_FLAGS.iter().position(|n| n == name) {
                Some(bit) => failure_flags |= 1 << bit,
                None => {
                    return Err(ConfigError::new(
                        format!("{at}.failure_flags[{i}]"),
                        format!("{name:?} is not an Envoy response flag (UF, UH, UT, ...)"),
                    ))
                }
            }
        }
        let (window, keep, min_calls) = match self.window {
            WindowConfig::Count(n) if (1..=100_000).contains(&n) => (
                WindowKind::Count { calls: n },
                MAX_BUCKETS,
                self.min_calls.min(n),
            ),
            WindowConfig::Seconds(s) if (1..=MAX_BUCKETS as u64).contains(&s) => {
                (WindowKind::Time { seconds: s }, s as usize, self.min_calls)
            }
            WindowConfig::Count(_) => return bad("window.count", "must be from 1 to 100000"),
            WindowConfig::Seconds(_) => return bad("window.seconds", "must be from 1 to 64"),
        };
        if self.min_calls == 0 {
            return bad("min_calls", "must be at least 1");
        }
        if !(1..=86_400_000).contains(&self.wait_open_ms) {
            return bad("wait_open_ms", "must be from 1 to 86400000");
        }
        if self.slow_call_ms == 0 {
            return bad("slow_call_ms", "must be at least 1");
        }
        if !(1..=10_000).contains(&self.half_open_calls) {
            return bad("half_open_calls", "must be from 1 to 10000");
        }
        let after_half_open_wait = match self.after_half_open_wait.as_str() {
            "open" => Kind::Open,
            "closed" => Kind::Closed,
            _ => return bad("after_half_open_wait", "must be \"open\" or \"closed\""),
        };
        let backoff = match &self.backoff {
            None => None,
            Some(b) => {
                if !(b.multiplier.is_finite() && (1.0..=100.0).contains(&b.multiplier)) {
                    return bad("backoff.multiplier", "must be from 1 to 100");
                }
                if b.max_wait_ms < self.wait_open_ms {
                    return bad("backoff.max_wait_ms", "must be at least wait_open_ms");
                }
                Some(Backoff {
                    multiplier_permille: (b.multiplier * 1000.0).round() as u64,
                    max_ms: b.max_wait_ms,
                })
            }
        };
        let fb = &self.fallback;
        if !(200..=599).contains(&fb.status) {
            return bad("fallback.status", "must be from 200 to 599");
        }
        for k in fb.headers.keys() {
            if k.is_empty() || k.starts_with(':') || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    format!("{at}.fallback.headers"),
                    format!("{k:?} is not a header name"),
                ));
            }
        }
        let bulkhead = match &self.bulkhead {
            None => None,
            Some(b) => {
                if !(1..=1_000_000).contains(&b.max_concurrent) {
                    return bad("bulkhead.max_concurrent", "must be from 1 to 1000000");
                }
                if b.max_wait_ms > 60_000 {
                    return bad("bulkhead.max_wait_ms", "must be at most 60000");
                }
                if !(1..=100_000).contains(&b.max_waiting) {
                    return bad("bulkhead.max_waiting", "must be from 1 to 100000");
                }
                Some(Bulkhead {
                    max_concurrent: b.max_concurrent,
                    max_wait_ms: b.max_wait_ms,
                    max_waiting: b.max_waiting,
                })
            }
        };
        let mut authorities = Vec::new();
        for (i, a) in self.authority.items().iter().enumerate() {
            if a.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.authority[{i}]"),
                    "must not be empty",
                ));
            }
            authorities.push(a.to_ascii_lowercase());
        }
        let headers: Vec<(String, String)> = fb
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        let add_retry_after = !headers.iter().any(|(k, _)| k == "retry-after");
        Ok(Api {
            name: self.name.clone(),
            cluster: self.cluster.clone(),
            authorities,
            matcher: self.match_.compile(&f("match"))?,
            failure_status: statuses(&self.failure_status, &f("failure_status"))?,
            ignore_status: statuses(&self.ignore_status, &f("ignore_status"))?,
            failure_flags,
            slow_call_ms: self.slow_call_ms,
            window,
            min_calls,
            keep,
            settings: Settings {
                failure_permille: percent_permille(
                    self.failure_rate_percent,
                    &f("failure_rate_percent"),
                )?,
                slow_permille: percent_permille(
                    self.slow_call_rate_percent,
                    &f("slow_call_rate_percent"),
                )?,
                min_calls,
                wait_open_ms: self.wait_open_ms,
                backoff,
                half_open_calls: self.half_open_calls,
                half_open_max_wait_ms: self.half_open_max_wait_ms,
                after_half_open_wait,
            },
            fallback: Fallback {
                status: fb.status,
                headers,
                body: fb.body.clone(),
                add_retry_after,
            },
            bulkhead,
            flag: if self.shadow && self.flag.is_none() {
                Some(Flag::MetricsOnly)
            } else {
                self.flag
            },
        })
    }
}

impl Compile for Config {
    type Plan = Plan;

    fn compile(&self) -> Result<Plan, ConfigError> {
        if self.apis.is_empty() {
            return Err(ConfigError::new("apis", "at least one API is required"));
        }
        if self.apis.len() > MAX_APIS {
            return Err(ConfigError::new(
                "apis",
                format!("at most {MAX_APIS} APIs per config"),
            ));
        }
        if !(10..=10_000).contains(&self.tick_ms) {
            return Err(ConfigError::new("tick_ms", "must be from 10 to 10000"));
        }
        if self.state_cache_ms > self.tick_ms {
            return Err(ConfigError::new(
                "state_cache_ms",
                "must be at most tick_ms (transitions are made on the tick)",
            ));
        }
        let mut apis: Vec<Api> = Vec::with_capacity(self.apis.len());
        for (i, a) in self.apis.iter().enumerate() {
            let taken = apis.iter().any(|x| x.name == a.name);
            let mut api = a.compile(&format!("apis[{i}]"), taken)?;
            if self.shadow && api.flag.is_none() {
                api.flag = Some(Flag::MetricsOnly);
            }
            apis.push(api);
        }
        let operator = self
            .operator
            .as_ref()
            .map(|op| op.compile("operator", DEFAULT_OPERATOR_PATH))
            .transpose()?;
        self.alert.validate("alert")?;
        Ok(Plan {
            needs_route: self.apis.iter().any(|a| a.match_.route.is_some()),
            needs_cluster: apis.iter().any(|a| a.cluster.is_some()),
            waits: apis
                .iter()
                .any(|a| a.bulkhead.is_some_and(|b| b.max_wait_ms > 0)),
            apis,
            tick_ms: self.tick_ms,
            state_cache_ms: self.state_cache_ms,
            on_store_error: self.on_store_error,
            operator,
            alert: self.alert.clone(),
        })
    }
}

impl Api {
    /// Whether a status is a failure (Some(true)), ignored (None) or a success (Some(false)).
    pub fn status_outcome(&self, status: u16) -> Option<bool> {
        let within = |r: &[(u16, u16)]| r.iter().any(|(lo, hi)| (*lo..=*hi).contains(&status));
        if within(&self.failure_status) {
            Some(true)
        } else if within(&self.ignore_status) {
            None
        } else {
            Some(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Plan, ConfigError> {
        Config::parse(json.as_bytes())
    }

    fn refused(json: &str) -> String {
        match parse(json) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e.path,
        }
    }

    sg_core::shipped_config_tests!("breaker");

    #[test]
    fn defaults_are_resilience4j_s() {
        let p = parse(r#"{"apis":[{"name":"a"}]}"#).unwrap();
        let a = &p.apis[0];
        let mut r4j = Settings::resilience4j_defaults();
        // The one default that differs (docs/BREAKER.md): never stuck half-open.
        r4j.half_open_max_wait_ms = 60_000;
        assert_eq!(a.settings, r4j);
        assert_eq!(a.window, WindowKind::Count { calls: 100 });
        assert_eq!(a.status_outcome(503), Some(true));
        assert_eq!(a.status_outcome(404), None);
        assert_eq!(a.status_outcome(200), Some(false));
        assert_eq!(a.fallback.status, 503);
        assert!(a.fallback.add_retry_after);
        assert_eq!(a.failure_flags & (1 << 5), 1 << 5, "UF");
        assert_eq!(
            a.failure_flags & FLAG_DC,
            0,
            "a client leaving is not a failure"
        );
        assert!(!p.waits);
    }

    #[test]
    fn state_cache_ms_is_at_most_tick_ms() {
        assert_eq!(
            refused(r#"{"tick_ms": 100, "state_cache_ms": 101, "apis":[{"name":"a"}]}"#),
            "state_cache_ms"
        );
        let p = parse(r#"{"state_cache_ms": 0, "apis":[{"name":"a"}]}"#).unwrap();
        assert_eq!(p.state_cache_ms, 0);
        assert_eq!(
            parse(r#"{"apis":[{"name":"a"}]}"#).unwrap().state_cache_ms,
            10
        );
    }

    #[test]
    fn a_count_window_clamps_the_minimum_calls() {
        let p = parse(r#"{"apis":[{"name":"a","window":{"count":5},"min_calls":20}]}"#).unwrap();
        assert_eq!(p.apis[0].min_calls, 5);
        let p = parse(r#"{"apis":[{"name":"a","window":{"seconds":10},"min_calls":20}]}"#).unwrap();
        assert_eq!(p.apis[0].min_calls, 20);
        assert_eq!(p.apis[0].keep, 10);
    }

    #[test]
    fn statuses_and_classes() {
        let p = parse(
            r#"{"apis":[{"name":"a","failure_status":["5xx", 429, "408"],"ignore_status":[]}]}"#,
        )
        .unwrap();
        let a = &p.apis[0];
        assert_eq!(a.status_outcome(429), Some(true));
        assert_eq!(a.status_outcome(408), Some(true));
        assert_eq!(a.status_outcome(404), Some(false));
        assert_eq!(a.status_outcome(599), Some(true));
    }

    #[test]
    fn shadow_holds_every_api_in_metrics_only_unless_flagged() {
        let p = parse(r#"{"shadow":true,"apis":[{"name":"a"},{"name":"b","flag":"force_open"}]}"#)
            .unwrap();
        assert_eq!(p.apis[0].flag, Some(Flag::MetricsOnly));
        assert_eq!(p.apis[1].flag, Some(Flag::ForceOpen));
    }

    #[test]
    fn refusals_name_the_field() {
        for (json, field) in [
            (r#"{"apis":[]}"#, "apis"),
            (r#"{"apis":[{"name":"a.b"}]}"#, "apis[0].name"),
            (r#"{"apis":[{"name":"a"},{"name":"a"}]}"#, "apis[1].name"),
            (
                r#"{"apis":[{"name":"a","failure_status":["6xx"]}]}"#,
                "apis[0].failure_status[0]",
            ),
            (
                r#"{"apis":[{"name":"a","failure_flags":["ZZ"]}]}"#,
                "apis[0].failure_flags[0]",
            ),
            (
                r#"{"apis":[{"name":"a","failure_rate_percent":0}]}"#,
                "apis[0].failure_rate_percent",
            ),
            (
                r#"{"apis":[{"name":"a","slow_call_rate_percent":101}]}"#,
                "apis[0].slow_call_rate_percent",
            ),
            (
                r#"{"apis":[{"name":"a","window":{"count":0}}]}"#,
                "apis[0].window.count",
            ),
            (
                r#"{"apis":[{"name":"a","window":{"seconds":65}}]}"#,
                "apis[0].window.seconds",
            ),
            (
                r#"{"apis":[{"name":"a","min_calls":0}]}"#,
                "apis[0].min_calls",
            ),
            (
                r#"{"apis":[{"name":"a","wait_open_ms":0}]}"#,
                "apis[0].wait_open_ms",
            ),
            (
                r#"{"apis":[{"name":"a","half_open_calls":0}]}"#,
                "apis[0].half_open_calls",
            ),
            (
                r#"{"apis":[{"name":"a","after_half_open_wait":"half"}]}"#,
                "apis[0].after_half_open_wait",
            ),
            (
                r#"{"apis":[{"name":"a","backoff":{"multiplier":0.5,"max_wait_ms":100000}}]}"#,
                "apis[0].backoff.multiplier",
            ),
            (
                r#"{"apis":[{"name":"a","backoff":{"multiplier":2,"max_wait_ms":1}}]}"#,
                "apis[0].backoff.max_wait_ms",
            ),
            (
                r#"{"apis":[{"name":"a","fallback":{"status":99}}]}"#,
                "apis[0].fallback.status",
            ),
            (
                r#"{"apis":[{"name":"a","fallback":{"headers":{":status":"1"}}}]}"#,
                "apis[0].fallback.headers",
            ),
            (
                r#"{"apis":[{"name":"a","bulkhead":{"max_concurrent":0}}]}"#,
                "apis[0].bulkhead.max_concurrent",
            ),
            (
                r#"{"apis":[{"name":"a","bulkhead":{"max_concurrent":1,"max_wait_ms":70000}}]}"#,
                "apis[0].bulkhead.max_wait_ms",
            ),
            (r#"{"apis":[{"name":"a","cluster":""}]}"#, "apis[0].cluster"),
            (r#"{"apis":[{"name":"a","flag":"maybe"}]}"#, "apis[0].flag"),
            (
                r#"{"apis":[{"name":"a","match":{"path_prefix":"x"}}]}"#,
                "apis[0].match.path_prefix",
            ),
            (r#"{"apis":[{"name":"a"}],"tick_ms":1}"#, "tick_ms"),
            (
                r#"{"apis":[{"name":"a"}],"operator":{"cluster":""}}"#,
                "operator.cluster",
            ),
            (r#"{"apis":[{"name":"a","nope":1}]}"#, "apis[0]"),
        ] {
            let p = refused(json);
            assert!(
                p.starts_with(field),
                "{json}: refused at {p:?}, expected {field:?}"
            );
        }
    }

    #[test]
    fn flags_parse_and_map_to_states() {
        assert_eq!(
            Flag::parse("force_open").map(Flag::state),
            Some(Kind::ForcedOpen)
        );
        assert_eq!(
            Flag::parse("force_closed").map(Flag::state),
            Some(Kind::MetricsOnly)
        );
        assert_eq!(
            Flag::parse("disable").map(Flag::state),
            Some(Kind::Disabled)
        );
        assert_eq!(Flag::parse("open"), None);
    }

    #[test]
    fn the_operator_path_defaults_to_the_breaker_s_own() {
        let p = parse(r#"{"apis":[{"name":"a"}],"operator":{"cluster":"c"}}"#).unwrap();
        assert_eq!(
            p.operator.map(|o| o.path).as_deref(),
            Some(DEFAULT_OPERATOR_PATH)
        );
    }
}
