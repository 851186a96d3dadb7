//! `make bench`: per-request cost of the spikeguard filters in Envoy, measured with `wrk`.
//!
//! ```text
//! bench [--out docs/BENCHMARKS.md] [--rounds 5] [--seconds 5] [--warmup 1] [--connections 32]
//!       [--concurrency 1,2] [--variants bare,noop_wasm,...] [--xcheck-rps 5000]
//! ```
//!
//! Each variant is the bundle with the ingress route turned into a `direct_response`, so no
//! upstream is measured. Rounds are interleaved; each measurement launches a fresh Envoy, warms
//! it up with wrk, then runs `wrk --latency` and reads Envoy's CPU time around it. At
//! `--concurrency 1` Envoy is pinned to CPU 0 and the load generator to CPU 1. A last section
//! cross-checks the project's open-loop loadgen against `h2load --rps` on the `bare` Envoy.

use clap::Parser;
use serde_json::{json, Value};
use sg_integration::envoy::{envoy_bin, Bundle, Envoy};
use sg_integration::loadgen::{self, KeyMix, LoadConfig};
use sg_integration::{first_line, wait};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

type Res<T> = Result<T, String>;

/// `ratelimit` may cost at most this much Envoy CPU per request relative to `noop_wasm`.
const TARGET: f64 = 1.15;
/// `breaker` may cost at most this much Envoy CPU per request relative to `noop_wasm_egress`.
const BREAKER_TARGET: f64 = 1.2;
/// `sli` may cost at most this much Envoy CPU per request relative to `noop_wasm`.
const SLI_TARGET: f64 = 1.2;
/// The chain of five filters may cost at most this much relative to five no-op filters.
const CHAIN_TARGET: f64 = 1.25;
/// The combined module with all five parts may cost at most this much relative to ONE no-op
/// filter.
const COMBINED_TARGET: f64 = 1.2;
const BLOG_IDS: u32 = 1000;

