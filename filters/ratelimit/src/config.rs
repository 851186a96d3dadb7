//! The documented `ratelimit` config (see README "ratelimit" and config/ratelimit.json) and
//! its compilation into an immutable plan. Any invalid field refuses the whole config.

use crate::limiter::{Mode, Params};
use serde::Deserialize;
use sg_core::config::require_rules;
pub use sg_core::config::Compile;
use sg_core::key::{KeyConfig, KeyPlan};
use sg_core::matcher::Matcher;
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
    /// The request header `simplepage`/`hotkey` set on a request they send to the simple
    /// page (the bundle strips it from client requests). Such a request is spent on the simple
    /// page, not on the main app: rules neither count nor reject it unless they set
    /// `include_diverted`.
    #[serde(default = "default_divert_header")]
    pub divert_header: String,
    /// Where the fleet's engine is (webdis in front of Redis) and how often to sync: needed
    /// by rules with `"scope": "fleet"` (README "Fleet").
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
}

pub use sg_core::fleet::FleetConfig;

pub use sg_core::fleet::Scope;

fn default_divert_header() -> String {
    "x-spikeguard-divert".to_string()
}

fn default_cas_attempts() -> u32 {
    sg_core::store::CAS_ATTEMPTS
}

pub use sg_core::config::FailMode;

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

sg_core::rule_config! {
    pub struct RuleConfig {
        key: KeyConfig,
        /// `"N r/s"` or `"N r/m"` (spaces optional), as nginx's `rate=`.
        pub rate: String,
        /// Requests allowed above the rate, as nginx's `burst=`.
        #[serde(default)]
        pub burst: u64,
        /// `"nodelay"`, `"delay"` (nginx's default: hold excess requests to pace them at the
        /// rate) or `{"delay": N}` (the first N excess requests pass at once, the rest are held).
        #[serde(default)]
        pub mode: ModeConfig,
        /// Count and log what would be rejected or delayed, but never act.
        #[serde(default)]
        pub dry_run: bool,
        /// Keys tracked at once (rounded up to a multiple of 4); fixed shared-data memory.
        #[serde(default = "default_max_keys")]
        pub max_keys: u32,
        /// Also count (and limit) requests diverted to the simple page (`divert_header`).
        #[serde(default)]
        pub include_diverted: bool,
        /// Opt-in leased mode (`nodelay` rules only): a worker takes up to `tokens` requests
        /// of a key's budget from shared data at once and admits them locally for `ms`,
        /// returning what it did not use. Fewer shared-data calls; docs/RATELIMIT.md states
        /// the error bound.
        #[serde(default)]
        pub lease: Option<LeaseConfig>,
        /// `"local"` (the default) or `"fleet"`: `rate` requests per window (1 s for r/s,
        /// 1 min for r/m) across every Envoy syncing with the same Redis (top-level
        /// `fleet`). Decided locally; bound and fallback in README "Fleet".
        #[serde(default)]
        pub scope: Scope,
    }
}

/// `lease`: how many requests a worker takes at once, and for how long it may spend them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    pub tokens: u32,
    pub ms: u64,
}

/// A compiled lease: at most `tokens` requests per take (at least 2), spent within `ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub tokens: u32,
    pub ms: u64,
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
    /// The arithmetic's inputs (`params.rate` is `rate.milli_per_s`).
    pub params: Params,
    pub rate: Rate,
    pub dry_run: bool,
    pub include_diverted: bool,
    /// Number of shared-data slot keys (sets of 4 keys).
    pub sets: u32,
    /// Leased mode (None: every request is charged in shared data).
    pub lease: Option<Lease>,
    /// Fleet scope: the fleet's budget (None: a local rule).
    pub fleet: Option<Budget>,
}

pub use sg_core::fleetslot::Budget;

