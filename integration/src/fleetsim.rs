//! The fleet simulation ([11/11]; bin `fleet-sim`, `make fleet-sim`): N Envoys' fleet code
//! (`sg_core::fleet` through [`SimEnvoy`], the filters' own logic) on a virtual clock, syncing
//! with [`MemEngine`], an in-memory engine with the Lua script's semantics (windows on the
//! engine's clock, per-key totals, per-Envoy traffic, top-K), under skewed load balancing.
//! It compares a local-only limit and local hot-key detection with the synced ones and
//! reports the overshoot and the detection delay. `integration/tests/fleet.rs` checks that
//! MemEngine answers what the real script in Redis answers for the same calls.

use crate::fleet::{Clock, SimEnvoy, Transport};
use serde::Deserialize;
use serde_json::json;
use sg_core::fleet::{FleetConfig, FleetLimit, SyncError};
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

const SHA: &str = "0000000000000000000000000000000000000001";

#[derive(Deserialize)]
struct Body {
    e: String,
    #[serde(default)]
    l: Vec<LimitIn>,
    #[serde(default)]
    h: Vec<HotIn>,
}

#[derive(Deserialize)]
struct LimitIn {
    r: String,
    w: u64,
    n: u64,
    k: Vec<(String, u64)>,
}

#[derive(Deserialize)]
struct HotIn {
    r: String,
    w: u64,
    top: u64,
    #[serde(default)]
    n: u64,
    k: Vec<(String, u64)>,
}

/// The engine's state: what Redis holds for the script.
#[derive(Default)]
pub struct MemEngine {
    limits: BTreeMap<(String, u64), BTreeMap<String, u64>>,
    shares: BTreeMap<(String, u64), BTreeMap<String, u64>>,
    hot: BTreeMap<(String, u64), BTreeMap<String, u64>>,
    hot_n: BTreeMap<(String, u64), u64>,
    expires: BTreeMap<(String, u64), u64>,
    /// While true, every call times out (Redis or webdis away).
    pub down: bool,
    pub calls: u64,
}

impl MemEngine {
    fn top(&self, rule: &str, win: u64, k: u64) -> Vec<serde_json::Value> {
        let mut v: Vec<(&String, &u64)> = self
            .hot
            .get(&(rule.to_string(), win))
            .map(|m| m.iter().collect())
            .unwrap_or_default();
        // ZREVRANGE: by score, then by member, both descending.
        v.sort_by(|a, b| b.1.cmp(a.1).then_with(|| b.0.cmp(a.0)));
        v.into_iter()
            .take(k as usize)
            .map(|(key, n)| json!([key, n]))
            .collect()
    }

