//! End-to-end tests of the `breaker` filter (circuit breaker, bulkhead and flags per outbound
//! API) in a real Envoy 1.40, on the bundle's egress listener in front of a demo upstream that
//! plays the outbound API (`outbound_api` cluster, its `/api/json`).
//!
//! Nothing here depends on the machine's speed: every wait is for an observable condition
//! (a breaker stat, an upstream counter, an answer) with a generous deadline, and every
//! assertion about time is a bound the filter promises whatever the speed (no probe before
//! `wait_open_ms`, no call longer than the route timeout). A call "reached" the API when the
//! upstream's request counter moved while it was in flight; the calls that check this are
//! sequential, so the counter is exact.

use serde_json::{json, Value};
use sg_e2e::envoy::{write_ecds, Bundle};
use sg_e2e::http::{self, Response};
use sg_e2e::upstream::Upstream;
use sg_e2e::wait::{eventually, eventually_every, until};
use sg_e2e::{ample, Stack};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const API: &str = "outbound_api";
const PATH: &str = "/api/json?x=test";
/// Deadline of every wait for a stat or a state (the filter promises about a tick).
const STATS: Duration = Duration::from_secs(10);
/// Deadline of waits that include a breaker's open wait (1-2 s in these configs).
const LONG: Duration = Duration::from_secs(20);
/// Envoy's clock (the filter's) against the test's, for lower bounds on waits.
const CLOCK_SLACK: Duration = Duration::from_millis(50);
/// The open wait of most configs here.
const WAIT_OPEN: Duration = Duration::from_millis(1000);

/// `.state` gauge values.
const CLOSED: i64 = 0;
const OPEN: i64 = 1;
const DISABLED: i64 = 3;
const METRICS_ONLY: i64 = 4;
const FORCED_OPEN: i64 = 5;

fn stat_name(api: &str, what: &str) -> String {
    format!("wasmcustom.sg.breaker.{api}.{what}")
}

/// The test API: `outbound_api`, GETs under `/api/` with the test client's authority, opening
/// at 50% failures (or 80% slow calls over 150 ms, half the bundle's egress route timeout) once 10 calls are in, open for 1 s, 3
/// probes; fallback `200 []` (JSON). `over` replaces fields.
fn api_cfg(over: Value) -> Value {
    let mut a = json!({
        "name": API, "cluster": "outbound_api", "authority": ["localhost"],
        "match": {"path_prefix": "/api/", "methods": ["GET"]},
        "slow_call_ms": 150, "window": {"count": 20}, "failure_rate_percent": 50,
        "slow_call_rate_percent": 80, "min_calls": 10, "wait_open_ms": WAIT_OPEN.as_millis() as u64,
        "half_open_calls": 3,
        "fallback": {"status": 200, "headers": {"content-type": "application/json"}, "body": "[]"}
    });
    if let (Some(a), Value::Object(o)) = (a.as_object_mut(), over) {
        a.extend(o);
    }
    a
}

/// The filter config: 50 ms ticks, flags polled every 100 ms from the test's control plane
/// (`/blocklist/breaker`, default `{"entries":[]}`), alerts posted to it.
/// `state_cache_ms: 0`: these tests send a call right after seeing a transition in the
/// stats, so every worker reads the shared state on every call (the default 10 ms cache is
/// tested natively, on a fake clock, in filters/breaker/tests/filter.rs).
fn breaker(apis: Vec<Value>) -> Value {
    json!({"tick_ms": 50, "state_cache_ms": 0, "apis": apis,
        "operator": {"cluster": "spikeguard_control", "path": "/blocklist/breaker", "poll_ms": 100},
        "alert": {"webhook_cluster": "spikeguard_control", "webhook_path": "/hook"}})
}

/// One call through the egress listener.
#[derive(Debug, Clone)]
struct Call {
    status: u16,
    action: Option<String>,
    reason: Option<String>,
    content_type: Option<String>,
    retry_after: Option<String>,
    body: String,
    sent: Instant,
    done: Instant,
    /// The API's request counter moved while the call was in flight.
    reached: bool,
}

impl Call {
    fn of(r: &Response, sent: Instant, done: Instant, reached: bool) -> Call {
        let h = |n: &str| r.header(n).map(str::to_string);
        Call {
            status: r.status,
            action: h("x-spikeguard-action"),
            reason: h("x-spikeguard-reason"),
            content_type: h("content-type"),
            retry_after: h("retry-after"),
            body: if r.body.len() > 200 {
                format!("{}...", &r.body[..200])
            } else {
                r.body.clone()
            },
            sent,
            done,
            reached,
        }
    }

    fn fallback(&self) -> bool {
        self.action.as_deref() == Some("breaker")
    }

    fn fallback_for(&self, reason: &str) -> bool {
        self.fallback() && self.reason.as_deref() == Some(reason)
    }
}

/// Envoy (only the breaker filter) with its egress `outbound_api` cluster pointed at an API
/// upstream the test controls: it can be killed and started again on the same port. Field
/// order matters: Envoy is dropped (killed) first.
struct Egress {
    s: Stack,
    api: Option<Upstream>,
    api_port: u16,
    /// The bundle's egress route timeout.
    route_timeout: Duration,
}

impl Egress {
    fn start(cfg: Value, concurrency: u32) -> Egress {
        Self::start_with(cfg, concurrency, |_| {})
    }

    fn start_with(cfg: Value, concurrency: u32, edit: impl FnOnce(&mut Bundle)) -> Egress {
        let api = Upstream::start(ample("api")).unwrap_or_else(|e| panic!("api upstream: {e}"));
        let api_port = api.port;
        let mut route_timeout = None;
        let s = Stack::start_with(&[("breaker", cfg)], concurrency, ample("main"), |b| {
            b.set_cluster_port("outbound_api", api_port)
                .unwrap_or_else(|e| panic!("{e}"));
            route_timeout = Some(egress_route_timeout(b));
            edit(b);
        });
        Egress {
            s,
            api: Some(api),
            api_port,
            route_timeout: route_timeout.unwrap_or_else(|| panic!("no route timeout")),
        }
    }

    fn port(&self) -> u16 {
        self.s.egress()
    }

    fn api(&self) -> &Upstream {
        self.api
            .as_ref()
            .unwrap_or_else(|| panic!("the API upstream is down"))
    }

