//! Demo upstream: a small "blog service" with a finite worker pool.
//!
//! It answers blog-like routes (`/PostView?blogId=..&logNo=..`, `/{blogId}/{logNo}`,
//! `/PostList?blogId=..`, anything else), an "outbound API" (`/api/json`) and a route that
//! calls that API on another host (`/api-proxy`); with [`UpstreamConfig::page_calls_egress`]
//! its PostView pages call that API too while they render. Every request first has to get a worker
//! (a semaphore permit); a request that waits longer than `queue_timeout_ms` is answered
//! `503 thread full`, which is how a thread-pool-bound backend behaves under a spike.
//!
//! Latency, error injection and capacity can be changed at run time, either through the Rust
//! methods of [`Upstream`] or through the admin endpoints under `/__admin/`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};

/// Most distinct `blogId` values tracked in [`UpstreamStats::by_key`]; the rest count as `_other`.
pub const MAX_TRACKED_KEYS: usize = 10_000;
/// Length of [`UpstreamStats::request_log_tail`].
pub const REQUEST_LOG_TAIL: usize = 200;
/// Timeout of the outbound call made by `/api-proxy`.
const EGRESS_TIMEOUT: Duration = Duration::from_secs(5);

/// Static configuration of a demo upstream.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Served in the `x-upstream` header and in bodies.
    pub name: String,
    /// Requests served at once (worker pool size).
    pub capacity: usize,
    /// Service time of one request, in milliseconds.
    pub latency_ms: u64,
    /// A request that waits longer than this for a worker gets `503 thread full`.
    pub queue_timeout_ms: u64,
    /// A request arriving while more than this many wait gets `503 thread full` at once.
    pub max_queue: usize,
    /// Base URL (`http://127.0.0.1:port`) called by `/api-proxy` (and by page renders, see
    /// `page_calls_egress`); can be set later with [`Upstream::set_egress_url`].
    pub egress_url: Option<String>,
    /// PostView pages call `{egress_url}/api/json?x={blogId}` while they render (holding
    /// their worker), as a blog page calls a recommendation API. The page is a 200 with
    /// `x-api: ok` when the API answered 2xx, a 200 with `x-api: fallback` (and a page
    /// without the API's part) when the answer was a spikeguard breaker fallback (marked
    /// `x-spikeguard-reason`), and `502` with `x-api: error` otherwise (an error status, a
    /// timeout, no connection, no `egress_url`): this app does not degrade by itself. Counted
    /// in [`UpstreamStats::api`]. Default false.
    pub page_calls_egress: bool,
    /// `Cache-Control` value added to 200 page responses.
    pub cache_control: Option<String>,
}

impl UpstreamConfig {
    /// The read-only simple-page system of the demo and the drill: same URLs, long
    /// `Cache-Control` (with stale-while-revalidate and stale-if-error), high capacity.
    pub fn simple_page() -> Self {
        Self {
            name: "simple".into(),
            capacity: 1024,
            cache_control: Some(
                "public, max-age=600, stale-while-revalidate=30, stale-if-error=86400".into(),
            ),
            ..Self::default()
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            name: "main".to_string(),
            capacity: 64,
            latency_ms: 0,
            queue_timeout_ms: 1000,
            max_queue: 10_000,
            egress_url: None,
            page_calls_egress: false,
            cache_control: None,
        }
    }
}

/// Counters of an upstream (also served as JSON by `GET /__admin/stats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpstreamStats {
    /// Requests received (admin requests excluded).
    pub total: u64,
    /// By page type: `PostView`, `PostList`, `Other`, `Api`, `ApiProxy`.
    pub by_page: BTreeMap<String, u64>,
    /// By `blogId` (at most [`MAX_TRACKED_KEYS`] entries, then `_other`).
    pub by_key: BTreeMap<String, u64>,
    /// By response status.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests refused with `503 thread full`.
    pub thread_full: u64,
    /// Highest number of requests served at once since start or the last reset.
    pub max_in_flight: u64,
    /// Requests being served now (holding a worker).
    pub in_flight: u64,
    /// By HTTP method.
    pub requests_by_method: BTreeMap<String, u64>,
    /// The last [`REQUEST_LOG_TAIL`] requests as (method, path with query).
    pub request_log_tail: Vec<(String, String)>,
    /// Outbound calls of page renders ([`UpstreamConfig::page_calls_egress`]) by outcome:
    /// `ok` (the API's 2xx), `fallback_<reason>` (a breaker fallback, by its
    /// `x-spikeguard-reason`: open, half_open, bulkhead, forced_open), `error` (anything else),
    /// `abandoned` (the page's client left before the call ended).
    #[serde(default)]
    pub api: BTreeMap<String, u64>,
}

