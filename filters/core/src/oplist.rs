//! The operator list: entries an operator adds by hand (block this key, this path prefix),
//! fetched from an HTTP endpoint polled on a tick. The talk kept it in ZooKeeper and edited
//! it from chat; here any endpoint serving `{"entries":[...]}` will do.
//!
//! Shared by every filter that has an operator list (`hotkey` block list, `simplepage`
//! operator list): nothing here knows what a match means to the filter. The poller keeps the
//! last good list whenever the endpoint fails or serves garbage, so a broken endpoint never
//! clears the list. One poller per Envoy publishes with `encode_list`; workers read with
//! `decode_list` and compare versions.

use crate::codec::{Reader, Writer};
use serde::{Deserialize, Serialize};

/// Longest key an entry may carry (bytes).
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest ETag remembered; a longer one (or one with control characters) is not sent back.
pub const MAX_ETAG_BYTES: usize = 1024;
/// Shared-data layout version (first byte of `encode_list`).
pub const ENCODING_VERSION: u8 = 1;
/// A poll with no answer for this long (and at least `poll_ms`) is taken as lost, so a
/// missing callback cannot stop polling for good.
pub const LOST_CALL_MS: u64 = 60_000;

/// Where the operator list is polled from (one poller per Envoy, the lease holder).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorConfig {
    /// Envoy cluster serving the list.
    pub cluster: String,
    /// Path of the list; empty (absent) means the filter's own default (`Ops` callers pass it
    /// to `compile`), so two filters never poll one list by accident.
    #[serde(default)]
    pub path: String,
    #[serde(default = "default_authority")]
    pub authority: String,
    #[serde(default = "default_poll_ms")]
    pub poll_ms: u64,
    #[serde(default = "default_call_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_entries")]
    pub max_entries: usize,
}

impl OperatorConfig {
    /// Checks the operator config at field path `at` (`operator`) and fills in the filter's
    /// `default_path` when none was given.
    pub fn compile(
        &self,
        at: &str,
        default_path: &str,
    ) -> Result<OperatorConfig, crate::ConfigError> {
        let mut c = self.clone();
        if c.path.is_empty() {
            c.path = default_path.to_string();
        }
        c.validate(at)?;
        Ok(c)
    }

    fn validate(&self, at: &str) -> Result<(), crate::ConfigError> {
        let bad = |f: &str, why: String| crate::ConfigError::new(format!("{at}.{f}"), why);
        if self.cluster.is_empty() {
            return Err(bad("cluster", "must not be empty".into()));
        }
        if !self.path.starts_with('/') {
            return Err(bad("path", format!("{:?} must start with '/'", self.path)));
        }
        if !(100..=3_600_000).contains(&self.poll_ms) {
            return Err(bad("poll_ms", "must be from 100 to 3600000".into()));
        }
        if !(10..=60_000).contains(&self.timeout_ms) {
            return Err(bad("timeout_ms", "must be from 10 to 60000".into()));
        }
        if !(1..=100_000).contains(&self.max_entries) {
            return Err(bad("max_entries", "must be from 1 to 100000".into()));
        }
        Ok(())
    }
}

fn default_authority() -> String {
    "spikeguard".to_string()
}
fn default_poll_ms() -> u64 {
    5000
}
fn default_call_timeout_ms() -> u64 {
    1000
}
fn default_max_entries() -> usize {
    1000
}

/// One entry: which rule (None = all rules), which key (exact, after normalisation) or path
/// prefix, optional expiry (ms since Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Compared byte for byte with the filter's key, so it must be written in the normalised
    /// form the filter produces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Plain prefix of the normalised path (`/post/1` also matches `/post/12`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// In force while `now_ms < expires_at_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

impl Entry {
    fn in_force(&self, now_ms: u64) -> bool {
        match self.expires_at_ms {
            Some(t) => now_ms < t,
            None => true,
        }
    }

