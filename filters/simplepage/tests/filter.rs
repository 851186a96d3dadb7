//! The whole filter on the in-memory host: the cache state machine (hit, stale while one
//! request refreshes, stale-if-error, cold-miss collapsing with waiters), triggers and safety
//! rules, the overload evaluation and its alert, the inbound alert. Workers of one Envoy are
//! `Filter`s sharing one `MemHost` store; time is set by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use sg_core::host::{Flow, Plugin};
use sg_core::keys::HK_DIVERT;
use sg_core::oplist::{encode_list, Entry, List};
use sg_core::shared::SharedStore;
use sg_core::testing::MemHost;
use sg_core::tick::Periodic;
use sg_simplepage::filter::{Filter, Leader};
use sg_simplepage::stream::Stream;

const HDR: &str = "x-spikeguard-simple-page";

fn worker(h: &MemHost, json: &str) -> (Filter, Periodic<Leader>) {
    h.set_config(json);
    Filter::configure(h).expect("config accepted")
}

/// A rule diverting everything (`always`) with the cache on.
fn always(cache: &str) -> String {
    format!(
        r#"{{"tick_ms": 100, "rules": [{{"name": "pv", "match": {{"path_prefix": "/PostView"}},
        "triggers": {{"always": true}}, "cache": {cache}}}]}}"#
    )
}

/// One request through the request path; the stream for its response.
fn request(f: &Filter, h: &MemHost, id: u32, path: &str) -> (Flow, Stream) {
    h.get("blog", path);
    let mut s = Stream::new(id);
    (f.on_request(h, &mut s), s)
}

/// The upstream answers the stream: response headers then the whole body.
fn answer(
    f: &Filter,
    h: &MemHost,
    s: &mut Stream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    h.respond(status, headers, body);
    assert_eq!(f.on_response_headers(h, s, false), Flow::Continue);
    f.on_response_body(h, s, body.len(), true);
    f.on_log(h, s);
}

const PAGE: &[(&str, &str)] = &[
    ("content-type", "text/html"),
    ("cache-control", "public, max-age=1"),
];

#[test]
fn a_filled_page_is_served_from_the_cache_then_stale_while_one_request_refreshes() {
    let h = MemHost::new();
    h.set_now(1_000);
    let (f, _) = worker(
        &h,
        &always(r#"{"ttl_ms": 1000, "stale_while_revalidate_ms": 5000, "lock_timeout_ms": 0}"#),
    );
    let (flow, mut s) = request(&f, &h, 1, "/PostView?blogId=a");
    assert_eq!(
        flow,
        Flow::Continue,
        "a miss goes to the simple-page backend"
    );
    assert_eq!(
        h.req_header("x-spikeguard-divert").as_deref(),
        Some("always")
    );
    answer(&f, &h, &mut s, 200, PAGE, b"<p>a</p>");
    assert_eq!(h.resp_header(HDR).as_deref(), Some("always"));
    // Fresh: answered by the proxy.
    h.advance(500);
    assert_eq!(request(&f, &h, 2, "/PostView?blogId=a").0, Flow::Pause);
    let r = h.take_replies();
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].status, r[0].body.as_slice()), (200, &b"<p>a</p>"[..]));
    assert_eq!(r[0].header(HDR), Some("always; cache=hit"));
    assert_eq!(r[0].header("content-type"), Some("text/html"));
    // Stale: the first request refreshes (goes on), the next ones get the stale copy.
    h.advance(1_000);
    let (flow, mut refresher) = request(&f, &h, 3, "/PostView?blogId=a");
    assert_eq!(flow, Flow::Continue);
    for id in 4..7 {
        assert_eq!(request(&f, &h, id, "/PostView?blogId=a").0, Flow::Pause);
    }
    let r = h.take_replies();
    assert_eq!(r.len(), 3);
    assert!(r
        .iter()
        .all(|r| r.header(HDR) == Some("always; cache=stale")));
    answer(&f, &h, &mut refresher, 200, PAGE, b"<p>a2</p>");
    request(&f, &h, 7, "/PostView?blogId=a");
    assert_eq!(h.take_replies()[0].body, b"<p>a2</p>");
    let m = &f.m.filter;
    assert_eq!(
        (
            m.cache_miss.get(),
            m.cache_fill.get(),
            m.cache_hit.get(),
            m.cache_stale.get(),
            m.cache_refresh.get()
        ),
        (1, 2, 2, 3, 1)
    );
}

