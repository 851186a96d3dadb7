//! The spike drill (`make drill`, docs/DRILL.md): the demo blog with a finite worker pool, hit
//! by open-loop traffic in three phases (before, spike, after) under each protection
//! configuration in turn, with clients that retry what failed. Measures what normal users and
//! the hot keys' users got, what the app saw, how fast the spike was detected and how fast
//! normal users recovered; renders a table, a JSON report and an SVG plot.
//!
//! Traffic: a Zipf baseline over `blog_ids` blog IDs in four URL forms (PostView in both
//! query orders, the path form, PostList), one open-loop stream per form; during the spike
//! phase one more stream sends `spike` x the baseline rate at `hot_keys` blog IDs (drawn from
//! the same ID space with the seed), in the six forms shared links take. Every stream's
//! clients retry a failed, timed-out, 5xx or 429 answer after a pause, a bounded number of
//! times ([`LoadConfig::retries`]).
//!
//! The app's PostView renders call an outbound API (a third server) through Envoy's egress
//! listener, where configuration C has the breaker; with [`DrillConfig::api_fails`] that API
//! fails for the spike phase, and the report says what the calls got (the API, the breaker's
//! fallback, an error) and whether pages still rendered.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::envoy::{Bundle, Envoy};
use crate::loadgen::{self, KeyMix, LoadConfig, Record, Report};
use crate::nginx::Nginx;
use crate::upstream::{Upstream, UpstreamConfig, UpstreamStats};

/// The hot keys' links, written the ways shared links are (same as `make demo`).
pub const HOT_FORMS: &[&str] = &[
    "/PostView?blogId={key}&logNo=1",
    "/PostView?logNo=1&blogId={key}",
    "/PostView?blogId={key}&logNo=1&x={n}",
    "/{key}/1",
    "/{key}/1/",
    "/PostList?blogId={key}",
];

/// The baseline's URL forms and their share of the baseline.
pub const BASELINE_FORMS: &[(&str, f64)] = &[
    ("/PostView?blogId={key}&logNo=1", 0.4),
    ("/PostView?logNo=1&blogId={key}", 0.1),
    ("/{key}/1", 0.3),
    ("/PostList?blogId={key}", 0.2),
];

/// Phase names, in order.
pub const PHASES: [&str; 3] = ["before", "spike", "after"];

/// Width of the timeline's buckets (plot, recovery), milliseconds.
pub const BUCKET_MS: u64 = 250;
/// Width of the buckets recovery is judged on, milliseconds.
pub const RECOVERY_BUCKET_MS: u64 = 500;

/// Header simplepage puts on what it answered (simple page or its micro-cache).
const SIMPLE_HDR: &str = "x-spikeguard-simple-page";

/// Header the app puts on a PostView page: what its API call got (`ok`, `fallback`, `error`).
pub const API_HDR: &str = "x-api";

/// The breaker's API name (and Envoy cluster) of the bundle's egress listener.
pub const API_NAME: &str = "outbound_api";

/// A hanging API answers after this long: past the egress route's timeout (envoy.yaml 300 ms)
/// and the page's own (ingress, 1 s).
pub const API_HANG_MS: u64 = 1500;
/// A slow API answers after this long: past the breaker's `slow_call_ms` (envoy.yaml 150),
/// within the egress route's timeout (300 ms) and the page's own (ingress, 1 s).
pub const API_SLOW_MS: u64 = 220;

/// How often the breaker's state is looked at (C), milliseconds.
pub const BREAKER_POLL_MS: u64 = 100;

/// The breaker's counters reported per phase (`sg.breaker.outbound_api.<name>`).
pub const BREAKER_COUNTERS: &[&str] = &[
    "opened",
    "transitions",
    "success",
    "failure",
    "slow",
    "slow_failure",
    "ignored",
    "not_permitted",
    "bulkhead_rejected",
];

/// How the outbound API fails during the spike phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApiFailure {
    /// Every call is answered `503` at once.
    Errors,
    /// Every call is answered after [`API_HANG_MS`]: the egress route times out first.
    Hang,
    /// Every call is answered after [`API_SLOW_MS`]: slow for the breaker, in time for the
    /// route.
    Slow,
}

impl ApiFailure {
    pub fn parse(s: &str) -> Option<ApiFailure> {
        match s.trim().to_ascii_lowercase().as_str() {
            "errors" | "503" => Some(ApiFailure::Errors),
            "hang" => Some(ApiFailure::Hang),
            "slow" => Some(ApiFailure::Slow),
            _ => None,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            ApiFailure::Errors => "every call answered 503",
            ApiFailure::Hang => "every call hangs 1.5 s (past the egress route timeout)",
            ApiFailure::Slow => {
                "every call takes 220 ms (past the breaker's slow_call_ms 150, within the route timeouts)"
            }
        }
    }
}

fn default_api_latency_ms() -> u64 {
    2
}

/// A protection configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protection {
    /// Envoy with no spikeguard filter and no cluster limits (raised far above the load).
    A,
    /// Envoy's native `local_ratelimit`, a token bucket at the app's capacity.
    B,
    /// Real nginx in front of the app with the talk's `limit_req` (scaled to the app).
    N,
    /// The full spikeguard bundle (envoy.yaml), its app-sized numbers scaled to this app.
    C,
}

impl Protection {
    pub fn parse(s: &str) -> Option<Protection> {
        match s.trim().to_ascii_uppercase().as_str() {
            "A" => Some(Protection::A),
            "B" => Some(Protection::B),
            "N" => Some(Protection::N),
            "C" => Some(Protection::C),
            _ => None,
        }
    }

    pub fn letter(self) -> &'static str {
        match self {
            Protection::A => "A",
            Protection::B => "B",
            Protection::N => "N",
            Protection::C => "C",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protection::A => "no protection",
            Protection::B => "envoy local_ratelimit",
            Protection::N => "nginx limit_req",
            Protection::C => "spikeguard bundle",
        }
    }
}

/// Settings of a drill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillConfig {
    pub seconds_per_phase: f64,
    /// Spike stream rate as a multiple of the baseline rate (28 or 40 in the issue).
    pub spike: f64,
    pub hot_keys: usize,
    pub configs: Vec<Protection>,
    pub seed: u64,
    /// Baseline requests per second (all forms together).
    pub baseline_rps: f64,
    /// Number of blog IDs of the baseline's Zipf draw.
    pub blog_ids: usize,
    /// App worker pool and service time: capacity = workers * 1000 / latency_ms pages/s.
    pub workers: usize,
    pub latency_ms: u64,
    /// A request waiting longer than this for a worker gets `503 thread full`.
    pub queue_timeout_ms: u64,
    /// Client behaviour.
    pub retries: u32,
    pub retry_delay_ms: u64,
    pub client_timeout_ms: u64,
    /// Envoy `--concurrency`.
    pub envoy_workers: u32,
    /// Service time of the outbound API the app's PostView renders call.
    #[serde(default = "default_api_latency_ms")]
    pub api_latency_ms: u64,
    /// The outbound API fails this way for the spike phase (none: it never fails).
    #[serde(default)]
    pub api_fails: Option<ApiFailure>,
    /// The egress route's timeout in every configuration, and (C) the breaker's
    /// `slow_call_ms` set to half of it as envoy.yaml does (none: envoy.yaml's 300 ms and 150).
    #[serde(default)]
    pub egress_timeout_ms: Option<u64>,
}