/// Partial run-time configuration, as accepted by `POST /__admin/config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AdminConfig {
    /// New service time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Share of requests (0.0-1.0) answered with `error_status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<f64>,
    /// Status of injected errors (default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_status: Option<u16>,
    /// New worker pool size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<usize>,
    /// New queue timeout in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_timeout_ms: Option<u64>,
    /// New `Cache-Control` of page responses (empty: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_control: Option<String>,
}

#[derive(Default)]
struct Counters {
    total: u64,
    by_page: BTreeMap<String, u64>,
    by_key: BTreeMap<String, u64>,
    by_status: BTreeMap<u16, u64>,
    thread_full: u64,
    max_in_flight: u64,
    requests_by_method: BTreeMap<String, u64>,
    log: VecDeque<(String, String)>,
    api: BTreeMap<String, u64>,
}

struct Shared {
    name: String,
    egress_url: Mutex<Option<String>>,
    page_calls_egress: bool,
    cache_control: Mutex<Option<HeaderValue>>,
    max_queue: usize,
    latency_ms: AtomicU64,
    queue_timeout_ms: AtomicU64,
    error: Mutex<(f64, u16)>,
    capacity: AtomicUsize,
    sem: Mutex<Arc<Semaphore>>,
    waiting: AtomicUsize,
    in_flight: AtomicU64,
    counters: Mutex<Counters>,
    rng: Mutex<SmallRng>,
    client: Client<HttpConnector, Empty<Bytes>>,
    /// While true, requests that got a worker wait (after their latency) before answering.
    hold: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn set_capacity(&self, capacity: usize) {
        let capacity = capacity.max(1);
        self.capacity.store(capacity, Ordering::SeqCst);
        *lock(&self.sem) = Arc::new(Semaphore::new(capacity));
    }

    fn apply(&self, cfg: &AdminConfig) {
        if let Some(ms) = cfg.latency_ms {
            self.latency_ms.store(ms, Ordering::SeqCst);
        }
        if let Some(ms) = cfg.queue_timeout_ms {
            self.queue_timeout_ms.store(ms, Ordering::SeqCst);
        }
        if cfg.error_rate.is_some() || cfg.error_status.is_some() {
            let mut e = lock(&self.error);
            if let Some(rate) = cfg.error_rate {
                e.0 = if rate.is_finite() {
                    rate.clamp(0.0, 1.0)
                } else {
                    0.0
                };
            }
            if let Some(status) = cfg.error_status {
                e.1 = status;
            }
        }
        if let Some(c) = cfg.capacity {
            self.set_capacity(c);
        }
        if let Some(cc) = &cfg.cache_control {
            *lock(&self.cache_control) = HeaderValue::from_str(cc).ok().filter(|_| !cc.is_empty());
        }
    }

    fn stats(&self) -> UpstreamStats {
        let c = lock(&self.counters);
        UpstreamStats {
            total: c.total,
            by_page: c.by_page.clone(),
            by_key: c.by_key.clone(),
            by_status: c.by_status.clone(),
            thread_full: c.thread_full,
            max_in_flight: c.max_in_flight,
            in_flight: self.in_flight.load(Ordering::SeqCst),
            requests_by_method: c.requests_by_method.clone(),
            request_log_tail: c.log.iter().cloned().collect(),
            api: c.api.clone(),
        }
    }

    fn reset(&self) {
        *lock(&self.counters) = Counters::default();
    }

    fn record_arrival(&self, method: &str, path: String, page: &str, key: Option<&str>) {
        let mut c = lock(&self.counters);
        c.total += 1;
        *c.by_page.entry(page.to_string()).or_default() += 1;
        if let Some(k) = key {
            if let Some(n) = c.by_key.get_mut(k) {
                *n += 1;
            } else if c.by_key.len() < MAX_TRACKED_KEYS {
                c.by_key.insert(k.to_string(), 1);
            } else {
                *c.by_key.entry("_other".to_string()).or_default() += 1;
            }
        }
        *c.requests_by_method.entry(method.to_string()).or_default() += 1;
        if c.log.len() >= REQUEST_LOG_TAIL {
            c.log.pop_front();
        }
        c.log.push_back((method.to_string(), path));
    }

