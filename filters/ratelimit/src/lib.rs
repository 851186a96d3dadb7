//! spikeguard `ratelimit`: nginx `limit_req` semantics (rate, burst, nodelay / delay /
//! delay=N, dry run) as a proxy-wasm filter, exact across Envoy workers through shared data.
//!
//! `config`, `limiter` and `engine` are plain Rust, tested natively and on wasm32;
//! `adapter` (wasm32 only) turns a verdict into continue / pause-and-resume / local reply.

pub mod config;
pub mod engine;
pub mod limiter;

#[cfg(target_arch = "wasm32")]
mod adapter;
