//! Open-loop load generator.
//!
//! Requests are scheduled at a constant arrival rate (request `i` at `start + i / rate`) and
//! each one's latency is measured from its *intended* send time, so a slow server cannot
//! slow the generator down and hide its own latency (no coordinated omission).
//!
//! [`run_schedule`] replays an exact plan instead (e.g. several requests of one key at the
//! same instant) and returns one [`Outcome`] per planned request, in plan order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Keys tracked per key while a run goes on (then the rest are not tracked per key).
const MAX_KEYS_TRACKED: usize = 100_000;
/// Keys kept in [`Report::by_key_status`].
pub const TOP_KEYS: usize = 50;

/// How keys are drawn for each request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyMix {
    /// Number of Zipf ranks; keys are `{key_prefix}{rank}`, rank 1..=zipf_n.
    /// 0 = a single fixed key `{key_prefix}0` (`k0` by default).
    pub zipf_n: usize,
    /// Zipf exponent (weight of rank r is 1 / r^s).
    pub zipf_s: f64,
    /// Hot keys and their share of all traffic, e.g. `[("hot1", 0.5)]`; drawn first.
    pub hot: Vec<(String, f64)>,
    /// Prefix of generated keys.
    pub key_prefix: String,
    /// Every request not given a hot key gets a fresh distinct key `{key_prefix}u{counter}`.
    pub unique: bool,
    /// Seed of the key draw (runs with the same seed draw the same keys).
    pub seed: u64,
}

impl Default for KeyMix {
    fn default() -> Self {
        Self {
            zipf_n: 0,
            zipf_s: 1.0,
            hot: Vec::new(),
            key_prefix: "k".to_string(),
            unique: false,
            seed: 1,
        }
    }
}

/// Configuration of a constant-rate run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadConfig {
    /// Base URL, `http://127.0.0.1:PORT`.
    pub target: String,
    /// Arrival rate, requests per second.
    pub rate_rps: f64,
    /// Length of the schedule in milliseconds (`rate * duration` requests are planned).
    pub duration_ms: u64,
    /// Path and query; `{key}` is replaced by the request's key, `{n}` by the request's
    /// sequence number (a cache-buster).
    pub path_template: String,
    /// URL forms for the keys listed in `KeyMix::hot` (the spike): when not empty, the hot
    /// keys' requests take these templates in turn instead of `path_template` (one page
    /// written several ways, as real links are).
    pub hot_templates: Vec<String>,
    /// Key mix.
    pub keys: KeyMix,
    /// Request headers; `{key}` is replaced in values too.
    pub headers: Vec<(String, String)>,
    /// A request due while this many are outstanding is not sent (counted in
    /// `dropped_client_side`).
    pub max_in_flight: usize,
    /// Per-request timeout (connect + response + body).
    pub timeout_ms: u64,
    /// Keep per-request [`Record`]s in the report.
    pub record: bool,
    /// Client retries: a request that failed (error, timeout), or was answered 5xx or 429, is
    /// sent again to the same URL after `retry_delay_ms`, at most this many times (0 = never,
    /// the default). Retries are extra requests the server sees (an overloaded server gets its
    /// own failures back); each attempt is its own [`Record`].
    #[serde(default)]
    pub retries: u32,
    /// Pause before a retry, milliseconds.
    #[serde(default)]
    pub retry_delay_ms: u64,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            target: "http://127.0.0.1:10000".to_string(),
            rate_rps: 100.0,
            duration_ms: 1000,
            path_template: "/PostView?blogId={key}&logNo=1".to_string(),
            hot_templates: Vec::new(),
            keys: KeyMix::default(),
            headers: Vec::new(),
            max_in_flight: 1024,
            timeout_ms: 5000,
            record: false,
            retries: 0,
            retry_delay_ms: 0,
        }
    }
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// One request of a run (kept only when [`LoadConfig::record`] is set).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Intended send time, microseconds from the start of the run.
    pub intended_us: u64,
    /// Actual send time, microseconds from the start.
    pub sent_us: u64,
    /// Completion (or failure) time, microseconds from the start.
    pub done_us: u64,
    pub key: String,
    /// HTTP status, 0 = error (connect failure, timeout, ...).
    pub status: u16,
    /// `done_us - intended_us`.
    pub latency_us: u64,
    /// Response headers named `x-*`, `ratelimit*` or `retry-after`.
    pub headers: Vec<(String, String)>,
    /// 0 for the first attempt of a request, n for its n-th retry ([`LoadConfig::retries`]).
    #[serde(default)]
    pub attempt: u32,
    /// This attempt failed and was retried (another record, `attempt + 1`, follows).
    #[serde(default)]
    pub retried: bool,
    /// Intended send time of the request's first attempt (= `intended_us` when `attempt` is
    /// 0): a user's wait, retries included, is `done_us - origin_us`.
    #[serde(default)]
    pub origin_us: u64,
}

