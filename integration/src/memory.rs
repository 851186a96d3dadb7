//! Memory benchmark (`memory` binary): Envoy's resident memory and live heap while the whole
//! bundle sees 1,000,000 distinct keys, against bare Envoy and one no-op Wasm filter, and
//! per micro-cache slot configuration.
//!
//! **The run.** A fresh Envoy per front (`bare`: no Wasm filter; `noop`: `sg_noop.wasm`
//! only; `bundle`: every filter of `envoy.yaml`) in front of the demo upstream (no latency,
//! capacity far above the load) and the simple-page service
//! ([`UpstreamConfig::simple_page`]). `wrk` sends `keys` requests, each with a key never sent
//! before, in five URL forms (key `k`, blog `b<k>`):
//!
//! | `k % 5` | URL | who sees a new key |
//! |---|---|---|
//! | 0 | `/PostView?blogId=b<k>&logNo=<k>` | hotkey sketch, ratelimit `per_blog`, sli top URLs |
//! | 1 | `/b<k>/<k>` (path form) | the same (key from the path) |
//! | 2 | `/PostView?%62logId=b<k>&logNo=<k>&x=<k>` (encoded name, cache-buster) | the same |
//! | 3 | `/PostList?blogId=b<k>&page=<k>` | hotkey, sli, and the simplepage micro-cache (see below) |
//! | 4 | `/static/<k>/app.css?v=<k>` | sli top URLs (page type `other`), ratelimit `global` |
//!
//! The bundle is `envoy.yaml` with three changes, so that every filter's key space sees the
//! keys and none of them refuses a request: `ratelimit`'s `global` rule (1,000 r/s) is raised
//! to 1,000,000 r/s (a rejected request charges no rule, so `per_blog` would see only a
//! thousand keys a second); `simplepage` gets a first rule diverting `/PostList` to the simple
//! page with the micro-cache on (`always`, key and cache key `blogId`), since nothing else
//! diverts distinct keys; the clusters' circuit breakers are raised (Envoy's own limits are
//! not the subject). Every cap stays the bundle's: `ratelimit` `max_keys` 10,000 per rule,
//! `hotkey` `sketch_capacity` 64 and `view_entries` 32, `simplepage` 64 slots of at most
//! 64 KiB, `sli` top-URL sketch 256.
//!
//! Memory is sampled after start, after 10,000, 100,000 and `keys` keys and after a settle
//! period: `VmRSS`/`VmHWM` (`/proc/PID/status`), the admin `/memory` (`allocated`: tcmalloc's
//! live heap, where shared data lives; `heap_size`), and the Wasm VMs' linear memories,
//! which V8 maps itself (not tcmalloc): Envoy exposes no memory stat per VM, so they are
//! found in `/proc/PID/smaps` as the accessible mapping just before each of V8's 8 GiB
//! guard reservations (size = the memory's current size, resident = pages touched).
//!
//! **Slot configurations.** The bundle again, with `simplepage`'s `post_view` rule diverting
//! everything (`always`) and caching for 10 minutes, `cache.slots` / `max_body_bytes` per
//! variant, and a page server of its own as the simple-page service (pages of `page_bytes`,
//! `Cache-Control: public, max-age=600`), so a filled slot holds a page of known size:
//! `cache_keys` distinct pages fill the direct-mapped slots, and RSS, heap and
//! `sg.simplepage.cache_bytes` are read after start, filled and settled.
//!
//! A request's answer is counted in `wrk`'s Lua (by status class); once a `wrk` thread has
//! sent its share of keys it sends only `/__sg_memory_idle` (a `direct_response` 204 route
//! added first) until its last keyed answer is in, so every key is sent exactly once and
//! answered before the stage ends. A thread's `thread:stop()` ends only its own loop (wrk's
//! main thread sleeps out the whole `-d` whatever its threads do), so each thread also leaves
//! a marker file and the harness interrupts `wrk` (SIGINT: it joins the threads and prints the
//! counts) once every thread's marker is there. Stages are bounded in time
//! (`stage_timeout_s`, wrk's `-d`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Request, Response};
use serde::Serialize;
use serde_json::{json, Value};

use crate::control::Control;
use crate::envoy::{envoy_bin, Bundle, Envoy};
use crate::first_line;
use crate::http;
use crate::server::{self, Resp, Server};
use crate::upstream::{Upstream, UpstreamConfig};

/// Path of the requests a `wrk` thread sends once its keys are all sent (answered 204 by
/// Envoy itself, no key).
pub const IDLE_PATH: &str = "/__sg_memory_idle";
const MIB: f64 = 1024.0 * 1024.0;
/// A `wrk` thread that sent all its keys stops this many seconds later even if a keyed
/// answer is missing (more than wrk's 5 s timeout and the bundle's 1 s route timeout).
pub const STALL_S: u64 = 30;

/// What stands in front of the upstream in one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Front {
    /// No Wasm filter.
    Bare,
    /// `sg_noop.wasm` first on the ingress listener, nothing else.
    Noop,
    /// Every filter of `envoy.yaml` (see the module doc for the three changes).
    Bundle,
}

impl Front {
    pub const ALL: [Front; 3] = [Front::Bare, Front::Noop, Front::Bundle];

    pub fn name(self) -> &'static str {
        match self {
            Front::Bare => "bare",
            Front::Noop => "noop",
            Front::Bundle => "bundle",
        }
    }

    pub fn parse(s: &str) -> Option<Front> {
        Front::ALL.into_iter().find(|f| f.name() == s.trim())
    }

    fn description(self) -> &'static str {
        match self {
            Front::Bare => "no Wasm filter",
            Front::Noop => "`sg_noop.wasm` only (the floor any Wasm filter pays)",
            Front::Bundle => "every filter of `envoy.yaml` (ingress sli, hotkey, simplepage, ratelimit; egress sli, breaker)",
        }
    }
}