    fn applies_to(&self, rule: &str) -> bool {
        match self.rule.as_deref() {
            Some(r) => r == rule,
            None => true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List {
    pub entries: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    entries: Vec<Entry>,
}

#[derive(Serialize)]
struct DocRef<'a> {
    entries: &'a [Entry],
}

impl List {
    /// Parses `{"entries":[...]}` (unknown fields refused, `entries` required so an empty
    /// object cannot clear the list). Refuses (Err(reason)): not JSON, more than
    /// `max_entries`, an entry with neither key nor path_prefix or both, key longer than
    /// 1024 bytes, path_prefix not starting with '/'.
    pub fn parse(body: &[u8], max_entries: usize) -> Result<List, String> {
        let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a list: {e}"))?;
        if doc.entries.len() > max_entries {
            return Err(format!(
                "{} entries, more than the {} allowed",
                doc.entries.len(),
                max_entries
            ));
        }
        for (i, e) in doc.entries.iter().enumerate() {
            match (&e.key, &e.path_prefix) {
                (None, None) => {
                    return Err(format!("entries[{i}]: needs key or path_prefix"));
                }
                (Some(_), Some(_)) => {
                    return Err(format!("entries[{i}]: key and path_prefix are exclusive"));
                }
                (Some(k), None) if k.len() > MAX_KEY_BYTES => {
                    return Err(format!(
                        "entries[{i}].key: {} bytes, longer than {MAX_KEY_BYTES}",
                        k.len()
                    ));
                }
                (None, Some(p)) if !p.starts_with('/') => {
                    return Err(format!("entries[{i}].path_prefix: must start with '/'"));
                }
                _ => {}
            }
        }
        Ok(List {
            entries: doc.entries,
        })
    }

    /// Entries in force at now_ms (not expired).
    pub fn active(&self, now_ms: u64) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.in_force(now_ms))
    }

    /// True when an entry in force for `rule` (or for all rules) names exactly `key`.
    pub fn blocks_key(&self, rule: &str, key: &[u8], now_ms: u64) -> bool {
        self.active(now_ms)
            .any(|e| e.applies_to(rule) && e.key.as_deref().map(str::as_bytes) == Some(key))
    }

    /// True when an entry in force for `rule` (or for all rules) has a prefix of `path`
    /// (the normalised path, no query string).
    pub fn blocks_path(&self, rule: &str, path: &str, now_ms: u64) -> bool {
        self.active(now_ms).any(|e| {
            e.applies_to(rule)
                && e.path_prefix
                    .as_deref()
                    .is_some_and(|p| path.starts_with(p))
        })
    }

    /// As `blocks_path` for a request's raw `:path`: normalised first (percent-decoded, `//`
    /// and trailing `/` folded, query dropped), so `/PostList//42/` or `/Post%4Cist/42`
    /// cannot escape a `/PostList/42` entry. No work when no entry has a path prefix.
    pub fn blocks_request_path(&self, rule: &str, raw_path: &str, now_ms: u64) -> bool {
        if !self.entries.iter().any(|e| e.path_prefix.is_some()) {
            return false;
        }
        let (path_only, _) = crate::normalize::split_path(raw_path);
        let norm = crate::normalize::normalize_path(path_only);
        self.blocks_path(rule, &String::from_utf8_lossy(&norm), now_ms)
    }

    fn to_json(&self) -> Option<Vec<u8>> {
        serde_json::to_vec(&DocRef {
            entries: &self.entries,
        })
        .ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// A 200 with a valid list: it is now the list (the version moved if it differs).
    Applied { entries: usize },
    /// A 304: the list is unchanged.
    NotModified,
    /// The endpoint failed or served garbage; the last good list stays.
    KeptLastGood { reason: String },
}

/// How polls ended since the poller was created (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollCounters {
    pub applied: u64,
    pub not_modified: u64,
    pub kept_last_good: u64,
}

/// Poll state machine: ETag / If-None-Match, last good list kept when the endpoint fails or
/// returns garbage. Time is ms from any monotonic-enough clock (the host's).
#[derive(Debug, Clone)]
pub struct Poller {
    poll_ms: u64,
    max_entries: usize,
    etag: Option<String>,
    list: List,
    version: u64,
    counters: PollCounters,
    next_poll_ms: u64,
    /// When the poll in flight was sent.
    in_flight_since: Option<u64>,
}

impl Poller {
    pub fn new(poll_ms: u64, max_entries: usize) -> Self {
        Poller {
            poll_ms,
            max_entries,
            etag: None,
            list: List::default(),
            version: 0,
            counters: PollCounters::default(),
            next_poll_ms: 0,
            in_flight_since: None,
        }
    }