    fn api_total(&self) -> u64 {
        self.api.as_ref().map_or(0, |a| a.stats().total)
    }

    fn api_in_flight(&self) -> u64 {
        self.api.as_ref().map_or(0, |a| a.stats().in_flight)
    }

    /// Stops the API upstream: its listener and every connection to it close (what Envoy sees
    /// when the API's process dies).
    fn kill_api(&mut self) {
        drop(self.api.take());
    }

    /// Starts the API again on its port.
    fn restart_api(&mut self) {
        let up = Upstream::start_on(ample("api"), self.api_port)
            .unwrap_or_else(|e| panic!("restart api upstream: {e}"));
        self.api = Some(up);
    }

    /// One sequential request through `send`, with whether it reached the API.
    fn observe(&self, send: impl FnOnce(u16) -> std::io::Result<Response>) -> Call {
        let before = self.api_total();
        let sent = Instant::now();
        let r = send(self.port()).unwrap_or_else(|e| panic!("egress request: {e}"));
        let done = Instant::now();
        Call::of(&r, sent, done, self.api_total() > before)
    }

    fn call(&self, path: &str) -> Call {
        self.observe(|port| http::get(port, path))
    }

    /// A GET with a raw `Host` header (the test client always sends `localhost`).
    fn call_host(&self, host: &str, path: &str) -> Call {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        self.observe(|port| http::raw(port, req.as_bytes()))
    }

    fn stat_of(&self, api: &str, what: &str) -> i64 {
        self.s.envoy.stat(&stat_name(api, what))
    }

    fn stat(&self, what: &str) -> i64 {
        self.stat_of(API, what)
    }

    #[track_caller]
    fn wait_stat_of(&self, api: &str, what: &str, pred: impl Fn(i64) -> bool) -> i64 {
        self.s.envoy.wait_stat(&stat_name(api, what), STATS, pred)
    }

    #[track_caller]
    fn wait_stat(&self, what: &str, pred: impl Fn(i64) -> bool) -> i64 {
        self.wait_stat_of(API, what, pred)
    }

    /// Waits until the flags endpoint was polled `n` more times: the lease holder's ticks
    /// (every 2 ticks at poll_ms 100, tick_ms 50) have run since, judging what was merged.
    fn ticks_pass(&self, n: u64) {
        let p = self.s.control.polls();
        until(
            "operator polls (lease holder ticks)",
            STATS,
            || self.s.control.polls(),
            |v| *v >= p + n,
        );
    }

    /// Calls until the first fallback; every earlier call must have reached the API with
    /// `status`. Returns (calls that reached it, when the last of them was sent, the first
    /// fallback).
    fn calls_until_open(&self, status: u16) -> (u64, Instant, Call) {
        let mut passed = 0u64;
        let mut last_pass = Instant::now();
        let fb = eventually_every(
            "the breaker to open",
            LONG,
            Duration::from_millis(5),
            || {
                let c = self.call(PATH);
                if c.fallback() {
                    return Ok(c);
                }
                assert!(c.reached && c.status == status, "{c:?}");
                passed += 1;
                last_pass = c.sent;
                Err(passed)
            },
        );
        (passed, last_pass, fb)
    }

    /// Calls (every 20 ms) until one reaches the API: the first probe. Every call before it
    /// must be an `open` fallback; returns (those fallbacks, the probe).
    fn calls_until_probe(&self) -> (u64, Call) {
        let mut saved = 0u64;
        let probe = eventually_every(
            "a probe to reach the API",
            LONG,
            Duration::from_millis(20),
            || {
                let c = self.call(PATH);
                if c.reached {
                    return Ok(c);
                }
                assert!(c.fallback_for("open"), "{c:?}");
                saved += 1;
                Err(saved)
            },
        );
        (saved, probe)
    }

    /// `n` concurrent GETs of `path`, one connection each, answers sent on the channel.
    fn fire(&self, n: usize, path: &str) -> mpsc::Receiver<(Result<Response, String>, Duration)> {
        let (tx, rx) = mpsc::channel();
        for _ in 0..n {
            let (tx, port, path) = (tx.clone(), self.port(), path.to_string());
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = http::get(port, &path).map_err(|e| e.to_string());
                let _ = tx.send((r, t.elapsed()));
            });
        }
        rx
    }

    /// Bulkhead exactness: with the API holding every request, `max + extra` concurrent calls
    /// on separate connections; exactly `max` reach the API (never one more) and `extra` get
    /// the `bulkhead` fallback; then the held ones are answered and every slot comes back.
    fn burst(&self, api: &str, path: &str, max: u64, extra: usize) {
        self.burst_with(api, path, max, extra, true)
    }

    /// [`Egress::burst`]; `gauge`: also wait for the `in_flight` gauge to read `max` while
    /// the calls are held.
    fn burst_with(&self, api: &str, path: &str, max: u64, extra: usize, gauge: bool) {
        until("the API idle", STATS, || self.api_in_flight(), |v| *v == 0);
        let rejected_before = self.stat_of(api, "bulkhead_rejected");
        let total = self.api_total();
        self.api().hold();
        let rx = self.fire(max as usize + extra, path);
        let mut answered = Vec::new();
        eventually("max held at the API and the rest answered", STATS, || {
            while let Ok(a) = rx.try_recv() {
                answered.push(a);
            }
            let held = self.api_in_flight();
            assert!(
                held <= max,
                "{held} calls in flight at the API, bulkhead {max}"
            );
            if held == max && answered.len() == extra {
                Ok(())
            } else {
                Err((held, answered.len()))
            }
        });
        assert_eq!(self.api_total() - total, max, "calls that reached the API");
        for (r, _) in &answered {
            let r = r.as_ref().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                (
                    r.header("x-spikeguard-action"),
                    r.header("x-spikeguard-reason")
                ),
                (Some("breaker"), Some("bulkhead")),
                "{r:?}"
            );
        }
        self.wait_stat_of(api, "bulkhead_rejected", |v| {
            v == rejected_before + extra as i64
        });
        if gauge {
            self.wait_stat_of(api, "in_flight", |v| v == max as i64);
        }
        self.api().release();
        for _ in 0..max {
            let (r, _) = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("a held call never came back: {e}"));
            let r = r.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((r.status, r.header("x-spikeguard-action")), (200, None));
        }
        self.wait_stat_of(api, "in_flight", |v| v == 0);
        assert_eq!(self.api_total() - total, max);
    }
}

