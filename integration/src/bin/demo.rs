//! `make demo`: the mission in two minutes. The demo blog (an app with a finite worker pool)
//! and its read-only simple-page service behind Envoy, hit by the emergency-SMS spike: 28x
//! the normal traffic, all on one blog ("emergency") and linked in mixed URL forms, on top of
//! the normal traffic over 2,000 blogs. First a short run with no protection, then the same spike
//! against the spikeguard bundle (with Prometheus beside it) while a live table prints once a
//! second what was offered and who answered; the demo prints the hot key when `hotkey` names
//! it and the alert it sends (to a local webhook receiver standing in for Slack), then the two
//! runs side by side. When stdout is a terminal it then leaves the protected stack running
//! (Envoy admin, Prometheus, the status page, the app) until Ctrl-C; with no terminal,
//! `--no-hold` or `CI` set it exits by itself.
//!
//! Knobs: `--seconds` / `DEMO_SECONDS` (length of the protected run, default 40; the
//! unprotected run is half as long; the spike starts after a fifth of each, at most 5 s),
//! `--no-hold` / `--hold` (`DEMO_HOLD=1`), `--breaker` (`DEMO_BREAKER=1`: also the outbound-API
//! part, the blog's calls to a hanging API without and with `breaker`).

use clap::Parser;
use sg_integration::alertmanager::WebhookReceiver;
use sg_integration::envoy::{repo_root, Bundle, Envoy};
use sg_integration::http;
use sg_integration::loadgen::{self, KeyMix, LoadConfig, Progress, Report};
use sg_integration::prometheus::Prometheus;
use sg_integration::upstream::{Upstream, UpstreamConfig};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The demo blog behind Envoy under a 28x spike, without and with spikeguard.
#[derive(Debug, Parser)]
#[command(name = "demo")]
struct Args {
    /// Length of the protected run in seconds (the unprotected run is half as long).
    #[arg(long, env = "DEMO_SECONDS", default_value_t = 40)]
    seconds: u64,
    /// Leave the protected stack running until Ctrl-C even without a terminal.
    #[arg(long, env = "DEMO_HOLD", value_parser = clap::builder::FalseyValueParser::new())]
    hold: bool,
    /// Exit after the summary even on a terminal (also when `CI` is set); wins over `--hold`.
    #[arg(long)]
    no_hold: bool,
    /// Also run the outbound-API part (a hanging API, without and with `breaker`; 2 x 6 to
    /// 10 s, a quarter of `--seconds`).
    #[arg(long, env = "DEMO_BREAKER", value_parser = clap::builder::FalseyValueParser::new())]
    breaker: bool,
}

/// The hot blog.
const HOT: &str = "emergency";
/// The hot blog's links are written several ways (as shared links are): query spellings, a
/// cache-buster, the path form, an upper-case ID and the blog's post list. Every form is the
/// same blog.
const HOT_FORMS: &[&str] = &[
    "/PostView?blogId={key}&logNo=1",
    "/PostView?logNo=1&blogId={key}",
    "/PostView?blogId={key}&logNo=1&x={n}",
    "/{key}/1",
    "/{key}/1/",
    "/PostView?blogId=EMERGENCY&logNo=1",
    "/PostList?blogId={key}",
];
/// Normal traffic: 80 pages/s over 2,000 blogs (Zipf).
const NORMAL_RPS: f64 = 80.0;
const BLOGS: usize = 2000;
/// The spike: 28x the normal traffic (2,240/s, as `make drill` counts it), all on the hot
/// blog; 2,320 requests/s in all, over the app's ~1,600 pages/s.
const SPIKE_FACTOR: f64 = 28.0;
/// The app: 32 workers, 20 ms per page => ~1,600 pages/s before "thread full".
const APP_WORKERS: usize = 32;
const APP_LATENCY_MS: u64 = 20;

