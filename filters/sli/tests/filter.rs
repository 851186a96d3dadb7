//! The whole `sli` filter (request path, end of stream, tick, status page) on the in-memory
//! host: workers of one Envoy are `Filter`s sharing one `MemHost` store; time is set by the
//! test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use sg_core::flags::FLAG_DC;
use sg_core::host::{Flow, Plugin};
use sg_core::testing::MemHost;
use sg_core::tick::Periodic;
use sg_sli::filter::{Filter, Leader, Stream};
use sg_sli::series::name;

type Worker = (Filter, Periodic<Leader>);

const CONFIG: &str = r#"{"tick_ms": 1000,
  "pages": [
    {"name": "PostView", "match": {"path_prefix": "/PostView"}, "key": {"query": "blogId"}},
    {"name": "PostList", "match": {"path_prefix": "/PostList"}}
  ],
  "buckets_ms": [100, 1000, 3000],
  "slo_ms": [1000],
  "top_urls": {"n": 3, "window_s": 2, "capacity": 16, "query_params": ["blogId"], "sample_1_in": 1},
  "status": {"path": "/spikeguard/status", "token": "0123456789abcdef-token"}}"#;

fn host() -> MemHost {
    let h = MemHost::new();
    h.set_now(1_000_000);
    h.set_property(&["destination", "address"], "127.0.0.1:10000");
    h
}

fn worker(h: &MemHost, json: &str) -> Worker {
    h.set_config(json);
    Filter::configure(h).expect("config accepted")
}

/// One request of `path` answered `status` with `headers` after `ms`, body `body` bytes;
/// `flags` as Envoy reports them at the end.
fn call(
    f: &Filter,
    h: &MemHost,
    path: &str,
    status: u16,
    headers: &[(&str, &str)],
    ms: u64,
    flags: u64,
) {
    h.get("blog.example.com", path);
    let mut s: Stream = Filter::stream(1);
    assert_eq!(f.on_request(h, &mut s), Flow::Continue);
    h.advance(ms);
    if status != 0 {
        h.respond(status, headers, b"hello");
        f.on_response_headers(h, &mut s, false);
        f.on_response_body(h, &mut s, 5, flags == 0);
    }
    h.set_property_u64(&["response", "flags"], flags);
    f.on_log(h, &mut s);
}

fn tick(w: &mut Worker, h: &MemHost) {
    let (f, p) = w;
    f.on_tick(h, p);
}

fn requests(h: &MemHost, page: &str, code: &str, class: &str, action: &str) -> i64 {
    h.metric(&name(
        &[
            ("page", page),
            ("direction", "inbound"),
            ("code", code),
            ("class", class),
            ("action", action),
        ],
        "spikeguard_requests_total",
    ))
    .unwrap_or(0)
}

fn page_metric(h: &MemHost, page: &str, extra: &[(&str, &str)], metric: &str) -> i64 {
    let mut tags = vec![("page", page), ("direction", "inbound")];
    tags.extend_from_slice(extra);
    h.metric(&name(&tags, metric)).unwrap_or(-1)
}