    /// True when a poll should be sent now (due and none in flight); marks one in flight.
    /// The first poll is due at once. A poll unanswered for `max(poll_ms, LOST_CALL_MS)` is
    /// taken as lost. If the call cannot be dispatched, report it with `on_failure`.
    pub fn due(&mut self, now_ms: u64) -> bool {
        if let Some(since) = self.in_flight_since {
            if now_ms.saturating_sub(since) < self.poll_ms.max(LOST_CALL_MS) {
                return false;
            }
        }
        if now_ms < self.next_poll_ms {
            return false;
        }
        self.in_flight_since = Some(now_ms);
        true
    }

    /// Request headers for the poll: `if-none-match` when an ETag is known.
    pub fn request_headers(&self) -> Vec<(String, String)> {
        match &self.etag {
            Some(t) => vec![("if-none-match".to_string(), t.clone())],
            None => Vec::new(),
        }
    }

    /// Feeds the response (status, headers lower-case, body); clears in-flight; schedules the
    /// next poll at now+poll_ms. 200 + valid list -> Applied (its ETag stored, or forgotten
    /// when it has none); 304 -> NotModified; other status or invalid body -> KeptLastGood
    /// (the ETag is kept, so a fixed list on the endpoint is fetched on the next poll).
    pub fn on_response(
        &mut self,
        now_ms: u64,
        status: u16,
        headers: &[(String, String)],
        body: &[u8],
    ) -> PollOutcome {
        self.finish(now_ms);
        match status {
            200 => match List::parse(body, self.max_entries) {
                Ok(list) => {
                    self.etag = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("etag"))
                        .map(|(_, v)| v.trim())
                        .filter(|v| usable_etag(v))
                        .map(str::to_string);
                    let entries = list.entries.len();
                    if list != self.list {
                        self.list = list;
                        self.version = self.version.wrapping_add(1);
                    }
                    self.counters.applied += 1;
                    PollOutcome::Applied { entries }
                }
                Err(reason) => self.kept(format!("invalid list: {reason}")),
            },
            304 => {
                self.counters.not_modified += 1;
                PollOutcome::NotModified
            }
            s => self.kept(format!("status {s}")),
        }
    }

    /// The call failed (timeout, reset, dispatch refused): KeptLastGood; clears in-flight and
    /// schedules the next poll at now+poll_ms.
    pub fn on_failure(&mut self, now_ms: u64, reason: &str) -> PollOutcome {
        self.finish(now_ms);
        self.kept(format!("call failed: {reason}"))
    }

    pub fn list(&self) -> &List {
        &self.list
    }

    /// A version number that changes whenever the applied list changes (so workers can tell
    /// a new list from shared data). 0 until a non-empty list is first applied.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn counters(&self) -> PollCounters {
        self.counters
    }

    /// When the next poll is due (ms).
    pub fn next_poll_ms(&self) -> u64 {
        self.next_poll_ms
    }

    fn finish(&mut self, now_ms: u64) {
        self.in_flight_since = None;
        self.next_poll_ms = now_ms.saturating_add(self.poll_ms);
    }

    fn kept(&mut self, reason: String) -> PollOutcome {
        self.counters.kept_last_good += 1;
        PollOutcome::KeptLastGood { reason }
    }
}

fn usable_etag(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_ETAG_BYTES && !v.bytes().any(|b| b < 0x20 || b == 0x7f)
}

/// Shared-data encoding of a list: `ENCODING_VERSION` byte, list version (u64 LE), then the
/// list as `{"entries":[...]}` JSON.
pub fn encode_list(version: u64, list: &List) -> Vec<u8> {
    let Some(json) = list.to_json() else {
        // Cannot happen for these types; an empty value decodes as None (readers keep theirs).
        return Vec::new();
    };
    let mut w = Writer::with_capacity(9 + json.len());
    w.u8(ENCODING_VERSION).u64(version).bytes(&json);
    w.finish()
}

