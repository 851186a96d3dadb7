//! Config changes while traffic flows, by ECDS from files (README "Changing config live"):
//! the ingress chain (sli, hotkey, simplepage, ratelimit) with every filter's config served
//! from its own ECDS file, a client loop sending requests the whole time, and the configs
//! changed under it: a ratelimit rule's rate up (429s stop) and down (429s start again), a
//! hotkey threshold down (the busiest key becomes hot and is shed), simplepage and sli out of
//! shadow mode. No request may fail other than the intended 429s and 503s: no Envoy 5xx, no
//! connection error, no Wasm failure, every reload counted, no config refused.
//!
//! Nothing depends on the machine's speed: each step waits (bounded, generous) for the stat
//! or the answers it needs, and the assertions compare counts, never times. The times printed
//! (file move to the new config in force) are figures, not assertions.
#![allow(clippy::panic, clippy::indexing_slicing)]

use serde_json::{json, Value};
use sg_e2e::envoy::{write_ecds, Bundle};
use sg_e2e::wait::{eventually, until};
use sg_e2e::{http, Stack};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
/// The client loop's bounds: at most this many requests, for at most this long.
const MAX_REQUESTS: u64 = 200_000;
const MAX_LOOP: Duration = Duration::from_secs(180);
/// Consecutive answers (each on a fresh connection, so over both workers) that show a change
/// in force everywhere.
const STREAK: usize = 20;

const HDR: &str = "x-spikeguard-simple-page";
const FILTERS: [&str; 4] = ["sli", "hotkey", "simplepage", "ratelimit"];

/// Phases of the run, set by the test thread; each request records the phase it was sent in.
/// The first configs: 1r/m, nothing hot, simplepage and sli in shadow.
const START: u8 = 0;
/// The raised rate was written; in force once `RL_OPEN`.
const RL_RAISING: u8 = 5;
/// The rate was raised and the new rate is in force on every worker: no 429 from here.
const RL_OPEN: u8 = 1;
/// The rate was lowered again (file written); in force once `RL_CLOSED`.
const RL_CLOSING: u8 = 2;
/// The low rate in force again: 429s.
const RL_CLOSED: u8 = 3;
/// The hotkey threshold was lowered (file written): from here `warm` may be shed (503).
const HK_LOWERED: u8 = 4;

fn sli(shadow: bool) -> Value {
    json!({"tick_ms": 200, "shadow": shadow,
        "pages": [{"name": "PostView", "match": {"path_prefix": "/PostView"}},
                  {"name": "PostList", "match": {"path_prefix": "/PostList"}}],
        "status": {"path": "/spikeguard/status"}})
}

fn hotkey(threshold_rps: u64) -> Value {
    json!({"tick_ms": 100, "rules": [{"name": "post_view", "match": {"path_prefix": "/PostView"},
        "key": {"query": "blogId"}, "window_ms": 1000, "threshold_rps": threshold_rps,
        "threshold_share_percent": 20, "cooldown_ms": 600000,
        "action": {"reject": {"status": 503, "retry_after_s": 1}}}]})
}

fn simplepage(shadow: bool) -> Value {
    json!({"tick_ms": 100, "shadow": shadow,
        "rules": [{"name": "lists", "match": {"path_prefix": "/PostList"}, "triggers": {"always": true}}]})
}

fn ratelimit(rate: &str, burst: u64) -> Value {
    json!({"rules": [{"name": "live", "match": {"path_prefix": "/live"}, "key": {"fixed": "x"},
        "rate": rate, "burst": burst, "mode": "nodelay"}]})
}

/// One answer of the client loop.
#[derive(Debug, Clone)]
struct Outcome {
    phase: u8,
    path: &'static str,
    /// None: no answer (connection error, time-out).
    status: Option<u16>,
    /// `retry-after` present: a spikeguard rejection (ratelimit, hotkey), not Envoy's own.
    retry_after: bool,
    error: Option<String>,
}

/// The loop's paths, in turn: the rate-limited path, the key that becomes hot (half of the
/// `/PostView` traffic), 6 cold keys (each 1/12 of it: under the rule's 20% share, never
/// hot), the page simplepage diverts once out of shadow.
fn path_of(i: u64) -> &'static str {
    const COLD: [&str; 6] = [
        "/PostView?blogId=c1&logNo=1",
        "/PostView?blogId=c2&logNo=1",
        "/PostView?blogId=c3&logNo=1",
        "/PostView?blogId=c4&logNo=1",
        "/PostView?blogId=c5&logNo=1",
        "/PostView?blogId=c6&logNo=1",
    ];
    match i % 4 {
        0 => "/live",
        1 => "/PostView?blogId=warm&logNo=1",
        2 => COLD[((i / 4) % 6) as usize],
        _ => "/PostList?blogId=p",
    }
}

