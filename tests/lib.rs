//! Shared helpers for the end-to-end tests: a bundle with one upstream behind it.

use serde_json::Value;
use sg_integration::control::Control;
use sg_integration::envoy::{Bundle, Envoy, HotRestart};
use sg_integration::loadgen::{KeyMix, LoadConfig, Record, Report};
use sg_integration::upstream::{Upstream, UpstreamConfig};

pub use sg_integration::{control, envoy, http, loadgen, nginx, oci, registry, upstream, wait};

/// A demo upstream that cannot be a test's bottleneck: workers and queue far above any load a
/// test offers, and a queue timeout longer than any test waits. Tests assert what spikeguard
/// decides; a finite app is only used where the app's own limit is the subject.
pub fn ample(name: &str) -> UpstreamConfig {
    UpstreamConfig {
        name: name.into(),
        capacity: 100_000,
        queue_timeout_ms: 60_000,
        max_queue: 100_000,
        ..UpstreamConfig::default()
    }
}

/// Every spikeguard filter of envoy.yaml with the config it ships with, in chain order
/// (ingress, then egress): for tests that run the whole shipped bundle.
pub fn shipped() -> Vec<(&'static str, Value)> {
    let mut b = Bundle::load().unwrap_or_else(|e| panic!("bundle: {e}"));
    [
        "sli",
        "hotkey",
        "simplepage",
        "ratelimit",
        "sli_egress",
        "breaker",
    ]
    .into_iter()
    .map(|f| {
        let cfg = b
            .filter_config(f)
            .unwrap_or_else(|| panic!("no config of {f} in envoy.yaml"));
        (f, cfg)
    })
    .collect()
}

/// Envoy running the bundle with only the listed spikeguard filters, in front of a fresh
/// demo upstream. Field order matters: Envoy is dropped (killed) before the upstream.
pub struct Stack {
    pub envoy: Envoy,
    pub app: Upstream,
    /// The read-only simple-page backend (`simple_page` cluster).
    pub simple: Upstream,
    /// The operator control plane (`spikeguard_control` cluster): block list, webhook.
    pub control: Control,
}

impl Stack {
    /// The bundle in front of an [`ample`] app.
    pub fn start(filters: &[(&str, Value)], concurrency: u32) -> Stack {
        Self::start_with(filters, concurrency, ample("main"), |_| {})
    }

    /// The bundle with Envoy answering every ingress request itself (`direct_response`, 200
    /// `ok`) after the filters ran: for tests that need throughput or count outcomes, so
    /// that only a spikeguard filter can refuse a request.
    pub fn start_direct(filters: &[(&str, Value)], concurrency: u32) -> Stack {
        Self::start_with(filters, concurrency, ample("main"), |b| {
            b.answer_directly("ingress", "ok")
                .unwrap_or_else(|e| panic!("{e}"))
        })
    }

    pub fn start_with(
        filters: &[(&str, Value)],
        concurrency: u32,
        app: UpstreamConfig,
        edit: impl FnOnce(&mut Bundle),
    ) -> Stack {
        Self::assemble(filters, app, edit, |b| b.launch(concurrency))
    }

    /// [`Stack::start_with`] with Envoy's hot restart enabled ([`Bundle::launch_hot`]):
    /// `stack.envoy.hot_restart()` starts the next epoch.
    pub fn start_hot(
        filters: &[(&str, Value)],
        concurrency: u32,
        hot: HotRestart,
        edit: impl FnOnce(&mut Bundle),
    ) -> Stack {
        Self::assemble(filters, ample("main"), edit, |b| {
            b.launch_hot(concurrency, hot)
        })
    }

    fn assemble(
        filters: &[(&str, Value)],
        app: UpstreamConfig,
        edit: impl FnOnce(&mut Bundle),
        launch: impl FnOnce(&Bundle) -> std::io::Result<Envoy>,
    ) -> Stack {
        let app = Upstream::start(app).unwrap_or_else(|e| panic!("upstream: {e}"));
        let simple = Upstream::start(UpstreamConfig {
            cache_control: Some("public, max-age=600".into()),
            ..ample("simple")
        })
        .unwrap_or_else(|e| panic!("simple-page upstream: {e}"));
        let control = Control::start().unwrap_or_else(|e| panic!("control plane: {e}"));
        let mut b = Bundle::load().unwrap_or_else(|e| panic!("bundle: {e}"));
        // Envoy's default circuit breakers (1,024 requests per cluster) are not what any test
        // is about: a 503 from them would be counted as if spikeguard had refused.
        b.raise_circuit_breakers(1_000_000);
        let names: Vec<&str> = filters.iter().map(|(n, _)| *n).collect();
        b.keep_filters(&names);
        for (name, cfg) in filters {
            b.set_filter_config(name, cfg)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        b.set_cluster_port("main_app", app.port)
            .unwrap_or_else(|e| panic!("{e}"));
        b.set_cluster_port("outbound_api", app.port)
            .unwrap_or_else(|e| panic!("{e}"));
        b.set_cluster_port("simple_page", simple.port)
            .unwrap_or_else(|e| panic!("{e}"));
        b.set_cluster_port("spikeguard_control", control.port)
            .unwrap_or_else(|e| panic!("{e}"));
        edit(&mut b);
        let envoy = launch(&b).unwrap_or_else(|e| panic!("envoy: {e}"));
        Stack {
            envoy,
            app,
            simple,
            control,
        }
    }

    pub fn port(&self) -> u16 {
        self.envoy.ingress()
    }

    pub fn get(&self, path: &str) -> http::Response {
        http::get(self.port(), path).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// The egress listener's port (the app's calls to other services, `outbound_api`).
    pub fn egress(&self) -> u16 {
        self.envoy.port("egress")
    }

    /// `GET path` on the egress listener.
    pub fn egress_get(&self, path: &str) -> http::Response {
        http::get(self.egress(), path).unwrap_or_else(|e| panic!("GET egress {path}: {e}"))
    }
}

/// Open-loop load on `/PostView?blogId={key}&logNo=1` at `rps` for `ms`, every request
/// recorded (status and headers), no client-side drops below 10,000 in flight.
pub fn load_pages(url: &str, rps: f64, ms: u64, keys: KeyMix) -> Report {
    loadgen::run(&LoadConfig {
        target: url.to_string(),
        rate_rps: rps,
        duration_ms: ms,
        path_template: "/PostView?blogId={key}&logNo=1".into(),
        keys,
        record: true,
        max_in_flight: 10_000,
        ..LoadConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// `key`'s requests in a recorded run, by send time, each with whether `diverted` holds for
/// its answer; and the send time of the first diverted one, which must come within a second
/// (one detection window) of the run's start (`context` is printed if it never comes).
pub fn first_diverted(
    report: &Report,
    key: &str,
    diverted: impl Fn(&Record) -> bool,
    context: &dyn std::fmt::Debug,
) -> (Vec<(u64, bool)>, u64) {
    let hot: Vec<(u64, bool)> = report
        .records
        .iter()
        .filter(|r| r.key == key)
        .map(|r| (r.sent_us, diverted(r)))
        .collect();
    let began = report.records.iter().map(|r| r.sent_us).min().unwrap_or(0);
    let first = hot.iter().filter(|h| h.1).map(|h| h.0).min();
    let first = first.unwrap_or_else(|| panic!("the hot key was never diverted: {context:?}"));
    assert!(
        first - began <= 1_000_000,
        "first diverted {} ms after the spike began",
        (first - began) / 1000
    );
    (hot, first)
}