/// Decodes `encode_list`'s output, validating the list as `List::parse` does; None for
/// anything else (empty, other layout version, bad JSON, too many entries).
pub fn decode_list(bytes: &[u8], max_entries: usize) -> Option<(u64, List)> {
    let mut r = Reader::new(bytes);
    if r.u8()? != ENCODING_VERSION {
        return None;
    }
    let version = r.u64()?;
    let json = r.take(r.remaining())?;
    let list = List::parse(json, max_entries).ok()?;
    Some((version, list))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_entry(rule: Option<&str>, key: &str, exp: Option<u64>) -> Entry {
        Entry {
            rule: rule.map(str::to_string),
            key: Some(key.to_string()),
            path_prefix: None,
            expires_at_ms: exp,
        }
    }

    #[test]
    fn parse_table() {
        let long_key = format!(r#"{{"entries":[{{"key":"{}"}}]}}"#, "k".repeat(1025));
        let max_key = format!(r#"{{"entries":[{{"key":"{}"}}]}}"#, "k".repeat(1024));
        let cases: Vec<(&str, &str, Result<usize, &str>)> = vec![
            (
                "valid",
                r#"{"entries":[{"rule":"post_view","key":"42","expires_at_ms":5},{"path_prefix":"/a"}]}"#,
                Ok(2),
            ),
            ("empty list", r#"{"entries":[]}"#, Ok(0)),
            (
                "null optional",
                r#"{"entries":[{"rule":null,"key":"k"}]}"#,
                Ok(1),
            ),
            ("max key length", max_key.as_str(), Ok(1)),
            ("not json", "entries: []", Err("not a list")),
            ("empty body", "", Err("not a list")),
            ("missing entries", "{}", Err("not a list")),
            (
                "unknown top field",
                r#"{"entries":[],"x":1}"#,
                Err("unknown field `x`"),
            ),
            (
                "unknown entry field",
                r#"{"entries":[{"key":"k","until":1}]}"#,
                Err("unknown field `until`"),
            ),
            (
                "both",
                r#"{"entries":[{"key":"k","path_prefix":"/p"}]}"#,
                Err("entries[0]: key and path_prefix are exclusive"),
            ),
            (
                "none",
                r#"{"entries":[{"key":"k"},{"rule":"r"}]}"#,
                Err("entries[1]: needs key or path_prefix"),
            ),
            (
                "too many",
                r#"{"entries":[{"key":"a"},{"key":"b"},{"key":"c"},{"key":"d"}]}"#,
                Err("4 entries, more than the 3 allowed"),
            ),
            (
                "long key",
                long_key.as_str(),
                Err("entries[0].key: 1025 bytes, longer than 1024"),
            ),
            (
                "bad prefix",
                r#"{"entries":[{"path_prefix":"post/1"}]}"#,
                Err("entries[0].path_prefix: must start with '/'"),
            ),
        ];
        for (name, body, want) in cases {
            let got = List::parse(body.as_bytes(), 3);
            match (want, got) {
                (Ok(n), Ok(l)) => assert_eq!(l.entries.len(), n, "{name}"),
                (Err(w), Err(e)) => assert!(e.contains(w), "{name}: {e}"),
                (w, g) => panic!("{name}: want {w:?}, got {g:?}"),
            }
        }
        let l = List::parse(
            br#"{"entries":[{"rule":"post_view","key":"42","expires_at_ms":5}]}"#,
            3,
        )
        .unwrap();
        assert_eq!(l.entries, vec![key_entry(Some("post_view"), "42", Some(5))]);
    }

    #[test]
    fn expiry_is_exclusive_at_expires_at() {
        let l = List {
            entries: vec![key_entry(None, "a", Some(1000)), key_entry(None, "b", None)],
        };
        assert_eq!(l.active(999).count(), 2);
        assert_eq!(l.active(1000).count(), 1);
        assert!(l.blocks_key("r", b"a", 999));
        assert!(!l.blocks_key("r", b"a", 1000));
        assert!(l.blocks_key("r", b"b", u64::MAX));
    }

    #[test]
    fn blocks_key_per_rule_and_for_all_rules() {
        let l = List {
            entries: vec![
                key_entry(Some("post_view"), "42", None),
                key_entry(None, "7", None),
                Entry {
                    rule: None,
                    key: None,
                    path_prefix: Some("/42".to_string()),
                    expires_at_ms: None,
                },
            ],
        };
        assert!(l.blocks_key("post_view", b"42", 0));
        assert!(!l.blocks_key("comment", b"42", 0));
        assert!(l.blocks_key("post_view", b"7", 0));
        assert!(l.blocks_key("comment", b"7", 0));
        // Exact: no prefix or case folding on keys; path prefixes are not keys.
        assert!(!l.blocks_key("post_view", b"421", 0));
        assert!(!l.blocks_key("post_view", b"/42", 0));
        assert!(!l.blocks_key("post_view", b"", 0));
    }

    #[test]
    fn a_request_path_is_normalised_before_prefix_matching() {
        let l = List {
            entries: vec![Entry {
                rule: None,
                key: None,
                path_prefix: Some("/PostList/42".into()),
                expires_at_ms: None,
            }],
        };
        for raw in [
            "/PostList/42",
            "/PostList//42/",
            "/Post%4Cist/42?x=1",
            "//PostList/42",
        ] {
            assert!(l.blocks_request_path("r", raw, 0), "{raw}");
        }
        assert!(!l.blocks_request_path("r", "/PostList/4", 0));
        assert!(!List::default().blocks_request_path("r", "/PostList/42", 0));
    }

    #[test]
    fn blocks_path_by_prefix_per_rule() {
        let l = List::parse(
            br#"{"entries":[{"rule":"page","path_prefix":"/post/1"},{"path_prefix":"/admin/"},{"key":"/x"}]}"#,
            10,
        )
        .unwrap();
        assert!(l.blocks_path("page", "/post/1", 0));
        assert!(l.blocks_path("page", "/post/12", 0));
        assert!(!l.blocks_path("other", "/post/1", 0));
        assert!(!l.blocks_path("page", "/post/", 0));
        assert!(l.blocks_path("other", "/admin/users", 0));
        assert!(!l.blocks_path("other", "/admin", 0));
        assert!(!l.blocks_path("other", "/x", 0));
    }

    const BODY_A: &[u8] = br#"{"entries":[{"key":"a"}]}"#;
    const BODY_B: &[u8] = br#"{"entries":[{"key":"a"},{"key":"b"}]}"#;

    fn etag(v: &str) -> Vec<(String, String)> {
        vec![("etag".to_string(), v.to_string())]
    }

    #[test]
    fn first_poll_at_once_not_again_in_flight_next_after_poll_ms() {
        let mut p = Poller::new(10_000, 100);
        assert!(p.due(5));
        assert!(!p.due(5));
        assert!(!p.due(20_000));
        assert_eq!(
            p.on_response(30_000, 200, &[], BODY_A),
            PollOutcome::Applied { entries: 1 }
        );
        assert_eq!(p.next_poll_ms(), 40_000);
        assert!(!p.due(39_999));
        assert!(p.due(40_000));
        assert!(!p.due(40_001));
        // A failure also waits poll_ms before the next try.
        assert!(matches!(
            p.on_failure(41_000, "timeout"),
            PollOutcome::KeptLastGood { .. }
        ));
        assert!(!p.due(50_999));
        assert!(p.due(51_000));
    }

    #[test]
    fn lost_call_does_not_stop_polling() {
        let mut p = Poller::new(1_000, 100);
        assert!(p.due(0));
        assert!(!p.due(59_999));
        assert!(p.due(60_000));
        // Poll period longer than LOST_CALL_MS: lost after poll_ms.
        let mut p = Poller::new(120_000, 100);
        assert!(p.due(0));
        assert!(!p.due(119_999));
        assert!(p.due(120_000));
    }

    #[test]
    fn etag_sent_after_200_with_etag_and_304_keeps_list() {
        let mut p = Poller::new(1000, 100);
        assert!(p.request_headers().is_empty());
        assert!(p.due(0));
        assert_eq!(
            p.on_response(0, 200, &etag("\"v1\""), BODY_A),
            PollOutcome::Applied { entries: 1 }
        );
        assert_eq!(
            p.request_headers(),
            vec![("if-none-match".to_string(), "\"v1\"".to_string())]
        );
        let (list, version) = (p.list().clone(), p.version());
        assert!(p.due(1000));
        assert_eq!(p.on_response(1000, 304, &[], b""), PollOutcome::NotModified);
        assert_eq!(p.list(), &list);
        assert_eq!(p.version(), version);
        assert_eq!(p.request_headers().len(), 1);
        // A 200 without an ETag forgets the old one.
        assert!(p.due(2000));
        p.on_response(2000, 200, &[], BODY_A);
        assert!(p.request_headers().is_empty());
        // An ETag with a control character is not sent back.
        p.on_response(3000, 200, &etag("\"a\nb\""), BODY_A);
        assert!(p.request_headers().is_empty());
        assert_eq!(
            p.counters(),
            PollCounters {
                applied: 3,
                not_modified: 1,
                kept_last_good: 0
            }
        );
    }

    #[test]
    fn errors_and_garbage_keep_last_good_list() {
        let mut p = Poller::new(1000, 1);
        p.on_response(0, 200, &etag("e1"), BODY_A);
        let good = p.list().clone();
        assert_eq!(
            p.on_response(1000, 500, &etag("e2"), BODY_B),
            PollOutcome::KeptLastGood {
                reason: "status 500".to_string()
            }
        );
        match p.on_response(2000, 200, &etag("e3"), b"<html>oops</html>") {
            PollOutcome::KeptLastGood { reason } => {
                assert!(reason.starts_with("invalid list: not a list"), "{reason}")
            }
            o => panic!("{o:?}"),
        }
        // Valid JSON but over max_entries (1).
        assert_eq!(
            p.on_response(3000, 200, &[], BODY_B),
            PollOutcome::KeptLastGood {
                reason: "invalid list: 2 entries, more than the 1 allowed".to_string()
            }
        );
        assert_eq!(
            p.on_failure(4000, "reset"),
            PollOutcome::KeptLastGood {
                reason: "call failed: reset".to_string()
            }
        );
        assert_eq!(p.list(), &good);
        assert_eq!(p.version(), 1);
        // The old ETag stays, so the endpoint answers 200 with its (fixed) list next time.
        assert_eq!(
            p.request_headers(),
            vec![("if-none-match".to_string(), "e1".to_string())]
        );
        assert_eq!(p.counters().kept_last_good, 4);
    }

    #[test]
    fn version_changes_only_when_list_changes() {
        let mut p = Poller::new(1000, 100);
        assert_eq!(p.version(), 0);
        p.on_response(0, 200, &[], br#"{"entries":[]}"#);
        assert_eq!(p.version(), 0);
        p.on_response(1, 200, &[], BODY_A);
        assert_eq!(p.version(), 1);
        p.on_response(2, 200, &etag("x"), BODY_A);
        assert_eq!(p.version(), 1);
        p.on_response(3, 304, &[], b"");
        p.on_response(4, 500, &[], b"");
        assert_eq!(p.version(), 1);
        p.on_response(5, 200, &[], BODY_B);
        assert_eq!(p.version(), 2);
        p.on_response(6, 200, &[], BODY_A);
        assert_eq!(p.version(), 3);
        assert_eq!(p.list().entries.len(), 1);
    }

    #[test]
    fn encode_decode_round_trip_and_garbage_is_none() {
        let l = List::parse(
            br#"{"entries":[{"rule":"r","key":"k\"\u0001","expires_at_ms":18446744073709551615},{"path_prefix":"/p"}]}"#,
            10,
        )
        .unwrap();
        let bytes = encode_list(7, &l);
        assert_eq!(bytes.first(), Some(&ENCODING_VERSION));
        assert_eq!(&bytes[1..9], &7u64.to_le_bytes());
        assert_eq!(decode_list(&bytes, 10), Some((7, l.clone())));
        assert_eq!(
            decode_list(&encode_list(0, &List::default()), 0),
            Some((0, List::default()))
        );
        // Too many for the reader's limit.
        assert_eq!(decode_list(&bytes, 1), None);
        assert_eq!(decode_list(b"", 10), None);
        assert_eq!(decode_list(&[ENCODING_VERSION, 1, 2], 10), None);
        let mut other = bytes.clone();
        other[0] = 2;
        assert_eq!(decode_list(&other, 10), None);
        let mut cut = bytes.clone();
        cut.truncate(bytes.len() - 1);
        assert_eq!(decode_list(&cut, 10), None);
        assert_eq!(decode_list(b"\x01garbage-garbage", 10), None);
    }
}
