//! Fleet sync ([11/11]): the pure part. Requests are still decided from this Envoy's shared
//! data; one leased worker per Envoy sends this Envoy's deltas to Redis once per sync period
//! (one `EVALSHA` of `config/fleet/sync.lua` through webdis) and reads back the fleet's
//! totals, from which each Envoy derives its share. Nothing here makes a host call: the
//! adapter sends [`Deltas::body`] with `dispatch_http_call` and hands the answer to
//! [`decode`]; [`Health`] says when to fall back to the local limit and when the engine is
//! back. docs/ARCHITECTURE.md, "Fleet", gives the design and the overshoot bound.

use crate::error::ConfigError;
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The Lua script, loaded once per Redis with `SCRIPT LOAD` (its SHA1 comes back and is what
/// `EVALSHA` names).
pub const SCRIPT: &str = include_str!("../../../config/fleet/sync.lua");

fn d_authority() -> String {
    "webdis".into()
}
fn d_sync() -> u64 {
    250
}
fn d_timeout() -> u64 {
    200
}
fn d_max_keys() -> usize {
    1000
}

/// `"fleet"` in a filter's config: where webdis is and how often to sync.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// The Envoy cluster of webdis (a `dispatch_http_call` target).
    pub cluster: String,
    /// `:authority` of the sync call.
    #[serde(default = "d_authority")]
    pub authority: String,
    /// Sync period, 100..=500 ms.
    #[serde(default = "d_sync")]
    pub sync_ms: u64,
    /// The sync call's timeout, 10 ms ..= `sync_ms`.
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
    /// Envoys expected in the fleet: the fallback limit is the fleet limit divided by it.
    pub expected_envoys: u32,
    /// Keys reported per sync and rule at most (the busiest first); the rest are counted in
    /// the rule's total and in `fleet_keys_dropped`.
    #[serde(default = "d_max_keys")]
    pub max_keys: usize,
}

impl FleetConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        let f = |name: &str, why: &str| Err(ConfigError::new(format!("{path}.{name}"), why));
        if self.cluster.is_empty() {
            return f("cluster", "must name webdis' Envoy cluster");
        }
        if !(100..=500).contains(&self.sync_ms) {
            return f("sync_ms", "must be 100..=500");
        }
        if self.timeout_ms < 10 || self.timeout_ms > self.sync_ms {
            return f("timeout_ms", "must be 10 ..= sync_ms");
        }
        if self.expected_envoys == 0 || self.expected_envoys > 100_000 {
            return f("expected_envoys", "must be 1..=100000");
        }
        if self.max_keys == 0 || self.max_keys > 10_000 {
            return f("max_keys", "must be 1..=10000");
        }
        Ok(())
    }

    /// The local limit while the engine is away: the fleet limit split evenly, at least 1.
    pub fn fallback_limit(&self, fleet_limit: u64) -> u64 {
        (fleet_limit / u64::from(self.expected_envoys.max(1))).max(1)
    }
}

/// `scope` of a rule: this Envoy's own decision (the default), or one across the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Local,
    Fleet,
}

/// A rule name as it goes into a Redis key name: `[A-Za-z0-9_-]`, 1..=64 bytes.
pub fn valid_rule_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Debug, Default, Clone, PartialEq)]
struct LimitDeltas {
    window_ms: u64,
    seen: u64,
    keys: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct HotDeltas {
    window_ms: u64,
    top: u32,
    /// The rule's requests (every key, reported or not).
    seen: u64,
    keys: BTreeMap<String, u64>,
}

/// Adds `n` to `key` in `map`, inserting it (the only allocation) while the map holds fewer
/// than `max` keys; false when it was full and `key` was not in it.
fn bump(map: &mut BTreeMap<String, u64>, max: usize, key: &str, n: u64) -> bool {
    if let Some(v) = map.get_mut(key) {
        *v = v.saturating_add(n);
        true
    } else if map.len() < max {
        map.insert(key.to_string(), n);
        true
    } else {
        false
    }
}

/// `map[rule]`, created on first use: the rule's name is copied once, not per request.
/// (Always `Some`; an Option, not a lookup that could panic.)
fn rule_entry<'a, T: Default>(map: &'a mut BTreeMap<String, T>, rule: &str) -> Option<&'a mut T> {
    if !map.contains_key(rule) {
        map.insert(rule.to_string(), T::default());
    }
    map.get_mut(rule)
}

/// Adds every key of `from` into `into` (bounded by `max`); returns how many did not fit.
fn merge_keys(into: &mut BTreeMap<String, u64>, max: usize, from: BTreeMap<String, u64>) -> u64 {
    from.into_iter()
        .filter(|(k, n)| !bump(into, max, k, *n))
        .count() as u64
}

