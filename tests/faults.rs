//! Faults around the bundle, against a real Envoy running every filter of `envoy.yaml`
//! (issue "[10/11] Hardening", Faults): the main app killed under load and restarted on the
//! same port; the simple-page backend down while a hot key is diverted; the operator endpoint
//! hanging; the alert webhook hanging and refusing; Envoy hot-restarted under load.
//!
//! Each case asserts its defined outcome for every request a client loop sent, that the
//! filters counted every request (sli's counts per code equal the client's, and the filter's
//! own counters what the client saw), and that Envoy's `wasm` stats show no failure.
//! Nothing depends on the machine's speed: each step waits (bounded, generous) for what it
//! needs to see; every client loop is bounded in requests and time; no assertion is on a
//! duration (the times printed are figures).
#![allow(clippy::panic, clippy::indexing_slicing)]

use serde_json::{json, Value};
use sg_e2e::envoy::{Bundle, HotRestart};
use sg_e2e::upstream::Upstream;
use sg_e2e::wait::until;
use sg_e2e::{ample, http, Stack};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
/// A client loop's bounds: at most this many requests per thread, for at most this long.
const MAX_REQUESTS: usize = 20_000;
const MAX_LOOP: Duration = Duration::from_secs(120);
/// Pause between two requests of one client thread: a thread sends at most 250 requests per
/// second however fast the machine, so 2 threads over at least [`MIN_PATHS`] paths stay
/// under every per-key limit of the bundle (ratelimit's 50 r/s per blog, hotkey's 20% share).
const PAUSE: Duration = Duration::from_millis(4);
const THREADS: usize = 2;
const MIN_PATHS: usize = 30;

/// The bundle's whole ingress chain (every filter a page request goes through), each with
/// its `envoy.yaml` config unless `over` gives another. The egress listener's filters
/// (`sli_egress`, `breaker`) see none of these requests and are left out: each Wasm module
/// costs seconds of Envoy start-up on a busy 2-core machine.
fn bundle_filters(over: &[(&str, Value)]) -> Vec<(&'static str, Value)> {
    let mut b = Bundle::load().unwrap_or_else(|e| panic!("{e}"));
    ["sli", "hotkey", "simplepage", "ratelimit"]
        .into_iter()
        .map(|n| {
            let cfg = over
                .iter()
                .find(|(o, _)| *o == n)
                .map(|(_, c)| c.clone())
                .or_else(|| b.filter_config(n))
                .unwrap_or_else(|| panic!("no config for {n}"));
            (n, cfg)
        })
        .collect()
}

/// The bundle's config of `filter`, parsed.
fn bundle_config(filter: &str) -> Value {
    Bundle::load()
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_config(filter)
        .unwrap_or_else(|| panic!("no config for {filter}"))
}

/// One answer of a client loop.
#[derive(Debug, Clone)]
struct Outcome {
    /// The phase when the request was sent, and when its answer (or error) came back: a
    /// request in flight while the test moves on straddles two phases, and only one sent and
    /// answered in the same phase is held to that phase's outcome.
    phase: u8,
    answered: u8,
    path: String,
    /// None: no answer (connection error, time-out), the error in `error` (shown in failure
    /// messages).
    status: Option<u16>,
    /// `x-upstream`: which demo backend answered (`main`, `simple`).
    upstream: Option<String>,
    /// `x-spikeguard-simple-page`: why it is a simple page.
    simple: Option<String>,
    body: String,
    #[allow(dead_code)]
    error: Option<String>,
}

/// Client threads sending GETs (one per connection, so spread over Envoy's workers) over
/// `paths` in turn until stopped; each answer is recorded with the phases it was sent and
/// answered in.
struct Client {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU8>,
    out: Arc<Mutex<Vec<Outcome>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Client {
    fn start(port: u16, paths: &[String]) -> Client {
        assert!(paths.len() >= MIN_PATHS, "{} paths", paths.len());
        let threads = THREADS;
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicU8::new(0));
        let out = Arc::new(Mutex::new(Vec::new()));
        let paths: Arc<Vec<String>> = Arc::new(paths.to_vec());
        let threads = (0..threads)
            .map(|t| {
                let (stop, phase, out, paths) =
                    (stop.clone(), phase.clone(), out.clone(), paths.clone());
                std::thread::spawn(move || {
                    let began = Instant::now();
                    for i in 0..MAX_REQUESTS {
                        if stop.load(Ordering::SeqCst) || began.elapsed() > MAX_LOOP {
                            break;
                        }
                        let path = &paths[(i * threads + t) % paths.len()];
                        let p = phase.load(Ordering::SeqCst);
                        let r = http::get(port, path);
                        let a = phase.load(Ordering::SeqCst);
                        let o = match r {
                            Ok(r) => Outcome {
                                phase: p,
                                answered: a,
                                path: path.clone(),
                                status: Some(r.status),
                                upstream: r.header("x-upstream").map(str::to_string),
                                simple: r.header("x-spikeguard-simple-page").map(str::to_string),
                                body: r.body.chars().take(160).collect(),
                                error: None,
                            },
                            Err(e) => Outcome {
                                phase: p,
                                answered: a,
                                path: path.clone(),
                                status: None,
                                upstream: None,
                                simple: None,
                                body: String::new(),
                                error: Some(e.to_string()),
                            },
                        };
                        out.lock().unwrap().push(o);
                        std::thread::sleep(PAUSE);
                    }
                })
            })
            .collect();
        Client {
            stop,
            phase,
            out,
            threads,
        }
    }