/// What a variant runs in front of the ingress route (which answers `200 ok` itself).
enum Setup {
    /// No spikeguard filter.
    Bare,
    /// No spikeguard filter; this HTTP filter first in the ingress chain.
    Prepend(fn() -> Value),
    /// Only this spikeguard filter of the bundle, with this config.
    Only(&'static str, fn() -> Value),
    /// No spikeguard filter; this HTTP filter first in the egress chain, which answers
    /// `200 ok` itself; the load goes to the egress listener.
    EgressPrepend(fn() -> Value),
    /// No spikeguard filter of the bundle; these HTTP filters first in the ingress chain, in
    /// this order.
    PrependAll(fn() -> Vec<Value>),
    /// Only this spikeguard filter of the egress listener (which then answers `200 ok`
    /// itself), with this config; the load goes to the egress listener.
    Egress(&'static str, fn() -> Value),
}

/// One benchmark variant.
struct Variant {
    name: &'static str,
    description: &'static str,
    setup: Setup,
    /// Counters that prove the filter under test saw every request: (passed, limited);
    /// checked to be +requests and +0 over each measurement.
    counters: Option<(&'static str, &'static str)>,
    /// At least this share (percent) of the requests must be answered from the cache.
    min_cache_hit_percent: Option<i64>,
}

/// Every variant, in the default order. The last two are diagnostics that split
/// `ratelimit`'s cost.
const VARIANTS: &[Variant] = &[
    Variant {
        name: "bare",
        description: "no Wasm filter",
        setup: Setup::Bare,
        counters: None,
        min_cache_hit_percent: None,
    },
    Variant {
        name: "noop_wasm",
        description: "`sg_noop.wasm`, a Wasm filter that does nothing",
        setup: Setup::Prepend(noop_filter),
        counters: None,
        min_cache_hit_percent: None,
    },
    Variant {
        name: "ratelimit",
        description: "`sg_ratelimit.wasm`, rule `bench`: key `query blogId`, `1000000r/s`, burst 1000000, nodelay, default options; never limits, so every request does the `:path` read, key extraction, a clock read, one shared-data get and one CAS set",
        setup: Setup::Only("ratelimit", ratelimit_cfg),
        counters: Some(RATELIMIT_COUNTERS),
        min_cache_hit_percent: None,
    },
    Variant {
        name: "hotkey",
        description: "`sg_hotkey.wasm`, rule `bench`: key `query blogId`, threshold far above the load, `observe`; every request is matched, keyed and counted in the worker's sketch (no shared-data call), the 200 ms tick merges into shared data",
        setup: Setup::Only("hotkey", hotkey_cfg),
        counters: Some((
            "wasmcustom.sg.hotkey.bench.seen",
            "wasmcustom.sg.hotkey.bench.shed",
        )),
        min_cache_hit_percent: None,
    },
    Variant {
        name: "simplepage",
        description: "`sg_simplepage.wasm`, rule `bench`: triggers `hotkey` (nothing hot) and `overload` (thresholds far above the load); nothing is diverted, every request is matched, counted and timed to its response headers (two clock reads, a `:status` read), the 100 ms tick merges the tallies into shared data",
        setup: Setup::Only("simplepage", simplepage_cfg),
        counters: Some((
            "wasmcustom.sg.simplepage.bench.seen",
            "wasmcustom.sg.simplepage.bench.diverted_overload",
        )),
        min_cache_hit_percent: None,
    },
    Variant {
        name: "simplepage_cached",
        description: "`sg_simplepage.wasm`, rule `bench` with trigger `always` and the micro-cache (TTL 60 s, 4096 slots): after the first request per blog ID almost every request is answered from the cache (IDs that share a slot with a fresh page miss) (one shared-data get of the slot, a local reply)",
        setup: Setup::Only("simplepage", simplepage_cached_cfg),
        counters: Some((
            "wasmcustom.sg.simplepage.bench.seen",
            "wasmcustom.sg.simplepage.bench.excluded",
        )),
        // 1,000 IDs in 4,096 direct-mapped slots: a few share a slot and miss.
        min_cache_hit_percent: Some(80),
    },
    Variant {
        name: "sli",
        description: "`sg_sli.wasm` with the bundle's config (3 page types, top URLs with `blogId`/`logNo`, status page): every request is classified (the `:path` read, the page match), its URL counted in the worker's sketch and a clock read; at the response one read of every response header (status, spikeguard marks) and a clock read; at its end a clock read (`response.flags` only when the response did not end normally below 500: never here), the outcome counted in VM memory; the 200 ms tick flushes the counters and merges the summary and top URLs into shared data",
        setup: Setup::Only("sli", sli_cfg),
        counters: Some((
            "wasmcustom.page=.=PostView;.;direction=.=inbound;.;spikeguard_latency_total",
            "wasmcustom.sg.sli.inbound.status_refused",
        )),
        min_cache_hit_percent: None,
    },
    Variant {
        name: "noop_wasm_egress",
        description: "`sg_noop.wasm` on the egress listener (answering `200 ok` itself): the reference of `breaker`",
        setup: Setup::EgressPrepend(noop_filter),
        counters: None,
        min_cache_hit_percent: None,
    },
    Variant {
        name: "breaker",
        description: "`sg_breaker.wasm` on the egress listener, API `bench` (every request), count window 100, no bulkhead; CLOSED throughout: one shared-data get of the state per call, the `:status` response-header read, and at its end a clock read (`response.flags` is read only when it can change the outcome: never here), counted in VM memory; the 100 ms tick merges and judges",
        setup: Setup::Egress("breaker", breaker_cfg),
        counters: Some(BREAKER_COUNTERS),
        min_cache_hit_percent: None,
    },
    Variant {
        name: "breaker_bulkhead",
        description: "`breaker` with a bulkhead of 1,000,000 slots: also a CAS to take a slot and one to give it back per call",
        setup: Setup::Egress("breaker", breaker_bulkhead_cfg),
        counters: Some(BREAKER_COUNTERS),
        min_cache_hit_percent: None,
    },
    Variant {
        name: "breaker_nomatch",
        description: "diagnostic: `breaker` whose API matches no call (the `:path` read and the match only)",
        setup: Setup::Egress("breaker", breaker_nomatch_cfg),
        counters: None,
        min_cache_hit_percent: None,
    },
    Variant {
        name: "ratelimit_leased",
        description: "`ratelimit` with leased mode (`lease: {tokens: 64, ms: 1000}`): a worker charges shared data once per 64 requests of a key (or once a second), and gives back what it did not use on its tick",
        setup: Setup::Only("ratelimit", ratelimit_leased_cfg),
        counters: Some(RATELIMIT_COUNTERS),
        min_cache_hit_percent: None,
    },
    Variant {
        name: "noop_wasm_x5",
        description: "five `sg_noop.wasm` filters in the ingress chain: the floor of any five-filter Wasm chain (five VM entries per callback)",
        setup: Setup::PrependAll(noop_x5),
        counters: None,
        min_cache_hit_percent: None,
    },
    Variant {
        name: "chain5",
        description: "the five filters as five Wasm filters in the ingress chain, in the bundle's order `sli` → `hotkey` → `simplepage` → `ratelimit` → `breaker`, each with its bench config above (sli: the bundle's; breaker: API `bench` matching every request, CLOSED); nothing is limited, shed, diverted or refused",
        setup: Setup::PrependAll(chain5),
        counters: Some(RATELIMIT_COUNTERS),
        min_cache_hit_percent: None,
    },
    Variant {
        name: "combined",
        description: "`sg_combined.wasm`, ONE Wasm filter whose config holds the same five sections as `chain5`: the same work, one VM entry per callback, one read of each request header, property and the clock shared by the five parts",
        setup: Setup::PrependAll(combined),
        counters: Some(RATELIMIT_COUNTERS),
        min_cache_hit_percent: None,
    },
    Variant {
        name: "combined_leased",
        description: "`combined` with the `ratelimit` section in leased mode (as `ratelimit_leased`)",
        setup: Setup::PrependAll(combined_leased),
        counters: Some(RATELIMIT_COUNTERS),
        min_cache_hit_percent: None,
    },
    Variant {
        name: "native_local_ratelimit",
        description: "`envoy.filters.http.local_ratelimit`, token bucket of 10^8 tokens refilled every 1 s, enabled and enforced 100%; never limits",
        setup: Setup::Prepend(native_local_ratelimit_filter),
        counters: Some((
            "bench_local.http_local_rate_limit.ok",
            "bench_local.http_local_rate_limit.rate_limited",
        )),
        min_cache_hit_percent: None,
    },
    Variant {
        name: "ratelimit_headers",
        description: "diagnostic: `ratelimit` with `rate_limit_headers: true` (two response-header writes per request)",
        setup: Setup::Only("ratelimit", ratelimit_headers_cfg),
        counters: Some(RATELIMIT_COUNTERS),
        min_cache_hit_percent: None,
    },
    Variant {
        name: "ratelimit_nomatch",
        description: "diagnostic: `ratelimit` whose rule matches no request (header reads only, no shared data)",
        setup: Setup::Only("ratelimit", ratelimit_nomatch_cfg),
        counters: None,
        min_cache_hit_percent: None,
    },
];

const RATELIMIT_COUNTERS: (&str, &str) = (
    "wasmcustom.sg.ratelimit.bench.allowed",
    "wasmcustom.sg.ratelimit.bench.rejected",
);

const BREAKER_COUNTERS: (&str, &str) = (
    "wasmcustom.sg.breaker.bench.success",
    "wasmcustom.sg.breaker.bench.not_permitted",
);

/// The bundle's own `sli` config, with a 200 ms tick.
fn sli_cfg() -> Value {
    let mut c = Bundle::load()
        .ok()
        .and_then(|mut b| b.filter_config("sli"))
        .unwrap_or_else(|| json!({}));
    c["tick_ms"] = json!(200);
    c
}

fn breaker_api() -> Value {
    json!({"name": "bench", "match": {"path_prefix": "/"}, "window": {"count": 100},
        "min_calls": 100})
}

fn breaker_cfg() -> Value {
    json!({"apis": [breaker_api()]})
}

fn breaker_bulkhead_cfg() -> Value {
    let mut api = breaker_api();
    api["bulkhead"] = json!({"max_concurrent": 1_000_000});
    json!({"apis": [api]})
}

fn breaker_nomatch_cfg() -> Value {
    let mut api = breaker_api();
    api["match"] = json!({"path_prefix": "/never-matches"});
    json!({"apis": [api]})
}

fn noop_x5() -> Vec<Value> {
    (1..=5)
        .map(|i| Bundle::wasm_filter(&format!("noop{i}"), "noop", &json!({})))
        .collect()
}

/// The five filters' bench configs, in the chain's order.
fn five() -> [(&'static str, Value); 5] {
    [
        ("sli", sli_cfg()),
        ("hotkey", hotkey_cfg()),
        ("simplepage", simplepage_cfg()),
        ("ratelimit", ratelimit_cfg()),
        ("breaker", breaker_cfg()),
    ]
}

fn sections(parts: [(&'static str, Value); 5]) -> Vec<Value> {
    let sections: serde_json::Map<String, Value> = parts
        .into_iter()
        .map(|(name, cfg)| (name.to_string(), cfg))
        .collect();
    vec![Bundle::wasm_filter(
        "combined",
        "combined",
        &Value::Object(sections),
    )]
}

fn combined_leased() -> Vec<Value> {
    let mut parts = five();
    parts[3].1 = ratelimit_leased_cfg();
    sections(parts)
}

fn chain5() -> Vec<Value> {
    five()
        .iter()
        .map(|(name, cfg)| Bundle::wasm_filter(name, name, cfg))
        .collect()
}

fn combined() -> Vec<Value> {
    sections(five())
}

fn noop_filter() -> Value {
    Bundle::wasm_filter("noop", "noop", &json!({}))
}

fn native_local_ratelimit_filter() -> Value {
    let pct = |key: &str| json!({"runtime_key": key, "default_value": {"numerator": 100}});
    json!({"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "bench_local",
        "token_bucket": {"max_tokens": 100_000_000u32, "tokens_per_fill": 100_000_000u32,
                         "fill_interval": "1s"},
        "filter_enabled": pct("bench_local.enabled"),
        "filter_enforced": pct("bench_local.enforced")}})
}

fn ratelimit_rule() -> Value {
    json!({"name": "bench", "key": {"query": "blogId"},
        "rate": "1000000r/s", "burst": 1000000, "mode": "nodelay"})
}

fn ratelimit_cfg() -> Value {
    json!({"rules": [ratelimit_rule()]})
}

fn ratelimit_leased_cfg() -> Value {
    let mut rule = ratelimit_rule();
    rule["lease"] = json!({"tokens": 64, "ms": 1000});
    json!({"rules": [rule]})
}

fn ratelimit_headers_cfg() -> Value {
    json!({"rules": [ratelimit_rule()], "rate_limit_headers": true})
}

fn ratelimit_nomatch_cfg() -> Value {
    let mut rule = ratelimit_rule();
    rule["match"] = json!({"path_prefix": "/never-matches"});
    json!({"rules": [rule]})
}

/// Never hot (threshold far above the load): every request is matched, keyed, normalised and
/// counted in the worker's sketch; the tick merges into shared data.
fn hotkey_cfg() -> Value {
    json!({"tick_ms": 200, "rules": [{"name": "bench", "key": {"query": "blogId"},
        "threshold_rps": 10_000_000, "action": "observe"}]})
}

fn simplepage_cfg() -> Value {
    json!({"rules": [{"name": "bench", "key": {"query": "blogId"},
        "triggers": {"hotkey": "bench", "overload": {"p99_ms": 100_000,
            "capacity_rps": 100_000_000, "window_ms": 1000}}}]})
}

fn simplepage_cached_cfg() -> Value {
    json!({"cache": {"slots": 4096, "max_body_bytes": 4096},
        "rules": [{"name": "bench", "triggers": {"always": true},
                   "cache": {"ttl_ms": 60_000}}]})
}

fn variant(name: &str) -> Res<&'static Variant> {
    VARIANTS
        .iter()
        .find(|v| v.name == name)
        .ok_or_else(|| format!("unknown variant {name}"))
}

fn variant_names() -> Vec<String> {
    VARIANTS.iter().map(|v| v.name.to_string()).collect()
}

/// Per-request cost of the spikeguard filters in Envoy, measured with `wrk`.
#[derive(Debug, Parser)]
#[command(name = "bench")]
struct Opts {
    /// Markdown report to write.
    #[arg(long, default_value = "docs/BENCHMARKS.md")]
    out: PathBuf,
    /// Interleaved rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Length of each measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Length of each wrk warm-up (0 = none).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// wrk connections.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Envoy `--concurrency` values, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1, 2])]
    concurrency: Vec<u32>,
    /// Variants, comma-separated; the first must be `bare`.
    #[arg(long, value_delimiter = ',', default_values_t = variant_names(),
          value_parser = clap::builder::PossibleValuesParser::new(VARIANTS.iter().map(|v| v.name)))]
    variants: Vec<String>,
    /// Offered rate of the load-generator cross-check (0: no cross-check, e.g. the smoke run).
    #[arg(long, default_value_t = 5000)]
    xcheck_rps: u32,
}

impl Opts {
    fn check(self) -> Res<Opts> {
        if self.variants.first().map(String::as_str) != Some("bare") {
            return Err("the first variant must be `bare` (the reference of the ratios)".into());
        }
        if self.rounds == 0
            || self.seconds == 0
            || self.connections == 0
            || self.concurrency.contains(&0)
        {
            return Err("rounds, seconds, connections, concurrency must be > 0".into());
        }
        Ok(self)
    }
}

/// The bundle with the ingress route answering `200 ok` itself, and the variant's filters.
fn bundle(v: &Variant) -> Res<Bundle> {
    let e = |e: std::io::Error| e.to_string();
    let mut b = Bundle::load().map_err(e)?;
    b.answer_directly("ingress", "ok\n").map_err(e)?;
    match v.setup {
        Setup::Bare => b.keep_filters(&[]),
        Setup::Prepend(filter) => {
            b.keep_filters(&[]);
            b.prepend_http_filter("ingress", filter()).map_err(e)?;
        }
        Setup::Only(filter, config) => {
            b.keep_filters(&[filter]);
            b.set_filter_config(filter, &config()).map_err(e)?;
        }
        Setup::PrependAll(filters) => {
            b.keep_filters(&[]);
            for f in filters().into_iter().rev() {
                b.prepend_http_filter("ingress", f).map_err(e)?;
            }
        }
        Setup::EgressPrepend(filter) => {
            b.answer_directly("egress", "ok\n").map_err(e)?;
            b.keep_filters(&[]);
            b.prepend_http_filter("egress", filter()).map_err(e)?;
        }
        Setup::Egress(filter, config) => {
            b.answer_directly("egress", "ok\n").map_err(e)?;
            b.keep_filters(&[filter]);
            b.set_filter_config(filter, &config()).map_err(e)?;
        }
    }
    Ok(b)
}

fn run_cmd(cmd: &mut Command) -> Res<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!("{cmd:?} failed ({}):\n{err}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `taskset -c CPUS prog` when pinned, else `prog`.
fn pinned(cpus: Option<&str>, prog: &str) -> Command {
    let Some(cpus) = cpus else {
        return Command::new(prog);
    };
    let mut c = Command::new("taskset");
    c.args(["-c", cpus, prog]);
    c
}

/// Pins every thread of `pid` (without `-a`, taskset would move only the main thread).
fn pin_all(pid: u32, cpus: &str) -> Res<()> {
    run_cmd(Command::new("taskset").args(["-a", "-p", "-c", cpus, &pid.to_string()])).map(drop)
}

#[derive(Debug, Clone, Default)]
struct Sample {
    rps: f64,
    requests: u64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    cpu_per_req: f64,
}

/// `1.23ms` -> 1230.0 (microseconds).
fn parse_time_us(s: &str) -> Option<f64> {
    let units = [
        ("us", 1.0),
        ("ms", 1e3),
        ("s", 1e6),
        ("m", 60e6),
        ("h", 3600e6),
    ];
    let (n, mult) = units
        .iter()
        .find_map(|(u, m)| s.strip_suffix(u).map(|n| (n, *m)))?;
    n.parse::<f64>().ok().map(|n| n * mult)
}

fn parse_wrk(out: &str) -> Res<Sample> {
    let mut s = Sample::default();
    let (mut p50, mut p99, mut rps, mut reqs) = (None, None, None, None);
    for line in out.lines().map(str::trim) {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["50%", t] => p50 = parse_time_us(t),
            ["99%", t] => p99 = parse_time_us(t),
            ["Requests/sec:", n] => rps = n.parse::<f64>().ok(),
            [n, "requests", "in", ..] => reqs = n.parse::<u64>().ok(),
            ["Non-2xx", "or", "3xx", "responses:", n] => s.errors += n.parse().unwrap_or(1),
            ["Socket", "errors:", rest @ ..] => {
                let n = rest
                    .iter()
                    .filter_map(|x| x.trim_end_matches(',').parse::<u64>().ok());
                s.errors += n.sum::<u64>();
            }
            _ => {}
        }
    }
    let (Some(p50), Some(p99), Some(rps), Some(reqs)) = (p50, p99, rps, reqs) else {
        return Err(format!("cannot parse wrk output:\n{out}"));
    };
    (s.p50_us, s.p99_us, s.rps, s.requests) = (p50, p99, rps, reqs);
    Ok(s)
}

fn wrk(url: &str, seconds: u64, o: &Opts, script: &Path, cpus: Option<&str>) -> Res<Sample> {
    let (c, d) = (format!("-c{}", o.connections), format!("-d{seconds}s"));
    let mut cmd = pinned(cpus, "wrk");
    cmd.args(["-t1", &c, &d, "--timeout", "2s", "--latency", "-s"]);
    let out = run_cmd(cmd.arg(script).arg(url))?;
    let s = parse_wrk(&out)?;
    if s.requests == 0 || s.errors > 0 {
        return Err(format!("{} errors or non-2xx; wrk said:\n{out}", s.errors));
    }
    Ok(s)
}

/// Waits until counter `name` has reached `at_least` (Wasm counters are flushed on the
/// filter's tick, 200 ms).
fn wait_counted(envoy: &Envoy, name: &str, at_least: i64) -> Res<i64> {
    let what = format!("{name} >= {at_least}");
    wait::try_eventually(&what, Duration::from_secs(10), || {
        let n = envoy.stat(name);
        if n >= at_least {
            Ok(n)
        } else {
            Err(n)
        }
    })
    .map_err(|e| e.to_string())
}

fn measure(v: &Variant, conc: u32, o: &Opts, script: &Path) -> Res<Sample> {
    let envoy = bundle(v)?.launch(conc).map_err(|e| e.to_string())?;
    let cpus = (conc == 1).then_some("1");
    if conc == 1 {
        pin_all(envoy.pid(), "0")?;
    }
    let listener = match v.setup {
        Setup::Egress(..) | Setup::EgressPrepend(..) => "egress",
        _ => "ingress",
    };
    let url = format!("http://127.0.0.1:{}/", envoy.port(listener));
    if o.warmup > 0 {
        let warm = wrk(&url, o.warmup, o, script, cpus)?;
        // The warm-up's counts land before the measurement's "before" snapshot.
        if let Some((passed, _)) = v.counters {
            wait_counted(&envoy, passed, warm.requests as i64)?;
        }
    }
    let (before, cpu0) = (envoy.stats(), envoy.cpu_us());
    let mut s = wrk(&url, o.seconds, o, script, cpus)?;
    s.cpu_per_req = envoy.cpu_us().saturating_sub(cpu0) as f64 / s.requests as f64;
    if let Some((passed, limited)) = v.counters {
        let was = before.get(passed).copied().unwrap_or(0);
        // Not an error yet if it times out: the check below says by how much it fell short.
        let _ = wait_counted(&envoy, passed, was + s.requests as i64);
        let after = envoy.stats();
        let d = |k: &str| after.get(k).unwrap_or(&0) - before.get(k).unwrap_or(&0);
        if d(passed) < s.requests as i64 || d(limited) != 0 {
            let (p, l) = (d(passed), d(limited));
            return Err(format!(
                "{passed} +{p}, {limited} +{l} for {} requests",
                s.requests
            ));
        }
        // A cached variant must really answer from the cache.
        if let Some(percent) = v.min_cache_hit_percent {
            let hits = d("wasmcustom.sg.simplepage.cache_hit");
            if hits < s.requests as i64 * percent / 100 {
                return Err(format!(
                    "only {hits} cache hits for {} requests",
                    s.requests
                ));
            }
        }
    }
    Ok(s)
}

fn median(xs: &[f64]) -> f64 {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Ratio of medians, and "1.03 (0.97–1.10)" with the range of the per-round paired ratios.
fn ratio(a: &[Sample], b: &[Sample], f: fn(&Sample) -> f64) -> (f64, String) {
    let col = |s: &[Sample]| s.iter().map(f).collect::<Vec<_>>();
    let r = median(&col(a)) / median(&col(b));
    let per: Vec<f64> = a.iter().zip(b).map(|(x, y)| f(x) / f(y)).collect();
    let lo = per.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = per.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (r, format!("{r:.3} ({lo:.2}–{hi:.2})"))
}

fn med(s: &[Sample], f: fn(&Sample) -> f64) -> f64 {
    median(&s.iter().map(f).collect::<Vec<_>>())
}
const RPS: fn(&Sample) -> f64 = |s| s.rps;
const CPU: fn(&Sample) -> f64 = |s| s.cpu_per_req;

/// Samples by concurrency index, variant index, round.
type Results = Vec<Vec<Vec<Sample>>>;

fn tables(o: &Opts, res: &Results) -> String {
    let mut md = String::new();
    for (ci, conc) in o.concurrency.iter().enumerate() {
        let setup = if *conc == 1 {
            "Envoy pinned to CPU 0, wrk to CPU 1"
        } else {
            "unpinned"
        };
        let _ = write!(
            md,
            "\n### `--concurrency {conc}` ({setup}), medians of {} rounds\n\n",
            o.rounds
        );
        md.push_str("| variant | req/s | p50 | p99 | Envoy CPU µs/req | req/s vs bare | CPU/req vs bare | CPU/req vs noop_wasm |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        let bare = &res[ci][0];
        let noop = o
            .variants
            .iter()
            .position(|v| v == "noop_wasm")
            .map(|i| &res[ci][i]);
        for (v, s) in o.variants.iter().zip(&res[ci]) {
            let (p50, p99) = (med(s, |x| x.p50_us), med(s, |x| x.p99_us));
            let (rps, cpu) = (ratio(s, bare, RPS).1, ratio(s, bare, CPU).1);
            let vs_noop = noop.map_or("–".to_string(), |n| ratio(s, n, CPU).1);
            let (r, c) = (med(s, RPS), med(s, CPU));
            let _ = writeln!(
                md,
                "| {v} | {r:.0} | {p50:.0} µs | {p99:.0} µs | {c:.2} | {rps} | {cpu} | {vs_noop} |"
            );
        }
        md.push_str("\nPer round, req/s / Envoy CPU µs per request:\n\n| variant |");
        (1..=o.rounds).for_each(|r| md.push_str(&format!(" r{r} |")));
        let _ = write!(md, "\n|---|{}\n", "---:|".repeat(o.rounds));
        for (v, s) in o.variants.iter().zip(&res[ci]) {
            let cells: String = s
                .iter()
                .map(|s| format!(" {:.0} / {:.2} |", s.rps, s.cpu_per_req))
                .collect();
            let _ = writeln!(md, "| {v} |{cells}");
        }
    }
    md
}

/// Where `ratelimit`'s extra CPU per request over `noop_wasm` goes, from the diagnostics.
fn split(o: &Opts, res: &Results) -> Option<String> {
    let steps = [
        "noop_wasm",
        "ratelimit_nomatch",
        "ratelimit",
        "ratelimit_headers",
    ];
    let idx = |n: &&str| o.variants.iter().position(|v| v == n);
    let ix: Vec<usize> = steps.iter().map(idx).collect::<Option<_>>()?;
    let mut md = String::from("| concurrency | filter call, `:path` read, rule match (`nomatch` − `noop`) | clock, key, shared-data get + CAS set, arithmetic (`ratelimit` − `nomatch`) | total over noop | option `rate_limit_headers` (`ratelimit_headers` − `ratelimit`) |\n|---|---:|---:|---:|---:|\n");
    for (ci, conc) in o.concurrency.iter().enumerate() {
        let m: Vec<f64> = ix.iter().map(|i| med(&res[ci][*i], CPU)).collect();
        let (Some(noop), Some(nomatch), Some(rl), Some(hdr)) =
            (m.first(), m.get(1), m.get(2), m.get(3))
        else {
            continue;
        };
        let total = rl - noop;
        let cell = |d: f64| format!("{d:+.2} µs ({:.0}%)", 100.0 * d / total);
        let _ = writeln!(
            md,
            "| {conc} | {} | {} | {total:+.2} µs | {:+.2} µs |",
            cell(nomatch - noop),
            cell(rl - nomatch),
            hdr - rl
        );
    }
    Some(md)
}

/// `ratelimit` vs `noop_wasm` per concurrency: (markdown table, target met everywhere).
fn verdict(o: &Opts, res: &Results) -> Option<(String, bool)> {
    let idx = |n: &str| o.variants.iter().position(|v| v == n);
    let (noop, rl) = (idx("noop_wasm")?, idx("ratelimit")?);
    let mut md = String::from("| concurrency | CPU/req ratelimit ÷ noop | req/s ratelimit ÷ noop | extra CPU per request | ≤ 1.15? |\n|---|---:|---:|---:|---|\n");
    let mut all = true;
    for (ci, conc) in o.concurrency.iter().enumerate() {
        let (noop, rl) = (&res[ci][noop], &res[ci][rl]);
        let ((c, cs), rs) = (ratio(rl, noop, CPU), ratio(rl, noop, RPS).1);
        all &= c <= TARGET;
        let extra = med(rl, CPU) - med(noop, CPU);
        let met = if c <= TARGET { "met" } else { "**not met**" };
        let _ = writeln!(md, "| {conc} | {cs} | {rs} | {extra:+.2} µs | {met} |");
    }
    Some((md, all))
}

/// `breaker` (and `breaker_bulkhead`) vs `noop_wasm_egress` per concurrency.
fn breaker_verdict(o: &Opts, res: &Results) -> Option<(String, bool)> {
    let idx = |n: &str| o.variants.iter().position(|v| v == n);
    let noop = idx("noop_wasm_egress")?;
    let mut md = String::from("| concurrency | variant | CPU/req ÷ noop_wasm_egress | req/s ÷ noop_wasm_egress | extra CPU per request | ≤ 1.2? |\n|---|---|---:|---:|---:|---|\n");
    let mut all = true;
    let mut any = false;
    for name in ["breaker", "breaker_bulkhead"] {
        let Some(b) = idx(name) else { continue };
        any = true;
        for (ci, conc) in o.concurrency.iter().enumerate() {
            let (n, b) = (&res[ci][noop], &res[ci][b]);
            let ((c, cs), rs) = (ratio(b, n, CPU), ratio(b, n, RPS).1);
            let ok = c <= BREAKER_TARGET;
            if name == "breaker" {
                all &= ok;
            }
            let extra = med(b, CPU) - med(n, CPU);
            let met = if ok { "met" } else { "**not met**" };
            let _ = writeln!(
                md,
                "| {conc} | `{name}` | {cs} | {rs} | {extra:+.2} µs | {met} |"
            );
        }
    }
    any.then_some((md, all))
}

/// `sli` vs `noop_wasm` per concurrency.
fn sli_verdict(o: &Opts, res: &Results) -> Option<(String, bool)> {
    let idx = |n: &str| o.variants.iter().position(|v| v == n);
    let (noop, sli) = (idx("noop_wasm")?, idx("sli")?);
    let mut md = String::from("| concurrency | CPU/req sli ÷ noop_wasm | req/s sli ÷ noop_wasm | extra CPU per request | ≤ 1.2? |\n|---|---:|---:|---:|---|\n");
    let mut all = true;
    for (ci, conc) in o.concurrency.iter().enumerate() {
        let (n, b) = (&res[ci][noop], &res[ci][sli]);
        let ((c, cs), rs) = (ratio(b, n, CPU), ratio(b, n, RPS).1);
        all &= c <= SLI_TARGET;
        let extra = med(b, CPU) - med(n, CPU);
        let met = if c <= SLI_TARGET {
            "met"
        } else {
            "**not met**"
        };
        let _ = writeln!(md, "| {conc} | {cs} | {rs} | {extra:+.2} µs | {met} |");
    }
    Some((md, all))
}

/// `name` vs `reference` per concurrency against `target`: (markdown table, met everywhere).
fn ratio_verdict(
    o: &Opts,
    res: &Results,
    name: &str,
    reference: &str,
    target: f64,
) -> Option<(String, bool)> {
    let idx = |n: &str| o.variants.iter().position(|v| v == n);
    let (r, v) = (idx(reference)?, idx(name)?);
    let mut md = format!("| concurrency | CPU/req {name} ÷ {reference} | req/s {name} ÷ {reference} | extra CPU per request | ≤ {target}? |\n|---|---:|---:|---:|---|\n");
    let mut all = true;
    for (ci, conc) in o.concurrency.iter().enumerate() {
        let (n, b) = (&res[ci][r], &res[ci][v]);
        let ((c, cs), rs) = (ratio(b, n, CPU), ratio(b, n, RPS).1);
        all &= c <= target;
        let extra = med(b, CPU) - med(n, CPU);
        let met = if c <= target { "met" } else { "**not met**" };
        let _ = writeln!(md, "| {conc} | {cs} | {rs} | {extra:+.2} µs | {met} |");
    }
    Some((md, all))
}

/// One load generator's run against the plain target.
struct Cross {
    name: &'static str,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    ok: u64,
    failed: u64,
    cpu_per_req: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = (sorted.len() as f64 * p).ceil() as usize;
    sorted.get(i.saturating_sub(1)).copied().unwrap_or(f64::NAN)
}

/// `h2load --h1 -c 10 --rps RATE/10 -D S`, percentiles from its per-request log.
fn h2load(url: &str, o: &Opts, log: &Path) -> Res<Cross> {
    let rps = format!("{}", f64::from(o.xcheck_rps) / 10.0);
    let mut cmd = pinned(Some("1"), "h2load");
    cmd.args(format!("--h1 -c 10 --rps {rps} -D {} --log-file", o.seconds).split(' '));
    let out = run_cmd(cmd.arg(log).arg(url))?;
    let find = |prefix: &str| out.lines().find_map(|l| l.strip_prefix(prefix));
    let rps = find("finished in ").and_then(|l| l.split(", ").nth(1)?.strip_suffix(" req/s"));
    let counts = find("requests: ").unwrap_or("");
    let n = |what: &str| {
        counts
            .split(", ")
            .find_map(|p| p.strip_suffix(what)?.parse::<u64>().ok())
    };
    let (Some(rps), Some(ok)) = (rps.and_then(|r| r.parse::<f64>().ok()), n(" succeeded")) else {
        return Err(format!("cannot parse h2load output:\n{out}"));
    };
    let failed = [" failed", " errored", " timeout"]
        .iter()
        .filter_map(|w| n(w))
        .sum();
    let text = std::fs::read_to_string(log).map_err(|e| format!("h2load log: {e}"))?;
    let mut lat: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.parse().ok())
        .collect();
    lat.sort_by(f64::total_cmp);
    let (p50_us, p99_us) = (percentile(&lat, 0.5), percentile(&lat, 0.99));
    let name = "h2load --h1 --rps (latency from actual send)";
    let cpu_per_req = 0.0; // filled in by the caller
    Ok(Cross {
        name,
        rps,
        p50_us,
        p99_us,
        ok,
        failed,
        cpu_per_req,
    })
}

fn cross_check(o: &Opts, script: &Path) -> Res<Vec<Cross>> {
    let envoy = bundle(variant("bare")?)?
        .launch(1)
        .map_err(|e| e.to_string())?;
    pin_all(envoy.pid(), "0")?;
    let me = std::process::id();
    let mask = run_cmd(Command::new("taskset").args(["-p", &me.to_string()]))?;
    let mask = mask
        .split_whitespace()
        .last()
        .unwrap_or("ffffffff")
        .to_string();
    pin_all(me, "1")?; // the in-process loadgen's threads start on CPU 1 too
    let url = format!("http://127.0.0.1:{}", envoy.ingress());
    wrk(&format!("{url}/"), o.warmup.max(1), o, script, Some("1"))?;
    let cfg = LoadConfig {
        target: url.clone(),
        rate_rps: f64::from(o.xcheck_rps),
        duration_ms: o.seconds * 1000,
        keys: KeyMix {
            zipf_n: BLOG_IDS as usize,
            ..KeyMix::default()
        },
        ..LoadConfig::default()
    };
    let cpu0 = envoy.cpu_us();
    let r = loadgen::run(&cfg).map_err(|e| format!("loadgen: {e}"))?;
    let cpu1 = envoy.cpu_us();
    let ok = r.by_status.get(&200).copied().unwrap_or(0);
    let lg = Cross {
        name: "sg loadgen (open loop, latency from intended send)",
        rps: r.achieved_rps,
        p50_us: r.latency_us.p50 as f64,
        p99_us: r.latency_us.p99 as f64,
        ok,
        failed: r.completed - ok + r.errors + r.dropped_client_side,
        cpu_per_req: cpu1.saturating_sub(cpu0) as f64 / r.completed.max(1) as f64,
    };
    let log = tempfile::Builder::new()
        .prefix("sg-bench-h2load-")
        .suffix(".log")
        .tempfile()
        .map_err(|e| format!("h2load log: {e}"))?;
    let cpu0 = envoy.cpu_us();
    let mut h2 = h2load(&format!("{url}/PostView?blogId=1&logNo=1"), o, log.path());
    let cpu1 = envoy.cpu_us();
    if let Ok(h) = &mut h2 {
        h.cpu_per_req = cpu1.saturating_sub(cpu0) as f64 / (h.ok + h.failed).max(1) as f64;
    }
    run_cmd(Command::new("taskset").args(["-a", "-p", &mask, &me.to_string()]))?;
    Ok(vec![lg, h2?])
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':'));
    format!(
        "- Date: {}\n- Machine: {} CPUs (`nproc`), {}, kernel `{}` (`uname -r`)\n- Envoy: `{}`\n- wrk: `{}`; h2load: `{}`\n",
        first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        first_line(&mut Command::new("nproc")), // run before any pinning of this process
        model.map_or("?", |m| m.1.trim()),
        first_line(Command::new("uname").arg("-r")),
        first_line(Command::new(envoy_bin()).arg("--version")),
        first_line(Command::new("wrk").arg("--version")),
        first_line(Command::new("h2load").arg("--version")),
    )
}

