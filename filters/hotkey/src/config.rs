//! The documented `hotkey` config (README "hotkey", config/hotkey.json) compiled into an
//! immutable plan. Any invalid field refuses the whole config.

use crate::detect::Thresholds;
use serde::Deserialize;
pub use sg_core::alert::AlertConfig;
use sg_core::config::require_rules;
pub use sg_core::config::Compile;

use sg_core::key::{KeyConfig, KeyPlan};
use sg_core::matcher::Matcher;
pub use sg_core::oplist::OperatorConfig;
use sg_core::ConfigError;

/// Where the operator list is polled when `operator.path` is not given.
pub const DEFAULT_OPERATOR_PATH: &str = "/blocklist";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub rules: Vec<RuleConfig>,
    /// Each worker merges its counts into the shared view every tick; detection latency is
    /// about one tick plus the rule's window.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Space-Saving counters per rule per worker per tick (bounded memory).
    #[serde(default = "default_sketch_capacity")]
    pub sketch_capacity: usize,
    /// Keys kept per tick bucket of the shared view.
    #[serde(default = "default_view_entries")]
    pub view_entries: usize,
    /// Operator block list polled from an HTTP endpoint (one poller per Envoy, the leader).
    #[serde(default)]
    pub operator: Option<OperatorConfig>,
    /// Alerts: a structured log line always; a Slack-compatible webhook POST if configured.
    #[serde(default)]
    pub alert: AlertConfig,
    /// Where the fleet's engine is (webdis in front of Redis) and how often to sync: needed
    /// by rules with `"scope": "fleet"` (README "Fleet").
    #[serde(default)]
    pub fleet: Option<FleetConfig>,
}

pub use sg_core::fleet::{FleetConfig, Scope};