#[test]
fn requests_are_counted_by_page_code_class_and_action_and_flushed_on_the_tick() {
    let h = host();
    let mut w = worker(&h, CONFIG);
    call(&w.0, &h, "/PostView?blogId=a", 200, &[], 50, 0);
    call(&w.0, &h, "/PostView?blogId=a", 200, &[], 500, 0);
    call(&w.0, &h, "/PostView", 200, &[], 5, 0); // no blogId: not a PostView
    call(&w.0, &h, "/PostList", 503, &[], 2000, 0);
    call(
        &w.0,
        &h,
        "/PostList",
        429,
        &[("x-spikeguard-action", "ratelimit")],
        1,
        0,
    );
    call(
        &w.0,
        &h,
        "/PostList",
        503,
        &[("x-spikeguard-action", "hotkey")],
        1,
        0,
    );
    call(
        &w.0,
        &h,
        "/PostView?blogId=b",
        200,
        &[("x-spikeguard-simple-page", "hotkey")],
        20,
        0,
    );
    call(
        &w.0,
        &h,
        "/PostView?blogId=b",
        200,
        &[("x-spikeguard-simple-page", "hotkey; cache=hit")],
        1,
        0,
    );
    call(&w.0, &h, "/PostList", 0, &[], 4000, FLAG_DC); // the client gave up
    call(&w.0, &h, "/PostList", 418, &[], 1, 0);
    assert_eq!(
        requests(&h, "PostView", "200", "2xx", "none"),
        0,
        "nothing before the tick"
    );
    tick(&mut w, &h);
    assert_eq!(requests(&h, "PostView", "200", "2xx", "none"), 2);
    assert_eq!(requests(&h, "other", "200", "2xx", "none"), 1);
    assert_eq!(requests(&h, "PostList", "503", "5xx", "none"), 1);
    assert_eq!(requests(&h, "PostList", "429", "4xx", "ratelimit"), 1);
    assert_eq!(requests(&h, "PostList", "503", "5xx", "shed"), 1);
    assert_eq!(requests(&h, "PostView", "200", "2xx", "diverted"), 1);
    assert_eq!(requests(&h, "PostView", "200", "2xx", "cache"), 1);
    assert_eq!(requests(&h, "PostList", "499", "4xx", "none"), 1);
    assert_eq!(requests(&h, "PostList", "other", "4xx", "none"), 1);
    let bucket = |page, le| {
        page_metric(
            &h,
            page,
            &[("le", le)],
            "spikeguard_request_duration_ms_bucket",
        )
    };
    assert_eq!(
        (
            bucket("PostView", "100"),
            bucket("PostView", "1000"),
            bucket("PostView", "+Inf")
        ),
        (3, 4, 4),
        "50, 500, 20, 1 ms"
    );
    assert_eq!(
        (
            bucket("PostList", "1000"),
            bucket("PostList", "3000"),
            bucket("PostList", "+Inf")
        ),
        (3, 4, 5)
    );
    assert_eq!(
        page_metric(
            &h,
            "PostList",
            &[("slo", "1000")],
            "spikeguard_latency_good_total"
        ),
        3
    );
    assert_eq!(
        page_metric(&h, "PostList", &[], "spikeguard_latency_total"),
        5
    );
    // Upstream time: only for responses from the upstream (not the marked ones).
    assert_eq!(
        page_metric(&h, "PostView", &[], "spikeguard_upstream_duration_ms_count"),
        2
    );
    assert_eq!(
        page_metric(&h, "PostList", &[], "spikeguard_upstream_duration_ms_count"),
        2
    );
    assert_eq!(
        page_metric(&h, "PostView", &[], "spikeguard_response_bytes_total"),
        20
    );
}

#[test]
fn envoys_own_answers_get_no_upstream_time_and_the_action_header_is_stripped() {
    let h = host();
    let mut w = worker(&h, CONFIG);
    // 503 with UF (connection failure): Envoy's local reply.
    call(&w.0, &h, "/PostList", 503, &[], 3, 1 << 5);
    h.get("blog.example.com", "/PostList");
    let mut s = Filter::stream(2);
    w.0.on_request(&h, &mut s);
    h.respond(429, &[("x-spikeguard-action", "ratelimit")], b"");
    w.0.on_response_headers(&h, &mut s, true);
    assert_eq!(h.resp_header("x-spikeguard-action"), None, "stripped");
    w.0.on_log(&h, &mut s);
    tick(&mut w, &h);
    assert_eq!(
        page_metric(&h, "PostList", &[], "spikeguard_upstream_duration_ms_count"),
        0
    );
    assert_eq!(
        page_metric(&h, "PostList", &[], "spikeguard_latency_total"),
        2
    );
}

#[test]
fn shadow_mode_counts_but_strips_nothing_and_serves_no_status_page() {
    let h = host();
    let cfg = CONFIG.replacen(
        "{\"tick_ms\": 1000,",
        "{\"tick_ms\": 1000, \"shadow\": true,",
        1,
    );
    let mut w = worker(&h, &cfg);
    h.get("x", "/PostList");
    let mut s = Filter::stream(2);
    w.0.on_request(&h, &mut s);
    h.respond(429, &[("x-spikeguard-action", "ratelimit")], b"");
    w.0.on_response_headers(&h, &mut s, true);
    assert_eq!(
        h.resp_header("x-spikeguard-action").as_deref(),
        Some("ratelimit")
    );
    w.0.on_log(&h, &mut s);
    h.get("x", "/spikeguard/status");
    let mut s = Filter::stream(3);
    assert_eq!(w.0.on_request(&h, &mut s), Flow::Continue, "passes through");
    assert!(h.take_replies().is_empty());
    tick(&mut w, &h);
    assert_eq!(requests(&h, "PostList", "429", "4xx", "ratelimit"), 1);
}

fn status(f: &Filter, h: &MemHost, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut req = vec![
        (":method", "GET"),
        (":path", "/spikeguard/status?x=1"),
        (":authority", "x"),
    ];
    req.extend_from_slice(headers);
    h.request(&req);
    let mut s = Filter::stream(9);
    assert_eq!(f.on_request(h, &mut s), Flow::Pause);
    let r = h.take_replies().pop().expect("a reply");
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, v)
}

