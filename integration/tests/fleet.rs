//! The fleet sync's wire format and Lua script against a real Redis 7.0 behind a real webdis
//! ([11/11]): three Envoys' sync loops (`sg_integration::fleet::SimEnvoy`, the filters' pure
//! fleet code) sharing one fleet limit and one hot-key view, Redis killed and restarted,
//! webdis hanging. No timing is asserted: each step waits on what it needs (a fleet window
//! with room left), and every outcome is a count.

use serde_json::json;
use sg_core::fleet::{Change, FleetConfig, Mode, SyncError};
use sg_integration::fleet::SimEnvoy;
use sg_integration::redis::{Redis, Webdis};
use std::time::Duration;

const WINDOW_MS: u64 = 10_000;

fn cfg(timeout_ms: u64) -> FleetConfig {
    let c: FleetConfig = serde_json::from_value(json!({"cluster": "webdis", "expected_envoys": 3,
        "sync_ms": 250, "timeout_ms": timeout_ms}))
    .unwrap();
    c.validate("fleet").unwrap();
    c
}

fn fleet(webdis: u16, limit: u64) -> Vec<SimEnvoy> {
    ["envoy-a", "envoy-b", "envoy-c"]
        .iter()
        .map(|id| {
            let mut e = SimEnvoy::new(id, webdis, cfg(200), limit, WINDOW_MS);
            e.hot_window_ms = WINDOW_MS;
            e
        })
        .collect()
}

/// Syncs every Envoy until each is synced in one fleet window with at least half of it left
/// (a window edge between the steps of a check would split its counts; waiting for a fresh
/// window is a condition, not a delay the test depends on).
fn join_in_a_fresh_window(envoys: &mut [SimEnvoy]) {
    for _ in 0..4 {
        let mut wins = Vec::new();
        let mut least_left = u64::MAX;
        for e in envoys.iter_mut() {
            e.sync();
            assert!(e.health.synced(), "{}: {:?}", e.id, e.last_error);
            let (win, left) = probe(e);
            wins.push(win);
            least_left = least_left.min(left);
        }
        if wins.windows(2).all(|w| w[0] == w[1]) && least_left >= WINDOW_MS / 2 {
            return;
        }
        std::thread::sleep(Duration::from_millis(least_left.min(WINDOW_MS) + 50));
    }
    panic!("no fleet window with half of it left in four tries");
}

/// The fleet window and ms left in it, from a sync with nothing to report but the rule.
fn probe(e: &mut SimEnvoy) -> (u64, u64) {
    let body = json!({"e": "probe", "l": [{"r": "probe", "w": WINDOW_MS, "n": 0, "k": []}]});
    let sha = load(e.webdis);
    let reply = evalsha(e.webdis, &sha, &body);
    (reply.l[0].win, reply.l[0].left_ms)
}

/// One sync call with `body` as it is, decoded.
fn evalsha(webdis: u16, sha: &str, body: &serde_json::Value) -> sg_core::fleet::Reply {
    let path = sg_core::fleet::sync_path(sha);
    let r = call(webdis, "PUT", &path, body.to_string().as_bytes());
    sg_core::fleet::decode(u32::from(r.status), r.body.as_bytes()).unwrap()
}

/// Redis' key names matching `pattern`, through webdis.
fn fleet_keys(webdis: u16, pattern: &str) -> String {
    sg_integration::http::get(webdis, &format!("/KEYS/{pattern}"))
        .unwrap()
        .body
}