/// What this Envoy has to report since its last sync. Bounded: at most `max_keys` keys per
/// rule; a key beyond that is still in the rule's `seen` and counted in `dropped`.
#[derive(Debug, Clone, PartialEq)]
pub struct Deltas {
    max_keys: usize,
    limits: BTreeMap<String, LimitDeltas>,
    hot: BTreeMap<String, HotDeltas>,
    /// Key reports dropped because a rule already had `max_keys` keys this period.
    pub dropped: u64,
}

impl Deltas {
    pub fn new(max_keys: usize) -> Deltas {
        Deltas {
            max_keys,
            limits: BTreeMap::new(),
            hot: BTreeMap::new(),
            dropped: 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty() && self.hot.is_empty()
    }

    /// Names a fleet-scoped limit rule in the next sync even when it has no requests (its
    /// reply carries the fleet's shares and totals all the same).
    pub fn touch_limit(&mut self, rule: &str, window_ms: u64) {
        if let Some(r) = rule_entry(&mut self.limits, rule) {
            r.window_ms = window_ms;
        }
    }

    /// Names a fleet-scoped hot-key rule in the next sync (its reply carries the fleet's
    /// top keys).
    pub fn touch_hot(&mut self, rule: &str, window_ms: u64, top: u32) {
        if let Some(r) = rule_entry(&mut self.hot, rule) {
            r.window_ms = window_ms;
            r.top = top;
        }
    }

    /// One request of a fleet-scoped limit rule: `admitted` says whether it was let through
    /// (the fleet totals count admitted requests; the share counts every request seen).
    pub fn limit(&mut self, rule: &str, window_ms: u64, key: &str, admitted: bool) {
        self.limit_n(rule, window_ms, 1, Some((key, u64::from(admitted))));
    }

    /// `seen` requests of a fleet-scoped limit rule, and `admitted` of them for `key` (a
    /// key that does not fit adds its admissions to `dropped`).
    pub fn limit_n(&mut self, rule: &str, window_ms: u64, seen: u64, key: Option<(&str, u64)>) {
        let max = self.max_keys;
        if let Some(r) = rule_entry(&mut self.limits, rule) {
            r.window_ms = window_ms;
            r.seen = r.seen.saturating_add(seen);
            if let Some((key, n)) = key.filter(|(_, n)| *n > 0) {
                if !bump(&mut r.keys, max, key, n) {
                    self.dropped = self.dropped.saturating_add(n);
                }
            }
        }
    }

    /// `n` requests for `key` of a fleet-scoped hot-key rule.
    pub fn hot(&mut self, rule: &str, window_ms: u64, top: u32, key: &str, n: u64) {
        let max = self.max_keys;
        if let Some(r) = rule_entry(&mut self.hot, rule) {
            r.window_ms = window_ms;
            r.top = top;
            if !bump(&mut r.keys, max, key, n) {
                self.dropped = self.dropped.saturating_add(1);
            }
        }
    }

    /// `n` requests of a fleet-scoped hot-key rule, every key (the rule's total, from which
    /// the fleet's total rate, for `enter_share_permille`).
    pub fn hot_seen(&mut self, rule: &str, window_ms: u64, top: u32, n: u64) {
        if let Some(r) = rule_entry(&mut self.hot, rule) {
            r.window_ms = window_ms;
            r.top = top;
            r.seen = r.seen.saturating_add(n);
        }
    }

    /// Requests seen for a limit rule in this report.
    pub fn seen(&self, rule: &str) -> u64 {
        self.limits.get(rule).map_or(0, |r| r.seen)
    }

    /// Takes what is to be sent, leaving this empty for the next period.
    pub fn take(&mut self) -> Deltas {
        std::mem::replace(self, Deltas::new(self.max_keys))
    }

    /// Puts back what a failed sync carried, so that nothing counted is lost: the next sync
    /// adds it to the window current then (conservative for a limit: counted late, never
    /// not at all). Bounded like any other report.
    pub fn merge(&mut self, other: Deltas) {
        let max = self.max_keys;
        let mut dropped = other.dropped;
        for (rule, d) in other.limits {
            let r = self.limits.entry(rule).or_default();
            r.window_ms = d.window_ms;
            r.seen = r.seen.saturating_add(d.seen);
            dropped = dropped.saturating_add(merge_keys(&mut r.keys, max, d.keys));
        }
        for (rule, d) in other.hot {
            let r = self.hot.entry(rule).or_default();
            r.window_ms = d.window_ms;
            r.top = d.top;
            r.seen = r.seen.saturating_add(d.seen);
            dropped = dropped.saturating_add(merge_keys(&mut r.keys, max, d.keys));
        }
        self.dropped = self.dropped.saturating_add(dropped);
    }

    /// The body of the sync call (`PUT /EVALSHA/<sha>/0`: webdis appends it as `ARGV[1]`).
    pub fn body(&self, envoy: &str) -> Vec<u8> {
        let pairs = |m: &BTreeMap<String, u64>| -> Vec<serde_json::Value> {
            m.iter().map(|(k, n)| serde_json::json!([k, n])).collect()
        };
        let l: Vec<serde_json::Value> = self
            .limits
            .iter()
            .map(|(r, d)| serde_json::json!({"r": r, "w": d.window_ms, "n": d.seen, "k": pairs(&d.keys)}))
            .collect();
        let h: Vec<serde_json::Value> = self
            .hot
            .iter()
            .map(|(r, d)| serde_json::json!({"r": r, "w": d.window_ms, "top": d.top, "n": d.seen, "k": pairs(&d.keys)}))
            .collect();
        serde_json::json!({"e": envoy, "l": l, "h": h})
            .to_string()
            .into_bytes()
    }
}

/// Lua's cjson writes an empty table as `{}`: accepted as an empty list.
fn seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seq<T> {
        List(Vec<T>),
        Empty(BTreeMap<String, serde_json::Value>),
    }
    match Seq::deserialize(d)? {
        Seq::List(v) => Ok(v),
        Seq::Empty(m) if m.is_empty() => Ok(Vec::new()),
        Seq::Empty(_) => Err(de::Error::custom("expected a list")),
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LimitReply {
    pub r: String,
    pub win: u64,
    pub left_ms: u64,
    /// Requests this Envoy saw for the rule, this window and the last.
    pub mine: u64,
    /// Requests the fleet saw for the rule, this window and the last.
    pub all: u64,
    /// Fleet totals admitted this window for the keys this Envoy reported.
    #[serde(deserialize_with = "seq")]
    pub k: Vec<(String, u64)>,
}

impl LimitReply {
    /// This Envoy's share of the rule's traffic, in 0..=1; 1/expected when nothing was seen.
    pub fn share(&self, expected: u32) -> f64 {
        self.share_before(expected, 0)
    }

    /// The share as it was before this sync's own report of `own` requests: every Envoy's
    /// traffic is then counted up to its last report, so no Envoy sees itself as all of the
    /// fleet because the others have not reported yet (the first sync of a rush would
    /// otherwise hand the first Envoy to sync the whole budget). 1/expected when nothing
    /// had been reported. An Envoy new to the fleet's traffic (nothing of its own before this
    /// report, while others had reported) takes 1/expected too: before its report its share
    /// would be 0, and it would refuse everything until its next sync.
    pub fn share_before(&self, expected: u32, own: u64) -> f64 {
        let mine = self.mine.saturating_sub(own);
        let all = self.all.saturating_sub(own);
        if all == 0 || mine > all || (mine == 0 && own > 0) {
            1.0 / f64::from(expected.max(1))
        } else {
            mine as f64 / all as f64
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct HotReply {
    pub r: String,
    pub win: u64,
    pub left_ms: u64,
    #[serde(deserialize_with = "seq")]
    pub cur: Vec<(String, f64)>,
    #[serde(deserialize_with = "seq")]
    pub prev: Vec<(String, f64)>,
    /// The rule's requests this window and the last, every key.
    #[serde(default)]
    pub ncur: f64,
    #[serde(default)]
    pub nprev: f64,
}

impl HotReply {
    /// The rule's fleet-wide rate, every key, in requests per second (sliding, as `rates`).
    pub fn total_rps(&self, window_ms: u64) -> f64 {
        let w = window_ms.max(1) as f64;
        let left = (self.left_ms as f64).min(w);
        (self.ncur + self.nprev * left / w) * 1000.0 / w
    }

    /// The fleet-wide rate of each key named, in requests per second, over the last
    /// `window_ms` (sliding: the current window plus the part of the last one that is still
    /// inside it), the highest first.
    pub fn rates(&self, window_ms: u64) -> Vec<(String, f64)> {
        let w = window_ms.max(1) as f64;
        let left = (self.left_ms as f64).min(w);
        let mut m: BTreeMap<&str, f64> = BTreeMap::new();
        for (k, n) in &self.cur {
            *m.entry(k).or_default() += n;
        }
        for (k, n) in &self.prev {
            *m.entry(k).or_default() += n * left / w;
        }
        let mut v: Vec<(String, f64)> = m
            .into_iter()
            .map(|(k, n)| (k.to_string(), n * 1000.0 / w))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Reply {
    /// Redis' clock, ms.
    pub t: u64,
    #[serde(deserialize_with = "seq")]
    pub l: Vec<LimitReply>,
    #[serde(deserialize_with = "seq")]
    pub h: Vec<HotReply>,
}

/// Why a sync gave no reply.
#[derive(Debug, Clone, PartialEq)]
pub enum SyncError {
    /// Redis does not have the script (restarted, flushed): load it and call again.
    NoScript,
    /// Redis answered an error.
    Redis(String),
    /// webdis answered something else than 200 (503 while Redis is down).
    Status(u32),
    /// No answer within the timeout, or the call could not be made.
    Timeout,
    /// An answer that is not the script's.
    Malformed(String),
}

/// Decodes webdis' answer to `EVALSHA` (`{"EVALSHA": "<the script's JSON>"}`, or
/// `{"EVALSHA": [false, "<error>"]}`).
pub fn decode(status: u32, body: &[u8]) -> Result<Reply, SyncError> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Answer {
        Ok(String),
        Err(de::IgnoredAny, String),
    }
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(rename = "EVALSHA")]
        evalsha: Answer,
    }
    let env: Result<Envelope, _> = serde_json::from_slice(body);
    match env {
        Ok(Envelope {
            evalsha: Answer::Ok(s),
        }) if status == 200 => {
            serde_json::from_str(&s).map_err(|e| SyncError::Malformed(e.to_string()))
        }
        Ok(Envelope {
            evalsha: Answer::Err(_, e),
        }) if e.starts_with("NOSCRIPT") => Err(SyncError::NoScript),
        Ok(Envelope {
            evalsha: Answer::Err(_, e),
        }) => Err(SyncError::Redis(e)),
        _ if status != 200 => Err(SyncError::Status(status)),
        Ok(_) => Err(SyncError::Status(status)),
        Err(e) => Err(SyncError::Malformed(e.to_string())),
    }
}

/// Decodes webdis' answer to `SCRIPT LOAD` (`{"SCRIPT": "<sha1>"}`).
pub fn decode_load(status: u32, body: &[u8]) -> Result<String, SyncError> {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(rename = "SCRIPT")]
        script: serde_json::Value,
    }
    if status != 200 {
        return Err(SyncError::Status(status));
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope {
            script: serde_json::Value::String(sha),
        }) if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) => Ok(sha),
        Ok(Envelope { script }) => Err(SyncError::Redis(script.to_string())),
        Err(e) => Err(SyncError::Malformed(e.to_string())),
    }
}

