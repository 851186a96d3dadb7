//! `sli` against a real Envoy (and a real Prometheus scraping it): exact counts, codes and
//! latency buckets for driven traffic, 499 for a client that leaves, every protection filter's
//! answer labelled with it, bounded series whatever the URLs, and the status page.
//!
//! Nothing here depends on the machine's speed: latencies are chosen far from bucket edges
//! (an upstream that answers after 600 ms is over `le="500"` however fast the machine, and
//! the routes have no timeout), and every wait is for a condition, with a generous timeout.

use serde_json::{json, Value};
use sg_e2e::envoy::Bundle;
use sg_e2e::http;
use sg_e2e::loadgen::{self, KeyMix, LoadConfig};
use sg_e2e::upstream::AdminConfig;
use sg_e2e::wait::until;
use sg_e2e::Stack;
use sg_integration::prometheus::{samples, value, Prometheus};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

const STATS: Duration = Duration::from_secs(15);

fn sli(extra: Value) -> Value {
    let mut c = json!({"tick_ms": 200,
        "pages": [
            {"name": "PostView", "match": {"path_prefix": "/PostView"}},
            {"name": "PostList", "match": {"path_prefix": "/PostList"}}
        ],
        "top_urls": {"n": 5, "window_s": 2, "query_params": ["blogId"], "sample_1_in": 1},
        "status": {"path": "/spikeguard/status"}});
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

/// Waits until `name{want}` reads `expect` in Envoy's Prometheus output and returns the text.
#[track_caller]
fn wait_value(s: &Stack, name: &str, want: &[(&str, &str)], expect: f64) -> String {
    let mut text = String::new();
    until(
        &format!("{name}{want:?} = {expect}"),
        STATS,
        || {
            text = s.envoy.prometheus();
            value(&text, name, want)
        },
        |v| *v == expect,
    );
    text
}

/// The ingress routes without their timeout: a test's slow answers are never a 504, however
/// slow the machine.
fn no_route_timeout(b: &mut sg_e2e::envoy::Bundle) {
    if let Some(vhosts) = b
        .route_config_mut("ingress")
        .and_then(|rc| rc["virtual_hosts"].as_array_mut())
    {
        for r in vhosts
            .iter_mut()
            .filter_map(|v| v["routes"].as_array_mut())
            .flatten()
        {
            r["route"]["timeout"] = json!("0s");
        }
    }
}

fn set(s: &Stack, cfg: AdminConfig) {
    s.app.apply(&cfg);
}

#[test]
fn driven_traffic_gives_exact_counts_codes_and_buckets_and_prometheus_sees_the_labels() {
    let s = Stack::start_with(
        &[("sli", sli(json!({})))],
        2,
        sg_e2e::ample("main"),
        no_route_timeout,
    );
    for i in 0..30 {
        assert_eq!(
            s.get(&format!("/PostView?blogId=b{}&logNo=1", i % 3))
                .status,
            200
        );
    }
    set(
        &s,
        AdminConfig {
            latency_ms: Some(600),
            ..AdminConfig::default()
        },
    );
    for _ in 0..4 {
        assert_eq!(s.get("/PostList?blogId=x").status, 200);
    }
    set(
        &s,
        AdminConfig {
            latency_ms: Some(0),
            ..AdminConfig::default()
        },
    );
    for (status, n) in [(502u16, 3), (503, 2), (504, 1)] {
        set(
            &s,
            AdminConfig {
                error_rate: Some(1.0),
                error_status: Some(status),
                ..AdminConfig::default()
            },
        );
        for _ in 0..n {
            assert_eq!(s.get("/PostView?blogId=err&logNo=1").status, status);
        }
    }
    set(
        &s,
        AdminConfig {
            error_rate: Some(0.0),
            ..AdminConfig::default()
        },
    );
    assert_eq!(s.get("/elsewhere").status, 200);

    let req = "spikeguard_requests_total";
    let text = wait_value(&s, req, &[("page", "other")], 1.0);
    let text = if value(&text, req, &[]) == 41.0 {
        text
    } else {
        wait_value(&s, req, &[], 41.0)
    };
    let pv = |extra: &[(&str, &str)]| {
        let mut w = vec![
            ("page", "PostView"),
            ("direction", "inbound"),
            ("action", "none"),
        ];
        w.extend_from_slice(extra);
        value(&text, req, &w)
    };
    assert_eq!(pv(&[("code", "200"), ("class", "2xx")]), 30.0);
    assert_eq!(pv(&[("code", "502"), ("class", "5xx")]), 3.0);
    assert_eq!(pv(&[("code", "503")]), 2.0);
    assert_eq!(pv(&[("code", "504")]), 1.0);
    assert_eq!(
        value(&text, req, &[("page", "PostList"), ("code", "200")]),
        4.0
    );
    // 600 ms: over the 500 ms edge however fast the machine (no route timeout here).
    let b = |page, le| {
        value(
            &text,
            "spikeguard_request_duration_ms_bucket",
            &[("page", page), ("le", le)],
        )
    };
    assert_eq!((b("PostList", "500"), b("PostList", "+Inf")), (0.0, 4.0));
    assert_eq!(b("PostView", "+Inf"), 36.0);
    let good = |page, slo| {
        value(
            &text,
            "spikeguard_latency_good_total",
            &[("page", page), ("slo", slo)],
        )
    };
    assert_eq!(
        (good("PostList", "200"), good("PostList", "500")),
        (0.0, 0.0)
    );
    assert_eq!(
        value(&text, "spikeguard_latency_total", &[("page", "PostView")]),
        36.0
    );
    assert_eq!(
        value(
            &text,
            "spikeguard_upstream_duration_ms_count",
            &[("page", "PostList")]
        ),
        4.0
    );
    assert!(
        value(
            &text,
            "spikeguard_request_duration_ms_sum",
            &[("page", "PostList")]
        ) >= 2400.0
    );
    assert!(
        value(
            &text,
            "spikeguard_response_bytes_total",
            &[("page", "PostView")]
        ) > 0.0
    );
    // Envoy's own request-time histogram has the SLO edges as buckets (envoy.yaml).
    assert!(
        text.contains("envoy_http_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"ingress\",le=\"200\"}")
            || s.envoy.prometheus().contains("_downstream_rq_time_bucket{envoy_http_conn_manager_prefix=\"ingress\",le=\"200\"}"),
        "no 200 ms bucket in Envoy's downstream_rq_time"
    );

    // A real Prometheus scrapes Envoy and returns the series with their labels.
    let cfg = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: envoy\n    metrics_path: /stats/prometheus\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
        s.envoy.admin
    );
    let rules = [std::path::PathBuf::from(
        "../config/prometheus/rules/spikeguard-recording.yml",
    )];
    let prom = Prometheus::start(&cfg, &rules).unwrap_or_else(|e| panic!("prometheus: {e}"));
    let mut got = Vec::new();
    until(
        "Prometheus has the 502 series",
        Duration::from_secs(30),
        || {
            got = prom
                .query_result(r#"spikeguard_requests_total{page="PostView",code="502"}"#)
                .unwrap_or_default();
            got.len()
        },
        |n| *n == 1,
    );
    let m = &got[0]["metric"];
    assert_eq!(
        (
            m["direction"].as_str(),
            m["class"].as_str(),
            m["action"].as_str(),
            m["job"].as_str()
        ),
        (Some("inbound"), Some("5xx"), Some("none"), Some("envoy")),
        "{m}"
    );
    assert_eq!(got[0]["value"][1], "3");
    let q = prom
        .query_result(r#"histogram_quantile(0.5, sum by (le) (spikeguard_request_duration_ms_bucket{page="PostList"}))"#)
        .unwrap_or_default();
    let p50: f64 = q
        .first()
        .and_then(|r| r["value"][1].as_str())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0);
    assert!(p50 >= 500.0, "p50 of the 600 ms page: {p50}");

    // The status page: the whole Envoy's summary and the top URLs.
    let mut st = Value::Null;
    until(
        "status page names the busy page first (canonical URL, query_params only)",
        STATS,
        || {
            // The window is the last 2 s: keep a page busy while waiting.
            for _ in 0..5 {
                s.get("/PostView?logNo=7&blogId=hot&x=1");
            }
            st = serde_json::from_str(&s.get("/spikeguard/status").body).unwrap_or(Value::Null);
            st["top_urls"]["urls"][0]["url"]
                .as_str()
                .map(str::to_string)
        },
        |u| u.as_deref() == Some("/PostView?blogId=hot"),
    );
    let pages = st["pages"].as_array().cloned().unwrap_or_default();
    let pvs = pages
        .iter()
        .find(|p| p["page"] == "PostView")
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(pvs["errors_5xx"].as_u64(), Some(6), "{st}");
    assert!(
        pvs["requests"].as_u64() >= Some(36 + 5),
        "the 36 pages and the busy ones: {st}"
    );
}

#[test]
fn a_client_that_leaves_before_the_answer_is_counted_499() {
    // No route timeout and an app that holds the request: nothing but the client's leaving
    // can end the stream, however long the test takes to get there.
    let s = Stack::start_with(
        &[("sli", sli(json!({})))],
        1,
        sg_e2e::ample("main"),
        no_route_timeout,
    );
    s.app.hold();
    let mut c = TcpStream::connect(("127.0.0.1", s.port())).unwrap_or_else(|e| panic!("{e}"));
    c.write_all(b"GET /PostView?blogId=gone&logNo=1 HTTP/1.1\r\nhost: blog\r\n\r\n")
        .unwrap_or_else(|e| panic!("{e}"));
    until(
        "the request reached the app",
        STATS,
        || s.app.stats().in_flight,
        |n| *n == 1,
    );
    drop(c);
    let text = wait_value(&s, "spikeguard_requests_total", &[("code", "499")], 1.0);
    assert_eq!(
        value(
            &text,
            "spikeguard_requests_total",
            &[
                ("page", "PostView"),
                ("code", "499"),
                ("class", "4xx"),
                ("action", "none")
            ]
        ),
        1.0
    );
}

#[test]
fn every_protection_filters_answer_is_labelled_with_it_and_the_mark_is_stripped() {
    let s = protection_answers_labelled(false, |_| {});
    filters_read_each_others_shared_data(&s, "spikeguard");
}

/// The same requests and the same series with the six filters as two combined modules
/// (`sg_combined.wasm`: one on ingress with the sli, hotkey, simplepage and ratelimit
/// sections, one on egress with sli and breaker), each section the filter's config as is.
#[test]
fn the_combined_module_gives_the_same_answers_and_series_as_the_chain() {
    let s = protection_answers_labelled(true, |_| {});
    filters_read_each_others_shared_data(&s, "spikeguard");
}

/// As Istio runs them: a `WasmPlugin` sets no `vm_id`, so every plugin of the sidecar has
/// `vm_id: ""` and one shared-data namespace. The cross-filter scenario (shed, 429, divert,
/// cache hit, breaker fallback, each labelled by sli) gives the same answers and series.
#[test]
fn with_an_empty_vm_id_as_istio_sets_the_chain_gives_the_same_answers() {
    let s = protection_answers_labelled(false, |b| assert_eq!(b.set_vm_id(""), 6));
    filters_read_each_others_shared_data(&s, "");
}

#[test]
fn with_an_empty_vm_id_as_istio_sets_the_combined_module_gives_the_same_answers() {
    let s = protection_answers_labelled(true, |b| assert_eq!(b.set_vm_id(""), 2));
    filters_read_each_others_shared_data(&s, "");
}

/// After the scenario: what one filter publishes in shared data reaches another, across the
/// two listeners. `breaker` (egress, forced open) publishes its open set (`sg:br:open`);
/// `simplepage` (ingress) diverts `/needs-api` because of it, on every worker, and `sli`'s
/// status page lists the API. The running config has the `vm_id` the test set.
fn filters_read_each_others_shared_data(s: &Stack, vm_id: &str) {
    let dump = http::get(s.envoy.admin, "/config_dump")
        .unwrap_or_else(|e| panic!("config_dump: {e}"))
        .body;
    assert_eq!(
        dump.contains("\"vm_id\": \"spikeguard\""),
        vm_id == "spikeguard",
        "vm_id {vm_id:?} in the running config"
    );
    let mut streak = 0;
    sg_e2e::wait::eventually("/needs-api diverted for the open breaker", STATS, || {
        let r = s.get("/needs-api/page");
        streak = if r.header("x-spikeguard-simple-page") == Some("breaker") {
            streak + 1
        } else {
            0
        };
        if streak >= 10 {
            Ok(())
        } else {
            Err(r.header("x-spikeguard-simple-page").map(str::to_string))
        }
    });
    let status = s.get("/spikeguard/status");
    let v: Value = serde_json::from_str(&status.body)
        .unwrap_or_else(|e| panic!("status page: {e}: {}", status.body));
    assert!(
        v["breakers_refusing"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["api"] == "outbound_api")),
        "{v}"
    );
}