/// Result of a [`run`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered (any status).
    pub completed: u64,
    /// Requests that failed (connect error, timeout, broken connection).
    pub errors: u64,
    /// Requests not sent because `max_in_flight` were outstanding.
    pub dropped_client_side: u64,
    /// Retries sent ([`LoadConfig::retries`]); counted in `sent` too.
    #[serde(default)]
    pub retries: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Latency from the intended send time, over completed requests.
    pub latency_us: LatencySummary,
    /// `completed` per second of wall time of the run.
    pub achieved_rps: f64,
    /// Wall time of the run (until the last request finished), milliseconds.
    pub duration_ms: u64,
    /// Status counts of the (at most [`TOP_KEYS`]) most frequent keys.
    pub by_key_status: BTreeMap<String, BTreeMap<u16, u64>>,
    /// Per-request records (empty unless [`LoadConfig::record`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Record>,
}

/// One request of a [`run_schedule`] plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Planned {
    /// Send time, microseconds from the start.
    pub at_us: u64,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// HTTP method, e.g. "GET".
    pub method: String,
}

impl Planned {
    /// A GET of `path` at `at_us` without extra headers.
    pub fn get(at_us: u64, path: impl Into<String>) -> Self {
        Self {
            at_us,
            path: path.into(),
            headers: Vec::new(),
            method: "GET".to_string(),
        }
    }
}

/// What happened to one planned request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// Index in the plan.
    pub index: usize,
    /// HTTP status, 0 = error.
    pub status: u16,
    pub sent_us: u64,
    pub done_us: u64,
    /// Response headers named `x-*`, `ratelimit*` or `retry-after`.
    pub headers: Vec<(String, String)>,
}

impl Outcome {
    /// Value of the first kept response header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
}

/// Whether a response header is kept in records and outcomes.
pub fn keep_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.starts_with("x-") || n.starts_with("ratelimit") || n == "retry-after"
}

fn kept_headers(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .filter(|(k, _)| keep_header(k.as_str()))
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Key selection
// ---------------------------------------------------------------------------------------------

/// Deterministic key sampler for a [`KeyMix`].
#[derive(Debug)]
pub struct KeySampler {
    rng: StdRng,
    hot_cdf: Vec<(String, f64)>,
    zipf_cdf: Vec<f64>,
    prefix: String,
    unique: bool,
    counter: u64,
}

impl KeySampler {
    pub fn new(mix: &KeyMix) -> Self {
        let mut acc = 0.0;
        let mut hot_cdf = Vec::with_capacity(mix.hot.len());
        for (k, share) in &mix.hot {
            let share = if share.is_finite() {
                share.max(0.0)
            } else {
                0.0
            };
            acc = (acc + share).min(1.0);
            hot_cdf.push((k.clone(), acc));
        }
        let mut zipf_cdf = Vec::with_capacity(mix.zipf_n);
        let mut total = 0.0;
        for r in 1..=mix.zipf_n {
            total += 1.0 / (r as f64).powf(mix.zipf_s);
            zipf_cdf.push(total);
        }
        if total > 0.0 {
            for c in &mut zipf_cdf {
                *c /= total;
            }
        }
        Self {
            rng: StdRng::seed_from_u64(mix.seed),
            hot_cdf,
            zipf_cdf,
            prefix: mix.key_prefix.clone(),
            unique: mix.unique,
            counter: 0,
        }
    }

    /// The next key.
    pub fn next_key(&mut self) -> String {
        if !self.hot_cdf.is_empty() {
            let u: f64 = self.rng.gen();
            if let Some((k, _)) = self.hot_cdf.iter().find(|(_, c)| u < *c) {
                return k.clone();
            }
        }
        if self.unique {
            self.counter += 1;
            return format!("{}u{}", self.prefix, self.counter);
        }
        if self.zipf_cdf.is_empty() {
            return format!("{}0", self.prefix);
        }
        let u: f64 = self.rng.gen();
        let idx = self.zipf_cdf.partition_point(|c| *c <= u);
        let rank = idx.min(self.zipf_cdf.len() - 1) + 1;
        format!("{}{}", self.prefix, rank)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing
// ---------------------------------------------------------------------------------------------

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn make_client(pool: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(3)));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(pool.max(8))
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("loadgen")
        .enable_all()
        .build()
}

fn build_request(
    target: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
) -> std::io::Result<Request<Empty<Bytes>>> {
    let uri: hyper::Uri = format!("{}{}", target.trim_end_matches('/'), path)
        .parse()
        .map_err(invalid)?;
    let method = Method::from_bytes(method.as_bytes()).map_err(invalid)?;
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::new())
        .map_err(invalid)?;
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.trim().as_bytes()).map_err(invalid)?;
        let value = HeaderValue::from_str(v.trim()).map_err(invalid)?;
        req.headers_mut().append(name, value);
    }
    Ok(req)
}

