//! Open-loop load generator; prints the report as JSON.
//!
//! ```text
//! loadgen --target http://127.0.0.1:10000 --rate 200 --duration-ms 5000 \
//!     --path "/PostView?blogId={key}&logNo=1" --zipf-n 1000 --zipf-s 1.0 \
//!     [--hot key=share]... [--unique] [--header "k: v"]... [--key-prefix k] \
//!     [--max-in-flight N] [--timeout-ms N] [--seed N]
//! ```

use std::process::ExitCode;

use clap::Parser;
use sg_integration::loadgen::{run, KeyMix, LoadConfig};

/// Open-loop load generator (constant arrival rate); prints the report as JSON.
#[derive(Debug, Parser)]
#[command(name = "loadgen")]
struct Args {
    /// Base URL, `http://127.0.0.1:PORT`.
    #[arg(long, default_value_t = LoadConfig::default().target)]
    target: String,
    /// Arrival rate, requests per second.
    #[arg(long, default_value_t = LoadConfig::default().rate_rps)]
    rate: f64,
    /// Length of the schedule.
    #[arg(long, default_value_t = LoadConfig::default().duration_ms)]
    duration_ms: u64,
    /// Path and query; `{key}` is replaced by the request's key.
    #[arg(long, default_value_t = LoadConfig::default().path_template)]
    path: String,
    /// Number of Zipf ranks (0 = one fixed key).
    #[arg(long, default_value_t = KeyMix::default().zipf_n)]
    zipf_n: usize,
    /// Zipf exponent.
    #[arg(long, default_value_t = KeyMix::default().zipf_s)]
    zipf_s: f64,
    /// A hot key and its share of all traffic, `key=share` (repeatable).
    #[arg(long, value_parser = hot_key)]
    hot: Vec<(String, f64)>,
    /// Every request not given a hot key gets a fresh distinct key.
    #[arg(long)]
    unique: bool,
    /// A request header, `"name: value"` (repeatable; `{key}` is replaced in values).
    #[arg(long, value_parser = header)]
    header: Vec<(String, String)>,
    /// Prefix of generated keys.
    #[arg(long, default_value_t = KeyMix::default().key_prefix)]
    key_prefix: String,
    /// A request due while this many are outstanding is not sent.
    #[arg(long, default_value_t = LoadConfig::default().max_in_flight)]
    max_in_flight: usize,
    /// Per-request timeout.
    #[arg(long, default_value_t = LoadConfig::default().timeout_ms)]
    timeout_ms: u64,
    /// Seed of the key draw.
    #[arg(long, default_value_t = KeyMix::default().seed)]
    seed: u64,
}

fn hot_key(v: &str) -> Result<(String, f64), String> {
    let (k, s) = v.rsplit_once('=').ok_or("expected key=share")?;
    let share = s.parse().map_err(|e| format!("{e}"))?;
    Ok((k.to_string(), share))
}

fn header(v: &str) -> Result<(String, String), String> {
    let (k, v) = v.split_once(':').ok_or("expected \"name: value\"")?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

impl Args {
    fn config(self) -> LoadConfig {
        LoadConfig {
            target: self.target,
            rate_rps: self.rate,
            duration_ms: self.duration_ms,
            path_template: self.path,
            keys: KeyMix {
                zipf_n: self.zipf_n,
                zipf_s: self.zipf_s,
                hot: self.hot,
                key_prefix: self.key_prefix,
                unique: self.unique,
                seed: self.seed,
            },
            headers: self.header,
            max_in_flight: self.max_in_flight,
            timeout_ms: self.timeout_ms,
            ..LoadConfig::default()
        }
    }
}

fn main() -> ExitCode {
    let cfg = Args::parse().config();
    match run(&cfg) {
        Ok(report) => match serde_json::to_string_pretty(&report) {
            Ok(s) => {
                println!("{s}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("loadgen: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}