/// The body of the `SCRIPT LOAD` call (a POST to webdis' `/`): the command and the script
/// percent-encoded (webdis splits on `/` and decodes `%XX` and `+`).
pub fn load_body() -> Vec<u8> {
    let mut out = b"SCRIPT/LOAD/".to_vec();
    for b in SCRIPT.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// The path of the sync call.
pub fn sync_path(sha: &str) -> String {
    format!("/EVALSHA/{sha}/0")
}

/// This Envoy's allowance for one key of a fleet limit, for the rest of the window: the
/// fleet's budget left, times this Envoy's share of the rule's traffic, rounded down; never
/// more than the budget left.
pub fn allowance(fleet_limit: u64, fleet_admitted: u64, share: f64) -> u64 {
    let left = fleet_limit.saturating_sub(fleet_admitted);
    let s = if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        0.0
    };
    ((left as f64) * s).floor().min(left as f64) as u64
}

/// One fleet-scoped fixed-window limit at one Envoy (the decision on the request path: no
/// call, only this state). Each key has an allowance left for the current fleet window: from
/// the last sync, the lesser of the fleet's budget left times this Envoy's share (less what
/// was admitted since that sync was sent) and its quota (limit times share, less what it
/// admitted this window); for a key no sync has named yet, the limit times the share; on
/// the fallback, `fallback` per key and local window. Bounded: at most `max_keys` keys per
/// window; keys beyond share one overflow allowance (`overflowed` counts them).
#[derive(Debug, Clone)]
pub struct FleetLimit {
    pub limit: u64,
    pub window_ms: u64,
    max_keys: usize,
    share: f64,
    /// End of the current fleet window on this Envoy's clock (Redis' window edge, learned
    /// from `left_ms`), once known.
    win_end_ms: Option<u64>,
    /// The fleet window (Redis' index) the allowances belong to, once a reply named it.
    win: Option<u64>,
    left: BTreeMap<String, u64>,
    overflow_left: Option<u64>,
    since_send: BTreeMap<String, u64>,
    /// Admitted this window per key (for the quota: share x limit).
    used: BTreeMap<String, u64>,
    pub overflowed: u64,
}