/// Sends one request; returns (status, kept headers) or None on error/timeout.
async fn send(
    client: &HttpClient,
    req: Request<Empty<Bytes>>,
    timeout: Duration,
    want_headers: bool,
) -> Option<(u16, Vec<(String, String)>)> {
    let fut = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let headers = if want_headers {
            kept_headers(resp.headers())
        } else {
            Vec::new()
        };
        // Drain the body so the connection goes back to the pool.
        resp.into_body().collect().await.ok()?;
        Some((status, headers))
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

fn micros_since(start: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(start).as_micros()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Constant-rate run
// ---------------------------------------------------------------------------------------------

struct Done {
    attempt: u32,
    retried: bool,
    origin_us: u64,
    intended_us: u64,
    sent_us: u64,
    done_us: u64,
    key: String,
    status: u16,
    headers: Vec<(String, String)>,
}

/// Live counters of one or more running loads, for a display that samples them while the
/// load goes on ([`run_with_progress`]): counts only grow; [`Progress::take_normal_latency`]
/// hands over the latencies recorded since its last call.
#[derive(Debug)]
pub struct Progress {
    /// Requests due by the schedule (sent, or dropped client-side at `max_in_flight`).
    pub offered: AtomicU64,
    /// Requests finished, by outcome: `[error or timeout, 1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub done_by_class: [AtomicU64; 6],
    /// Of those, requests for keys not in [`KeyMix::hot`] ("normal users"), and their 2xx.
    pub normal_done: AtomicU64,
    pub normal_ok: AtomicU64,
    /// Latency (µs, from the intended send time) of normal users' completed requests.
    normal_latency: Mutex<Option<Histogram<u64>>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            offered: AtomicU64::new(0),
            done_by_class: Default::default(),
            normal_done: AtomicU64::new(0),
            normal_ok: AtomicU64::new(0),
            normal_latency: Mutex::new(None),
        }
    }
}

impl Progress {
    /// Requests finished with a status in `class` (2 = 2xx ...; 0 = error or timeout).
    pub fn done(&self, class: usize) -> u64 {
        self.done_by_class
            .get(class)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The normal users' latencies recorded since the last call (µs); None if none.
    pub fn take_normal_latency(&self) -> Option<Histogram<u64>> {
        self.normal_latency.lock().ok().and_then(|mut h| h.take())
    }

    fn add(&self, status: u16, normal: bool, latency_us: u64) {
        let class = if status == 0 {
            0
        } else {
            usize::from(status / 100).min(5)
        };
        if let Some(c) = self.done_by_class.get(class) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if normal {
            self.normal_done.fetch_add(1, Ordering::Relaxed);
            if class == 2 {
                self.normal_ok.fetch_add(1, Ordering::Relaxed);
            }
            if status != 0 {
                if let Ok(mut h) = self.normal_latency.lock() {
                    if h.is_none() {
                        *h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).ok();
                    }
                    if let Some(h) = h.as_mut() {
                        h.saturating_record(latency_us.max(1));
                    }
                }
            }
        }
    }
}

/// Runs a constant-rate load; blocks until every sent request finished or timed out.
pub fn run(cfg: &LoadConfig) -> std::io::Result<Report> {
    run_with_progress(cfg, None)
}