#[test]
fn every_url_form_of_one_page_is_one_cache_entry_and_other_pages_are_not() {
    let h = MemHost::new();
    h.set_now(0);
    let (f, _) = worker(
        &h,
        &always(r#"{"ttl_ms": 60000, "lock_timeout_ms": 0, "query_params": ["blogId", "logNo"]}"#),
    );
    let (flow, mut s) = request(&f, &h, 1, "/PostView?blogId=a&logNo=1");
    assert_eq!(flow, Flow::Continue);
    answer(&f, &h, &mut s, 200, PAGE, b"a1");
    for (id, form) in [
        "/PostView?blogId=a&logNo=1&x=913",
        "/PostView?logNo=1&blogId=a",
        "/PostView?_=1700000000&blogId=a&utm_source=sms&logNo=1",
        "/Post%56iew?%62logId=a&logNo=%31",
        "//PostView/?blogId=a&logNo=1",
        "/PostView?blogId=a&logNo=1&blogId=b",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(
            request(&f, &h, id as u32 + 2, form).0,
            Flow::Pause,
            "{form}"
        );
    }
    let r = h.take_replies();
    assert!(r.iter().all(|r| r.body == b"a1"), "{r:?}");
    for other in ["/PostView?blogId=a&logNo=2", "/PostView?blogId=b&logNo=1"] {
        assert_eq!(
            request(&f, &h, 99, other).0,
            Flow::Continue,
            "{other} is another page"
        );
    }
    // Without query_params every parameter selects the page (canonicalised: order and
    // spelling still do not matter).
    let h = MemHost::new();
    let (f, _) = worker(&h, &always(r#"{"ttl_ms": 60000, "lock_timeout_ms": 0}"#));
    let (_, mut s) = request(&f, &h, 1, "/PostView?blogId=a&logNo=1");
    answer(&f, &h, &mut s, 200, PAGE, b"a1");
    assert_eq!(
        request(&f, &h, 2, "/PostView?logNo=%31&blogId=a").0,
        Flow::Pause
    );
    assert_eq!(
        request(&f, &h, 3, "/PostView?blogId=a&logNo=1&x=1").0,
        Flow::Continue
    );
}

/// An always-diverting worker that cached "good" for `/PostView?blogId=a` 1 s ago: past its
/// 100 ms TTL, within its 60 s stale-if-error.
fn stale_copy_cached() -> (MemHost, Filter) {
    let h = MemHost::new();
    h.set_now(0);
    let (f, _) = worker(
        &h,
        &always(
            r#"{"ttl_ms": 100, "stale_while_revalidate_ms": 0, "stale_if_error_ms": 60000, "lock_timeout_ms": 0}"#,
        ),
    );
    let (_, mut s) = request(&f, &h, 1, "/PostView?blogId=a");
    answer(&f, &h, &mut s, 200, PAGE, b"good");
    h.advance(1_000);
    (h, f)
}

#[test]
fn a_backend_error_is_replaced_by_the_stale_copy_within_stale_if_error() {
    let (h, f) = stale_copy_cached();
    let (flow, mut s) = request(&f, &h, 2, "/PostView?blogId=a");
    assert_eq!(flow, Flow::Continue);
    h.respond(
        503,
        &[("content-type", "text/plain"), ("x-debug", "1")],
        b"thread full",
    );
    f.on_response_headers(&h, &mut s, false);
    assert_eq!(h.resp_header(":status").as_deref(), Some("200"));
    assert_eq!(
        h.resp_header("x-debug"),
        None,
        "the error's headers are dropped"
    );
    assert_eq!(
        h.resp_header(HDR).as_deref(),
        Some("always; cache=stale-if-error")
    );
    assert_eq!(
        f.on_response_body(&h, &mut s, 5, false),
        Flow::Pause,
        "buffered until the end"
    );
    f.on_response_body(&h, &mut s, 11, true);
    assert_eq!(h.body(), b"good");
    assert_eq!(f.m.filter.cache_stale_if_error.get(), 1);
}

#[test]
fn a_cold_page_is_fetched_once_and_the_waiters_are_answered_when_it_lands() {
    let h = MemHost::new();
    h.set_now(0);
    let (f, mut p) = worker(&h, &always(r#"{"ttl_ms": 5000, "lock_timeout_ms": 500}"#));
    assert_eq!(h.tick_period_ms(), 10, "fast tick while waiters may exist");
    let (flow, mut fetcher) = request(&f, &h, 1, "/PostView?blogId=c");
    assert_eq!(flow, Flow::Continue, "the lock winner fetches");
    for id in 2..=5 {
        assert_eq!(
            request(&f, &h, id, "/PostView?blogId=c").0,
            Flow::Pause,
            "waits"
        );
    }
    assert_eq!(f.waiting(), 4);
    h.advance(10);
    f.on_tick(&h, &mut p);
    assert!(
        h.take_replies().is_empty() && h.take_resumed().is_empty(),
        "still fetching"
    );
    answer(&f, &h, &mut fetcher, 200, PAGE, b"cold");
    h.advance(10);
    f.on_tick(&h, &mut p);
    let r = h.take_replies();
    assert_eq!(
        r.iter().map(|r| r.id).collect::<Vec<_>>(),
        [Some(2), Some(3), Some(4), Some(5)]
    );
    assert!(r
        .iter()
        .all(|r| r.body == b"cold" && r.header(HDR) == Some("always; cache=hit")));
    assert_eq!(f.waiting(), 0);
    assert_eq!(f.m.filter.cache_wait_hit.get(), 4);
}

#[test]
fn waiters_are_released_when_the_fetch_ends_uncached_and_resumed_at_the_lock_timeout() {
    let h = MemHost::new();
    h.set_now(0);
    let (f, mut p) = worker(&h, &always(r#"{"lock_timeout_ms": 500}"#));
    let (_, mut fetcher) = request(&f, &h, 1, "/PostView?blogId=u");
    request(&f, &h, 2, "/PostView?blogId=u");
    answer(
        &f,
        &h,
        &mut fetcher,
        200,
        &[("set-cookie", "a=b")],
        b"private",
    );
    h.advance(10);
    f.on_tick(&h, &mut p);
    assert_eq!(
        h.take_resumed(),
        [2],
        "released at once, not at the timeout"
    );
    assert_eq!(f.m.filter.cache_not_cacheable.get(), 1);
    assert_eq!(f.m.filter.cache_wait_released.get(), 1);
    // A fetch slower than the lock: the waiter goes on at the timeout, still diverted.
    let (_, _slow) = request(&f, &h, 3, "/PostView?blogId=v");
    request(&f, &h, 4, "/PostView?blogId=v");
    assert_eq!(
        h.req_header("x-spikeguard-divert").as_deref(),
        Some("always")
    );
    h.advance(499);
    f.on_tick(&h, &mut p);
    assert!(h.take_resumed().is_empty());
    h.advance(1);
    f.on_tick(&h, &mut p);
    assert_eq!(h.take_resumed(), [4]);
    assert_eq!(f.m.filter.cache_wait_timeout.get(), 1);
}

#[test]
fn only_safe_requests_are_diverted() {
    let h = MemHost::new();
    let (f, _) = worker(
        &h,
        r#"{"rules": [{"name": "pv", "triggers": {"always": true}, "exclude_cookies": ["SESSION"]}]}"#,
    );
    for headers in [
        vec![(":method", "POST"), (":path", "/PostView")],
        vec![
            (":method", "GET"),
            (":path", "/PostView"),
            ("authorization", "Bearer x"),
        ],
        vec![
            (":method", "GET"),
            (":path", "/PostView"),
            ("cookie", "a=1; SESSION=s"),
        ],
    ] {
        h.request(&headers);
        let mut s = Stream::new(1);
        assert_eq!(f.on_request(&h, &mut s), Flow::Continue);
        assert_eq!(h.req_header("x-spikeguard-divert"), None, "{headers:?}");
    }
    h.request(&[
        (":method", "GET"),
        (":path", "/PostView"),
        ("cookie", "a=1"),
    ]);
    f.on_request(&h, &mut Stream::new(2));
    assert_eq!(
        h.req_header("x-spikeguard-divert").as_deref(),
        Some("always")
    );
    assert_eq!(f.m.rules[0].excluded.get(), 3);
    assert_eq!(f.m.rules[0].diverted_always.get(), 1);
}

#[test]
fn a_key_hotkey_publishes_is_diverted_on_every_worker_and_the_redirect_mode_keeps_the_path() {
    let h = MemHost::new();
    h.set_now(0);
    let json = r#"{"rules": [{"name": "pv", "match": {"path_prefix": "/PostView"}, "key": {"query": "blogId"},
        "triggers": {"hotkey": "post_view"},
        "divert": {"redirect": {"status": 307, "base_url": "https://simple.example"}}}]}"#;
    let mut w = [worker(&h, json), worker(&h, json)];
    let list = List {
        entries: vec![Entry {
            rule: Some("post_view".into()),
            key: Some("hot".into()),
            path_prefix: None,
            expires_at_ms: None,
        }],
    };
    h.set(HK_DIVERT, &encode_list(1, &list), 0).unwrap();
    for (f, p) in w.iter_mut() {
        f.on_tick(&h, p);
    }
    for (f, _) in &w {
        assert_eq!(
            request(f, &h, 1, "/PostView?blogId=hot&logNo=2").0,
            Flow::Pause
        );
        assert_eq!(request(f, &h, 2, "/PostView?blogId=cold").0, Flow::Continue);
    }
    let r = h.take_replies();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].status, 307);
    assert_eq!(
        r[0].header("location"),
        Some("https://simple.example/PostView?blogId=hot&logNo=2")
    );
    assert_eq!(r[0].header(HDR), Some("hotkey"));
    // hotkey stops publishing the key: the next refresh ends the diversion.
    h.set(HK_DIVERT, &encode_list(2, &List::default()), 0)
        .unwrap();
    h.advance(100);
    w[0].0.on_tick(&h, &mut w[0].1);
    assert_eq!(
        request(&w[0].0, &h, 3, "/PostView?blogId=hot").0,
        Flow::Continue
    );
}

#[test]
fn overload_is_judged_once_per_envoy_alerted_once_and_cleared_after_recovery() {
    let h = MemHost::new();
    h.set_now(100_000);
    let json = r#"{"tick_ms": 100, "rules": [{"name": "pv", "triggers": {"overload": {"p99_ms": 200,
        "min_samples": 5, "window_ms": 500, "clear_after_ms": 500, "probe_percent": 0}}}],
        "alert": {"webhook_cluster": "control"}}"#;
    let mut w = [worker(&h, json), worker(&h, json)];
    // The main backend answers in 400 ms: every worker times its requests. Each 100 ms tick
    // every worker starts 3 requests and the backend answers those started 4 ticks ago.
    let mut diverted_at = None;
    let mut in_flight: std::collections::VecDeque<Vec<(usize, Stream)>> = Default::default();
    for tick in 0..20 {
        let mut started = Vec::new();
        for (wi, (f, _)) in w.iter().enumerate() {
            for n in 0..3 {
                let (flow, s) = request(f, &h, (tick * 10 + n) as u32, "/PostView?blogId=x");
                assert_eq!(flow, Flow::Continue);
                if h.req_header("x-spikeguard-divert").is_some() {
                    diverted_at.get_or_insert(tick);
                } else {
                    started.push((wi, s));
                }
            }
        }
        in_flight.push_back(started);
        if in_flight.len() > 4 {
            for (wi, mut s) in in_flight.pop_front().unwrap() {
                answer(&w[wi].0, &h, &mut s, 200, &[], b"");
            }
        }
        h.advance(100);
        for (f, p) in w.iter_mut() {
            f.on_tick(&h, p);
        }
    }
    let at = diverted_at.expect("diverted");
    // First answers (400 ms) land at tick 4 and are merged on that tick; the leader judges the
    // complete bucket on the next one and workers copy the state in the same tick.
    assert!((5..=8).contains(&at), "diverted at tick {at}");
    let calls = h.take_calls();
    assert_eq!(calls.len(), 1, "one overload alert for the Envoy");
    assert!(
        String::from_utf8_lossy(calls[0].body.as_deref().unwrap()).contains("overloaded (latency)")
    );
    assert_eq!(h.metric("sg.simplepage.overload_events"), Some(1));
    assert_eq!(h.metric("sg.simplepage.overloaded_rules"), Some(1));
    // No probes and no traffic to the backend: overload clears by the quiet window.
    for _ in 0..20 {
        h.advance(100);
        for (f, p) in w.iter_mut() {
            f.on_tick(&h, p);
        }
    }
    assert_eq!(
        request(&w[1].0, &h, 9, "/PostView?blogId=x").0,
        Flow::Continue
    );
    assert_eq!(h.req_header("x-spikeguard-divert"), None, "cleared");
    assert_eq!(h.metric("sg.simplepage.overloaded_rules"), Some(0));
}

