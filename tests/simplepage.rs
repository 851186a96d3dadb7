//! End-to-end tests of the `simplepage` filter in a real Envoy (1.40, V8, two workers), with
//! `hotkey` where the trigger comes from it. The simple-page backend and the main app are
//! separate processes with their own counters, so "served by the simple page" is counted
//! where it happened, not inferred from a header.
#![allow(clippy::panic, clippy::indexing_slicing)]

use serde_json::{json, Value};
use sg_e2e::http;
use sg_e2e::loadgen::{self, KeyMix, LoadConfig, Report};
use sg_e2e::upstream::AdminConfig;
use sg_e2e::wait::{eventually, until};
use sg_e2e::{first_diverted, load_pages as load, Stack};
use std::time::{Duration, Instant};

const STATS: Duration = Duration::from_secs(5);
const HDR: &str = "x-spikeguard-simple-page";

fn sp(rules: Value, extra: Value) -> Value {
    let mut c = json!({"tick_ms": 100, "rules": rules});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn one_key(key: &str) -> KeyMix {
    KeyMix {
        hot: vec![(key.to_string(), 1.0)],
        ..KeyMix::default()
    }
}

/// Requests for a blog key the simple-page backend received.
/// 2.5 s of pages at `rps`, half of them for blog `hot`, the rest over 1,000 Zipf-ranked cold
/// blogs; every answer a 200.
fn hot_half(url: &str, rps: f64) -> Report {
    let r = load(
        url,
        rps,
        2500,
        KeyMix {
            hot: vec![("hot".into(), 0.5)],
            zipf_n: 1000,
            key_prefix: "cold".into(),
            ..KeyMix::default()
        },
    );
    assert_eq!(
        r.by_status.get(&200).copied(),
        Some(r.sent),
        "{:?}",
        r.by_status
    );
    r
}

fn simple_count(s: &Stack, key: &str) -> u64 {
    s.simple.stats().by_key.get(key).copied().unwrap_or(0)
}
fn app_count(s: &Stack, key: &str) -> u64 {
    s.app.stats().by_key.get(key).copied().unwrap_or(0)
}

/// Waits until `n` requests in a row for `path`, each on a fresh connection (so spread over
/// both workers), have the simple-page tag `want`: every worker has picked up a change.
fn until_tagged(s: &Stack, path: &str, want: Option<&str>, n: usize) {
    let mut streak = 0;
    let what = format!("{n} answers in a row for {path} tagged {want:?}");
    eventually(&what, STATS, || {
        let r = s.get(path);
        if r.header(HDR) != want {
            streak = 0;
            return Err(r.header(HDR).map(str::to_string));
        }
        streak += 1;
        if streak >= n {
            Ok(())
        } else {
            Err(r.header(HDR).map(str::to_string))
        }
    });
}

#[test]
fn a_hot_key_from_hotkey_goes_to_the_simple_page_others_and_posts_to_the_app() {
    let hk = json!({"tick_ms": 100, "rules": [{"name": "post_view", "key": {"query": "blogId"},
        "window_ms": 1000, "threshold_rps": 50, "cooldown_ms": 5000, "action": {"divert": {}}}]});
    let rules = json!([{"name": "post_view", "match": {"path_prefix": "/PostView"},
        "key": {"query": "blogId"}, "triggers": {"hotkey": "post_view"},
        "exclude_cookies": ["SESSION"]}]);
    let cfg = sp(
        rules,
        json!({"inbound_alert_ms": 1000,
               "alert": {"webhook_cluster": "spikeguard_control", "webhook_path": "/hook"}}),
    );
    let s = Stack::start(&[("hotkey", hk), ("simplepage", cfg)], 2);
    // Nothing diverted yet: no "simple page inbound" alert. Once a worker leads the periodic
    // work, a whole alert period (1 s) passes with nothing diverted. Not synchronisation: the
    // passing of a period with nothing diverted is what is checked, and the check can only
    // miss an alert (never see one that did not happen) if the period ran late.
    s.envoy.wait_log("simplepage: this VM (id", STATS);
    std::thread::sleep(Duration::from_millis(1300));
    assert!(!s.envoy.log().contains("simple page inbound"));
    let url = s.envoy.url();
    let r = hot_half(&url, 400.0);
    let simple = s.simple.stats();
    let app = s.app.stats();
    let hot_simple = simple_count(&s, "hot");
    let tagged = r
        .records
        .iter()
        .filter(|x| x.headers.iter().any(|(k, v)| k == HDR && v == "hotkey"))
        .count() as u64;
    eprintln!(
        "hotkey divert: hot served by simple page {hot_simple}, by app {}; cold keys on simple page {}; tagged responses {tagged}",
        app_count(&s, "hot"),
        simple.total - hot_simple
    );
    // Tagged as a simple page (hotkey) or not, by send time, for the hot key. Diverted within
    // a second (one window) of the spike, and from two ticks after the first diverted request
    // on, every hot request.
    let (hot, first) = first_diverted(
        &r,
        "hot",
        |x| x.headers.iter().any(|(k, v)| k == HDR && v == "hotkey"),
        &simple,
    );
    assert!(
        hot.iter().filter(|h| h.0 > first + 200_000).all(|h| h.1),
        "a hot request reached the app once hot"
    );
    assert_eq!(
        simple.total, hot_simple,
        "a cold key reached the simple page: {simple:?}"
    );
    assert_eq!(
        tagged, hot_simple,
        "every simple page is tagged, nothing else"
    );
    assert!(app.by_key.len() > 100, "cold keys served by the app");
    assert!(
        s.envoy.wait_stat(
            "wasmcustom.sg.simplepage.post_view.diverted_hotkey",
            STATS,
            |v| v as u64 == hot_simple
        ) as u64
            == hot_simple
    );

    // A client cannot divert itself: the bundle drops spikeguard's internal headers first.
    let forged = http::request(
        s.port(),
        "GET",
        "/PostView?blogId=cold7&logNo=1",
        &[("x-spikeguard-divert", b"hotkey")],
        b"",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((forged.status, forged.header(HDR)), (200, None));
    assert_eq!(
        simple_count(&s, "cold7"),
        0,
        "a forged divert header reached the simple page"
    );

    // While hot: POST and a session cookie stay on the app; GET goes to the simple page.
    let before = (simple_count(&s, "hot"), app_count(&s, "hot"));
    let post = http::request(
        s.port(),
        "POST",
        "/PostView?blogId=hot&logNo=1",
        &[],
        b"x=1",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cookie = http::request(
        s.port(),
        "GET",
        "/PostView?blogId=hot&logNo=1",
        &[("cookie", b"theme=dark; SESSION=1")],
        b"",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let get = s.get("/PostView?blogId=hot&logNo=1");
    assert_eq!((post.status, cookie.status, get.status), (200, 200, 200));
    assert_eq!(post.header(HDR), None);
    assert_eq!(cookie.header(HDR), None);
    assert_eq!(get.header(HDR), Some("hotkey"));
    assert_eq!(
        (simple_count(&s, "hot"), app_count(&s, "hot")),
        (before.0 + 1, before.1 + 2),
        "POST and the session request must reach the app"
    );
    assert_eq!(
        s.app.stats().requests_by_method.get("POST").copied(),
        Some(1)
    );
    assert_eq!(
        s.simple.stats().requests_by_method.get("POST").copied(),
        None
    );
    assert_eq!(
        s.envoy
            .wait_stat("wasmcustom.sg.simplepage.post_view.excluded", STATS, |v| v
                == 2),
        2
    );
    // The periodic "simple page inbound" alert names the count and the top URL.
    s.envoy.wait_log("reason=\"simple page inbound: ", STATS);
    let log = s.envoy.log();
    let line = log
        .lines()
        .find(|l| l.contains("simple page inbound"))
        .unwrap_or("");
    assert!(
        line.contains("top5=\"/PostView?blogId=hot&logNo=1:"),
        "{line}"
    );
    until(
        "the \"simple page inbound\" webhook",
        STATS,
        || s.control.hooks(),
        |h| h.iter().any(|h| h.contains("simple page inbound")),
    );
}

#[test]
fn operator_list_diverts_keys_and_path_prefixes_until_removed() {
    let rules = json!([{"name": "pages", "key": {"query": "blogId"}, "triggers": {"operator": true},
        "divert": {"header": {"name": "x-spikeguard-divert"}}},
        {"name": "lists", "match": {"path_prefix": "/PostList"}, "triggers": {"operator": true},
         "divert": {"redirect": {"status": 307, "base_url": "https://simple.blog.example"}}}]);
    let op = json!({"operator": {"cluster": "spikeguard_control", "path": "/blocklist/simplepage",
        "poll_ms": 300, "timeout_ms": 3000}});
    // The first rule matches everything: the PostList rule only sees what it does not.
    let rules = json!([rules[1], rules[0]]);
    let s = Stack::start(&[("simplepage", sp(rules, op))], 2);
    assert_eq!(s.get("/PostView?blogId=listed&logNo=1").header(HDR), None);
    s.control.set_blocklist(
        200,
        r#"{"entries": [{"rule": "pages", "key": "listed"},
                        {"rule": "pages", "path_prefix": "/special"},
                        {"rule": "lists", "path_prefix": "/PostList"},
                        {"rule": "pages", "key": "expired", "expires_at_ms": 1000}]}"#,
        Some("\"v1\""),
    );
    // Applied on every worker (they pick the list up on their ticks).
    until_tagged(&s, "/PostView?blogId=listed&logNo=1", Some("operator"), 20);
    let listed_before = simple_count(&s, "listed");
    for _ in 0..10 {
        let r = s.get("/PostView?blogId=listed&logNo=1");
        assert_eq!((r.status, r.header(HDR)), (200, Some("operator")));
    }
    assert_eq!(simple_count(&s, "listed"), listed_before + 10);
    assert_eq!(
        s.get("/special/page?blogId=x").header(HDR),
        Some("operator")
    );
    // URL variants of a listed path prefix are listed too.
    for variant in ["//special//page?blogId=x", "/%73pecial/page"] {
        assert_eq!(s.get(variant).header(HDR), Some("operator"), "{variant}");
    }
    assert_eq!(s.get("/PostView?blogId=expired&logNo=1").header(HDR), None);
    assert_eq!(s.get("/PostView?blogId=other&logNo=1").header(HDR), None);
    let r = s.get("/PostList?blogId=a&page=2");
    assert_eq!(
        (r.status, r.header("location")),
        (
            307,
            Some("https://simple.blog.example/PostList?blogId=a&page=2")
        )
    );
    // A failing endpoint keeps the list; removal applies.
    let errors = "wasmcustom.sg.simplepage.operator_errors";
    let errors_before = s.envoy.stat(errors);
    s.control.set_blocklist(500, "oops", None);
    let polls = s.control.polls();
    until(
        "two more polls",
        STATS,
        || s.control.polls(),
        |p| *p >= polls + 2,
    );
    s.envoy.wait_stat(errors, STATS, |v| v > errors_before);
    assert_eq!(
        s.get("/PostView?blogId=listed&logNo=1").header(HDR),
        Some("operator")
    );
    s.control
        .set_blocklist(200, r#"{"entries": []}"#, Some("\"v2\""));
    // Every worker picks the removal up on its next tick.
    until_tagged(&s, "/PostView?blogId=listed&logNo=1", None, 20);
    for _ in 0..10 {
        assert_eq!(s.get("/PostList?blogId=a").status, 200);
        assert_eq!(s.get("/PostView?blogId=listed&logNo=1").header(HDR), None);
    }
}

#[test]
fn overload_trigger_fires_when_the_app_is_slow_and_clears_when_it_recovers() {
    let rules = json!([{"name": "post_view", "match": {"path_prefix": "/PostView"},
        "triggers": {"overload": {"p99_ms": 200, "min_samples": 10, "window_ms": 1000,
                                  "clear_after_ms": 1500, "probe_percent": 10}}}]);
    let alert =
        json!({"alert": {"webhook_cluster": "spikeguard_control", "webhook_path": "/hook"}});
    let s = Stack::start(&[("simplepage", sp(rules, alert))], 2);
    let url = s.envoy.url();
    let mix = || KeyMix {
        zipf_n: 100,
        ..KeyMix::default()
    };
    let diverted = |r: &Report| {
        r.records
            .iter()
            .filter(|x| {
                x.headers
                    .iter()
                    .any(|(k, v)| k == HDR && v == "overload:latency")
            })
            .count()
    };
    // Healthy: nothing diverted.
    let calm = load(&url, 100.0, 1500, mix());
    assert_eq!(diverted(&calm), 0);
    // The app slows to 400 ms per request: diverted within a window or two.
    s.app.apply(&AdminConfig {
        latency_ms: Some(400),
        ..AdminConfig::default()
    });
    let slow = load(&url, 100.0, 4000, mix());
    let first = slow
        .records
        .iter()
        .filter(|x| {
            x.headers
                .iter()
                .any(|(k, v)| k == HDR && v == "overload:latency")
        })
        .map(|x| x.intended_us)
        .min();
    let d = diverted(&slow);
    eprintln!(
        "overload: first diverted {:?} ms after the app slowed; {d} of {} diverted; simple page got {}",
        first.map(|u| u / 1000),
        slow.sent,
        s.simple.stats().total
    );
    assert!(
        first.is_some_and(|us| us < 3_000_000),
        "not diverted in time"
    );
    assert!(d as u64 > slow.sent / 3, "{d} of {}", slow.sent);
    assert_eq!(s.simple.stats().total as usize, d);
    s.envoy
        .wait_log("reason=\"main backend overloaded (latency)", STATS);
    // Probes keep measuring the app while diverted.
    assert!(s.envoy.stat("wasmcustom.sg.simplepage.post_view.probes") > 0);
    // Recovery: the probes see a fast app again; diversion ends after clear_after_ms.
    s.app.apply(&AdminConfig {
        latency_ms: Some(0),
        ..AdminConfig::default()
    });
    let recovered = Instant::now();
    eventually(
        "no diversion after recovery",
        Duration::from_secs(15),
        || {
            let d = diverted(&load(&url, 100.0, 500, mix()));
            if d == 0 {
                Ok(())
            } else {
                Err(d)
            }
        },
    );
    eprintln!(
        "overload: cleared {} ms after the app recovered",
        recovered.elapsed().as_millis()
    );
    s.envoy.wait_log("overload over, main backend back", STATS);
    assert_eq!(s.envoy.stat("wasmcustom.sg.simplepage.overload_events"), 1);
    until(
        "the overload webhook",
        STATS,
        || s.control.hooks(),
        |h| !h.is_empty(),
    );
    assert_eq!(s.control.hooks().len(), 1, "{:?}", s.control.hooks());
}

/// Cache on, diversion always on (maintenance switch).
fn cached(extra: Value) -> Vec<(&'static str, Value)> {
    let mut cache = json!({"ttl_ms": 1000});
    if let (Some(c), Some(e)) = (cache.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    let rules = json!([{"name": "post_view", "match": {"path_prefix": "/PostView"},
        "triggers": {"always": true}, "cache": cache}]);
    vec![(
        "simplepage",
        sp(
            rules,
            json!({"cache": {"slots": 16, "max_body_bytes": 4096}}),
        ),
    )]
}

#[test]
fn micro_cache_sends_at_most_one_request_per_refresh_interval_to_the_backend() {
    let s = Stack::start(&cached(json!({})), 2);
    // First fill, by the same client (the cache key includes the Host header).
    let first = load(&s.envoy.url(), 1.0, 1000, one_key("c"));
    assert_eq!(first.sent, 1);
    let tags: Vec<&str> = first.records[0]
        .headers
        .iter()
        .filter(|(k, _)| k == HDR)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(tags, ["always"], "a miss goes to the backend");
    s.envoy
        .wait_stat("wasmcustom.sg.simplepage.cache_fill", STATS, |v| v >= 1);
    let before = simple_count(&s, "c");
    let started = Instant::now();
    let r = load(&s.envoy.url(), 2000.0, 5000, one_key("c"));
    let secs = started.elapsed().as_secs_f64();
    let backend = simple_count(&s, "c") - before;
    let hits = s
        .envoy
        .wait_stat("wasmcustom.sg.simplepage.cache_hit", STATS, |v| v > 0);
    let stale = s.envoy.stat("wasmcustom.sg.simplepage.cache_stale");
    let refresh = s.envoy.stat("wasmcustom.sg.simplepage.cache_refresh");
    let miss = s.envoy.stat("wasmcustom.sg.simplepage.cache_miss");
    eprintln!("refreshes {refresh}, misses {miss} (1 is the first fill)");
    assert_eq!(
        miss, 1,
        "after the first fill every request is a hit, stale or a refresh"
    );
    eprintln!(
        "micro-cache: {} requests in {secs:.1} s for one page; backend got {backend}; cache hits {hits}, stale {stale}; statuses {:?}",
        r.sent, r.by_status
    );
    assert_eq!(r.sent, 10_000);
    assert_eq!(r.by_status.get(&200).copied(), Some(r.sent));
    // One refresh per 1 s interval (the run lasts ~5 s) plus one for an interval boundary.
    let allowed = secs.ceil() as u64 + 1;
    assert!(
        backend <= allowed,
        "backend got {backend} requests, allowed {allowed}"
    );
    assert!(backend >= 1, "the cache never refreshed");
    // Bodies from the cache are the backend's page.
    let body = s.get("/PostView?blogId=c&logNo=1").body;
    assert!(
        body.contains("upstream simple") && body.contains("blogId=c"),
        "{body}"
    );
}

#[test]
fn micro_cache_never_keeps_set_cookie_and_memory_stays_in_its_slots() {
    let s = Stack::start(&cached(json!({})), 2);
    for _ in 0..20 {
        let r = s.get("/PostView?blogId=ck&logNo=1&setcookie=1");
        assert_eq!(r.status, 200);
        assert!(r.header("set-cookie").is_some());
    }
    assert_eq!(
        simple_count(&s, "ck"),
        20,
        "a Set-Cookie response was served from the cache"
    );
    assert!(
        s.envoy
            .wait_stat("wasmcustom.sg.simplepage.cache_not_cacheable", STATS, |v| v
                >= 20)
            >= 20
    );
    // 3,000 distinct pages through a 16-slot cache of 4 KiB bodies.
    let heap_before = s.envoy.heap_allocated();
    let r = load(
        &s.envoy.url(),
        1500.0,
        2000,
        KeyMix {
            unique: true,
            key_prefix: "m".into(),
            ..KeyMix::default()
        },
    );
    assert_eq!(r.by_status.get(&200).copied(), Some(r.sent));
    // Every distinct page tried to take a slot: filled, or found it busy with a fresh page.
    let busy = "wasmcustom.sg.simplepage.cache_slot_busy";
    let fill = "wasmcustom.sg.simplepage.cache_fill";
    let (fills, busied) = until(
        "cache_fill + cache_slot_busy >= 1000",
        STATS,
        || (s.envoy.stat(fill), s.envoy.stat(busy)),
        |(f, b)| f + b >= 1000,
    );
    let bytes = s
        .envoy
        .wait_stat("wasmcustom.sg.simplepage.cache_bytes", STATS, |v| v > 0);
    let bound = 16 * (4096 + 4096 + 2048 + 128);
    eprintln!(
        "micro-cache memory: {} distinct pages, {fills} filled a slot, {busied} found it busy; cache bytes {bytes} (bound {bound})",
        r.sent
    );
    assert!(fills + busied >= 1000 && fills >= 16, "{fills} + {busied}");
    // Envoy's live heap: the pages went through, they did not stay.
    let bound = 8 * 1024 * 1024;
    let heap_after = s.envoy.wait_heap_at_most(heap_before + bound, STATS);
    eprintln!("micro-cache memory: Envoy live heap {heap_before} -> {heap_after} bytes");
    assert!(heap_before > 0 && heap_after <= heap_before + bound);
    assert!(bytes > 0 && bytes <= bound, "{bytes}");
    // Each page is ~300 bytes: 16 slots hold at most 16 of them.
    assert!(bytes <= 16 * 600, "{bytes}");
}

#[test]
fn stale_if_error_serves_the_last_good_page_when_the_backend_fails() {
    let s = Stack::start(
        &cached(json!({"stale_while_revalidate_ms": 0, "stale_if_error_ms": 60000})),
        1,
    );
    let good = s.get("/PostView?blogId=e&logNo=1");
    assert_eq!(good.status, 200);
    s.envoy
        .wait_stat("wasmcustom.sg.simplepage.cache_fill", STATS, |v| v >= 1);
    assert_eq!(
        s.get("/PostView?blogId=e&logNo=1").header(HDR),
        Some("always; cache=hit")
    );
    s.simple.apply(&AdminConfig {
        error_rate: Some(1.0),
        error_status: Some(503),
        ..AdminConfig::default()
    });
    // Until the copy expires (TTL 1 s) every request is a hit and the backend is not asked;
    // the first request after it is sent to the (failing) backend and answered with the copy.
    let before = simple_count(&s, "e");
    let r = eventually("the copy to expire", STATS, || {
        let r = s.get("/PostView?blogId=e&logNo=1");
        match r.header(HDR) {
            Some("always; cache=hit") => Err(r),
            _ => Ok(r),
        }
    });
    assert_eq!(
        simple_count(&s, "e"),
        before + 1,
        "expired: the backend is asked"
    );
    assert_eq!(
        (r.status, r.header(HDR)),
        (200, Some("always; cache=stale-if-error"))
    );
    assert_eq!(r.body, good.body);
    // Not cached at all: the rule's fallback page (the default: 503, retry-after).
    let r = s.get("/PostView?blogId=never&logNo=1");
    assert_eq!(r.status, 503);
    assert_eq!(r.header(HDR), Some("always; fallback"));
    assert_eq!(r.header("retry-after"), Some("5"));
    assert_eq!(
        s.envoy.wait_stat(
            "wasmcustom.sg.simplepage.cache_stale_if_error",
            STATS,
            |v| v == 1
        ),
        1
    );
}

#[test]
fn bad_simplepage_config_is_refused_naming_the_field() {
    let mut b = sg_e2e::envoy::Bundle::load().unwrap_or_else(|e| panic!("{e}"));
    b.keep_filters(&["simplepage"]);
    let cfg = json!({"rules": [{"name": "r", "triggers": {"hotkey": "post_view"}}]});
    b.set_filter_config("simplepage", &cfg)
        .unwrap_or_else(|e| panic!("{e}"));
    let log =
        sg_e2e::envoy::expect_refused(&b, 1).unwrap_or_else(|e| panic!("served a bad config: {e}"));
    assert!(log.contains("simplepage: rules[0].key"), "{log}");
}

/// Ten requests for one page within 100 ms, each allowed 10 s.
fn ten_at_once(url: &str, key: &str, template: &str) -> Report {
    loadgen::run(&LoadConfig {
        target: url.to_string(),
        rate_rps: 100.0,
        duration_ms: 100,
        path_template: template.into(),
        keys: one_key(key),
        record: true,
        timeout_ms: 10_000,
        ..LoadConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

fn tags(r: &Report) -> std::collections::BTreeMap<String, u64> {
    let mut m = std::collections::BTreeMap::new();
    for x in &r.records {
        let t = x
            .headers
            .iter()
            .find(|(k, _)| k == HDR)
            .map_or("none".to_string(), |(_, v)| v.clone());
        *m.entry(t).or_insert(0) += 1;
    }
    m
}

/// Runs `load` in a thread while the simple-page backend holds every request; releases the
/// backend once `ready` holds (what the test needs to have happened while the backend was
/// "slow"), then returns the load's report.
fn while_backend_held(
    s: &Stack,
    what: &str,
    load: impl FnOnce() -> Report + Send + 'static,
    ready: impl FnMut() -> Result<(), String>,
) -> Report {
    s.simple.hold();
    let run = std::thread::spawn(load);
    let waited = sg_e2e::wait::try_eventually(what, STATS, ready);
    s.simple.release();
    let report = run.join().unwrap_or_else(|_| panic!("load thread"));
    waited.unwrap_or_else(|e| panic!("{e}"));
    report
}

#[test]
fn a_cold_page_is_fetched_once_while_the_other_requests_wait_for_it() {
    let s = Stack::start(&cached(json!({"lock_timeout_ms": 2000})), 2);
    let url = s.envoy.url();
    let seen = "wasmcustom.sg.simplepage.post_view.seen";
    let in_flight = |s: &Stack| s.simple.stats().in_flight;
    // 200 requests at once for a cold page. The backend holds the one fetch until the filter
    // has seen all 200 (the other 199 are waiting for the fill), then answers.
    let u = url.clone();
    let r = while_backend_held(
        &s,
        "all 200 requests seen, one fetch at the backend",
        move || load(&u, 2000.0, 100, one_key("cold")),
        || match (s.envoy.stat(seen), in_flight(&s)) {
            (200, 1) => Ok(()),
            other => Err(format!("seen, fetches held: {other:?}")),
        },
    );
    let t = tags(&r);
    eprintln!(
        "cache lock: {} requests for a cold page; backend got {}; tags {t:?}",
        r.sent,
        simple_count(&s, "cold")
    );
    assert_eq!(
        r.by_status.get(&200).copied(),
        Some(r.sent),
        "{:?}",
        r.by_status
    );
    assert_eq!(simple_count(&s, "cold"), 1, "one fetch for everyone");
    assert_eq!(t.get("always").copied(), Some(1), "{t:?}");
    assert_eq!(
        t.get("always; cache=hit").copied(),
        Some(r.sent - 1),
        "{t:?}"
    );
    let waited = "wasmcustom.sg.simplepage.cache_wait_hit";
    assert_eq!(
        s.envoy.wait_stat(waited, STATS, |v| v as u64 == r.sent - 1) as u64,
        r.sent - 1
    );

    // The fetch outlives the wait (lock 2 s): the backend holds it until the other nine have
    // given up waiting and gone on to the backend themselves.
    let timed_out = "wasmcustom.sg.simplepage.cache_wait_timeout";
    let u = url.clone();
    let r = while_backend_held(
        &s,
        "nine lock timeouts, ten requests at the backend",
        move || ten_at_once(&u, "slow", "/PostView?blogId={key}&logNo=1"),
        || match (s.envoy.stat(timed_out), in_flight(&s)) {
            (9, 10) => Ok(()),
            other => Err(format!("timeouts, requests held: {other:?}")),
        },
    );
    assert_eq!(
        r.by_status.get(&200).copied(),
        Some(r.sent),
        "{:?}",
        r.by_status
    );
    eprintln!(
        "cache lock timeout: backend got {}; tags {:?}; p50 {} ms",
        simple_count(&s, "slow"),
        tags(&r),
        r.latency_us.p50 / 1000
    );
    assert_eq!(
        simple_count(&s, "slow"),
        r.sent,
        "every waiter went on to the backend"
    );
    assert_eq!(
        app_count(&s, "slow"),
        0,
        "a timed-out waiter must stay diverted"
    );
    assert_eq!(
        s.envoy
            .wait_stat(timed_out, STATS, |v| v as u64 == r.sent - 1) as u64,
        r.sent - 1
    );

    // An uncacheable page (Set-Cookie): the waiters go on as soon as the fetch ends, not at
    // the lock timeout. The backend holds the fetch until the filter has seen all ten.
    let timeouts = s.envoy.stat(timed_out);
    let seen_before = s.envoy.stat(seen);
    let u = url.clone();
    let r = while_backend_held(
        &s,
        "all ten requests seen, one fetch at the backend",
        move || ten_at_once(&u, "private", "/PostView?blogId={key}&logNo=1&setcookie=1"),
        || match (s.envoy.stat(seen) - seen_before, in_flight(&s)) {
            (10, 1) => Ok(()),
            other => Err(format!("seen, fetches held: {other:?}")),
        },
    );
    assert_eq!(
        r.by_status.get(&200).copied(),
        Some(r.sent),
        "{:?}",
        r.by_status
    );
    assert_eq!(simple_count(&s, "private"), r.sent);
    let released = "wasmcustom.sg.simplepage.cache_wait_released";
    let got = s
        .envoy
        .wait_stat(released, STATS, |v| v as u64 == r.sent - 1) as u64;
    eprintln!(
        "cache lock, uncacheable page: {} requests, {got} released when the fetch ended; p50 {} ms",
        r.sent,
        r.latency_us.p50 / 1000
    );
    assert_eq!(got, r.sent - 1);
    assert_eq!(
        s.envoy.stat(timed_out),
        timeouts,
        "no waiter sat out the 2 s timeout"
    );
}

#[test]
fn overload_by_error_rate_diverts_and_probes_see_the_recovery() {
    let rules = json!([{"name": "post_view", "match": {"path_prefix": "/PostView"},
        "triggers": {"overload": {"error_percent": 20, "min_samples": 10, "window_ms": 1000,
                                  "clear_after_ms": 1000, "probe_percent": 20}}}]);
    let s = Stack::start(&[("simplepage", sp(rules, json!({})))], 2);
    let url = s.envoy.url();
    let mix = || KeyMix {
        zipf_n: 100,
        ..KeyMix::default()
    };
    let by_errors = |r: &Report| {
        r.records
            .iter()
            .filter(|x| {
                x.headers
                    .iter()
                    .any(|(k, v)| k == HDR && v == "overload:errors")
            })
            .count()
    };
    // Half the app's answers are 503s: diverted; the simple page answers 200.
    s.app.apply(&AdminConfig {
        error_rate: Some(0.5),
        error_status: Some(503),
        ..AdminConfig::default()
    });
    let bad = load(&url, 100.0, 3000, mix());
    let d = by_errors(&bad);
    eprintln!(
        "overload by errors: {d} of {} diverted; statuses {:?}",
        bad.sent, bad.by_status
    );
    assert!(d as u64 > bad.sent / 3, "{d} of {}", bad.sent);
    assert_eq!(s.simple.stats().total as usize, d);
    // Recovered: the probes (20%) see clean answers and diversion ends.
    s.app.apply(&AdminConfig {
        error_rate: Some(0.0),
        ..AdminConfig::default()
    });
    eventually(
        "no diversion after recovery",
        Duration::from_secs(15),
        || {
            let d = by_errors(&load(&url, 100.0, 500, mix()));
            if d == 0 {
                Ok(())
            } else {
                Err(d)
            }
        },
    );
    assert_eq!(s.envoy.stat("wasmcustom.sg.simplepage.overload_events"), 1);
}

#[test]
fn shadow_mode_sends_a_hot_key_to_the_app_and_counts_what_it_would_have_diverted() {
    // `hotkey` names the hot key and publishes it for diversion as usual; the simplepage rule
    // is in shadow mode (with its micro-cache configured), a second rule beside it enforces.
    let hk = json!({"tick_ms": 100, "rules": [{"name": "post_view", "key": {"query": "blogId"},
        "window_ms": 1000, "threshold_rps": 50, "cooldown_ms": 5000, "action": {"divert": {}}}]});
    let rules = json!([{"name": "post_view", "match": {"path_prefix": "/PostView"},
        "key": {"query": "blogId"}, "triggers": {"hotkey": "post_view"},
        "cache": {"ttl_ms": 60000}, "shadow": true},
        {"name": "post_list", "match": {"path_prefix": "/PostList"}, "triggers": {"always": true}}]);
    let s = Stack::start(&[("hotkey", hk), ("simplepage", sp(rules, json!({})))], 2);
    let url = s.envoy.url();
    let r = hot_half(&url, 300.0);
    let hot_sent = r.records.iter().filter(|x| x.key == "hot").count() as u64;
    let shadow = "wasmcustom.sg.simplepage.post_view.shadow_diverted_hotkey";
    let would = s.envoy.wait_stat(shadow, STATS, |v| v > 0);
    let stats = s.envoy.stats_matching("wasmcustom.sg.simplepage");
    eprintln!(
        "shadow: {hot_sent} hot requests sent, {would} would have been diverted; app got {} of them, the simple page {}",
        app_count(&s, "hot"),
        s.simple.stats().total
    );
    assert_eq!(
        app_count(&s, "hot"),
        hot_sent,
        "every hot request reached the app"
    );
    assert_eq!(s.simple.stats().total, 0, "nothing went to the simple page");
    assert!(
        r.records
            .iter()
            .all(|x| !x.headers.iter().any(|(k, _)| k == HDR)),
        "no answer tagged a simple page"
    );
    assert!(would as u64 <= hot_sent, "{would} > {hot_sent}");
    let stat = |k: &str| {
        stats
            .get(&format!("wasmcustom.sg.simplepage.{k}"))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(stat("post_view.diverted_hotkey"), 0, "{stats:?}");
    assert_eq!(
        (stat("cache_hit"), stat("cache_miss"), stat("cache_fill")),
        (0, 0, 0),
        "the cache is not used in shadow: {stats:?}"
    );
    s.envoy.wait_log(
        "simplepage: shadow rule=post_view would divert (hotkey)",
        STATS,
    );
    // The enforcing rule beside it diverts.
    let r = s.get("/PostList?blogId=x");
    assert_eq!((r.status, r.header(HDR)), (200, Some("always")));
    assert_eq!(simple_count(&s, "x"), 1);
}