impl FleetLimit {
    pub fn new(limit: u64, window_ms: u64, expected_envoys: u32, max_keys: usize) -> FleetLimit {
        FleetLimit {
            limit,
            window_ms: window_ms.max(1),
            max_keys,
            share: 1.0 / f64::from(expected_envoys.max(1)),
            win_end_ms: None,
            win: None,
            left: BTreeMap::new(),
            overflow_left: None,
            since_send: BTreeMap::new(),
            used: BTreeMap::new(),
            overflowed: 0,
        }
    }

    fn roll(&mut self, now_ms: u64) {
        match self.win_end_ms {
            None => self.win_end_ms = Some(now_ms.saturating_add(self.window_ms)),
            Some(end) if now_ms >= end => {
                let behind = (now_ms - end) / self.window_ms + 1;
                self.win_end_ms = Some(end.saturating_add(behind.saturating_mul(self.window_ms)));
                self.win = self.win.map(|w| w.saturating_add(behind));
                self.left.clear();
                self.used.clear();
                self.overflow_left = None;
            }
            Some(_) => {}
        }
    }

    /// This Envoy's share of the rule's traffic, from the last sync.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// Admit one request for `key`? `synced`: whether the sync is healthy ([`Health`]);
    /// `fallback`: the local limit otherwise ([`FleetConfig::fallback_limit`]).
    pub fn decide(&mut self, now_ms: u64, key: &str, synced: bool, fallback: u64) -> bool {
        self.roll(now_ms);
        let initial = if synced {
            allowance(self.limit, 0, self.share)
        } else {
            fallback
        };
        let slot = if let Some(v) = self.left.get_mut(key) {
            v
        } else if self.left.len() < self.max_keys {
            self.left.entry(key.to_string()).or_insert(initial)
        } else {
            self.overflowed = self.overflowed.saturating_add(1);
            self.overflow_left.get_or_insert(initial)
        };
        if *slot == 0 {
            return false;
        }
        *slot -= 1;
        bump(&mut self.since_send, self.max_keys, key, 1);
        bump(&mut self.used, self.max_keys, key, 1);
        true
    }