#[test]
fn the_inbound_alert_names_the_top_urls_only_while_something_was_diverted() {
    let h = MemHost::new();
    h.set_now(1_000);
    let json = r#"{"tick_ms": 100, "inbound_alert_ms": 1000, "rules": [{"name": "pv",
        "triggers": {"always": true}}], "alert": {"webhook_cluster": "control"}}"#;
    let (f, mut p) = worker(&h, json);
    for _ in 0..12 {
        h.advance(100);
        f.on_tick(&h, &mut p);
    }
    assert!(h.take_calls().is_empty(), "nothing diverted: no alert");
    for i in 0..30 {
        request(
            &f,
            &h,
            i,
            if i % 3 == 0 {
                "/PostView?blogId=b"
            } else {
                "/PostView?blogId=hot"
            },
        );
    }
    for _ in 0..12 {
        h.advance(100);
        f.on_tick(&h, &mut p);
    }
    let calls = h.take_calls();
    assert_eq!(calls.len(), 1);
    let body = String::from_utf8_lossy(calls[0].body.as_deref().unwrap()).into_owned();
    assert!(body.contains("simple page inbound: 30 requests"), "{body}");
    let hot = body.find("blogId=hot").expect("top URL named");
    let b = body.find("blogId=b").expect("second URL named");
    assert!(hot < b, "highest first: {body}");
}