impl Default for DrillConfig {
    fn default() -> Self {
        Self {
            seconds_per_phase: 10.0,
            spike: 28.0,
            hot_keys: 5,
            configs: vec![Protection::A, Protection::B, Protection::N, Protection::C],
            seed: 1,
            baseline_rps: 80.0,
            blog_ids: 10_000,
            workers: 6,
            latency_ms: 25,
            queue_timeout_ms: 500,
            retries: 2,
            retry_delay_ms: 200,
            client_timeout_ms: 2000,
            envoy_workers: 2,
            api_latency_ms: default_api_latency_ms(),
            api_fails: None,
            egress_timeout_ms: None,
        }
    }
}

impl DrillConfig {
    /// Pages per second the app can serve.
    pub fn capacity_rps(&self) -> f64 {
        self.workers as f64 * 1000.0 / self.latency_ms.max(1) as f64
    }

    fn phase_ms(&self) -> u64 {
        (self.seconds_per_phase.max(0.1) * 1000.0) as u64
    }

    /// The hot blog IDs, drawn with the seed from the upper half of the ID space (cold in
    /// the baseline's Zipf draw), distinct.
    pub fn hot_ids(&self) -> Vec<String> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ 0x5b1c_e000);
        let lo = (self.blog_ids / 2).max(1);
        let hi = self.blog_ids.max(lo + self.hot_keys.max(1));
        let mut ids: Vec<usize> = Vec::new();
        // Bounded: the range holds at least hot_keys distinct values.
        for _ in 0..10_000 {
            if ids.len() >= self.hot_keys.max(1) {
                break;
            }
            let r = rng.gen_range(lo..=hi);
            if !ids.contains(&r) {
                ids.push(r);
            }
        }
        ids.into_iter().map(|r| format!("blog{r}")).collect()
    }
}

/// What users of one class (normal or hot) got in one phase. A user request is a first
/// attempt and its retries; it succeeded when its last attempt was answered 2xx or 3xx;
/// its latency runs from the first attempt's intended send time to the last attempt's end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserStats {
    pub requests: u64,
    pub ok: u64,
    pub success_pct: f64,
    /// Share of requests whose last answer was a 200.
    pub ok200_pct: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Requests the load generator could not send (its in-flight bound, 8,192 per stream,
    /// reached): counted in `requests` as failed. Attributed to the spike phase (the only
    /// phase where the bound is reached in practice; the spike stream runs only then).
    pub not_sent: u64,
    /// Attempts sent (first attempts + retries).
    pub attempts: u64,
    pub retries: u64,
    /// Attempts by outcome (see [`outcome`]).
    pub outcomes: BTreeMap<String, u64>,
    /// Attempts answered by the app's PostView page, by what its API call got (the page's
    /// `x-api`: `ok`, `fallback` a 200 page without the API's part, `error` a 502).
    #[serde(default)]
    pub pages_by_api: BTreeMap<String, u64>,
}

/// The app and the simple-page backend in one phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamPhase {
    pub capacity_workers: u64,
    pub capacity_rps: f64,
    /// Most requests holding a worker at once (at most `capacity_workers` by construction:
    /// the excess waits in the app's queue and gets `thread full`).
    pub max_in_flight: u64,
    pub received: u64,
    pub thread_full: u64,
    /// Requests the simple-page backend got (the rest of the simple-page answers came from
    /// the proxy's micro-cache).
    pub simple_backend: u64,
}

/// The outbound API in one phase: the calls the app's page renders made (through the egress
/// listener) and what answered them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApiPhase {
    /// The API was failing in this phase ([`DrillConfig::api_fails`]).
    pub failing: bool,
    pub calls: u64,
    /// Calls by outcome as the app saw them: `ok` (the API's 2xx), `fallback_<reason>` (the
    /// breaker's fallback: open, half_open, bulkhead), `error` (any other status, a timeout),
    /// `abandoned` (dropped with its page when the page's client, Envoy's ingress route
    /// timeout, gave up first).
    pub outcomes: BTreeMap<String, u64>,
    /// Requests that reached the API server.
    pub api_received: u64,
    /// The breaker's counters over the phase (`sg.breaker.outbound_api.*`; C only).
    pub breaker: BTreeMap<String, i64>,
}

impl ApiPhase {
    fn count(&self, prefix: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| *v)
            .sum()
    }

    pub fn ok(&self) -> u64 {
        self.count("ok")
    }

    pub fn fallback(&self) -> u64 {
        self.count("fallback")
    }

    pub fn errors(&self) -> u64 {
        self.count("error")
    }

    /// Calls dropped with their page (the page's client left first).
    pub fn abandoned(&self) -> u64 {
        self.count("abandoned")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseReport {
    pub phase: String,
    pub normal: UserStats,
    pub hot: UserStats,
    /// Hot-key attempts answered from the micro-cache (simple-page answers minus what the
    /// backend served).
    pub hot_from_cache: u64,
    pub upstream: UpstreamPhase,
    #[serde(default)]
    pub api: ApiPhase,
}

/// One bucket of the timeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub t_ms: u64,
    /// Attempts per second by outcome (by when they finished).
    pub rps: BTreeMap<String, f64>,
    /// Normal users' latency of the requests first due in this bucket.
    pub normal_p50_ms: f64,
    pub normal_p99_ms: f64,
    pub normal_requests: u64,
}