/// Counters read once a second for the live table (cumulative; rows show differences).
#[derive(Debug, Clone, Default)]
struct Snap {
    offered: u64,
    /// Client-seen 5xx and no answer (time-outs, resets).
    failed: u64,
    app_ok: u64,
    app_full: u64,
    simple: u64,
    cache: i64,
    shed: i64,
    limited: i64,
    diverted: i64,
}

fn envoy_sg_stats(envoy: &Envoy) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    if let Ok(r) = http::get(envoy.admin, "/stats?filter=^wasmcustom.sg.") {
        for line in r.body.lines() {
            if let Some((k, v)) = line.split_once(": ") {
                if let Ok(n) = v.trim().parse::<i64>() {
                    out.insert(k.to_string(), n);
                }
            }
        }
    }
    out
}

fn snap(p: &Progress, envoy: &Envoy, app: &Upstream, simple: &Upstream) -> Snap {
    let stats = envoy_sg_stats(envoy);
    let sum = |pred: &dyn Fn(&str) -> bool| -> i64 {
        stats.iter().filter(|(k, _)| pred(k)).map(|(_, v)| *v).sum()
    };
    let a = app.stats();
    Snap {
        offered: p.offered.load(Ordering::Relaxed),
        failed: p.done(5) + p.done(0),
        app_ok: a.by_status.get(&200).copied().unwrap_or(0),
        app_full: a.thread_full,
        simple: simple.stats().total,
        cache: sum(&|k| {
            k == "wasmcustom.sg.simplepage.cache_hit" || k == "wasmcustom.sg.simplepage.cache_stale"
        }),
        shed: sum(&|k| k.starts_with("wasmcustom.sg.hotkey.") && k.ends_with(".shed")),
        limited: sum(&|k| k.starts_with("wasmcustom.sg.ratelimit.") && k.ends_with(".rejected")),
        diverted: sum(&|k| k.starts_with("wasmcustom.sg.simplepage.") && k.contains(".diverted_")),
    }
}

/// The first hot-key alert: when it arrived, the key and rate it names, its body.
#[derive(Debug, Clone)]
struct Detection {
    after_s: f64,
    key: String,
    rule: String,
    rate: String,
    body: String,
}

/// `rule `post_view`, key `emergency`, 1234.5 r/s` in the alert's text.
fn parse_alert(text: &str) -> Option<(String, String, String)> {
    let after = |s: &str, pre: &str| -> Option<(String, usize)> {
        let i = s.find(pre)? + pre.len();
        let j = s.get(i..)?.find('`')?;
        Some((s.get(i..i + j)?.to_string(), i + j + 1))
    };
    let (rule, i) = after(text, "rule `")?;
    let rest = text.get(i..)?;
    let (key, j) = after(rest, "key `")?;
    let rate = rest
        .get(j..)?
        .trim_start_matches(',')
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string();
    Some((rule, key, rate))
}

fn pretty(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| body.to_string())
}

/// Everything one run started; dropped in field order (Envoy before what it proxies to).
struct Stack {
    prom: Option<Prometheus>,
    envoy: Envoy,
    app: Upstream,
    simple: Upstream,
    hook: WebhookReceiver,
}

/// What one run saw, for the summary.
#[derive(Debug, Default)]
struct Outcome {
    seconds: f64,
    offered: u64,
    normal_ok: u64,
    normal_all: u64,
    normal_p99_ms: Option<f64>,
    hot_ok: u64,
    hot_all: u64,
    end: Snap,
    peak_busy: u64,
    detected: Option<Detection>,
}

fn hot_counts(r: &Report) -> (u64, u64) {
    let st = r.by_key_status.get(HOT);
    let all = st.map_or(0, |m| m.values().sum());
    let ok = st.and_then(|m| m.get(&200)).copied().unwrap_or(0);
    (ok, all)
}