    /// The sync's body is being taken: admissions from now on are not in its totals.
    pub fn sent(&mut self) {
        self.since_send.clear();
    }

    /// A sync's reply for this rule, received at `now_ms`.
    pub fn apply(&mut self, now_ms: u64, reply: &LimitReply, expected_envoys: u32) {
        self.share = reply.share(expected_envoys);
        // Redis' window edge, on this Envoy's clock. The allowances belong to fleet window
        // `win`: a reply for a later one starts them again; a late reply for one this Envoy
        // has already left brings its share only.
        match self.win {
            Some(w) if reply.win < w => return,
            Some(w) if reply.win > w => {
                self.left.clear();
                self.used.clear();
                self.overflow_left = None;
            }
            _ => {}
        }
        self.win = Some(reply.win);
        self.win_end_ms = Some(now_ms.saturating_add(reply.left_ms.min(self.window_ms)));
        for (key, total) in &reply.k {
            // The lesser of: this Envoy's part of what the fleet left (less what it admitted
            // since the totals were taken), and what is left of its quota (share x limit)
            // this window. The quota keeps Envoys that have not reported yet from being
            // overrun by ones that see the budget as still open.
            let after = self.since_send.get(key).copied().unwrap_or(0);
            let used = self.used.get(key).copied().unwrap_or(0);
            let fleet_left = allowance(self.limit, *total, self.share).saturating_sub(after);
            let quota_left = allowance(self.limit, 0, self.share).saturating_sub(used);
            let a = fleet_left.min(quota_left);
            if self.left.contains_key(key) || self.left.len() < self.max_keys {
                self.left.insert(key.clone(), a);
            }
        }
    }
}

/// Whether this Envoy syncs or runs on its fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No sync has succeeded yet since start: the fallback limit applies, no alert.
    Starting,
    Synced,
    Fallback,
}

/// What a change of mode asks the adapter to do: count it, alert once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// The engine stopped answering: fallback limits and local detection from now on.
    FellBack,
    /// A sync succeeded again after a fallback.
    Recovered,
    /// The first sync succeeded.
    Joined,
}

/// The sync's health. A failed sync falls back at once; so does a reply older than two sync
/// periods plus the timeout (a call that never completes). The first good sync recovers.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub mode: Mode,
    pub last_ok_ms: Option<u64>,
    pub since_ms: u64,
}

impl Health {
    pub fn new(now_ms: u64) -> Health {
        Health {
            mode: Mode::Starting,
            last_ok_ms: None,
            since_ms: now_ms,
        }
    }

    fn to(&mut self, mode: Mode, now_ms: u64) {
        self.mode = mode;
        self.since_ms = now_ms;
    }