/// A target of the issue, met or not, with the figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub met: bool,
    pub figure: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigReport {
    pub id: String,
    pub name: String,
    /// What stood in front of the app.
    pub front: String,
    pub phases: Vec<PhaseReport>,
    pub retries: u64,
    /// Requests the load generator could not send (its in-flight bound).
    pub dropped_client_side: u64,
    /// Spike start to the first hot-key attempt answered by a protection (simple page or
    /// cache for C; a limiter's rejection for B and N); none for A.
    pub detect_ms: Option<u64>,
    /// Spike end to the start of the first 500 ms bucket from which normal users' requests
    /// (of the rest of the after phase, together) have no failure and a p99 within 1.25x (at
    /// least +5 ms) of their pre-spike p99; none if never.
    pub recover_ms: Option<u64>,
    /// Spike start (the API starting to fail) to the first look, every 100 ms, that found
    /// the breaker open (C only).
    #[serde(default)]
    pub breaker_open_ms: Option<u64>,
    /// Spike end (the API answering again) to the first look that found the breaker closed
    /// again after it had opened; none if it did not close before the drill ended (C only).
    #[serde(default)]
    pub breaker_close_ms: Option<u64>,
    pub targets: Vec<Target>,
    pub timeline: Vec<Bucket>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrillReport {
    pub settings: DrillConfig,
    pub hot_ids: Vec<String>,
    pub capacity_rps: f64,
    pub phase_ms: u64,
    pub configs: Vec<ConfigReport>,
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// Envoy's native local rate limit: a token bucket of `rps` per second shared by the
/// listener (refilled every 100 ms), 429 when empty.
pub fn native_local_ratelimit(rps: f64) -> Value {
    let per_fill = ((rps / 10.0).round() as u64).max(1);
    let pct = |key: &str| json!({"runtime_key": key, "default_value": {"numerator": 100}});
    json!({"name": "envoy.filters.http.local_ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        "stat_prefix": "drill_local",
        "token_bucket": {"max_tokens": per_fill, "tokens_per_fill": per_fill, "fill_interval": "0.1s"},
        "filter_enabled": pct("drill_local.enabled"),
        "filter_enforced": pct("drill_local.enforced")}})
}

/// The talk's `limit_req rate=1000r/s burst=1000 nodelay` was set for an app of ~1,600
/// pages/s (the demo app): the same share of this app's capacity.
pub fn scaled_limit_req(capacity_rps: f64) -> (u64, u64) {
    let r = ((capacity_rps * 1000.0 / 1600.0).round() as u64).max(1);
    (r, r)
}

/// The bundle's numbers are sized to the demo app (32 workers x 20 ms): scale to this one.
/// `hotkey`: hot at 10% of the app's capacity and 10% of the traffic (both required), a
/// 100 ms tick; `ratelimit`: per blog 20 r/s burst 2 (the spiking keys together, before
/// hotkey names them, stay well under the capacity, and their bursts, landing at once, queue
/// normal users for less than two service times; burst 1 already rejects the busiest normal
/// blog's users now and then), global the talk's limit scaled (see [`scaled_limit_req`]).
fn scale_bundle(b: &mut Bundle, capacity_rps: f64) -> io::Result<()> {
    let mut hk = b
        .filter_config("hotkey")
        .ok_or_else(|| other("no hotkey in the bundle"))?;
    if let Some(rule) = hk.pointer_mut("/rules/0") {
        rule["threshold_rps"] = json!(((capacity_rps / 10.0).round() as u64).max(1));
        rule["threshold_share_percent"] = json!(10);
    }
    hk["tick_ms"] = json!(100);
    b.set_filter_config("hotkey", &hk)?;
    let mut rl = b
        .filter_config("ratelimit")
        .ok_or_else(|| other("no ratelimit in the bundle"))?;
    let (r, burst) = scaled_limit_req(capacity_rps);
    if let Some(rules) = rl["rules"].as_array_mut() {
        for rule in rules {
            match rule["name"].as_str() {
                Some("per_blog") => {
                    rule["rate"] = json!("20r/s");
                    rule["burst"] = json!(2);
                }
                Some("global") => {
                    rule["rate"] = json!(format!("{r}r/s"));
                    rule["burst"] = json!(burst);
                }
                _ => {}
            }
        }
    }
    b.set_filter_config("ratelimit", &rl)
}

/// What stands in front of the app for one configuration (dropped after the run), and the
/// Envoy whose egress listener the app's API calls go through.
enum Front {
    Envoy(Envoy),
    /// nginx, and an Envoy with no filter for the egress listener only (as A's).
    Nginx(Nginx, Envoy),
}

impl Front {
    fn url(&self) -> String {
        match self {
            Front::Envoy(e) => e.url(),
            Front::Nginx(n, _) => n.url(),
        }
    }

    fn egress(&self) -> &Envoy {
        match self {
            Front::Envoy(e) | Front::Nginx(_, e) => e,
        }
    }
}

/// Sets the egress route's timeout and, where the breaker is, its `slow_call_ms` to half of
/// it (envoy.yaml's rule: slow = half the route timeout).
fn set_egress_timeout(b: &mut Bundle, ms: u64) -> io::Result<()> {
    let rc = b
        .route_config_mut("egress")
        .ok_or_else(|| other("no egress listener"))?;
    let route = rc
        .pointer_mut("/virtual_hosts/0/routes/0/route")
        .ok_or_else(|| other("no egress route"))?;
    route["timeout"] = json!(format!("{:.3}s", ms as f64 / 1000.0));
    if let Some(mut br) = b.filter_config("breaker") {
        if let Some(api) = br.pointer_mut("/apis/0") {
            api["slow_call_ms"] = json!((ms / 2).max(1));
        }
        b.set_filter_config("breaker", &br)?;
    }
    Ok(())
}

/// An Envoy with no spikeguard filter and its cluster limits raised (A's): its egress
/// listener is a plain proxy to the API (envoy.yaml's egress route, timeout 300 ms).
fn plain_bundle(
    cfg: &DrillConfig,
    app: &Upstream,
    simple: &Upstream,
    api: &Upstream,
) -> io::Result<Bundle> {
    let mut b = Bundle::load()?;
    b.keep_filters(&[]);
    b.raise_circuit_breakers(100_000);
    if let Some(ms) = cfg.egress_timeout_ms {
        set_egress_timeout(&mut b, ms)?;
    }
    b.set_cluster_port("main_app", app.port)?;
    b.set_cluster_port("simple_page", simple.port)?;
    b.set_cluster_port(API_NAME, api.port)?;
    Ok(b)
}

fn start_front(
    p: Protection,
    cfg: &DrillConfig,
    app: &Upstream,
    simple: &Upstream,
    api: &Upstream,
) -> io::Result<(Front, String)> {
    let cap = cfg.capacity_rps();
    if p == Protection::N {
        let (r, burst) = scaled_limit_req(cap);
        let n = Nginx::limit_req_front(
            app.port,
            "$binary_remote_addr",
            &format!("{r}r/s"),
            &format!("burst={burst} nodelay"),
            503,
            Some(1000),
        )?;
        let egress = plain_bundle(cfg, app, simple, api)?.launch(cfg.envoy_workers)?;
        let desc = format!(
            "nginx (Debian) -> app: limit_req_zone $binary_remote_addr rate={r}r/s; limit_req burst={burst} nodelay (the talk's 1000r/s burst=1000 for a 1,600/s app, scaled); 503; proxy_read_timeout 1s; the app's API calls through an Envoy egress listener with no filter (as A)"
        );
        return Ok((Front::Nginx(n, egress), desc));
    }
    let mut b = Bundle::load()?;
    let desc = match p {
        Protection::A => {
            b.keep_filters(&[]);
            b.raise_circuit_breakers(100_000);
            "envoy, no spikeguard filter (ingress or egress), cluster limits raised to 100,000 (route timeouts: ingress 1 s, egress 300 ms)"
                .to_string()
        }
        Protection::B => {
            b.keep_filters(&[]);
            b.raise_circuit_breakers(100_000);
            b.prepend_http_filter("ingress", native_local_ratelimit(cap))?;
            format!("envoy local_ratelimit: token bucket {cap:.0}/s (refill every 100 ms), 429; cluster limits raised; egress with no filter")
        }
        _ => {
            scale_bundle(&mut b, cap)?;
            let (r, burst) = scaled_limit_req(cap);
            format!(
                "envoy.yaml bundle (sli, hotkey, simplepage, ratelimit; egress sli, breaker as in envoy.yaml); hotkey threshold {:.0}/s and 10%, tick 100 ms; ratelimit per_blog 20r/s burst 2, global {r}r/s burst {burst}; envoy.yaml's cluster limits",
                (cap / 10.0).round()
            )
        }
    };
    b.set_cluster_port("main_app", app.port)?;
    b.set_cluster_port("simple_page", simple.port)?;
    b.set_cluster_port(API_NAME, api.port)?;
    let mut desc = desc;
    if let Some(ms) = cfg.egress_timeout_ms {
        set_egress_timeout(&mut b, ms)?;
        let _ = write!(desc, "; egress route timeout {ms} ms");
        if p == Protection::C {
            let _ = write!(desc, ", breaker slow_call_ms {}", (ms / 2).max(1));
        }
    }
    let e = b.launch(cfg.envoy_workers)?;
    Ok((Front::Envoy(e), desc))
}

/// Outcome of one attempt: `app` (2xx from the app), `simple` (answered by simplepage:
/// simple page or micro-cache), `redirected` (3xx), `rejected` (429, or a 503 the app did not
/// send: a limiter, a shed, an Envoy overflow), `thread_full` (the app's 503), `error`
/// (timeout, connection error, any other status).
pub fn outcome(r: &Record) -> &'static str {
    let has = |n: &str| r.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
    let upstream = r
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("x-upstream"))
        .map(|(_, v)| v.as_str());
    match r.status {
        0 => "error",
        200..=299 if has(SIMPLE_HDR) || upstream == Some("simple") => "simple",
        200..=299 => "app",
        300..=399 => "redirected",
        429 => "rejected",
        503 if has("x-thread-full") => "thread_full",
        503 if upstream.is_none() => "rejected",
        _ => "error",
    }
}