/// The protection-labels scenario on the bundle with these six filters, as the chain or as
/// two combined modules; `edit` changes the bundle after that (e.g. its `vm_id`).
fn protection_answers_labelled(combined: bool, edit: impl FnOnce(&mut Bundle)) -> Stack {
    let filters = [
        ("sli", sli(json!({}))),
        (
            "hotkey",
            json!({"tick_ms": 100, "rules": [{"name": "post_view", "match": {"path_prefix": "/PostView"},
                "key": {"query": "blogId"}, "threshold_rps": 100000,
                "action": {"reject": {"status": 503}}, "block": [{"key": "blocked"}]}]}),
        ),
        (
            "simplepage",
            json!({"tick_ms": 100, "cache": {"slots": 16, "max_body_bytes": 65536},
                "rules": [{"name": "lists", "match": {"path_prefix": "/PostList"},
                    "triggers": {"always": true}, "cache": {"ttl_ms": 60000}},
                    {"name": "needs_api", "match": {"path_prefix": "/needs-api"},
                     "triggers": {"breaker": ["outbound_api"]}}]}),
        ),
        (
            "ratelimit",
            json!({"rules": [{"name": "limited", "match": {"path_prefix": "/limited"},
                "key": {"fixed": "x"}, "rate": "1r/m", "mode": "nodelay"}]}),
        ),
        (
            "sli_egress",
            json!({"direction": "outbound", "tick_ms": 200,
            "pages": [{"name": "outbound_api", "match": {"path_prefix": "/api/"}}]}),
        ),
        (
            "breaker",
            json!({"apis": [{"name": "outbound_api", "match": {"path_prefix": "/api/"},
                "flag": "force_open", "fallback": {"status": 200, "body": "[]"}}]}),
        ),
    ];
    let s = Stack::start_with(&filters, 2, sg_e2e::ample("main"), |b| {
        if combined {
            let ingress = [
                ("sli", "sli"),
                ("hotkey", "hotkey"),
                ("simplepage", "simplepage"),
                ("ratelimit", "ratelimit"),
            ];
            b.combine("ingress", "combined", &ingress)
                .and_then(|()| {
                    b.combine(
                        "egress",
                        "combined_egress",
                        &[("sli_egress", "sli"), ("breaker", "breaker")],
                    )
                })
                .unwrap_or_else(|e| panic!("{e}"));
        }
        edit(b);
    });
    // The running config holds the modules this variant is about, and only them.
    let dump = http::get(s.envoy.admin, "/config_dump")
        .unwrap_or_else(|e| panic!("config_dump: {e}"))
        .body;
    for module in ["sg_hotkey.wasm", "sg_breaker.wasm", "sg_combined.wasm"] {
        let want = combined == (module == "sg_combined.wasm");
        assert_eq!(
            dump.contains(module),
            want,
            "{module} in the running config"
        );
    }
    let r = s.get("/PostView?blogId=blocked&logNo=1");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-spikeguard-action"), None, "sli strips the mark");
    assert_eq!(s.get("/PostView?blogId=fine&logNo=1").status, 200);
    assert_eq!(s.get("/limited").status, 200);
    let r = s.get("/limited");
    assert_eq!((r.status, r.header("x-spikeguard-action")), (429, None));
    assert_eq!(s.get("/PostList?blogId=a").status, 200);
    // The second is answered from the micro-cache once the first filled it.
    s.envoy
        .wait_stat("wasmcustom.sg.simplepage.cache_fill", STATS, |v| v >= 1);
    let r = s.get("/PostList?blogId=a");
    assert_eq!(
        r.header("x-spikeguard-simple-page"),
        Some("always; cache=hit")
    );
    let r = s.egress_get("/api/json?x=1");
    assert_eq!(
        (r.status, r.body.as_str(), r.header("x-spikeguard-action")),
        (200, "[]", None)
    );

    let req = "spikeguard_requests_total";
    // Counters only grow: once the outbound one is in, a later text still holds it.
    wait_value(&s, req, &[("direction", "outbound")], 1.0);
    let text = wait_value(&s, req, &[("direction", "inbound")], 6.0).replace('\r', "");
    let one = |page: &str, code: &str, action: &str| {
        value(
            &text,
            req,
            &[
                ("page", page),
                ("code", code),
                ("action", action),
                ("direction", "inbound"),
            ],
        )
    };
    assert_eq!(one("PostView", "503", "shed"), 1.0);
    assert_eq!(one("PostView", "200", "none"), 1.0);
    assert_eq!(one("other", "200", "none"), 1.0);
    assert_eq!(one("other", "429", "ratelimit"), 1.0);
    assert_eq!(one("PostList", "200", "diverted"), 1.0);
    assert_eq!(one("PostList", "200", "cache"), 1.0);
    assert_eq!(
        value(
            &text,
            req,
            &[
                ("page", "outbound_api"),
                ("direction", "outbound"),
                ("code", "200"),
                ("action", "breaker")
            ]
        ),
        1.0
    );
    s
}