    /// The script, run on the engine's clock `now`.
    pub fn eval(&mut self, now: u64, body: &[u8]) -> Result<String, String> {
        let b: Body = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let mut l_out = Vec::new();
        for r in &b.l {
            let w = r.w.max(1);
            let win = now / w;
            let totals = self.limits.entry((r.r.clone(), win)).or_default();
            let mut keys = Vec::new();
            for (k, d) in &r.k {
                let t = totals.entry(k.clone()).or_default();
                *t += d;
                keys.push(json!([k, *t]));
            }
            *self
                .shares
                .entry((r.r.clone(), win))
                .or_default()
                .entry(b.e.clone())
                .or_default() += r.n;
            let get = |s: &BTreeMap<(String, u64), BTreeMap<String, u64>>, w: u64| {
                s.get(&(r.r.clone(), w)).cloned().unwrap_or_default()
            };
            let (cur, prev) = (
                get(&self.shares, win),
                get(&self.shares, win.wrapping_sub(1)),
            );
            let mine = cur.get(&b.e).copied().unwrap_or(0) + prev.get(&b.e).copied().unwrap_or(0);
            let all: u64 = cur.values().sum::<u64>() + prev.values().sum::<u64>();
            l_out.push(json!({"r": r.r, "win": win, "left_ms": (win + 1) * w - now,
                "mine": mine, "all": all, "k": keys}));
        }
        let mut h_out = Vec::new();
        for r in &b.h {
            let w = r.w.max(1);
            let win = now / w;
            let z = self.hot.entry((r.r.clone(), win)).or_default();
            for (k, d) in &r.k {
                *z.entry(k.clone()).or_default() += d;
            }
            let top = r.top.max(1);
            let ncur = self.hot_n.entry((r.r.clone(), win)).or_default();
            *ncur += r.n;
            let ncur = *ncur;
            let nprev = self
                .hot_n
                .get(&(r.r.clone(), win.wrapping_sub(1)))
                .copied()
                .unwrap_or(0);
            h_out.push(json!({"r": r.r, "win": win, "left_ms": (win + 1) * w - now,
                "cur": self.top(&r.r, win, top), "prev": self.top(&r.r, win.wrapping_sub(1), top),
                "ncur": ncur, "nprev": nprev}));
        }
        // Expiry: three windows after the window's start, as the script's PEXPIRE 3w.
        for r in &b.l {
            let w = r.w.max(1);
            self.expires
                .insert((r.r.clone(), now / w), (now / w + 3) * w);
        }
        for r in &b.h {
            let w = r.w.max(1);
            self.expires
                .insert((r.r.clone(), now / w), (now / w + 3) * w);
        }
        let live = |k: &(String, u64), exp: &BTreeMap<(String, u64), u64>| {
            exp.get(k).is_some_and(|t| *t > now)
        };
        let exp = &self.expires;
        self.limits.retain(|k, _| live(k, exp));
        self.shares.retain(|k, _| live(k, exp));
        self.hot.retain(|k, _| live(k, exp));
        self.hot_n.retain(|k, _| live(k, exp));
        self.expires.retain(|_, t| *t > now);
        Ok(json!({"t": now, "l": l_out, "h": h_out}).to_string())
    }
}

/// One Envoy's link to a shared [`MemEngine`], on the simulation's clock.
pub struct MemLink {
    pub engine: Rc<RefCell<MemEngine>>,
    pub clock: Rc<Cell<u64>>,
}

impl Transport for MemLink {
    fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u32, Vec<u8>), SyncError> {
        let mut e = self.engine.borrow_mut();
        e.calls += 1;
        if e.down {
            return Err(SyncError::Timeout);
        }
        if method == "POST" && path == "/" {
            return Ok((200, json!({"SCRIPT": SHA}).to_string().into_bytes()));
        }
        let now = self.clock.get();
        match e.eval(now, body) {
            Ok(s) => Ok((200, json!({"EVALSHA": s}).to_string().into_bytes())),
            Err(m) => Ok((200, json!({"EVALSHA": [false, m]}).to_string().into_bytes())),
        }
    }
}

/// One simulation's parameters.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub envoys: usize,
    /// Load-balancer skew: Envoy i gets traffic in proportion to 1 / (i + 1)^skew.
    pub skew: f64,
    /// The fleet limit per window for one blog, and the window.
    pub limit: u64,
    pub window_ms: u64,
    pub sync_ms: u64,
    /// Requests per second offered for the limited blog (the whole fleet).
    pub offered_rps: f64,
    /// The hot-key threshold (r/s over 1 s, fleet-wide) and the hot blog's rate from
    /// `hot_from_ms`.
    pub threshold_rps: f64,
    pub hot_rps: f64,
    pub hot_from_ms: u64,
    pub seconds: u64,
}

impl SimConfig {
    pub fn new(envoys: usize) -> SimConfig {
        SimConfig {
            envoys,
            skew: 0.8,
            limit: 1000,
            window_ms: 1000,
            sync_ms: 250,
            offered_rps: 28_000.0,
            threshold_rps: 300.0,
            hot_rps: 900.0,
            hot_from_ms: 3000,
            seconds: 10,
        }
    }
}

