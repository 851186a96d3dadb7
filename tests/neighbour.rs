//! A hostile neighbour beside the bundle (issue 15, "Faults"): the test-only module
//! `integration/testmods/trap` (`sg_testmod_trap.wasm`, built by `make testmods`, never
//! shipped) as its own HTTP filters at the front of the ingress chain, with the bundle's
//! `vm_id` (`spikeguard`): Envoy keys shared data by `vm_id`, so the neighbour reads and writes
//! the bundle's `sg:` keys, while its different code makes it a VM of its own (a trap kills
//! the neighbour's VM, not the bundle's). A neighbour is told what to do by a request header
//! and answers such a request itself (`<header>: done`, a JSON report).
//!
//! Observed with Envoy 1.40 (V8), and asserted here: a trap under `FAIL_OPEN` answers the
//! trapping request 503, then skips the dead plugin, and moves NO `wasm.*` stat (only the log
//! says it); under `FAIL_RELOAD` every request of the worker is answered 503 during the
//! reload backoff (`wasm.<plugin>.vm_reload_backoff`), then the VM is reloaded
//! (`vm_reload_success`), and `SpikeguardWasmVmFailed` pages with the neighbour's name.

use serde_json::{json, Value};
use sg_core::keys;
use sg_e2e::envoy::{repo_root, Bundle, Envoy};
use sg_e2e::http::{self, Response};
use sg_e2e::loadgen::KeyMix;
use sg_e2e::wait::{eventually, until, until_true};
use sg_e2e::{load_pages, Stack};
use sg_integration::prometheus::Prometheus;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Deadline of every wait for a stat (flushed on a filter's tick) or a state.
const STATS: Duration = Duration::from_secs(15);
/// Deadline of a wait that includes Prometheus scrapes and rule evaluations (1 s each).
const PROM: Duration = Duration::from_secs(60);

/// A neighbour filter `name` (plugin name and root id) running `sg_testmod_trap.wasm` with
/// `cfg`, under `policy`. Its own `vm_config.configuration` makes it a VM of its own even
/// beside another neighbour (Envoy shares a VM between plugins with the same vm_id, code and
/// VM configuration), in the bundle's shared-data namespace.
fn neighbour(name: &str, cfg: Value, policy: &str) -> Value {
    let module = sg_e2e::envoy::wasm_path("testmod_trap");
    assert!(
        module.exists(),
        "{} is missing: `make testmods` builds it (a prerequisite of `make test-e2e`)",
        module.display()
    );
    let mut f = Bundle::wasm_filter(name, "testmod_trap", &cfg);
    f["name"] = json!(name);
    let c = &mut f["typed_config"]["config"];
    c["failure_policy"] = json!(policy);
    c["vm_config"]["configuration"] = json!({
        "@type": "type.googleapis.com/google.protobuf.StringValue", "value": name});
    f
}

/// `GET path` on `port` with one extra header.
fn get_with(port: u16, path: &str, header: &str, value: &str) -> Response {
    http::request(port, "GET", path, &[(header, value.as_bytes())], &[])
        .unwrap_or_else(|e| panic!("GET {path} ({header}: {value}): {e}"))
}

/// Runs `action` in the neighbour listening to `header`; its report, or None when the
/// neighbour did not answer (its VM is dead and skipped: the bundle answered).
fn tell(s: &Stack, header: &str, action: &str) -> Option<Value> {
    let r = get_with(s.port(), "/neighbour", header, action);
    (r.header(header) == Some("done"))
        .then(|| serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}")))
}

/// Envoy's own `wasm.*` stats (not the filters' `wasmcustom.*`).
fn wasm_stats(e: &Envoy) -> BTreeMap<String, i64> {
    let mut w = e.stats_matching("wasm");
    w.retain(|k, _| k.starts_with("wasm."));
    w
}

fn statuses(s: &Stack, path: &str, n: usize) -> Vec<u16> {
    (0..n).map(|_| s.get(path).status).collect()
}

/// The strict per-blog limit of these tests: 1 r/m, burst 2 (3 answered, then 429).
fn ratelimit_cfg() -> Value {
    json!({"rules": [{"name": "per_list", "match": {"path_prefix": "/PostList"},
        "key": {"query": "blogId"}, "max_keys": 64, "rate": "1r/m", "burst": 2, "mode": "nodelay"}]})
}

fn hotkey_rule(action: Value) -> Value {
    json!({"tick_ms": 100, "rules": [{"name": "post_view", "match": {"path_prefix": "/PostView"},
        "key": {"query": "blogId"}, "window_ms": 1000, "threshold_rps": 30,
        "exit_percent": 50, "cooldown_ms": 10000, "action": action}]})
}

/// One key at 300 r/s for 2.5 s (10x the threshold): the answers carrying `header: value`.
fn hot_load(s: &Stack, key: &str, header: &str, value: &str) -> u64 {
    let r = load_pages(
        &s.envoy.url(),
        300.0,
        2500,
        KeyMix {
            key_prefix: key.into(),
            ..KeyMix::default()
        },
    );
    r.records
        .iter()
        .filter(|x| x.headers.iter().any(|(k, v)| k == header && v == value))
        .count() as u64
}

fn prometheus_for(e: &Envoy) -> Prometheus {
    let cfg = json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "envoy", "metrics_path": "/stats/prometheus",
            "scrape_interval": "1s", "scrape_timeout": "1s",
            "static_configs": [{"targets": [format!("127.0.0.1:{}", e.admin)]}]}]
    });
    let rules: Vec<PathBuf> = ["spikeguard-recording.yml", "spikeguard-alerts.yml"]
        .iter()
        .map(|f| repo_root().join("config/prometheus/rules").join(f))
        .collect();
    Prometheus::start(&cfg.to_string(), &rules).unwrap_or_else(|e| panic!("prometheus: {e}"))
}

