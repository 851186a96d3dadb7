//! `"scope": "fleet"` rules on the in-memory host: config checks, the lease holder's sync
//! calls (what it sends to webdis, what it does with each answer), and the decisions the
//! workers make from it. Redis' answers here are written as the script answers; the real
//! script, Redis and webdis are in `integration/tests/fleet.rs` and `tests/fleet.rs`.
#![allow(
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used
)] // test code

use sg_core::host::{Flow, Host, Plugin};
use sg_core::testing::MemHost;
use sg_ratelimit::config::{Compile, Config};
use sg_ratelimit::filter::{Filter, Stream};
use sg_ratelimit::fleet::Sync;

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn cfg(rule_extra: &str, fleet_extra: &str) -> String {
    format!(
        r#"{{"fleet": {{"cluster": "webdis", "expected_envoys": 3, "sync_ms": 200, "timeout_ms": 100{fleet_extra}}},
            "rules": [{{"name": "per_blog", "key": {{"query": "blogId"}}, "rate": "90r/s", "mode": "nodelay", "scope": "fleet"{rule_extra}}}]}}"#
    )
}

fn refused(json: &str) -> String {
    match Config::parse(json.as_bytes()) {
        Ok(_) => panic!("accepted: {json}"),
        Err(e) => e.path,
    }
}

