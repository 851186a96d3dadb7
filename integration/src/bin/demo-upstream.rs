//! Demo upstream server.
//!
//! ```text
//! demo-upstream --port N --name main --capacity 64 --latency-ms 20 --queue-timeout-ms 1000 \
//!     [--max-queue N] [--egress-url URL] [--cache-control "..."]
//! ```
//! Prints `listening on 127.0.0.1:PORT` and serves until SIGTERM/SIGINT.

use std::process::ExitCode;

use clap::Parser;
use sg_integration::upstream::{Upstream, UpstreamConfig};

/// Demo upstream: a blog service with a finite worker pool, on 127.0.0.1.
#[derive(Debug, Parser)]
#[command(name = "demo-upstream")]
struct Args {
    /// Port on 127.0.0.1 (0 = ephemeral).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Served in the `x-upstream` header and in bodies.
    #[arg(long, default_value = "main")]
    name: String,
    /// Requests served at once (worker pool size).
    #[arg(long, default_value_t = UpstreamConfig::default().capacity)]
    capacity: usize,
    /// Service time of one request.
    #[arg(long, default_value_t = UpstreamConfig::default().latency_ms)]
    latency_ms: u64,
    /// A request waiting longer than this for a worker gets `503 thread full`.
    #[arg(long, default_value_t = UpstreamConfig::default().queue_timeout_ms)]
    queue_timeout_ms: u64,
    /// A request arriving while more than this many wait gets `503 thread full` at once.
    #[arg(long, default_value_t = UpstreamConfig::default().max_queue)]
    max_queue: usize,
    /// Base URL (`http://127.0.0.1:port`) called by `/api-proxy`.
    #[arg(long)]
    egress_url: Option<String>,
    /// `Cache-Control` value added to 200 page responses.
    #[arg(long)]
    cache_control: Option<String>,
}

impl Args {
    fn config(self) -> (UpstreamConfig, u16) {
        let cfg = UpstreamConfig {
            name: self.name,
            capacity: self.capacity,
            latency_ms: self.latency_ms,
            queue_timeout_ms: self.queue_timeout_ms,
            max_queue: self.max_queue,
            egress_url: self.egress_url,
            page_calls_egress: false,
            cache_control: self.cache_control,
        };
        (cfg, self.port)
    }
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
    let (cfg, port) = Args::parse().config();
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