    fn set_phase(&self, p: u8) {
        self.phase.store(p, Ordering::SeqCst);
    }

    fn snapshot(&self) -> Vec<Outcome> {
        self.out.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for the answers so far.
    #[track_caller]
    fn wait(&self, what: &str, pred: impl Fn(&[Outcome]) -> bool) {
        until(
            what,
            WAIT,
            || {
                let o = self.out.lock().unwrap();
                (pred(&o), o.len())
            },
            |(ok, _)| *ok,
        );
    }

    fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let out = self.out.lock().unwrap();
        out.clone()
    }
}

/// True when the last `n` answers all satisfy `pred`.
fn streak(o: &[Outcome], n: usize, pred: impl Fn(&Outcome) -> bool) -> bool {
    o.len() >= n && o[o.len() - n..].iter().all(pred)
}

/// Counts by status (0: no answer).
fn by_status(o: &[Outcome]) -> BTreeMap<u16, u64> {
    let mut m = BTreeMap::new();
    for x in o {
        *m.entry(x.status.unwrap_or(0)).or_default() += 1;
    }
    m
}

/// `spikeguard_requests_total` of one direction summed per `code` label, from Envoy's
/// Prometheus text.
fn sli_codes(text: &str, direction: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("spikeguard_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.trim_matches('"').to_string())
        };
        if label("direction").as_deref() != Some(direction) {
            continue;
        }
        let (Some(code), Ok(v)) = (label("code"), value.trim().parse::<f64>()) else {
            continue;
        };
        *m.entry(code).or_default() += v as u64;
    }
    m
}

/// Waits until sli (inbound) counted `client`'s answers, then asserts its counts per code are
/// the client's exactly (nothing lost, nothing counted twice).
#[track_caller]
fn assert_sli_counted(s: &Stack, client: &BTreeMap<u16, u64>) {
    let total: u64 = client.values().sum();
    let mut got = BTreeMap::new();
    until(
        &format!("sli counting {total} requests"),
        WAIT,
        || {
            got = sli_codes(&s.envoy.prometheus(), "inbound");
            got.values().sum::<u64>()
        },
        |n| *n >= total,
    );
    let want: BTreeMap<String, u64> = client.iter().map(|(c, n)| (c.to_string(), *n)).collect();
    assert_eq!(got, want, "sli's counts per code vs the client's");
}