/// One micro-cache configuration of the slot runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CacheVariant {
    pub name: String,
    /// `simplepage` `cache.slots` (1..=4096).
    pub slots: u32,
    /// `simplepage` `cache.max_body_bytes`.
    pub max_body_bytes: usize,
}

impl CacheVariant {
    pub fn new(name: &str, slots: u32, max_body_bytes: usize) -> CacheVariant {
        CacheVariant {
            name: name.to_string(),
            slots,
            max_body_bytes,
        }
    }

    /// The documented bound: `slots` x (`max_body_bytes` + 4 KiB of headers + 2 KiB of key
    /// + 45 bytes), docs/ARCHITECTURE.md "Shared data layout".
    pub fn cap_bytes(&self) -> u64 {
        u64::from(self.slots) * (self.max_body_bytes as u64 + 6 * 1024 + 45)
    }

    /// Small, the bundle's, the largest allowed, and the largest with a byte cap below the
    /// pages' size (nothing may be kept).
    pub fn defaults() -> Vec<CacheVariant> {
        vec![
            CacheVariant::new("small", 16, 65_536),
            CacheVariant::new("bundle", 64, 65_536),
            CacheVariant::new("large", 4096, 65_536),
            CacheVariant::new("large_8k_cap", 4096, 8192),
        ]
    }
}

/// Settings of a memory run.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryConfig {
    /// Distinct keys (= keyed requests) per front.
    pub keys: u64,
    /// Samples are taken after these many keys too (those below `keys`).
    pub checkpoints: Vec<u64>,
    /// Idle time before the last sample, seconds.
    pub settle_s: u64,
    /// Envoy `--concurrency`.
    pub envoy_workers: u32,
    /// `wrk` threads and connections.
    pub wrk_threads: u32,
    pub connections: u32,
    /// Bound of one `wrk` stage, seconds.
    pub stage_timeout_s: u64,
    pub fronts: Vec<Front>,
    /// Slot configurations (empty: none run).
    pub cache: Vec<CacheVariant>,
    /// Distinct pages sent per slot configuration.
    pub cache_keys: u64,
    /// Body size of the slot runs' simple pages.
    pub page_bytes: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            keys: 1_000_000,
            checkpoints: vec![10_000, 100_000],
            settle_s: 30,
            envoy_workers: 2,
            wrk_threads: 2,
            connections: 64,
            stage_timeout_s: 1800,
            fronts: Front::ALL.to_vec(),
            cache: CacheVariant::defaults(),
            // 4/5 of them are cached pages: 48,000 over 4,096 slots leaves a slot empty with
            // probability e^-11.7.
            cache_keys: 60_000,
            page_bytes: 16 * 1024,
        }
    }
}

impl MemoryConfig {
    /// A smoke run: 20,000 keys, 3 s settle, 6,000 pages per slot configuration.
    pub fn quick() -> MemoryConfig {
        MemoryConfig {
            keys: 20_000,
            settle_s: 3,
            cache_keys: 6_000,
            stage_timeout_s: 300,
            ..MemoryConfig::default()
        }
    }

    /// The stage ends: the checkpoints below `keys`, then `keys`.
    fn stages(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .checkpoints
            .iter()
            .copied()
            .filter(|c| *c > 0 && *c < self.keys)
            .collect();
        v.sort_unstable();
        v.dedup();
        v.push(self.keys);
        v
    }
}

/// Envoy's memory at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// `start`, `10000 keys`, ..., `settled`.
    pub at: String,
    /// Keyed requests answered so far.
    pub keys: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// `/memory` `allocated` and `heap_size`, bytes.
    pub heap_allocated: u64,
    pub heap_size: u64,
    /// Wasm linear memories found in smaps, their total size and resident KiB.
    pub wasm_memories: u64,
    pub wasm_size_kib: u64,
    pub wasm_rss_kib: u64,
}

/// What `wrk` sent and got in a run (all stages).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Traffic {
    /// Keys the stages were to send.
    pub planned: u64,
    /// Keyed requests answered, by status class.
    pub answered: u64,
    pub s2xx: u64,
    pub s3xx: u64,
    pub s4xx: u64,
    pub s5xx: u64,
    /// Idle (204) answers.
    pub idle: u64,
    /// wrk's socket errors: connect, read, write, timeout.
    pub socket_errors: u64,
    /// wrk threads that stopped short: a keyed request got no answer [`STALL_S`] after
    /// the thread had sent all its keys.
    pub stalled_threads: u64,
    pub seconds: f64,
}

impl Traffic {
    fn add(&mut self, o: &Traffic) {
        self.planned += o.planned;
        self.answered += o.answered;
        self.s2xx += o.s2xx;
        self.s3xx += o.s3xx;
        self.s4xx += o.s4xx;
        self.s5xx += o.s5xx;
        self.idle += o.idle;
        self.socket_errors += o.socket_errors;
        self.stalled_threads += o.stalled_threads;
        self.seconds += o.seconds;
    }

    /// Keyed requests per second.
    pub fn rps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.answered as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// One front's run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub front: Front,
    pub samples: Vec<Sample>,
    pub traffic: Traffic,
    /// Envoy's ingress `downstream_rq_{2xx,3xx,4xx,5xx}` over the run (idle answers included).
    pub envoy_codes: BTreeMap<String, i64>,
    /// Counters showing each filter saw the keys (bundle only).
    pub filters: BTreeMap<String, i64>,
    /// Envoy was running at the end.
    pub alive: bool,
}

