//! The combined module (`sg_combined.wasm`, docs/COMBINED.md) in a real Envoy: the shipped
//! bundle's filters folded into one module per listener with their configs unchanged, a
//! request held by a part (ratelimit's delay mode) and resumed into the rest of the chain, and
//! bad configs refused naming the section and the field. That each part acts as its filter
//! does (shed, divert, cache, 429, breaker fallback, the SLI labels of each) is
//! `the_combined_module_gives_the_same_answers_and_series_as_the_chain` in tests/sli.rs.
//! Nothing here depends on the machine's speed: every wait is for a condition.

use serde_json::{json, Value};
use sg_e2e::envoy::{expect_refused, Bundle};
use sg_e2e::loadgen::{self, Planned};
use sg_e2e::{http, Stack};
use std::time::Duration;

const STATS: Duration = Duration::from_secs(10);

const INGRESS: [(&str, &str); 4] = [
    ("sli", "sli"),
    ("hotkey", "hotkey"),
    ("simplepage", "simplepage"),
    ("ratelimit", "ratelimit"),
];

fn combine_all(b: &mut Bundle) {
    let present: Vec<(&str, &str)> = INGRESS
        .into_iter()
        .filter(|(f, _)| b.filter_config(f).is_some())
        .collect();
    b.combine("ingress", "combined", &present)
        .unwrap_or_else(|e| panic!("{e}"));
    if b.filter_config("breaker").is_some() {
        b.combine(
            "egress",
            "combined_egress",
            &[("sli_egress", "sli"), ("breaker", "breaker")],
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
}

/// Waits until the `spikeguard_requests_total` series whose labels hold every one of `labels`
/// sum to `want` in Envoy's Prometheus output.
fn wait_requests(s: &Stack, labels: &[&str], want: f64) {
    sg_e2e::wait::until(
        &format!("spikeguard_requests_total{labels:?} = {want}"),
        STATS,
        || {
            s.envoy
                .prometheus()
                .lines()
                .filter(|l| {
                    l.starts_with("spikeguard_requests_total{")
                        && labels.iter().all(|want| l.contains(want))
                })
                .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
                .sum::<f64>()
        },
        |v| *v == want,
    );
}

fn config_dump(s: &Stack) -> String {
    http::get(s.envoy.admin, "/config_dump")
        .unwrap_or_else(|e| panic!("config_dump: {e}"))
        .body
}

#[test]
fn the_shipped_bundle_runs_as_two_combined_modules() {
    let s = Stack::start_with(&sg_e2e::shipped(), 2, sg_e2e::ample("main"), combine_all);
    let dump = config_dump(&s);
    assert!(dump.contains("sg_combined.wasm"), "combined module loaded");
    for m in [
        "sg_sli.wasm",
        "sg_hotkey.wasm",
        "sg_simplepage.wasm",
        "sg_ratelimit.wasm",
        "sg_breaker.wasm",
    ] {
        assert!(!dump.contains(m), "{m} still in the chain");
    }
    // The ingress listener with its filters as one: pages go to the app, the status page of
    // the sli part answers, and the SLI series count the pages.
    for n in 0..5 {
        let r = s.get(&format!("/PostView?blogId=b{n}&logNo=1"));
        assert_eq!((r.status, r.header("x-upstream")), (200, Some("main")));
    }
    let st = s.get("/spikeguard/status");
    assert_eq!(st.status, 200, "{st:?}");
    let v: Value = serde_json::from_str(&st.body).unwrap_or_else(|e| panic!("{e}: {st:?}"));
    assert!(v.is_object(), "{v}");
    wait_requests(&s, &["page=\"PostView\"", "code=\"200\""], 5.0);
    // The egress listener's module: the app's outbound call goes through the breaker part
    // to the API (the app here) and is answered.
    let r = http::get(s.egress(), "/api/json?x=1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        s.envoy
            .wait_stat("wasmcustom.sg.breaker.outbound_api.success", STATS, |v| v
                >= 1)
            >= 1,
        "{}",
        s.envoy.log_tail(30)
    );
}

#[test]
fn a_request_held_by_ratelimit_is_resumed_through_the_module() {
    // 20 r/s, burst 5, delay mode (nginx's default): of 7 at once, 1 passes, 5 are held and
    // then resumed to the app, 1 is refused. Only the counts are asserted, never the delays.
    let filters = [
        (
            "sli",
            json!({"pages": [{"name": "PostList", "match": {"path_prefix": "/PostList"}}]}),
        ),
        (
            "ratelimit",
            json!({"rules": [{"name": "paced", "key": {"fixed": "one"}, "rate": "20r/s", "burst": 5}]}),
        ),
    ];
    let s = Stack::start_with(&filters, 2, sg_e2e::ample("main"), combine_all);
    let plan: Vec<Planned> = (0..7)
        .map(|_| Planned::get(0, "/PostList?blogId=x"))
        .collect();
    let out =
        loadgen::run_schedule(&s.envoy.url(), &plan, 10_000).unwrap_or_else(|e| panic!("{e}"));
    let ok = out.iter().filter(|o| o.status == 200).count();
    let refused = out.iter().filter(|o| o.status == 429).count();
    assert_eq!((ok, refused), (6, 1), "{out:?}");
    assert_eq!(s.app.stats().total, 6, "the held requests reached the app");
    assert_eq!(
        s.envoy
            .wait_stat("wasmcustom.sg.ratelimit.resumed", STATS, |v| v == 5),
        5
    );
    // The sli part saw every answer, the held ones included.
    wait_requests(&s, &["page=\"PostList\""], 7.0);
}

#[test]
fn bad_combined_configs_are_refused_naming_the_section_and_field() {
    let cases = [
        (
            json!({"sli": {}, "cache": {}}),
            "combined: cache: unknown section",
        ),
        (json!({"sli": 3}), "combined: sli: must be an object"),
        (json!({}), "at least one section is required"),
        (
            json!({"ratelimit": {"rules": [{"name": "r", "key": "host", "rate": "0r/s"}]}}),
            "rules[0].rate",
        ),
        (
            json!({"sli": {}, "hotkey": {"rules": [{"name": "h", "key": {"query": "b"}, "threshold_rps": 0, "action": "observe"}]}}),
            "rules[0].threshold_rps",
        ),
    ];
    for (cfg, want) in cases {
        let mut b = Bundle::load().unwrap_or_else(|e| panic!("{e}"));
        b.keep_filters(&[]);
        b.prepend_http_filter("ingress", Bundle::wasm_filter("combined", "combined", &cfg))
            .unwrap_or_else(|e| panic!("{e}"));
        let log =
            expect_refused(&b, 1).unwrap_or_else(|e| panic!("served a bad config {cfg}: {e}"));
        assert!(log.contains(want), "log does not name {want:?}:\n{log}");
    }
}
