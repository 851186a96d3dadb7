//! `soak`: the whole bundle under 30 minutes of steady mixed traffic with periodic spikes
//! (`sg_integration::soak` describes the run and its checks).
//!
//! ```text
//! soak [--minutes 30] [--seconds N] [--smoke] [--out FILE] [--json FILE] [--workers 2]
//!      [--view-rps 150] [--spike-rps 900] [--spike-every-s 300] [--warmup-s 300]
//! ```
//!
//! Prints one line per segment and a markdown section (appended to `--out`, e.g.
//! docs/BENCHMARKS.md). Exits 1 if a counter drifted, an answer was not an intended one, or
//! Envoy logged a Wasm error. Needs `make build`.

use clap::Parser;
use sg_integration::soak::{self, SoakConfig};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "soak")]
struct Args {
    /// Length of the run in minutes.
    #[arg(long)]
    minutes: Option<u64>,
    /// Length of the run in seconds (overrides --minutes).
    #[arg(long)]
    seconds: Option<u64>,
    /// The short run of `make test` (24 s).
    #[arg(long)]
    smoke: bool,
    /// Markdown file to append the section to.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The whole report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Envoy --concurrency.
    #[arg(long)]
    workers: Option<u32>,
    #[arg(long)]
    view_rps: Option<f64>,
    #[arg(long)]
    spike_rps: Option<f64>,
    #[arg(long)]
    spike_every_s: Option<u64>,
    #[arg(long)]
    warmup_s: Option<u64>,
    /// Bytes Envoy gives back to the OS per second (bootstrap `memory_allocator_manager`).
    #[arg(long)]
    release_bytes: Option<u64>,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let mut cfg = if a.smoke {
        SoakConfig::smoke()
    } else {
        SoakConfig::default()
    };
    if let Some(m) = a.minutes {
        cfg.seconds = m * 60;
    }
    if let Some(s) = a.seconds {
        cfg.seconds = s;
    }
    cfg.envoy_workers = a.workers.unwrap_or(cfg.envoy_workers);
    cfg.view_rps = a.view_rps.unwrap_or(cfg.view_rps);
    cfg.spike_rps = a.spike_rps.unwrap_or(cfg.spike_rps);
    cfg.spike_every_s = a.spike_every_s.unwrap_or(cfg.spike_every_s);
    cfg.warmup_s = a.warmup_s.unwrap_or(cfg.warmup_s);
    cfg.release_bytes = a.release_bytes.unwrap_or(cfg.release_bytes);
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let report = match soak::run(&cfg, |l| eprintln!("{l}")) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::FAILURE;
        }
    };
    let md = soak::markdown(&report, &command);
    println!("{md}");
    if let Some(p) = &a.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        if let Err(e) = std::fs::write(p, text) {
            eprintln!("soak: {}: {e}", p.display());
            return ExitCode::FAILURE;
        }
    }
    if let Some(p) = &a.out {
        let res = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .and_then(|mut f| f.write_all(format!("\n{md}").as_bytes()));
        if let Err(e) = res {
            eprintln!("soak: {}: {e}", p.display());
            return ExitCode::FAILURE;
        }
    }
    let problems = report.problems();
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        for p in problems {
            eprintln!("soak: {p}");
        }
        ExitCode::FAILURE
    }
}