/// One slot configuration's run.
#[derive(Debug, Clone, Serialize)]
pub struct CacheReport {
    pub variant: CacheVariant,
    pub cap_bytes: u64,
    /// `start`, `filled`, `settled`.
    pub samples: Vec<Sample>,
    pub traffic: Traffic,
    /// `sg.simplepage.cache_bytes` (gauge) after the fill, and the fills/hits/misses.
    pub cache_bytes: i64,
    pub cache_fill: i64,
    pub cache_not_cacheable: i64,
    pub cache_slot_busy: i64,
    /// Requests the page server answered.
    pub backend_requests: u64,
    pub alive: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryReport {
    pub config: MemoryConfig,
    pub machine: String,
    pub runs: Vec<RunReport>,
    pub cache: Vec<CacheReport>,
}

fn other(m: impl Into<String>) -> io::Error {
    io::Error::other(m.into())
}

/// Runs every front, then every slot configuration; `progress` gets a line per step.
pub fn run(cfg: &MemoryConfig, mut progress: impl FnMut(&str)) -> io::Result<MemoryReport> {
    if cfg.keys == 0 || cfg.wrk_threads == 0 || cfg.connections == 0 || cfg.envoy_workers == 0 {
        return Err(other(
            "keys, wrk threads, connections, Envoy workers must be > 0",
        ));
    }
    let scripts = tempfile::Builder::new().prefix("sg-memory-").tempdir()?;
    let machine = machine();
    let mut runs = Vec::new();
    for f in &cfg.fronts {
        progress(&format!("[{}] {} keys ...", f.name(), cfg.keys));
        let r = run_front(*f, cfg, scripts.path(), &mut progress)?;
        runs.push(r);
        // Let the previous run's sockets close.
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut cache = Vec::new();
    for v in &cfg.cache {
        progress(&format!(
            "[cache {}] {} slots, max_body_bytes {}, {} pages of {} bytes ...",
            v.name, v.slots, v.max_body_bytes, cfg.cache_keys, cfg.page_bytes
        ));
        let r = run_cache(v, cfg, scripts.path(), &mut progress)?;
        cache.push(r);
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(MemoryReport {
        config: cfg.clone(),
        machine,
        runs,
        cache,
    })
}

/// The demo upstream sized out of the way.
fn ample_app() -> UpstreamConfig {
    UpstreamConfig {
        name: "main".into(),
        capacity: 100_000,
        queue_timeout_ms: 60_000,
        max_queue: 100_000,
        ..UpstreamConfig::default()
    }
}

/// The bundle's route table with the idle route first.
fn add_idle_route(b: &mut Bundle) -> io::Result<()> {
    let routes = b
        .route_config_mut("ingress")
        .and_then(|rc| rc.pointer_mut("/virtual_hosts/0/routes"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| other("ingress: no virtual_hosts[0].routes"))?;
    routes.insert(
        0,
        json!({"name": "memory_idle", "match": {"prefix": IDLE_PATH},
               "direct_response": {"status": 204}}),
    );
    Ok(())
}

/// `ratelimit`'s `global` rule raised to 1,000,000 r/s (never rejects at this load).
fn open_global_limit(b: &mut Bundle) -> io::Result<()> {
    let mut rl = b
        .filter_config("ratelimit")
        .ok_or_else(|| other("no ratelimit in the bundle"))?;
    for rule in rl["rules"].as_array_mut().into_iter().flatten() {
        if rule["name"] == "global" {
            rule["rate"] = json!("1000000r/s");
            rule["burst"] = json!(1_000_000);
        }
    }
    b.set_filter_config("ratelimit", &rl)
}

/// The rule put first in `simplepage` for the run: `/PostList` always diverted and cached.
fn post_list_cached_rule() -> Value {
    json!({"name": "post_list_cached", "match": {"path_prefix": "/PostList"},
           "key": {"query": "blogId"}, "lowercase_key": true,
           "triggers": {"always": true}, "exclude_cookies": ["SESSION"],
           "cache": {"ttl_ms": 1000, "query_params": ["blogId"]}})
}

fn bundle_for(front: Front) -> io::Result<Bundle> {
    let mut b = Bundle::load()?;
    b.raise_circuit_breakers(100_000);
    add_idle_route(&mut b)?;
    match front {
        Front::Bare => b.keep_filters(&[]),
        Front::Noop => {
            b.keep_filters(&[]);
            b.prepend_http_filter("ingress", Bundle::wasm_filter("noop", "noop", &json!({})))?;
        }
        Front::Bundle => {
            open_global_limit(&mut b)?;
            let mut sp = b
                .filter_config("simplepage")
                .ok_or_else(|| other("no simplepage in the bundle"))?;
            sp["rules"]
                .as_array_mut()
                .ok_or_else(|| other("simplepage: no rules"))?
                .insert(0, post_list_cached_rule());
            b.set_filter_config("simplepage", &sp)?;
        }
    }
    Ok(b)
}

/// Backends of one run; dropped after Envoy.
struct Backends {
    app: Upstream,
    simple_port: u16,
    simple: SimpleBackend,
    control: Control,
}

enum SimpleBackend {
    Demo(Upstream),
    Pages(PageServer),
}

fn point(b: &mut Bundle, be: &Backends) -> io::Result<()> {
    b.set_cluster_port("main_app", be.app.port)?;
    b.set_cluster_port("outbound_api", be.app.port)?;
    b.set_cluster_port("simple_page", be.simple_port)?;
    b.set_cluster_port("spikeguard_control", be.control.port)
}

fn run_front(
    front: Front,
    cfg: &MemoryConfig,
    dir: &Path,
    progress: &mut impl FnMut(&str),
) -> io::Result<RunReport> {
    let simple = Upstream::start(UpstreamConfig::simple_page())?;
    let be = Backends {
        app: Upstream::start(ample_app())?,
        simple_port: simple.port,
        simple: SimpleBackend::Demo(simple),
        control: Control::start()?,
    };
    let mut b = bundle_for(front)?;
    point(&mut b, &be)?;
    let mut envoy = b.launch(cfg.envoy_workers)?;
    // The workers' VMs and the first ticks are in before the first sample.
    std::thread::sleep(Duration::from_secs(2));
    let codes0 = envoy_codes(&envoy);
    let mut samples = vec![sample(&envoy, "start", 0)];
    progress(&format!("[{}] {}", front.name(), sample_line(&samples[0])));
    let mut traffic = Traffic::default();
    let mut from = 0;
    for end in cfg.stages() {
        let t = wrk_stage(&envoy.url(), from, end - from, cfg, dir)?;
        traffic.add(&t);
        let s = sample(
            &envoy,
            &format!("{} keys", thousands(end)),
            traffic.answered,
        );
        progress(&format!(
            "[{}] {} ({:.0} keyed req/s)",
            front.name(),
            sample_line(&s),
            t.rps()
        ));
        samples.push(s);
        if !envoy.alive() {
            break;
        }
        from = end;
    }
    std::thread::sleep(Duration::from_secs(cfg.settle_s));
    let s = sample(
        &envoy,
        &format!("settled {} s", cfg.settle_s),
        traffic.answered,
    );
    progress(&format!("[{}] {}", front.name(), sample_line(&s)));
    samples.push(s);
    let codes1 = envoy_codes(&envoy);
    let envoy_codes = codes1
        .iter()
        .map(|(k, v)| (k.clone(), v - codes0.get(k).copied().unwrap_or(0)))
        .collect();
    let filters = if front == Front::Bundle {
        filter_counters(&envoy)
    } else {
        BTreeMap::new()
    };
    let alive = envoy.alive();
    drop(envoy);
    drop(be);
    Ok(RunReport {
        front,
        samples,
        traffic,
        envoy_codes,
        filters,
        alive,
    })
}

fn run_cache(
    v: &CacheVariant,
    cfg: &MemoryConfig,
    dir: &Path,
    progress: &mut impl FnMut(&str),
) -> io::Result<CacheReport> {
    let pages = PageServer::start(cfg.page_bytes)?;
    let be = Backends {
        app: Upstream::start(ample_app())?,
        simple_port: pages.port,
        simple: SimpleBackend::Pages(pages),
        control: Control::start()?,
    };
    let mut b = bundle_for(Front::Bundle)?;
    let mut sp = b
        .filter_config("simplepage")
        .ok_or_else(|| other("no simplepage in the bundle"))?;
    sp["cache"] = json!({"slots": v.slots, "max_body_bytes": v.max_body_bytes});
    for rule in sp["rules"].as_array_mut().into_iter().flatten() {
        if rule["name"] == "post_view" {
            rule["triggers"]["always"] = json!(true);
            rule["cache"] = json!({"ttl_ms": 600_000, "query_params": ["blogId", "logNo"]});
        }
    }
    b.set_filter_config("simplepage", &sp)?;
    point(&mut b, &be)?;
    let mut envoy = b.launch(cfg.envoy_workers)?;
    std::thread::sleep(Duration::from_secs(2));
    let mut samples = vec![sample(&envoy, "start", 0)];
    let traffic = wrk_stage(&envoy.url(), 0, cfg.cache_keys, cfg, dir)?;
    // The gauge and counters are flushed on simplepage's 100 ms tick.
    std::thread::sleep(Duration::from_millis(500));
    samples.push(sample(&envoy, "filled", traffic.answered));
    let stats = envoy.stats();
    let st = |n: &str| {
        stats
            .get(&format!("wasmcustom.sg.simplepage.{n}"))
            .copied()
            .unwrap_or(0)
    };
    let (cache_bytes, cache_fill) = (st("cache_bytes"), st("cache_fill"));
    let (cache_not_cacheable, cache_slot_busy) = (st("cache_not_cacheable"), st("cache_slot_busy"));
    progress(&format!(
        "[cache {}] {}; cache_bytes {cache_bytes}, fills {cache_fill}",
        v.name,
        sample_line(&samples[1])
    ));
    std::thread::sleep(Duration::from_secs(cfg.settle_s));
    samples.push(sample(
        &envoy,
        &format!("settled {} s", cfg.settle_s),
        traffic.answered,
    ));
    let alive = envoy.alive();
    drop(envoy);
    let backend_requests = match &be.simple {
        SimpleBackend::Pages(p) => p.requests(),
        SimpleBackend::Demo(u) => u.stats().total,
    };
    drop(be);
    Ok(CacheReport {
        variant: v.clone(),
        cap_bytes: v.cap_bytes(),
        samples,
        traffic,
        cache_bytes,
        cache_fill,
        cache_not_cacheable,
        cache_slot_busy,
        backend_requests,
        alive,
    })
}

/// Ingress status classes as Envoy counted them.
fn envoy_codes(e: &Envoy) -> BTreeMap<String, i64> {
    let stats = e.stats();
    ["2xx", "3xx", "4xx", "5xx"]
        .iter()
        .map(|c| {
            let k = format!("http.ingress.downstream_rq_{c}");
            (c.to_string(), stats.get(&k).copied().unwrap_or(0))
        })
        .collect()
}

/// The counters that show each filter of the bundle saw the keys.
fn filter_counters(e: &Envoy) -> BTreeMap<String, i64> {
    let stats = e.stats();
    let mut out = BTreeMap::new();
    for k in [
        "wasmcustom.sg.hotkey.post_view.seen",
        "wasmcustom.sg.hotkey.post_view.shed",
        "wasmcustom.sg.ratelimit.per_blog.allowed",
        "wasmcustom.sg.ratelimit.per_blog.rejected",
        "wasmcustom.sg.ratelimit.global.allowed",
        "wasmcustom.sg.ratelimit.evicted_in_debt",
        "wasmcustom.sg.simplepage.post_list_cached.diverted_always",
        "wasmcustom.sg.simplepage.cache_fill",
        "wasmcustom.sg.simplepage.cache_slot_busy",
        "wasmcustom.sg.simplepage.cache_bytes",
    ] {
        let short = k.trim_start_matches("wasmcustom.sg.").to_string();
        out.insert(short, stats.get(k).copied().unwrap_or(0));
    }
    let sli: i64 = stats
        .iter()
        .filter(|(k, _)| {
            k.contains("direction=.=inbound;.;") && k.ends_with(";spikeguard_latency_total")
        })
        .map(|(_, v)| *v)
        .sum();
    out.insert("sli.inbound requests (latency_total)".into(), sli);
    out
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// (count, size KiB, resident KiB) of the Wasm linear memories: V8 reserves 8 GiB (plus
/// guard) per memory and maps its current size read-write at the start of the reservation,
/// so each is the `rw-p` anonymous mapping ending where an inaccessible anonymous mapping of
/// at least 1 GiB begins.
pub fn wasm_memories(pid: u32) -> (u64, u64, u64) {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/smaps")) else {
        return (0, 0, 0);
    };
    struct Map {
        start: u64,
        end: u64,
        perms: String,
        anon: bool,
        rss_kib: u64,
    }
    let mut maps: Vec<Map> = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        let first = w.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                let perms = w.next().unwrap_or("").to_string();
                let anon = w.nth(3).is_none(); // offset, dev, inode, then the name if any
                maps.push(Map {
                    start,
                    end,
                    perms,
                    anon,
                    rss_kib: 0,
                });
                continue;
            }
        }
        if first == "Rss:" {
            if let (Some(m), Some(n)) = (maps.last_mut(), w.next().and_then(|n| n.parse().ok())) {
                m.rss_kib = n;
            }
        }
    }
    let (mut n, mut size, mut rss) = (0, 0, 0);
    for (i, m) in maps.iter().enumerate() {
        if m.anon && m.perms == "---p" && m.end - m.start >= 1 << 30 {
            n += 1;
            if let Some(p) = i.checked_sub(1).and_then(|j| maps.get(j)) {
                if p.anon && p.perms == "rw-p" && p.end == m.start {
                    size += (p.end - p.start) / 1024;
                    rss += p.rss_kib;
                }
            }
        }
    }
    (n, size, rss)
}

/// Envoy's memory now.
pub fn sample(e: &Envoy, at: &str, keys: u64) -> Sample {
    let pid = e.pid();
    let mem = http::get(e.admin, "/memory")
        .ok()
        .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
        .unwrap_or(Value::Null);
    let num = |k: &str| {
        mem[k]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| mem[k].as_u64())
            .unwrap_or(0)
    };
    let (wasm_memories, wasm_size_kib, wasm_rss_kib) = wasm_memories(pid);
    Sample {
        at: at.to_string(),
        keys,
        rss_kib: proc_status_kib(pid, "VmRSS:"),
        hwm_kib: proc_status_kib(pid, "VmHWM:"),
        heap_allocated: num("allocated"),
        heap_size: num("heap_size"),
        wasm_memories,
        wasm_size_kib,
        wasm_rss_kib,
    }
}