#[test]
fn an_unreadable_slot_is_a_miss_and_a_failed_write_is_counted() {
    let h = MemHost::new();
    h.set_now(0);
    let (f, _) = worker(&h, &always(r#"{"lock_timeout_ms": 0}"#));
    for slot in 0..64 {
        h.set(&sg_core::keys::sp_cache(slot), b"junk", 0).unwrap();
    }
    let (flow, mut s) = request(&f, &h, 1, "/PostView?blogId=a");
    assert_eq!(flow, Flow::Continue);
    assert!(f.m.store.bad_state.get() >= 1);
    h.store.set_failing(true);
    answer(&f, &h, &mut s, 200, PAGE, b"x");
    assert_eq!(f.m.filter.cache_write_failed.get(), 1);
    assert_eq!(
        h.resp_header(HDR).as_deref(),
        Some("always"),
        "the response goes through"
    );
}

#[test]
fn an_open_breaker_of_an_api_the_page_needs_diverts_it_until_the_breaker_closes() {
    use sg_core::keys::BR_OPEN;
    let h = MemHost::new();
    h.set_now(0);
    let json = r#"{"rules": [{"name": "pv", "match": {"path_prefix": "/PostView"},
        "triggers": {"breaker": ["recommend"]},
        "divert": {"redirect": {"status": 307, "base_url": "https://simple.example"}}}]}"#;
    let (f, mut p) = worker(&h, json);
    let open = |api: &str, version: u64| {
        let list = List {
            entries: vec![Entry {
                rule: Some(api.into()),
                key: Some("open".into()),
                path_prefix: None,
                expires_at_ms: None,
            }],
        };
        h.set(BR_OPEN, &encode_list(version, &list), 0).unwrap();
    };
    open("comments", 1);
    f.on_tick(&h, &mut p);
    assert_eq!(
        request(&f, &h, 1, "/PostView?blogId=a").0,
        Flow::Continue,
        "an API this page does not need"
    );
    open("recommend", 2);
    h.advance(100);
    f.on_tick(&h, &mut p);
    assert_eq!(request(&f, &h, 2, "/PostView?blogId=a").0, Flow::Pause);
    let r = h.take_replies();
    assert_eq!(r[0].header(HDR), Some("breaker"));
    h.set(BR_OPEN, &encode_list(3, &List::default()), 0)
        .unwrap();
    h.advance(100);
    f.on_tick(&h, &mut p);
    assert_eq!(request(&f, &h, 3, "/PostView?blogId=a").0, Flow::Continue);
    assert_eq!(h.metric("sg.simplepage.pv.diverted_breaker"), Some(1));
}