/// [`run`], also counting into `progress` (shareable by several loads at once) as requests
/// are due and finish.
pub fn run_with_progress(
    cfg: &LoadConfig,
    progress: Option<Arc<Progress>>,
) -> std::io::Result<Report> {
    if !(cfg.rate_rps.is_finite() && cfg.rate_rps > 0.0) {
        return Err(invalid("rate_rps must be > 0"));
    }
    // Validate the target and template once, up front.
    build_request(
        &cfg.target,
        "GET",
        &cfg.path_template.replace("{key}", "k"),
        &cfg.headers
            .iter()
            .map(|(k, v)| (k.clone(), v.replace("{key}", "k")))
            .collect::<Vec<_>>(),
    )?;
    let rt = runtime()?;
    let report = rt.block_on(run_async(cfg.clone(), progress));
    rt.shutdown_timeout(Duration::from_millis(200));
    report
}

async fn run_async(cfg: LoadConfig, progress: Option<Arc<Progress>>) -> std::io::Result<Report> {
    let max_in_flight = cfg.max_in_flight.max(1);
    let client = make_client(max_in_flight);
    let total = ((cfg.rate_rps * cfg.duration_ms as f64) / 1000.0).floor() as u64;
    let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
    let target: Arc<str> = Arc::from(cfg.target.as_str());
    let headers: Arc<Vec<(String, String)>> = Arc::new(cfg.headers.clone());
    let templ_has_key = cfg.headers.iter().any(|(_, v)| v.contains("{key}"));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut sampler = KeySampler::new(&cfg.keys);
    let (tx, mut rx) = mpsc::unbounded_channel::<Done>();

    let mut hist = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).map_err(io_err)?;
    let record = cfg.record;

    let start = Instant::now();
    let hot_keys: Vec<String> = cfg.keys.hot.iter().map(|(k, _)| k.clone()).collect();
    let live = progress.clone();
    let collector = tokio::spawn(async move {
        let mut agg = Agg::default();
        while let Some(d) = rx.recv().await {
            if let Some(p) = &live {
                let normal = !hot_keys.contains(&d.key);
                p.add(d.status, normal, d.done_us.saturating_sub(d.intended_us));
            }
            agg.add(d, record, &mut hist);
        }
        (agg, hist)
    });

    let retries = cfg.retries;
    let retry_delay = Duration::from_millis(cfg.retry_delay_ms);
    let retries_sent = Arc::new(AtomicU64::new(0));
    let mut sent = 0u64;
    let mut dropped = 0u64;
    for i in 0..total {
        let intended = start + Duration::from_secs_f64(i as f64 / cfg.rate_rps);
        tokio::time::sleep_until(intended).await;
        let key = sampler.next_key();
        if let Some(p) = &progress {
            p.offered.fetch_add(1, Ordering::Relaxed);
        }
        if in_flight.load(Ordering::SeqCst) >= max_in_flight {
            dropped += 1;
            continue;
        }
        let hot = !cfg.hot_templates.is_empty() && cfg.keys.hot.iter().any(|(k, _)| *k == key);
        let templ = match cfg
            .hot_templates
            .get(i as usize % cfg.hot_templates.len().max(1))
        {
            Some(t) if hot => t,
            _ => &cfg.path_template,
        };
        let path = templ.replace("{key}", &key).replace("{n}", &i.to_string());
        let hdrs: Vec<(String, String)> = if templ_has_key {
            headers
                .iter()
                .map(|(k, v)| (k.clone(), v.replace("{key}", &key)))
                .collect()
        } else {
            headers.as_ref().clone()
        };
        in_flight.fetch_add(1, Ordering::SeqCst);
        sent += 1;
        let client = client.clone();
        let tx = tx.clone();
        let in_flight = in_flight.clone();
        let target = target.clone();
        let retries_sent = retries_sent.clone();
        tokio::spawn(async move {
            let origin_us = micros_since(start, intended);
            let mut due = intended;
            // Bounded: at most `retries + 1` attempts, each bounded by `timeout`.
            for attempt in 0..=retries {
                let sent_at = Instant::now();
                let res = match build_request(&target, "GET", &path, &hdrs) {
                    Ok(req) => send(&client, req, timeout, record).await,
                    Err(_) => None,
                };
                let done_at = Instant::now();
                let (status, headers) = res.unwrap_or((0, Vec::new()));
                let retry = attempt < retries && should_retry(status);
                let _ = tx.send(Done {
                    attempt,
                    retried: retry,
                    origin_us,
                    intended_us: micros_since(start, due),
                    sent_us: micros_since(start, sent_at),
                    done_us: micros_since(start, done_at),
                    key: key.clone(),
                    status,
                    headers,
                });
                if !retry {
                    break;
                }
                due = done_at + retry_delay;
                tokio::time::sleep_until(due).await;
                retries_sent.fetch_add(1, Ordering::SeqCst);
            }
            in_flight.fetch_sub(1, Ordering::SeqCst);
        });
    }
    drop(tx);
    let (agg, hist) = collector.await.map_err(io_err)?;
    let wall = start.elapsed();
    let retries = retries_sent.load(Ordering::SeqCst);
    let mut report = agg.into_report(sent + retries, dropped, &hist, wall);
    report.retries = retries;
    Ok(report)
}

