//! The soak (`make soak`, bin `soak`): the whole bundle (envoy.yaml as shipped) in front of the
//! demo app for a long run of steady mixed traffic with periodic spikes, checking that
//!
//! - Envoy's memory is flat: RSS and live heap (`/memory` `allocated`) are sampled after every
//!   segment, and the least-squares slope over the samples after the warm-up is reported;
//! - nothing counted drifts: at the end, the requests the sli filter counted
//!   (`spikeguard_requests_total{direction="inbound"}`), per status code, and the 429s
//!   ratelimit counted, equal what the load generator got back, as does Envoy's own
//!   `http.ingress.downstream_rq_completed`;
//! - no answer is other than an intended one: 200 from the app or a simple page, a 429 of
//!   ratelimit (it carries `ratelimit-policy`), a 503 the app did not send (a hotkey shed),
//!   a 503 of envoy.yaml's cluster limits (`x-envoy-overloaded`, counted by Envoy).
//!
//! The traffic of one segment (all streams run at once, open loop, see [`crate::loadgen`]):
//! `PostView` pages of a Zipf-distributed set of blogs; `PostList` pages; a churn stream
//! whose every request names a blog never seen before (the filters' tables must stay
//! bounded); and, in spike segments, a burst on a few hot blogs far above hotkey's threshold.
//! The app is ample (never the bottleneck), so every refusal is a filter's decision.
//!
//! Nothing here asserts a duration: the run's checks are counts; the memory slope is a
//! figure for docs/BENCHMARKS.md, judged there.

use crate::control::Control;
use crate::envoy::{Bundle, Envoy};
use crate::loadgen::{self, KeyMix, LoadConfig, Record};
use crate::memory;
use crate::prometheus;
use crate::upstream::{Upstream, UpstreamConfig};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::time::{Duration, Instant};

/// The response header of a simple page (simplepage's `response_header` default).
const SIMPLE_HDR: &str = "x-spikeguard-simple-page";

/// A soak's shape.
#[derive(Debug, Clone, Serialize)]
pub struct SoakConfig {
    /// Length of the run, seconds (whole segments).
    pub seconds: u64,
    /// One segment: the load generator's run between two memory samples, seconds.
    pub segment_s: u64,
    /// `PostView` pages per second over `blogs` Zipf-ranked blogs.
    pub view_rps: f64,
    /// `PostList` pages per second over the same blogs.
    pub list_rps: f64,
    /// Pages per second of blogs never seen before (one new key per request).
    pub churn_rps: f64,
    pub blogs: usize,
    /// A spike starts every this many seconds (from `spike_first_s`) ...
    pub spike_every_s: u64,
    /// ... and lasts this long (whole segments).
    pub spike_s: u64,
    pub spike_first_s: u64,
    /// Pages per second on the hot blogs during a spike (split evenly).
    pub spike_rps: f64,
    pub hot_blogs: usize,
    /// Samples before this many seconds are not in the slope (start-up, first spike).
    pub warmup_s: u64,
    /// Envoy `--concurrency`.
    pub envoy_workers: u32,
    /// How long the end waits for the filters' counters (flushed on their ticks).
    pub settle_timeout_s: u64,
    pub seed: u64,
    /// Bytes Envoy gives back to the OS per second (bootstrap `memory_allocator_manager`);
    /// 0 = envoy.yaml as it is.
    #[serde(default)]
    pub release_bytes: u64,
}

impl Default for SoakConfig {
    /// 30 minutes: 10 s segments, a 30 s spike every 5 minutes from minute 2.
    fn default() -> Self {
        Self {
            seconds: 1800,
            segment_s: 10,
            view_rps: 150.0,
            list_rps: 30.0,
            churn_rps: 40.0,
            blogs: 2000,
            spike_every_s: 300,
            spike_s: 30,
            spike_first_s: 120,
            spike_rps: 900.0,
            hot_blogs: 3,
            warmup_s: 300,
            envoy_workers: 2,
            settle_timeout_s: 60,
            seed: 1,
            release_bytes: 0,
        }
    }
}

impl SoakConfig {
    /// The smoke run of `make test` (tests/soak.rs): 24 s, two short spikes.
    pub fn smoke() -> Self {
        Self {
            seconds: 24,
            segment_s: 4,
            view_rps: 80.0,
            list_rps: 20.0,
            churn_rps: 20.0,
            blogs: 200,
            spike_every_s: 12,
            spike_s: 4,
            spike_first_s: 8,
            spike_rps: 400.0,
            warmup_s: 0,
            ..Self::default()
        }
    }