fn typed(filter: &str, cfg: &Value) -> Value {
    Bundle::wasm_filter(filter, filter, cfg)["typed_config"].clone()
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn file(&self, filter: &str) -> PathBuf {
        self.dir.join(format!("{filter}.json"))
    }
}

/// The ECDS stat `<what>` (`config_reload`, `config_fail`) of `spikeguard.<filter>`.
fn ecds_stat(stats: &BTreeMap<String, i64>, filter: &str, what: &str) -> String {
    let suffix = format!(".spikeguard.{filter}.{what}");
    stats
        .keys()
        .find(|k| k.starts_with("extension_config_discovery.") && k.ends_with(&suffix))
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no ECDS stat for {filter}: {:?}",
                stats
                    .keys()
                    .filter(|k| k.starts_with("extension_config_discovery."))
                    .collect::<Vec<_>>()
            )
        })
}

/// Writes `cfg` to `filter`'s ECDS file and waits until Envoy counted the reload; the
/// instant of the file move (the ms to the reload stat are printed).
fn change(s: &Stack, files: &Files, filter: &str, cfg: &Value) -> Instant {
    let stat = ecds_stat(&s.envoy.stats(), filter, "config_reload");
    let before = s.envoy.stat(&stat);
    let moved = Instant::now();
    write_ecds(
        &files.file(filter),
        &format!("spikeguard.{filter}"),
        &typed(filter, cfg),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    s.envoy.wait_stat(&stat, WAIT, |v| v > before);
    eprintln!(
        "live config: {filter}: config_reload counted {} ms after the file moved",
        ms(moved)
    );
    moved
}

/// Waits until `STREAK` answers in a row for `path` (fresh connections) satisfy `ok`. The
/// number of 503s among all the answers seen (they count towards hotkey's `shed`), and when
/// the first request of that run was sent (the change was in force everywhere from then on).
fn streak(
    s: &Stack,
    what: &str,
    path: &str,
    ok: impl Fn(&http::Response) -> bool,
) -> (u64, Instant) {
    let (mut run, mut shed, mut first) = (0, 0, Instant::now());
    eventually(what, WAIT, || {
        let sent = Instant::now();
        let r = s.get(path);
        if r.status == 503 {
            shed += 1;
        }
        run = if ok(&r) { run + 1 } else { 0 };
        if run == 1 {
            first = sent;
        }
        if run >= STREAK {
            Ok(())
        } else {
            Err((r.status, r.header(HDR).map(str::to_string)))
        }
    });
    (shed, first)
}

fn ms(t: Instant) -> u128 {
    t.elapsed().as_millis()
}

/// ms from `from` to `to`.
fn between(from: Instant, to: Instant) -> u128 {
    to.saturating_duration_since(from).as_millis()
}

#[test]
fn rates_and_thresholds_change_by_ecds_under_traffic_with_no_failed_request() {
    let dir = tempfile::Builder::new()
        .prefix("sg-live-")
        .tempdir()
        .unwrap_or_else(|e| panic!("{e}"));
    let files = Files {
        dir: dir.path().to_path_buf(),
    };
    let start: Vec<(&str, Value)> = vec![
        ("sli", sli(true)),
        ("hotkey", hotkey(1_000_000)),
        ("simplepage", simplepage(true)),
        ("ratelimit", ratelimit("1r/m", 0)),
    ];
    let paths: Vec<(String, PathBuf)> = FILTERS
        .iter()
        .map(|f| (f.to_string(), files.file(f)))
        .collect();
    let s = Stack::start_with(&start, 2, sg_e2e::ample("main"), move |b| {
        for (f, p) in &paths {
            b.use_ecds_file(f, Path::new(p))
                .unwrap_or_else(|e| panic!("{e}"));
        }
    });
    let stats = s.envoy.stats();
    for f in FILTERS {
        assert_eq!(s.envoy.stat(&ecds_stat(&stats, f, "config_fail")), 0, "{f}");
    }

    // The client loop: one request at a time, each on a fresh connection.
    let port = s.port();
    let phase = Arc::new(AtomicU8::new(START));
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let client = {
        let (phase, stop, sent) = (phase.clone(), stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let began = Instant::now();
            let mut out = Vec::new();
            for i in 0..MAX_REQUESTS {
                if stop.load(Ordering::SeqCst) || began.elapsed() > MAX_LOOP {
                    break;
                }
                let path = path_of(i);
                let ph = phase.load(Ordering::SeqCst);
                let o = match http::get(port, path) {
                    Ok(r) => Outcome {
                        phase: ph,
                        path,
                        status: Some(r.status),
                        retry_after: r.header("retry-after").is_some(),
                        error: None,
                    },
                    Err(e) => Outcome {
                        phase: ph,
                        path,
                        status: None,
                        retry_after: false,
                        error: Some(e.to_string()),
                    },
                };
                out.push(o);
                sent.store(i + 1, Ordering::SeqCst);
            }
            out
        })
    };
    let at_least = |n: u64, what: &str| {
        let from = sent.load(Ordering::SeqCst);
        until(
            what,
            WAIT,
            || sent.load(Ordering::SeqCst),
            |v| *v >= from + n,
        );
    };
    at_least(200, "traffic before the first change");
    let mut shed_by_probes = 0;
    // A probe before any change: the low rate is in force.
    shed_by_probes += streak(&s, "429s at 1r/m", "/live", |r| r.status == 429).0;

    // 1. The rate up: 429s stop.
    phase.store(RL_RAISING, Ordering::SeqCst);
    let moved = change(&s, &files, "ratelimit", &ratelimit("100000r/s", 100_000));
    let (n, from) = streak(&s, "200s at the raised rate", "/live", |r| r.status == 200);
    shed_by_probes += n;
    let rl_up_ms = between(moved, from);
    phase.store(RL_OPEN, Ordering::SeqCst);
    at_least(400, "traffic at the raised rate");

    // 2. The rate down again: 429s start.
    phase.store(RL_CLOSING, Ordering::SeqCst);
    let moved = change(&s, &files, "ratelimit", &ratelimit("1r/m", 0));
    let (n, from) = streak(&s, "429s at 1r/m again", "/live", |r| r.status == 429);
    shed_by_probes += n;
    let rl_down_ms = between(moved, from);
    phase.store(RL_CLOSED, Ordering::SeqCst);
    at_least(400, "traffic at the lowered rate");

    // 3. The hotkey threshold down: `warm` (half of /PostView, every 4th request) is hot.
    phase.store(HK_LOWERED, Ordering::SeqCst);
    let shed_stat = "wasmcustom.sg.hotkey.post_view.shed";
    let moved = change(&s, &files, "hotkey", &hotkey(5));
    s.envoy.wait_stat(shed_stat, WAIT, |v| v > 0);
    let hk_first_shed_ms = ms(moved);
    let (n, from) = streak(
        &s,
        "warm shed on every worker",
        "/PostView?blogId=warm&logNo=1",
        |r| r.status == 503 && r.header("retry-after").is_some(),
    );
    shed_by_probes += n;
    let hk_all_ms = between(moved, from);
    at_least(400, "traffic with warm hot");

    // 4. simplepage and sli out of shadow mode: /PostList diverted, the status page served.
    let moved = change(&s, &files, "simplepage", &simplepage(false));
    let (_, from) = streak(&s, "/PostList diverted", "/PostList?blogId=p", |r| {
        r.header(HDR) == Some("always")
    });
    let sp_ms = between(moved, from);
    let moved = change(&s, &files, "sli", &sli(false));
    let (_, from) = streak(
        &s,
        "the status page answered by sli",
        "/spikeguard/status",
        |r| r.status == 200 && r.body.contains("\"top_urls\""),
    );
    let sli_ms = between(moved, from);
    at_least(200, "traffic after the last change");

    stop.store(true, Ordering::SeqCst);
    let out = client.join().unwrap_or_else(|_| panic!("client loop"));

    // Every answer is a 200 or an intended rejection; nothing else.
    let mut by: BTreeMap<(u8, &str, Option<u16>), u64> = BTreeMap::new();
    for o in &out {
        *by.entry((o.phase, o.path, o.status)).or_default() += 1;
    }
    let errors: Vec<(&str, Option<&str>)> = out
        .iter()
        .filter(|o| o.status.is_none())
        .map(|o| (o.path, o.error.as_deref()))
        .collect();
    assert!(errors.is_empty(), "no answer: {errors:?}");
    let bad: Vec<&Outcome> = out
        .iter()
        .filter(|o| match o.status {
            Some(200) => false,
            Some(429) => !(o.path == "/live" && o.retry_after && o.phase != RL_OPEN),
            Some(503) => {
                !(o.path.contains("blogId=warm") && o.retry_after && o.phase >= HK_LOWERED)
            }
            _ => true,
        })
        .collect();
    assert!(
        bad.is_empty(),
        "unintended answers: {:?}",
        bad.iter().take(20).collect::<Vec<_>>()
    );
    let count = |ph: u8, path: &str, st: u16| {
        out.iter()
            .filter(|o| o.phase == ph && o.path == path && o.status == Some(st))
            .count() as u64
    };
    // 1r/m with no burst from the start: the run's first request passes, the rest are 429s.
    assert!(count(START, "/live", 200) <= 1, "{by:?}");
    assert!(count(START, "/live", 429) >= 40, "{by:?}");
    assert!(count(RL_OPEN, "/live", 200) >= 100, "{by:?}");
    // At 1r/m with no burst: the first request after the change may pass, then one a minute.
    let closed_ok = count(RL_CLOSED, "/live", 200) + count(HK_LOWERED, "/live", 200);
    assert!(closed_ok <= 3, "{closed_ok} admitted at 1r/m: {by:?}");
    assert!(count(RL_CLOSED, "/live", 429) >= 50, "{by:?}");
    let warm = "/PostView?blogId=warm&logNo=1";
    assert!(count(HK_LOWERED, warm, 503) > 0, "{by:?}");
    assert_eq!(
        count(START, warm, 503) + count(RL_CLOSED, warm, 503),
        0,
        "{by:?}"
    );

    // Envoy's side: every 5xx is one hotkey shed, no upstream 5xx, no Wasm failure, every
    // change a reload, no refusal.
    let shed_seen = out.iter().filter(|o| o.status == Some(503)).count() as u64 + shed_by_probes;
    let shed = s
        .envoy
        .wait_stat(shed_stat, WAIT, |v| v as u64 >= shed_seen);
    let stats = s.envoy.stats();
    let st = |k: &str| stats.get(k).copied().unwrap_or(0);
    assert_eq!(shed as u64, shed_seen, "503s seen vs hotkey's shed");
    s.envoy
        .wait_stat("http.ingress.downstream_rq_5xx", WAIT, |v| v == shed);
    assert_eq!(st("cluster.main_app.upstream_rq_5xx"), 0);
    assert_eq!(st("cluster.simple_page.upstream_rq_5xx"), 0);
    let wasm: BTreeMap<&String, &i64> = stats
        .iter()
        .filter(|(k, _)| k.starts_with("wasm.") || k.contains(".wasm."))
        .collect();
    let failed: Vec<_> = wasm
        .iter()
        .filter(|(k, v)| {
            **v > &0
                && ["fail", "crash", "trap", "abort"]
                    .iter()
                    .any(|w| k.contains(w))
        })
        .collect();
    assert!(failed.is_empty(), "wasm failures: {failed:?}");
    let reloads: Vec<(&str, i64)> = FILTERS
        .iter()
        .map(|f| (*f, st(&ecds_stat(&stats, f, "config_reload"))))
        .collect();
    for f in FILTERS {
        assert_eq!(
            st(&ecds_stat(&stats, f, "config_fail")),
            0,
            "{f} refused a config"
        );
    }
    // The changes made here (the first load may count too).
    for (f, n) in &reloads {
        let changes = if *f == "ratelimit" { 2 } else { 1 };
        assert!(*n >= changes, "{f}: {n} reloads, {changes} changes");
    }
    eprintln!(
        "live config: {} requests in the loop ({by:?})\n  ecds reloads {reloads:?}; wasm stats {wasm:?}\n  \
         (in force: from the first of {STREAK} answers in a row on fresh connections) ratelimit 1r/m -> 100000r/s in force {rl_up_ms} ms after the file moved, \
         back to 1r/m {rl_down_ms} ms\n  hotkey threshold 1000000 -> 5: first shed {hk_first_shed_ms} ms, \
         warm shed on every answer from {hk_all_ms} ms\n  simplepage out of shadow {sp_ms} ms, sli out of shadow {sli_ms} ms\n  \
         503s {shed_seen} = hotkey shed {shed}",
        out.len()
    );
}
