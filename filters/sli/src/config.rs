//! The documented `sli` config (README "sli", config/sli.json) compiled into an immutable
//! plan. Any invalid field refuses the whole config with one line naming it.

use crate::classify::MAX_LABEL;
use serde::Deserialize;
use sg_core::key::{KeyConfig, KeyPlan};
use sg_core::matcher::{MatchConfig, Matcher};
use sg_core::ConfigError;

/// Page types per config (each costs series per code and action).
pub const MAX_PAGES: usize = 64;
/// Exact status codes labelled per config (others are `other`).
pub const MAX_CODES: usize = 32;
/// Duration bucket edges per config.
pub const MAX_BUCKETS: usize = 32;
/// Latency SLO thresholds per config.
pub const MAX_SLOS: usize = 8;
/// The 1 s buckets of the top-URL window (`topview::MAX_BUCKETS`).
pub const MAX_TOP_WINDOW_S: u64 = sg_core::topview::MAX_BUCKETS as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The `direction` label of every series: `inbound` (the ingress listener's sli, the
    /// default) or `outbound` (the egress listener's).
    #[serde(default = "default_direction")]
    pub direction: Direction,
    /// Counts are flushed to Envoy's stats and merged into the shared summary and top-URL
    /// view every tick.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Page types, first match wins; a request no page matches is `other`.
    #[serde(default)]
    pub pages: Vec<PageConfig>,
    /// Status codes labelled exactly (others: `other`; 499 and 000 are always labelled).
    #[serde(default = "default_codes")]
    pub codes: Vec<u16>,
    /// Duration bucket edges in ms, ascending (the `le` label; `+Inf` is added).
    #[serde(default = "default_buckets")]
    pub buckets_ms: Vec<u64>,
    /// Latency SLO thresholds in ms (`spikeguard_latency_good_total{slo}`).
    #[serde(default = "default_slos")]
    pub slo_ms: Vec<u64>,
    #[serde(default)]
    pub top_urls: TopConfig,
    /// The status page (absent: none).
    #[serde(default)]
    pub status: Option<StatusConfig>,
    /// Response headers removed before the client sees them (spikeguard's internal marks).
    #[serde(default = "default_strip")]
    pub strip_headers: Vec<String>,
    /// Shadow mode: count everything, change nothing (no header stripped, the status path
    /// passes through to the upstream).
    #[serde(default)]
    pub shadow: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageConfig {
    /// The `page` label: letters, digits, `_`, `.`, `-` (at most 64); not `other`.
    pub name: String,
    /// Method, path prefix/regex (normalised path), route name (`core::matcher`).
    #[serde(default, rename = "match")]
    pub match_: MatchConfig,
    /// The request's host (port stripped, case-insensitive) is one of these; empty: any.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// The page type needs this request value (the URL-form keys of `core::key`, e.g.
    /// `{"first_of": [{"query": "blogId"}, {"path_regex": "^/([^/]+)/[0-9]+$"}]}`).
    #[serde(default)]
    pub key: Option<KeyConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopConfig {
    /// URLs named (log line and status page).
    #[serde(default = "default_top_n")]
    pub n: usize,
    /// Over the last this many seconds (1 s buckets, at most 64).
    #[serde(default = "default_top_window_s")]
    pub window_s: u64,
    /// Counters per worker per tick (Space-Saving): memory, whatever URLs clients send.
    #[serde(default = "default_top_capacity")]
    pub capacity: usize,
    /// Query parameters kept in a URL (canonical order); absent: every parameter.
    #[serde(default)]
    pub query_params: Option<Vec<String>>,
    /// The lease holder logs the top URLs this often (0: never).
    #[serde(default = "default_top_log_s")]
    pub log_every_s: u64,
    /// One request in this many (at random) is counted, with this weight: the heavy hitters
    /// and their rates stay right while most requests skip building their URL. 1: all.
    #[serde(default = "default_top_sample")]
    pub sample_1_in: u64,
}

impl Default for TopConfig {
    fn default() -> Self {
        TopConfig {
            n: default_top_n(),
            window_s: default_top_window_s(),
            capacity: default_top_capacity(),
            query_params: None,
            log_every_s: default_top_log_s(),
            sample_1_in: default_top_sample(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusConfig {
    /// Path of the status page (exact, query ignored).
    #[serde(default = "default_status_path")]
    pub path: String,
    /// With a token, `authorization: Bearer <token>` opens the page on any listener;
    /// without, only a listener bound to a loopback address serves it. Anything else: 404.
    #[serde(default)]
    pub token: Option<String>,
}

fn default_direction() -> Direction {
    Direction::Inbound
}
fn default_tick_ms() -> u64 {
    1000
}
pub fn default_codes() -> Vec<u16> {
    vec![
        200, 201, 204, 301, 302, 304, 400, 401, 403, 404, 429, 499, 500, 502, 503, 504,
    ]
}
pub fn default_buckets() -> Vec<u64> {
    vec![
        5, 10, 25, 50, 100, 200, 300, 500, 750, 1000, 2000, 3000, 5000, 10000, 30000,
    ]
}
pub fn default_slos() -> Vec<u64> {
    vec![200, 1000, 3000, 5000]
}
fn default_top_n() -> usize {
    20
}
fn default_top_window_s() -> u64 {
    60
}
fn default_top_capacity() -> usize {
    256
}
fn default_top_log_s() -> u64 {
    60
}
fn default_top_sample() -> u64 {
    4
}
fn default_status_path() -> String {
    "/spikeguard/status".to_string()
}
fn default_strip() -> Vec<String> {
    vec!["x-spikeguard-action".to_string()]
}

/// A compiled page type.
#[derive(Debug, Clone)]
pub struct Page {
    pub name: String,
    pub matcher: Matcher,
    pub hosts: Vec<String>,
    pub key: Option<KeyPlan>,
}

#[derive(Debug, Clone)]
pub struct Top {
    pub n: usize,
    pub window_s: u64,
    /// The view's bucket length (1 s, or a sixth of the window if longer) and how many
    /// complete buckets make the window.
    pub bucket_ms: u64,
    pub buckets: u64,
    pub capacity: usize,
    pub query_params: Option<Vec<String>>,
    pub log_every_s: u64,
    pub sample_1_in: u64,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub path: String,
    pub token: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub direction: Direction,
    pub tick_ms: u64,
    /// Page types; the label `other` is index `pages.len()`.
    pub pages: Vec<Page>,
    /// Exact codes labelled, ascending (499 included).
    pub codes: Vec<u16>,
    pub buckets_ms: Vec<u64>,
    pub slo_ms: Vec<u64>,
    pub top: Top,
    pub status: Option<Status>,
    pub strip: Vec<String>,
    pub shadow: bool,
    /// Some page matches on `route` (the route name is read per request only then).
    pub needs_route: bool,
}

/// A window of up to 6 s has 1 s buckets; a longer one has six (a 60 s window: 10 s buckets),
/// so the shared view stays small.
fn top_bucket_ms(window_s: u64) -> u64 {
    (window_s * 1000 / 6).max(1000)
}

fn label_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

fn header_name_ok(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(':')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn ascending(v: &[u64]) -> bool {
    v.windows(2).all(|w| matches!(w, [a, b] if a < b))
}

impl PageConfig {
    fn compile(&self, at: &str, taken: bool) -> Result<Page, ConfigError> {
        if !label_ok(&self.name) || self.name == "other" {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!(
                    "{:?} must be 1-{MAX_LABEL} letters, digits, '_', '.' or '-', and not \"other\"",
                    self.name
                ),
            ));
        }
        if taken {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!("{:?} is used twice", self.name),
            ));
        }
        let key = self
            .key
            .as_ref()
            .map(|k| k.compile(false, sg_core::key::default_max_key_len(), at))
            .transpose()?;
        Ok(Page {
            name: self.name.clone(),
            matcher: self.match_.compile(&format!("{at}.match"))?,
            hosts: self.hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            key,
        })
    }
}

impl sg_core::config::Compile for Config {
    type Plan = Plan;

    fn compile(&self) -> Result<Plan, ConfigError> {
        if !(100..=60_000).contains(&self.tick_ms) {
            return Err(ConfigError::new("tick_ms", "must be from 100 to 60000"));
        }
        if self.pages.len() > MAX_PAGES {
            return Err(ConfigError::new(
                "pages",
                format!("at most {MAX_PAGES} page types"),
            ));
        }
        let mut pages: Vec<Page> = Vec::with_capacity(self.pages.len());
        for (i, p) in self.pages.iter().enumerate() {
            let taken = pages.iter().any(|x| x.name == p.name);
            pages.push(p.compile(&format!("pages[{i}]"), taken)?);
        }
        if self.codes.len() > MAX_CODES {
            return Err(ConfigError::new(
                "codes",
                format!("at most {MAX_CODES} codes"),
            ));
        }
        if let Some(i) = self.codes.iter().position(|c| !(100..=599).contains(c)) {
            return Err(ConfigError::new(
                format!("codes[{i}]"),
                "must be a status code from 100 to 599",
            ));
        }
        let mut codes = self.codes.clone();
        codes.push(499);
        codes.sort_unstable();
        codes.dedup();
        if self.buckets_ms.is_empty()
            || self.buckets_ms.len() > MAX_BUCKETS
            || !ascending(&self.buckets_ms)
            || self.buckets_ms.first() == Some(&0)
        {
            return Err(ConfigError::new(
                "buckets_ms",
                format!("must be 1 to {MAX_BUCKETS} ascending edges above 0 ms"),
            ));
        }
        if self.slo_ms.len() > MAX_SLOS
            || !ascending(&self.slo_ms)
            || self.slo_ms.first() == Some(&0)
        {
            return Err(ConfigError::new(
                "slo_ms",
                format!("must be at most {MAX_SLOS} ascending thresholds above 0 ms"),
            ));
        }
        let t = &self.top_urls;
        if !(1..=100).contains(&t.n) {
            return Err(ConfigError::new("top_urls.n", "must be from 1 to 100"));
        }
        if !(1..=MAX_TOP_WINDOW_S).contains(&t.window_s) {
            return Err(ConfigError::new(
                "top_urls.window_s",
                format!("must be from 1 to {MAX_TOP_WINDOW_S}"),
            ));
        }
        if !(t.n..=4096).contains(&t.capacity) {
            return Err(ConfigError::new(
                "top_urls.capacity",
                "must be from top_urls.n to 4096",
            ));
        }
        if !(1..=1000).contains(&t.sample_1_in) {
            return Err(ConfigError::new(
                "top_urls.sample_1_in",
                "must be from 1 (every request) to 1000",
            ));
        }
        if t.log_every_s > 86_400 {
            return Err(ConfigError::new(
                "top_urls.log_every_s",
                "must be at most 86400 (0: never)",
            ));
        }
        let status = match &self.status {
            None => None,
            Some(s) => {
                if !s.path.starts_with('/') || s.path.contains('?') {
                    return Err(ConfigError::new(
                        "status.path",
                        "must start with '/' and have no query",
                    ));
                }
                if s.token
                    .as_ref()
                    .is_some_and(|t| t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()))
                {
                    return Err(ConfigError::new(
                        "status.token",
                        "must be at least 16 printable characters",
                    ));
                }
                Some(Status {
                    path: s.path.clone(),
                    token: s.token.clone(),
                })
            }
        };
        if let Some(i) = self.strip_headers.iter().position(|h| !header_name_ok(h)) {
            return Err(ConfigError::new(
                format!("strip_headers[{i}]"),
                "must be a lower-case header name",
            ));
        }
        Ok(Plan {
            direction: self.direction,
            tick_ms: self.tick_ms,
            needs_route: self.pages.iter().any(|p| p.match_.route.is_some()),
            pages,
            codes,
            buckets_ms: self.buckets_ms.clone(),
            slo_ms: self.slo_ms.clone(),
            top: Top {
                n: t.n,
                window_s: t.window_s,
                bucket_ms: top_bucket_ms(t.window_s),
                buckets: (t.window_s * 1000).div_ceil(top_bucket_ms(t.window_s)),
                capacity: t.capacity,
                query_params: t.query_params.clone(),
                log_every_s: t.log_every_s,
                sample_1_in: t.sample_1_in,
            },
            status,
            strip: self.strip_headers.clone(),
            shadow: self.shadow,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use sg_core::config::Compile;

    fn parse(json: &str) -> Result<Plan, ConfigError> {
        Config::parse(json.as_bytes())
    }

    fn refused(json: &str) -> String {
        match parse(json) {
            Ok(_) => panic!("accepted: {json}"),
            Err(e) => e.path,
        }
    }

    #[test]
    fn defaults() {
        let p = parse("{}").unwrap();
        assert_eq!(p.direction, Direction::Inbound);
        assert!(p.pages.is_empty());
        assert!(p.codes.contains(&499) && p.codes.contains(&503));
        assert!(p.buckets_ms.contains(&200) && p.buckets_ms.contains(&1000));
        assert!(p.buckets_ms.contains(&3000) && p.buckets_ms.contains(&5000));
        assert_eq!(p.slo_ms, [200, 1000, 3000, 5000]);
        assert_eq!(p.top.n, 20);
        assert_eq!(p.top.window_s, 60);
        assert!(p.status.is_none());
        assert_eq!(p.strip, ["x-spikeguard-action"]);
    }

    #[test]
    fn bad_fields_are_named() {
        assert_eq!(refused(r#"{"tick_ms": 5}"#), "tick_ms");
        assert_eq!(refused(r#"{"pages": [{"name": "a b"}]}"#), "pages[0].name");
        assert_eq!(
            refused(r#"{"pages": [{"name": "other"}]}"#),
            "pages[0].name"
        );
        assert_eq!(
            refused(r#"{"pages": [{"name": "A"}, {"name": "A"}]}"#),
            "pages[1].name"
        );
        assert_eq!(
            refused(r#"{"pages": [{"name": "A", "match": {"path_regex": "("}}]}"#),
            "pages[0].match.path_regex"
        );
        assert_eq!(refused(r#"{"codes": [200, 42]}"#), "codes[1]");
        assert_eq!(refused(r#"{"buckets_ms": [10, 5]}"#), "buckets_ms");
        assert_eq!(refused(r#"{"buckets_ms": []}"#), "buckets_ms");
        assert_eq!(refused(r#"{"slo_ms": [0]}"#), "slo_ms");
        assert_eq!(
            refused(r#"{"top_urls": {"window_s": 65}}"#),
            "top_urls.window_s"
        );
        assert_eq!(
            refused(r#"{"top_urls": {"n": 30, "capacity": 10}}"#),
            "top_urls.capacity"
        );
        assert_eq!(refused(r#"{"status": {"path": "x"}}"#), "status.path");
        assert_eq!(refused(r#"{"status": {"token": "short"}}"#), "status.token");
        assert_eq!(
            refused(r#"{"strip_headers": ["X-Up"]}"#),
            "strip_headers[0]"
        );
        assert_eq!(refused(r#"{"direction": "sideways"}"#), "direction");
        assert_eq!(refused(r#"{"typo": 1}"#), "typo");
    }

    #[test]
    fn page_names_may_hold_dots_and_dashes() {
        let p = parse(r#"{"pages": [{"name": "Post-View.v2"}]}"#).unwrap();
        assert_eq!(p.pages[0].name, "Post-View.v2");
    }

    sg_core::shipped_config_tests!("sli");
}