    fn record_status(&self, status: u16, thread_full: bool) {
        let mut c = lock(&self.counters);
        *c.by_status.entry(status).or_default() += 1;
        if thread_full {
            c.thread_full += 1;
        }
    }

    fn record_api(&self, outcome: &str) {
        *lock(&self.counters)
            .api
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    fn note_in_flight(&self, now: u64) {
        let mut c = lock(&self.counters);
        if now > c.max_in_flight {
            c.max_in_flight = now;
        }
    }
}

/// A running demo upstream. Dropping it stops the server.
pub struct Upstream {
    /// Port it listens on (127.0.0.1).
    pub port: u16,
    shared: Arc<Shared>,
    _server: Server,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.shared.name)
            .field("port", &self.port)
            .finish()
    }
}

impl Upstream {
    /// Starts on an ephemeral port of 127.0.0.1; returns once it is listening.
    pub fn start(cfg: UpstreamConfig) -> std::io::Result<Upstream> {
        Self::start_on(cfg, 0)
    }

    /// Starts on `127.0.0.1:port` (0 = ephemeral); returns once it is listening.
    pub fn start_on(cfg: UpstreamConfig, port: u16) -> std::io::Result<Upstream> {
        let bound = server::bind(&format!("upstream-{}", cfg.name), port, 2)?;
        let port = bound.port;

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let cache_control = match cfg.cache_control.as_deref() {
            Some(v) => Some(HeaderValue::from_str(v).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
            })?),
            None => None,
        };
        let capacity = cfg.capacity.max(1);
        let shared = Arc::new(Shared {
            name: cfg.name,
            egress_url: Mutex::new(cfg.egress_url.map(|u| u.trim_end_matches('/').to_string())),
            page_calls_egress: cfg.page_calls_egress,
            cache_control: Mutex::new(cache_control),
            max_queue: cfg.max_queue,
            latency_ms: AtomicU64::new(cfg.latency_ms),
            queue_timeout_ms: AtomicU64::new(cfg.queue_timeout_ms),
            error: Mutex::new((0.0, 500)),
            capacity: AtomicUsize::new(capacity),
            sem: Mutex::new(Arc::new(Semaphore::new(capacity))),
            waiting: AtomicUsize::new(0),
            in_flight: AtomicU64::new(0),
            counters: Mutex::new(Counters::default()),
            rng: Mutex::new(SmallRng::seed_from_u64(0x5eed_u64 ^ u64::from(port))),
            client,
            hold: watch::Sender::new(false),
        });

        let server = bound.serve(shared.clone(), handle)?;
        Ok(Upstream {
            port,
            shared,
            _server: server,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its name (the `x-upstream` header value).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Sets the base URL `/api-proxy` and page renders call (e.g. an Envoy egress listener
    /// whose port exists only after this upstream started).
    pub fn set_egress_url(&self, url: &str) {
        *lock(&self.shared.egress_url) = Some(url.trim_end_matches('/').to_string());
    }

    /// Changes the service time.
    pub fn set_latency_ms(&self, ms: u64) {
        self.shared.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Answers a share `rate` (0.0-1.0) of requests with `status`.
    pub fn set_error_rate(&self, rate: f64, status: u16) {
        self.shared.apply(&AdminConfig {
            error_rate: Some(rate),
            error_status: Some(status),
            ..AdminConfig::default()
        });
    }

    /// Replaces the worker pool with one of `capacity` workers.
    pub fn set_capacity(&self, capacity: usize) {
        self.shared.set_capacity(capacity);
    }

    /// Changes the queue timeout.
    pub fn set_queue_timeout_ms(&self, ms: u64) {
        self.shared.queue_timeout_ms.store(ms, Ordering::SeqCst);
    }

    /// Holds every request that gets a worker from now on (after its latency) until
    /// [`Upstream::release`]: a test can then wait for what it needs to see while the backend
    /// is "slow" (e.g. all waiters of a cache fill queued in Envoy) instead of betting on a
    /// fixed latency. Held requests count in [`UpstreamStats::in_flight`].
    pub fn hold(&self) {
        self.shared.hold.send_replace(true);
    }

    /// Answers the held requests and stops holding.
    pub fn release(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Applies a partial configuration (same as `POST /__admin/config`).
    pub fn apply(&self, cfg: &AdminConfig) {
        self.shared.apply(cfg);
    }

    /// Snapshot of the counters.
    pub fn stats(&self) -> UpstreamStats {
        self.shared.stats()
    }

    /// Zeroes the counters.
    pub fn reset(&self) {
        self.shared.reset();
    }
}

use crate::server::{self, Resp, Server};

fn respond(shared: &Shared, status: u16, content_type: &str, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(content_type_static(content_type)),
    );
    if let Ok(v) = HeaderValue::from_str(&shared.name) {
        h.insert("x-upstream", v);
    }
    resp
}

fn content_type_static(ct: &str) -> &'static str {
    match ct {
        "html" => "text/html; charset=utf-8",
        "json" => "application/json",
        _ => "text/plain; charset=utf-8",
    }
}

/// Decodes `%XX` escapes and `+` of a query component.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b.get(i) {
            Some(b'+') => out.push(b' '),
            Some(b'%') => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                if let Some(v) = hex {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            Some(&c) => out.push(c),
            None => break,
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

enum Route {
    Page {
        page: &'static str,
        key: Option<String>,
        log_no: Option<String>,
    },
    Api {
        x: Option<String>,
    },
    ApiProxy,
}

fn route(path: &str, query: Option<&str>) -> Route {
    match path {
        "/PostView" => Route::Page {
            page: "PostView",
            key: query_param(query, "blogId"),
            log_no: query_param(query, "logNo"),
        },
        "/PostList" => Route::Page {
            page: "PostList",
            key: query_param(query, "blogId"),
            log_no: None,
        },
        "/api/json" => Route::Api {
            x: query_param(query, "x"),
        },
        "/api-proxy" => Route::ApiProxy,
        _ => {
            let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
            if let [blog, log_no] = segs.as_slice() {
                if !blog.is_empty()
                    && !log_no.is_empty()
                    && log_no.bytes().all(|c| c.is_ascii_digit())
                {
                    return Route::Page {
                        page: "PostView",
                        key: Some(percent_decode(blog)),
                        log_no: Some((*log_no).to_string()),
                    };
                }
            }
            Route::Page {
                page: "Other",
                key: None,
                log_no: None,
            }
        }
    }
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Resp {
    let path = req.uri().path().to_string();
    if let Some(cmd) = path.strip_prefix("/__admin/") {
        return admin(&shared, cmd, req).await;
    }
    let method = req.method().as_str().to_string();
    let full_path = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let route = route(&path, req.uri().query());
    let (page, key) = match &route {
        Route::Page { page, key, .. } => (*page, key.as_deref()),
        Route::Api { .. } => ("Api", None),
        Route::ApiProxy => ("ApiProxy", None),
    };
    shared.record_arrival(&method, full_path, page, key);

    // `?...&setcookie=1` pages answer with a session cookie (never cacheable).
    let set_cookie = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "setcookie=1"));
    let mut resp = serve(&shared, route).await;
    if set_cookie && resp.status() == 200 {
        resp.headers_mut().insert(
            hyper::header::SET_COOKIE,
            HeaderValue::from_static("sid=abc123; Path=/; HttpOnly"),
        );
    }
    let thread_full = resp.headers().contains_key("x-thread-full");
    shared.record_status(resp.status().as_u16(), thread_full);
    resp
}

fn thread_full(shared: &Shared) -> Resp {
    let mut r = respond(shared, 503, "text", "thread full".to_string());
    r.headers_mut()
        .insert("x-thread-full", HeaderValue::from_static("1"));
    r
}

async fn serve(shared: &Arc<Shared>, route: Route) -> Resp {
    // Get a worker.
    let sem = lock(&shared.sem).clone();
    let permit = match sem.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            let waiting = shared.waiting.fetch_add(1, Ordering::SeqCst);
            if waiting >= shared.max_queue {
                shared.waiting.fetch_sub(1, Ordering::SeqCst);
                return thread_full(shared);
            }
            let wait = Duration::from_millis(shared.queue_timeout_ms.load(Ordering::SeqCst));
            let got = tokio::time::timeout(wait, sem.acquire_owned()).await;
            shared.waiting.fetch_sub(1, Ordering::SeqCst);
            match got {
                Ok(Ok(p)) => p,
                _ => return thread_full(shared),
            }
        }
    };
    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.note_in_flight(now);
    // Counted out however the request ends: answered, or dropped by the server when its
    // client (Envoy) went away first (a route timeout, a reset).
    let _served = InFlight(&shared.in_flight);
    let resp = work(shared, route).await;
    drop(permit);
    resp
}