/// The bundle's egress route timeout (`1s`, `0.5s`, `250ms`).
fn egress_route_timeout(b: &mut Bundle) -> Duration {
    let rc = b
        .route_config_mut("egress")
        .unwrap_or_else(|| panic!("no egress listener"));
    let t = rc
        .pointer("/virtual_hosts/0/routes/0/route/timeout")
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("the egress route has no timeout: {rc}"))
        .to_string();
    let secs = if let Some(ms) = t.strip_suffix("ms") {
        ms.parse::<f64>().map(|v| v / 1000.0)
    } else {
        t.trim_end_matches('s').parse::<f64>()
    };
    let secs = secs.unwrap_or_else(|e| panic!("route timeout {t:?}: {e}"));
    assert!(secs > 0.0, "the egress route must have a timeout: {t}");
    Duration::from_secs_f64(secs)
}

/// For tests that hold calls at the API for as long as they need: the egress route's timeout
/// becomes 60 s, and `/api/cut...` keeps the bundle's timeout (a route of its own) for the
/// calls a test wants cut by it.
fn hold_routes(b: &mut Bundle) {
    let rc = b
        .route_config_mut("egress")
        .unwrap_or_else(|| panic!("no egress listener"));
    let routes = rc
        .pointer_mut("/virtual_hosts/0/routes")
        .and_then(Value::as_array_mut)
        .unwrap_or_else(|| panic!("no egress routes"));
    let mut cut = routes[0].clone();
    routes[0]["route"]["timeout"] = json!("60s");
    cut["name"] = json!("api_cut");
    cut["match"] = json!({"prefix": "/api/cut"});
    routes.insert(0, cut);
}

/// Names the egress listener's stats `listener.egress.*` (per worker:
/// `listener.egress.worker_<n>.downstream_cx_total`).
fn egress_listener_stats(b: &mut Bundle) {
    let ls = b.doc["static_resources"]["listeners"].as_array_mut();
    for l in ls.into_iter().flatten() {
        if l["name"] == "egress" {
            l["stat_prefix"] = json!("egress");
        }
    }
}

/// While the breaker is certainly still OPEN, a matching call gets the `open` fallback and
/// never reaches the API. Certainly: answered before `wait_open` has passed since the last
/// call that reached the API was sent (the breaker opened after letting that one through).
/// Later calls may be probes; returns whether `c` was checked.
fn check_open(c: &Call, last_pass: Instant, wait_open: Duration) -> bool {
    if c.done + CLOCK_SLACK < last_pass + wait_open {
        assert!(c.fallback_for("open") && !c.reached, "{c:?}");
        true
    } else {
        false
    }
}

fn alert_logged(e: &Egress, state: &str) {
    e.s.envoy.wait_log(
        &format!("spikeguard alert filter=breaker rule={API} key=\"{state}\""),
        STATS,
    );
}

#[test]
fn failures_open_the_breaker_probes_close_it_and_failing_probes_reopen_it_with_backoff() {
    let cfg = breaker(vec![api_cfg(
        json!({"backoff": {"multiplier": 2.0, "max_wait_ms": 60000}}),
    )]);
    let e = Egress::start(cfg, 2);

    // Healthy: counted as successes.
    for _ in 0..5 {
        let c = e.call(PATH);
        assert!(c.reached && c.status == 200 && c.action.is_none(), "{c:?}");
    }
    // 4xx are the caller's fault: ignored, not calls of the window. Were they failures, 12
    // of 17 calls (70%) would open the breaker on the next ticks.
    e.api().set_error_rate(1.0, 404);
    for _ in 0..12 {
        let c = e.call(PATH);
        assert!(c.reached && c.status == 404 && c.action.is_none(), "{c:?}");
    }
    e.wait_stat("ignored", |v| v == 12);
    e.wait_stat("success", |v| v == 5);
    e.ticks_pass(3);
    assert_eq!(
        (e.stat("state"), e.stat("opened"), e.stat("failure")),
        (CLOSED, 0, 0)
    );

    // The API fails: 503 on every call.
    e.api().set_error_rate(1.0, 503);
    let failing = Instant::now();
    let (failed, last_pass, first) = e.calls_until_open(503);
    let to_open = first.done - failing;
    // min_calls 10 with 5 successes in the window: at least 5 failures (50%) first.
    assert!(failed >= 5, "opened after {failed} failures");
    assert_eq!(
        (
            first.status,
            first.body.as_str(),
            first.content_type.as_deref(),
            first.reason.as_deref()
        ),
        (200, "[]", Some("application/json"), Some("open")),
        "{first:?}"
    );
    assert!(!first.reached);
    e.wait_stat("state", |v| v == OPEN);
    assert_eq!(e.wait_stat("opened", |v| v == 1), 1);
    e.s.envoy
        .wait_stat("wasmcustom.sg.breaker.open_apis", STATS, |v| v == 1);
    alert_logged(&e, "open");

    // Requests the API does not match pass untouched while it is open: another method,
    // another path, another authority. The authority is matched without its port.
    let post = e.observe(|p| http::request(p, "POST", PATH, &[], b""));
    let other_path = e.call("/other?x=1");
    let other_host = e.call_host("other.example", PATH);
    for c in [&post, &other_path, &other_host] {
        assert!(c.reached && c.status == 503 && c.action.is_none(), "{c:?}");
    }
    let with_port = e.call_host("localhost:8080", PATH);
    check_open(&with_port, last_pass, WAIT_OPEN);

    // While open: the fallback at once, the API's counter does not move.
    let mut saved = 1u64;
    let mut checked = 0u64;
    for _ in 0..20 {
        let c = e.call(PATH);
        saved += u64::from(c.fallback());
        checked += u64::from(check_open(&c, last_pass, WAIT_OPEN));
    }

    // The API heals. After the open wait (never before), probes go through; three
    // successes close the breaker.
    e.api().set_error_rate(0.0, 503);
    let (more, probe) = e.calls_until_probe();
    saved += more;
    let waited = probe.done - last_pass;
    assert!(
        waited + CLOCK_SLACK >= WAIT_OPEN,
        "a probe {waited:?} after the opening"
    );
    assert_eq!((probe.status, probe.action.as_deref()), (200, None));
    let mut probes = 1u64;
    eventually_every(
        "the breaker closed",
        LONG,
        Duration::from_millis(20),
        || {
            if e.stat("state") == CLOSED {
                return Ok(());
            }
            let c = e.call(PATH);
            if c.reached {
                probes += 1;
            } else {
                assert!(c.fallback_for("half_open"), "{c:?}");
            }
            Err(probes)
        },
    );
    for _ in 0..10 {
        let c = e.call(PATH);
        assert!(c.reached && c.status == 200 && c.action.is_none(), "{c:?}");
    }
    assert_eq!(e.stat("opened"), 1);
    assert!(e.wait_stat("transitions", |v| v >= 3) >= 3);
    e.s.envoy
        .wait_stat("wasmcustom.sg.breaker.open_apis", STATS, |v| v == 0);
    alert_logged(&e, "closed");
    let hooks = e.s.control.hooks();
    assert!(
        hooks
            .iter()
            .any(|h| h.contains(API) && h.contains("key `open`")),
        "{hooks:#?}"
    );
    eprintln!(
        "breaker: opened {} ms after the API began failing ({failed} failed calls reached it); \
         {saved} calls answered by the fallback while open ({checked} checked within the open \
         wait); first probe {} ms after the opening; {probes} call(s) reached it before the state gauge read CLOSED",
        to_open.as_millis(),
        waited.as_millis()
    );

    // Again, and this time the probes fail too: exactly half_open_calls (3) probes, then OPEN
    // again, for twice as long (backoff multiplier 2).
    e.api().set_error_rate(1.0, 503);
    let (failed2, last_pass2, first2) = e.calls_until_open(503);
    assert!(first2.fallback_for("open"), "{first2:?}");
    e.wait_stat("opened", |v| v == 2);
    let (_, probe) = e.calls_until_probe();
    let waited2 = probe.done - last_pass2;
    assert!(waited2 + CLOCK_SLACK >= WAIT_OPEN, "{waited2:?}");
    assert_eq!((probe.status, probe.action.as_deref()), (503, None));
    let mut probes = vec![probe];
    let reopened = eventually_every(
        "the breaker to reopen",
        LONG,
        Duration::from_millis(5),
        || {
            let c = e.call(PATH);
            if c.fallback_for("open") {
                return Ok(c);
            }
            if c.reached {
                probes.push(c);
            } else {
                assert!(c.fallback_for("half_open"), "{c:?}");
            }
            Err(probes.len())
        },
    );
    assert_eq!(probes.len(), 3, "probes let through: {probes:#?}");
    assert!(!reopened.reached);
    e.wait_stat("opened", |v| v == 3);
    let last_probe = probes.iter().map(|p| p.sent).max().unwrap_or(last_pass2);
    let (_, probe) = e.calls_until_probe();
    let waited3 = probe.done - last_probe;
    assert!(
        waited3 + CLOCK_SLACK >= 2 * WAIT_OPEN,
        "probe {waited3:?} after the second consecutive opening (backoff x2)"
    );
    eprintln!(
        "breaker: reopened after {failed2} failed calls; first probe {} ms after; 3 failed \
         probes -> OPEN; next probe {} ms after the reopening (backoff)",
        waited2.as_millis(),
        waited3.as_millis()
    );
}

