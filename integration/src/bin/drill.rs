//! `make drill`: the spike drill (docs/DRILL.md). The demo blog with a finite worker pool
//! under a Zipf baseline, a sudden spike at a few blog IDs, then recovery, with retrying
//! clients; configurations (A) no protection, (B) Envoy's local_ratelimit, (N) nginx
//! limit_req, (C) the spikeguard bundle, one after another. The app's pages call an outbound
//! API through Envoy's egress listener (the breaker in C); `--api-fails` makes it fail during
//! the spike. Prints a table and the targets, writes a JSON report and an SVG plot.

use clap::Parser;
use sg_integration::drill::{self, ApiFailure, DrillConfig, Protection};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "drill")]
struct Args {
    /// Length of each phase (before, spike, after), seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds_per_phase: f64,
    /// The spike's rate as a multiple of the baseline (28 or 40).
    #[arg(long, default_value_t = 28, value_parser = parse_spike)]
    spike: u32,
    /// Number of blog IDs the spike aims at (1-5).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u8).range(1..=5))]
    hot_keys: u8,
    /// Configurations to run, in order (A, B, N, C).
    #[arg(long, default_value = "A,B,N,C")]
    configs: String,
    /// Where to write the JSON report.
    #[arg(long)]
    out_json: Option<PathBuf>,
    /// Where to write the SVG plot.
    #[arg(long)]
    out_svg: Option<PathBuf>,
    /// Seed of every key draw (and of the hot IDs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Baseline rate, requests per second (the app serves 3x this).
    #[arg(long, default_value_t = 80.0)]
    baseline_rps: f64,
    /// The outbound API the pages call fails during the spike: `errors` (every call 503, the
    /// default of a bare `--api-fails`), `hang` (calls hang past the egress route timeout) or
    /// `slow` (220 ms: slow for the breaker, in time for the routes).
    #[arg(long, num_args = 0..=1, default_missing_value = "errors", value_parser = parse_api_fails)]
    api_fails: Option<ApiFailure>,
    /// The egress route's timeout, milliseconds (every configuration), and C's breaker
    /// `slow_call_ms` at half of it; default envoy.yaml's (1,000 and 500).
    #[arg(long, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    egress_timeout_ms: Option<u64>,
}

fn parse_api_fails(s: &str) -> Result<ApiFailure, String> {
    ApiFailure::parse(s).ok_or_else(|| "--api-fails is errors, hang or slow".into())
}

fn parse_spike(s: &str) -> Result<u32, String> {
    match s {
        "28" => Ok(28),
        "40" => Ok(40),
        _ => Err("the spike is 28 or 40 (x the baseline)".into()),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let mut configs = Vec::new();
    for c in a.configs.split(',').filter(|c| !c.trim().is_empty()) {
        configs.push(
            Protection::parse(c)
                .ok_or_else(|| format!("unknown configuration {c:?} (A, B, N, C)"))?,
        );
    }
    if !(a.seconds_per_phase > 0.0 && a.seconds_per_phase <= 600.0) {
        return Err("--seconds-per-phase must be in (0, 600]".into());
    }
    if !(a.baseline_rps > 0.0 && a.baseline_rps <= 1000.0) {
        return Err("--baseline-rps must be in (0, 1000]".into());
    }
    let def = DrillConfig::default();
    // The app is sized so the baseline uses about a third of it.
    let latency_ms = def.latency_ms;
    let workers = ((3.0 * a.baseline_rps * latency_ms as f64 / 1000.0).round() as usize).max(1);
    let cfg = DrillConfig {
        seconds_per_phase: a.seconds_per_phase,
        spike: f64::from(a.spike),
        hot_keys: usize::from(a.hot_keys),
        configs,
        seed: a.seed,
        baseline_rps: a.baseline_rps,
        workers,
        api_fails: a.api_fails,
        egress_timeout_ms: a.egress_timeout_ms,
        ..def
    };
    let report = drill::run(&cfg, |m| println!("{m}"))?;
    println!("\n{}", drill::table(&report));
    if let Some(p) = &a.out_json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
        println!("wrote {}", p.display());
    }
    if let Some(p) = &a.out_svg {
        std::fs::write(p, drill::svg(&report))?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