fn sample_line(s: &Sample) -> String {
    format!(
        "{}: RSS {:.1} MiB (HWM {:.1}), heap {:.1} MiB allocated / {:.1} MiB, Wasm {} memories {:.1} MiB ({:.1} resident)",
        s.at,
        s.rss_kib as f64 / 1024.0,
        s.hwm_kib as f64 / 1024.0,
        s.heap_allocated as f64 / MIB,
        s.heap_size as f64 / MIB,
        s.wasm_memories,
        s.wasm_size_kib as f64 / 1024.0,
        s.wasm_rss_kib as f64 / 1024.0
    )
}

/// The `wrk` script of one stage: keys `first..first+count`, thread `t` of `n` sending keys
/// `first + t + i*n`; a thread that sent its share sends [`IDLE_PATH`] until its keyed
/// answers are all in, then stops; `done` prints the counts on one `SGMEM` line.
fn lua(first: u64, count: u64, threads: u64, done_prefix: &str) -> String {
    format!(
        r#"local first, count, nthreads = {first}, {count}, {threads}
local done_prefix = "{done_prefix}"
local threads, next_id = {{}}, 0
function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
function init(args)
  quota = math.floor(count / nthreads)
  if id < count % nthreads then quota = quota + 1 end
  sent, answered, idle, stalled = 0, 0, 0, 0
  c2, c3, c4, c5 = 0, 0, 0, 0
  idle_req = wrk.format("GET", "{IDLE_PATH}")
  -- wrk calls thread 0's request() once before it starts, to check the script: that call
  -- must not use up a key.
  verifying = (id == 0)
  sent_all_at = nil
end
local function path(k)
  local f = k % 5
  if f == 0 then return "/PostView?blogId=b" .. k .. "&logNo=" .. k
  elseif f == 1 then return "/b" .. k .. "/" .. k
  elseif f == 2 then return "/PostView?%62logId=b" .. k .. "&logNo=" .. k .. "&x=" .. k
  elseif f == 3 then return "/PostList?blogId=b" .. k .. "&page=" .. k
  else return "/static/" .. k .. "/app.css?v=" .. k end
end
function request()
  if verifying then
    verifying = false
    return idle_req
  end
  if sent >= quota then
    if sent_all_at == nil then sent_all_at = os.time() end
    return idle_req
  end
  local k = first + id + sent * nthreads
  sent = sent + 1
  return wrk.format("GET", path(k))
end
function response(status, headers, body)
  if status == 204 then
    idle = idle + 1
  else
    answered = answered + 1
    if status < 300 then c2 = c2 + 1
    elseif status < 400 then c3 = c3 + 1
    elseif status < 500 then c4 = c4 + 1
    else c5 = c5 + 1 end
  end
  if answered >= quota then
    finish()
  elseif sent_all_at ~= nil and os.time() - sent_all_at > {STALL_S} then
    -- a keyed request got no answer (a socket error or wrk's timeout): stop, counted short
    stalled = 1
    finish()
  end
end
-- thread:stop() ends this thread's loop only: wrk's main thread sleeps the whole -d
-- duration whatever the threads do, so a marker file tells the harness to interrupt it
-- (SIGINT: wrk joins the threads, then runs done()).
function finish()
  if finished then return end
  finished = true
  local f = io.open(done_prefix .. id, "w")
  if f then f:close() end
  wrk.thread:stop()
end
function done(summary, latency, requests)
  local t = {{answered = 0, idle = 0, c2 = 0, c3 = 0, c4 = 0, c5 = 0, stalled = 0}}
  for _, th in ipairs(threads) do
    for k, _ in pairs(t) do t[k] = t[k] + th:get(k) end
  end
  local e = summary.errors
  io.write(string.format("SGMEM answered=%d idle=%d s2xx=%d s3xx=%d s4xx=%d s5xx=%d socket_errors=%d stalled=%d\n",
    t.answered, t.idle, t.c2, t.c3, t.c4, t.c5, e.connect + e.read + e.write + e.timeout, t.stalled))
end
"#
    )
}

fn parse_sgmem(out: &str) -> Option<Traffic> {
    let line = out.lines().find_map(|l| l.trim().strip_prefix("SGMEM "))?;
    let mut t = Traffic::default();
    for kv in line.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        let v: u64 = v.parse().ok()?;
        match k {
            "answered" => t.answered = v,
            "idle" => t.idle = v,
            "s2xx" => t.s2xx = v,
            "s3xx" => t.s3xx = v,
            "s4xx" => t.s4xx = v,
            "s5xx" => t.s5xx = v,
            "socket_errors" => t.socket_errors = v,
            "stalled" => t.stalled_threads = v,
            _ => {}
        }
    }
    Some(t)
}