#[test]
fn slow_calls_open_the_breaker_and_fast_probes_close_it() {
    // Slow = over 100 ms; the API answers after 200 ms, inside the route timeout (300 ms).
    let e = Egress::start(breaker(vec![api_cfg(json!({"slow_call_ms": 100}))]), 2);
    assert!(
        e.route_timeout > Duration::from_millis(250),
        "{:?}",
        e.route_timeout
    );
    // Slow and failing: counted as slow failures.
    e.api().set_latency_ms(200);
    e.api().set_error_rate(1.0, 503);
    for _ in 0..2 {
        let c = e.call(PATH);
        assert!(c.reached && c.status == 503, "{c:?}");
    }
    e.wait_stat("slow_failure", |v| v == 2);
    // Slow but successful, 10 at a time, until the breaker opens on the slow-call rate.
    e.api().set_error_rate(0.0, 503);
    let started = Instant::now();
    let mut slow_calls = 0u64;
    let mut last_pass = Instant::now();
    let first = eventually_every(
        "the breaker to open on slow calls",
        LONG,
        Duration::from_millis(1),
        || {
            let before = e.api_total();
            let sent = Instant::now();
            let rx = e.fire(10, PATH);
            let answers: Vec<_> = (0..10)
                .map(|_| {
                    rx.recv_timeout(Duration::from_secs(30))
                        .unwrap_or_else(|err| panic!("{err}"))
                })
                .collect();
            let reached = e.api_total() - before;
            slow_calls += reached;
            if reached > 0 {
                last_pass = sent;
            }
            let fb = answers.iter().find_map(|(r, _)| {
                let r = r.as_ref().unwrap_or_else(|err| panic!("{err}"));
                (r.header("x-spikeguard-action") == Some("breaker")).then(|| r.clone())
            });
            fb.ok_or(slow_calls)
        },
    );
    assert_eq!(
        first.header("x-spikeguard-reason"),
        Some("open"),
        "{first:?}"
    );
    assert!(slow_calls >= 10, "opened after {slow_calls} slow calls");
    e.wait_stat("state", |v| v == OPEN);
    assert!(e.wait_stat("slow", |v| v >= 10) >= 10);
    assert_eq!((e.stat("failure"), e.stat("success")), (0, 0));
    let c = e.call(PATH);
    check_open(&c, last_pass, WAIT_OPEN);
    eprintln!(
        "breaker: opened on slow calls {} ms after they began ({slow_calls} slow calls)",
        started.elapsed().as_millis()
    );
    // Fast again: the probes are fast successes and close it.
    e.api().set_latency_ms(0);
    let (_, probe) = e.calls_until_probe();
    assert!(probe.done - last_pass + CLOCK_SLACK >= WAIT_OPEN);
    eventually_every(
        "the breaker closed",
        LONG,
        Duration::from_millis(20),
        || {
            let c = e.call(PATH);
            if e.stat("state") == CLOSED {
                Ok(())
            } else {
                Err(Box::new(c))
            }
        },
    );
    let c = e.call(PATH);
    assert!(c.reached && c.status == 200 && c.action.is_none(), "{c:?}");
    assert_eq!(e.stat("opened"), 1);
}

