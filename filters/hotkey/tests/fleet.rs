//! `"scope": "fleet"` hot-key rules on the in-memory host: config checks, what the leader
//! reports (complete tick buckets, once each), what it does with the fleet's answer (a key
//! hot across the fleet is shed here although this Envoy sees a third of the threshold), and
//! the fallback to local detection. Redis' answers are written as the script answers; the
//! real script, Redis, webdis and three Envoys are in `tests/fleet.rs`.
#![allow(
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used
)] // test code

use sg_core::host::{Flow, Host, Plugin};
use sg_core::testing::{MemHost, SentCall};
use sg_core::tick::Periodic;
use sg_hotkey::config::{Compile, Config};
use sg_hotkey::filter::{Filter, Leader};

const TICK: u64 = 100;
const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn cfg(rule_extra: &str, top_extra: &str) -> String {
    format!(
        r#"{{"tick_ms": {TICK}, {top_extra} "fleet": {{"cluster": "webdis", "expected_envoys": 3, "sync_ms": 200, "timeout_ms": 100}},
        "rules": [{{"name": "post", "match": {{"path_prefix": "/PostView"}}, "key": {{"query": "blogId"}},
        "window_ms": 1000, "threshold_rps": 100, "cooldown_ms": 500, "scope": "fleet"{rule_extra},
        "action": {{"reject": {{}}}}}}]}}"#
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
    let no_block = r#"{"rules": [{"name": "post", "key": {"query": "b"}, "threshold_rps": 5,
        "scope": "fleet", "action": "observe"}]}"#;
    assert_eq!(refused(no_block), "rules[0].scope");
    let no_rule = r#"{"fleet": {"cluster": "webdis", "expected_envoys": 3},
        "rules": [{"name": "post", "key": {"query": "b"}, "threshold_rps": 5, "action": "observe"}]}"#;
    assert_eq!(refused(no_rule), "fleet");
    assert_eq!(
        refused(&cfg("", "").replace("\"name\": \"post\"", "\"name\": \"po st\"")),
        "rules[0].name"
    );
    assert_eq!(
        refused(&cfg(r#", "fleet_top": 0"#, "")),
        "rules[0].fleet_top"
    );
    assert_eq!(
        refused(&cfg(r#", "fleet_top": 101"#, "")),
        "rules[0].fleet_top"
    );
    assert_eq!(
        refused(&cfg("", "").replace("\"sync_ms\": 200", "\"sync_ms\": 600")),
        "fleet.sync_ms"
    );
    // One tick of 300 ms is longer than a 200 ms sync period.
    let slow_tick = cfg("", "")
        .replace("\"tick_ms\": 100", "\"tick_ms\": 300")
        .replace("\"window_ms\": 1000", "\"window_ms\": 900");
    assert_eq!(refused(&slow_tick), "fleet.sync_ms");
}

/// One Envoy: two workers sharing a store; the first ticks first and leads.
struct Envoy {
    h: MemHost,
    w: Vec<(Filter, Periodic<Leader>)>,
}

impl Envoy {
    fn new(json: &str) -> Envoy {
        let h = MemHost::new();
        h.set_now(10_000);
        h.set_config(json);
        h.set_property(&["node", "id"], "pod-a");
        let w = (0..2)
            .map(|_| Filter::configure(&h).expect("config accepted"))
            .collect();
        Envoy { h, w }
    }

    /// `n` requests of `blog` over the workers; how many were shed.
    fn send(&mut self, blog: &str, n: u32) -> u32 {
        let mut shed = 0;
        for i in 0..n {
            self.h
                .get("blog", &format!("/PostView?blogId={blog}&logNo=1"));
            let (f, _) = &self.w[i as usize % 2];
            if f.on_request(&self.h, &mut ()) == Flow::Pause {
                shed += 1;
            }
        }
        let _ = self.h.take_replies();
        shed
    }

    fn tick(&mut self) {
        self.h.advance(TICK);
        for (f, p) in self.w.iter_mut() {
            f.on_tick(&self.h, p);
        }
    }

    /// `per_tick` requests of `blog` then a tick, until the leader sends a call.
    fn next_call(&mut self, blog: &str, per_tick: u32) -> SentCall {
        for _ in 0..20 {
            self.send(blog, per_tick);
            self.tick();
            if let Some(c) = self.h.take_calls().into_iter().next() {
                return c;
            }
        }
        panic!("no call");
    }

    fn answer(&mut self, token: u32, status: u16, body: &str) {
        self.h.answer_call(status, &[], body.as_bytes());
        let (f, p) = &mut self.w[0];
        f.on_call_response(&self.h, p, token, body.len());
    }

    fn metric(&self, what: &str) -> i64 {
        for (f, _) in &self.w {
            f.flush(&self.h);
        }
        self.h.metric(&format!("sg.hotkey.{what}")).unwrap_or(0)
    }

    fn load(&mut self) {
        let c = self.next_call("cold", 0);
        assert_eq!(c.header(":path"), Some("/"));
        assert!(c
            .body
            .as_deref()
            .is_some_and(|b| b.starts_with(b"SCRIPT/LOAD/")));
        self.answer(c.token, 200, &format!(r#"{{"SCRIPT":"{SHA}"}}"#));
    }
}

/// The script's answer for rule `post`: the fleet's counts this window (`left_ms` to go) and
/// the last, and the rule's totals.
fn reply(t: u64, left_ms: u64, cur: &[(&str, u64)], prev: &[(&str, u64)], n: (u64, u64)) -> String {
    let pairs = |v: &[(&str, u64)]| -> Vec<serde_json::Value> {
        v.iter().map(|(k, n)| serde_json::json!([k, n])).collect()
    };
    let inner = serde_json::json!({
        "t": t, "l": {},
        "h": [{"r": "post", "win": t / 1000, "left_ms": left_ms, "cur": pairs(cur),
               "prev": pairs(prev), "ncur": n.0, "nprev": n.1}]
    });
    serde_json::json!({ "EVALSHA": inner.to_string() }).to_string()
}

/// The report's hot part for `post`: (per-key counts, the rule's total).
fn report(c: &SentCall) -> (Vec<(String, u64)>, u64) {
    assert_eq!(
        c.header(":path"),
        Some(format!("/EVALSHA/{SHA}/0").as_str())
    );
    let (h, keys, total) = c.sync_entry("h");
    assert_eq!(h["r"], "post");
    assert_eq!(h["w"], 1000);
    assert_eq!(h["top"], 10);
    assert!(h["n"].is_u64(), "{h}");
    (keys, total)
}

#[test]
fn each_complete_bucket_is_reported_once_and_a_fleet_hot_key_is_shed_here() {
    let mut e = Envoy::new(&cfg("", ""));
    e.load();
    // 4 requests per 100 ms tick: 40 r/s here, under the 100 r/s threshold.
    let mut reported = 0;
    let mut total = 0;
    let mut last = None;
    for _ in 0..4 {
        let c = e.next_call("hot", 4);
        let (keys, n) = report(&c);
        reported += keys
            .iter()
            .filter(|(k, _)| k == "hot")
            .map(|(_, n)| n)
            .sum::<u64>();
        total += n;
        let now = e.h.now_ms();
        e.answer(c.token, 200, &reply(now, 500, &[("hot", 20)], &[], (20, 0)));
        last = Some(now);
    }
    assert!(last.is_some());
    // Every request counted in a complete bucket was reported, none twice: at most the
    // requests of the bucket still open (and the one being merged) are not in yet.
    assert_eq!(reported, total, "only one key");
    let sent = e.metric("post.seen") as u64;
    assert!(
        sent >= reported && sent - reported <= 8,
        "sent {sent}, reported {reported}"
    );
    assert_eq!(e.metric("fleet_sync_ok"), 4);
    assert_eq!(e.metric("detections"), 0, "40 r/s here, 20 in the fleet");
    // The fleet: 90 requests of "hot" this window with 400 ms to go, 100 in the last:
    // 90 + 100 x 0.4 = 130 r/s, over the threshold, although this Envoy sees 40.
    let c = e.next_call("hot", 4);
    let now = e.h.now_ms();
    e.answer(
        c.token,
        200,
        &reply(now, 400, &[("hot", 90)], &[("hot", 100)], (95, 110)),
    );
    e.tick();
    e.tick();
    assert_eq!(e.metric("detections"), 1);
    assert!(e.send("hot", 4) > 0, "shed here");
    assert_eq!(e.send("cold", 4), 0, "a cold key is never shed");
    assert_eq!(e.metric("fleet_fallback"), 0);
}

#[test]
fn without_the_engine_it_detects_locally_and_a_failed_report_is_not_sent_twice() {
    let mut e = Envoy::new(&cfg("", ""));
    e.load();
    let c = e.next_call("hot", 4);
    let now = e.h.now_ms();
    e.answer(
        c.token,
        200,
        &reply(now, 400, &[("hot", 90)], &[("hot", 100)], (95, 110)),
    );
    e.tick();
    e.tick();
    assert_eq!(e.metric("detections"), 1, "hot across the fleet");
    assert_eq!(e.metric("fleet_synced"), 1);
    // webdis answers 503 (Redis down): one fallback, local detection from then on.
    let c = e.next_call("hot", 4);
    let (keys, _) = report(&c);
    let failed: u64 = keys.iter().map(|(_, n)| n).sum();
    assert!(failed > 0);
    e.answer(c.token, 503, "");
    assert_eq!(e.metric("fleet_fallback"), 1);
    assert_eq!(e.metric("fleet_synced"), 0);
    // The next report holds only what came after: the failed counts are of a past window.
    let c = e.next_call("hot", 4);
    let (keys, _) = report(&c);
    let next: u64 = keys.iter().map(|(_, n)| n).sum();
    assert!(
        next <= 12,
        "{next}: at most the new buckets, not {failed} again"
    );
    e.answer(c.token, 503, "");
    assert_eq!(e.metric("fleet_fallback"), 1, "one fallback per outage");
    // 40 r/s here: the key cools down (500 ms below the exit level) and is served again.
    for _ in 0..10 {
        e.send("hot", 4);
        e.tick();
        let _ = e.h.take_calls();
    }
    assert_eq!(e.send("hot", 4), 0, "locally the key is not hot");
    // 200 r/s here is hot locally even without the engine.
    for _ in 0..8 {
        e.send("hot", 20);
        e.tick();
        let _ = e.h.take_calls();
    }
    assert_eq!(e.metric("detections"), 2, "local detection in the fallback");
    assert!(e.send("hot", 4) > 0);
    // The engine is back: recovered, counted once.
    let c = e.next_call("hot", 4);
    let now = e.h.now_ms();
    e.answer(c.token, 200, &reply(now, 400, &[("hot", 90)], &[], (95, 0)));
    assert_eq!(e.metric("fleet_recovered"), 1);
    assert_eq!(e.metric("fleet_synced"), 1);
}

#[test]
fn a_local_rule_beside_a_fleet_rule_is_never_reported() {
    let json = cfg("", "").replace(
        "\"rules\": [",
        r#""rules": [{"name": "local", "key": {"query": "blogId"}, "threshold_rps": 100, "action": "observe"},"#,
    );
    let mut e = Envoy::new(&json);
    e.load();
    let c = e.next_call("hot", 4);
    let v: serde_json::Value = serde_json::from_slice(c.body.as_deref().unwrap()).unwrap();
    let rules: Vec<&str> = v["h"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["r"].as_str().unwrap())
        .collect();
    assert_eq!(rules, ["post"]);
    assert_eq!(v["l"].as_array().map_or(0, Vec::len), 0);
    let _ = e.h.now_ms();
}