const METHOD: &str = "## Method

Variants, all the same Envoy and the same bundle (`envoy.yaml`), the ingress route replaced by a `direct_response` (200, `ok\\n`) so that no upstream is measured:

{variants}
Each measurement launches a fresh Envoy, runs a {warmup} s wrk warm-up, then `wrk -t1 -c{conns} -d{secs}s --latency --timeout 2s -s bench.lua` where the Lua script cycles through `/PostView?blogId=1..{ids}&logNo=1` ({ids} keys; the same script for every variant). At `--concurrency 1` Envoy (all threads, `taskset -a -p -c 0`) is pinned to CPU 0 and wrk (`taskset -c 1`) to CPU 1; at `--concurrency 2` nothing is pinned. Envoy CPU per request = Envoy's user + system CPU time (`/proc/PID/stat`) over the {secs} s window ÷ requests wrk completed. Every measurement checks that all responses were 200 and that the rate-limit filter under test counted every request as passed (none limited).

Rounds are interleaved ({rounds} rounds; each round runs every variant at every concurrency, starting with a different variant each round). Tables show medians; ratios are *ratio of medians (min–max of the per-round paired ratios)*, always against variants of the same run.
";

const NOT_MET: &str = "\nTarget **not met**. On top of the no-op filter, `ratelimit` (default options) does per request: one request-header read (`:path`; other request values are read only when a rule needs them), the rule match and key extraction, a clock read, one `get_shared_data` (Envoy's shared-data map, read under its lock and copied into the VM), the nginx arithmetic, and one CAS `set_shared_data` (copied out, same process-wide lock). Counters are kept in the VM and flushed on a tick, so no metric host call is made per request. Each host call crosses the Wasm boundary; the Rust logic between them is small. The split below (when the diagnostic variants ran) measures how much of the difference the shared-data work accounts for.\n";