#[derive(Debug, Clone)]
pub struct Plan {
    pub rules: Vec<Rule>,
    pub reject: RejectConfig,
    pub on_store_error: FailMode,
    pub cas_attempts: u32,
    pub rate_limit_headers: bool,
    /// Lower-case.
    pub divert_header: String,
    pub needs_route: bool,
    pub delays: bool,
    /// Set when a rule has fleet scope.
    pub fleet: Option<FleetConfig>,
}

/// A rule's rate, compiled: nginx's `ctx->rate` for the arithmetic and the `N r/s` or
/// `N r/m` the operator wrote, for the `RateLimit-Policy` header (`q=quota;w=window_s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// milli-requests per second: `quota * 1000 / window_s`, truncated as nginx does
    /// (`1r/m` is 16).
    pub milli_per_s: u64,
    /// Requests per window.
    pub quota: u64,
    /// 1 for `r/s`, 60 for `r/m`.
    pub window_s: u64,
}

impl Rate {
    /// Parses `"10r/s"`, `"600 r/m"` (spaces anywhere), refusing a rate of 0 or above
    /// [`MAX_RATE_PER_SEC`]. The error is the reason for the `rules[i].rate` field.
    pub fn parse(s: &str) -> Result<Rate, String> {
        let syntax = || format!("{s:?} is not N r/s or N r/m");
        let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        let (n, unit) = compact.split_once("r/").ok_or_else(syntax)?;
        let window_s = match unit {
            "s" => 1,
            "m" => 60,
            _ => return Err(syntax()),
        };
        let quota: u64 = n.parse().map_err(|_| syntax())?;
        if quota == 0 || quota > MAX_RATE_PER_SEC * window_s {
            return Err(format!(
                "{s:?} must be above 0 and at most {MAX_RATE_PER_SEC} r/s"
            ));
        }
        // nginx: ctx->rate = rate * 1000 / scale. Never 0 for quota >= 1 and window <= 60,
        // checked anyway since a zero rate would never drain.
        let milli_per_s = quota * 1000 / window_s;
        if milli_per_s == 0 {
            return Err(format!("{s:?} rounds to 0 milli-requests per second"));
        }
        Ok(Rate {
            milli_per_s,
            quota,
            window_s,
        })
    }
}

/// `mode` as written in the config: `"nodelay"`, `"delay"` (nginx's default, also when the
/// field is absent) or `{"delay": N}` (N in requests, at most [`MAX_BURST`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ModeConfig {
    NoDelay,
    #[default]
    Delay,
    DelayAfter(u64),
}

impl ModeConfig {
    const FORMS: &'static str = r#""nodelay", "delay" or {"delay": N}"#;

    fn from_json(v: &serde_json::Value) -> Result<ModeConfig, String> {
        use serde_json::Value;
        match v {
            Value::String(s) if s == "nodelay" => Ok(ModeConfig::NoDelay),
            Value::String(s) if s == "delay" => Ok(ModeConfig::Delay),
            Value::Object(o) if o.len() == 1 => match o.get("delay") {
                Some(Value::Number(n)) => match n.as_u64() {
                    Some(d) if d <= MAX_BURST => Ok(ModeConfig::DelayAfter(d)),
                    _ => Err(format!(
                        "delay {n} is not a whole number from 0 to {MAX_BURST}"
                    )),
                },
                Some(other) => Err(format!(
                    "delay {other} is not a whole number from 0 to {MAX_BURST}"
                )),
                None => Err(format!("{v} is not {}", Self::FORMS)),
            },
            other => Err(format!("{other} is not {}", Self::FORMS)),
        }
    }

    /// The limiter's form (milli-requests).
    pub fn compile(self) -> Mode {
        match self {
            ModeConfig::NoDelay => Mode::NoDelay,
            ModeConfig::Delay => Mode::Delay,
            ModeConfig::DelayAfter(n) => Mode::DelayAfter(n * 1000),
        }
    }
}