/// What a simulation measured.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub cfg: SimConfig,
    /// Admitted per full window: fleet-synced (max, mean), local-only with the limit split
    /// evenly (the fallback; max, mean), local-only with the whole limit on every Envoy (max).
    pub synced_max: u64,
    pub synced_mean: f64,
    pub split_max: u64,
    pub split_mean: f64,
    pub whole_max: u64,
    /// The stated bound on the overshoot: sum over Envoys of min(offered rate, limit rate)
    /// x sync period.
    pub bound: f64,
    /// Detection delay of the hot blog from `hot_from_ms`: per Envoy (synced), median and max;
    /// how many Envoys detect it locally at all.
    pub detect_median_ms: Option<u64>,
    pub detect_max_ms: Option<u64>,
    pub detected_synced: usize,
    pub detected_local: usize,
    pub engine_calls: u64,
}

fn weights(n: usize, skew: f64) -> Vec<f64> {
    let raw: Vec<f64> = (0..n).map(|i| 1.0 / ((i + 1) as f64).powf(skew)).collect();
    let sum: f64 = raw.iter().sum();
    raw.into_iter().map(|w| w / sum).collect()
}

/// Sliding 1 s count of requests, in 10 ms buckets.
#[derive(Default)]
struct Local {
    buckets: VecDeque<(u64, u64)>,
}

impl Local {
    fn add(&mut self, now: u64, n: u64) {
        let b = now / 10;
        match self.buckets.back_mut() {
            Some((t, c)) if *t == b => *c += n,
            _ => self.buckets.push_back((b, n)),
        }
        while self.buckets.front().is_some_and(|(t, _)| *t + 100 <= b) {
            self.buckets.pop_front();
        }
    }
    fn rate(&self) -> f64 {
        self.buckets.iter().map(|(_, c)| *c).sum::<u64>() as f64
    }
}

