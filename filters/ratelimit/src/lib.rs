//! spikeguard `ratelimit`: nginx `limit_req` semantics (rate, burst, nodelay / delay /
//! delay=N, dry run) as a proxy-wasm filter, exact across Envoy workers through shared data.
//!
//! `config`, `limiter`, `engine` and `filter` are plain Rust over `sg_core::host::Host`,
//! tested natively and on wasm32; `adapter` (wasm32 only) forwards proxy-wasm callbacks to
//! `filter`.

pub mod config;
pub mod engine;
pub mod filter;
pub mod fleet;
pub mod limiter;

// Off when the crate is a part of the combined module (`sg-combined`), which has its own.
#[cfg(all(target_arch = "wasm32", feature = "adapter"))]
mod adapter;
