//! `spikeguard check FILE...`: validates spikeguard filter configs (JSON), Istio manifests and
//! Envoy bootstraps such as the bundle with exactly the code the filters run at configure
//! time, and every Istio resource in a manifest against Istio's CRD schema (embedded);
//! prints each refusal with its field path; exits 1 if any was refused, 2 on bad usage. For
//! users' CI (README, "Checking configs").

use clap::{Parser, Subcommand};
use sg_check::FILTERS;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "spikeguard", about = "spikeguard tools")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Validate configs: filter JSON (`<filter>.json`), Istio manifests (YAML: WasmPlugin,
    /// TrafficExtension, ServiceEntry, DestinationRule, VirtualService), Envoy bootstrap YAML.
    Check {
        /// The filter a JSON file is for, when its name does not say
        /// (sli, hotkey, simplepage, ratelimit, breaker, combined).
        #[arg(long)]
        filter: Option<String>,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let Cmd::Check { filter, files } = Args::parse().cmd;
    if let Some(f) = &filter {
        if !FILTERS.contains(&f.as_str()) {
            eprintln!("spikeguard: --filter {f:?}: one of {}", FILTERS.join(", "));
            return ExitCode::from(2);
        }
    }
    let mut refused = 0;
    for file in &files {
        let r = sg_check::check_file(file, filter.as_deref());
        for f in &r.findings {
            println!("{f}");
        }
        refused += r.findings.len();
        if r.findings.is_empty() {
            if r.checked == 0 && r.resources == 0 {
                println!("{}: no spikeguard config found", file.display());
            } else if r.resources == 0 {
                println!("{}: ok ({} config(s))", file.display(), r.checked);
            } else {
                println!(
                    "{}: ok ({} config(s), {} Istio resource(s) schema-checked)",
                    file.display(),
                    r.checked,
                    r.resources
                );
            }
        }
    }
    if refused > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