fn start_stack(protected: bool) -> Result<Stack, Box<dyn std::error::Error>> {
    let app = Upstream::start(UpstreamConfig {
        name: "app".into(),
        capacity: APP_WORKERS,
        latency_ms: APP_LATENCY_MS,
        queue_timeout_ms: 200,
        ..UpstreamConfig::default()
    })?;
    // The read-only simple-page service: same URLs, long Cache-Control, high capacity.
    let simple = Upstream::start(UpstreamConfig::simple_page())?;
    // Stands in for the chat webhook (Slack-compatible) the alerts go to.
    let hook = WebhookReceiver::start()?;
    let mut b = Bundle::load()?;
    if protected {
        // The bundle's hotkey, with its alerts sent to the receiver (spikeguard_control).
        let mut hk = b
            .filter_config("hotkey")
            .ok_or("no hotkey config in envoy.yaml")?;
        hk["alert"] =
            serde_json::json!({"webhook_cluster": "spikeguard_control", "webhook_path": "/hook"});
        b.set_filter_config("hotkey", &hk)?;
    } else {
        b.keep_filters(&[]);
    }
    b.set_cluster_port("main_app", app.port)?;
    b.set_cluster_port("simple_page", simple.port)?;
    b.set_cluster_port("outbound_api", app.port)?;
    b.set_cluster_port("spikeguard_control", hook.port())?;
    let envoy = b.launch(2)?;
    let prom = if protected {
        prometheus_beside(&envoy)
    } else {
        None
    };
    Ok(Stack {
        prom,
        envoy,
        app,
        simple,
        hook,
    })
}

fn header() {
    println!(
        "{:>5} {:>8} | {:>6} {:>6} {:>7} {:>7} {:>6} {:>7} {:>7} | {:>10} {:>9}",
        "t s",
        "offered",
        "app",
        "app503",
        "simple",
        "μcache",
        "shed",
        "ratelim",
        "failed",
        "normal p99",
        "app busy"
    );
}

/// One run: normal traffic for `seconds`, the spike from `spike_at_s` on; a live table row
/// every second.
fn run(
    name: &str,
    stack: &Stack,
    seconds: f64,
    spike_at_s: f64,
) -> Result<Outcome, Box<dyn std::error::Error>> {
    let progress = Arc::new(Progress::default());
    let done = AtomicBool::new(false);
    let target = stack.envoy.url();
    let normal_cfg = LoadConfig {
        target: target.clone(),
        rate_rps: NORMAL_RPS,
        duration_ms: (seconds * 1000.0) as u64,
        path_template: "/PostView?blogId={key}&logNo=1".into(),
        hot_templates: HOT_FORMS.iter().map(|f| f.to_string()).collect(),
        keys: KeyMix {
            zipf_n: BLOGS,
            zipf_s: 1.0,
            key_prefix: "blog".into(),
            ..KeyMix::default()
        },
        max_in_flight: 4096,
        timeout_ms: 5000,
        ..LoadConfig::default()
    };
    let spike_cfg = LoadConfig {
        rate_rps: NORMAL_RPS * SPIKE_FACTOR,
        duration_ms: ((seconds - spike_at_s) * 1000.0) as u64,
        keys: KeyMix {
            hot: vec![(HOT.into(), 1.0)],
            seed: 7,
            ..normal_cfg.keys.clone()
        },
        ..normal_cfg.clone()
    };
    println!(
        "[{name}] {:.0} s: normal traffic {NORMAL_RPS:.0}/s; from t={spike_at_s:.0} s the spike, \"{HOT}\" at \
         {:.0}/s; per second:",
        seconds,
        NORMAL_RPS * SPIKE_FACTOR
    );
    header();
    let t0 = Instant::now();
    let spike_start = t0 + Duration::from_secs_f64(spike_at_s);
    let (normal, spike, out) = std::thread::scope(|s| {
        let p = progress.clone();
        let normal = s.spawn(move || loadgen::run_with_progress(&normal_cfg, Some(p)));
        let p = progress.clone();
        let spike = s.spawn(move || {
            std::thread::sleep(spike_start.saturating_duration_since(Instant::now()));
            loadgen::run_with_progress(&spike_cfg, Some(p))
        });
        let watch = s.spawn(|| watch(stack, &progress, &done, t0, spike_start));
        let normal = normal.join();
        let spike = spike.join();
        done.store(true, Ordering::SeqCst);
        (normal, spike, watch.join())
    });
    let (normal, spike) = match (normal, spike) {
        (Ok(n), Ok(s)) => (n?, s?),
        _ => return Err("a load generator thread panicked".into()),
    };
    let mut out = out.map_err(|_| "the live table thread panicked")?;
    out.seconds = seconds;
    let (h1, a1) = hot_counts(&normal);
    let (h2, a2) = hot_counts(&spike);
    out.hot_ok = h1 + h2;
    out.hot_all = a1 + a2;
    out.normal_ok = progress.normal_ok.load(Ordering::Relaxed);
    out.normal_all = progress.normal_done.load(Ordering::Relaxed);
    out.end = snap(&progress, &stack.envoy, &stack.app, &stack.simple);
    out.offered = out.end.offered;
    out.peak_busy = stack.app.stats().max_in_flight;
    Ok(out)
}