#[test]
fn shadow_mode_decides_and_counts_but_never_diverts_nor_answers_from_the_cache() {
    let h = MemHost::new();
    h.set_now(1_000);
    let cache = r#"{"ttl_ms": 60000, "lock_timeout_ms": 500}"#;
    // An enforcing worker fills the cache for the page (the shadow one shares the store).
    let (e, _) = worker(&h, &always(cache));
    let (_, mut s) = request(&e, &h, 1, "/PostView?blogId=a");
    answer(&e, &h, &mut s, 200, PAGE, b"<p>a</p>");
    assert_eq!(e.m.filter.cache_fill.get(), 1);
    let shadow = always(cache).replacen('{', r#"{"shadow": true, "#, 1);
    let (f, mut p) = worker(&h, &shadow);
    for (id, path) in [(2, "/PostView?blogId=a"), (3, "/PostView?blogId=cold")] {
        let (flow, mut s) = request(&f, &h, id, path);
        assert_eq!(flow, Flow::Continue, "{path}: to the main backend");
        assert_eq!(
            h.req_header("x-spikeguard-divert"),
            None,
            "{path}: not marked"
        );
        h.respond(200, PAGE, b"<p>main</p>");
        assert_eq!(f.on_response_headers(&h, &mut s, false), Flow::Continue);
        assert_eq!(h.resp_header(HDR), None, "{path}: not tagged a simple page");
        f.on_response_body(&h, &mut s, 11, true);
        f.on_log(&h, &mut s);
    }
    assert!(
        h.take_replies().is_empty(),
        "nothing answered from the cache"
    );
    assert_eq!(f.waiting(), 0, "nobody waits for a fill");
    let (r, m) = (&f.m.rules[0], &f.m.filter);
    assert_eq!((r.seen.get(), r.shadow_diverted_always.get()), (2, 2));
    assert_eq!(r.diverted_always.get(), 0);
    assert_eq!(
        (m.cache_hit.get(), m.cache_miss.get(), m.cache_fill.get()),
        (0, 0, 0)
    );
    // The safety rules still apply first: an unsafe request is excluded, not shadow-counted.
    h.request(&[(":method", "POST"), (":path", "/PostView")]);
    assert_eq!(f.on_request(&h, &mut Stream::new(4)), Flow::Continue);
    assert_eq!((r.excluded.get(), r.shadow_diverted_always.get()), (1, 2));
    f.on_tick(&h, &mut p);
    assert_eq!(h.metric("sg.simplepage.pv.shadow_diverted_always"), Some(2));
    assert_eq!(h.metric("sg.simplepage.pv.diverted_always"), Some(0));
}

#[test]
fn a_shadow_rule_beside_an_enforcing_one_only_counts_its_own_hot_keys() {
    let h = MemHost::new();
    h.set_now(0);
    let json = r#"{"rules": [
        {"name": "a", "match": {"path_prefix": "/A"}, "key": {"query": "id"},
         "triggers": {"hotkey": "hk"}, "shadow": true},
        {"name": "b", "match": {"path_prefix": "/B"}, "key": {"query": "id"},
         "triggers": {"hotkey": "hk"}}]}"#;
    let (f, mut p) = worker(&h, json);
    let list = List {
        entries: vec![Entry {
            rule: Some("hk".into()),
            key: Some("hot".into()),
            path_prefix: None,
            expires_at_ms: None,
        }],
    };
    h.set(HK_DIVERT, &encode_list(1, &list), 0).unwrap();
    f.on_tick(&h, &mut p);
    request(&f, &h, 1, "/A?id=hot");
    assert_eq!(h.req_header("x-spikeguard-divert"), None, "shadow rule a");
    request(&f, &h, 2, "/A?id=cold");
    request(&f, &h, 3, "/B?id=hot");
    assert_eq!(
        h.req_header("x-spikeguard-divert").as_deref(),
        Some("hotkey"),
        "enforcing rule b"
    );
    let (a, b) = (&f.m.rules[0], &f.m.rules[1]);
    assert_eq!(
        (a.shadow_diverted_hotkey.get(), a.diverted_hotkey.get()),
        (1, 0)
    );
    assert_eq!(
        (b.shadow_diverted_hotkey.get(), b.diverted_hotkey.get()),
        (0, 1)
    );
}