/// Outcome names, in plot order.
pub const OUTCOMES: &[&str] = &[
    "app",
    "simple",
    "redirected",
    "rejected",
    "thread_full",
    "error",
];

/// One stream's records with times shifted to the drill's clock.
struct Shifted {
    hot: bool,
    offset_us: u64,
    report: Report,
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted.get(idx).copied().unwrap_or(0)
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn pct(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

fn user_stats(records: &[(u64, &Record)], phase: (u64, u64)) -> UserStats {
    let mut s = UserStats::default();
    let mut lat = Vec::new();
    let mut ok200 = 0;
    for (off, r) in records {
        let origin = r.origin_us + off;
        if origin < phase.0 || origin >= phase.1 {
            continue;
        }
        s.attempts += 1;
        if r.attempt > 0 {
            s.retries += 1;
        }
        *s.outcomes.entry(outcome(r).to_string()).or_default() += 1;
        if let Some((_, v)) = r
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(API_HDR))
        {
            *s.pages_by_api.entry(v.clone()).or_default() += 1;
        }
        if !r.retried {
            s.requests += 1;
            if (200..400).contains(&r.status) {
                s.ok += 1;
            }
            if r.status == 200 {
                ok200 += 1;
            }
            lat.push(r.done_us.saturating_sub(r.origin_us));
        }
    }
    lat.sort_unstable();
    s.success_pct = pct(s.ok, s.requests);
    s.ok200_pct = pct(ok200, s.requests);
    s.p50_ms = ms(percentile(&lat, 0.50));
    s.p99_ms = ms(percentile(&lat, 0.99));
    s
}

fn add_not_sent(s: &mut UserStats, n: u64) {
    if n == 0 {
        return;
    }
    let ok200 = (s.ok200_pct * s.requests as f64 / 100.0).round() as u64;
    s.not_sent = n;
    s.requests += n;
    s.success_pct = pct(s.ok, s.requests);
    s.ok200_pct = pct(ok200, s.requests);
}

fn upstream_phase(cfg: &DrillConfig, app: &UpstreamStats, simple: &UpstreamStats) -> UpstreamPhase {
    UpstreamPhase {
        capacity_workers: cfg.workers as u64,
        capacity_rps: cfg.capacity_rps(),
        max_in_flight: app.max_in_flight,
        received: app.total,
        thread_full: app.thread_full,
        simple_backend: simple.total,
    }
}

/// The breaker's counters (cumulative, short names) on an Envoy.
fn breaker_counters(e: &Envoy) -> BTreeMap<String, i64> {
    let prefix = format!("wasmcustom.sg.breaker.{API_NAME}.");
    e.stats_matching(&format!("sg.breaker.{API_NAME}."))
        .into_iter()
        .filter_map(|(k, v)| {
            let short = k.strip_prefix(&prefix)?;
            BREAKER_COUNTERS
                .contains(&short)
                .then(|| (short.to_string(), v))
        })
        .collect()
}

/// The breaker's state gauge (0 closed, 1 open, 2 half-open, ...), if Envoy answered.
fn breaker_state(e: &Envoy) -> Option<i64> {
    e.stats_matching(&format!("sg.breaker.{API_NAME}.state"))
        .get(&format!("wasmcustom.sg.breaker.{API_NAME}.state"))
        .copied()
}

/// When the breaker was first seen open after the spike started and closed again after it
/// ended (times from the drill's start, microseconds).
#[derive(Default)]
struct BreakerWatch {
    opened_us: Option<u64>,
    closed_us: Option<u64>,
}

impl BreakerWatch {
    fn look(&mut self, e: &Envoy, now_us: u64, spike_end_us: u64) {
        let Some(state) = breaker_state(e) else {
            return;
        };
        if state == 1 && self.opened_us.is_none() {
            self.opened_us = Some(now_us);
        }
        if state != 0 {
            self.closed_us = None;
        } else if self.opened_us.is_some() && now_us >= spike_end_us && self.closed_us.is_none() {
            self.closed_us = Some(now_us);
        }
    }
}

/// What the main thread snapshots at each phase's end.
#[derive(Clone, Default)]
struct Snap {
    app: UpstreamStats,
    simple: UpstreamStats,
    api: UpstreamStats,
    /// Cumulative.
    breaker: BTreeMap<String, i64>,
}

/// Starts the API failing (`on`) or answering again.
fn api_failing(api: &Upstream, how: Option<ApiFailure>, on: bool, latency_ms: u64) {
    match how {
        Some(ApiFailure::Errors) => api.set_error_rate(if on { 1.0 } else { 0.0 }, 503),
        Some(ApiFailure::Hang) => api.set_latency_ms(if on { API_HANG_MS } else { latency_ms }),
        Some(ApiFailure::Slow) => api.set_latency_ms(if on { API_SLOW_MS } else { latency_ms }),
        None => {}
    }
}

/// Runs one configuration: fresh app, simple-page backend and API, the front, the three
/// phases.
pub fn run_config(p: Protection, cfg: &DrillConfig) -> io::Result<ConfigReport> {
    let app = Upstream::start(UpstreamConfig {
        name: "main".into(),
        capacity: cfg.workers,
        latency_ms: cfg.latency_ms,
        queue_timeout_ms: cfg.queue_timeout_ms,
        page_calls_egress: true,
        ..UpstreamConfig::default()
    })?;
    let simple = Upstream::start(UpstreamConfig::simple_page())?;
    let api = Upstream::start(UpstreamConfig {
        name: "api".into(),
        capacity: 256,
        latency_ms: cfg.api_latency_ms,
        ..UpstreamConfig::default()
    })?;
    let (front, desc) = start_front(p, cfg, &app, &simple, &api)?;
    app.set_egress_url(&format!(
        "http://127.0.0.1:{}",
        front.egress().port("egress")
    ));
    let watch_breaker = p == Protection::C;
    let breaker0 = if watch_breaker {
        breaker_counters(front.egress())
    } else {
        BTreeMap::new()
    };
    let target = front.url();
    let phase_ms = cfg.phase_ms();
    let hot_ids = cfg.hot_ids();
    let share = 1.0 / hot_ids.len().max(1) as f64;
    let base = LoadConfig {
        target: target.clone(),
        max_in_flight: 8192,
        timeout_ms: cfg.client_timeout_ms,
        record: true,
        retries: cfg.retries,
        retry_delay_ms: cfg.retry_delay_ms,
        ..LoadConfig::default()
    };
    // (start offset ms, hot, config)
    let mut streams: Vec<(u64, bool, LoadConfig)> = Vec::new();
    for (i, (form, w)) in BASELINE_FORMS.iter().enumerate() {
        streams.push((
            0,
            false,
            LoadConfig {
                rate_rps: cfg.baseline_rps * w,
                duration_ms: 3 * phase_ms,
                path_template: (*form).to_string(),
                keys: KeyMix {
                    zipf_n: cfg.blog_ids,
                    zipf_s: 1.0,
                    key_prefix: "blog".into(),
                    seed: cfg.seed.wrapping_add(i as u64),
                    ..KeyMix::default()
                },
                ..base.clone()
            },
        ));
    }
    streams.push((
        phase_ms,
        true,
        LoadConfig {
            rate_rps: cfg.baseline_rps * cfg.spike,
            duration_ms: phase_ms,
            hot_templates: HOT_FORMS.iter().map(|f| f.to_string()).collect(),
            keys: KeyMix {
                hot: hot_ids.iter().map(|k| (k.clone(), share)).collect(),
                seed: cfg.seed.wrapping_add(100),
                ..KeyMix::default()
            },
            ..base.clone()
        },
    ));
    let t0 = Instant::now() + Duration::from_millis(50);
    let (results, snaps, watch) = std::thread::scope(|s| {
        let handles: Vec<_> = streams
            .iter()
            .map(|(off, hot, lc)| {
                s.spawn(move || {
                    sleep_until(t0 + Duration::from_millis(*off));
                    let offset_us = micros(t0.elapsed());
                    loadgen::run(lc).map(|report| Shifted {
                        hot: *hot,
                        offset_us,
                        report,
                    })
                })
            })
            .collect();
        // Phase boundaries: snapshot and zero the upstreams' counters; the API fails for the
        // spike phase. In C, a look at the breaker's state every 100 ms.
        let spike_end_us = 2 * phase_ms * 1000;
        let mut watch = BreakerWatch::default();
        let wait = |until: Instant, watch: &mut BreakerWatch| {
            if !watch_breaker {
                sleep_until(until);
                return;
            }
            while Instant::now() < until {
                watch.look(front.egress(), micros(t0.elapsed()), spike_end_us);
                sleep_until((Instant::now() + Duration::from_millis(BREAKER_POLL_MS)).min(until));
            }
        };
        let snap = || Snap {
            app: app.stats(),
            simple: simple.stats(),
            api: api.stats(),
            breaker: if watch_breaker {
                breaker_counters(front.egress())
            } else {
                BTreeMap::new()
            },
        };
        let mut snaps = Vec::new();
        for k in 1..3u64 {
            wait(t0 + Duration::from_millis(k * phase_ms), &mut watch);
            snaps.push(snap());
            app.reset();
            simple.reset();
            api.reset();
            // After the snapshot: a call the API failed counts in the spike phase.
            api_failing(&api, cfg.api_fails, k == 1, cfg.api_latency_ms);
        }
        wait(t0 + Duration::from_millis(3 * phase_ms), &mut watch);
        let results: Vec<io::Result<Shifted>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(other("load thread panicked")))
            })
            .collect();
        snaps.push(snap());
        (results, snaps, watch)
    });
    drop(front);
    let mut shifted = Vec::new();
    for r in results {
        shifted.push(r?);
    }
    let mut normal: Vec<(u64, &Record)> = Vec::new();
    let mut hot: Vec<(u64, &Record)> = Vec::new();
    let mut retries = 0;
    let mut dropped = 0;
    let (mut normal_not_sent, mut hot_not_sent) = (0, 0);
    for s in &shifted {
        retries += s.report.retries;
        dropped += s.report.dropped_client_side;
        if s.hot {
            hot_not_sent += s.report.dropped_client_side;
        } else {
            normal_not_sent += s.report.dropped_client_side;
        }
        let v = if s.hot { &mut hot } else { &mut normal };
        v.extend(s.report.records.iter().map(|r| (s.offset_us, r)));
    }
    let pus = phase_ms * 1000;
    let mut phases = Vec::new();
    for (i, name) in PHASES.iter().enumerate() {
        let i64_ = i as u64;
        let range = (i64_ * pus, if i == 2 { u64::MAX } else { (i64_ + 1) * pus });
        let snap = snaps.get(i).cloned().unwrap_or_default();
        let prev_breaker = match i.checked_sub(1) {
            Some(j) => snaps.get(j).map(|s| s.breaker.clone()).unwrap_or_default(),
            None => breaker0.clone(),
        };
        let (a, sm) = (&snap.app, &snap.simple);
        let mut n = user_stats(&normal, range);
        let mut h = user_stats(&hot, range);
        if i == 1 {
            add_not_sent(&mut n, normal_not_sent);
            add_not_sent(&mut h, hot_not_sent);
        }
        let simple_answers = h.outcomes.get("simple").copied().unwrap_or(0);
        phases.push(PhaseReport {
            phase: (*name).to_string(),
            hot_from_cache: simple_answers.saturating_sub(sm.total),
            normal: n,
            hot: h,
            upstream: upstream_phase(cfg, a, sm),
            api: ApiPhase {
                failing: cfg.api_fails.is_some() && i == 1,
                calls: a.api.values().sum(),
                outcomes: a.api.clone(),
                api_received: snap.api.total,
                breaker: snap
                    .breaker
                    .iter()
                    .map(|(k, v)| (k.clone(), v - prev_breaker.get(k).copied().unwrap_or(0)))
                    .collect(),
            },
        });
    }
    let detect_ms = if p == Protection::A {
        None
    } else {
        let want = if p == Protection::C {
            "simple"
        } else {
            "rejected"
        };
        hot.iter()
            .filter(|(off, r)| r.sent_us + off >= pus && outcome(r) == want)
            .map(|(off, r)| (r.sent_us + off).saturating_sub(pus) / 1000)
            .min()
    };
    let before_p99 = phases.first().map(|p| p.normal.p99_ms).unwrap_or(0.0);
    let recover_ms = recovery(&normal, pus, before_p99);
    let timeline = timeline(&normal, &hot, 3 * pus);
    let mut rep = ConfigReport {
        id: p.letter().to_string(),
        name: p.name().to_string(),
        front: desc,
        phases,
        retries,
        dropped_client_side: dropped,
        detect_ms,
        recover_ms,
        breaker_open_ms: watch.opened_us.map(|t| t.saturating_sub(pus) / 1000),
        breaker_close_ms: watch.closed_us.map(|t| t.saturating_sub(2 * pus) / 1000),
        targets: Vec::new(),
        timeline,
    };
    rep.targets = targets(&rep, p);
    if cfg.api_fails.is_some() {
        rep.targets.extend(api_targets(&rep, p));
    }
    Ok(rep)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Normal users' latency bound for "recovered": their pre-spike p99 x 1.25, at least +5 ms.