/// The live table: a row a second until `done`; meanwhile watches for the first alert.
fn watch(
    stack: &Stack,
    progress: &Progress,
    done: &AtomicBool,
    t0: Instant,
    spike_start: Instant,
) -> Outcome {
    let mut out = Outcome::default();
    let mut prev = snap(progress, &stack.envoy, &stack.app, &stack.simple);
    let mut prev_at = Instant::now();
    let mut next_row = t0 + Duration::from_secs(1);
    let mut spike_hist: Option<hdrhistogram::Histogram<u64>> = None;
    let mut status_shown = false;
    while !done.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        if out.detected.is_none() {
            if let Some(r) = stack
                .hook
                .received()
                .into_iter()
                .find(|r| r.body.contains("spikeguard hotkey"))
            {
                let text = serde_json::from_str::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|v| v["text"].as_str().map(str::to_string))
                    .unwrap_or_default();
                let (rule, key, rate) = parse_alert(&text).unwrap_or_default();
                let after_s = Instant::now()
                    .saturating_duration_since(spike_start)
                    .as_secs_f64();
                println!(
                    "  >> hot key detected {after_s:.1} s after the spike began: \"{key}\" (rule {rule}, {rate} r/s). \
                     The alert hotkey sent ({} {} to the webhook receiver):",
                    r.method, r.path
                );
                for l in pretty(&r.body).lines() {
                    println!("     {l}");
                }
                out.detected = Some(Detection {
                    after_s,
                    key,
                    rule,
                    rate,
                    body: r.body,
                });
            }
        } else if !status_shown {
            if let Ok(r) = http::get(stack.envoy.ingress(), "/spikeguard/status") {
                let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
                let listed = &v["hotkey_diverted"];
                if listed.as_array().is_some_and(|a| !a.is_empty()) {
                    println!(
                        "  >> the status page {}/spikeguard/status lists it: \"hotkey_diverted\": {listed}, \"hotkey_hot\": {}",
                        stack.envoy.url(),
                        v["hotkey_hot"]
                    );
                    status_shown = true;
                }
            }
        }
        let now = Instant::now();
        if now < next_row {
            continue;
        }
        next_row += Duration::from_secs(1);
        let cur = snap(progress, &stack.envoy, &stack.app, &stack.simple);
        let dt = now
            .saturating_duration_since(prev_at)
            .as_secs_f64()
            .max(0.001);
        let per_s = |a: u64, b: u64| (a.saturating_sub(b) as f64 / dt).round() as u64;
        let per_si = |a: i64, b: i64| ((a - b).max(0) as f64 / dt).round() as u64;
        let h = progress.take_normal_latency();
        let p99 = h
            .as_ref()
            .map(|h| format!("{:.1} ms", h.value_at_quantile(0.99) as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        if now >= spike_start {
            if let Some(h) = h {
                match spike_hist.as_mut() {
                    Some(all) => {
                        let _ = all.add(&h);
                    }
                    None => spike_hist = Some(h),
                }
            }
        }
        let shed = per_si(cur.shed, prev.shed);
        let failed = per_s(cur.failed, prev.failed).saturating_sub(shed);
        let busy = stack.app.stats().in_flight;
        println!(
            "{:>5.0} {:>8} | {:>6} {:>6} {:>7} {:>7} {:>6} {:>7} {:>7} | {:>10} {:>5}/{:<3}",
            now.saturating_duration_since(t0).as_secs_f64(),
            per_s(cur.offered, prev.offered),
            per_s(cur.app_ok, prev.app_ok),
            per_s(cur.app_full, prev.app_full),
            per_s(cur.simple, prev.simple),
            per_si(cur.cache, prev.cache),
            shed,
            per_si(cur.limited, prev.limited),
            failed,
            p99,
            busy,
            APP_WORKERS
        );
        prev = cur;
        prev_at = now;
    }
    out.normal_p99_ms = spike_hist.map(|h| h.value_at_quantile(0.99) as f64 / 1000.0);
    out
}