#[test]
fn shadow_overload_is_still_detected_from_the_main_backend_and_counted_never_diverted() {
    let h = MemHost::new();
    h.set_now(100_000);
    let json = r#"{"tick_ms": 100, "shadow": true, "rules": [{"name": "pv", "triggers": {"overload":
        {"p99_ms": 200, "min_samples": 5, "window_ms": 500, "clear_after_ms": 500, "probe_percent": 0}}}]}"#;
    let (f, mut p) = worker(&h, json);
    // The main backend answers in 400 ms; every request goes there (and is timed).
    let mut in_flight: std::collections::VecDeque<Vec<Stream>> = Default::default();
    for tick in 0..20u32 {
        let mut started = Vec::new();
        for n in 0..3 {
            let (flow, s) = request(&f, &h, tick * 10 + n, "/PostView?blogId=x");
            assert_eq!(flow, Flow::Continue);
            assert_eq!(h.req_header("x-spikeguard-divert"), None);
            started.push(s);
        }
        in_flight.push_back(started);
        if in_flight.len() > 4 {
            for mut s in in_flight.pop_front().unwrap() {
                answer(&f, &h, &mut s, 200, &[], b"");
            }
        }
        h.advance(100);
        f.on_tick(&h, &mut p);
    }
    assert_eq!(h.metric("sg.simplepage.overload_events"), Some(1));
    let r = &f.m.rules[0];
    assert!(r.shadow_diverted_overload.get() > 0);
    assert_eq!(r.diverted_overload.get(), 0);
}