pub fn run(cfg: &SimConfig) -> SimReport {
    let n = cfg.envoys.max(1);
    let w = weights(n, cfg.skew);
    let clock = Rc::new(Cell::new(0u64));
    let engine = Rc::new(RefCell::new(MemEngine::default()));
    let fc: FleetConfig = serde_json::from_value(json!({"cluster": "webdis",
        "expected_envoys": n, "sync_ms": cfg.sync_ms, "timeout_ms": cfg.sync_ms.min(200)}))
    .unwrap_or_else(|e| panic!("sim config: {e}"));
    let mut envoys: Vec<SimEnvoy> = (0..n)
        .map(|i| {
            let link = MemLink {
                engine: engine.clone(),
                clock: clock.clone(),
            };
            let mut e = SimEnvoy::with(
                &format!("envoy-{i}"),
                Box::new(link),
                Clock::Virtual(clock.clone()),
                fc.clone(),
                cfg.limit,
                cfg.window_ms,
            );
            e.hot_window_ms = 1000;
            e
        })
        .collect();
    let fallback = fc.fallback_limit(cfg.limit);
    let mut split: Vec<FleetLimit> = (0..n)
        .map(|_| FleetLimit::new(cfg.limit, cfg.window_ms, n as u32, 16))
        .collect();
    let mut whole: Vec<FleetLimit> = (0..n)
        .map(|_| FleetLimit::new(cfg.limit, cfg.window_ms, 1, 16))
        .collect();
    let mut local_hot: Vec<Local> = (0..n).map(|_| Local::default()).collect();
    let mut acc = vec![0.0f64; n];
    let mut hot_acc = vec![0.0f64; n];
    let windows = (cfg.seconds * 1000 / cfg.window_ms) as usize + 1;
    let mut synced_per_win = vec![0u64; windows];
    let mut split_per_win = vec![0u64; windows];
    let mut whole_per_win = vec![0u64; windows];
    let mut detected: Vec<Option<u64>> = vec![None; n];
    let mut detected_local = vec![false; n];
    let end = cfg.seconds * 1000;
    for now in 0..end {
        clock.set(now);
        let win = (now / cfg.window_ms) as usize;
        for i in 0..n {
            acc[i] += w[i] * cfg.offered_rps / 1000.0;
            while acc[i] >= 1.0 {
                acc[i] -= 1.0;
                if envoys[i].request("blog") {
                    synced_per_win[win] += 1;
                }
                if split[i].decide(now, "blog", false, fallback) {
                    split_per_win[win] += 1;
                }
                if whole[i].decide(now, "blog", false, cfg.limit) {
                    whole_per_win[win] += 1;
                }
            }
            if now >= cfg.hot_from_ms {
                hot_acc[i] += w[i] * cfg.hot_rps / 1000.0;
                let k = hot_acc[i].floor();
                if k >= 1.0 {
                    hot_acc[i] -= k;
                    envoys[i].seen("hot", k as u64);
                    local_hot[i].add(now, k as u64);
                }
                if local_hot[i].rate() >= cfg.threshold_rps {
                    detected_local[i] = true;
                }
            }
            // Syncs spread over the period (each Envoy's timer starts at its own moment).
            if now % cfg.sync_ms == (i as u64 * cfg.sync_ms / n as u64) {
                envoys[i].sync();
                if now >= cfg.hot_from_ms && detected[i].is_none() {
                    let hot = envoys[i]
                        .hot_rates
                        .iter()
                        .any(|(k, r)| k == "hot" && *r >= cfg.threshold_rps);
                    if hot {
                        detected[i] = Some(now - cfg.hot_from_ms);
                    }
                }
            }
        }
    }
    // Full windows only, after the first (no sync yet in it).
    let full = |v: &[u64]| -> Vec<u64> { v.iter().skip(1).take(windows - 2).copied().collect() };
    let stats = |v: Vec<u64>| -> (u64, f64) {
        let max = v.iter().copied().max().unwrap_or(0);
        let mean = v.iter().sum::<u64>() as f64 / v.len().max(1) as f64;
        (max, mean)
    };
    let (synced_max, synced_mean) = stats(full(&synced_per_win));
    let (split_max, split_mean) = stats(full(&split_per_win));
    let (whole_max, _) = stats(full(&whole_per_win));
    let limit_rps = cfg.limit as f64 * 1000.0 / cfg.window_ms as f64;
    let bound: f64 = w
        .iter()
        .map(|wi| (wi * cfg.offered_rps).min(limit_rps) * cfg.sync_ms as f64 / 1000.0)
        .sum();
    let mut delays: Vec<u64> = detected.iter().flatten().copied().collect();
    delays.sort_unstable();
    let engine_calls = engine.borrow().calls;
    SimReport {
        cfg: cfg.clone(),
        synced_max,
        synced_mean,
        split_max,
        split_mean,
        whole_max,
        bound,
        detect_median_ms: delays.get(delays.len() / 2).copied(),
        detect_max_ms: delays.last().copied(),
        detected_synced: delays.len(),
        detected_local: detected_local.iter().filter(|d| **d).count(),
        engine_calls,
    }
}

/// The markdown table row of one report.
pub fn row(r: &SimReport) -> String {
    let ms = |v: Option<u64>| v.map_or("never".to_string(), |v| format!("{v} ms"));
    format!(
        "| {} | {} | {:.0} | {} ({:.0}) | {} ({:.0}) | {} | {:.0} | {} of {} | {} of {} ({} median, {} max) |",
        r.cfg.envoys,
        r.cfg.limit,
        r.cfg.offered_rps,
        r.synced_max,
        r.synced_mean,
        r.split_max,
        r.split_mean,
        r.whole_max,
        r.bound,
        r.detected_local,
        r.cfg.envoys,
        r.detected_synced,
        r.cfg.envoys,
        ms(r.detect_median_ms),
        ms(r.detect_max_ms),
    )
}

pub const HEADER: &str = "| Envoys | fleet limit /s | offered /s | synced: max (mean) admitted per window | local, limit/N each: max (mean) | local, whole limit each: max | bound on the overshoot | hot blog detected locally | detected synced (delay) |\n|---:|---:|---:|---:|---:|---:|---:|---|---|";