    fn segments(&self) -> u64 {
        self.seconds / self.segment_s.max(1)
    }

    /// Whether the segment starting at `t` seconds is in a spike.
    pub fn spiking(&self, t: u64) -> bool {
        t >= self.spike_first_s
            && self.spike_every_s > 0
            && (t - self.spike_first_s) % self.spike_every_s < self.spike_s
    }

    fn check(&self) -> io::Result<()> {
        let bad = |m: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, m.to_string()));
        if self.segment_s == 0 || self.seconds < self.segment_s {
            return bad("seconds must be at least one segment (segment_s > 0)");
        }
        if !self.spike_s.is_multiple_of(self.segment_s)
            || !self.spike_first_s.is_multiple_of(self.segment_s)
        {
            return bad("spike_s and spike_first_s must be whole segments");
        }
        if self.blogs == 0 || self.hot_blogs == 0 {
            return bad("blogs and hot_blogs must be > 0");
        }
        Ok(())
    }
}

/// What the client got back, by kind.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Answers {
    /// Responses (any status).
    pub completed: u64,
    /// Requests with no response (connect error, timeout).
    pub errors: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// 2xx from the app.
    pub app: u64,
    /// 2xx simple pages (diverted or micro-cache).
    pub simple: u64,
    /// 429 from ratelimit.
    pub rate_limited: u64,
    /// 503s the app did not send (hotkey shed).
    pub shed: u64,
    /// 503s of envoy.yaml's cluster limits (`x-envoy-overloaded`: the app's connection pool
    /// is full; a slow machine sees them in spikes).
    #[serde(default)]
    pub overflow: u64,
    /// Everything else: not an intended outcome.
    pub unintended: u64,
    /// A few of the unintended answers (status and headers), for the report.
    pub unintended_examples: Vec<String>,
}

impl Answers {
    fn add(&mut self, r: &Record) {
        let has = |n: &str| r.headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(n));
        let upstream = r
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-upstream"))
            .map(|(_, v)| v.as_str());
        if r.status == 0 {
            self.errors += 1;
        } else {
            self.completed += 1;
            *self.by_status.entry(r.status).or_default() += 1;
        }
        match r.status {
            200..=299 if has(SIMPLE_HDR) || upstream == Some("simple") => self.simple += 1,
            200..=299 if upstream == Some("main") => self.app += 1,
            429 if has("ratelimit-policy") => self.rate_limited += 1,
            503 if has("x-envoy-overloaded") => self.overflow += 1,
            503 if upstream.is_none() => self.shed += 1,
            _ => {
                self.unintended += 1;
                if self.unintended_examples.len() < 10 {
                    self.unintended_examples
                        .push(format!("{} {} {:?}", r.status, r.key, r.headers));
                }
            }
        }
    }

    fn merge(&mut self, o: &Answers) {
        self.completed += o.completed;
        self.errors += o.errors;
        for (k, v) in &o.by_status {
            *self.by_status.entry(*k).or_default() += v;
        }
        self.app += o.app;
        self.simple += o.simple;
        self.rate_limited += o.rate_limited;
        self.shed += o.shed;
        self.overflow += o.overflow;
        self.unintended += o.unintended;
        for e in &o.unintended_examples {
            if self.unintended_examples.len() < 10 {
                self.unintended_examples.push(e.clone());
            }
        }
    }
}

/// One memory sample, after a segment.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Seconds since the load started (end of the segment).
    pub t_s: f64,
    pub spike: bool,
    pub rss_kib: u64,
    pub heap_allocated: u64,
    /// tcmalloc's heap (`/memory` `heap_size`: allocated plus free pages it keeps), bytes.
    pub heap_size: u64,
    /// The Wasm linear memories: mapped size and resident KiB.
    pub wasm_size_kib: u64,
    pub wasm_rss_kib: u64,
    /// Envoy's open downstream connections (`http.ingress.downstream_cx_active`).
    pub connections: i64,
    /// Answers of this segment.
    pub completed: u64,
}