/// One call of a load run.
#[derive(Debug, Clone)]
struct Rec {
    sent: Instant,
    took: Duration,
    status: u16,
    reason: Option<String>,
    error: Option<String>,
}

/// `until` on a counter shared with the caller threads.
fn wait_count(what: &str, n: &AtomicU64, at_least: u64) {
    until(what, LONG, || n.load(Ordering::SeqCst), |v| *v >= at_least);
}

#[test]
fn a_hung_or_killed_api_opens_the_breaker_and_no_call_outlasts_the_route_timeout() {
    let mut e = Egress::start(breaker(vec![api_cfg(json!({}))]), 2);
    // Four callers, each one call at a time with a 5 ms pause (at most ~800 calls/s).
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let saved = Arc::new(AtomicU64::new(0));
    let port = e.port();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, saved) = (stop.clone(), ok.clone(), saved.clone());
            std::thread::spawn(move || {
                let mut recs = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let r = http::get(port, PATH);
                    let took = sent.elapsed();
                    let rec = match r {
                        Ok(r) => {
                            match r.header("x-spikeguard-action") {
                                None if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                                Some(_) => saved.fetch_add(1, Ordering::SeqCst),
                                None => 0,
                            };
                            Rec {
                                sent,
                                took,
                                status: r.status,
                                reason: r.header("x-spikeguard-reason").map(str::to_string),
                                error: None,
                            }
                        }
                        Err(err) => Rec {
                            sent,
                            took,
                            status: 0,
                            reason: None,
                            error: Some(err.to_string()),
                        },
                    };
                    recs.push(rec);
                    std::thread::sleep(Duration::from_millis(5));
                }
                recs
            })
        })
        .collect();
    wait_count("100 calls answered by the API", &ok, 100);

    // 1. The API hangs: it takes every call and never answers. The route timeout cuts each
    // (504, UT), the breaker counts them and opens; then the fallback comes at once.
    let hung = Instant::now();
    e.api().hold();
    e.s.envoy
        .wait_stat(&stat_name(API, "state"), LONG, |v| v == OPEN);
    let hung_open = hung.elapsed();
    wait_count("20 fallbacks", &saved, saved.load(Ordering::SeqCst) + 20);
    let answering = Instant::now();
    e.api().release();
    e.s.envoy
        .wait_stat(&stat_name(API, "state"), LONG, |v| v == CLOSED);
    wait_count(
        "50 more calls answered",
        &ok,
        ok.load(Ordering::SeqCst) + 50,
    );

    // 2. The API's process dies: connections refused (UF) and reset (UC), the breaker
    // opens; it comes back on the same port, the probes find it and close the breaker.
    e.kill_api();
    // From here on no call can reach the API (its listener is closed).
    let killed = Instant::now();
    e.wait_stat("state", |v| v == OPEN);
    let killed_open = killed.elapsed();
    wait_count("20 fallbacks", &saved, saved.load(Ordering::SeqCst) + 20);
    // Calls answered before this instant cannot have been served by it.
    let restarting = Instant::now();
    e.restart_api();
    e.s.envoy
        .wait_stat(&stat_name(API, "state"), LONG, |v| v == CLOSED);
    wait_count(
        "50 more calls answered",
        &ok,
        ok.load(Ordering::SeqCst) + 50,
    );
    stop.store(true, Ordering::SeqCst);
    let recs: Vec<Rec> = callers
        .into_iter()
        .flat_map(|c| c.join().unwrap_or_else(|_| panic!("caller thread")))
        .collect();

    let errors: Vec<&Rec> = recs.iter().filter(|r| r.error.is_some()).collect();
    assert!(errors.is_empty(), "calls failed at the client: {errors:#?}");
    let max = recs.iter().map(|r| r.took).max().unwrap_or_default();
    let bound = e.route_timeout + Duration::from_secs(2);
    assert!(
        max <= bound,
        "a call took {max:?} (route timeout {:?})",
        e.route_timeout
    );
    let fallback = |r: &Rec| r.status == 200 && r.reason.is_some();
    // While the API hung, a call was cut by the route timeout (504) or got the fallback.
    let during_hang: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.sent > hung && r.sent + r.took < answering)
        .collect();
    for r in &during_hang {
        assert!(
            r.status == 504 && r.reason.is_none() || fallback(r),
            "{r:?}"
        );
    }
    let hang_cut = during_hang.iter().filter(|r| r.status == 504).count();
    let hang_saved = during_hang.iter().filter(|r| fallback(r)).count();
    // While it was dead, a call failed at once at Envoy (503: refused or reset) or got
    // the fallback.
    let down: Vec<&Rec> = recs
        .iter()
        .filter(|r| r.sent > killed && r.sent + r.took < restarting)
        .collect();
    for r in &down {
        assert!(
            r.status == 503 && r.reason.is_none() || fallback(r),
            "{r:?}"
        );
    }
    let down_failed = down.iter().filter(|r| r.status == 503).count();
    let down_saved = down.iter().filter(|r| fallback(r)).count();
    assert!(hang_saved > 0, "no fallback while the API hung");
    assert!(down_saved > 0, "no fallback while the API was down");
    assert!(e.stat("opened") >= 2, "opened {}", e.stat("opened"));
    eprintln!(
        "breaker: API hung -> OPEN in {} ms ({hang_cut} calls cut at the route timeout, \
         {hang_saved} answered by the fallback at once); API killed -> OPEN in {} ms \
         ({down_failed} failed fast at Envoy, {down_saved} answered by the fallback); longest \
         call {} ms (bound {} ms); {} calls in all",
        hung_open.as_millis(),
        killed_open.as_millis(),
        max.as_millis(),
        bound.as_millis(),
        recs.len()
    );
}

/// Egress connections each Envoy worker accepted so far.
fn worker_connections(e: &Egress) -> (i64, i64) {
    let l = "listener.egress";
    (
        e.s.envoy.stat(&format!("{l}.worker_0.downstream_cx_total")),
        e.s.envoy.stat(&format!("{l}.worker_1.downstream_cx_total")),
    )
}

