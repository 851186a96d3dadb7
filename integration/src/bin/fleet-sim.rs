//! `fleet-sim`: local-only vs synced fleet limiting and hot-key detection for N Envoys on a
//! virtual clock (`sg_integration::fleetsim` describes the model).
//!
//! ```text
//! fleet-sim [--envoys 10,100] [--seconds 10] [--skew 0.8] [--sync-ms 250] [--offered-rps 28000]
//! ```
//!
//! Prints a markdown table, one row per N. Deterministic: the same arguments give the same
//! table on any machine.

use clap::Parser;
use sg_integration::fleetsim::{self, SimConfig};

#[derive(Debug, Parser)]
#[command(name = "fleet-sim")]
struct Args {
    /// Fleet sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100")]
    envoys: Vec<usize>,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Load-balancer skew (Envoy i gets 1/(i+1)^skew of the traffic, normalised).
    #[arg(long, default_value_t = 0.8)]
    skew: f64,
    #[arg(long, default_value_t = 250)]
    sync_ms: u64,
    /// Requests per second offered for the limited blog (28x its 1,000/s limit).
    #[arg(long, default_value_t = 28_000.0)]
    offered_rps: f64,
}

fn main() {
    let a = Args::parse();
    println!("{}", fleetsim::HEADER);
    for n in a.envoys {
        let mut c = SimConfig::new(n);
        c.seconds = a.seconds.max(3);
        c.skew = a.skew;
        c.sync_ms = a.sync_ms;
        c.offered_rps = a.offered_rps;
        println!("{}", fleetsim::row(&fleetsim::run(&c)));
    }
}