/// A counter the filters or Envoy kept, against what the client saw.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub what: String,
    pub counted: i64,
    pub expected: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub config: SoakConfig,
    pub answers: Answers,
    pub points: Vec<Point>,
    /// Least-squares slopes over the points after the warm-up.
    pub rss_slope_kib_per_min: f64,
    pub heap_slope_kib_per_min: f64,
    pub rss_first_kib: u64,
    pub rss_last_kib: u64,
    pub rss_max_kib: u64,
    pub heap_first: u64,
    pub heap_last: u64,
    pub drifts: Vec<Drift>,
    /// Hot-key detections and simple-page diversions the filters counted (the spikes did
    /// something).
    pub detections: i64,
    pub wall_s: f64,
    /// Envoy's log lines with `critical` or wasm errors.
    pub envoy_errors: Vec<String>,
}

impl SoakReport {
    /// Drifts whose counts differ.
    pub fn drifted(&self) -> Vec<&Drift> {
        self.drifts
            .iter()
            .filter(|d| d.counted != d.expected)
            .collect()
    }

    /// The run's verdict: no drift, no unintended answer, no wasm error in Envoy's log.
    pub fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .drifted()
            .iter()
            .map(|d| format!("{}: counted {} != {}", d.what, d.counted, d.expected))
            .collect();
        if self.answers.unintended > 0 || self.answers.errors > 0 {
            p.push(format!(
                "{} unintended answers and {} errors: {:?}",
                self.answers.unintended, self.answers.errors, self.answers.unintended_examples
            ));
        }
        p.extend(self.envoy_errors.iter().cloned());
        p
    }
}