fn recovered_bound(before_p99_ms: f64) -> f64 {
    (before_p99_ms * 1.25).max(before_p99_ms + 5.0)
}

fn recovery(normal: &[(u64, &Record)], pus: u64, before_p99_ms: f64) -> Option<u64> {
    let spike_end = 2 * pus;
    let end = 3 * pus;
    let b = RECOVERY_BUCKET_MS * 1000;
    let n = (end - spike_end) / b;
    let bound = recovered_bound(before_p99_ms);
    // Normal users' requests of the after phase by bucket of their first attempt.
    let mut buckets: Vec<Vec<(u64, bool)>> = vec![Vec::new(); n as usize];
    for (off, r) in normal {
        let o = r.origin_us + off;
        if o >= spike_end && o < end && !r.retried {
            if let Some(v) = buckets.get_mut(((o - spike_end) / b) as usize) {
                v.push((
                    r.done_us.saturating_sub(r.origin_us),
                    (200..400).contains(&r.status),
                ));
            }
        }
    }
    // The first bucket from which the rest of the phase, taken together, has no failure and a
    // p99 within the bound (one slow request among hundreds does not undo a recovery).
    for k in 0..buckets.len() {
        let rest: Vec<(u64, bool)> = buckets.iter().skip(k).flatten().copied().collect();
        if rest.is_empty() {
            break;
        }
        let mut lat: Vec<u64> = rest.iter().map(|(l, _)| *l).collect();
        lat.sort_unstable();
        if rest.iter().all(|(_, ok)| *ok) && ms(percentile(&lat, 0.99)) <= bound {
            return Some(k as u64 * RECOVERY_BUCKET_MS);
        }
    }
    None
}