/// Sends keys `first..first+count` with `wrk` and returns the counts.
fn wrk_stage(
    url: &str,
    first: u64,
    count: u64,
    cfg: &MemoryConfig,
    dir: &Path,
) -> io::Result<Traffic> {
    let threads = u64::from(cfg.wrk_threads).min(count).max(1);
    let conns = u64::from(cfg.connections).max(threads);
    let script = dir.join(format!("stage-{first}.lua"));
    let done_prefix = dir.join(format!("stage-{first}.done."));
    let done_prefix = done_prefix
        .to_str()
        .filter(|p| !p.contains(['"', '\\']))
        .ok_or_else(|| other(format!("unusable script directory {}", dir.display())))?;
    let markers: Vec<_> = (0..threads)
        .map(|i| Path::new(&format!("{done_prefix}{i}")).to_path_buf())
        .collect();
    for m in &markers {
        let _ = std::fs::remove_file(m);
    }
    std::fs::write(&script, lua(first, count, threads, done_prefix))?;
    let t0 = Instant::now();
    let child = Command::new("wrk")
        .arg(format!("-t{threads}"))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{}s", cfg.stage_timeout_s.max(1)))
        .args(["--timeout", "5s", "-s"])
        .arg(&script)
        .arg(format!("{url}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| other(format!("cannot run wrk: {e} (run `make setup`)")))?;
    let out = finish_wrk(child, &markers, cfg.stage_timeout_s.max(1))?;
    let seconds = t0.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(other(format!(
            "wrk failed ({}): {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut t =
        parse_sgmem(&text).ok_or_else(|| other(format!("no SGMEM line from wrk:\n{text}")))?;
    t.planned = count;
    t.seconds = seconds;
    Ok(t)
}

/// Waits for `wrk`: once every thread left its marker (all its keys answered, or stalled),
/// interrupts it (SIGINT: it stops sleeping out `-d`, joins the threads and prints the
/// `done()` line); kills it if it outlives its duration by a minute.
fn finish_wrk(
    mut child: Child,
    markers: &[std::path::PathBuf],
    duration_s: u64,
) -> io::Result<std::process::Output> {
    let t0 = Instant::now();
    let hard = Duration::from_secs(duration_s + 60);
    let mut interrupted: Option<Instant> = None;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        let all_done = markers.iter().all(|m| m.exists());
        let resend = interrupted.is_none_or(|t| t.elapsed() > Duration::from_secs(5));
        if all_done && resend {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            interrupted = Some(Instant::now());
        }
        if t0.elapsed() > hard {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for m in markers {
        let _ = std::fs::remove_file(m);
    }
    child.wait_with_output()
}

/// A simple-page service of its own for the slot runs: every GET answered 200 with a page of
/// `page_bytes` bytes (the path in it), `Cache-Control: public, max-age=600`.
pub struct PageServer {
    pub port: u16,
    shared: Arc<PageShared>,
    _server: Server,
}

struct PageShared {
    page_bytes: usize,
    requests: AtomicU64,
}

impl PageServer {
    pub fn start(page_bytes: usize) -> io::Result<PageServer> {
        let bound = server::bind("pages", 0, 2)?;
        let port = bound.port;
        let shared = Arc::new(PageShared {
            page_bytes,
            requests: AtomicU64::new(0),
        });
        let server = bound.serve(shared.clone(), page)?;
        Ok(PageServer {
            port,
            shared,
            _server: server,
        })
    }

    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

async fn page(shared: Arc<PageShared>, req: Request<Incoming>) -> Resp {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut body = format!(
        "<!doctype html><html><body><h1>simple page</h1><p>{}</p><!-- ",
        path.replace(['<', '>', '&'], "_")
    );
    let tail = " --></body></html>\n";
    let pad = shared.page_bytes.saturating_sub(body.len() + tail.len());
    body.push_str(&"x".repeat(pad));
    body.push_str(tail);
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=600"),
    );
    h.insert("x-upstream", HeaderValue::from_static("simple"));
    resp
}

fn machine() -> String {
    format!(
        "{}; {} CPUs (`nproc`); kernel `{}`; Envoy `{}`; wrk `{}`",
        first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        first_line(&mut Command::new("nproc")),
        first_line(Command::new("uname").arg("-r")),
        first_line(Command::new(envoy_bin()).arg("--version")),
        first_line(Command::new("wrk").arg("--version")),
    )
}

/// 1000000 -> "1,000,000".
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn mib_b(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB)
}

/// Signed difference in MiB from KiB.
fn dmib(a: u64, b: u64) -> String {
    format!("{:+.1}", (a as f64 - b as f64) / 1024.0)
}

/// Signed difference in MiB from bytes.
fn dmib_b(a: u64, b: u64) -> String {
    format!("{:+.1}", (a as f64 - b as f64) / MIB)
}

/// KiB per 100,000 keys between two samples (RSS from KiB, heap from bytes).
fn per_100k(d_kib: f64, keys: u64) -> String {
    if keys == 0 {
        return "–".into();
    }
    format!("{:+.0} KiB", d_kib * 100_000.0 / keys as f64)
}

/// The report as markdown: a `##` section (the binary appends it to `--out`).
pub fn markdown(r: &MemoryReport, command: &str) -> String {
    let c = &r.config;
    let mut md = format!(
        "\n## Memory: {} distinct keys\n\nCommand: `{command}`\n\n{}; Envoy `--concurrency {}`; wrk {} threads x {} connections.\n\n",
        thousands(c.keys),
        r.machine,
        c.envoy_workers,
        c.wrk_threads,
        c.connections
    );
    md += "Each front is a fresh Envoy in front of the demo upstream (no latency, capacity 100,000) and the simple-page service; `wrk` sends one request per key, every key new, in five URL forms (`/PostView?blogId=b<k>&logNo=<k>`, `/b<k>/<k>`, `/PostView?%62logId=b<k>&logNo=<k>&x=<k>`, `/PostList?blogId=b<k>&page=<k>`, `/static/<k>/app.css?v=<k>`), so every filter's key space sees new keys: ratelimit `per_blog` buckets, the hotkey sketch and view, sli's top URLs and, for `/PostList` (diverted by an added `always` rule, micro-cache on, TTL 1 s), simplepage's 64 cache slots. The bundle's `global` rate limit is raised to 1,000,000 r/s and the clusters' circuit breakers to 100,000 so nothing is refused; every cap is the bundle's (ratelimit `max_keys` 10,000 per rule, hotkey `sketch_capacity` 64 / `view_entries` 32, simplepage 64 slots x 64 KiB, sli top-URL sketch 256). RSS and HWM: `/proc/PID/status`; heap: admin `/memory` (`allocated` = tcmalloc's live bytes, where shared data lives; `heap_size`); Wasm: the VMs' linear memories (V8 maps them outside tcmalloc; Envoy has no per-VM memory stat) from `/proc/PID/smaps`, size (resident).\n";
    md.push('\n');
    for run in &r.runs {
        let _ = writeln!(md, "- `{}`: {}", run.front.name(), run.front.description());
    }
    md += "\n| front | at | keys answered | RSS MiB | HWM MiB | heap allocated MiB | heap size MiB | Wasm memories: n, MiB (resident) |\n|---|---|---:|---:|---:|---:|---:|---|\n";
    for run in &r.runs {
        for s in &run.samples {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {}, {} ({}) |",
                run.front.name(),
                s.at,
                thousands(s.keys),
                mib(s.rss_kib),
                mib(s.hwm_kib),
                mib_b(s.heap_allocated),
                mib_b(s.heap_size),
                s.wasm_memories,
                mib(s.wasm_size_kib),
                mib(s.wasm_rss_kib)
            );
        }
    }
    md += &growth_table(r);
    md += &share_table(r);
    md += "\n| front | keys | answered | 2xx | 3xx | 4xx | 5xx | socket errors | Envoy 5xx | seconds | keyed req/s | Envoy alive |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for run in &r.runs {
        let t = &run.traffic;
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} |",
            run.front.name(),
            thousands(t.planned),
            thousands(t.answered),
            thousands(t.s2xx),
            t.s3xx,
            t.s4xx,
            t.s5xx,
            t.socket_errors,
            run.envoy_codes.get("5xx").copied().unwrap_or(0),
            t.seconds,
            t.rps(),
            if run.alive { "yes" } else { "**no**" }
        );
    }
    for run in r.runs.iter().filter(|x| !x.filters.is_empty()) {
        let list: Vec<String> = run
            .filters
            .iter()
            .map(|(k, v)| format!("`{k}` {}", thousands((*v).max(0) as u64)))
            .collect();
        let _ = writeln!(
            md,
            "\nWhat the {} filters counted: {}.",
            run.front.name(),
            list.join(", ")
        );
    }
    if !r.cache.is_empty() {
        let _ = write!(
            md,
            "\n### Micro-cache slot configurations\n\nThe bundle (as above) with simplepage's `post_view` rule diverting every page (`always`, TTL 10 min), `cache.slots` and `max_body_bytes` as listed, and a page server as the simple-page service answering pages of {} bytes (`max-age=600`); {} distinct pages (4/5 of them cacheable `post_view` pages, the rest `/static/`) fill the direct-mapped slots. Cap = slots x (`max_body_bytes` + 6 KiB + 45 B), the documented bound; `cache_bytes` = simplepage's gauge after the fill.\n\n",
            thousands(c.page_bytes as u64),
            thousands(c.cache_keys)
        );
        md += "| config | slots | max_body_bytes | cap MiB | answered (5xx) | fills | cache_bytes MiB | RSS start MiB | RSS filled MiB | RSS filled − start | heap filled − start | RSS settled MiB | alive |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
        for cr in &r.cache {
            let (Some(s0), Some(s1), Some(s2)) =
                (cr.samples.first(), cr.samples.get(1), cr.samples.get(2))
            else {
                continue;
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} |",
                cr.variant.name,
                cr.variant.slots,
                thousands(cr.variant.max_body_bytes as u64),
                mib_b(cr.cap_bytes),
                thousands(cr.traffic.answered),
                cr.traffic.s5xx,
                thousands(cr.cache_fill.max(0) as u64),
                mib_b(cr.cache_bytes.max(0) as u64),
                mib(s0.rss_kib),
                mib(s1.rss_kib),
                dmib(s1.rss_kib, s0.rss_kib),
                dmib_b(s1.heap_allocated, s0.heap_allocated),
                mib(s2.rss_kib),
                if cr.alive { "yes" } else { "**no**" }
            );
        }
    }
    md
}