/// Whether a client retries an attempt that ended with `status` (0 = error or timeout).
pub fn should_retry(status: u16) -> bool {
    status == 0 || status == 429 || status >= 500
}

/// (total, by status) of one key.
type KeyCounts = (u64, BTreeMap<u16, u64>);

#[derive(Default)]
struct Agg {
    completed: u64,
    errors: u64,
    by_status: BTreeMap<u16, u64>,
    by_key: HashMap<String, KeyCounts>,
    records: Vec<Record>,
}

impl Agg {
    fn add(&mut self, d: Done, record: bool, hist: &mut Histogram<u64>) {
        let latency_us = d.done_us.saturating_sub(d.intended_us);
        if d.status == 0 {
            self.errors += 1;
        } else {
            self.completed += 1;
            hist.saturating_record(latency_us.max(1));
        }
        *self.by_status.entry(d.status).or_default() += 1;
        if let Some(e) = self.by_key.get_mut(&d.key) {
            e.0 += 1;
            *e.1.entry(d.status).or_default() += 1;
        } else if self.by_key.len() < MAX_KEYS_TRACKED {
            let mut m = BTreeMap::new();
            m.insert(d.status, 1);
            self.by_key.insert(d.key.clone(), (1, m));
        }
        if record {
            self.records.push(Record {
                intended_us: d.intended_us,
                sent_us: d.sent_us,
                done_us: d.done_us,
                key: d.key,
                status: d.status,
                latency_us,
                headers: d.headers,
                attempt: d.attempt,
                retried: d.retried,
                origin_us: d.origin_us,
            });
        }
    }