/// One request in [`UpstreamStats::in_flight`] until dropped.
struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn work(shared: &Arc<Shared>, route: Route) -> Resp {
    let latency = shared.latency_ms.load(Ordering::SeqCst);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    let mut held = shared.hold.subscribe();
    let _ = held.wait_for(|h| !*h).await;
    let (rate, status) = *lock(&shared.error);
    if rate > 0.0 && lock(&shared.rng).gen_bool(rate) {
        return respond(shared, status, "text", "injected error".to_string());
    }
    match route {
        Route::Page { page, key, log_no } => {
            let api = if shared.page_calls_egress && page == "PostView" {
                Some(page_api_call(shared, key.as_deref().unwrap_or("")).await)
            } else {
                None
            };
            if api == Some(PageApi::Error) {
                let mut r = respond(shared, 502, "text", "page failed: api error".to_string());
                r.headers_mut()
                    .insert("x-api", HeaderValue::from_static("error"));
                return r;
            }
            let related = match api {
                Some(PageApi::Ok) => "<p class=\"related\">related: from the api</p>",
                Some(PageApi::Fallback) => "<p class=\"related\">related: none (api fallback)</p>",
                _ => "",
            };
            let body = format!(
                "<!doctype html><html><head><title>{page}</title></head><body>\
                 <h1>upstream {name}</h1><p class=\"page\">page={page}</p>\
                 <p class=\"key\">blogId={key} logNo={log_no}</p>{related}</body></html>\n",
                name = html_escape(&shared.name),
                key = html_escape(key.as_deref().unwrap_or("")),
                log_no = html_escape(log_no.as_deref().unwrap_or("")),
            );
            let mut r = respond(shared, 200, "html", body);
            if let Some(cc) = lock(&shared.cache_control).clone() {
                r.headers_mut().insert(CACHE_CONTROL, cc);
            }
            match api {
                Some(PageApi::Ok) => {
                    r.headers_mut()
                        .insert("x-api", HeaderValue::from_static("ok"));
                }
                Some(PageApi::Fallback) => {
                    r.headers_mut()
                        .insert("x-api", HeaderValue::from_static("fallback"));
                }
                _ => {}
            }
            r
        }
        Route::Api { x } => {
            let body = serde_json::json!({
                "upstream": shared.name,
                "api": "json",
                "x": x,
                "ok": true,
            });
            respond(shared, 200, "json", body.to_string())
        }
        Route::ApiProxy => api_proxy(shared).await,
    }
}