/// A rule diverting everything (`always`), no cache, with `extra` rule fields.
fn always_no_cache(extra: &str) -> String {
    format!(
        r#"{{"tick_ms": 100, "rules": [{{"name": "pv", "match": {{"path_prefix": "/PostView"}},
        "triggers": {{"always": true}}{extra}}}]}}"#
    )
}

/// Envoy's own answer when the `simple_page` cluster refuses the connection (UF).
const REFUSED: &[u8] =
    b"upstream connect error or disconnect/reset before headers. reset reason: connection failure";

#[test]
fn a_failed_simple_page_is_answered_with_the_rules_fallback() {
    let h = MemHost::new();
    h.set_now(0);
    let (f, _) = worker(&h, &always_no_cache(""));
    let (flow, mut s) = request(&f, &h, 1, "/PostView?blogId=a");
    assert_eq!(flow, Flow::Continue, "diverted to the simple page");
    h.respond(
        503,
        &[("content-type", "text/plain"), ("x-debug", "1")],
        REFUSED,
    );
    assert_eq!(f.on_response_headers(&h, &mut s, false), Flow::Continue);
    assert_eq!(h.resp_header(":status").as_deref(), Some("503"));
    assert_eq!(
        h.resp_header("x-debug"),
        None,
        "the failure's headers are dropped"
    );
    assert_eq!(h.resp_header("retry-after").as_deref(), Some("5"));
    assert_eq!(h.resp_header("cache-control").as_deref(), Some("no-store"));
    assert_eq!(h.resp_header(HDR).as_deref(), Some("always; fallback"));
    let body = b"This page is very busy right now. Please try again in a few seconds.\n";
    assert_eq!(
        h.resp_header("content-length"),
        Some(body.len().to_string())
    );
    assert_eq!(f.on_response_body(&h, &mut s, 10, false), Flow::Pause);
    f.on_response_body(&h, &mut s, REFUSED.len(), true);
    assert_eq!(h.body(), body);
    f.on_log(&h, &mut s);
    assert_eq!(f.m.filter.divert_failed.get(), 1);
    assert_eq!(f.m.filter.divert_fallback.get(), 1);

    // No answer at all (status 0, a reset) and no body to follow (a HEAD): the fallback's
    // status and headers.
    let (_, mut s) = request(&f, &h, 2, "/PostView?blogId=b");
    h.respond(0, &[], b"");
    f.on_response_headers(&h, &mut s, true);
    assert_eq!(h.resp_header(":status").as_deref(), Some("503"));
    assert_eq!(h.resp_header(HDR).as_deref(), Some("always; fallback"));
    assert_eq!(f.m.filter.divert_fallback.get(), 2);

    // A good answer and a 4xx pass untouched.
    for (id, status) in [(3, 200u16), (4, 404)] {
        let (_, mut s) = request(&f, &h, id, "/PostView?blogId=c");
        answer(&f, &h, &mut s, status, PAGE, b"page");
        assert_eq!(h.resp_header(":status"), Some(status.to_string()));
        assert_eq!(h.resp_header(HDR).as_deref(), Some("always"));
        assert_eq!(h.body(), b"page");
    }
    assert_eq!(f.m.filter.divert_failed.get(), 2);
}