/// Least-squares slope of `ys` over `xs` (per x unit); 0 with fewer than 2 points.
pub fn slope(xs: &[f64], ys: &[f64]) -> f64 {
    let n = xs.len().min(ys.len());
    if n < 2 {
        return 0.0;
    }
    let (xs, ys) = (&xs[..n], &ys[..n]);
    let mx = xs.iter().sum::<f64>() / n as f64;
    let my = ys.iter().sum::<f64>() / n as f64;
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn other(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// The streams of the segment starting at `t` seconds (index `seg`).
fn streams(cfg: &SoakConfig, url: &str, seg: u64, t: u64) -> Vec<LoadConfig> {
    let ms = cfg.segment_s * 1000;
    let base = |rps: f64, path: &str, keys: KeyMix| LoadConfig {
        target: url.to_string(),
        rate_rps: rps,
        duration_ms: ms,
        path_template: path.to_string(),
        keys,
        record: true,
        // Far above any answer's time: a slow machine is slow, not an error.
        timeout_ms: 30_000,
        max_in_flight: 4096,
        ..LoadConfig::default()
    };
    let zipf = |salt: u64| KeyMix {
        zipf_n: cfg.blogs,
        zipf_s: 1.0,
        key_prefix: "blog".into(),
        seed: cfg
            .seed
            .wrapping_mul(1_000_003)
            .wrapping_add(seg * 7 + salt),
        ..KeyMix::default()
    };
    let mut out = vec![
        base(cfg.view_rps, "/PostView?blogId={key}&logNo={n}", zipf(1)),
        base(cfg.list_rps, "/PostList?blogId={key}", zipf(2)),
        base(
            cfg.churn_rps,
            "/PostView?blogId={key}&logNo=1",
            KeyMix {
                unique: true,
                key_prefix: format!("new{seg}x"),
                seed: cfg.seed + seg,
                ..KeyMix::default()
            },
        ),
    ];
    if cfg.spiking(t) {
        let share = 1.0 / cfg.hot_blogs as f64;
        out.push(base(
            cfg.spike_rps,
            "/PostView?blogId={key}&logNo=1",
            KeyMix {
                hot: (0..cfg.hot_blogs)
                    .map(|i| (format!("hot{i}"), share))
                    .collect(),
                seed: cfg.seed + seg,
                ..KeyMix::default()
            },
        ));
    }
    out.retain(|c| c.rate_rps > 0.0);
    out
}

/// Runs one segment's streams at once; the answers.
fn segment(cfgs: Vec<LoadConfig>) -> io::Result<Answers> {
    let handles: Vec<_> = cfgs
        .into_iter()
        .map(|c| std::thread::spawn(move || loadgen::run(&c)))
        .collect();
    let mut a = Answers::default();
    for h in handles {
        let report = h.join().map_err(|_| other("load thread panicked"))??;
        if report.dropped_client_side > 0 {
            return Err(other(format!(
                "the load generator dropped {} requests (max_in_flight)",
                report.dropped_client_side
            )));
        }
        for r in &report.records {
            a.add(r);
        }
    }
    Ok(a)
}

/// The whole bundle as shipped, its clusters pointed at this run's app, simple-page backend
/// and control plane.
pub fn launch(
    app: &Upstream,
    simple: &Upstream,
    control: &Control,
    workers: u32,
    release_bytes: u64,
) -> io::Result<Envoy> {
    let mut b = Bundle::load()?;
    if release_bytes > 0 {
        b.set_memory_release(release_bytes, 1000);
    }
    b.set_cluster_port("main_app", app.port)?;
    b.set_cluster_port("outbound_api", app.port)?;
    b.set_cluster_port("simple_page", simple.port)?;
    b.set_cluster_port("spikeguard_control", control.port)?;
    b.launch(workers)
}

/// The counters to compare with the client's answers (see the module docs).
fn drifts(e: &Envoy, a: &Answers) -> Vec<Drift> {
    let text = e.prometheus();
    let sli = |want: &[(&str, &str)]| {
        let mut w = vec![("direction", "inbound")];
        w.extend_from_slice(want);
        prometheus::value(&text, "spikeguard_requests_total", &w) as i64
    };
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let mut out = vec![
        Drift {
            what: "sli requests (all)".into(),
            counted: sli(&[]),
            expected: i(a.completed),
        },
        Drift {
            what: "envoy http.ingress.downstream_rq_completed".into(),
            counted: e.stat("http.ingress.downstream_rq_completed"),
            expected: i(a.completed),
        },
    ];
    for (code, n) in &a.by_status {
        let c = code.to_string();
        out.push(Drift {
            what: format!("sli requests code {code}"),
            counted: sli(&[("code", &c)]),
            expected: i(*n),
        });
    }
    let rejected: i64 = e
        .stats_matching("sg.ratelimit.")
        .iter()
        .filter(|(k, _)| k.ends_with(".rejected") && !k.ends_with("dry_run_rejected"))
        .map(|(_, v)| v)
        .sum();
    out.push(Drift {
        what: "ratelimit rejected (all rules)".into(),
        counted: rejected,
        expected: i(a.rate_limited),
    });
    out.push(Drift {
        what: "sli action=diverted + action=cache (simple pages)".into(),
        counted: sli(&[("action", "diverted")]) + sli(&[("action", "cache")]),
        expected: i(a.simple),
    });
    out.push(Drift {
        what: "sli action=shed".into(),
        counted: sli(&[("action", "shed")]),
        expected: i(a.shed),
    });
    let overflow: i64 = e
        .stats_matching("upstream_rq_pending_overflow")
        .iter()
        .filter(|(k, _)| k.starts_with("cluster."))
        .map(|(_, v)| v)
        .sum();
    out.push(Drift {
        what: "envoy cluster.*.upstream_rq_pending_overflow".into(),
        counted: overflow,
        expected: i(a.overflow),
    });
    out.push(Drift {
        what: "sli action=ratelimit".into(),
        counted: sli(&[("action", "ratelimit")]),
        expected: i(a.rate_limited),
    });
    out
}

/// Runs the soak. `progress` gets one line per segment.
pub fn run(cfg: &SoakConfig, mut progress: impl FnMut(&str)) -> io::Result<SoakReport> {
    cfg.check()?;
    let app = Upstream::start(UpstreamConfig {
        name: "main".into(),
        capacity: 100_000,
        max_queue: 100_000,
        queue_timeout_ms: 60_000,
        ..UpstreamConfig::default()
    })?;
    let simple = Upstream::start(UpstreamConfig {
        capacity: 100_000,
        max_queue: 100_000,
        ..UpstreamConfig::simple_page()
    })?;
    let control = Control::start()?;
    let envoy = launch(
        &app,
        &simple,
        &control,
        cfg.envoy_workers,
        cfg.release_bytes,
    )?;
    let started = Instant::now();
    let mut answers = Answers::default();
    let mut points = Vec::new();
    for seg in 0..cfg.segments() {
        let t = seg * cfg.segment_s;
        let spike = cfg.spiking(t);
        let a = segment(streams(cfg, &envoy.url(), seg, t))?;
        let s = memory::sample(&envoy, "segment", 0);
        let p = Point {
            t_s: started.elapsed().as_secs_f64(),
            spike,
            rss_kib: s.rss_kib,
            heap_allocated: s.heap_allocated,
            heap_size: s.heap_size,
            wasm_size_kib: s.wasm_size_kib,
            wasm_rss_kib: s.wasm_rss_kib,
            connections: envoy.stat("http.ingress.downstream_cx_active"),
            completed: a.completed,
        };
        progress(&format!(
            "t={:>6.0}s{} answers {} (app {}, simple {}, 429 {}, shed {}, unintended {}), RSS {:.1} MiB, heap {:.1} of {:.1} MiB, Wasm {:.1} MiB, {} connections",
            p.t_s,
            if spike { " spike" } else { "" },
            a.completed,
            a.app,
            a.simple,
            a.rate_limited,
            a.shed,
            a.unintended + a.errors,
            p.rss_kib as f64 / 1024.0,
            p.heap_allocated as f64 / 1048576.0,
            p.heap_size as f64 / 1048576.0,
            p.wasm_size_kib as f64 / 1024.0,
            p.connections
        ));
        answers.merge(&a);
        points.push(p);
    }
    // The filters flush their counters on their ticks: wait until every count is in (or the
    // bound passes, and the drift is reported).
    let deadline = Instant::now() + Duration::from_secs(cfg.settle_timeout_s);
    let mut d = drifts(&envoy, &answers);
    while d.iter().any(|x| x.counted != x.expected) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
        d = drifts(&envoy, &answers);
    }
    let detections = envoy.stat("wasmcustom.sg.hotkey.detections");
    let envoy_errors: Vec<String> = envoy
        .log()
        .lines()
        .filter(|l| {
            l.contains("[critical]")
                || (l.contains("wasm") && l.contains("[error]"))
                || l.contains("Function: proxy_on")
        })
        .take(20)
        .map(str::to_string)
        .collect();
    let steady: Vec<&Point> = points
        .iter()
        .filter(|p| p.t_s >= cfg.warmup_s as f64)
        .collect();
    let xs: Vec<f64> = steady.iter().map(|p| p.t_s / 60.0).collect();
    let rss: Vec<f64> = steady.iter().map(|p| p.rss_kib as f64).collect();
    let heap: Vec<f64> = steady
        .iter()
        .map(|p| p.heap_allocated as f64 / 1024.0)
        .collect();
    let first = points.first();
    let last = points.last();
    Ok(SoakReport {
        config: cfg.clone(),
        rss_slope_kib_per_min: slope(&xs, &rss),
        heap_slope_kib_per_min: slope(&xs, &heap),
        rss_first_kib: first.map_or(0, |p| p.rss_kib),
        rss_last_kib: last.map_or(0, |p| p.rss_kib),
        rss_max_kib: points.iter().map(|p| p.rss_kib).max().unwrap_or(0),
        heap_first: first.map_or(0, |p| p.heap_allocated),
        heap_last: last.map_or(0, |p| p.heap_allocated),
        answers,
        points,
        drifts: d,
        detections,
        wall_s: started.elapsed().as_secs_f64(),
        envoy_errors,
    })
}

/// The report as a markdown section for docs/BENCHMARKS.md.
pub fn markdown(r: &SoakReport, command: &str) -> String {
    let c = &r.config;
    let a = &r.answers;
    let mib = |k: u64| k as f64 / 1024.0;
    let mut s = String::new();
    let _ = writeln!(s, "## Soak\n\n`{command}`\n");
    let _ = writeln!(
        s,
        "{} s through the whole bundle (envoy.yaml, {} workers), {} s segments: PostView {:.0}/s and PostList {:.0}/s over {} Zipf blogs, {:.0}/s of never-seen blogs, and a {} s spike of {:.0}/s on {} hot blogs every {} s from {} s. Memory sampled after every segment; slopes over the samples after {} s.\n",
        c.seconds, c.envoy_workers, c.segment_s, c.view_rps, c.list_rps, c.blogs, c.churn_rps,
        c.spike_s, c.spike_rps, c.hot_blogs, c.spike_every_s, c.spike_first_s, c.warmup_s
    );
    let _ = writeln!(s, "| figure | value |\n|---|---:|");
    let _ = writeln!(s, "| answers | {} |", a.completed);
    let _ = writeln!(
        s,
        "| app / simple page / 429 / shed / cluster-limit 503 | {} / {} / {} / {} / {} |",
        a.app, a.simple, a.rate_limited, a.shed, a.overflow
    );
    let _ = writeln!(
        s,
        "| unintended answers, errors | {}, {} |",
        a.unintended, a.errors
    );
    let _ = writeln!(s, "| hot-key detections | {} |", r.detections);
    let _ = writeln!(
        s,
        "| RSS first / last / max | {:.1} / {:.1} / {:.1} MiB |",
        mib(r.rss_first_kib),
        mib(r.rss_last_kib),
        mib(r.rss_max_kib)
    );
    let _ = writeln!(
        s,
        "| RSS slope after warm-up | {:+.1} KiB/min ({:+.2} MiB/hour) |",
        r.rss_slope_kib_per_min,
        r.rss_slope_kib_per_min * 60.0 / 1024.0
    );
    let _ = writeln!(
        s,
        "| live heap first / last | {:.1} / {:.1} MiB |",
        r.heap_first as f64 / 1048576.0,
        r.heap_last as f64 / 1048576.0
    );
    let _ = writeln!(
        s,
        "| live heap slope after warm-up | {:+.1} KiB/min ({:+.2} MiB/hour) |",
        r.heap_slope_kib_per_min,
        r.heap_slope_kib_per_min * 60.0 / 1024.0
    );
    let drifted = r.drifted().len();
    let _ = writeln!(
        s,
        "| counters compared / drifted | {} / {} |",
        r.drifts.len(),
        drifted
    );
    let _ = writeln!(s, "| wall time | {:.0} s |\n", r.wall_s);
    let _ = writeln!(s, "| counter | filter or Envoy | client |\n|---|---:|---:|");
    for d in &r.drifts {
        let _ = writeln!(s, "| {} | {} | {} |", d.what, d.counted, d.expected);
    }
    let problems = r.problems();
    let _ = writeln!(
        s,
        "\nVerdict: {}\n",
        if problems.is_empty() {
            "no drift, no unintended answer, no Wasm error.".to_string()
        } else {
            format!("FAILED: {}", problems.join("; "))
        }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let xs: Vec<f64> = (0..10).map(f64::from).collect();
        let ys: Vec<f64> = xs.iter().map(|x| 3.0 * x + 5.0).collect();
        assert!((slope(&xs, &ys) - 3.0).abs() < 1e-9);
        let flat: Vec<f64> = xs
            .iter()
            .map(|x| {
                if (*x as u64).is_multiple_of(2) {
                    1.0
                } else {
                    -1.0
                }
            })
            .collect();
        assert!(slope(&xs, &flat).abs() < 0.25);
        assert_eq!(slope(&[1.0], &[2.0]), 0.0);
    }

    #[test]
    fn spikes_fall_on_their_segments() {
        let c = SoakConfig::default();
        let spikes: Vec<u64> = (0..c.segments())
            .map(|s| s * c.segment_s)
            .filter(|t| c.spiking(*t))
            .collect();
        assert_eq!(spikes.len(), 6 * 3, "{spikes:?}");
        assert_eq!(spikes.first(), Some(&120));
        let s = SoakConfig::smoke();
        let t: Vec<u64> = (0..s.segments())
            .map(|x| x * s.segment_s)
            .filter(|t| s.spiking(*t))
            .collect();
        assert_eq!(t, vec![8, 20]);
        assert!(SoakConfig {
            spike_s: 5,
            ..SoakConfig::default()
        }
        .check()
        .is_err());
    }

    #[test]
    fn answers_are_classified() {
        let rec = |status: u16, h: &[(&str, &str)]| Record {
            intended_us: 0,
            sent_us: 0,
            done_us: 0,
            key: "k".into(),
            status,
            latency_us: 0,
            headers: h
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            attempt: 0,
            retried: false,
            origin_us: 0,
        };
        let mut a = Answers::default();
        a.add(&rec(200, &[("x-upstream", "main")]));
        a.add(&rec(200, &[("x-upstream", "simple")]));
        a.add(&rec(200, &[(SIMPLE_HDR, "hotkey")]));
        a.add(&rec(429, &[("ratelimit-policy", "1;w=1")]));
        a.add(&rec(503, &[]));
        a.add(&rec(503, &[("x-envoy-overloaded", "true")]));
        a.add(&rec(503, &[("x-upstream", "main")]));
        a.add(&rec(429, &[]));
        a.add(&rec(0, &[]));
        assert_eq!(
            (
                a.app,
                a.simple,
                a.rate_limited,
                a.shed,
                a.unintended,
                a.errors
            ),
            (1, 2, 1, 1, 3, 1)
        );
        assert_eq!((a.completed, a.overflow), (8, 1));
    }
}