/// Envoy's `wasm` stats with a failure in their name and a value above 0 (none expected),
/// and every `wasm` stat for the report.
fn wasm_failures(stats: &BTreeMap<String, i64>) -> Vec<(String, i64)> {
    stats
        .iter()
        .filter(|(k, v)| {
            (k.starts_with("wasm.") || k.contains(".wasm."))
                && **v > 0
                && ["fail", "crash", "trap", "abort"]
                    .iter()
                    .any(|w| k.contains(w))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

#[track_caller]
fn assert_no_wasm_failure(s: &Stack) {
    let failed = wasm_failures(&s.envoy.stats());
    assert!(failed.is_empty(), "wasm failures: {failed:?}");
}

/// A file access log on the ingress listener: `code flags cluster` per request.
fn access_log(b: &mut Bundle, file: &Path) {
    let ls = b.doc["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap();
    let l = ls.iter_mut().find(|l| l["name"] == "ingress").unwrap();
    l["filter_chains"][0]["filters"][0]["typed_config"]["access_log"] = json!([{
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": file.display().to_string(),
            "log_format": {"text_format_source": {"inline_string":
                "%RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_CLUSTER%\n"}}
        }
    }]);
}

/// The access log's lines, waiting until there are `n` (Envoy flushes it every 100 ms).
fn access_lines(file: &Path, n: usize) -> Vec<(u16, String, String)> {
    let mut lines = Vec::new();
    until(
        &format!("{n} access log lines"),
        WAIT,
        || {
            lines = std::fs::read_to_string(file)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| {
                    let mut f = l.split(' ');
                    let code = f.next()?.parse().ok()?;
                    Some((
                        code,
                        f.next()?.to_string(),
                        f.next().unwrap_or("-").to_string(),
                    ))
                })
                .collect::<Vec<_>>();
            lines.len()
        },
        |len| *len >= n,
    );
    lines
}

/// What one answer of the main-app outage was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    /// 200 from the main app, not a simple page.
    App,
    /// A simple page (from the simple-page backend or simplepage's micro-cache) because
    /// simplepage saw the app fail (`overload:errors`).
    SimplePage,
    /// Envoy's own 503: the app's connection refused or reset (no simple page).
    Envoy503,
    Other,
}

fn seen(o: &Outcome) -> Seen {
    let envoy_body = o
        .body
        .starts_with("upstream connect error or disconnect/reset before headers")
        || o.body.starts_with("no healthy upstream");
    match (o.status, o.simple.as_deref(), o.upstream.as_deref()) {
        (Some(200), None, Some("main")) => Seen::App,
        (Some(200), Some(why), _) if why.starts_with("overload:") => Seen::SimplePage,
        (Some(503), None, None) if envoy_body => Seen::Envoy503,
        _ => Seen::Other,
    }
}

/// The main app killed while a client loop runs, and restarted on the same port.
#[test]
fn main_app_killed_and_restarted_under_load() {
    let app_cfg = ample("main");
    let mut app = Some(Upstream::start(app_cfg.clone()).unwrap());
    let port = app.as_ref().unwrap().port;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    // The bundle's simplepage, its overload windows shortened for the test (1 s windows,
    // 5 samples, clear after 1 s) so that both the diversion and the recovery fit in seconds.
    let mut sp = bundle_config("simplepage");
    for r in sp["rules"].as_array_mut().unwrap() {
        let o = &mut r["triggers"]["overload"];
        o["window_ms"] = json!(1000);
        o["clear_after_ms"] = json!(1000);
        o["min_samples"] = json!(5);
    }
    let t0 = Instant::now();
    let s = Stack::start_with(
        &bundle_filters(&[("simplepage", sp)]),
        2,
        ample("unused"),
        |b| {
            b.set_cluster_port("main_app", port).unwrap();
            access_log(b, &log);
        },
    );
    let paths: Vec<String> = (0..MIN_PATHS)
        .map(|i| format!("/PostView?blogId=blog{i}&logNo=1"))
        .collect();
    eprintln!("[stack up {} ms]", t0.elapsed().as_millis());
    let c = Client::start(s.port(), &paths);
    c.wait("100 pages from the app", |o| {
        o.iter().filter(|x| seen(x) == Seen::App).count() >= 100
    });

    // Killed: in-flight requests reset, new connections refused.
    c.set_phase(1);
    let killed = Instant::now();
    drop(app.take());
    c.wait("Envoy's 503s and simple pages while the app is down", |o| {
        let down: Vec<&Outcome> = o.iter().filter(|x| x.phase == 1).collect();
        down.iter().any(|x| seen(x) == Seen::Envoy503)
            && down.iter().filter(|x| seen(x) == Seen::SimplePage).count() >= 20
    });
    let diverting_ms = killed.elapsed().as_millis();

    // Restarted on the same port: traffic comes back by itself.
    c.set_phase(2);
    let restarted = Instant::now();
    app = Some(Upstream::start_on(app_cfg, port).unwrap());
    c.wait("50 pages in a row from the app", |o| {
        streak(o, 50, |x| x.phase == 2 && seen(x) == Seen::App)
    });
    let recovered_ms = restarted.elapsed().as_millis();
    let out = c.stop();
    eprintln!("[load over {} ms]", t0.elapsed().as_millis());

    let mut kinds: BTreeMap<(u8, Seen), u64> = BTreeMap::new();
    for o in &out {
        *kinds.entry((o.phase, seen(o))).or_default() += 1;
    }
    let other: Vec<&Outcome> = out.iter().filter(|o| seen(o) == Seen::Other).collect();
    assert!(
        other.is_empty(),
        "answers other than the app's, a simple page or Envoy's 503: {} of {}, e.g. {:?}",
        other.len(),
        out.len(),
        &other[..other.len().min(5)]
    );
    assert!(
        out.iter()
            .filter(|o| o.answered == 0)
            .all(|o| seen(o) == Seen::App),
        "before the kill every page comes from the app: {kinds:?}"
    );

    // Envoy's view: one access log line per answer; every 503 a connection failure or reset
    // of main_app, never anything else.
    let lines = access_lines(&log, out.len());
    assert_eq!(lines.len(), out.len(), "access log lines vs answers");
    let mut flags: BTreeMap<String, u64> = BTreeMap::new();
    for (code, f, cluster) in &lines {
        if *code == 503 {
            assert_eq!(cluster, "main_app");
            *flags.entry(f.clone()).or_default() += 1;
        }
    }
    let allowed = ["UF", "UC", "UH", "URX"];
    for f in flags.keys() {
        assert!(
            f.split(',').all(|x| allowed.contains(&x)),
            "503 with flags {f}: {flags:?}"
        );
    }
    assert!(
        flags.keys().any(|f| f.contains("UF")),
        "a refused connection (UF): {flags:?}"
    );
    let client = by_status(&out);
    assert_eq!(
        lines.iter().filter(|l| l.0 == 503).count() as u64,
        client.get(&503).copied().unwrap_or(0)
    );

    eprintln!("[access log {} ms]", t0.elapsed().as_millis());
    // The filters counted everything: sli per code; simplepage every diversion.
    assert_sli_counted(&s, &client);
    eprintln!("[sli {} ms]", t0.elapsed().as_millis());
    let diverted = out.iter().filter(|o| seen(o) == Seen::SimplePage).count() as i64;
    let stat = "wasmcustom.sg.simplepage.post_view.diverted_overload";
    assert_eq!(s.envoy.wait_stat(stat, WAIT, |v| v >= diverted), diverted);
    assert!(s.envoy.stat("wasmcustom.sg.simplepage.overload_events") >= 1);
    assert!(s.envoy.stat("cluster.main_app.upstream_cx_connect_fail") >= 1);
    assert_no_wasm_failure(&s);
    eprintln!(
        "app killed: {} answers {kinds:?} (phase 0 before, 1 down, 2 restarted); 503 flags {flags:?}; \
         simple pages from {diverting_ms} ms after the kill (20 seen); 50 app pages in a row \
         {recovered_ms} ms after the restart",
        out.len()
    );
    drop(s);
    drop(app);
}

/// The simple-page backend down while hotkey diverts a hot key to it: a page simplepage
/// cached is answered from the copy (stale-if-error), any other diverted page with the rule's
/// fallback (503, `retry-after`; README "simplepage"), never by the main app; counted; and
/// diversion works again once the backend is back.
#[test]
fn simple_page_backend_down_diverted_pages_get_the_copy_or_the_fallback() {
    let simple_cfg = sg_e2e::upstream::UpstreamConfig {
        cache_control: Some("public, max-age=600".into()),
        ..ample("simple")
    };
    let mut simple = Some(Upstream::start(simple_cfg.clone()).unwrap());
    let simple_port = simple.as_ref().unwrap().port;
    // The bundle's hotkey (action divert), hot from 30 r/s and hot for 10 minutes once hot;
    // ratelimit's per-blog rate raised, so that the hot key's requests before it is hot are
    // never a 429 (the limit is not what this test is about).
    let mut hk = bundle_config("hotkey");
    hk["rules"][0]["threshold_rps"] = json!(30);
    hk["rules"][0]["cooldown_ms"] = json!(600_000);
    let mut rl = bundle_config("ratelimit");
    rl["rules"][0]["rate"] = json!("100000r/s");
    let s = Stack::start_with(
        &bundle_filters(&[("hotkey", hk), ("ratelimit", rl)]),
        2,
        ample("main"),
        |b| b.set_cluster_port("simple_page", simple_port).unwrap(),
    );
    let cached = "/PostView?blogId=hot&logNo=1";
    // The key made hot: its requests, one after another, until one is a simple page.
    let t = Instant::now();
    let mut before_hot = 0;
    let good = loop {
        assert!(t.elapsed() < WAIT, "the hot key was never diverted");
        let r = s.get(cached);
        assert_eq!(r.status, 200);
        if r.header("x-spikeguard-simple-page") == Some("hotkey") {
            break r;
        }
        before_hot += 1;
    };
    s.envoy
        .wait_stat("wasmcustom.sg.simplepage.cache_fill", WAIT, |v| v >= 1);
    let app_hot = || s.app.stats().by_key.get("hot").copied().unwrap_or(0);
    let app_hot_before = app_hot();
    // As the client records bodies (their start).
    let good_body: String = good.body.chars().take(160).collect();

    // The simple-page backend down.
    drop(simple.take());
    let paths: Vec<String> = (0..MIN_PATHS)
        .map(|i| match i % 3 {
            0 => cached.to_string(),
            1 => format!("/PostView?blogId=hot&logNo={}", 100 + i),
            _ => format!("/PostView?blogId=cold{i}&logNo=1"),
        })
        .collect();
    let c = Client::start(s.port(), &paths);
    let fallback_body = "This page is very busy right now. Please try again in a few seconds.\n";
    let kind = |o: &Outcome| -> &'static str {
        let hot = o.path.contains("blogId=hot&");
        match (o.status, o.simple.as_deref()) {
            (Some(200), None) if !hot && o.upstream.as_deref() == Some("main") => "app",
            (
                Some(200),
                Some("hotkey; cache=hit" | "hotkey; cache=stale" | "hotkey; cache=stale-if-error"),
            ) if o.path == cached && o.body == good_body => "copy",
            (Some(503), Some("hotkey; fallback")) if hot && o.body == fallback_body => "fallback",
            // From the simple-page backend, or its copy in the micro-cache.
            (Some(200), Some(why))
                if hot && (why == "hotkey" || why.starts_with("hotkey; cache=")) =>
            {
                "simple"
            }
            _ => "other",
        }
    };
    c.wait("fallbacks and copies while the simple page is down", |o| {
        o.iter().filter(|x| kind(x) == "fallback").count() >= 30
            && o.iter()
                .filter(|x| x.simple.as_deref() == Some("hotkey; cache=stale-if-error"))
                .count()
                >= 2
    });
    // Back on the same port: the diverted pages are served by it again.
    c.set_phase(1);
    simple = Some(Upstream::start_on(simple_cfg, simple_port).unwrap());
    c.wait("20 simple pages in a row for uncached hot pages", |o| {
        o.iter()
            .filter(|x| x.phase == 1 && x.path.contains("blogId=hot&") && x.path != cached)
            .rev()
            .take(20)
            .filter(|x| kind(x) == "simple")
            .count()
            == 20
    });
    let out = c.stop();

    let mut kinds: BTreeMap<(u8, &str), u64> = BTreeMap::new();
    for o in &out {
        *kinds.entry((o.phase, kind(o))).or_default() += 1;
    }
    let other: Vec<&Outcome> = out.iter().filter(|o| kind(o) == "other").collect();
    assert!(
        other.is_empty(),
        "{} answers not defined: {:?}",
        other.len(),
        &other[..other.len().min(5)]
    );
    let early: Vec<&Outcome> = out
        .iter()
        .filter(|o| o.answered == 0 && kind(o) == "simple")
        .collect();
    assert!(
        early.is_empty(),
        "a simple page while its backend was down: {} {:?}",
        early.len(),
        &early[..early.len().min(3)]
    );
    // Never to the main app: fail safe, not fail back onto the app the key was diverted from.
    assert_eq!(
        app_hot(),
        app_hot_before,
        "hot-key requests reached the app"
    );
    // Counted: every fallback and copy, every diversion; sli per code.
    let count = |k: &str| out.iter().filter(|o| kind(o) == k).count() as i64;
    let stale = out
        .iter()
        .filter(|o| o.simple.as_deref() == Some("hotkey; cache=stale-if-error"))
        .count() as i64;
    let fallback = "wasmcustom.sg.simplepage.divert_fallback";
    assert_eq!(
        s.envoy
            .wait_stat(fallback, WAIT, |v| v >= count("fallback")),
        count("fallback")
    );
    let sie = "wasmcustom.sg.simplepage.cache_stale_if_error";
    assert_eq!(s.envoy.wait_stat(sie, WAIT, |v| v >= stale), stale);
    assert_eq!(
        s.envoy.stat("wasmcustom.sg.simplepage.divert_failed"),
        count("fallback") + stale
    );
    let diverted = 1 + count("copy") + count("fallback") + count("simple");
    let dh = "wasmcustom.sg.simplepage.post_view.diverted_hotkey";
    assert_eq!(s.envoy.wait_stat(dh, WAIT, |v| v >= diverted), diverted);
    let mut client = by_status(&out);
    *client.entry(200).or_default() += before_hot + 1;
    assert_sli_counted(&s, &client);
    assert_no_wasm_failure(&s);
    eprintln!(
        "simple page down: {} answers {kinds:?} (phase 0 down, 1 back); {before_hot} hot-key \
         requests before it was diverted",
        out.len()
    );
    drop(s);
    drop(simple);
}