fn pct(a: u64, b: u64) -> String {
    if b == 0 {
        "-".into()
    } else {
        format!("{:.1}%", a as f64 * 100.0 / b as f64)
    }
}

fn summary(runs: &[(&str, &Outcome)]) {
    println!();
    print!("{:<44}", "the same spike, side by side");
    for (name, _) in runs {
        print!(" {name:>15}");
    }
    println!();
    let row = |label: &str, f: &dyn Fn(&Outcome) -> String| {
        print!("{label:<44}");
        for (_, o) in runs {
            print!(" {:>15}", f(o));
        }
        println!();
    };
    row("run length", &|o| format!("{:.0} s", o.seconds));
    row("requests offered", &|o| o.offered.to_string());
    row("normal users answered 200", &|o| {
        pct(o.normal_ok, o.normal_all)
    });
    row("normal users' p99 during the spike", &|o| {
        o.normal_p99_ms.map_or("-".into(), |v| format!("{v:.1} ms"))
    });
    row("hot blog answered 200", &|o| pct(o.hot_ok, o.hot_all));
    row("answered by the app (200)", &|o| o.end.app_ok.to_string());
    row("app \"thread full\" 503", &|o| o.end.app_full.to_string());
    row("sent to the simple page (diverted)", &|o| {
        o.end.diverted.to_string()
    });
    row("  answered from the micro-cache", &|o| {
        o.end.cache.to_string()
    });
    row("  answered by the simple-page service", &|o| {
        o.end.simple.to_string()
    });
    row("shed by hotkey (503)", &|o| o.end.shed.to_string());
    row("rate-limited (429)", &|o| o.end.limited.to_string());
    row("failed (5xx other than shed, no answer)", &|o| {
        o.end
            .failed
            .saturating_sub(u64::try_from(o.end.shed).unwrap_or(0))
            .to_string()
    });
    row("app workers busy at peak", &|o| {
        format!("{}/{APP_WORKERS}", o.peak_busy)
    });
    row("hot key named after", &|o| {
        o.detected
            .as_ref()
            .map_or("-".into(), |d| format!("{:.1} s", d.after_s))
    });
}

/// Prometheus scraping `envoy` every second with the generated rules; None (and why) when
/// it cannot start (e.g. `prometheus` is not installed: `make setup` installs it).
fn prometheus_beside(envoy: &Envoy) -> Option<Prometheus> {
    let rules = repo_root().join("config/prometheus/rules");
    let files = [
        rules.join("spikeguard-recording.yml"),
        rules.join("spikeguard-alerts.yml"),
    ];
    let cfg = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
         scrape_configs:\n  - job_name: envoy\n    metrics_path: /stats/prometheus\n    \
         static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
        envoy.admin
    );
    match Prometheus::start(&cfg, &files) {
        Ok(p) => {
            println!(
                "[spikeguard] Prometheus http://127.0.0.1:{} scraping Envoy's /stats/prometheus every 1 s, \
                 rules from config/prometheus/rules/",
                p.port()
            );
            Some(p)
        }
        Err(e) => {
            println!("[spikeguard] no Prometheus beside Envoy ({e}); `make setup` installs it");
            None
        }
    }
}