#[test]
fn a_configured_fallback_and_a_null_one() {
    let h = MemHost::new();
    h.set_now(0);
    let (f, _) = worker(
        &h,
        &always_no_cache(
            r#","fallback": {"status": 200, "headers": {"content-type": "text/html"}, "body": "<p>later</p>"}"#,
        ),
    );
    let (_, mut s) = request(&f, &h, 1, "/PostView?blogId=a");
    h.respond(502, &[("content-type", "text/plain")], b"bad gateway");
    f.on_response_headers(&h, &mut s, false);
    f.on_response_body(&h, &mut s, 11, true);
    assert_eq!(h.resp_header(":status").as_deref(), Some("200"));
    assert_eq!(h.resp_header("content-type").as_deref(), Some("text/html"));
    assert_eq!(
        h.resp_header("retry-after"),
        None,
        "given headers replace the defaults"
    );
    assert_eq!(h.body(), b"<p>later</p>");

    // `null`: the failure goes through as it is (tagged), and is counted.
    let h = MemHost::new();
    let (f, _) = worker(&h, &always_no_cache(r#","fallback": null"#));
    let (_, mut s) = request(&f, &h, 1, "/PostView?blogId=a");
    h.respond(503, &[("content-type", "text/plain")], REFUSED);
    f.on_response_headers(&h, &mut s, false);
    f.on_response_body(&h, &mut s, REFUSED.len(), true);
    assert_eq!(h.resp_header(":status").as_deref(), Some("503"));
    assert_eq!(h.resp_header(HDR).as_deref(), Some("always"));
    assert_eq!(h.body(), REFUSED);
    assert_eq!(f.m.filter.divert_failed.get(), 1);
    assert_eq!(f.m.filter.divert_fallback.get(), 0);
}

#[test]
fn a_stale_copy_wins_over_the_fallback() {
    let (h, f) = stale_copy_cached();
    let (_, mut s) = request(&f, &h, 2, "/PostView?blogId=a");
    h.respond(503, &[], REFUSED);
    f.on_response_headers(&h, &mut s, false);
    f.on_response_body(&h, &mut s, REFUSED.len(), true);
    assert_eq!(
        h.resp_header(HDR).as_deref(),
        Some("always; cache=stale-if-error")
    );
    assert_eq!(h.body(), b"good");
    // A page never cached: the fallback.
    let (_, mut s) = request(&f, &h, 3, "/PostView?blogId=new");
    h.respond(503, &[], REFUSED);
    f.on_response_headers(&h, &mut s, false);
    f.on_response_body(&h, &mut s, REFUSED.len(), true);
    assert_eq!(h.resp_header(HDR).as_deref(), Some("always; fallback"));
    assert_eq!(f.m.filter.divert_failed.get(), 2);
    assert_eq!(f.m.filter.divert_fallback.get(), 1);
    assert_eq!(f.m.filter.cache_stale_if_error.get(), 1);
}