#[test]
fn both_workers_judge_one_merged_window_and_serve_one_state() {
    // Open for 30 s: nothing in this test waits for half-open. Default fallback.
    let mut api = api_cfg(json!({"wait_open_ms": 30000}));
    if let Some(a) = api.as_object_mut() {
        a.remove("fallback");
    }
    let e = Egress::start_with(breaker(vec![api]), 2, egress_listener_stats);
    e.api().set_error_rate(1.0, 503);
    // Exactly min_calls (10) failures, each on a fresh connection, so spread over both
    // workers: neither worker alone has min_calls, only the merged window opens the breaker.
    let (a0, b0) = worker_connections(&e);
    for _ in 0..10 {
        let c = e.call(PATH);
        assert!(c.reached && c.status == 503 && c.action.is_none(), "{c:?}");
    }
    let (a1, b1) = worker_connections(&e);
    eprintln!(
        "breaker: the 10 failures went {} to worker 0, {} to worker 1",
        a1 - a0,
        b1 - b0
    );
    // No more traffic: the ticks merge and judge.
    e.wait_stat("state", |v| v == OPEN);
    // Every call on many fresh connections, whichever worker takes it, gets the fallback.
    for _ in 0..40 {
        let c = e.call(PATH);
        assert!(c.fallback_for("open") && !c.reached, "{c:?}");
        assert_eq!((c.status, c.body.as_str()), (503, "upstream unavailable\n"));
        let retry: u64 = c
            .retry_after
            .as_deref()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no retry-after: {c:?}"));
        assert!((1..=30).contains(&retry), "retry-after {retry}");
    }
    let (a2, b2) = worker_connections(&e);
    assert!(
        a2 > a1 && b2 > b1,
        "the 40 calls were not spread over both workers: {} / {}",
        a2 - a1,
        b2 - b1
    );
    assert_eq!(e.wait_stat("not_permitted", |v| v == 40), 40);
    assert_eq!(e.stat("opened"), 1);
}

#[test]
fn the_bulkhead_admits_exactly_max_concurrent_across_workers() {
    let api = api_cfg(json!({"min_calls": 100, "window": {"count": 100},
        "bulkhead": {"max_concurrent": 4, "max_wait_ms": 0}}));
    let e = Egress::start_with(breaker(vec![api]), 2, hold_routes);
    // The in_flight gauge shows the 4 held calls, then its return to 0.
    e.burst_with(API, PATH, 4, 6, true);
    // The slots came back: the same again.
    e.burst_with(API, PATH, 4, 6, true);
    assert_eq!(e.api().stats().max_in_flight, 4);
    assert_eq!(e.stat("bulkhead_rejected"), 12);
}

#[test]
fn bulkhead_waiters_get_a_freed_slot_or_the_fallback_after_max_wait() {
    let long = json!({"name": "long_wait", "match": {"path_prefix": "/api/long"},
        "min_calls": 100, "window": {"count": 100},
        "bulkhead": {"max_concurrent": 4, "max_wait_ms": 30000}});
    let short = json!({"name": "short_wait", "match": {"path_prefix": "/api/short"},
        "min_calls": 100, "window": {"count": 100},
        "bulkhead": {"max_concurrent": 4, "max_wait_ms": 1000}});
    let e = Egress::start_with(breaker(vec![long, short]), 2, hold_routes);
    let active = || e.s.envoy.stat("http.egress.downstream_rq_active");

    // Two calls wait for a slot while four are held; released, all six are served.
    let total = e.api_total();
    e.api().hold();
    let held = e.fire(4, "/api/long/x");
    until(
        "4 held at the API",
        STATS,
        || e.api_in_flight(),
        |v| *v == 4,
    );
    let waiters = e.fire(2, "/api/long/y");
    until("6 calls at Envoy", STATS, active, |v| *v == 6);
    e.ticks_pass(3);
    assert_eq!(e.api_total() - total, 4, "a waiter reached the API early");
    assert!(waiters.try_recv().is_err(), "a waiter was answered");
    e.api().release();
    for rx in [&held, &held, &held, &held, &waiters, &waiters] {
        let (r, _) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|err| panic!("{err}"));
        let r = r.unwrap_or_else(|err| panic!("{err}"));
        assert_eq!((r.status, r.header("x-spikeguard-action")), (200, None));
    }
    assert_eq!(e.api_total() - total, 6);
    assert_eq!(e.stat_of("long_wait", "bulkhead_rejected"), 0);
    assert!(e.wait_stat_of("long_wait", "bulkhead_waited", |v| v >= 2) >= 2);
    e.wait_stat_of("long_wait", "in_flight", |v| v == 0);

    // A waiter whose slot never comes gets the fallback after max_wait_ms, not before.
    let total = e.api_total();
    e.api().hold();
    let held = e.fire(4, "/api/short/x");
    until(
        "4 held at the API",
        STATS,
        || e.api_in_flight(),
        |v| *v == 4,
    );
    let waiter = e.fire(1, "/api/short/y");
    let (r, took) = waiter
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|err| panic!("{err}"));
    let r = r.unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(
        (
            r.header("x-spikeguard-action"),
            r.header("x-spikeguard-reason")
        ),
        (Some("breaker"), Some("bulkhead")),
        "{r:?}"
    );
    assert!(
        took + CLOCK_SLACK >= Duration::from_millis(1000),
        "refused after {took:?}"
    );
    assert_eq!(e.api_total() - total, 4);
    e.api().release();
    for _ in 0..4 {
        let (r, _) = held
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(r.unwrap_or_else(|err| panic!("{err}")).status, 200);
    }
    e.wait_stat_of("short_wait", "in_flight", |v| v == 0);
    assert_eq!(e.stat_of("short_wait", "bulkhead_rejected"), 1);
    eprintln!(
        "breaker: a bulkhead waiter got the fallback after {} ms (max_wait_ms 1000)",
        took.as_millis()
    );
}