    pub fn ok(&mut self, now_ms: u64) -> Change {
        self.last_ok_ms = Some(now_ms);
        match self.mode {
            Mode::Synced => Change::None,
            Mode::Starting => {
                self.to(Mode::Synced, now_ms);
                Change::Joined
            }
            Mode::Fallback => {
                self.to(Mode::Synced, now_ms);
                Change::Recovered
            }
        }
    }

    pub fn failed(&mut self, now_ms: u64) -> Change {
        match self.mode {
            Mode::Synced => {
                self.to(Mode::Fallback, now_ms);
                Change::FellBack
            }
            Mode::Starting | Mode::Fallback => Change::None,
        }
    }

    /// On every tick: a synced Envoy whose last good reply is too old falls back.
    pub fn check(&mut self, now_ms: u64, cfg: &FleetConfig) -> Change {
        let stale = 2 * cfg.sync_ms + cfg.timeout_ms;
        match (self.mode, self.last_ok_ms) {
            (Mode::Synced, Some(t)) if now_ms.saturating_sub(t) > stale => self.failed(now_ms),
            _ => Change::None,
        }
    }

    /// Whether limits use the fleet's totals (else the fallback limit).
    pub fn synced(&self) -> bool {
        self.mode == Mode::Synced
    }
}

/// The overshoot bound of a fleet limit per window (docs/ARCHITECTURE.md, "Fleet"): each
/// Envoy may admit at its local rate for up to one sync period on totals that do not yet hold
/// the others' admissions.
pub fn overshoot_bound(envoys: u64, local_rate_rps: f64, sync_ms: u64) -> f64 {
    envoys as f64 * local_rate_rps * sync_ms as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> FleetConfig {
        serde_json::from_str(r#"{"cluster": "webdis", "expected_envoys": 3}"#).unwrap()
    }

    #[test]
    fn config_defaults_and_every_bad_field_named() {
        let c = cfg();
        assert_eq!((c.sync_ms, c.timeout_ms, c.max_keys), (250, 200, 1000));
        assert!(c.validate("fleet").is_ok());
        assert_eq!(c.fallback_limit(100), 33);
        assert_eq!(c.fallback_limit(1), 1);
        for (field, json) in [
            (
                "sync_ms",
                r#"{"cluster": "w", "expected_envoys": 3, "sync_ms": 50}"#,
            ),
            (
                "sync_ms",
                r#"{"cluster": "w", "expected_envoys": 3, "sync_ms": 600}"#,
            ),
            (
                "timeout_ms",
                r#"{"cluster": "w", "expected_envoys": 3, "timeout_ms": 300}"#,
            ),
            (
                "expected_envoys",
                r#"{"cluster": "w", "expected_envoys": 0}"#,
            ),
            (
                "max_keys",
                r#"{"cluster": "w", "expected_envoys": 1, "max_keys": 0}"#,
            ),
            ("cluster", r#"{"cluster": "", "expected_envoys": 1}"#),
        ] {
            let c: FleetConfig = serde_json::from_str(json).unwrap();
            let e = c.validate("fleet").unwrap_err();
            assert_eq!(e.path, format!("fleet.{field}"), "{json}");
        }
        assert!(serde_json::from_str::<FleetConfig>(r#"{"cluster": "w"}"#).is_err());
        assert!(valid_rule_name("per_blog-1"));
        assert!(!valid_rule_name("a:b") && !valid_rule_name("") && !valid_rule_name("a b"));
    }

    #[test]
    fn deltas_are_bounded_and_nothing_is_lost_on_a_failed_sync() {
        let mut d = Deltas::new(2);
        d.limit("per_blog", 1000, "a", true);
        d.limit("per_blog", 1000, "a", true);
        d.limit("per_blog", 1000, "b", false);
        d.limit("per_blog", 1000, "b", true);
        d.limit("per_blog", 1000, "c", true);
        d.hot("pv", 1000, 5, "a", 7);
        assert_eq!(d.dropped, 1);
        let body: serde_json::Value = serde_json::from_slice(&d.body("e1")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"e": "e1",
                "l": [{"r": "per_blog", "w": 1000, "n": 5, "k": [["a", 2], ["b", 1]]}],
                "h": [{"r": "pv", "w": 1000, "top": 5, "n": 0, "k": [["a", 7]]}]})
        );
        let sent = d.take();
        assert!(d.is_empty());
        d.limit("per_blog", 1000, "a", true);
        d.merge(sent);
        let body: serde_json::Value = serde_json::from_slice(&d.body("e1")).unwrap();
        assert_eq!(body["l"][0]["n"], 6);
        assert_eq!(body["l"][0]["k"], serde_json::json!([["a", 3], ["b", 1]]));
        assert_eq!(body["h"][0]["k"], serde_json::json!([["a", 7]]));
        assert_eq!(d.dropped, 1);
    }

    #[test]
    fn replies_decode_including_cjson_empty_tables_and_errors() {
        let ok = br#"{"EVALSHA":"{\"t\":17,\"h\":{},\"l\":[{\"win\":3,\"r\":\"per_blog\",\"left_ms\":684,\"all\":6,\"mine\":1,\"k\":[[\"b\\/1\",4]]}]}"}"#;
        let r = decode(200, ok).unwrap();
        assert_eq!(r.t, 17);
        assert!(r.h.is_empty());
        assert_eq!(r.l[0].k, vec![("b/1".to_string(), 4)]);
        assert!((r.l[0].share(3) - 1.0 / 6.0).abs() < 1e-9);
        let nos = br#"{"EVALSHA":[false,"NOSCRIPT No matching script. Please use EVAL."]}"#;
        assert_eq!(decode(200, nos), Err(SyncError::NoScript));
        let err = br#"{"EVALSHA":[false,"ERR boom"]}"#;
        assert_eq!(decode(200, err), Err(SyncError::Redis("ERR boom".into())));
        assert_eq!(decode(503, b""), Err(SyncError::Status(503)));
        assert!(matches!(decode(200, b"{}"), Err(SyncError::Malformed(_))));
        assert!(matches!(
            decode(200, br#"{"EVALSHA":"{\"t\":1,\"l\":{\"x\":1},\"h\":[]}"}"#),
            Err(SyncError::Malformed(_))
        ));
        let sha = "02c3e0697294451508be1f35100ff38b29805f44";
        let load = format!(r#"{{"SCRIPT":"{sha}"}}"#);
        assert_eq!(decode_load(200, load.as_bytes()).unwrap(), sha);
        assert!(decode_load(200, br#"{"SCRIPT":[false,"ERR x"]}"#).is_err());
        assert!(decode_load(503, b"").is_err());
    }

    #[test]
    fn allowance_splits_the_budget_left_by_share() {
        assert_eq!(allowance(100, 40, 0.5), 30);
        assert_eq!(allowance(100, 140, 0.5), 0);
        assert_eq!(allowance(100, 0, 1.0), 100);
        assert_eq!(allowance(100, 0, 7.0), 100);
        assert_eq!(allowance(100, 0, f64::NAN), 0);
        assert_eq!(allowance(u64::MAX, 0, 1.0), u64::MAX);
        assert!((overshoot_bound(3, 100.0, 250) - 75.0).abs() < 1e-9);
        let r = LimitReply {
            r: "x".into(),
            win: 0,
            left_ms: 0,
            mine: 0,
            all: 0,
            k: vec![],
        };
        assert!((r.share(4) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn an_envoy_new_to_the_fleet_does_not_get_a_zero_share() {
        // B's first report (60) after A's (40): before it, B had nothing of the fleet's 40;
        // it takes the even split, as A did on its first report.
        let r = LimitReply {
            r: "x".into(),
            win: 1,
            left_ms: 0,
            mine: 60,
            all: 100,
            k: vec![],
        };
        assert!((r.share_before(3, 60) - 1.0 / 3.0).abs() < 1e-9);
        // Known before: its own latest report is left out, as the others' latest are.
        let r = LimitReply { mine: 90, ..r };
        assert!((r.share_before(3, 30) - 60.0 / 70.0).abs() < 1e-9);
        // Nothing seen by anyone: an even split.
        let r = LimitReply {
            mine: 0,
            all: 0,
            ..r
        };
        assert!((r.share_before(4, 0) - 0.25).abs() < 1e-9);
    }

    #[test]
    fn hot_rates_slide_over_the_last_window() {
        let h = HotReply {
            r: "pv".into(),
            win: 5,
            left_ms: 250,
            cur: vec![("a".into(), 30.0), ("b".into(), 10.0)],
            prev: vec![("a".into(), 40.0), ("c".into(), 100.0)],
            ncur: 50.0,
            nprev: 200.0,
        };
        assert!((h.total_rps(1000) - 100.0).abs() < 1e-9, "50 + 200 / 4");
        let r = h.rates(1000);
        assert_eq!(r[0], ("a".to_string(), 40.0));
        assert_eq!(r[1], ("c".to_string(), 25.0));
        assert_eq!(r[2], ("b".to_string(), 10.0));
    }

    /// A reply for rule `x` naming one key.
    fn reply_of(win: u64, left_ms: u64, mine: u64, all: u64, key: &str, total: u64) -> LimitReply {
        LimitReply {
            r: "x".into(),
            win,
            left_ms,
            mine,
            all,
            k: vec![(key.into(), total)],
        }
    }

    #[test]
    fn a_fleet_limit_admits_its_share_then_what_the_fleet_left() {
        // 3 Envoys expected, 90 per 1 s window.
        let mut f = FleetLimit::new(90, 1000, 3, 10);
        let admitted = (0..50).filter(|_| f.decide(0, "b", true, 30)).count();
        assert_eq!(admitted, 30, "before any reply: limit x 1/3");
        f.sent();
        assert!(!f.decide(10, "b", true, 30));
        // The fleet admitted 60 of 90 this window; this Envoy saw half the traffic: 15 left.
        let reply = reply_of(7, 500, 50, 100, "b", 60);
        f.apply(20, &reply, 3);
        assert!((f.share() - 0.5).abs() < 1e-9);
        assert_eq!((0..50).filter(|_| f.decide(30, "b", true, 30)).count(), 15);
        // A new key this window: limit x share.
        assert_eq!((0..100).filter(|_| f.decide(30, "c", true, 30)).count(), 45);
        // The window ends at 20 + 500 on this clock: allowances start again.
        assert_eq!(
            (0..100).filter(|_| f.decide(520, "b", true, 30)).count(),
            45
        );
        // On the fallback: the fallback limit per key and window.
        assert_eq!(
            (0..100).filter(|_| f.decide(1600, "d", false, 30)).count(),
            30
        );
    }

    #[test]
    fn a_reply_does_not_hand_back_what_was_admitted_while_it_was_in_flight() {
        let mut f = FleetLimit::new(100, 1000, 1, 10);
        for _ in 0..10 {
            assert!(f.decide(0, "k", true, 100));
        }
        f.sent();
        for _ in 0..5 {
            assert!(f.decide(5, "k", true, 100));
        }
        // The reply counts the 10 sent (and 20 from elsewhere): 70 left, 5 of them spent.
        let reply = reply_of(0, 900, 1, 1, "k", 30);
        f.apply(10, &reply, 1);
        assert_eq!(
            (0..100).filter(|_| f.decide(11, "k", true, 100)).count(),
            65
        );
    }

    #[test]
    fn the_quota_holds_across_a_window_roll() {
        // 10 Envoys, this one 16% of the traffic: its quota is 160 of 1,000 per window.
        let mut f = FleetLimit::new(1000, 1000, 10, 100);
        let reply = |win, left_ms, total| reply_of(win, left_ms, 16, 100, "b", total);
        f.decide(4000, "b", true, 100);
        f.sent();
        f.apply(4025, &reply(4, 975, 500), 10);
        // The next window (Redis' edge at 5000): the quota, then a reply for the same window
        // that must not hand it out again.
        let first = (0..1000).filter(|_| f.decide(5000, "b", true, 100)).count();
        f.sent();
        f.apply(5025, &reply(5, 975, 300), 10);
        let then = (0..1000).filter(|_| f.decide(5030, "b", true, 100)).count();
        assert_eq!((first, then), (160, 0));
        // A late reply for window 4 changes nothing, not even the window's edge.
        f.apply(5040, &reply(4, 10, 0), 10);
        assert!(!f.decide(5999, "b", true, 100));
        assert!(f.decide(6000, "b", true, 100));
    }

    #[test]
    fn keys_beyond_the_cap_share_one_allowance() {
        let mut f = FleetLimit::new(4, 1000, 1, 2);
        assert!(f.decide(0, "a", true, 4));
        assert!(f.decide(0, "b", true, 4));
        let over = (0..10)
            .map(|i| format!("x{i}"))
            .filter(|k| f.decide(0, k, true, 4))
            .count();
        assert_eq!(over, 4);
        assert_eq!(f.overflowed, 10);
    }

    #[test]
    fn health_falls_back_once_and_recovers_by_itself() {
        let c = cfg();
        let mut h = Health::new(0);
        assert!(!h.synced());
        assert_eq!(h.failed(10), Change::None, "no alert before the first sync");
        assert_eq!(h.ok(250), Change::Joined);
        assert_eq!(h.ok(500), Change::None);
        assert_eq!(h.check(500 + 700, &c), Change::None);
        assert_eq!(
            h.check(500 + 701, &c),
            Change::FellBack,
            "a reply never came"
        );
        assert_eq!(h.failed(1300), Change::None, "alerted once");
        assert_eq!(h.check(5000, &c), Change::None);
        assert_eq!(h.ok(5250), Change::Recovered);
        assert_eq!(h.failed(5500), Change::FellBack);
        assert!(!h.synced());
    }

    #[test]
    fn the_load_body_is_percent_encoded() {
        let b = String::from_utf8(load_body()).unwrap();
        assert!(b.starts_with("SCRIPT/LOAD/--%20spikeguard"));
        assert!(!b[12..].contains('/') && !b.contains('+') && !b.contains(' '));
        assert_eq!(sync_path("ab"), "/EVALSHA/ab/0");
    }
}
