//! Alerts when shedding starts or a key is blocked: one structured log line and a
//! Slack-compatible incoming-webhook body, at most one per (rule, key) per cool-down.
//!
//! Keys come from requests, so everything derived from them is escaped (no raw quotes,
//! backslashes or control characters reach the log or Slack) and bounded in length.
//! Rates are milli-requests per second, shown with one decimal, truncated (12345 -> "12.3").

use crate::hash::hash64;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// Envoy cluster of the webhook receiver (Slack-compatible JSON body).
    #[serde(default)]
    pub webhook_cluster: Option<String>,
    #[serde(default = "default_hook_path")]
    pub webhook_path: String,
    #[serde(default = "default_authority")]
    pub webhook_authority: String,
    /// Link in the alert; `{key}` and `{rule}` are replaced (percent-encoded).
    #[serde(default)]
    pub link_template: Option<String>,
    /// At most one alert per rule and key per this period.
    #[serde(default = "default_alert_cooldown_ms")]
    pub cooldown_ms: u64,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            webhook_cluster: None,
            webhook_path: default_hook_path(),
            webhook_authority: default_authority(),
            link_template: None,
            cooldown_ms: default_alert_cooldown_ms(),
        }
    }
}

impl AlertConfig {
    /// Refuses a bad alert config; `at` is its field path (`alert`).
    pub fn validate(&self, at: &str) -> Result<(), crate::ConfigError> {
        if self.webhook_cluster.as_deref() == Some("") {
            return Err(crate::ConfigError::new(
                format!("{at}.webhook_cluster"),
                "must not be empty",
            ));
        }
        if !self.webhook_path.starts_with('/') {
            return Err(crate::ConfigError::new(
                format!("{at}.webhook_path"),
                "must start with '/'",
            ));
        }
        Ok(())
    }
}

fn default_hook_path() -> String {
    "/hook".to_string()
}
fn default_authority() -> String {
    "spikeguard".to_string()
}
fn default_alert_cooldown_ms() -> u64 {
    180_000
}

/// Longest escaped key (or other value) in the log line and the Slack text, in bytes.
pub const MAX_VALUE_BYTES: usize = 256;
/// Keys listed in `top5`.
pub const TOP_N: usize = 5;
/// Longest part of a key put in a link (bytes of the key, before URL-encoding).
pub const MAX_LINK_KEY_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub filter: String,
    pub rule: String,
    pub key: String,
    /// Rate of `key`, milli-requests per second.
    pub milli_rps: u64,
    /// e.g. "shedding started", "blocked by operator".
    pub reason: String,
    /// Top keys of the last 3 minutes, (key, milli_rps); the 5 highest are used (ties keep
    /// the given order).
    pub top: Vec<(String, u64)>,
    pub now_ms: u64,
}

impl Alert {
    /// One line: `spikeguard alert filter=hotkey rule=post_view key="abc" rate=123.4r/s
    /// reason="shedding started" top5="a:12.0,b:3.5"`. Keys and reason are quoted with `"`
    /// and `\` backslash-escaped and control characters as `\xNN` (in `top5` keys also `,`
    /// and `:`), each at most 256 bytes (cut ones end in `...`). `filter` and `rule` are bare
    /// when made of `[A-Za-z0-9_.:/-]`, else quoted like keys.
    pub fn log_line(&self) -> String {
        let top = self
            .top5()
            .iter()
            .map(|(k, r)| format!("{}:{}", escape(k, &[',', ':'], MAX_VALUE_BYTES), rate(*r)))
            .collect::<Vec<_>>()
            .join(",");
        format!(
            "spikeguard alert filter={} rule={} key=\"{}\" rate={}r/s reason=\"{}\" top5=\"{}\"",
            bare(&self.filter),
            bare(&self.rule),
            escape(&self.key, &[], MAX_VALUE_BYTES),
            rate(self.milli_rps),
            escape(&self.reason, &[], MAX_VALUE_BYTES),
            top
        )
    }

