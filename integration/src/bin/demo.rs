//! `make demo`: the blog (demo upstream with a finite worker pool) behind Envoy, hit by the
//! emergency-SMS spike (one blog at ~28x its share of traffic on top of normal traffic),
//! first with no protection, then with the spikeguard bundle. Prints what normal users and
//! the app saw in each run. Then the blog's calls to an outbound API (the egress listener)
//! while that API hangs, without and with `breaker`. `--seconds` (or `DEMO_SECONDS`) sets the length of each run
//! (default 10); `--hold` (or `DEMO_HOLD=1`) leaves the protected stack running for manual
//! requests until Ctrl-C. Beside the protected Envoy runs a Prometheus (Debian's, from `make
//! setup`) scraping it every second with the generated rules of `config/prometheus/rules/`
//! loaded; the demo prints where to look and what it recorded.

use clap::Parser;
use sg_integration::envoy::{repo_root, Bundle, Envoy};
use sg_integration::loadgen::{self, KeyMix, LoadConfig, Report};
use sg_integration::prometheus::Prometheus;
use sg_integration::upstream::{Upstream, UpstreamConfig};
use std::time::Duration;

/// The demo blog behind Envoy under a spike, without and with spikeguard.
#[derive(Debug, Parser)]
#[command(name = "demo")]
struct Args {
    /// Length of each run.
    #[arg(long, env = "DEMO_SECONDS", default_value_t = 10)]
    seconds: u64,
    /// Leave the protected stack running for manual requests until Ctrl-C.
    #[arg(long, env = "DEMO_HOLD")]
    hold: bool,
}

/// The hot blog's links are written several ways (as shared links are): query spellings, a
/// cache-buster, the path form and the blog's post list. Every form is the same blog.
const HOT_FORMS: &[&str] = &[
    "/PostView?blogId={key}&logNo=1",
    "/PostView?logNo=1&blogId={key}",
    "/PostView?blogId={key}&logNo=1&x={n}",
    "/{key}/1",
    "/{key}/1/",
    "/PostList?blogId={key}",
];

struct Run {
    name: &'static str,
    report: Report,
    app_served: u64,
    thread_full: u64,
    rl_rejected: i64,
    /// Requests diverted by simplepage, answered from its cache, and reaching the
    /// simple-page backend.
    diverted: i64,
    cache_hits: i64,
    simple_served: u64,
}

fn ok_share(r: &Report, hot: bool) -> (u64, u64) {
    let mut ok = 0;
    let mut all = 0;
    for (k, st) in &r.by_key_status {
        if (k == "hot") != hot {
            continue;
        }
        all += st.values().sum::<u64>();
        ok += st.get(&200).copied().unwrap_or(0);
    }
    (ok, all)
}