#[test]
fn bulkhead_slots_come_back_after_route_timeouts_client_disconnects_and_upstream_resets() {
    // Never opens here (min_calls 1000): only the bulkhead is under test.
    let api = api_cfg(json!({"min_calls": 1000, "window": {"count": 1000},
        "bulkhead": {"max_concurrent": 4, "max_wait_ms": 0}}));
    let mut e = Egress::start_with(breaker(vec![api]), 2, hold_routes);

    // 1. The route timeout cuts four held calls (504, UT).
    e.api().hold();
    let rx = e.fire(4, "/api/cut?x=1");
    for _ in 0..4 {
        let (r, took) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|err| panic!("{err}"));
        let r = r.unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            (r.status, r.header("x-spikeguard-action")),
            (504, None),
            "{r:?}"
        );
        assert!(took + CLOCK_SLACK >= e.route_timeout, "{took:?}");
        assert!(took <= e.route_timeout + Duration::from_secs(2), "{took:?}");
    }
    e.wait_stat("in_flight", |v| v == 0);
    e.api().release();
    // Failed, and slow too (cut at the route timeout, above slow_call_ms).
    e.wait_stat("slow_failure", |v| v >= 4);
    e.burst(API, PATH, 4, 2);

    // 2. Four clients go away while their calls are held at the API.
    e.api().hold();
    let total = e.api_total();
    let clients: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s =
                TcpStream::connect(("127.0.0.1", e.port())).unwrap_or_else(|err| panic!("{err}"));
            s.write_all(format!("GET {PATH} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
                .unwrap_or_else(|err| panic!("{err}"));
            s
        })
        .collect();
    until(
        "4 calls held at the API",
        STATS,
        || e.api_total() - total,
        |v| *v == 4,
    );
    e.wait_stat("in_flight", |v| v == 4);
    let ignored = e.stat("ignored");
    drop(clients);
    e.wait_stat("in_flight", |v| v == 0);
    // A client gone before its answer is no evidence about the API.
    e.wait_stat("ignored", |v| v >= ignored + 4);
    e.api().release();
    e.burst(API, PATH, 4, 2);

    // 3. The API dies with four calls in flight: Envoy answers 503 (upstream reset).
    e.api().hold();
    let rx = e.fire(4, PATH);
    until(
        "4 held at the API",
        STATS,
        || e.api_in_flight(),
        |v| *v == 4,
    );
    e.kill_api();
    for _ in 0..4 {
        let (r, _) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|err| panic!("{err}"));
        let r = r.unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            (r.status, r.header("x-spikeguard-action")),
            (503, None),
            "{r:?}"
        );
    }
    e.wait_stat("in_flight", |v| v == 0);
    e.restart_api();
    e.burst(API, PATH, 4, 2);
    assert_eq!(e.stat("state"), CLOSED);
}