/// What the outbound call of a page render got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageApi {
    Ok,
    Fallback,
    Error,
}

/// Characters of a query value sent as they are; the rest is `%XX`-escaped.
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Counts a page render's API call as `abandoned` if it is dropped before it ended (the
/// page's client went away, e.g. Envoy's ingress route timeout, and the server dropped the
/// page's future with the call in it).
struct CallRecord<'a> {
    shared: &'a Shared,
    done: bool,
}

impl Drop for CallRecord<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.record_api("abandoned");
        }
    }
}

/// The API call of a page render: `GET {egress_url}/api/json?x={key}`.
async fn page_api_call(shared: &Arc<Shared>, key: &str) -> PageApi {
    let mut record = CallRecord {
        shared,
        done: false,
    };
    let base = lock(&shared.egress_url).clone();
    let answer = match base {
        Some(base) => {
            let url = format!("{base}/api/json?x={}", query_escape(key));
            egress_get(shared, &url).await.ok()
        }
        None => None,
    };
    let (outcome, label) = match answer {
        Some(r) if (200..300).contains(&r.status) => match r.breaker_reason {
            Some(reason) => (PageApi::Fallback, format!("fallback_{reason}")),
            None => (PageApi::Ok, "ok".to_string()),
        },
        _ => (PageApi::Error, "error".to_string()),
    };
    record.done = true;
    shared.record_api(&label);
    outcome
}