const SPLIT: &str = "Split of the extra Envoy CPU per request, from the diagnostic variants (differences of medians, so each step carries the noise of two medians, about ±2 µs):\n";

const NOISE: &str = "## Notes on noise

The machine is a shared VM with 2 cores and is noisy: one round can move by ±20%. That is why rounds are interleaved, medians reported, and ratios taken only between variants of the same run; the per-round tables and the min–max ranges of the paired ratios show the spread, and a difference smaller than that spread is not significant. Envoy CPU per request is steadier than req/s (it does not depend on how much CPU wrk gets). At `--concurrency 2`, Envoy's two workers and wrk share the same 2 cores, so req/s there is bounded by the machine rather than by Envoy. CPU time is counted in 10 ms ticks, negligible over a window of hundreds of thousands of requests.
";

fn report(o: &Opts, args: &[String], machine: &str, results: &str) -> String {
    let mut md = format!(
        "# Benchmarks\n\nGenerated by `make bench`, i.e. `cargo run --release -q -p sg-integration --bin bench -- --out docs/BENCHMARKS.md`.\n\
         This file: `cargo run --release -p sg-integration --bin bench -- {}`\n\n{}\n",
        args.join(" "),
        machine
    );
    let variants = o.variants.iter().filter_map(|v| variant(v).ok());
    let variants: String = variants
        .map(|v| format!("- `{}`: {}\n", v.name, v.description))
        .collect();
    md += &METHOD
        .replace("{variants}", &variants)
        .replace("{warmup}", &o.warmup.to_string())
        .replace("{conns}", &o.connections.to_string())
        .replace("{secs}", &o.seconds.to_string())
        .replace("{ids}", &BLOG_IDS.to_string())
        .replace("{rounds}", &o.rounds.to_string());
    md + results + "\n" + NOISE
}