#[test]
fn operator_flags_force_open_and_metrics_only_apply_without_restart() {
    let e = Egress::start(breaker(vec![api_cfg(json!({"wait_open_ms": 30000}))]), 2);
    let c = e.call(PATH);
    assert!(c.reached && c.status == 200, "{c:?}");
    let flags = |key: &str| {
        e.s.control.set_blocklist(
            200,
            &format!(r#"{{"entries":[{{"rule":"{API}","key":"{key}"}}]}}"#),
            None,
        )
    };

    // force_open: the fallback (reason forced_open) on every call, the API untouched.
    let t = Instant::now();
    flags("force_open");
    let first = eventually_every("forced open", STATS, Duration::from_millis(10), || {
        let c = e.call(PATH);
        if c.fallback() {
            Ok(c)
        } else {
            Err(Box::new(c))
        }
    });
    let applied = first.done - t;
    assert!(first.fallback_for("forced_open"), "{first:?}");
    for _ in 0..20 {
        let c = e.call(PATH);
        assert!(c.fallback_for("forced_open") && !c.reached, "{c:?}");
    }
    assert_eq!(e.wait_stat("state", |v| v == FORCED_OPEN), FORCED_OPEN);
    // Removed: CLOSED again.
    e.s.control.set_blocklist(200, r#"{"entries":[]}"#, None);
    eventually_every("closed again", STATS, Duration::from_millis(10), || {
        let c = e.call(PATH);
        if c.reached && c.status == 200 && c.action.is_none() {
            Ok(())
        } else {
            Err(Box::new(c))
        }
    });
    e.wait_stat("state", |v| v == CLOSED);

    // metrics_only: a failing API is measured and would open, but every call goes through.
    flags("metrics_only");
    e.wait_stat("state", |v| v == METRICS_ONLY);
    e.api().set_error_rate(1.0, 503);
    let mut n = 0;
    eventually_every(
        "a would-open crossing",
        STATS,
        Duration::from_millis(5),
        || {
            let c = e.call(PATH);
            assert!(c.reached && c.status == 503 && c.action.is_none(), "{c:?}");
            n += 1;
            if e.stat("would_open") > 0 && n >= 10 {
                Ok(())
            } else {
                Err(n)
            }
        },
    );
    for _ in 0..10 {
        let c = e.call(PATH);
        assert!(c.reached && c.status == 503 && c.action.is_none(), "{c:?}");
    }
    assert_eq!((e.stat("state"), e.stat("opened")), (METRICS_ONLY, 0));
    // The flag removed with the API still failing: the breaker is a breaker again and opens.
    e.s.control.set_blocklist(200, r#"{"entries":[]}"#, None);
    e.wait_stat("state", |v| v == CLOSED || v == OPEN);
    let (_, _, fb) = e.calls_until_open(503);
    assert!(fb.fallback_for("open"), "{fb:?}");
    assert_eq!(e.wait_stat("opened", |v| v == 1), 1);
    eprintln!(
        "breaker: operator force_open in force {} ms after the endpoint changed (poll 100 ms)",
        applied.as_millis()
    );
}

#[test]
fn config_flags_force_open_and_force_closed_hold_from_the_start() {
    let forced = api_cfg(
        json!({"name": "forced", "match": {"path_prefix": "/api/forced"},
        "flag": "force_open"}),
    );
    let closed = api_cfg(
        json!({"name": "closed", "match": {"path_prefix": "/api/closed"},
        "flag": "force_closed"}),
    );
    let e = Egress::start(breaker(vec![forced, closed]), 2);
    e.api().set_error_rate(1.0, 503);
    // force_open: in force within about a tick of the start, then every call gets the
    // fallback and none reaches the API.
    eventually_every(
        "the config flag in force",
        STATS,
        Duration::from_millis(10),
        || {
            let c = e.call("/api/forced/x");
            if c.fallback() {
                Ok(())
            } else {
                Err(Box::new(c))
            }
        },
    );
    let refused = e.stat_of("forced", "not_permitted");
    for _ in 0..20 {
        let c = e.call("/api/forced/x");
        assert!(c.fallback_for("forced_open") && !c.reached, "{c:?}");
    }
    // force_closed (metrics only): a failing API is measured, crosses the thresholds, and
    // every call still goes through.
    let mut n = 0;
    eventually_every(
        "a would-open crossing",
        STATS,
        Duration::from_millis(5),
        || {
            let c = e.call("/api/closed/x");
            assert!(c.reached && c.status == 503 && c.action.is_none(), "{c:?}");
            n += 1;
            if e.stat_of("closed", "would_open") > 0 && n >= 10 {
                Ok(())
            } else {
                Err(n)
            }
        },
    );
    e.ticks_pass(3);
    for _ in 0..10 {
        let c = e.call("/api/closed/x");
        assert!(c.reached && c.status == 503 && c.action.is_none(), "{c:?}");
    }
    assert_eq!(e.stat_of("closed", "opened"), 0);
    e.wait_stat_of("forced", "not_permitted", |v| v >= refused + 20);
    // Their state gauges: `lease_holder_gauges_show_in_stats`.
}

/// The lease holder publishes the `state`, `in_flight` and `open_apis` gauges; a value it
/// reads first after Envoy starts must show, like any later one.
#[test]
fn lease_holder_gauges_show_in_stats() {
    let forced = api_cfg(
        json!({"name": "forced", "match": {"path_prefix": "/api/forced"},
        "flag": "force_open"}),
    );
    let closed = api_cfg(
        json!({"name": "closed", "match": {"path_prefix": "/api/closed"},
        "flag": "force_closed"}),
    );
    let held = api_cfg(
        json!({"name": "held", "match": {"path_prefix": "/api/held"},
        "min_calls": 100, "window": {"count": 100},
        "bulkhead": {"max_concurrent": 4, "max_wait_ms": 0}}),
    );
    let e = Egress::start_with(breaker(vec![forced, closed, held]), 2, hold_routes);
    eventually_every(
        "force_open in force",
        STATS,
        Duration::from_millis(10),
        || {
            let c = e.call("/api/forced/x");
            if c.fallback_for("forced_open") {
                Ok(())
            } else {
                Err(Box::new(c))
            }
        },
    );
    // As in the_bulkhead_admits_exactly_max_concurrent_across_workers: 4 held, 6 refused.
    e.api().hold();
    let rx = e.fire(10, "/api/held/x");
    until(
        "4 held at the API",
        STATS,
        || e.api_in_flight(),
        |v| *v == 4,
    );
    e.wait_stat_of("held", "bulkhead_rejected", |v| v == 6);
    let seen = || {
        (
            e.stat_of("forced", "state"),
            e.stat_of("closed", "state"),
            e.s.envoy.stat("wasmcustom.sg.breaker.open_apis"),
            e.stat_of("held", "in_flight"),
        )
    };
    let want = (FORCED_OPEN, METRICS_ONLY, 1, 4);
    let got = until("the gauges", STATS, seen, |g| *g == want);
    e.api().release();
    for _ in 0..10 {
        let _ = rx.recv_timeout(Duration::from_secs(30));
    }
    assert_eq!(got, want);
}

#[test]
fn the_disable_flag_by_ecds_turns_breaker_and_bulkhead_off_without_restart() {
    let dir = tempfile::Builder::new()
        .prefix("sg-ecds-")
        .tempdir()
        .unwrap_or_else(|err| panic!("{err}"));
    let file = dir.path().join("breaker.json");
    let ecds = file.clone();
    let api = |flag: Value| {
        api_cfg(json!({"wait_open_ms": 30000, "flag": flag,
            "bulkhead": {"max_concurrent": 4, "max_wait_ms": 0}}))
    };
    let e = Egress::start_with(breaker(vec![api(Value::Null)]), 2, move |b| {
        hold_routes(b);
        b.use_ecds_file("breaker", &ecds)
            .unwrap_or_else(|err| panic!("{err}"))
    });
    let pid = e.s.envoy.pid();
    e.api().set_error_rate(1.0, 503);
    e.calls_until_open(503);
    e.wait_stat("state", |v| v == OPEN);

    let stats = e.s.envoy.stats();
    let reload = stats
        .keys()
        .find(|k| {
            k.starts_with("extension_config_discovery.") && k.ends_with("breaker.config_reload")
        })
        .cloned()
        .unwrap_or_else(|| panic!("no ECDS stats"));
    let reloads = e.s.envoy.stat(&reload);
    let typed = Bundle::wasm_filter("breaker", "breaker", &breaker(vec![api(json!("disable"))]))
        ["typed_config"]
        .clone();
    write_ecds(&file, "spikeguard.breaker", &typed).unwrap_or_else(|err| panic!("{err}"));
    e.s.envoy.wait_stat(&reload, STATS, |v| v > reloads);
    // No breaker: the failing API answers every call.
    eventually_every(
        "calls reach the API again",
        STATS,
        Duration::from_millis(10),
        || {
            let c = e.call(PATH);
            if c.reached {
                Ok(())
            } else {
                Err(Box::new(c))
            }
        },
    );
    for _ in 0..20 {
        let c = e.call(PATH);
        assert!(c.reached && c.status == 503 && c.action.is_none(), "{c:?}");
    }
    e.wait_stat("state", |v| v == DISABLED);
    // No bulkhead: six held calls all reach the API (max_concurrent is 4).
    e.api().set_error_rate(0.0, 503);
    let total = e.api_total();
    e.api().hold();
    let rx = e.fire(6, PATH);
    until(
        "6 held at the API",
        STATS,
        || e.api_in_flight(),
        |v| *v == 6,
    );
    e.api().release();
    for _ in 0..6 {
        let (r, _) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|err| panic!("{err}"));
        let r = r.unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(
            (r.status, r.header("x-spikeguard-action")),
            (200, None),
            "{r:?}"
        );
    }
    assert_eq!(e.api_total() - total, 6);
    assert_eq!(e.stat("bulkhead_rejected"), 0);
    assert_eq!(e.s.envoy.pid(), pid);
}

#[test]
fn bad_breaker_config_is_refused_naming_the_field() {
    let mut b = Bundle::load().unwrap_or_else(|e| panic!("{e}"));
    b.keep_filters(&["breaker"]);
    let cfg = json!({"apis": [{"name": "outbound_api", "failure_rate_percent": 150}]});
    b.set_filter_config("breaker", &cfg)
        .unwrap_or_else(|e| panic!("{e}"));
    let log =
        sg_e2e::envoy::expect_refused(&b, 1).unwrap_or_else(|e| panic!("served a bad config: {e}"));
    assert!(
        log.contains("breaker: apis[0].failure_rate_percent"),
        "{log}"
    );
}