/// The keyed samples of a run (after start, before settled): (keys, sample).
fn keyed(run: &RunReport) -> Vec<&Sample> {
    run.samples
        .iter()
        .filter(|s| s.at.ends_with(" keys") || s.at == "start")
        .collect()
}

fn growth_table(r: &MemoryReport) -> String {
    let Some(first) = r.runs.first() else {
        return String::new();
    };
    let ks = keyed(first);
    // From the second checkpoint on: the first segment (start to the first checkpoint) holds
    // Envoy's one-time warm-up (connections, worker buffers), not a per-key cost.
    let segs: Vec<(String, usize)> = (2..ks.len())
        .map(|i| {
            let from = ks.get(i - 1).map_or(0, |s| s.keys);
            let to = ks.get(i).map_or(0, |s| s.keys);
            (format!("{}→{}", short_keys(from), short_keys(to)), i)
        })
        .collect();
    let mut md =
        String::from("\nGrowth per 100,000 keys, per segment from the first checkpoint on (RSS / live heap; start to the first checkpoint is Envoy's one-time warm-up, in the settled − start columns):\n\n| front |");
    for (name, _) in &segs {
        let _ = write!(md, " {name} RSS | {name} heap |");
    }
    md += " settled − start RSS | settled − start heap |\n|---|";
    md += &"---:|---:|".repeat(segs.len());
    md += "---:|---:|\n";
    for run in &r.runs {
        let ks = keyed(run);
        let _ = write!(md, "| {} |", run.front.name());
        for (_, i) in &segs {
            match (ks.get(i - 1), ks.get(*i)) {
                (Some(a), Some(b)) => {
                    let n = b.keys.saturating_sub(a.keys);
                    let drss = b.rss_kib as f64 - a.rss_kib as f64;
                    let dheap = (b.heap_allocated as f64 - a.heap_allocated as f64) / 1024.0;
                    let _ = write!(md, " {} | {} |", per_100k(drss, n), per_100k(dheap, n));
                }
                _ => md += " – | – |",
            }
        }
        match (run.samples.first(), run.samples.last()) {
            (Some(a), Some(b)) => {
                let _ = writeln!(
                    md,
                    " {} MiB | {} MiB |",
                    dmib(b.rss_kib, a.rss_kib),
                    dmib_b(b.heap_allocated, a.heap_allocated)
                );
            }
            _ => md += " – | – |\n",
        }
    }
    md
}