/// What Prometheus recorded of the run (it scraped every second) and the status page.
fn print_slis(name: &str, p: &Prometheus, envoy: &Envoy) {
    // Two more scrapes after the load ended, so the last counts are in.
    std::thread::sleep(Duration::from_millis(2500));
    let q = "sum by (page, code, action) (max_over_time(spikeguard_requests_total{direction=\"inbound\"}[10m]))";
    match p.query_result(q) {
        Ok(rows) => {
            println!("[{name}] Prometheus: requests by page, code and action (spikeguard_requests_total):");
            let mut rows: Vec<(String, f64)> = rows
                .iter()
                .map(|r| {
                    let m = &r["metric"];
                    let l = |k: &str| m[k].as_str().unwrap_or("").to_string();
                    let v = r["value"][1]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0.0);
                    (
                        format!(
                            "page={:<9} code={:<5} action={}",
                            l("page"),
                            l("code"),
                            l("action")
                        ),
                        v,
                    )
                })
                .filter(|(_, v)| *v > 0.0)
                .collect();
            rows.sort_by(|a, b| b.1.total_cmp(&a.1));
            for (k, v) in rows {
                println!("    {k:<48} {v:>8}");
            }
        }
        Err(e) => println!("[{name}] Prometheus query failed: {e}"),
    }
    let q = "histogram_quantile(0.99, sum by (le) (max_over_time(spikeguard_request_duration_ms_bucket{direction=\"inbound\"}[10m])))";
    if let Ok(r) = p.query_result(q) {
        if let Some(v) = r.first().and_then(|r| r["value"][1].as_str()) {
            let v = v
                .parse::<f64>()
                .map_or(v.to_string(), |v| format!("{v:.1}"));
            println!("    p99 duration of the run (spikeguard_request_duration_ms_bucket): at most {v} ms");
        }
    }
    if let Ok(alerts) = p.query_result("ALERTS") {
        let mut names: Vec<String> = alerts
            .iter()
            .map(|a| {
                format!(
                    "{} ({})",
                    a["metric"]["alertname"].as_str().unwrap_or("?"),
                    a["metric"]["alertstate"].as_str().unwrap_or("?")
                )
            })
            .collect();
        names.sort();
        names.dedup();
        println!(
            "    alerts pending or firing: {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    if let Ok(r) = sg_integration::http::get(envoy.ingress(), "/spikeguard/status") {
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap_or_default();
        let top: Vec<String> = v["top_urls"]["urls"]
            .as_array()
            .map(|a| {
                a.iter()
                    .take(5)
                    .map(|u| format!("{} {}/s", u["url"].as_str().unwrap_or("?"), u["rps"]))
                    .collect()
            })
            .unwrap_or_default();
        println!("    status page top URLs (last 60 s): {}", top.join(", "));
    }
}

/// The outbound-API part: what the blog's calls saw.
struct ApiRun {
    name: &'static str,
    report: Report,
    fallbacks: i64,
    api_got: u64,
    opened: i64,
}