fn timeline(normal: &[(u64, &Record)], hot: &[(u64, &Record)], end_us: u64) -> Vec<Bucket> {
    let b = BUCKET_MS * 1000;
    let n = (end_us / b + 8) as usize; // a little past the end: the tail drains
    let mut counts: Vec<BTreeMap<&'static str, u64>> = vec![BTreeMap::new(); n];
    let mut lats: Vec<Vec<u64>> = vec![Vec::new(); n];
    for (off, r) in normal.iter().chain(hot.iter()) {
        let k = ((r.done_us + off) / b) as usize;
        if let Some(c) = counts.get_mut(k) {
            *c.entry(outcome(r)).or_default() += 1;
        }
    }
    for (off, r) in normal {
        if r.retried {
            continue;
        }
        let k = ((r.origin_us + off) / b) as usize;
        if let Some(l) = lats.get_mut(k) {
            l.push(r.done_us.saturating_sub(r.origin_us));
        }
    }
    let per_s = 1000.0 / BUCKET_MS as f64;
    let mut out: Vec<Bucket> = counts
        .into_iter()
        .zip(lats)
        .enumerate()
        .map(|(k, (c, mut l))| {
            l.sort_unstable();
            Bucket {
                t_ms: k as u64 * BUCKET_MS,
                rps: OUTCOMES
                    .iter()
                    .map(|o| (o.to_string(), c.get(o).copied().unwrap_or(0) as f64 * per_s))
                    .collect(),
                normal_p50_ms: ms(percentile(&l, 0.5)),
                normal_p99_ms: ms(percentile(&l, 0.99)),
                normal_requests: l.len() as u64,
            }
        })
        .collect();
    while out
        .last()
        .is_some_and(|b| b.normal_requests == 0 && b.rps.values().all(|v| *v == 0.0))
    {
        out.pop();
    }
    out
}

/// The issue's targets for the spike phase (stated for C; every configuration is judged).
fn targets(r: &ConfigReport, _p: Protection) -> Vec<Target> {
    let mut t = Vec::new();
    let (Some(before), Some(spike)) = (r.phases.first(), r.phases.get(1)) else {
        return t;
    };
    t.push(Target {
        name: "normal users >= 99.9% success during the spike".into(),
        met: spike.normal.requests > 0 && spike.normal.success_pct >= 99.9,
        figure: format!(
            "{:.2}% of {}",
            spike.normal.success_pct, spike.normal.requests
        ),
    });
    t.push(Target {
        name: "normal users' p99 within 2x of the baseline".into(),
        met: spike.normal.requests > 0 && spike.normal.p99_ms <= 2.0 * before.normal.p99_ms,
        figure: format!(
            "{:.1} ms vs {:.1} ms before ({:.2}x)",
            spike.normal.p99_ms,
            before.normal.p99_ms,
            if before.normal.p99_ms > 0.0 {
                spike.normal.p99_ms / before.normal.p99_ms
            } else {
                0.0
            }
        ),
    });
    let simple = spike.hot.outcomes.get("simple").copied().unwrap_or(0);
    t.push(Target {
        name: ">= 99% of hot-key requests answered 200".into(),
        met: spike.hot.requests > 0 && spike.hot.ok200_pct >= 99.0,
        figure: format!(
            "{:.2}% of {} users (last attempt); {:.1}% of {} attempts by the simple page or cache",
            spike.hot.ok200_pct,
            spike.hot.requests,
            pct(simple, spike.hot.attempts),
            spike.hot.attempts
        ),
    });
    let u = &spike.upstream;
    t.push(Target {
        name: "upstream never above capacity (no thread full)".into(),
        met: u.thread_full == 0 && u.max_in_flight <= u.capacity_workers,
        figure: format!(
            "peak {}/{} workers, {} thread full",
            u.max_in_flight, u.capacity_workers, u.thread_full
        ),
    });
    t.push(Target {
        name: "detection within 1 s".into(),
        met: r.detect_ms.is_some_and(|d| d <= 1000),
        figure: r
            .detect_ms
            .map(|d| format!("{d} ms"))
            .unwrap_or_else(|| "never".into()),
    });
    t.push(Target {
        name: "recovery within 2 s of the spike's end".into(),
        met: r.recover_ms.is_some_and(|d| d <= 2000),
        figure: r
            .recover_ms
            .map(|d| format!("{d} ms"))
            .unwrap_or_else(|| "not recovered".into()),
    });
    t
}

