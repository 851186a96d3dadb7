//! Shared helpers for the end-to-end tests: a bundle with one upstream behind it.

use serde_json::Value;
use sg_integration::control::Control;
use sg_integration::envoy::{Bundle, Envoy};
use sg_integration::loadgen::{KeyMix, LoadConfig, Report};
use sg_integration::upstream::{Upstream, UpstreamConfig};

pub use sg_integration::{control, envoy, http, loadgen, nginx, upstream};

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
    pub fn start(filters: &[(&str, Value)], concurrency: u32) -> Stack {
        Self::start_with(filters, concurrency, UpstreamConfig::default(), |_| {})
    }

    pub fn start_with(
        filters: &[(&str, Value)],
        concurrency: u32,
        app: UpstreamConfig,
        edit: impl FnOnce(&mut Bundle),
    ) -> Stack {
        let app = Upstream::start(app).unwrap_or_else(|e| panic!("upstream: {e}"));
        let simple = Upstream::start(UpstreamConfig {
            name: "simple".into(),
            capacity: 1024,
            cache_control: Some("public, max-age=600".into()),
            ..UpstreamConfig::default()
        })
        .unwrap_or_else(|e| panic!("simple-page upstream: {e}"));
        let control = Control::start().unwrap_or_else(|e| panic!("control plane: {e}"));
        let mut b = Bundle::load().unwrap_or_else(|e| panic!("bundle: {e}"));
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
        let envoy = b
            .launch(concurrency)
            .unwrap_or_else(|e| panic!("envoy: {e}"));
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
