//! `images`: one Wasm OCI image per filter and the combined module, as OCI layouts in
//! `target/images/<name>/` (`sg_integration::oci` describes the layouts and why they are
//! reproducible), plus `target/images/images.json`.
//!
//! ```text
//! images [--out target/images] [--layout compat|wasm] [--tag 0.1.0]
//!        [--modules target/wasm32-wasip1/release] [--only hotkey,sli] [--pin deploy/istio]
//! ```
//!
//! Push one with skopeo: `skopeo copy --dest-tls-verify=false oci:target/images/hotkey:0.1.0
//! docker://REGISTRY/spikeguard/hotkey:0.1.0`. `--pin DIR` rewrites the `sha256:` of every
//! WasmPlugin / TrafficExtension under DIR whose url names one of these images to its
//! manifest digest (what Istio compares for `oci://` urls).

use clap::Parser;
use sg_integration::envoy::repo_root;
use sg_integration::oci::{self, Layout};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "images")]
struct Args {
    /// Where the OCI layouts go (one directory per image).
    #[arg(long)]
    out: Option<PathBuf>,
    /// compat (one tar+gzip layer holding plugin.wasm) or wasm (the two-layer Wasm variant).
    #[arg(long, default_value = "compat")]
    layout: Layout,
    /// Image tag (default: the workspace version).
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    tag: String,
    /// Directory of the release modules.
    #[arg(long)]
    modules: Option<PathBuf>,
    /// Only these images.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Rewrite the sha256 pins of the manifests under this directory.
    #[arg(long)]
    pin: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let root = repo_root();
    let out = args.out.unwrap_or_else(|| root.join("target/images"));
    let modules = args
        .modules
        .unwrap_or_else(|| root.join("target/wasm32-wasip1/release"));
    let names: Vec<&str> = oci::IMAGES
        .iter()
        .copied()
        .filter(|n| args.only.is_empty() || args.only.iter().any(|o| o == n))
        .collect();
    if names.is_empty() {
        eprintln!(
            "images: --only {:?} names no image of {:?}",
            args.only,
            oci::IMAGES
        );
        return ExitCode::from(2);
    }
    let built = match oci::build_all(&modules, &out, &args.tag, args.layout, &names) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("images: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("| image | module bytes | image bytes | manifest digest (WasmPlugin sha256) |");
    println!("|---|---:|---:|---|");
    for b in &built {
        println!(
            "| spikeguard/{}:{} | {} | {} | `{}` |",
            b.name, b.tag, b.module_bytes, b.image_bytes, b.manifest_digest
        );
    }
    println!(
        "layouts in {} ({:?}); summary in images.json",
        out.display(),
        args.layout
    );
    if let Some(dir) = args.pin {
        let digests = built
            .iter()
            .map(|b| (b.name.clone(), b.manifest_digest.clone()))
            .collect();
        match oci::pin_manifests(&dir, &digests) {
            Ok(changed) => {
                for (file, name, old, new) in &changed {
                    println!("pinned {} {name}: {old} -> {new}", file.display());
                }
                println!("{} pin(s) changed under {}", changed.len(), dir.display());
            }
            Err(e) => {
                eprintln!("images: --pin {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