#[test]
fn the_status_page_sums_every_worker_and_opens_only_on_loopback_or_with_the_token() {
    let h = host();
    let mut w = [worker(&h, CONFIG), worker(&h, CONFIG)];
    for i in 0..10 {
        call(&w[i % 2].0, &h, "/PostView?blogId=hot&x=1", 200, &[], 10, 0);
    }
    call(&w[0].0, &h, "/PostView?blogId=cold", 503, &[], 10, 0);
    call(&w[1].0, &h, "/PostView?blogId=cold", 0, &[], 10, FLAG_DC);
    // Two ticks a bucket apart: the first bucket is complete, so it is in the window.
    for x in w.iter_mut() {
        tick(x, &h);
    }
    h.advance(1000);
    for x in w.iter_mut() {
        tick(x, &h);
    }
    let (code, v) = status(&w[1].0, &h, &[]);
    assert_eq!(code, 200, "loopback listener");
    let pv = v["pages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["page"] == "PostView")
        .unwrap()
        .clone();
    assert_eq!(pv["requests"], 12, "{v}");
    assert_eq!(pv["errors_5xx"], 1);
    assert_eq!(pv["code_499"], 1);
    let urls = v["top_urls"]["urls"].as_array().unwrap();
    assert_eq!(urls[0]["url"], "/PostView?blogId=hot", "{v}");
    assert_eq!(urls[0]["rps"], 5.0, "10 requests over a 2 s window");
    // Not loopback: 404 without the token, 200 with it.
    h.set_property(&["destination", "address"], "10.0.0.7:15006");
    assert_eq!(status(&w[0].0, &h, &[]).0, 404);
    assert_eq!(
        status(
            &w[0].0,
            &h,
            &[("authorization", "Bearer wrong-token-wrong-token")]
        )
        .0,
        404
    );
    assert_eq!(
        status(
            &w[0].0,
            &h,
            &[("authorization", "Bearer 0123456789abcdef-token")]
        )
        .0,
        200
    );
    tick(&mut w[0], &h);
    assert_eq!(h.metric("sg.sli.inbound.status_refused"), Some(2));
    assert!(h.metric("sg.sli.inbound.status_served").unwrap_or(0) >= 1);
    // Status requests are not SLI traffic.
    assert_eq!(page_metric(&h, "other", &[], "spikeguard_latency_total"), 0);
}

#[test]
fn a_hundred_thousand_distinct_urls_create_no_new_metric_names() {
    let h = host();
    let mut w = worker(&h, CONFIG);
    for i in 0..100 {
        call(&w.0, &h, &format!("/PostView?blogId={i}"), 200, &[], 1, 0);
    }
    tick(&mut w, &h);
    let names = h.metric_names().len();
    let series = w.0.request_series();
    for i in 0..100_000u32 {
        let path = format!("/u/{i}/{}?blogId={i}&q={}", i * 7, i % 13);
        call(&w.0, &h, &path, 200, &[], 1, 0);
        if i % 10_000 == 0 {
            tick(&mut w, &h);
        }
    }
    tick(&mut w, &h);
    assert_eq!(
        h.metric_names().len(),
        names,
        "page other, 200, none existed from the start"
    );
    assert_eq!(w.0.request_series(), series);
    assert_eq!(
        requests(&h, "other", "200", "2xx", "none"),
        100_000,
        "every request counted"
    );
}

#[test]
fn sampled_top_urls_keep_the_heavy_hitters_and_their_rates() {
    let h = host();
    let cfg = CONFIG.replace(r#""sample_1_in": 1"#, r#""sample_1_in": 4"#);
    let mut w = worker(&h, &cfg);
    // 2,000 requests in a 1 s bucket: 1,000 for one page, 1,000 over 500 others.
    for i in 0..2000u32 {
        let path = if i % 2 == 0 {
            "/PostView?blogId=hot".to_string()
        } else {
            format!("/PostView?blogId=c{}", i % 500)
        };
        h.get("x", &path);
        let mut s = Filter::stream(i);
        w.0.on_request(&h, &mut s);
    }
    tick(&mut w, &h);
    h.advance(1000);
    tick(&mut w, &h);
    let (_, v) = status(&w.0, &h, &[]);
    let urls = v["top_urls"]["urls"].as_array().unwrap();
    assert_eq!(urls[0]["url"], "/PostView?blogId=hot", "{v}");
    // 1,000 in 2 s = 500/s; a 1-in-4 sample of 1,000 is 250 +- 3 sigma (~41): 500 +- 82/s.
    let rps = urls[0]["rps"].as_f64().unwrap();
    assert!(
        (418.0..=582.0).contains(&rps),
        "estimated {rps}/s for 500/s"
    );
}