fn default_tick_ms() -> u64 {
    200
}
fn default_sketch_capacity() -> usize {
    64
}
fn default_view_entries() -> usize {
    32
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionConfig {
    /// Dry run: log and count only.
    Observe,
    /// Local reply.
    Reject {
        #[serde(default = "default_reject_status")]
        status: u16,
        #[serde(default = "default_reject_body")]
        body: String,
        #[serde(default = "default_retry_after")]
        retry_after_s: u64,
    },
    /// 302/307 to a blocking page; `{key}` in `location` is replaced (percent-encoded).
    Redirect {
        #[serde(default = "default_redirect_status")]
        status: u16,
        location: String,
    },
    /// Admit up to the enter threshold, shed the excess (with `reject`'s defaults).
    Limit,
    /// Hand the key to the `simplepage` filter: the leader publishes the rule's hot keys in
    /// `sg:hk:divert`, and `simplepage` diverts their GET/HEAD requests (its own safety rules,
    /// cache and response header). With `header` set, `hotkey` also marks GET/HEAD requests
    /// itself (header value: the rule name), for a bundle without `simplepage`.
    Divert {
        #[serde(default)]
        header: Option<String>,
    },
}

fn default_reject_status() -> u16 {
    503
}
fn default_reject_body() -> String {
    "This page is very busy right now. Please try again in a moment.\n".to_string()
}
fn default_retry_after() -> u64 {
    5
}
fn default_redirect_status() -> u16 {
    302
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockEntry {
    pub key: String,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

sg_core::rule_config! {
    pub struct RuleConfig {
        key: KeyConfig,
        /// Rates are measured over this sliding window (a whole number of ticks).
        #[serde(default = "default_window_ms")]
        pub window_ms: u64,
        /// A key is hot at or above this many requests per second...
        pub threshold_rps: u64,
        /// ...and at or above this share of the rule's traffic (0 = no share condition).
        #[serde(default)]
        pub threshold_share_percent: u32,
        /// It stops being hot after staying below `exit_percent` of the threshold for `cooldown_ms`.
        #[serde(default = "default_exit_percent")]
        pub exit_percent: u32,
        #[serde(default = "default_cooldown_ms")]
        pub cooldown_ms: u64,
        #[serde(default = "default_max_hot")]
        pub max_hot: usize,
        pub action: ActionConfig,
        /// Keys never shed (after normalisation).
        #[serde(default)]
        pub allow: Vec<String>,
        /// Keys shed by the operator whatever their rate, with optional expiry.
        #[serde(default)]
        pub block: Vec<BlockEntry>,
        /// `fleet`: the key's rate is the fleet's (every Envoy's traffic, through the fleet
        /// sync), so a key hot across the fleet but spread thin is hot on every Envoy.
        #[serde(default)]
        pub scope: Scope,
        /// Fleet scope: the fleet's top keys read back per sync (1..=100).
        #[serde(default = "default_fleet_top")]
        pub fleet_top: u32,
    }
}

fn default_fleet_top() -> u32 {
    10
}

fn default_window_ms() -> u64 {
    1000
}
fn default_exit_percent() -> u32 {
    50
}
fn default_cooldown_ms() -> u64 {
    10_000
}
fn default_max_hot() -> usize {
    8
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub key: KeyPlan,
    pub action: ActionConfig,
    pub thresholds: Thresholds,
    /// Window length in ticks.
    pub window_buckets: u64,
    pub allow: Vec<Vec<u8>>,
    pub block: Vec<(Vec<u8>, Option<u64>)>,
    /// Fleet scope: the fleet's top K read per sync (None: a local rule).
    pub fleet_top: Option<u32>,
    /// The window in ms (`window_buckets` x `tick_ms`).
    pub window_ms: u64,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub rules: Vec<Rule>,
    pub tick_ms: u64,
    pub sketch_capacity: usize,
    pub view_entries: usize,
    pub needs_route: bool,
    pub operator: Option<OperatorConfig>,
    pub alert: AlertConfig,
    /// Set when a rule has fleet scope.
    pub fleet: Option<FleetConfig>,
}

impl Compile for Config {
    type Plan = Plan;

    fn compile(&self) -> Result<Plan, ConfigError> {
        require_rules(&self.rules)?;
        if !(50..=1000).contains(&self.tick_ms) {
            return Err(ConfigError::new("tick_ms", "must be from 50 to 1000"));
        }
        if !(8..=4096).contains(&self.sketch_capacity) {
            return Err(ConfigError::new(
                "sketch_capacity",
                "must be from 8 to 4096",
            ));
        }
        if !(4..=256).contains(&self.view_entries) {
            return Err(ConfigError::new("view_entries", "must be from 4 to 256"));
        }
        let operator = self
            .operator
            .as_ref()
            .map(|op| op.compile("operator", DEFAULT_OPERATOR_PATH))
            .transpose()?;
        self.alert.validate("alert")?;
        let mut rules: Vec<Rule> = Vec::with_capacity(self.rules.len());
        for (i, r) in self.rules.iter().enumerate() {
            let path = format!("rules[{i}]");
            let bad = |field: &str, why: String| ConfigError::new(format!("{path}.{field}"), why);
            let head = r.head(&path, rules.iter().any(|x| x.name == r.name))?;
            if r.window_ms < self.tick_ms
                || r.window_ms % self.tick_ms != 0
                || r.window_ms / self.tick_ms > 60
            {
                return Err(bad(
                    "window_ms",
                    format!(
                        "{} must be 1 to 60 whole ticks of tick_ms {}",
                        r.window_ms, self.tick_ms
                    ),
                ));
            }
            if r.threshold_rps == 0 || r.threshold_rps > 10_000_000 {
                return Err(bad("threshold_rps", "must be from 1 to 10000000".into()));
            }
            if r.threshold_share_percent > 100 {
                return Err(bad(
                    "threshold_share_percent",
                    "must be from 0 to 100".into(),
                ));
            }
            if !(1..=100).contains(&r.exit_percent) {
                return Err(bad("exit_percent", "must be from 1 to 100".into()));
            }
            if r.cooldown_ms > 86_400_000 {
                return Err(bad("cooldown_ms", "must be at most one day".into()));
            }
            if !(1..=64).contains(&r.max_hot) {
                return Err(bad("max_hot", "must be from 1 to 64".into()));
            }
            match &r.action {
                ActionConfig::Reject { status, .. } if !(400..=599).contains(status) => {
                    return Err(bad(
                        "action.reject.status",
                        format!("{status} is not a 4xx or 5xx status"),
                    ));
                }
                ActionConfig::Redirect { status, .. } if *status != 302 && *status != 307 => {
                    return Err(bad(
                        "action.redirect.status",
                        format!("{status} is not 302 or 307"),
                    ));
                }
                ActionConfig::Redirect { location, .. } if location.is_empty() => {
                    return Err(bad("action.redirect.location", "must not be empty".into()));
                }
                ActionConfig::Divert {
                    header: Some(header),
                } if header.is_empty()
                    || header.starts_with(':')
                    || header.bytes().any(|b| b.is_ascii_uppercase() || b == b' ') =>
                {
                    return Err(bad(
                        "action.divert.header",
                        format!("{header:?} is not a lower-case header name"),
                    ));
                }
                _ => {}
            }
            if r.allow.len() > 1000 || r.block.len() > 1000 {
                return Err(bad(
                    "allow",
                    "allow and block take at most 1000 keys each".into(),
                ));
            }
            let fleet_top = match (r.scope, &self.fleet) {
                (Scope::Local, _) => None,
                (Scope::Fleet, None) => {
                    return Err(bad(
                        "scope",
                        "\"fleet\" needs the top-level \"fleet\" block (where webdis is)".into(),
                    ))
                }
                (Scope::Fleet, Some(_)) if !sg_core::fleet::valid_rule_name(&r.name) => {
                    return Err(bad(
                        "name",
                        "a fleet rule's name is a Redis key part: letters, digits, _ or -".into(),
                    ))
                }
                (Scope::Fleet, Some(_)) if !(1..=100).contains(&r.fleet_top) => {
                    return Err(bad("fleet_top", "must be from 1 to 100".into()))
                }
                (Scope::Fleet, Some(_)) => Some(r.fleet_top),
            };
            let norm = |k: &str| {
                sg_core::normalize::finish_key(
                    k.as_bytes().to_vec(),
                    r.lowercase_key,
                    r.max_key_len,
                )
            };
            rules.push(Rule {
                name: r.name.clone(),
                matcher: head.matcher,
                key: head.key,
                action: r.action.clone(),
                thresholds: Thresholds {
                    enter_milli_rps: r.threshold_rps * 1000,
                    enter_share_permille: r.threshold_share_percent * 10,
                    exit_permille: r.exit_percent * 10,
                    cooldown_ms: r.cooldown_ms,
                    max_hot: r.max_hot,
                },
                window_buckets: r.window_ms / self.tick_ms,
                allow: r.allow.iter().map(|k| norm(k)).collect(),
                block: r
                    .block
                    .iter()
                    .map(|b| (norm(&b.key), b.expires_at_ms))
                    .collect(),
                fleet_top,
                window_ms: r.window_ms,
            });
        }
        let fleet = match &self.fleet {
            None => None,
            Some(_) if !rules.iter().any(|r| r.fleet_top.is_some()) => {
                return Err(ConfigError::new(
                    "fleet",
                    "no rule has \"scope\": \"fleet\" (remove the block or scope a rule)",
                ))
            }
            Some(f) => {
                f.validate("fleet")?;
                if f.sync_ms < self.tick_ms {
                    return Err(ConfigError::new(
                        "fleet.sync_ms",
                        "must be at least tick_ms (one report per complete tick)",
                    ));
                }
                Some(f.clone())
            }
        };
        Ok(Plan {
            fleet,
            needs_route: rules.iter().any(|r| r.matcher.needs_route()),
            rules,
            tick_ms: self.tick_ms,
            sketch_capacity: self.sketch_capacity,
            view_entries: self.view_entries,
            operator,
            alert: self.alert.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_list_path_defaults_to_this_filters_own() {
        let p = Config::parse(r#"{"rules":[{"name":"r","key":"host","threshold_rps":5,"action":"observe"}],"operator":{"cluster":"c"}}"#.as_bytes()).unwrap();
        assert_eq!(p.operator.map(|o| o.path).as_deref(), Some("/blocklist"));
    }

    sg_core::shipped_config_tests!("hotkey", fleet);

    #[test]
    fn shipped_ecds_example_compiles() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/ecds/hotkey.json"))
                .unwrap_or_default();
        let cfg = doc
            .pointer("/resources/0/typed_config/config/configuration/value")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let p = Config::parse(cfg.as_bytes());
        assert!(
            p.as_ref().is_ok_and(|p| p.rules.len() == 1),
            "{:?}",
            p.err()
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (r#"{"rules":[]}"#, "rules"),
            (
                r#"{"rules":[{"name":"r","key":"host","threshold_rps":0,"action":"observe"}]}"#,
                "rules[0].threshold_rps",
            ),
            (
                r#"{"rules":[{"name":"r","key":"host","threshold_rps":5,"window_ms":300,"action":"observe"}]}"#,
                "rules[0].window_ms",
            ),
            (
                r#"{"rules":[{"name":"r","key":"host","threshold_rps":5,"action":{"redirect":{"status":301,"location":"/x"}}}]}"#,
                "rules[0].action.redirect.status",
            ),
            (
                r#"{"rules":[{"name":"r","key":"host","threshold_rps":5,"action":{"divert":{"header":"X Bad"}}}]}"#,
                "rules[0].action.divert.header",
            ),
            (
                r#"{"tick_ms":10,"rules":[{"name":"r","key":"host","threshold_rps":5,"action":"observe"}]}"#,
                "tick_ms",
            ),
            (
                r#"{"rules":[{"name":"r","key":"host","threshold_rps":5,"action":"observe"}],"operator":{"cluster":"c","poll_ms":1}}"#,
                "operator.poll_ms",
            ),
        ];
        for (json, field) in cases {
            match Config::parse(json.as_bytes()) {
                Ok(_) => panic!("accepted {json}"),
                Err(e) => assert_eq!(e.path, field, "{json}: {e}"),
            }
        }
    }
}