/// The `--api-fails` scenario's targets (stated for C).
fn api_targets(r: &ConfigReport, p: Protection) -> Vec<Target> {
    let mut t = Vec::new();
    let Some(spike) = r.phases.get(1) else {
        return t;
    };
    let a = &spike.api;
    let failed_pages = spike.normal.pages_by_api.get("error").copied().unwrap_or(0);
    let degraded = spike
        .normal
        .pages_by_api
        .get("fallback")
        .copied()
        .unwrap_or(0);
    let opened = a.breaker.get("opened").copied().unwrap_or(0);
    t.push(Target {
        name: "breaker opens and serves its fallback while the API fails".into(),
        met: p == Protection::C && opened > 0 && a.fallback() > 0,
        figure: if p == Protection::C {
            format!(
                "opened {opened}x ({} ms after the API began failing); {} of {} calls answered by the fallback; normal users got {degraded} pages with the fallback, {failed_pages} pages failed for the API",
                fmt_opt(r.breaker_open_ms),
                a.fallback(),
                a.calls
            )
        } else {
            format!(
                "no breaker: {} of {} calls failed; normal users got {failed_pages} pages failed for the API",
                a.errors(),
                a.calls
            )
        },
    });
    t.push(Target {
        name: "breaker closes again after the API recovers".into(),
        met: r.breaker_close_ms.is_some(),
        figure: match (p, r.breaker_close_ms) {
            (Protection::C, Some(ms)) => format!("closed {ms} ms after the spike's end"),
            (Protection::C, None) => "not closed before the drill ended".into(),
            _ => "no breaker".into(),
        },
    });
    t
}

/// Runs every configuration in turn.
pub fn run(cfg: &DrillConfig, mut progress: impl FnMut(&str)) -> io::Result<DrillReport> {
    let mut configs = Vec::new();
    for p in &cfg.configs {
        progress(&format!("[{}] {} ...", p.letter(), p.name()));
        let r = run_config(*p, cfg)?;
        progress(&format!(
            "[{}] done: {} retries, detect {:?} ms, recover {:?} ms",
            p.letter(),
            r.retries,
            r.detect_ms,
            r.recover_ms
        ));
        configs.push(r);
        // Let sockets of the previous run close.
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(DrillReport {
        settings: cfg.clone(),
        hot_ids: cfg.hot_ids(),
        capacity_rps: cfg.capacity_rps(),
        phase_ms: cfg.phase_ms(),
        configs,
    })
}

fn fmt_opt(v: Option<u64>) -> String {
    v.map(|d| format!("{d}")).unwrap_or_else(|| "-".into())
}

/// The table (per configuration and phase) and the targets.
pub fn table(r: &DrillReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "app: {} workers x {} ms = {:.0} pages/s; baseline {:.0} req/s (Zipf over {} blog IDs, 4 URL forms); spike {}x = {:.0} req/s at {} blog IDs ({}) for {} ms; clients retry {} times after {} ms (timeout {} ms)",
        r.settings.workers,
        r.settings.latency_ms,
        r.capacity_rps,
        r.settings.baseline_rps,
        r.settings.blog_ids,
        r.settings.spike,
        r.settings.baseline_rps * r.settings.spike,
        r.hot_ids.len(),
        r.hot_ids.join(", "),
        r.phase_ms,
        r.settings.retries,
        r.settings.retry_delay_ms,
        r.settings.client_timeout_ms
    );
    let _ = writeln!(
        s,
        "\n{:<3} {:<7} {:>9} {:>8} {:>8} {:>9} {:>8} {:>7} {:>7} {:>6} {:>6} {:>7} {:>7} {:>9} {:>7} {:>8} {:>8}",
        "cfg", "phase", "normal", "ok%", "p50ms", "p99ms", "hot", "hot200%", "app", "simple", "cache", "redir", "reject", "thrdfull", "errors", "peak/cap", "retries"
    );
    for c in &r.configs {
        for p in &c.phases {
            let o = |k: &str| p.hot.outcomes.get(k).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "{:<3} {:<7} {:>9} {:>8.2} {:>8.1} {:>9.1} {:>8} {:>7.1} {:>7} {:>6} {:>6} {:>7} {:>7} {:>9} {:>7} {:>8} {:>8}",
                c.id,
                p.phase,
                p.normal.requests,
                p.normal.success_pct,
                p.normal.p50_ms,
                p.normal.p99_ms,
                p.hot.requests,
                p.hot.ok200_pct,
                o("app"),
                o("simple").saturating_sub(p.hot_from_cache),
                p.hot_from_cache,
                o("redirected"),
                o("rejected"),
                o("thread_full"),
                o("error"),
                format!("{}/{}", p.upstream.max_in_flight, p.upstream.capacity_workers),
                p.normal.retries + p.hot.retries
            );
        }
        let _ = writeln!(
            s,
            "{:<3} detect {} ms, recover {} ms after the spike, {} retries, {} not sent (client bound), app thread full {} / {} / {}",
            c.id,
            fmt_opt(c.detect_ms),
            fmt_opt(c.recover_ms),
            c.retries,
            c.dropped_client_side,
            c.phases.first().map(|p| p.upstream.thread_full).unwrap_or(0),
            c.phases.get(1).map(|p| p.upstream.thread_full).unwrap_or(0),
            c.phases.get(2).map(|p| p.upstream.thread_full).unwrap_or(0),
        );
    }
    let _ = writeln!(
        s,
        "\noutbound API: PostView renders call it through Envoy's egress listener (breaker in C only); {}",
        match r.settings.api_fails {
            Some(f) => format!("during the spike it fails: {}", f.describe()),
            None => "it does not fail (--api-fails makes it fail during the spike)".into(),
        }
    );
    let _ = writeln!(
        s,
        "{:<3} {:<7} {:>7} {:>7} {:>7} {:>8} {:>6} {:>6} {:>6} {:>7} {:>6} {:>8} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8}",
        "cfg", "phase", "failing", "calls", "api-ok", "fallback", "f-open", "f-half", "f-bulk", "errors", "aband", "received", "pg-fallb", "pg-err", "opened", "notperm", "bulk-rej", "ignored"
    );
    for c in &r.configs {
        for p in &c.phases {
            let a = &p.api;
            let o = |k: &str| a.outcomes.get(k).copied().unwrap_or(0);
            let b = |k: &str| {
                if c.id == "C" {
                    a.breaker.get(k).copied().unwrap_or(0).to_string()
                } else {
                    "-".into()
                }
            };
            let pg = |k: &str| p.normal.pages_by_api.get(k).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "{:<3} {:<7} {:>7} {:>7} {:>7} {:>8} {:>6} {:>6} {:>6} {:>7} {:>6} {:>8} {:>8} {:>7} {:>7} {:>7} {:>8} {:>8}",
                c.id,
                p.phase,
                if a.failing { "yes" } else { "no" },
                a.calls,
                a.ok(),
                a.fallback(),
                o("fallback_open"),
                o("fallback_half_open"),
                o("fallback_bulkhead"),
                a.errors(),
                a.abandoned(),
                a.api_received,
                pg("fallback"),
                pg("error"),
                b("opened"),
                b("not_permitted"),
                b("bulkhead_rejected"),
                b("ignored"),
            );
        }
        if c.id == "C" {
            let _ = writeln!(
                s,
                "{:<3} breaker first seen open {} ms after the spike's start, closed again {} ms after its end",
                c.id,
                fmt_opt(c.breaker_open_ms),
                fmt_opt(c.breaker_close_ms)
            );
        }
    }
    let _ = writeln!(s, "\ntargets (spike phase; stated for C):");
    for c in &r.configs {
        let _ = writeln!(s, "  ({}) {}: {}", c.id, c.name, c.front);
        for t in &c.targets {
            let _ = writeln!(
                s,
                "      {:<8} {:<52} {}",
                if t.met { "met" } else { "NOT MET" },
                t.name,
                t.figure
            );
        }
    }
    s
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(o: &str) -> &'static str {
    match o {
        "app" => "#2b8a3e",
        "simple" => "#1971c2",
        "redirected" => "#7048e8",
        "rejected" => "#f08c00",
        "thread_full" => "#c92a2a",
        _ => "#495057",
    }
}