const MET: &str = "\nTarget **met** at every concurrency measured.\n";

/// Results, verdict and cross-check sections (written to the file and printed).
fn results(o: &Opts, res: &Results, cross: &Res<Vec<Cross>>) -> String {
    let mut md = String::from("\n## Results\n") + &tables(o, res);
    if let Some((table, met)) = verdict(o, res) {
        md += "\n## Ratelimit vs no-op Wasm filter\n\nTarget: `ratelimit` costs at most 15% more Envoy CPU per request than `noop_wasm`.\n\n";
        md += &table;
        md += if met {
            "\nTarget **met** at every concurrency measured.\n"
        } else {
            NOT_MET
        };
        match split(o, res) {
            Some(t) => md += &format!("\n{SPLIT}\n{t}"),
            None => md += "\nRun with `--variants bare,noop_wasm,ratelimit,ratelimit_headers,ratelimit_nomatch` to split the extra cost.\n",
        }
    }
    if let Some((table, met)) = breaker_verdict(o, res) {
        md += "\n## Breaker vs no-op Wasm filter (egress)\n\nTarget: `breaker` costs at most 20% more Envoy CPU per request than `noop_wasm_egress` (the no-op filter on the same listener). `breaker_bulkhead` is reported, not judged: a bulkhead adds two CAS per call by design.\n\n";
        md += &table;
        md += if met {
            "\nTarget **met** at every concurrency measured.\n"
        } else {
            "\nTarget **not met**: see the variant descriptions for what `breaker` does per call.\n"
        };
    }
    if let Some((table, met)) = sli_verdict(o, res) {
        md += "\n## Sli vs no-op Wasm filter\n\nTarget: `sli` costs at most 20% more Envoy CPU per request than `noop_wasm`.\n\n";
        md += &table;
        md += if met {
            "\nTarget **met** at every concurrency measured.\n"
        } else {
            "\nTarget **not met**: see the variant description for what `sli` does per request.\n"
        };
    }
    if let Some((table, met)) = ratio_verdict(o, res, "chain5", "noop_wasm_x5", CHAIN_TARGET) {
        md += "\n## Five-filter chain vs five no-op Wasm filters\n\nTarget: the five filters as five Wasm filters (`chain5`) cost at most 1.25x the Envoy CPU per request of five no-op Wasm filters (`noop_wasm_x5`).\n\n";
        md += &table;
        md += if met { MET } else { "\nTarget **not met**.\n" };
    }
    if let Some((table, met)) =
        ratio_verdict(o, res, "combined_leased", "noop_wasm", COMBINED_TARGET)
    {
        md += "\n## Combined module, ratelimit leased, vs ONE no-op Wasm filter\n\nThe same target with the `ratelimit` section in leased mode (`combined_leased`).\n\n";
        md += &table;
        md += if met { MET } else { "\nTarget **not met**.\n" };
    }
    if let Some((table, met)) = ratio_verdict(o, res, "combined", "noop_wasm", COMBINED_TARGET) {
        md += "\n## Combined module vs ONE no-op Wasm filter\n\nTarget: `sg_combined.wasm` with all five parts active (`combined`) costs at most 1.2x the Envoy CPU per request of one no-op Wasm filter (`noop_wasm`).\n\n";
        md += &table;
        md += if met { MET } else { "\nTarget **not met**.\n" };
        if let Some((t, _)) = ratio_verdict(o, res, "combined", "chain5", 1.0) {
            md += "\nThe same work as one filter instead of five (`combined` ÷ `chain5`; the last column only says whether it is cheaper):\n\n";
            md += &t;
        }
    }
    md += "\n## Load-generator cross-check\n\n";
    match cross {
        Err(e) if o.xcheck_rps == 0 => md += &format!("Cross-check {e}.\n"),
        Err(e) => md += &format!("Cross-check failed: {e}\n"),
        Ok(rows) => {
            let _ = writeln!(md, "Target: the `bare` Envoy at `--concurrency 1` (pinned to CPU 0, generators on CPU 1), {} req/s offered for {} s by each generator in turn after a wrk warm-up. sg loadgen: `sg_integration::loadgen::run` ({BLOG_IDS} Zipf keys). h2load: 10 HTTP/1.1 clients × {} req/s each (`--rps`), one path; wrk cannot hold a fixed rate.\n", o.xcheck_rps, o.seconds, f64::from(o.xcheck_rps) / 10.0);
            md += "| generator | achieved req/s | p50 | p99 | 200 | failed | Envoy CPU µs/req |\n|---|---:|---:|---:|---:|---:|---:|\n";
            for x in rows {
                let _ = writeln!(
                    md,
                    "| {} | {:.0} | {:.0} µs | {:.0} µs | {} | {} | {:.2} |",
                    x.name, x.rps, x.p50_us, x.p99_us, x.ok, x.failed, x.cpu_per_req
                );
            }
            md += "\nThe latencies are defined differently: the loadgen measures from each request's *intended* send time (so it cannot hide a stall of its own or of the server: no coordinated omission), h2load from when it actually sent the request. The loadgen's figure therefore includes its own scheduling lateness (tokio timers have 1 ms granularity), which dominates its percentiles against a target this fast.\n";
        }
    }
    md
}