    /// Slack incoming-webhook JSON `{"text": "..."}` with the same facts (mrkdwn; `&`, `<`,
    /// `>` entity-escaped) and, with `link_template`, a link where `{rule}` and `{key}` are
    /// replaced by the URL-encoded rule and key.
    pub fn slack_body(&self, link_template: Option<&str>) -> Vec<u8> {
        // Backticks would end the code spans the values are shown in.
        let show = |s: &str| slack_escape(&escape(s, &['`'], MAX_VALUE_BYTES));
        let mut text = format!(
            ":rotating_light: *spikeguard {}*: {}\nrule `{}`, key `{}`, {} r/s",
            show(&self.filter),
            show(&self.reason),
            show(&self.rule),
            show(&self.key),
            rate(self.milli_rps)
        );
        let top = self.top5();
        if !top.is_empty() {
            let items = top
                .iter()
                .map(|(k, r)| format!("`{}` {} r/s", show(k), rate(*r)))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = write!(text, "\ntop5 (last 3 min): {items}");
        }
        if let Some(t) = link_template {
            let key_bytes = self.key.as_bytes();
            let key_part = key_bytes.get(..MAX_LINK_KEY_BYTES).unwrap_or(key_bytes);
            let url = t
                .replace("{rule}", &url_encode(self.rule.as_bytes()))
                .replace("{key}", &url_encode(key_part))
                .replace('|', "%7C");
            let _ = write!(text, "\n<{}|details>", slack_escape(&url));
        }
        serde_json::to_vec(&serde_json::json!({ "text": text })).unwrap_or_default()
    }

    /// The `TOP_N` highest of `top`, highest first.
    fn top5(&self) -> Vec<&(String, u64)> {
        let mut top: Vec<&(String, u64)> = self.top.iter().collect();
        top.sort_by_key(|e| std::cmp::Reverse(e.1));
        top.truncate(TOP_N);
        top
    }
}

/// milli-rps as requests per second with one decimal, truncated.
pub fn rate(milli: u64) -> String {
    format!("{}.{}", milli / 1000, (milli % 1000) / 100)
}

/// `s` with `"` and `\` backslash-escaped and control characters (and `extra`) as `\xNN`,
/// at most `max` bytes; a value cut short ends in `...`.
pub fn escape(s: &str, extra: &[char], max: usize) -> String {
    let room = max.saturating_sub(3);
    let mut out = String::new();
    let mut fit = 0;
    for c in s.chars() {
        if out.len() <= room {
            fit = out.len();
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_control() || extra.contains(&c) => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
        if out.len() > max {
            // `fit` is a boundary between escaped characters, so a char boundary.
            out.truncate(fit);
            out.push_str("...");
            return out;
        }
    }
    out
}

/// A config name as-is when it is made of `[A-Za-z0-9_.:/-]`, else quoted and escaped.
fn bare(s: &str) -> String {
    let plain = !s.is_empty()
        && s.len() <= MAX_VALUE_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", escape(s, &[], MAX_VALUE_BYTES))
    }
}

