//! spikeguard `breaker` (issue [6/11]): one circuit breaker, bulkhead and set of feature flags
//! per outbound API for the whole Envoy, on the egress listener.
//!
//! - `machine`: resilience4j's states and transitions on an injected clock, and the state's
//!   shared-data codec;
//! - `window`: the sliding windows, as per-tick buckets that workers merge;
//! - `config`: the documented config compiled into a plan;
//! - `filter`: the request path, the end of a stream and the tick, over the core kit's `Host`;
//! - `adapter` (wasm32 only): `core::wasm::install` of `filter::Filter`.
//!
//! Where this differs from resilience4j and why: `docs/BREAKER.md`.

pub mod config;
pub mod filter;
pub mod machine;
pub mod window;

// Off when the crate is a part of the combined module (`sg-combined`), which has its own.
#[cfg(all(target_arch = "wasm32", feature = "adapter"))]
mod adapter;