/// One line of a plot: name, colour, (time ms, value) points.
type Series = (String, &'static str, Vec<(f64, f64)>);

/// The plot, written by hand (no plotting crate): per configuration, requests/s by outcome
/// over time (lines, log scale) and normal users' p50/p99 over time (log scale), with the
/// spike phase shaded.
pub fn svg(r: &DrillReport) -> String {
    let w = 1000.0;
    let panel_h = 190.0;
    let gap = 40.0;
    let left = 70.0;
    let right = 150.0;
    let plot_w = w - left - right;
    let per_cfg = 2.0 * panel_h + gap + 30.0;
    let h = 60.0 + per_cfg * r.configs.len() as f64;
    let t_end = r
        .configs
        .iter()
        .flat_map(|c| c.timeline.last().map(|b| b.t_ms + BUCKET_MS))
        .max()
        .unwrap_or(3 * r.phase_ms)
        .max(3 * r.phase_ms) as f64;
    let x = |t: f64| left + plot_w * t / t_end.max(1.0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="11">
<rect width="100%" height="100%" fill="white"/>
<text x="{left}" y="24" font-size="15">spike drill: {} x baseline at {} blog IDs ({} ms phases), app {:.0} pages/s</text>"#,
        r.settings.spike,
        r.hot_ids.len(),
        r.phase_ms,
        r.capacity_rps
    );
    for (ci, c) in r.configs.iter().enumerate() {
        let top = 50.0 + per_cfg * ci as f64;
        let _ = writeln!(
            s,
            r#"<text x="{left}" y="{}" font-size="13" font-weight="bold">({}) {}</text>"#,
            top + 12.0,
            esc(&c.id),
            esc(&c.name)
        );
        // Two panels: rates, latency. Log scales.
        let max_rps = c
            .timeline
            .iter()
            .flat_map(|b| b.rps.values().copied())
            .fold(1.0f64, f64::max);
        let max_lat = c
            .timeline
            .iter()
            .map(|b| b.normal_p99_ms)
            .fold(1.0f64, f64::max);
        for (pi, (label, maxv)) in [
            ("requests/s by outcome", max_rps),
            ("normal users' latency, ms", max_lat),
        ]
        .iter()
        .enumerate()
        {
            let py = top + 20.0 + pi as f64 * (panel_h + gap);
            let ph = panel_h;
            let lmax = maxv.max(10.0).log10().ceil();
            let y = |v: f64| py + ph - ph * (v.max(1.0).log10() / lmax).clamp(0.0, 1.0);
            let _ = writeln!(
                s,
                r##"<rect x="{}" y="{py}" width="{}" height="{ph}" fill="#ffe3e3" opacity="0.6"/>"##,
                x(r.phase_ms as f64),
                x(2.0 * r.phase_ms as f64) - x(r.phase_ms as f64)
            );
            let _ = writeln!(
                s,
                r##"<rect x="{left}" y="{py}" width="{plot_w}" height="{ph}" fill="none" stroke="#868e96"/>"##
            );
            let _ = writeln!(
                s,
                r#"<text x="{left}" y="{}">{}</text>"#,
                py - 4.0,
                esc(label)
            );
            for d in 0..=(lmax as u32) {
                let v = 10f64.powi(d as i32);
                let yy = y(v);
                let _ = writeln!(
                    s,
                    r##"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#dee2e6"/><text x="{}" y="{:.1}" text-anchor="end">{v}</text>"##,
                    left + plot_w,
                    left - 4.0,
                    yy + 3.0
                );
            }
            let series: Vec<Series> = if pi == 0 {
                OUTCOMES
                    .iter()
                    .map(|o| {
                        let pts = c
                            .timeline
                            .iter()
                            .map(|b| (b.t_ms as f64, b.rps.get(*o).copied().unwrap_or(0.0)))
                            .collect();
                        ((*o).to_string(), color(o), pts)
                    })
                    .filter(|(_, _, p): &Series| p.iter().any(|(_, v)| *v > 0.0))
                    .collect()
            } else {
                let pts = |f: fn(&Bucket) -> f64| {
                    c.timeline
                        .iter()
                        .filter(|b| b.normal_requests > 0)
                        .map(|b| (b.t_ms as f64, f(b)))
                        .collect::<Vec<_>>()
                };
                vec![
                    ("p50".to_string(), "#1971c2", pts(|b| b.normal_p50_ms)),
                    ("p99".to_string(), "#c92a2a", pts(|b| b.normal_p99_ms)),
                ]
            };
            for (li, (name, col, pts)) in series.iter().enumerate() {
                let mut d = String::new();
                for (t, v) in pts {
                    let _ = write!(d, "{:.1},{:.1} ", x(*t + BUCKET_MS as f64 / 2.0), y(*v));
                }
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{col}" stroke-width="1.6" points="{}"/>"#,
                    d.trim_end()
                );
                let ly = py + 12.0 + 14.0 * li as f64;
                let _ = writeln!(
                    s,
                    r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{col}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                    left + plot_w + 10.0,
                    left + plot_w + 30.0,
                    left + plot_w + 35.0,
                    ly + 4.0,
                    esc(name)
                );
            }
        }
        // Time axis.
        let ay = top + 20.0 + 2.0 * panel_h + gap + 14.0;
        let step = if t_end > 20_000.0 { 5000.0 } else { 1000.0 };
        let mut t = 0.0;
        while t <= t_end {
            let _ = writeln!(
                s,
                r#"<text x="{:.1}" y="{ay}" text-anchor="middle">{}s</text>"#,
                x(t),
                t / 1000.0
            );
            t += step;
        }
    }
    s.push_str("</svg>\n");
    s
}