/// The firing `SpikeguardWasmVmFailed` alerts, by plugin.
fn vm_failed_alerts(p: &Prometheus) -> Vec<String> {
    let v = p
        .api("/api/v1/alerts")
        .unwrap_or_else(|e| panic!("alerts: {e}"));
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["labels"]["alertname"] == "SpikeguardWasmVmFailed" && a["state"] == "firing")
        .map(|a| a["labels"]["plugin"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_trapping_neighbour_is_skipped_or_reloaded_and_the_bundle_keeps_protecting() {
    let open = neighbour(
        "neighbour_open",
        json!({"trap_header": "x-trap-open", "control_header": "x-neighbour-open"}),
        "FAIL_OPEN",
    );
    let reload = neighbour(
        "neighbour_reload",
        json!({"trap_header": "x-trap-reload", "control_header": "x-neighbour-reload"}),
        "FAIL_RELOAD",
    );
    let tick = neighbour(
        "neighbour_tick",
        json!({"tick_ms": 100, "on_tick": ["trap"], "control_header": "x-neighbour-tick"}),
        "FAIL_OPEN",
    );
    let filters = [
        ("hotkey", hotkey_rule(json!({"reject": {"status": 503}}))),
        ("ratelimit", ratelimit_cfg()),
    ];
    let s = Stack::start_with(&filters, 1, sg_e2e::ample("main"), |b| {
        for f in [tick, reload, open] {
            b.prepend_http_filter("ingress", f)
                .unwrap_or_else(|e| panic!("{e}"));
        }
    });
    let prom = prometheus_for(&s.envoy);
    // Prometheus has the reload counters at 0 (two samples) before any trap: `increase`
    // cannot see the first increment of a series it has never seen.
    until_true(
        "two scrapes of the neighbour's reload counters",
        PROM,
        || {
            prom.query_result(
                "count_over_time(envoy_wasm_neighbour_reload_vm_reload_backoff[1m]) >= 2",
            )
            .map(|r| !r.is_empty())
            .unwrap_or(false)
        },
    );

    // The on_tick trap: that neighbour is dead from its first tick on, and skipped.
    s.envoy.wait_log("Function: proxy_on_tick failed", STATS);
    assert_eq!(
        tell(&s, "x-neighbour-tick", "ping"),
        None,
        "tick-trapped neighbour"
    );
    assert!(tell(&s, "x-neighbour-open", "ping").is_some());
    assert!(tell(&s, "x-neighbour-reload", "ping").is_some());
    let before = wasm_stats(&s.envoy);

    // FAIL_OPEN: the trapping request is answered 503, the next ones skip the dead plugin.
    let r = get_with(s.port(), "/PostView?blogId=t", "x-trap-open", "panic");
    assert_eq!(r.status, 503, "{r:?}");
    s.envoy.wait_log("neighbour: deliberate panic", STATS);
    assert_eq!(
        tell(&s, "x-neighbour-open", "ping"),
        None,
        "the trapped VM is skipped"
    );
    assert_eq!(s.get("/PostView?blogId=t").status, 200);
    // ... and nothing in Envoy's wasm stats says so: not a counter moved.
    assert_eq!(
        wasm_stats(&s.envoy),
        before,
        "FAIL_OPEN traps are not counted"
    );
    // The bundle (its own VM) still limits.
    assert_eq!(statuses(&s, "/PostList?blogId=a", 4), [200, 200, 200, 429]);

    // FAIL_RELOAD: the worker answers 503 to everything during the reload backoff, then the
    // VM is reloaded (a new VM: it answers again) and the bundle still limits.
    let r = get_with(
        s.port(),
        "/PostView?blogId=t",
        "x-trap-reload",
        "unreachable",
    );
    assert_eq!(r.status, 503, "{r:?}");
    let in_backoff = s.get("/PostList?blogId=b");
    let backoff = "wasm.neighbour_reload.vm_reload_backoff";
    eventually("the reloaded neighbour answers", STATS, || {
        tell(&s, "x-neighbour-reload", "ping").ok_or("not yet")
    });
    let after = wasm_stats(&s.envoy);
    let reloads: Vec<_> = after
        .iter()
        .filter(|(k, _)| k.starts_with("wasm.neighbour_reload."))
        .collect();
    eprintln!(
        "after the FAIL_RELOAD trap: {reloads:?}; next request {}",
        in_backoff.status
    );
    if in_backoff.status == 503 {
        assert!(after.get(backoff).copied().unwrap_or(0) >= 1, "{after:?}");
    }
    assert!(
        after
            .get("wasm.neighbour_reload.vm_reload_success")
            .copied()
            .unwrap_or(0)
            >= 1,
        "{after:?}"
    );
    for p in ["hotkey", "ratelimit", "neighbour_open", "neighbour_tick"] {
        for c in ["vm_reload", "vm_reload_backoff", "vm_reload_failure"] {
            let k = format!("wasm.{p}.{c}");
            assert_eq!(after.get(&k).copied().unwrap_or(0), 0, "{k}");
        }
    }
    assert_eq!(statuses(&s, "/PostList?blogId=c", 4), [200, 200, 200, 429]);

    // hotkey (its own VM) still sheds a hot key.
    let shed = hot_load(&s, "hot", "x-spikeguard-action", "hotkey");
    assert!(shed > 0, "no request shed by hotkey after the traps");
    s.envoy
        .wait_stat("wasmcustom.sg.hotkey.post_view.shed", STATS, |v| v > 0);

    // The alert pages for the neighbour's plugin, for it alone.
    until(
        "SpikeguardWasmVmFailed for neighbour_reload",
        PROM,
        || vm_failed_alerts(&prom),
        |a| a.iter().any(|p| p == "neighbour_reload"),
    );
    let firing = vm_failed_alerts(&prom);
    assert_eq!(firing, ["neighbour_reload"], "only the reloaded plugin");
}

/// Every shared-data key the bundle of `garbage_everywhere` uses (sg_core::keys, with its
/// rule, API and slot names): 16 ratelimit slots (`max_keys` 64), 8 cache slots.
fn bundle_keys() -> Vec<String> {
    let mut k: Vec<String> = vec![keys::LEAD_IDS.into()];
    for task in [
        "hotkey",
        "simplepage",
        "breaker",
        "sli:inbound",
        "sli:outbound",
    ] {
        k.push(keys::lease(task));
    }
    k.extend((0..16).map(|s| keys::rl_slot("per_list", s)));
    k.extend([
        keys::hk_view("post_view"),
        keys::HK_SHED.into(),
        keys::HK_BLOCKLIST.into(),
        keys::HK_DIVERT.into(),
    ]);
    k.extend([
        keys::sp_load("post_view"),
        keys::SP_STATE.into(),
        keys::SP_OPLIST.into(),
        keys::SP_INBOUND.into(),
        keys::SP_CACHE_BYTES.into(),
    ]);
    k.extend((0..8).map(keys::sp_cache));
    k.extend((0..8).map(keys::sp_lock));
    let api = "outbound_api";
    k.extend([
        keys::br_state(api),
        keys::br_window(api),
        keys::br_slots(api),
        keys::BR_FLAGS.into(),
        keys::BR_OPEN.into(),
    ]);
    for d in ["inbound", "outbound"] {
        k.push(keys::sli_top(d));
        k.push(keys::sli_sum(d));
    }
    k
}

/// The whole bundle (sli, hotkey with a divert rule, simplepage, ratelimit; sli_egress and
/// breaker on egress), two workers, and a neighbour with `cfg`.
fn whole_bundle_with(cfg: Value) -> Stack {
    let mut b = Bundle::load().unwrap_or_else(|e| panic!("{e}"));
    let mut own = |f: &str| b.filter_config(f).unwrap_or_else(|| panic!("no {f}"));
    let (sli, sli_egress, mut sp) = (own("sli"), own("sli_egress"), own("simplepage"));
    sp["cache"]["slots"] = json!(8);
    let api = json!({"name": "outbound_api", "cluster": "outbound_api", "authority": ["localhost"],
        "match": {"path_prefix": "/api/"}, "window": {"count": 10}, "failure_rate_percent": 50,
        "min_calls": 5, "wait_open_ms": 10000, "half_open_calls": 1,
        "fallback": {"status": 200, "body": "[]"}});
    let filters = [
        ("sli", sli),
        ("hotkey", hotkey_rule(json!({"divert": {}}))),
        ("simplepage", sp),
        ("ratelimit", ratelimit_cfg()),
        ("sli_egress", sli_egress),
        ("breaker", json!({"tick_ms": 100, "apis": [api]})),
    ];
    let n = neighbour("neighbour", cfg, "FAIL_OPEN");
    Stack::start_with(&filters, 2, sg_e2e::ample("main"), |b| {
        b.prepend_http_filter("ingress", n)
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// No VM of the bundle failed: no reload stat moved and the log has no trap.
fn assert_no_trap(e: &Envoy) {
    let w = wasm_stats(e);
    let moved: Vec<_> = w
        .iter()
        .filter(|(k, v)| k.contains(".vm_reload") && **v != 0)
        .collect();
    assert!(moved.is_empty(), "{moved:?}");
    let log = e.log();
    for needle in ["Uncaught", "panicked at", "failed: "] {
        assert!(
            !log.contains(needle),
            "{needle:?} in the log:\n{}",
            e.log_tail(40)
        );
    }
}

/// After garbage: the bundle still limits, still detects a hot key (diverted by simplepage),
/// still opens a breaker on a failing API.
fn assert_still_protecting(s: &Stack, tag: &str) {
    assert_eq!(
        statuses(s, &format!("/PostList?blogId={tag}"), 4),
        [200, 200, 200, 429],
        "ratelimit after {tag}"
    );
    // (sli removes x-spikeguard-action: the simple-page backend's own header tells.)
    let diverted = hot_load(s, &format!("hot{tag}"), "x-upstream", "simple");
    assert!(diverted > 0, "no hot-key request diverted after {tag}");
    s.app.set_error_rate(1.0, 503);
    eventually("the breaker opens", STATS, || {
        let r = s.egress_get("/api/json");
        // The fallback (sli_egress removes x-spikeguard-action): `[]`, not from the API.
        if r.body == "[]" && r.header("x-upstream").is_none() {
            Ok(())
        } else {
            Err((r.status, s.envoy.stats_matching("sg.breaker")))
        }
    });
    s.app.set_error_rate(0.0, 503);
}

#[test]
fn garbage_in_every_sg_key_is_counted_and_the_bundle_keeps_protecting() {
    let keys = bundle_keys();
    let s = whole_bundle_with(json!({"keys": keys, "huge_bytes": 256 * 1024}));
    // Traffic first, so every key holds a real value to truncate or to give a wrong version.
    for i in 0..3 {
        assert_eq!(s.get(&format!("/PostView?blogId=w{i}")).status, 200);
        assert_eq!(s.get(&format!("/PostList?blogId=w{i}")).status, 200);
        assert_eq!(s.egress_get("/api/json").status, 200);
    }
    let seen = "wasmcustom.sg.hotkey.post_view.seen";
    let sp_seen = "wasmcustom.sg.simplepage.post_view.seen";
    let rl_allowed = "wasmcustom.sg.ratelimit.per_list.allowed";
    let br_ok = "wasmcustom.sg.breaker.outbound_api.success";
    for (n, variant) in (4..).zip(sg_testmod_trap::VARIANTS) {
        let r = tell(&s, "x-neighbour", &format!("garbage:{variant}"))
            .unwrap_or_else(|| panic!("the neighbour did not answer"));
        assert_eq!(r["written"], keys.len(), "{variant}: {r}");
        // Every filter's request path and tick meet the garbage: a page and a list request,
        // an API call, answered as usual; each filter's counters flushed on a later tick.
        assert_eq!(
            s.get(&format!("/PostView?blogId={variant}")).status,
            200,
            "{variant}"
        );
        assert_eq!(
            s.get(&format!("/PostList?blogId={variant}")).status,
            200,
            "{variant}"
        );
        assert_eq!(s.egress_get("/api/json").status, 200, "{variant}");
        for stat in [seen, sp_seen, rl_allowed, br_ok] {
            s.envoy.wait_stat(stat, STATS, |v| v >= n);
        }
        eprintln!("after {variant}: bad_state {:?}", bad_states(&s.envoy));
    }
    assert_no_trap(&s.envoy);
    // Every filter counted what it could not decode (sli flushes its counters on its 1 s
    // tick, before that tick's merge: its count shows a tick later).
    for f in ["hotkey", "simplepage", "ratelimit", "breaker", "sli"] {
        let stat = format!("wasmcustom.sg.{f}.bad_state");
        s.envoy.wait_stat(&stat, STATS, |v| v > 0);
    }
    eprintln!("bad_state after all variants: {:?}", bad_states(&s.envoy));
    assert_still_protecting(&s, "g");
    assert_no_trap(&s.envoy);
}

/// `wasmcustom.sg.<filter>.bad_state` by filter.
fn bad_states(e: &Envoy) -> BTreeMap<String, i64> {
    e.stats_matching("bad_state")
        .into_iter()
        .filter_map(|(k, v)| {
            let f = k
                .strip_prefix("wasmcustom.sg.")?
                .strip_suffix(".bad_state")?;
            Some((f.to_string(), v))
        })
        .collect()
}

/// The keys every worker of the bundle writes with CAS on its request path or tick.
fn contended_keys() -> Vec<String> {
    let mut k: Vec<String> = (0..16).map(|s| keys::rl_slot("per_list", s)).collect();
    let api = "outbound_api";
    k.extend([
        keys::hk_view("post_view"),
        keys::sp_load("post_view"),
        keys::br_state(api),
        keys::br_window(api),
        keys::br_slots(api),
        keys::sli_sum("inbound"),
        keys::lease("hotkey"),
    ]);
    k
}

/// The shared-data trouble counters of every filter (`cas_giveup`, `store_error`, and the
/// per-rule and per-purpose ones), those not zero.
fn trouble(e: &Envoy) -> BTreeMap<String, i64> {
    let mut t = e.stats_matching("cas_giveup");
    t.extend(e.stats_matching("store_error"));
    t.extend(e.stats_matching("merge_failed"));
    t.extend(e.stats_matching("store_failed"));
    t.retain(|k, v| k.starts_with("wasmcustom.sg.") && *v != 0);
    t
}

#[test]
fn shared_data_filled_and_fought_over_by_a_neighbour_the_bundle_keeps_protecting() {
    // On every tick (20 ms, each worker) the neighbour rewrites each contended key 10 times,
    // each write a compare-and-swap that makes every concurrent writer's CAS fail.
    let s = whole_bundle_with(
        json!({"keys": contended_keys(), "tick_ms": 20, "on_tick": ["cas"],
        "cas_rounds": 10, "fill": {"keys": 1, "bytes": 1}}),
    );
    let rss = s.envoy.rss_kib();
    // Envoy's shared data has no bound (proxy-wasm-cpp-host's SharedData::set fails only on a
    // CAS mismatch): "full" is the neighbour's memory. 64 MiB in 256 large values, then
    // 50,000 small keys: every set succeeds.
    for (n, bytes) in [(256, 256 * 1024), (50_000, 64)] {
        let r = tell(&s, "x-neighbour", &format!("fill:{n}:{bytes}"))
            .unwrap_or_else(|| panic!("the neighbour did not answer"));
        assert_eq!(
            (r["written"].as_u64(), r["failed"].as_u64()),
            (Some(n), Some(0)),
            "{r}"
        );
    }
    eprintln!(
        "Envoy RSS {rss} KiB before the fill, {} KiB after",
        s.envoy.rss_kib()
    );
    // The fight is on: the neighbour's ticks win CAS races.
    until_true("the neighbour's ticks run", STATS, || {
        tell(&s, "x-neighbour", "cas").is_some_and(|r| r["written"].as_u64().unwrap_or(0) > 0)
    });
    assert_still_protecting(&s, "f");
    assert_no_trap(&s.envoy);
    eprintln!("shared-data trouble counted: {:?}", trouble(&s.envoy));
}