/// An answer of the egress call.
struct EgressAnswer {
    status: u16,
    /// `x-spikeguard-reason` of a breaker fallback.
    breaker_reason: Option<String>,
    body: String,
}

async fn egress_get(shared: &Arc<Shared>, url: &str) -> Result<EgressAnswer, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad egress url: {e}"))?;
    let req = Request::get(uri)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let fut = async {
        let resp = shared
            .client
            .request(req)
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let breaker_reason = resp
            .headers()
            .get("x-spikeguard-reason")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>(EgressAnswer {
            status,
            breaker_reason,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(EGRESS_TIMEOUT, fut)
        .await
        .map_err(|_| "egress timeout".to_string())?
}

async fn api_proxy(shared: &Arc<Shared>) -> Resp {
    let Some(base) = lock(&shared.egress_url).clone() else {
        let body = serde_json::json!({"upstream": shared.name, "error": "egress_url not set"});
        return respond(shared, 502, "json", body.to_string());
    };
    let url = format!("{base}/api/json?x={}", shared.name);
    let result = egress_get(shared, &url).await.map(|r| (r.status, r.body));
    match result {
        Ok((status, body)) => {
            let doc = serde_json::json!({
                "upstream": shared.name,
                "egress_url": url,
                "egress_status": status,
                "egress_body": body,
            });
            let mut r = respond(shared, status, "json", doc.to_string());
            r.headers_mut()
                .insert("x-egress-status", HeaderValue::from(status));
            r
        }
        Err(e) => {
            let doc = serde_json::json!({
                "upstream": shared.name,
                "egress_url": url,
                "error": e,
            });
            respond(shared, 502, "json", doc.to_string())
        }
    }
}

async fn admin(shared: &Shared, cmd: &str, req: Request<Incoming>) -> Resp {
    match (req.method().clone(), cmd) {
        (Method::GET, "stats") => {
            let body = serde_json::to_string(&shared.stats()).unwrap_or_else(|_| "{}".into());
            respond(shared, 200, "json", body)
        }
        (Method::POST, "reset") => {
            shared.reset();
            respond(shared, 200, "json", "{\"ok\":true}".to_string())
        }
        (Method::POST, "config") => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return respond(shared, 400, "text", format!("bad body: {e}")),
            };
            let cfg: AdminConfig = if body.iter().all(u8::is_ascii_whitespace) {
                AdminConfig::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(c) => c,
                    Err(e) => return respond(shared, 400, "text", format!("bad json: {e}")),
                }
            };
            shared.apply(&cfg);
            respond(shared, 200, "json", current_config(shared))
        }
        (Method::GET, "config") => respond(shared, 200, "json", current_config(shared)),
        _ => respond(shared, 404, "text", "unknown admin command".to_string()),
    }
}

/// The run-time settings, as `GET /__admin/config` shows them.
fn current_config(shared: &Shared) -> String {
    let (rate, status) = *lock(&shared.error);
    serde_json::json!({
        "latency_ms": shared.latency_ms.load(Ordering::SeqCst),
        "error_rate": rate,
        "error_status": status,
        "capacity": shared.capacity.load(Ordering::SeqCst),
        "queue_timeout_ms": shared.queue_timeout_ms.load(Ordering::SeqCst),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_queries() {
        assert_eq!(
            query_param(Some("blogId=a%20b&logNo=1"), "blogId").as_deref(),
            Some("a b")
        );
        assert_eq!(query_param(Some("x=1"), "blogId"), None);
        assert_eq!(percent_decode("100%"), "100%");
    }

    #[test]
    fn routes() {
        assert!(matches!(
            route("/alice/123", None),
            Route::Page { page: "PostView", key: Some(ref k), .. } if k == "alice"
        ));
        assert!(matches!(
            route("/alice/abc", None),
            Route::Page { page: "Other", .. }
        ));
        assert!(matches!(
            route("/PostList", Some("blogId=bob")),
            Route::Page { page: "PostList", key: Some(ref k), .. } if k == "bob"
        ));
    }
}