/// The operator control plane failing, one fault after the other in one Envoy (each Envoy
/// start costs seconds): hotkey's operator endpoint hangs, then its alert webhook hangs,
/// refuses (503) and answers again.
///
/// Operator endpoint hanging: each poll times out (`operator.timeout_ms`), the last good list
/// stays in force (a listed key stays refused), requests are served meanwhile, the timeouts
/// are counted (`operator_errors`), and the list the endpoint serves once it answers again is
/// applied. Webhook: each alert is posted; a hung post is given up after the webhook timeout
/// (2 s) and a refused one, both counted (`webhook_errors`); nothing else waits for it.
#[test]
fn operator_endpoint_and_alert_webhook_hanging_or_refusing() {
    let mut hk = bundle_config("hotkey");
    hk["rules"][0]["action"] = json!({"reject": {"status": 403, "body": "blocked\n"}});
    hk["operator"] = json!({"cluster": "spikeguard_control", "path": "/blocklist",
        "poll_ms": 200, "timeout_ms": 300});
    hk["alert"] = json!({"webhook_cluster": "spikeguard_control", "webhook_path": "/hook"});
    let s = Stack::start_with(&bundle_filters(&[("hotkey", hk)]), 2, ample("main"), |_| {});
    let spam = "/PostView?blogId=spam&logNo=1";
    let errors = "wasmcustom.sg.hotkey.operator_errors";
    let applied = "wasmcustom.sg.hotkey.operator_applied";
    let webhook_errors = "wasmcustom.sg.hotkey.webhook_errors";
    let alerts = "wasmcustom.sg.hotkey.alerts";
    let list = |keys: &[&str]| {
        let e: Vec<Value> = keys
            .iter()
            .map(|k| json!({"rule": "post_view", "key": k}))
            .collect();
        json!({ "entries": e }).to_string()
    };
    // `spam` one request in ten (under hotkey's 20% share), k1..k3 one in thirty each.
    let paths: Vec<String> = (0..MIN_PATHS)
        .map(|i| match i {
            _ if i % 10 == 0 => spam.to_string(),
            1..=3 => format!("/PostView?blogId=k{i}&logNo=1"),
            _ => format!("/PostView?blogId=cold{i}&logNo=1"),
        })
        .collect();
    let is_spam = |o: &Outcome| o.path == spam;
    let key_of = |o: &Outcome| {
        ["k1", "k2", "k3"]
            .into_iter()
            .find(|k| o.path.contains(&format!("={k}&")))
    };
    s.control.set_blocklist(200, &list(&["spam"]), None);
    let c = Client::start(s.port(), &paths);
    // In force on both workers.
    c.wait("the listed key refused 20 times in a row", |o| {
        o.iter()
            .filter(|x| is_spam(x))
            .rev()
            .take(20)
            .filter(|x| x.status == Some(403))
            .count()
            == 20
    });

    // The operator endpoint hangs; meanwhile it would serve an empty list, which must not
    // apply (set once a poll hangs: none is being answered then).
    s.control.hold_blocklist();
    let p0 = s.control.polls();
    until(
        "a poll hanging",
        WAIT,
        || s.control.blocklist_held(),
        |n| *n >= 1,
    );
    c.set_phase(1);
    s.control.set_blocklist(200, &list(&[]), None);
    let e0 = s.envoy.stat(errors);
    let e = s.envoy.wait_stat(errors, WAIT, |v| v >= e0 + 3);
    let polls_hung = s.control.polls() - p0;
    c.set_phase(2);
    c.wait("30 answers after 3 timed-out polls", |o| {
        o.iter().filter(|x| x.phase == 2).count() >= 30
    });
    // It answers again: the new (empty) list applies, the key is served.
    c.set_phase(3);
    let a0 = s.envoy.stat(applied);
    s.control.release_blocklist();
    s.envoy.wait_stat(applied, WAIT, |v| v > a0);
    c.wait("the key served 20 times in a row", |o| {
        o.iter()
            .filter(|x| x.phase == 3 && is_spam(x))
            .rev()
            .take(20)
            .filter(|x| x.status == Some(200))
            .count()
            == 20
    });
    let served_hung = c.snapshot().iter().filter(|o| o.phase == 2).count();

    // The webhook. Blocking a key posts one alert for it.
    let block = |keys: &[&str], key: &str| {
        s.control.set_blocklist(200, &list(keys), None);
        until(
            &format!("the alert for {key} at the webhook"),
            WAIT,
            || s.control.hooks(),
            |h| h.iter().any(|b| b.contains(&format!("`{key}`"))),
        );
    };
    assert_eq!(s.envoy.stat(webhook_errors), 0);
    // Hanging: the post waits; Envoy gives it up after the webhook timeout.
    c.set_phase(4);
    s.control.hold_hooks();
    block(&["k1"], "k1");
    until(
        "the alert hanging",
        WAIT,
        || s.control.hooks_held(),
        |n| *n == 1,
    );
    let n0 = c.snapshot().len();
    c.wait("20 answers while the alert hangs", |o| o.len() >= n0 + 20);
    let served_while_held = s.control.hooks_held();
    s.envoy.wait_stat(webhook_errors, WAIT, |v| v >= 1);
    until(
        "the hung post given up",
        WAIT,
        || s.control.hooks_held(),
        |n| *n == 0,
    );
    // Refusing: 503.
    s.control.release_hooks();
    s.control.set_hook_status(503);
    block(&["k1", "k2"], "k2");
    s.envoy.wait_stat(webhook_errors, WAIT, |v| v >= 2);
    // Answering again: no more errors.
    s.control.set_hook_status(200);
    block(&["k1", "k2", "k3"], "k3");
    s.envoy.wait_stat(alerts, WAIT, |v| v >= 4);
    // Settle: the leader polled three more times after the last post was answered.
    let p = s.control.polls();
    until("3 more polls", WAIT, || s.control.polls(), |n| *n >= p + 3);
    c.wait("k3 refused 10 times in a row", |o| {
        o.iter()
            .filter(|x| x.phase == 4 && key_of(x) == Some("k3"))
            .rev()
            .take(10)
            .filter(|x| x.status == Some(403))
            .count()
            == 10
    });
    let out = c.stop();

    // Every answer the defined one: `spam` refused while the endpoint hangs (in phases 0 and
    // 3 the list changes under the answers), k1..k3 refused once listed, all else served; no
    // request failed.
    for o in &out {
        let settled = o.phase == o.answered;
        let ok = match (o.phase, is_spam(o), key_of(o)) {
            (1 | 2, true, _) if settled => o.status == Some(403),
            (1 | 2, true, _) => matches!(o.status, Some(200) | Some(403)),
            (0 | 3, true, _) => matches!(o.status, Some(200) | Some(403)),
            (4, _, Some(_)) => matches!(o.status, Some(200) | Some(403)),
            _ => o.status == Some(200),
        };
        assert!(ok, "unexpected answer {o:?}");
    }
    let client = by_status(&out);
    assert_sli_counted(&s, &client);
    let refused = client.get(&403).copied().unwrap_or(0) as i64;
    let shed = "wasmcustom.sg.hotkey.post_view.shed";
    assert_eq!(
        s.envoy.wait_stat(shed, WAIT, |v| v >= refused),
        refused,
        "hotkey's refusals vs the client's 403s"
    );
    // Every timed-out poll counted once: at most the polls the endpoint got while hanging.
    assert!(
        e - e0 <= polls_hung as i64,
        "{e0} -> {e} errors for {polls_hung} polls"
    );
    let stats = s.envoy.stats();
    assert_eq!(
        stats.get(webhook_errors).copied(),
        Some(2),
        "one hang, one 503"
    );
    assert_eq!(stats.get(alerts).copied(), Some(4), "spam, k1, k2, k3");
    let hooks = s.control.hooks();
    for k in ["spam", "k1", "k2", "k3"] {
        assert_eq!(
            hooks
                .iter()
                .filter(|h| h.contains(&format!("`{k}`")))
                .count(),
            1,
            "{k}: {hooks:#?}"
        );
    }
    s.envoy.wait_log("operator list not applied", WAIT);
    s.envoy.wait_log("alert webhook answered 503", WAIT);
    assert_no_wasm_failure(&s);
    eprintln!(
        "control plane faults: {} answers {client:?}; operator endpoint hanging: {} timed-out \
         polls counted, {served_hung} answers served meanwhile; webhook: {} posts, \
         webhook_errors 2 (hang, 503), {served_while_held} post(s) still hanging after the 20 \
         answers sent during the hang",
        out.len(),
        e - e0,
        hooks.len()
    );
}