fn run(o: Opts, args: &[String]) -> Res<()> {
    let o = o.check()?;
    let machine = machine();
    let script = tempfile::Builder::new()
        .prefix("sg-bench-")
        .suffix(".lua")
        .tempfile()
        .map_err(|e| format!("wrk script: {e}"))?;
    let lua = format!(
        "local reqs, i = {{}}, 0\ninit = function(args)\n  for k = 1, {BLOG_IDS} do\n    \
         reqs[k] = wrk.format(\"GET\", \"/PostView?blogId=\" .. k .. \"&logNo=1\")\n  end\nend\n\
         request = function()\n  i = i % {BLOG_IDS} + 1\n  return reqs[i]\nend\n"
    );
    std::fs::write(script.path(), lua).map_err(|e| format!("{}: {e}", script.path().display()))?;
    let mut res: Results = vec![vec![Vec::new(); o.variants.len()]; o.concurrency.len()];
    let nv = o.variants.len();
    for round in 0..o.rounds {
        for (ci, conc) in o.concurrency.iter().enumerate() {
            for vi in (0..nv).map(|k| (k + round) % nv) {
                let v = &o.variants[vi];
                let s = measure(variant(v)?, *conc, &o, script.path())
                    .map_err(|e| format!("{v} at {conc}: {e}"))?;
                let (r, p50, p99, cpu) = (s.rps, s.p50_us, s.p99_us, s.cpu_per_req);
                eprintln!(
                    "round {}/{} concurrency {conc} {v:<24} {r:>7.0} req/s  p50 {p50:>5.0} µs  p99 {p99:>6.0} µs  {cpu:.2} CPU µs/req",
                    round + 1,
                    o.rounds
                );
                res[ci][vi].push(s);
            }
        }
    }
    let cross = if o.xcheck_rps == 0 {
        Err("not run (`--xcheck-rps 0`)".to_string())
    } else {
        eprintln!("load-generator cross-check at {} req/s", o.xcheck_rps);
        cross_check(&o, script.path())
    };
    if let Some(dir) = o.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let results = results(&o, &res, &cross);
    let md = report(&o, args, &machine, &results);
    std::fs::write(&o.out, md).map_err(|e| format!("{}: {e}", o.out.display()))?;
    println!("{results}\nwritten to {}", o.out.display());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = Opts::parse();
    match run(o, &args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