#[test]
fn fleet_config_is_checked_field_by_field() {
    assert!(Config::parse(cfg("", "").as_bytes()).is_ok());
    assert_eq!(refused(&cfg(r#", "burst": 5"#, "")), "rules[0].burst");
    assert_eq!(
        refused(&cfg(r#", "lease": {"tokens": 4, "ms": 10}"#, "")),
        "rules[0].lease"
    );
    assert_eq!(
        refused(&cfg("", "").replace(r#""mode": "nodelay", "#, "")),
        "rules[0].mode",
        "the default mode (delay) cannot hold a fleet window"
    );
    assert_eq!(
        refused(&cfg("", r#", "sync_ms": 50"#).replace(r#""sync_ms": 200, "#, "")),
        "fleet.sync_ms"
    );
    assert_eq!(
        refused(
            &cfg("", r#", "timeout_ms": 900"#).replace(r#""timeout_ms": 100"#, r#""max_keys": 10"#)
        ),
        "fleet.timeout_ms"
    );
    let no_block = r#"{"rules": [{"name": "r", "key": "host", "rate": "1r/s", "mode": "nodelay", "scope": "fleet"}]}"#;
    assert_eq!(refused(no_block), "rules[0].scope");
    let no_rule = cfg("", "").replace(r#", "scope": "fleet""#, "");
    assert_eq!(refused(&no_rule), "fleet");
    assert_eq!(
        refused(&cfg("", "").replace(r#""scope": "fleet""#, r#""scope": "world""#)),
        "rules[0].scope"
    );
}

struct Envoy {
    h: MemHost,
    /// Two workers of one Envoy (one shared store); `a` ticks first and so holds the lease.
    a: Filter,
    b: Filter,
    sa: Sync,
    sb: Sync,
    next_id: u32,
}

impl Envoy {
    fn new(json: &str) -> Envoy {
        let h = MemHost::new();
        h.set_now(10_000);
        h.set_config(json);
        h.set_property(&["node", "id"], "pod-a");
        let (a, sa) = Filter::configure(&h).expect("config accepted");
        let (b, sb) = Filter::configure(&h).expect("config accepted");
        Envoy {
            h,
            a,
            b,
            sa,
            sb,
            next_id: 0,
        }
    }

    /// `n` requests for `blog`, alternating workers; how many were admitted.
    fn send(&mut self, blog: &str, n: u32) -> u32 {
        let mut ok = 0;
        for i in 0..n {
            self.next_id += 1;
            self.h.get("blog", &format!("/post?blogId={blog}"));
            let f = if i % 2 == 0 { &self.a } else { &self.b };
            let mut s = Stream::new(self.next_id);
            if f.on_request(&self.h, &mut s) == Flow::Continue {
                ok += 1;
            }
        }
        let _ = self.h.take_replies();
        ok
    }

    fn tick(&mut self) {
        self.a.on_tick(&self.h, &mut self.sa);
        self.b.on_tick(&self.h, &mut self.sb);
    }

    /// Ticks until the holder sends a call; returns it.
    fn next_call(&mut self) -> sg_core::testing::SentCall {
        for _ in 0..50 {
            self.tick();
            if let Some(c) = self.h.take_calls().into_iter().next() {
                return c;
            }
            self.h.advance(20);
        }
        panic!("no call");
    }

    fn answer(&mut self, token: u32, status: u16, body: &str) {
        self.h.answer_call(status, &[], body.as_bytes());
        self.a
            .on_call_response(&self.h, &mut self.sa, token, body.len());
    }

    fn metric(&self, what: &str) -> i64 {
        self.a.flush(&self.h);
        self.b.flush(&self.h);
        self.h.metric(&format!("sg.ratelimit.{what}")).unwrap_or(0)
    }

    /// Loads the script (first call) and answers it.
    fn load(&mut self) {
        let c = self.next_call();
        assert_eq!(c.header(":method"), Some("POST"));
        assert_eq!(c.header(":path"), Some("/"));
        assert!(c
            .body
            .as_deref()
            .is_some_and(|b| b.starts_with(b"SCRIPT/LOAD/")));
        self.answer(c.token, 200, &format!(r#"{{"SCRIPT":"{SHA}"}}"#));
    }
}

/// What the script answers for `per_blog`: window `win` with `left_ms` to go, traffic mine/all,
/// and the fleet totals per reported key.
fn reply(t: u64, win: u64, left_ms: u64, mine: u64, all: u64, keys: &[(String, u64)]) -> String {
    let k: Vec<serde_json::Value> = keys
        .iter()
        .map(|(k, n)| serde_json::json!([k, n]))
        .collect();
    let inner = serde_json::json!({
        "t": t,
        "l": [{"r": "per_blog", "win": win, "left_ms": left_ms, "mine": mine, "all": all, "k": k}],
        "h": {}
    });
    serde_json::json!({ "EVALSHA": inner.to_string() }).to_string()
}

/// The sync body's per-key admitted counts and seen count for `per_blog`.
fn body_of(c: &sg_core::testing::SentCall) -> (Vec<(String, u64)>, u64) {
    let (l, keys, seen) = c.sync_entry("l");
    assert_eq!(l["r"], "per_blog");
    assert_eq!(l["w"], 1000);
    assert!(l["n"].is_u64(), "{l}");
    (keys, seen)
}

#[test]
fn before_the_first_sync_each_envoy_admits_the_fallback_then_the_fleet_answer_decides() {
    let mut e = Envoy::new(&cfg("", ""));
    // Starting: limit / expected_envoys = 30 per key and window, across both workers.
    assert_eq!(e.send("hot", 50), 30);
    e.load();
    let c = e.next_call();
    assert_eq!(c.header(":method"), Some("PUT"));
    assert_eq!(
        c.header(":path"),
        Some(format!("/EVALSHA/{SHA}/0").as_str())
    );
    assert_eq!(c.cluster, "webdis");
    assert_eq!(c.timeout_ms, 100);
    let v: serde_json::Value = serde_json::from_slice(c.body.as_deref().unwrap()).unwrap();
    assert!(v["e"].as_str().unwrap().starts_with("pod-a-"), "{v}");
    let (keys, seen) = body_of(&c);
    assert_eq!(seen, 50, "every request seen, admitted or not");
    assert_eq!(keys.len(), 1);
    let (hot, admitted) = keys[0].clone();
    assert_eq!(admitted, 30);
    // Redis: the fleet admitted 80 of 90 for the key this window. This Envoy's traffic is
    // 100 of the fleet's 150, 50 of it in this report: before it, 50 of 100, a share of 0.5
    // (its own latest report is left out, as the others' latest are not in yet). Its
    // allowance: min(0.5 x (90 - 80), 0.5 x 90 - 30) = 5.
    let now = e.h.now_ms();
    e.answer(
        c.token,
        200,
        &reply(now, now / 1000, 600, 100, 150, &[(hot.clone(), 80)]),
    );
    assert_eq!(e.metric("fleet_sync_ok"), 1);
    assert_eq!(e.metric("fleet_synced"), 1);
    e.tick(); // the workers read the new state
    assert_eq!(e.send("hot", 20), 5);
    // Another key, not named by any answer yet: share x limit = 45.
    assert_eq!(e.send("other", 60), 45);
    // The next sync carries only what was admitted since the last one.
    let c = e.next_call();
    let (keys, seen) = body_of(&c);
    assert_eq!(seen, 80);
    let mut keys = keys;
    keys.sort_by_key(|(_, n)| *n);
    assert_eq!(keys.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [5, 45]);
    assert_eq!(e.metric("fleet_fallback"), 0, "no fallback: it joined");
}

#[test]
fn a_lost_engine_falls_back_once_and_recovers_by_itself_with_nothing_counted_lost() {
    let mut e = Envoy::new(&cfg("", ""));
    e.load();
    let c = e.next_call();
    let now = e.h.now_ms();
    e.answer(c.token, 200, &reply(now, now / 1000, 900, 0, 0, &[]));
    e.tick();
    // Synced, no traffic seen anywhere: the share is 1/3, so 30 for a new key.
    assert_eq!(e.send("k", 10), 10);
    // webdis answers 503 (Redis down).
    let c = e.next_call();
    let (keys, _) = body_of(&c);
    assert_eq!(keys[0].1, 10);
    e.answer(
        c.token,
        503,
        r#"{"EVALSHA":[false,"Cannot connect to Redis"]}"#,
    );
    assert_eq!(e.metric("fleet_sync_failed"), 1);
    assert_eq!(e.metric("fleet_fallback"), 1);
    assert_eq!(e.metric("fleet_synced"), 0);
    e.tick();
    // Fallback: 30 per key and window (10 already used this window).
    assert_eq!(e.send("k", 40), 20);
    // It keeps failing: counted, no second fallback.
    let c = e.next_call();
    let (keys, _) = body_of(&c);
    assert_eq!(
        keys[0].1, 30,
        "the failed sync's 10 are sent again with the 20 since"
    );
    e.answer(c.token, 503, "");
    assert_eq!(e.metric("fleet_sync_failed"), 2);
    assert_eq!(e.metric("fleet_fallback"), 1);
    // Redis back, but restarted empty: NOSCRIPT, reload, and the same deltas again.
    let c = e.next_call();
    e.answer(
        c.token,
        200,
        r#"{"EVALSHA":[false,"NOSCRIPT No matching script. Please use EVAL."]}"#,
    );
    e.load();
    let c = e.next_call();
    let (keys, _) = body_of(&c);
    assert_eq!(keys[0].1, 30, "nothing counted is lost");
    let now = e.h.now_ms();
    e.answer(
        c.token,
        200,
        &reply(now, now / 1000, 500, 40, 40, &[(keys[0].0.clone(), 30)]),
    );
    assert_eq!(e.metric("fleet_recovered"), 1);
    assert_eq!(e.metric("fleet_synced"), 1);
}

#[test]
fn answers_that_stop_coming_send_the_workers_to_the_fallback() {
    let mut e = Envoy::new(&cfg("", ""));
    e.load();
    let c = e.next_call();
    let now = e.h.now_ms();
    // This Envoy has all of the fleet's traffic: share 1, so 90 for a new key.
    e.answer(c.token, 200, &reply(now, now / 1000, 900, 10, 10, &[]));
    e.tick();
    assert_eq!(e.send("k", 100), 90);
    // The next call is never answered (webdis hung, Envoy's timeout lost): after
    // timeout + sync it is forgotten and counted; no answer for 2 x sync + timeout falls back.
    let _ = e.next_call();
    for _ in 0..40 {
        e.h.advance(20);
        e.tick();
        let _ = e.h.take_calls();
    }
    assert_eq!(e.metric("fleet_fallback"), 1);
    assert!(e.metric("fleet_sync_failed") >= 1);
    // A new window on the fallback: 30.
    e.h.set_now((e.h.now_ms() / 1000 + 1) * 1000);
    e.tick();
    let _ = e.h.take_calls();
    assert_eq!(e.send("k", 100), 30);
}

#[test]
fn a_dry_run_fleet_rule_counts_what_it_would_reject_and_lets_it_through() {
    let mut e = Envoy::new(&cfg(r#", "dry_run": true"#, ""));
    assert_eq!(e.send("k", 40), 40);
    e.tick();
    assert_eq!(e.metric("per_blog.allowed"), 30);
    assert_eq!(e.metric("per_blog.dry_run_rejected"), 10);
}

#[test]
fn a_rejected_request_gets_retry_after_to_the_window_end() {
    let mut e = Envoy::new(&cfg("", ""));
    e.h.set_now(10_250);
    assert_eq!(e.send("k", 30), 30);
    e.h.get("blog", "/post?blogId=k");
    let mut s = Stream::new(999);
    assert_eq!(e.a.on_request(&e.h, &mut s), Flow::Pause);
    let r = e.h.take_replies();
    assert_eq!(r[0].status, 429);
    assert_eq!(r[0].header("retry-after"), Some("1"));
}