#[test]
fn a_hundred_thousand_distinct_urls_create_no_new_series() {
    let s = Stack::start_direct(&[("sli", sli(json!({"tick_ms": 500})))], 2);
    // One request first, so the one series this traffic uses exists.
    assert_eq!(s.get("/u/first").status, 200);
    let series = |t: &str| samples(t).len();
    let before = series(&wait_value(
        &s,
        "spikeguard_requests_total",
        &[("page", "other")],
        1.0,
    ));
    // Batches until 100,000 distinct URLs were sent (the batch number is in the path, `{n}`
    // the request's number in its batch); a request the generator could not send on a slow
    // machine is simply sent in a later batch. Bounded: at most 40 batches.
    let (mut sent, mut answered) = (0u64, 0u64);
    for batch in 0..40 {
        if sent >= 100_000 {
            break;
        }
        let report = loadgen::run(&LoadConfig {
            target: s.envoy.url(),
            rate_rps: 5_000.0,
            duration_ms: 2_000,
            path_template: format!("/u/{batch}/{{n}}/x?blogId={{n}}&v={batch}"),
            keys: KeyMix::default(),
            max_in_flight: 1024,
            timeout_ms: 10_000,
            ..LoadConfig::default()
        })
        .unwrap_or_else(|e| panic!("load: {e}"));
        sent += report.sent;
        answered += report.by_status.get(&200).copied().unwrap_or(0);
    }
    assert!(sent >= 100_000, "only {sent} URLs sent in 40 batches");
    let text = wait_value(
        &s,
        "spikeguard_requests_total",
        &[("page", "other")],
        1.0 + answered as f64,
    );
    assert_eq!(series(&text), before, "no new spikeguard_* series");
    // And Envoy's own stat names did not grow with the URLs either.
    let names = s.envoy.stats().len();
    assert_eq!(
        http::get(s.port(), "/u/one-more")
            .map(|r| r.status)
            .unwrap_or(0),
        200
    );
    assert!(s.envoy.stats().len() <= names + 1);
}
