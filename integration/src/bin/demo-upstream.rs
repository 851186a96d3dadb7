//! Demo upstream server.
//!
//! ```text
//! demo-upstream --port N --name main --capacity 64 --latency-ms 20 --queue-timeout-ms 1000 \
//!     [--max-queue N] [--egress-url URL] [--cache-control "..."]
//! ```
//! Prints `listening on 127.0.0.1:PORT` and serves until SIGTERM/SIGINT.

use std::process::ExitCode;

use sg_integration::upstream::{Upstream, UpstreamConfig};

const USAGE: &str =
    "usage: demo-upstream [--port N] [--name NAME] [--capacity N] [--latency-ms N] \
[--queue-timeout-ms N] [--max-queue N] [--egress-url URL] [--cache-control VALUE]";

fn parse() -> Result<(UpstreamConfig, u16), String> {
    let mut cfg = UpstreamConfig::default();
    let mut port = 0u16;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.to_string());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("missing value for {flag}\n{USAGE}"))?;
        let num = |v: &str| -> Result<u64, String> {
            v.parse::<u64>()
                .map_err(|e| format!("bad value for {flag}: {v}: {e}"))
        };
        match flag.as_str() {
            "--port" => port = u16::try_from(num(&value)?).map_err(|e| format!("bad port: {e}"))?,
            "--name" => cfg.name = value,
            "--capacity" => cfg.capacity = num(&value)? as usize,
            "--latency-ms" => cfg.latency_ms = num(&value)?,
            "--queue-timeout-ms" => cfg.queue_timeout_ms = num(&value)?,
            "--max-queue" => cfg.max_queue = num(&value)? as usize,
            "--egress-url" => cfg.egress_url = Some(value),
            "--cache-control" => cfg.cache_control = Some(value),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    Ok((cfg, port))
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> ExitCode {
    let (cfg, port) = match parse() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let name = cfg.name.clone();
    let upstream = match Upstream::start_on(cfg, port) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("demo-upstream: cannot listen on 127.0.0.1:{port}: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("listening on 127.0.0.1:{}", upstream.port);
    eprintln!("demo-upstream {name} serving on {}", upstream.url());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo-upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(wait_for_signal());
    drop(upstream);
    ExitCode::SUCCESS
}