/// The blog calls an outbound API 100 times a second through the egress listener; a third
/// of the way in, the API starts hanging (3 s per call, past the route's 1 s timeout).
fn api_run(
    name: &'static str,
    protected: bool,
    seconds: u64,
) -> Result<ApiRun, Box<dyn std::error::Error>> {
    let api = Upstream::start(UpstreamConfig {
        name: "api".into(),
        capacity: 10_000,
        queue_timeout_ms: 60_000,
        ..UpstreamConfig::default()
    })?;
    let mut b = Bundle::load()?;
    b.keep_filters(if protected { &["breaker"] } else { &[] });
    b.set_cluster_port("outbound_api", api.port)?;
    b.set_cluster_port("main_app", api.port)?;
    let envoy = b.launch(2)?;
    let target = format!("http://127.0.0.1:{}", envoy.port("egress"));
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(seconds * 1000 / 3));
            api.set_latency_ms(3000);
        });
        loadgen::run(&LoadConfig {
            target,
            rate_rps: 100.0,
            duration_ms: seconds * 1000,
            path_template: "/api/json?item={key}".into(),
            keys: KeyMix {
                zipf_n: 100,
                zipf_s: 1.0,
                key_prefix: "i".into(),
                ..KeyMix::default()
            },
            max_in_flight: 4096,
            timeout_ms: 5000,
            ..LoadConfig::default()
        })
    })?;
    let stats = envoy.stats();
    let stat = |k: &str| stats.get(k).copied().unwrap_or(0);
    Ok(ApiRun {
        name,
        report,
        fallbacks: stat("wasmcustom.sg.breaker.outbound_api.not_permitted")
            + stat("wasmcustom.sg.breaker.outbound_api.bulkhead_rejected"),
        api_got: api.stats().total,
        opened: stat("wasmcustom.sg.breaker.outbound_api.opened"),
    })
}

/// Waits for Ctrl-C (then returns, so every process started is stopped on drop).
fn hold_until_ctrl_c() -> Result<(), Box<dyn std::error::Error>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(tokio::signal::ctrl_c())?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let started = Instant::now();
    let protected_s = args.seconds.max(4) as f64;
    let unprotected_s = (protected_s / 2.0).max(4.0);
    let spike_at = |len: f64| (len / 5.0).clamp(1.0, 5.0).round();
    println!(
        "spikeguard demo: the blog app ({APP_WORKERS} workers x {APP_LATENCY_MS} ms, ~{} pages/s) and its simple-page \
         service behind Envoy.\nAn emergency SMS links blog \"{HOT}\": {SPIKE_FACTOR:.0}x the normal traffic ({:.0}/s) on that one blog, on top of \
         the normal {NORMAL_RPS:.0}/s over {BLOGS} blogs;\nits links written {} ways: {}\n",
        APP_WORKERS as u64 * 1000 / APP_LATENCY_MS,
        NORMAL_RPS * SPIKE_FACTOR,
        HOT_FORMS.len(),
        HOT_FORMS.join("  ").replace("{key}", HOT).replace("{n}", "N")
    );
    let bare = {
        println!("1. no protection: Envoy with no spikeguard filter");
        let stack = start_stack(false)?;
        run(
            "no protection",
            &stack,
            unprotected_s,
            spike_at(unprotected_s),
        )?
    };
    println!("\n2. spikeguard: Envoy with the bundle (envoy.yaml)");
    let stack = start_stack(true)?;
    println!(
        "[spikeguard] Envoy {} (admin http://127.0.0.1:{}), app {}, simple page {}, alert webhook {}",
        stack.envoy.url(),
        stack.envoy.admin,
        stack.app.url(),
        stack.simple.url(),
        stack.hook.url("/hook")
    );
    let guarded = run("spikeguard", &stack, protected_s, spike_at(protected_s))?;
    match &guarded.detected {
        Some(d) => println!(
            "\nhotkey named \"{}\" (rule {}, {} r/s) {:.1} s after the spike began; alert payload: {}",
            d.key, d.rule, d.rate, d.after_s, d.body
        ),
        None => println!("\nno hot-key alert arrived during the run"),
    }
    if let Some(p) = &stack.prom {
        print_slis("spikeguard", p, &stack.envoy);
    }
    summary(&[("no protection", &bare), ("spikeguard", &guarded)]);
    println!(
        "\napp: the blog's own 200s; app503: the app out of workers (\"thread full\"); simple: pages the \
         simple-page service served;\nμcache: answered from the proxy's micro-cache; shed: hotkey 503s; \
         ratelim: ratelimit 429s; failed: 5xx other than shed, or no answer\n(here Envoy's own 503s when \
         the app's 64 connections are all busy); normal p99: users of the other blogs, over the last second;\napp busy: \
         the app's workers serving now."
    );
    if args.breaker {
        breaker_part((args.seconds / 4).clamp(6, 10))?;
    }
    println!(
        "\nthe protected stack:\n  Envoy (the blog)  {}/PostView?blogId={HOT}&logNo=1\n  Envoy admin       http://127.0.0.1:{}/ \
         (try /stats?filter=sg.)\n  status page       {}/spikeguard/status",
        stack.envoy.url(),
        stack.envoy.admin,
        stack.envoy.url()
    );
    if let Some(p) = &stack.prom {
        println!(
            "  Prometheus        http://127.0.0.1:{}/ (try /alerts, /graph?g0.expr=spikeguard:requests_by_code:rate5m)",
            p.port()
        );
    }
    println!(
        "  demo app          {}/__admin/stats\n  simple page       {}/__admin/stats\n  alert webhook     {} ({} alerts received)",
        stack.app.url(),
        stack.simple.url(),
        stack.hook.url("/hook"),
        stack
            .hook
            .received()
            .iter()
            .filter(|r| r.method == "POST" && r.path == "/hook")
            .count()
    );
    println!(
        "demo took {:.0} s",
        Instant::now()
            .saturating_duration_since(started)
            .as_secs_f64()
    );
    let interactive = std::io::stdout().is_terminal() && std::env::var_os("CI").is_none();
    if !args.no_hold && (args.hold || interactive) {
        println!("running until Ctrl-C");
        hold_until_ctrl_c()?;
        println!("stopped");
    } else {
        println!("non-interactive: exiting (--hold keeps it running)");
    }
    drop(stack);
    Ok(())
}