fn short_keys(n: u64) -> String {
    match n {
        0 => "0".into(),
        n if n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n % 1000 == 0 => format!("{}k", n / 1000),
        n => thousands(n),
    }
}

/// The filters' share: each front minus bare, at each sample.
fn share_table(r: &MemoryReport) -> String {
    let Some(bare) = r.runs.iter().find(|x| x.front == Front::Bare) else {
        return String::new();
    };
    let others: Vec<&RunReport> = r.runs.iter().filter(|x| x.front != Front::Bare).collect();
    if others.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\nThe Wasm filters' share: each front minus `bare` at the same point (MiB):\n\n| at |",
    );
    for o in &others {
        let n = o.front.name();
        let _ = write!(
            md,
            " {n} − bare RSS | {n} − bare heap | {n} Wasm memories |"
        );
    }
    md += "\n|---|";
    md += &"---:|---:|---:|".repeat(others.len());
    md.push('\n');
    for (i, b) in bare.samples.iter().enumerate() {
        let _ = write!(md, "| {} |", b.at);
        for o in &others {
            match o.samples.get(i) {
                Some(s) => {
                    let _ = write!(
                        md,
                        " {} | {} | {} |",
                        dmib(s.rss_kib, b.rss_kib),
                        dmib_b(s.heap_allocated, b.heap_allocated),
                        mib(s.wasm_size_kib)
                    );
                }
                None => md += " – | – | – |",
            }
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_end_with_keys() {
        let c = MemoryConfig {
            keys: 20_000,
            ..MemoryConfig::default()
        };
        assert_eq!(c.stages(), vec![10_000, 20_000]);
        assert_eq!(
            MemoryConfig::default().stages(),
            vec![10_000, 100_000, 1_000_000]
        );
    }

    #[test]
    fn parses_the_sgmem_line() {
        let t = parse_sgmem(
            "Running 1s\nSGMEM answered=10 idle=3 s2xx=9 s3xx=0 s4xx=1 s5xx=0 socket_errors=2\n",
        );
        let t = t.unwrap_or_default();
        assert_eq!(
            (t.answered, t.idle, t.s2xx, t.s4xx, t.socket_errors),
            (10, 3, 9, 1, 2)
        );
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(short_keys(100_000), "100k");
        assert_eq!(short_keys(1_000_000), "1M");
    }

    #[test]
    fn cache_cap() {
        assert_eq!(CacheVariant::new("x", 2, 100).cap_bytes(), 2 * (100 + 6189));
    }
}
