//! `slo`: generates config/prometheus/rules/spikeguard-*.yml and config/grafana/dashboards/*.json
//! from config/slo.yaml (`make slo`). `--check` writes nothing and exits 1 if the committed
//! files differ from what would be generated.

use clap::Parser;
use sg_integration::slo;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(about = "Generate the SLO rules and dashboards from config/slo.yaml")]
struct Args {
    /// Compare the committed files with the generated ones instead of writing them.
    #[arg(long)]
    check: bool,
    /// Repository root (default: the one this binary was built from).
    #[arg(long)]
    root: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = args.root.unwrap_or_else(slo::repo_root);
    if args.check {
        match slo::check(&root) {
            Ok(Ok(())) => {
                println!("slo: generated files are up to date");
                ExitCode::SUCCESS
            }
            Ok(Err(diffs)) => {
                for d in diffs {
                    eprintln!("slo: {d}");
                }
                eprintln!("slo: run `make slo` and commit the result");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("slo: {e}");
                ExitCode::FAILURE
            }
        }
    } else {
        match slo::write(&root) {
            Ok(written) => {
                for w in &written {
                    println!("slo: wrote {w}");
                }
                if written.is_empty() {
                    println!("slo: nothing changed");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("slo: {e}");
                ExitCode::FAILURE
            }
        }
    }
}