/// Syncs until the health changes (at most 20 tries, 100 ms apart); the change.
fn sync_until_change(e: &mut SimEnvoy) -> Change {
    for _ in 0..20 {
        let change = e.sync();
        if change != Change::None {
            return change;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Change::None
}

fn load(webdis: u16) -> String {
    let r = call(webdis, "POST", "/", &sg_core::fleet::load_body());
    sg_core::fleet::decode_load(u32::from(r.status), r.body.as_bytes()).unwrap()
}

/// One call to webdis as the filter makes it (no `connection: close`).
fn call(webdis: u16, method: &str, path: &str, body: &[u8]) -> sg_integration::http::Response {
    sg_integration::http::request_within(webdis, method, path, &[], body, Duration::from_secs(10))
        .unwrap()
}

fn offer(e: &mut SimEnvoy, key: &str, n: usize) -> usize {
    (0..n).filter(|_| e.request(key)).count()
}

#[test]
fn the_script_loads_through_webdis_and_evalsha_before_load_is_noscript() {
    let redis = Redis::start().unwrap();
    let webdis = Webdis::start(redis.port).unwrap();
    let r = sg_integration::http::request(
        webdis.port,
        "PUT",
        "/EVALSHA/0000000000000000000000000000000000000000/0",
        &[],
        b"{}",
    )
    .unwrap();
    assert_eq!(
        sg_core::fleet::decode(u32::from(r.status), r.body.as_bytes()),
        Err(SyncError::NoScript)
    );
    let sha = load(webdis.port);
    assert_eq!(sha, load(webdis.port), "the same script, the same sha");
    // Keys with `/`, `%`, spaces and non-ASCII go through the body untouched.
    let mut e = SimEnvoy::new("e", webdis.port, cfg(200), 100, WINDOW_MS);
    assert_eq!(e.sync(), Change::Joined);
    for k in ["a/b", "100%", "x y", "blög"] {
        assert!(e.request(k));
    }
    assert_eq!(e.sync(), Change::None);
    assert!(e.health.synced());
    let stored = fleet_keys(webdis.port, "sg:fleet:*");
    assert!(stored.contains("sg:fleet:l:per_blog:"), "{stored}");
}

#[test]
fn three_envoys_share_one_fleet_limit_where_local_limits_admit_three_times_it() {
    let redis = Redis::start().unwrap();
    let webdis = Webdis::start(redis.port).unwrap();
    let limit = 90;

    // Local only: each Envoy applies the whole limit on its own (what `scope: local` does).
    let local: usize = fleet(webdis.port, limit)
        .iter_mut()
        .map(|_| {
            let mut l = sg_core::fleet::FleetLimit::new(limit, WINDOW_MS, 1, 100);
            (0..200)
                .filter(|_| l.decide(0, "hot-blog", false, limit))
                .count()
        })
        .sum();
    assert_eq!(local, 3 * limit as usize);

    // Fleet: each starts with its third (no sync has named the key), reports it, and reads
    // back what the fleet left. Skewed traffic: a gets twice b's and c's.
    let mut f = fleet(webdis.port, limit);
    join_in_a_fresh_window(&mut f);
    let mut admitted = 0;
    for (e, n) in f.iter_mut().zip([60, 30, 30]) {
        admitted += offer(e, "hot-blog", n);
    }
    assert_eq!(
        admitted, 90,
        "30 each: limit x 1/3 before any total is known"
    );
    // One round of syncs: each learns the totals of those that synced before it, so the
    // first to sync (it saw 60 of the 60 requests reported so far) may admit more: the
    // overshoot the sync period allows.
    for e in f.iter_mut() {
        assert_eq!(e.sync(), Change::None);
    }
    let overshoot: usize = f.iter_mut().map(|e| offer(e, "hot-blog", 50)).sum();
    // A second round: every Envoy has every total; the fleet's budget is spent.
    for e in f.iter_mut() {
        assert_eq!(e.sync(), Change::None);
    }
    let more: usize = f.iter_mut().map(|e| offer(e, "hot-blog", 50)).sum();
    assert_eq!(more, 0, "after a full round the budget is spent");
    // The bound: within one sync period each Envoy admits at most its allowance on totals
    // that miss the others' (here: at most the limit itself once more).
    assert!(
        overshoot as u64 <= limit,
        "overshoot {overshoot} over the limit {limit}"
    );
    // Another key, after two rounds with no request between them: every Envoy has the same
    // totals, so the shares add up to one; a's (twice the traffic) is the largest.
    for _ in 0..2 {
        for e in f.iter_mut() {
            e.sync();
        }
    }
    let shares: Vec<f64> = f.iter().map(|e| e.limit.share()).collect();
    assert!(
        shares[0] > shares[1] && shares[0] > shares[2],
        "shares {shares:?}"
    );
    let sum: f64 = shares.iter().sum();
    assert!((sum - 1.0).abs() < 1e-9, "shares {shares:?}");
    let other: usize = f.iter_mut().map(|e| offer(e, "blog-2", 100)).sum();
    assert!(other as u64 <= limit, "{other} admitted of {limit}");
    eprintln!(
        "fleet limit {limit}: local-only {local}, fleet {admitted} + {overshoot} before a full \
         round of syncs, shares {shares:?}, a new key {other}"
    );
}

#[test]
fn a_key_hot_across_the_fleet_is_seen_by_every_envoy() {
    let redis = Redis::start().unwrap();
    let webdis = Webdis::start(redis.port).unwrap();
    let mut f = fleet(webdis.port, 100);
    join_in_a_fresh_window(&mut f);
    // Each Envoy sees 20 requests of `hot` in the window (a third of a threshold of 60) and
    // its own cold keys.
    for (i, e) in f.iter_mut().enumerate() {
        e.seen("hot", 20);
        e.seen(&format!("cold-{i}"), 5);
    }
    for e in f.iter_mut() {
        e.sync();
    }
    // The last sync of each has the others' counts only if it came after them: one more.
    for e in f.iter_mut() {
        e.sync();
        let (k, rate) = e.hot_rates.first().cloned().unwrap();
        assert_eq!(k, "hot", "{}: {:?}", e.id, e.hot_rates);
        let count = rate * WINDOW_MS as f64 / 1000.0;
        assert!(
            (count - 60.0).abs() < 1e-6,
            "{}: {count} requests of hot",
            e.id
        );
        assert_eq!(e.hot_rates.len(), 4, "{:?}", e.hot_rates);
    }
}

#[test]
fn redis_killed_falls_back_at_the_next_sync_and_recovers_after_restart() {
    let mut redis = Redis::start().unwrap();
    let webdis = Webdis::start(redis.port).unwrap();
    let mut e = SimEnvoy::new("e", webdis.port, cfg(200), 90, WINDOW_MS);
    assert_eq!(e.sync(), Change::Joined);
    assert!(e.request("k"));
    redis.kill();
    assert_eq!(e.sync(), Change::FellBack, "{:?}", e.last_error);
    assert_eq!(e.health.mode, Mode::Fallback);
    // Falling back again is not another alert.
    assert_eq!(e.sync(), Change::None);
    // The fallback limit: 90 / 3 per key and window, decided without Redis.
    assert_eq!(offer(&mut e, "fresh", 100), 30);
    redis.restart().unwrap();
    // Redis came back empty: NOSCRIPT, the script loaded again, the deltas held while it was
    // away delivered.
    let change = sync_until_change(&mut e);
    assert_eq!(change, Change::Recovered, "{:?}", e.last_error);
    let held = fleet_keys(webdis.port, "sg:fleet:l:per_blog:*");
    assert!(held.contains("sg:fleet:l:per_blog:"), "{held}");
}

#[test]
fn webdis_hanging_times_the_sync_out_and_requests_are_still_decided() {
    let redis = Redis::start().unwrap();
    let webdis = Webdis::start(redis.port).unwrap();
    let mut e = SimEnvoy::new("e", webdis.port, cfg(100), 90, WINDOW_MS);
    assert_eq!(e.sync(), Change::Joined);
    webdis.hang();
    assert_eq!(e.sync(), Change::FellBack);
    assert_eq!(e.last_error, Some(SyncError::Timeout));
    // Decisions need no call: the fallback's 30.
    assert_eq!(offer(&mut e, "k", 100), 30);
    webdis.resume();
    let change = sync_until_change(&mut e);
    assert_eq!(change, Change::Recovered, "{:?}", e.last_error);
    drop(redis);
}

#[test]
fn the_in_memory_engine_answers_what_the_script_in_redis_answers() {
    // The simulation's engine is only as good as its likeness to the script: the same calls,
    // run at the time Redis ran them, give the same replies.
    let redis = Redis::start().unwrap();
    let webdis = Webdis::start(redis.port).unwrap();
    let sha = load(webdis.port);
    let mut mem = sg_integration::fleetsim::MemEngine::default();
    let bodies = [
        json!({"e": "a", "l": [{"r": "per_blog", "w": 1000, "n": 5, "k": [["x", 3], ["y/z", 2]]}],
            "h": [{"r": "pv", "w": 1000, "top": 2, "n": 30, "k": [["x", 9], ["q", 9], ["w", 1]]}]}),
        json!({"e": "b", "l": [{"r": "per_blog", "w": 1000, "n": 7, "k": [["x", 4]]}],
            "h": [{"r": "pv", "w": 1000, "top": 2, "k": []}]}),
        json!({"e": "a", "l": [{"r": "per_blog", "w": 1000, "n": 0, "k": []}], "h": []}),
        json!({"e": "c", "l": [], "h": [{"r": "pv", "w": 1000, "top": 5, "k": [["x", 1]]}]}),
    ];
    for round in 0..3 {
        for b in &bodies {
            let real = evalsha(webdis.port, &sha, b);
            let sim = mem.eval(real.t, b.to_string().as_bytes()).unwrap();
            let sim = sg_core::fleet::decode(200, json!({"EVALSHA": sim}).to_string().as_bytes())
                .unwrap();
            assert_eq!(sim, real, "round {round}, body {b}");
        }
        // The next window, where `prev` is read.
        std::thread::sleep(Duration::from_millis(400));
    }
}

#[test]
fn simulation_of_ten_envoys_stays_within_the_bound_and_detects_what_local_cannot() {
    // Virtual time: the same figures on any machine.
    let mut c = sg_integration::fleetsim::SimConfig::new(10);
    c.seconds = 6;
    let r = sg_integration::fleetsim::run(&c);
    eprintln!(
        "{}\n{}",
        sg_integration::fleetsim::HEADER,
        sg_integration::fleetsim::row(&r)
    );
    assert!(r.synced_max as f64 <= c.limit as f64 + r.bound, "{r:?}");
    assert!(
        r.synced_mean >= 0.9 * c.limit as f64,
        "the budget is used: {r:?}"
    );
    assert!(
        r.whole_max >= 5 * c.limit,
        "local limits admit several times it: {r:?}"
    );
    assert_eq!(
        r.detected_local, 0,
        "a third of the threshold on each: {r:?}"
    );
    assert_eq!(r.detected_synced, 10, "{r:?}");
    assert!(
        r.detect_max_ms.unwrap_or(u64::MAX) <= 1000 + c.sync_ms,
        "{r:?}"
    );
}