/// Envoy hot-restarted (`--restart-epoch 1`, same base ID) while a client loop runs: no
/// request fails; Envoy's counters carry over to the new process; the filters' shared data
/// (rate-limit buckets, hot sets) does not: the new process starts fresh.
#[test]
fn hot_restart_under_load_keeps_counters_and_starts_limits_fresh() {
    let mut rl = bundle_config("ratelimit");
    rl["rules"].as_array_mut().unwrap().insert(
        0,
        json!({"name": "tight", "match": {"path_prefix": "/tight"},
            "key": {"fixed": "all"}, "rate": "1r/m", "burst": 4, "mode": "nodelay"}),
    );
    let mut hk = bundle_config("hotkey");
    hk["rules"][0]["threshold_rps"] = json!(30);
    hk["rules"][0]["cooldown_ms"] = json!(600_000);
    hk["rules"][0]["action"] = json!({"reject": {"status": 503, "body": "hot\n"}});
    let hot = HotRestart {
        drain_s: 1,
        parent_shutdown_s: 2,
    };
    let mut s = Stack::start_hot(
        &bundle_filters(&[("ratelimit", rl), ("hotkey", hk)]),
        2,
        hot,
        |_| {},
    );
    // Every request this test sends outside the client loop, by status (for sli's counts).
    let direct: RefCell<BTreeMap<u16, u64>> = RefCell::new(BTreeMap::new());
    let get = |s: &Stack, path: &str| {
        let status = s.get(path).status;
        *direct.borrow_mut().entry(status).or_default() += 1;
        status
    };
    // The limit: admitted until the first 429.
    let admitted = |s: &Stack| {
        let mut n = 0;
        for _ in 0..100 {
            match get(s, "/tight") {
                200 => n += 1,
                429 => return n,
                other => panic!("/tight: {other}"),
            }
        }
        panic!("/tight never limited");
    };
    let before_limit = admitted(&s);
    assert_eq!(get(&s, "/tight"), 429);
    // A hot key, shed (its first requests may be ratelimit's 429s: 50 r/s per blog).
    let hot_path = "/PostView?blogId=hot&logNo=1";
    let t = Instant::now();
    let mut shed = false;
    while !shed && t.elapsed() < WAIT {
        shed = get(&s, hot_path) == 503;
    }
    assert!(shed, "the hot key was never shed");

    // Traffic on cold keys through the restart.
    let paths: Vec<String> = (0..MIN_PATHS)
        .map(|i| format!("/PostView?blogId=cold{i}&logNo=1"))
        .collect();
    let c = Client::start(s.port(), &paths);
    c.wait("100 answers", |o| o.len() >= 100);
    let parent_stats = s.envoy.stats();
    let parent_rq = parent_stats["http.ingress.downstream_rq_total"];
    let parent_sli = sli_codes(&s.envoy.prometheus(), "inbound");
    c.set_phase(1);
    let restart = Instant::now();
    s.envoy.hot_restart().unwrap();
    let ready_ms = restart.elapsed().as_millis();
    s.envoy.wait_parent_exit(WAIT).unwrap();
    let parent_exit_ms = restart.elapsed().as_millis();
    c.set_phase(2);
    c.wait("100 answers after the old process exited", |o| {
        o.iter().filter(|x| x.phase == 2).count() >= 100
    });
    let out = c.stop();
    let failed: Vec<&Outcome> = out.iter().filter(|o| o.status != Some(200)).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed through the hot restart, e.g. {:?}",
        failed.len(),
        out.len(),
        &failed[..failed.len().min(5)]
    );

    // The new process: fresh shared data. The hot key is served (until it is hot again), the
    // limit admits its whole burst again.
    assert_eq!(get(&s, hot_path), 200, "hot set carried over");
    let after_limit = admitted(&s);
    assert_eq!(
        after_limit, before_limit,
        "the limit's burst in the new process"
    );

    // Envoy's counters carried over: the parent's are merged into the child's, the filters'
    // own (`wasmcustom.*`) as well; gauges are the new process's own.
    let stats = s.envoy.stats();
    assert_eq!(stats.get("server.hot_restart_epoch").copied(), Some(1));
    let rq = stats["http.ingress.downstream_rq_total"];
    assert!(rq >= parent_rq, "downstream_rq_total {parent_rq} -> {rq}");
    const GAUGES: [&str; 3] = [".hot_keys", ".cache_bytes", ".overloaded_rules"];
    let carried: Vec<(&String, i64, i64)> = parent_stats
        .iter()
        .filter(|(k, v)| k.starts_with("wasmcustom.sg.") && **v > 0)
        .map(|(k, v)| (k, *v, stats.get(k).copied().unwrap_or(-1)))
        .collect();
    for (k, p, c) in &carried {
        if !GAUGES.iter().any(|g| k.ends_with(g)) {
            assert!(c >= p, "{k}: {p} in the old process, {c} in the new");
        }
    }
    assert_eq!(stats.get("wasmcustom.sg.hotkey.hot_keys").copied(), Some(0));
    // sli's counts (host counters too) over both processes.
    let mut client = by_status(&out);
    for (code, n) in direct.borrow().iter() {
        *client.entry(*code).or_default() += n;
    }
    let total: u64 = client.values().sum();
    // Measured, not carried (README "Restarts and reloads"): the new process's sli series hold
    // only its own requests. What is asserted: nothing is counted twice.
    let mut sli = BTreeMap::new();
    until(
        "sli's counts after the restart",
        WAIT,
        || {
            sli = sli_codes(&s.envoy.prometheus(), "inbound");
            sli.values().sum::<u64>()
        },
        |n| *n >= 200,
    );
    let sli_total: u64 = sli.values().sum();
    assert!(
        sli_total <= total,
        "sli counted {sli_total} of {total} requests"
    );
    for (code, n) in &sli {
        let sent = client
            .get(&code.parse::<u16>().unwrap_or(0))
            .copied()
            .unwrap_or(0);
        assert!(*n <= sent, "sli code {code}: {n}, the client got {sent}");
    }
    assert_no_wasm_failure(&s);
    eprintln!(
        "hot restart: {} answers, none failed; child ready {ready_ms} ms, parent exited \
         {parent_exit_ms} ms after the restart began; downstream_rq_total {parent_rq} -> {rq}; \
         limit burst {before_limit} before, {after_limit} after; filter counters (parent, \
         child): {carried:?}; requests sent {total} {client:?}, Envoy's downstream_rq_total \
         {rq}, sli counted {sli_total} {sli:?} (the old process's sli just before: {parent_sli:?})",
        out.len()
    );
}
