//! The documented `ratelimit` config (see README "ratelimit" and config/ratelimit.json) and
//! its compilation into an immutable plan. Any invalid field refuses the whole config.

use crate::limiter::Params;
use serde::Deserialize;
use sg_core::key::{KeyConfig, KeyPlan};
use sg_core::matcher::{MatchConfig, Matcher};
use sg_core::metrics::check_rule_name;
use sg_core::ConfigError;

/// Largest rate accepted, in requests per second (nginx has no cap; this keeps every
/// milli-request product far inside u64).
pub const MAX_RATE_PER_SEC: u64 = 10_000_000;
/// Largest burst / delay accepted, in requests.
pub const MAX_BURST: u64 = 100_000_000;
/// Largest `max_keys` accepted per rule: 4 keys per shared-data slot, ~114 bytes per slot.
pub const MAX_KEYS: u32 = 4_000_000;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub rules: Vec<RuleConfig>,
    #[serde(default)]
    pub reject: RejectConfig,
    /// What a request gets when shared data fails or CAS retries run out: `allow` (fail
    /// open, the default: a proxy hiccup never becomes an outage) or `reject`.
    #[serde(default)]
    pub on_store_error: FailMode,
    /// CAS attempts per rule before giving up (then `on_store_error` applies).
    #[serde(default = "default_cas_attempts")]
    pub cas_attempts: u32,
    /// Add `RateLimit-Policy` / `RateLimit` headers (IETF httpapi draft) to responses that
    /// pass. Off by default, like Envoy's `local_ratelimit` (`enable_x_ratelimit_headers`):
    /// two header writes cost ~2.5 us per request (docs/BENCHMARKS.md). Rejections always
    /// carry `Retry-After`.
    #[serde(default)]
    pub rate_limit_headers: bool,
}