/// The outbound-API part (`--breaker`).
fn breaker_part(seconds: u64) -> Result<(), Box<dyn std::error::Error>> {
    println!(
        "\nthe blog's calls to an outbound API (egress listener, 100 calls/s for {seconds} s); after\n\
         {} s the API hangs (3 s per call; the egress route times out at 1 s):",
        seconds / 3
    );
    let api_runs = [
        api_run("no breaker", false, seconds)?,
        api_run("breaker", true, seconds)?,
    ];
    println!(
        "\n{:<15} {:>8} {:>10} {:>12} {:>8} {:>8} {:>10} {:>10} {:>12} {:>8}",
        "run",
        "calls",
        "real 200",
        "fallback []",
        "503",
        "504",
        "p50 ms",
        "p99 ms",
        "API got",
        "opened"
    );
    for r in &api_runs {
        let st = |c: u16| r.report.by_status.get(&c).copied().unwrap_or(0);
        let fallbacks = u64::try_from(r.fallbacks).unwrap_or(0);
        println!(
            "{:<15} {:>8} {:>10} {:>12} {:>8} {:>8} {:>10.1} {:>10.1} {:>12} {:>8}",
            r.name,
            r.report.completed,
            st(200).saturating_sub(fallbacks),
            fallbacks,
            st(503),
            st(504),
            r.report.latency_us.p50 as f64 / 1000.0,
            r.report.latency_us.p99 as f64 / 1000.0,
            r.api_got,
            r.opened
        );
    }
    println!(
        "\nWithout the breaker, calls to the hung API hold their caller for the full 1 s timeout and\n\
         fail (504), or are refused by the cluster's own limits (503, no body the page can use).\n\
         With it, the bulkhead answers the excess with the fallback (`[]`, an empty list the page\n\
         renders) at once, the breaker opens once its window has 50% failures (a second after the\n\
         hang began: the first failures are the first 1 s time-outs), and from then on callers get\n\
         the fallback at once and the API sees only the half-open probes."
    );
    Ok(())
}