    fn into_report(
        mut self,
        sent: u64,
        dropped: u64,
        hist: &Histogram<u64>,
        wall: Duration,
    ) -> Report {
        let mut keys: Vec<(String, KeyCounts)> = self.by_key.drain().collect();
        keys.sort_by(|a, b| b.1 .0.cmp(&a.1 .0).then_with(|| a.0.cmp(&b.0)));
        keys.truncate(TOP_KEYS);
        let by_key_status = keys.into_iter().map(|(k, (_, m))| (k, m)).collect();
        self.records.sort_by_key(|r| r.intended_us);
        let latency_us = if hist.is_empty() {
            LatencySummary::default()
        } else {
            LatencySummary {
                mean: hist.mean(),
                p50: hist.value_at_quantile(0.50),
                p90: hist.value_at_quantile(0.90),
                p99: hist.value_at_quantile(0.99),
                p999: hist.value_at_quantile(0.999),
                max: hist.max(),
            }
        };
        let secs = wall.as_secs_f64();
        Report {
            sent,
            completed: self.completed,
            errors: self.errors,
            dropped_client_side: dropped,
            retries: 0,
            by_status: self.by_status,
            latency_us,
            achieved_rps: if secs > 0.0 {
                self.completed as f64 / secs
            } else {
                0.0
            },
            duration_ms: u64::try_from(wall.as_millis()).unwrap_or(u64::MAX),
            by_key_status,
            records: self.records,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Exact schedule replay
// ---------------------------------------------------------------------------------------------

/// Sends each planned request at its time (open loop, any number at once) and returns the
/// outcomes in plan order. Blocks until all finished or timed out.
pub fn run_schedule(
    target: &str,
    plan: &[Planned],
    timeout_ms: u64,
) -> std::io::Result<Vec<Outcome>> {
    // Build (and so validate) every request before starting the clock.
    let mut reqs = Vec::with_capacity(plan.len());
    for p in plan {
        reqs.push((
            p.at_us,
            build_request(target, &p.method, &p.path, &p.headers)?,
        ));
    }
    let rt = runtime()?;
    let out = rt.block_on(async move {
        let client = make_client(plan.len().max(8));
        let timeout = Duration::from_millis(timeout_ms.max(1));
        // Small head start so that spawning does not eat into the first slots.
        let start = Instant::now() + Duration::from_millis(5);
        let mut handles = Vec::with_capacity(reqs.len());
        for (index, (at_us, req)) in reqs.into_iter().enumerate() {
            let client = client.clone();
            handles.push(tokio::spawn(async move {
                tokio::time::sleep_until(start + Duration::from_micros(at_us)).await;
                let sent_at = Instant::now();
                let res = send(&client, req, timeout, true).await;
                let done_at = Instant::now();
                let (status, headers) = res.unwrap_or((0, Vec::new()));
                Outcome {
                    index,
                    status,
                    sent_us: micros_since(start, sent_at),
                    done_us: micros_since(start, done_at),
                    headers,
                }
            }));
        }
        let mut out = Vec::with_capacity(handles.len());
        for (index, h) in handles.into_iter().enumerate() {
            out.push(h.await.unwrap_or(Outcome {
                index,
                status: 0,
                sent_us: 0,
                done_us: 0,
                headers: Vec::new(),
            }));
        }
        out
    });
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampler_is_deterministic_and_zipfy() {
        let mix = KeyMix {
            zipf_n: 100,
            zipf_s: 1.0,
            seed: 7,
            ..KeyMix::default()
        };
        let a: Vec<String> = {
            let mut s = KeySampler::new(&mix);
            (0..1000).map(|_| s.next_key()).collect()
        };
        let b: Vec<String> = {
            let mut s = KeySampler::new(&mix);
            (0..1000).map(|_| s.next_key()).collect()
        };
        assert_eq!(a, b);
        let ones = a.iter().filter(|k| *k == "k1").count();
        let twos = a.iter().filter(|k| *k == "k2").count();
        assert!(ones > twos, "{ones} {twos}");
        assert!(a.iter().all(|k| {
            let r: usize = k[1..].parse().unwrap();
            (1..=100).contains(&r)
        }));
    }

    #[test]
    fn sampler_hot_unique_fixed() {
        let mut s = KeySampler::new(&KeyMix::default());
        assert_eq!(s.next_key(), "k0");
        let mut s = KeySampler::new(&KeyMix {
            unique: true,
            hot: vec![("hot".into(), 0.5)],
            ..KeyMix::default()
        });
        let keys: Vec<String> = (0..2000).map(|_| s.next_key()).collect();
        let hot = keys.iter().filter(|k| *k == "hot").count();
        assert!((800..1200).contains(&hot), "{hot}");
        let uniq: std::collections::HashSet<_> = keys.iter().filter(|k| *k != "hot").collect();
        assert_eq!(uniq.len(), 2000 - hot);
    }

    #[test]
    fn retry_policy() {
        assert!(should_retry(0));
        assert!(should_retry(429));
        assert!(should_retry(503));
        assert!(!should_retry(200));
        assert!(!should_retry(302));
        assert!(!should_retry(404));
    }

    /// Against a closed port every attempt fails: each request is sent `1 + retries` times,
    /// the records are marked, and a user's wait runs from the first attempt.
    #[test]
    fn retries_failed_requests() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let r = run(&LoadConfig {
            target: format!("http://127.0.0.1:{port}"),
            rate_rps: 20.0,
            duration_ms: 200,
            retries: 2,
            retry_delay_ms: 10,
            timeout_ms: 1000,
            record: true,
            ..LoadConfig::default()
        })
        .unwrap();
        assert_eq!(r.retries, 8);
        assert_eq!(r.sent, 12);
        assert_eq!(r.records.len(), 12);
        assert_eq!(r.records.iter().filter(|x| x.retried).count(), 8);
        for x in &r.records {
            assert_eq!(x.retried, x.attempt < 2);
            assert!(x.origin_us <= x.intended_us);
        }
        let default = run(&LoadConfig {
            target: format!("http://127.0.0.1:{port}"),
            rate_rps: 20.0,
            duration_ms: 200,
            ..LoadConfig::default()
        })
        .unwrap();
        assert_eq!((default.retries, default.sent, default.errors), (0, 4, 4));
    }

    #[test]
    fn header_filter() {
        assert!(keep_header("x-upstream"));
        assert!(keep_header("RateLimit-Remaining"));
        assert!(keep_header("retry-after"));
        assert!(!keep_header("content-type"));
    }
}
