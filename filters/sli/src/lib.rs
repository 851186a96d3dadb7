//! spikeguard `sli` (issue [7/11]): the SLIs of every request, from the proxy.
//!
//! - `config`: the documented config compiled into a plan;
//! - `classify`: the bounded labels of a request (page type, code, class, protection action)
//!   and its duration buckets;
//! - `series`: metric names in Istio's tag grammar and the per-worker tallies flushed on the
//!   tick (no metric host call per request);
//! - `summary`: the per-page summary every worker merges into shared data (status page);
//! - `status`: the status page's JSON;
//! - `filter`: the request path, the end of a stream and the tick, over the core kit's `Host`;
//! - `adapter` (wasm32 only): `core::wasm::install` of `filter::Filter`.
//!
//! The metric contract (names, labels, buckets): `docs/SLI.md`.

pub mod classify;
pub mod config;
pub mod filter;
pub mod series;
pub mod status;
pub mod summary;

// Off when the crate is a part of the combined module (`sg-combined`), which has its own.
#[cfg(all(target_arch = "wasm32", feature = "adapter"))]
mod adapter;