impl<'de> Deserialize<'de> for ModeConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Through a Value so every wrong form gets the one message listing the right ones
        // (serde's derive would say "unknown variant" or "expected a map").
        let v = serde_json::Value::deserialize(d)?;
        ModeConfig::from_json(&v).map_err(serde::de::Error::custom)
    }
}

impl Compile for Config {
    type Plan = Plan;

    fn compile(&self) -> Result<Plan, ConfigError> {
        require_rules(&self.rules)?;
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
            let head = r.head(&path, rules.iter().any(|x: &Rule| x.name == r.name))?;
            let rate = Rate::parse(&r.rate)
                .map_err(|why| ConfigError::new(format!("{path}.rate"), why))?;
            if r.burst > MAX_BURST {
                return Err(ConfigError::new(
                    format!("{path}.burst"),
                    format!("{} is above the maximum {MAX_BURST}", r.burst),
                ));
            }
            if r.max_keys == 0 || r.max_keys > MAX_KEYS {
                return Err(ConfigError::new(
                    format!("{path}.max_keys"),
                    format!("must be from 1 to {MAX_KEYS}"),
                ));
            }
            let lease = match r.lease {
                None => None,
                Some(l) => {
                    let at = format!("{path}.lease");
                    if r.mode != ModeConfig::NoDelay {
                        return Err(ConfigError::new(at, "only for mode \"nodelay\""));
                    }
                    if r.dry_run {
                        return Err(ConfigError::new(
                            at,
                            "not with dry_run (a dry run is exact)",
                        ));
                    }
                    if !(2..=1000).contains(&l.tokens) {
                        return Err(ConfigError::new(
                            format!("{at}.tokens"),
                            "must be from 2 to 1000",
                        ));
                    }
                    if !(1..=10_000).contains(&l.ms) {
                        return Err(ConfigError::new(
                            format!("{at}.ms"),
                            "must be from 1 to 10000",
                        ));
                    }
                    Some(Lease {
                        tokens: l.tokens,
                        ms: l.ms,
                    })
                }
            };
            let fleet = match (r.scope, &self.fleet) {
                (Scope::Local, _) => None,
                (Scope::Fleet, None) => {
                    return Err(ConfigError::new(
                        format!("{path}.scope"),
                        "\"fleet\" needs the top-level \"fleet\" block (where webdis is)",
                    ))
                }
                (Scope::Fleet, Some(f)) => {
                    let why = if !sg_core::fleet::valid_rule_name(&r.name) {
                        Some((
                            "name",
                            "a fleet rule's name is a Redis key part: letters, digits, _ or -",
                        ))
                    } else if r.burst != 0 {
                        Some(("burst", "a fleet rule is a fixed window of `rate` per second or minute: burst does not apply"))
                    } else if r.mode != ModeConfig::NoDelay {
                        Some((
                            "mode",
                            "a fleet rule rejects past its window's budget: set \"nodelay\"",
                        ))
                    } else if r.lease.is_some() {
                        Some((
                            "lease",
                            "not with scope \"fleet\" (the fleet rule is already local)",
                        ))
                    } else {
                        None
                    };
                    if let Some((field, why)) = why {
                        return Err(ConfigError::new(format!("{path}.{field}"), why));
                    }
                    let limit = rate.quota;
                    Some(Budget {
                        limit,
                        window_ms: rate.window_s * 1000,
                        fallback: f.fallback_limit(limit),
                    })
                }
            };
            rules.push(Rule {
                lease,
                name: r.name.clone(),
                matcher: head.matcher,
                key: head.key,
                params: Params {
                    rate: rate.milli_per_s,
                    burst: r.burst * 1000,
                    mode: r.mode.compile(),
                },
                rate,
                dry_run: r.dry_run,
                include_diverted: r.include_diverted,
                // A fleet rule tracks at most the fleet's `max_keys` (its slots are read on
                // every sync).
                sets: match (&fleet, &self.fleet) {
                    (Some(_), Some(f)) => r
                        .max_keys
                        .min(u32::try_from(f.max_keys).unwrap_or(u32::MAX))
                        .div_ceil(sg_core::fleetslot::WAYS as u32),
                    _ => r.max_keys.div_ceil(crate::limiter::WAYS as u32),
                },
                fleet,
            });
        }
        let fleet = match &self.fleet {
            None => None,
            Some(_) if !rules.iter().any(|r| r.fleet.is_some()) => {
                return Err(ConfigError::new(
                    "fleet",
                    "no rule has \"scope\": \"fleet\" (remove the block or scope a rule)",
                ))
            }
            Some(f) => {
                f.validate("fleet")?;
                Some(f.clone())
            }
        };
        Ok(Plan {
            fleet,
            needs_route: rules.iter().any(|r| r.matcher.needs_route()),
            delays: rules
                .iter()
                .any(|r| !r.dry_run && r.params.mode != Mode::NoDelay),
            rules,
            reject: self.reject.clone(),
            on_store_error: self.on_store_error,
            cas_attempts: self.cas_attempts,
            rate_limit_headers: self.rate_limit_headers,
            divert_header: self.divert_header.to_ascii_lowercase(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    sg_core::shipped_config_tests!("ratelimit", fleet);

    fn rule_json(fields: &str) -> String {
        format!(r#"{{"rules":[{{"name":"r","key":"host","rate":"1r/s"{fields}}}]}}"#)
    }

    fn first_rule(fields: &str) -> Rule {
        match Config::parse(rule_json(fields).as_bytes()) {
            Ok(p) => p.rules.into_iter().next().unwrap(),
            Err(e) => panic!("refused {fields}: {e}"),
        }
    }

    fn error(json: &str) -> String {
        match Config::parse(json.as_bytes()) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn rates_compile_to_nginx_milli_requests_and_the_policy_window() {
        let cases = [
            ("10r/s", 10_000, 10, 1),
            (" 600 r / m ", 10_000, 600, 60),
            ("1r/m", 16, 1, 60), // nginx truncates 1000/60
            ("10000000r/s", 10_000_000_000, 10_000_000, 1),
            ("600000000r/m", 10_000_000_000, 600_000_000, 60),
        ];
        for (s, milli_per_s, quota, window_s) in cases {
            assert_eq!(
                Rate::parse(s),
                Ok(Rate {
                    milli_per_s,
                    quota,
                    window_s
                }),
                "{s}"
            );
        }
        let p = Config::parse(br#"{"rules":[{"name":"r","key":"host","rate":"600r/m"}]}"#);
        let r = p.map(|p| p.rules.into_iter().next().unwrap()).unwrap();
        assert_eq!(
            (r.params.rate, r.rate.quota, r.rate.window_s),
            (10_000, 600, 60)
        );
        assert_eq!(r.rate, Rate::parse("600r/m").unwrap());
    }

    #[test]
    fn modes_compile_to_the_typed_plan() {
        let cases = [
            ("", Mode::Delay),
            (r#","mode":"delay""#, Mode::Delay),
            (r#","mode":"nodelay""#, Mode::NoDelay),
            (r#","mode":{"delay":0}"#, Mode::DelayAfter(0)),
            (r#","mode":{"delay":10}"#, Mode::DelayAfter(10_000)),
            (
                r#","mode":{"delay":100000000}"#,
                Mode::DelayAfter(100_000_000_000),
            ),
        ];
        for (fields, mode) in cases {
            assert_eq!(first_rule(fields).params.mode, mode, "{fields}");
        }
        let nodelay = Config::parse(rule_json(r#","mode":"nodelay""#).as_bytes());
        assert!(
            nodelay.is_ok_and(|p| !p.delays),
            "nodelay needs no fast tick"
        );
        let delay = Config::parse(rule_json("").as_bytes());
        assert!(delay.is_ok_and(|p| p.delays), "default mode delays");
        let dry = Config::parse(rule_json(r#","dry_run":true"#).as_bytes());
        assert!(dry.is_ok_and(|p| !p.delays), "a dry run never holds");
    }

    #[test]
    fn bad_configs_are_refused_naming_the_field() {
        let cases = [
            (r#"{"rules":[]}"#, "rules"),
            (
                r#"{"rules":[{"name":"r","key":"host","rate":"10r/x"}]}"#,
                "rules[0].rate",
            ),
            (
                r#"{"rules":[{"name":"r","key":"host","rate":"0r/s"}]}"#,
                "rules[0].rate",
            ),
            (
                r#"{"rules":[{"name":"r","key":"host","rate":"-1r/s"}]}"#,
                "rules[0].rate",
            ),
            (
                r#"{"rules":[{"name":"r","key":"host","rate":"1r/s","burst":1000000000000}]}"#,
                "rules[0].burst",
            ),
            (
                r#"{"rules":[{"name":"r","key":"host","rate":"1r/s","mode":"fast"}]}"#,
                "rules[0].mode",
            ),
            (
                r#"{"rules":[{"name":"r","key":"host","rate":"1r/s","match":{"path_regex":"("}}]}"#,
                "rules[0].match.path_regex",
            ),
            (
                r#"{"rules":[{"name":"a.b","key":"host","rate":"1r/s"}]}"#,
                "rules[0].name",
            ),
            (
                r#"{"rules":[{"name":"r","key":"host","rate":"1r/s"},{"name":"r","key":"host","rate":"1r/s"}]}"#,
                "rules[1].name",
            ),
            (
                r#"{"rules":[{"name":"r","key":"host","rate":"1r/s","max_keys":0}]}"#,
                "rules[0].max_keys",
            ),
            (
                r#"{"rules":[{"name":"r","key":"host","rate":"1r/s"}],"reject":{"status":200}}"#,
                "reject.status",
            ),
        ];
        for (json, field) in cases {
            match Config::parse(json.as_bytes()) {
                Ok(_) => panic!("accepted: {json}"),
                Err(e) => assert_eq!(e.path, field, "{json}: {e}"),
            }
        }
        // Unknown fields are refused too (serde names the field in the reason).
        let e = Config::parse(br#"{"rules":[{"name":"r","key":"host","rate":"1r/s","brust":5}]}"#);
        assert!(
            e.as_ref().is_err_and(|e| e.reason.contains("brust")),
            "{e:?}"
        );
    }

    #[test]
    fn rate_errors_say_what_was_written_and_what_is_expected() {
        let rate = |r: &str| {
            error(&format!(
                r#"{{"rules":[{{"name":"r","key":"host","rate":"{r}"}}]}}"#
            ))
        };
        assert_eq!(
            rate("10r/x"),
            r#"rules[0].rate: "10r/x" is not N r/s or N r/m"#
        );
        assert_eq!(rate("r/s"), r#"rules[0].rate: "r/s" is not N r/s or N r/m"#);
        assert_eq!(
            rate("-1r/s"),
            r#"rules[0].rate: "-1r/s" is not N r/s or N r/m"#
        );
        assert_eq!(
            rate("0r/s"),
            r#"rules[0].rate: "0r/s" must be above 0 and at most 10000000 r/s"#
        );
        assert_eq!(
            rate("10000001r/s"),
            r#"rules[0].rate: "10000001r/s" must be above 0 and at most 10000000 r/s"#
        );
        let third = error(
            r#"{"rules":[{"name":"a","key":"host","rate":"1r/s"},{"name":"b","key":"host","rate":"1r/s"},{"name":"c","key":"host","rate":"10r/x"}]}"#,
        );
        assert_eq!(third, r#"rules[2].rate: "10r/x" is not N r/s or N r/m"#);
    }

    #[test]
    fn mode_errors_list_the_documented_forms() {
        let forms = r#""nodelay", "delay" or {"delay": N}"#;
        let cases = [
            (r#""fast""#, format!(r#""fast" is not {forms}"#)),
            ("5", format!("5 is not {forms}")),
            (r#"{"dealy":5}"#, format!(r#"{{"dealy":5}} is not {forms}"#)),
            (
                r#"{"delay":5,"x":1}"#,
                format!(r#"{{"delay":5,"x":1}} is not {forms}"#),
            ),
            (
                r#"{"delay":-1}"#,
                "delay -1 is not a whole number from 0 to 100000000".to_string(),
            ),
            (
                r#"{"delay":1.5}"#,
                "delay 1.5 is not a whole number from 0 to 100000000".to_string(),
            ),
            (
                r#"{"delay":"5"}"#,
                r#"delay "5" is not a whole number from 0 to 100000000"#.to_string(),
            ),
            (
                r#"{"delay":100000001}"#,
                "delay 100000001 is not a whole number from 0 to 100000000".to_string(),
            ),
        ];
        for (mode, reason) in cases {
            let e = error(&rule_json(&format!(r#","mode":{mode}"#)));
            // serde adds where in the document the value is: "(line 1, column N)".
            assert!(
                e.starts_with(&format!("rules[0].mode: {reason} (line 1, column ")),
                "{mode}: {e}"
            );
        }
    }

    #[test]
    fn shipped_example_and_bundle_configs_compile() {
        let example = include_str!("../../../config/ratelimit.json");
        let p = Config::parse(example.as_bytes());
        assert!(
            p.as_ref().is_ok_and(|p| p.rules.len() == 3),
            "{:?}",
            p.err()
        );
        let modes: Vec<Mode> = p
            .map(|p| p.rules.iter().map(|r| r.params.mode).collect())
            .unwrap_or_default();
        assert_eq!(
            modes,
            vec![Mode::NoDelay, Mode::DelayAfter(10_000), Mode::NoDelay]
        );
        // The config embedded in envoy.yaml (the block after `value: |` of spikeguard.ratelimit).
        let bundle = include_str!("../../../envoy.yaml");
        let start = bundle
            .find("sg_ratelimit.wasm")
            .and_then(|i| bundle[i..].find("value: |").map(|j| i + j + 8));
        let json: String = start
            .map(|s| {
                bundle[s..]
                    .lines()
                    .skip(1)
                    .take_while(|l| !l.trim_start().starts_with("- name:"))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        let p = Config::parse(json.as_bytes());
        assert!(p.is_ok(), "bundle config: {:?}\n{json}", p.err());
    }

    #[test]
    fn schema_names_every_config_field() {
        // The example need not use every field; the schema must still name them all.
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../config/ratelimit.schema.json"))
                .unwrap_or_default();
        let rule = &schema["$defs"]["rule"]["properties"];
        for f in [
            "name",
            "match",
            "key",
            "lowercase_key",
            "max_key_len",
            "rate",
            "burst",
            "mode",
            "dry_run",
            "max_keys",
        ] {
            assert!(rule.get(f).is_some(), "schema lacks rules[].{f}");
        }
        for f in [
            "rules",
            "reject",
            "on_store_error",
            "cas_attempts",
            "rate_limit_headers",
        ] {
            assert!(schema["properties"].get(f).is_some(), "schema lacks {f}");
        }
        // The schema's mode forms are the ones the parser takes.
        let forms = &rule["mode"]["oneOf"];
        assert_eq!(forms[0]["enum"], serde_json::json!(["nodelay", "delay"]));
        assert_eq!(forms[1]["required"], serde_json::json!(["delay"]));
        assert_eq!(
            forms[1]["properties"]["delay"]["maximum"],
            serde_json::json!(MAX_BURST)
        );
        assert_eq!(rule["mode"]["default"], "delay");
    }
}