fn default_cas_attempts() -> u32 {
    8
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    #[default]
    Allow,
    Reject,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RejectConfig {
    /// Status of a rejected request. Default 429; nginx's `limit_req_status` default is 503.
    #[serde(default = "default_status")]
    pub status: u16,
    #[serde(default = "default_body")]
    pub body: String,
    #[serde(default = "default_content_type")]
    pub content_type: String,
}

fn default_status() -> u16 {
    429
}
fn default_body() -> String {
    "Too Many Requests\n".to_string()
}
fn default_content_type() -> String {
    "text/plain".to_string()
}

impl Default for RejectConfig {
    fn default() -> Self {
        RejectConfig {
            status: default_status(),
            body: default_body(),
            content_type: default_content_type(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Letters, digits, `_`; appears in metric names and shared-data keys.
    pub name: String,
    #[serde(default, rename = "match")]
    pub match_: MatchConfig,
    /// One key component or a list (composite key).
    pub key: KeyConfig,
    #[serde(default)]
    pub lowercase_key: bool,
    #[serde(default = "sg_core::key::default_max_key_len")]
    pub max_key_len: usize,
    /// `"N r/s"` or `"N r/m"` (spaces optional), as nginx's `rate=`.
    pub rate: String,
    /// Requests allowed above the rate, as nginx's `burst=`.
    #[serde(default)]
    pub burst: u64,
    /// `"nodelay"`, `"delay"` (nginx's default: hold excess requests to pace them at the
    /// rate) or `{"delay": N}` (the first N excess requests pass at once, the rest are held).
    #[serde(default)]
    pub mode: Option<serde_json::Value>,
    /// Count and log what would be rejected or delayed, but never act.
    #[serde(default)]
    pub dry_run: bool,
    /// Keys tracked at once (rounded up to a multiple of 4); fixed shared-data memory.
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
}

fn default_max_keys() -> u32 {
    10_000
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub key: KeyPlan,
    pub params: Params,
    pub dry_run: bool,
    /// Number of shared-data slot keys (sets of 4 keys).
    pub sets: u32,
    /// Window of the rate for RateLimit-Policy: 1 for r/s, 60 for r/m.
    pub window_s: u64,
    /// Requests per window, for RateLimit-Policy.
    pub quota: u64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub rules: Vec<Rule>,
    pub reject: RejectConfig,
    pub on_store_error: FailMode,
    pub cas_attempts: u32,
    pub rate_limit_headers: bool,
    pub needs_route: bool,
    pub delays: bool,
}

/// Parses `"10r/s"`, `"600 r/m"` into (requests, window seconds).
pub fn parse_rate(s: &str) -> Option<(u64, u64)> {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let (n, unit) = compact.split_once("r/")?;
    let window = match unit {
        "s" => 1,
        "m" => 60,
        _ => return None,
    };
    let n: u64 = n.parse().ok()?;
    Some((n, window))
}

fn parse_mode(v: &Option<serde_json::Value>, path: &str) -> Result<Option<u64>, ConfigError> {
    use serde_json::Value;
    let bad = |why: String| ConfigError::new(format!("{path}.mode"), why);
    match v {
        None => Ok(Some(0)),
        Some(Value::String(s)) if s == "nodelay" => Ok(None),
        Some(Value::String(s)) if s == "delay" => Ok(Some(0)),
        Some(Value::Object(o)) if o.len() == 1 => match o.get("delay") {
            Some(Value::Number(n)) => match n.as_u64() {
                Some(d) if d <= MAX_BURST => Ok(Some(d)),
                _ => Err(bad(format!(
                    "delay {n} is not a whole number from 0 to {MAX_BURST}"
                ))),
            },
            _ => Err(bad(r#"expected "nodelay", "delay" or {"delay": N}"#.into())),
        },
        Some(other) => Err(bad(format!(
            r#"{other} is not "nodelay", "delay" or {{"delay": N}}"#
        ))),
    }
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Plan, ConfigError> {
        let cfg: Config = sg_core::error::parse_json(bytes)?;
        cfg.compile()
    }

    pub fn compile(&self) -> Result<Plan, ConfigError> {
        if self.rules.is_empty() {
            return Err(ConfigError::new("rules", "at least one rule is required"));
        }
        if !(400..=599).contains(&self.reject.status) {
            return Err(ConfigError::new(
                "reject.status",
                format!("{} is not a 4xx or 5xx status", self.reject.status),
            ));
        }
        if self.cas_attempts == 0 || self.cas_attempts > 100 {
            return Err(ConfigError::new("cas_attempts", "must be from 1 to 100"));
        }
        let mut rules = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            let path = format!("rules[{i}]");
            check_rule_name(
                &r.name,
                rules.iter().any(|x: &Rule| x.name == r.name),
                &path,
            )?;
            let (n, window_s) = parse_rate(&r.rate).ok_or_else(|| {
                ConfigError::new(
                    format!("{path}.rate"),
                    format!("{:?} is not N r/s or N r/m", r.rate),
                )
            })?;
            if n == 0 || n > MAX_RATE_PER_SEC * window_s {
                return Err(ConfigError::new(
                    format!("{path}.rate"),
                    format!(
                        "{:?} must be above 0 and at most {MAX_RATE_PER_SEC} r/s",
                        r.rate
                    ),
                ));
            }
            // nginx: ctx->rate = rate * 1000 / scale (milli-requests per second).
            let rate = n * 1000 / window_s;
            if rate == 0 {
                return Err(ConfigError::new(format!("{path}.rate"), "rounds to zero"));
            }
            if r.burst > MAX_BURST {
                return Err(ConfigError::new(
                    format!("{path}.burst"),
                    format!("{} is above the maximum {MAX_BURST}", r.burst),
                ));
            }
            let delay = parse_mode(&r.mode, &path)?;
            let key = r.key.compile(r.lowercase_key, r.max_key_len, &path)?;
            if r.max_keys == 0 || r.max_keys > MAX_KEYS {
                return Err(ConfigError::new(
                    format!("{path}.max_keys"),
                    format!("must be from 1 to {MAX_KEYS}"),
                ));
            }
            let matcher = r.match_.compile(&format!("{path}.match"))?;
            rules.push(Rule {
                name: r.name.clone(),
                matcher,
                key,
                params: Params {
                    rate,
                    burst: r.burst * 1000,
                    delay: delay.map(|d| d * 1000),
                },
                dry_run: r.dry_run,
                sets: r.max_keys.div_ceil(crate::limiter::WAYS as u32),
                window_s,
                quota: n,
            });
        }
        Ok(Plan {
            needs_route: rules.iter().any(|r| r.matcher.needs_route()),
            delays: rules.iter().any(|r| !r.dry_run && r.params.delay.is_some()),
            rules,
            reject: self.reject.clone(),
            on_store_error: self.on_store_error,
            cas_attempts: self.cas_attempts,
            rate_limit_headers: self.rate_limit_headers,
        })
    }
}
