//! `memory`: Envoy's RSS and live heap with the whole bundle after 1,000,000 distinct keys,
//! against bare Envoy and one no-op Wasm filter, and per micro-cache slot configuration
//! (`sg_integration::memory` describes the method).
//!
//! ```text
//! memory [--keys 1000000] [--quick] [--out FILE] [--settle-s 30] [--fronts bare,noop,bundle]
//!        [--cache-keys 60000] [--page-bytes 16384] [--no-cache] [--concurrency 2]
//!        [--threads 2] [--connections 64] [--stage-timeout-s 1800] [--json FILE]
//! ```
//!
//! Prints a markdown section and appends it to `--out` (e.g. `docs/BENCHMARKS.md`). Needs
//! `make build` (the wasm modules) and `wrk`.

use clap::Parser;
use sg_integration::memory::{self, CacheVariant, Front, MemoryConfig};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "memory")]
struct Args {
    /// Distinct keys (one request each) per front.
    #[arg(long)]
    keys: Option<u64>,
    /// Smoke run: 20,000 keys (unless --keys), 3 s settle, 6,000 pages per slot configuration.
    #[arg(long)]
    quick: bool,
    /// Markdown file to append the section to.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The whole report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Idle seconds before the last sample.
    #[arg(long)]
    settle_s: Option<u64>,
    /// Fronts to run, in order (bare, noop, bundle).
    #[arg(long, value_delimiter = ',', default_value = "bare,noop,bundle")]
    fronts: Vec<String>,
    /// Distinct pages per micro-cache slot configuration.
    #[arg(long)]
    cache_keys: Option<u64>,
    /// Body size of the slot runs' simple pages, bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    page_bytes: usize,
    /// Skip the micro-cache slot configurations.
    #[arg(long)]
    no_cache: bool,
    /// Envoy --concurrency.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// wrk connections.
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Bound of one wrk stage, seconds.
    #[arg(long)]
    stage_timeout_s: Option<u64>,
}

fn config(a: &Args) -> Result<MemoryConfig, String> {
    let base = if a.quick {
        MemoryConfig::quick()
    } else {
        MemoryConfig::default()
    };
    let mut fronts = Vec::new();
    for f in a.fronts.iter().filter(|f| !f.trim().is_empty()) {
        fronts.push(
            Front::parse(f).ok_or_else(|| format!("unknown front {f:?} (bare, noop, bundle)"))?,
        );
    }
    if a.page_bytes == 0 || a.page_bytes > 512 * 1024 {
        return Err("--page-bytes must be from 1 to 524288".into());
    }
    Ok(MemoryConfig {
        keys: a.keys.unwrap_or(base.keys),
        settle_s: a.settle_s.unwrap_or(base.settle_s),
        envoy_workers: a.concurrency,
        wrk_threads: a.threads,
        connections: a.connections,
        stage_timeout_s: a.stage_timeout_s.unwrap_or(base.stage_timeout_s),
        fronts,
        cache: if a.no_cache {
            Vec::new()
        } else {
            CacheVariant::defaults()
        },
        cache_keys: a.cache_keys.unwrap_or(base.cache_keys),
        page_bytes: a.page_bytes,
        ..base
    })
}

fn run(a: &Args) -> Result<(), String> {
    let cfg = config(a)?;
    let report = memory::run(&cfg, |m| eprintln!("{m}")).map_err(|e| e.to_string())?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = format!("memory {}", args.join(" "));
    let md = memory::markdown(&report, command.trim());
    println!("{md}");
    if let Some(p) = &a.out {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        f.write_all(md.as_bytes())
            .map_err(|e| format!("{}: {e}", p.display()))?;
        eprintln!("appended to {}", p.display());
    }
    if let Some(p) = &a.json {
        let v = serde_json::to_vec_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(p, v).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let a = Args::parse();
    match run(&a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memory: {e}");
            ExitCode::FAILURE
        }
    }
}