/// Slack's three control characters as HTML entities.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Percent-encodes every byte but the RFC 3986 unreserved ones.
fn url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Per-key de-duplication: at most one alert per (rule,key) per cooldown; bounded memory (at
/// most `max_keys` remembered; when full, the key alerted longest ago is forgotten, so it
/// may alert again before its cool-down ends). Keys are remembered as 64-bit hashes of
/// (rule, key): a collision could only suppress an alert.
#[derive(Debug, Clone)]
pub struct Deduper {
    cooldown_ms: u64,
    max_keys: usize,
    /// hash -> when its last alert was sent.
    last: HashMap<u64, u64>,
    /// (hash, sent at) in sending order; an entry whose time differs from `last` is stale.
    order: VecDeque<(u64, u64)>,
}

impl Deduper {
    /// `max_keys` of 0 is taken as 1.
    pub fn new(cooldown_ms: u64, max_keys: usize) -> Self {
        Deduper {
            cooldown_ms,
            max_keys: max_keys.max(1),
            last: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// True if an alert for (rule, key) may be sent now (and records it).
    pub fn should_send(&mut self, rule: &str, key: &str, now_ms: u64) -> bool {
        self.expire(now_ms);
        let h = hash64(rule.as_bytes(), key.as_bytes());
        if let Some(&t) = self.last.get(&h) {
            // A clock going backwards reads as "just sent": suppressed.
            if now_ms.saturating_sub(t) < self.cooldown_ms {
                return false;
            }
        }
        self.last.insert(h, now_ms);
        self.order.push_back((h, now_ms));
        while self.order.len() > self.max_keys {
            self.pop_oldest();
        }
        true
    }

    /// (rule, key) pairs remembered.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Forgets keys whose cool-down is over (they may alert anyway) and stale order entries.
    fn expire(&mut self, now_ms: u64) {
        while let Some(&(h, t)) = self.order.front() {
            let stale = self.last.get(&h) != Some(&t);
            if stale || now_ms.saturating_sub(t) >= self.cooldown_ms {
                self.pop_oldest();
            } else {
                break;
            }
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((h, t)) = self.order.pop_front() {
            if self.last.get(&h) == Some(&t) {
                self.last.remove(&h);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert() -> Alert {
        Alert {
            filter: "hotkey".to_string(),
            rule: "post_view".to_string(),
            key: "abc".to_string(),
            milli_rps: 123_456,
            reason: "shedding started".to_string(),
            top: vec![
                ("b".to_string(), 3_500),
                ("a".to_string(), 12_000),
                ("c".to_string(), 1_099),
                ("d".to_string(), 900),
                ("e".to_string(), 0),
                ("f".to_string(), 899),
            ],
            now_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn log_line_format_and_top5_order() {
        assert_eq!(
            alert().log_line(),
            "spikeguard alert filter=hotkey rule=post_view key=\"abc\" rate=123.4r/s \
             reason=\"shedding started\" top5=\"a:12.0,b:3.5,c:1.0,d:0.9,f:0.8\""
        );
        let mut a = alert();
        a.top.clear();
        a.milli_rps = 999;
        assert!(a
            .log_line()
            .ends_with(" rate=0.9r/s reason=\"shedding started\" top5=\"\""));
    }

    #[test]
    fn log_line_escapes_keys() {
        let mut a = alert();
        a.key = "a\"b\\c\n\x01\x7fé d".to_string();
        a.top = vec![("x,y:z\"".to_string(), 1000)];
        a.rule = "bad rule".to_string();
        let line = a.log_line();
        assert!(line.contains(r#" key="a\"b\\c\x0a\x01\x7fé d" "#), "{line}");
        assert!(line.contains(r#" top5="x\x2cy\x3az\":1.0""#), "{line}");
        assert!(line.contains(r#" rule="bad rule" "#), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn long_keys_are_cut_to_256_bytes() {
        assert_eq!(escape(&"a".repeat(256), &[], 256), "a".repeat(256));
        assert_eq!(
            escape(&"a".repeat(257), &[], 256),
            format!("{}...", "a".repeat(253))
        );
        // Escapes are never split: 63 * 4 bytes = 252 fit before "...", the 64th does not.
        assert_eq!(
            escape(&"\n".repeat(100), &[], 256),
            format!("{}...", "\\x0a".repeat(63))
        );
        // Multi-byte characters are never split either: 126 * 2 = 252.
        assert_eq!(
            escape(&"é".repeat(200), &[], 256),
            format!("{}...", "é".repeat(126))
        );
        let mut a = alert();
        a.key = "k".repeat(10_000);
        a.top = vec![("t".repeat(10_000), 1)];
        let line = a.log_line();
        assert!(line.contains(&format!("key=\"{}...\"", "k".repeat(253))));
        assert!(line.contains(&format!("top5=\"{}...:0.0\"", "t".repeat(253))));
        assert!(line.len() < 700, "{}", line.len());
    }

    #[test]
    fn slack_body_is_json_with_facts_and_encoded_link() {
        let mut a = alert();
        a.key = "a b/<&>`".to_string();
        let body = a.slack_body(Some("https://grafana.example/d/x?rule={rule}&key={key}"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(text.contains("spikeguard hotkey"), "{text}");
        assert!(text.contains("shedding started"), "{text}");
        assert!(text.contains("rule `post_view`"), "{text}");
        assert!(text.contains("key `a b/&lt;&amp;&gt;\\x60`"), "{text}");
        assert!(text.contains("123.4 r/s"), "{text}");
        assert!(
            text.contains("top5 (last 3 min): `a` 12.0 r/s, `b` 3.5 r/s, `c` 1.0 r/s, `d` 0.9 r/s, `f` 0.8 r/s"),
            "{text}"
        );
        assert!(!text.contains("`e`"), "{text}");
        assert!(
            text.contains(
                "<https://grafana.example/d/x?rule=post_view&amp;key=a%20b%2F%3C%26%3E%60|details>"
            ),
            "{text}"
        );
        assert_eq!(v.as_object().unwrap().len(), 1);
        // No template: no link; no top keys: no top5 line.
        a.top.clear();
        let v: serde_json::Value = serde_json::from_slice(&a.slack_body(None)).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(!text.contains("details"), "{text}");
        assert!(!text.contains("top5"), "{text}");
    }

    #[test]
    fn url_encoding() {
        assert_eq!(url_encode(b"AZaz09-._~"), "AZaz09-._~");
        assert_eq!(url_encode("é ?#%|".as_bytes()), "%C3%A9%20%3F%23%25%7C");
    }

    #[test]
    fn deduper_once_per_cooldown_then_again() {
        let mut d = Deduper::new(60_000, 100);
        assert!(d.should_send("r", "k", 1_000));
        assert!(!d.should_send("r", "k", 1_000));
        assert!(!d.should_send("r", "k", 60_999));
        // Other key, other rule: independent.
        assert!(d.should_send("r", "k2", 2_000));
        assert!(d.should_send("r2", "k", 2_000));
        assert!(d.should_send("rk", "", 2_000));
        assert!(d.should_send("r", "k", 61_000));
        assert!(!d.should_send("r", "k", 120_999));
        assert!(d.should_send("r", "k", 121_000));
        // Clock going backwards: suppressed, not re-sent.
        assert!(!d.should_send("r", "k", 100_000));
    }

    #[test]
    fn deduper_forgets_oldest_when_full() {
        let mut d = Deduper::new(60_000, 2);
        assert!(d.should_send("r", "a", 0));
        assert!(d.should_send("r", "b", 1));
        assert!(d.should_send("r", "c", 2));
        assert_eq!(d.len(), 2);
        // "a" was forgotten (oldest); "b" and "c" are still suppressed.
        assert!(!d.should_send("r", "b", 3));
        assert!(!d.should_send("r", "c", 3));
        assert!(d.should_send("r", "a", 3));
        assert!(!d.should_send("r", "c", 4));
    }

    #[test]
    fn deduper_memory_is_bounded() {
        let mut d = Deduper::new(3_600_000, 1_000);
        for i in 0..1_000_000u64 {
            assert!(d.should_send("r", &i.to_string(), i / 10));
            assert!(d.order.len() <= 1_000);
        }
        assert_eq!(d.len(), 1_000);
        // The newest are remembered.
        assert!(!d.should_send("r", "999999", 100_000));
        // Expired entries are dropped too, and re-sends leave no stale entries behind.
        let mut d = Deduper::new(10, 1_000);
        for t in 0..100_000u64 {
            d.should_send("r", "k", t);
        }
        assert_eq!((d.len(), d.order.len()), (1, 1));
    }
}