fn run(
    name: &'static str,
    protected: bool,
    args: &Args,
) -> Result<Run, Box<dyn std::error::Error>> {
    let seconds = args.seconds;
    // The app: 32 workers, 20 ms per page => ~1,600 pages/s before "thread full".
    let app = Upstream::start(UpstreamConfig {
        capacity: 32,
        latency_ms: 20,
        queue_timeout_ms: 200,
        ..UpstreamConfig::default()
    })?;
    // The read-only simple-page system: same URLs, long Cache-Control, high capacity.
    let simple = Upstream::start(UpstreamConfig::simple_page())?;
    let mut b = Bundle::load()?;
    if !protected {
        b.keep_filters(&[]);
    }
    b.set_cluster_port("main_app", app.port)?;
    b.set_cluster_port("simple_page", simple.port)?;
    b.set_cluster_port("outbound_api", app.port)?;
    let envoy = b.launch(2)?;
    println!(
        "[{name}] envoy on {} (admin {}), app on {}",
        envoy.url(),
        envoy.admin,
        app.url()
    );
    let prom = if protected {
        prometheus_beside(name, &envoy)
    } else {
        None
    };
    // Normal traffic: 300 pages/s over 2,000 blogs (Zipf); the spike: one blog at 2,100/s
    // (28x a normal 75/s hot blog), 2,400 requests/s in all.
    let report = loadgen::run(&LoadConfig {
        target: envoy.url(),
        rate_rps: 2400.0,
        duration_ms: seconds * 1000,
        path_template: "/PostView?blogId={key}&logNo=1".into(),
        hot_templates: HOT_FORMS.iter().map(|f| f.to_string()).collect(),
        keys: KeyMix {
            zipf_n: 2000,
            zipf_s: 1.0,
            hot: vec![("hot".into(), 0.875)],
            key_prefix: "blog".into(),
            ..KeyMix::default()
        },
        max_in_flight: 4096,
        timeout_ms: 5000,
        ..LoadConfig::default()
    })?;
    let st = app.stats();
    let stats = envoy.stats();
    let sum = |pred: &dyn Fn(&str) -> bool| -> i64 {
        stats.iter().filter(|(k, _)| pred(k)).map(|(_, v)| *v).sum()
    };
    let diverted = sum(&|k| k.starts_with("wasmcustom.sg.simplepage.") && k.contains(".diverted_"));
    let cache_hits = sum(&|k| {
        k == "wasmcustom.sg.simplepage.cache_hit" || k == "wasmcustom.sg.simplepage.cache_stale"
    });
    let rl_rejected = stats
        .iter()
        .filter(|(k, _)| {
            (k.starts_with("wasmcustom.sg.ratelimit.") && k.ends_with(".rejected"))
                || (k.starts_with("wasmcustom.sg.hotkey.") && k.ends_with(".shed"))
        })
        .map(|(_, v)| *v)
        .sum();
    if let Some(p) = &prom {
        print_slis(name, p, &envoy);
    }
    if protected && args.hold {
        println!(
            "[{name}] holding: try `curl -i '{}/PostView?blogId=hot&logNo=1'`; Ctrl-C to stop",
            envoy.url()
        );
        loop {
            // Serving until Ctrl-C: nothing to wait for.
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    Ok(Run {
        name,
        report,
        app_served: st.by_status.get(&200).copied().unwrap_or(0),
        thread_full: st.thread_full,
        rl_rejected,
        diverted,
        cache_hits,
        simple_served: simple.stats().total,
    })
}

/// Prometheus scraping `envoy` every second with the generated rules; None (and why) when
/// it cannot start (e.g. `prometheus` is not installed: `make setup` installs it).
fn prometheus_beside(name: &str, envoy: &Envoy) -> Option<Prometheus> {
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
                "[{name}] prometheus on http://127.0.0.1:{} scraping Envoy's /stats/prometheus every 1 s, \
                 rules loaded from config/prometheus/rules/ (try /graph?g0.expr=spikeguard:requests_by_code:rate5m, /alerts); \
                 status page {}/spikeguard/status",
                p.port(),
                envoy.url()
            );
            Some(p)
        }
        Err(e) => {
            println!("[{name}] no prometheus beside Envoy ({e}); `make setup` installs it");
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let seconds = args.seconds;
    println!("spikeguard demo: 2,400 req/s for {seconds} s, 87.5% of it on one blog (\"hot\")");
    println!("the hot blog's URLs, in turn: {}\n", HOT_FORMS.join("  "));
    let runs = [
        run("no protection", false, &args)?,
        run("spikeguard", true, &args)?,
    ];
    println!(
        "\n{:<15} {:>14} {:>14} {:>10} {:>12} {:>10} {:>11} {:>10} {:>10} {:>11} {:>12}",
        "run",
        "normal users",
        "hot blog",
        "shed",
        "app 200s",
        "app 503",
        "p99 ms",
        "errors",
        "diverted",
        "cache hits",
        "simple page"
    );
    for r in &runs {
        let (n_ok, n_all) = ok_share(&r.report, false);
        let (h_ok, h_all) = ok_share(&r.report, true);
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                a as f64 * 100.0 / b as f64
            }
        };
        println!(
            "{:<15} {:>13.1}% {:>13.1}% {:>10} {:>12} {:>10} {:>11.1} {:>10} {:>10} {:>11} {:>12}",
            r.name,
            pct(n_ok, n_all),
            pct(h_ok, h_all),
            r.rl_rejected,
            r.app_served,
            r.thread_full,
            r.report.latency_us.p99 as f64 / 1000.0,
            r.report.errors,
            r.diverted,
            r.cache_hits,
            r.simple_served
        );
    }
    println!(
        "\nnormal users / hot blog: share of their requests answered 200 (normal users = the 2,000\n\
         Zipf blogs; by_key_status covers the 50 busiest keys); shed: requests answered by\n\
         spikeguard itself (hotkey 503 + ratelimit 429); diverted: hot-blog requests simplepage sent\n\
         to the simple page, most answered from the proxy's micro-cache (cache hits), the rest by the\n\
         simple-page backend. With spikeguard, hotkey names the hot blog within a second, simplepage\n\
         serves it as a simple page, ratelimit caps the rest; everyone else reaches the app."
    );
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
