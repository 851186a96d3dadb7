//! spikeguard `combined`: the five filters (`sli`, `hotkey`, `simplepage`, `ratelimit`,
//! `breaker`) in one proxy-wasm module and one HTTP context, configured by one JSON object
//! with a section per filter.
//!
//! A request crosses the Wasm boundary once per callback instead of once per filter, and the
//! parts share one read of each request header, property and the clock (`part`). The parts
//! are the filters' own crates, unchanged: `filter::Combined` is a `sg_core::host::Plugin`
//! that drives theirs in the chain's order, with Envoy's filter-chain semantics (a local reply
//! ends the request for the parts after it; a paused request resumes into the next part; the
//! response goes through the parts in reverse order). `adapter` (wasm32 only) is the entry
//! point. docs/COMBINED.md says when to pick it over five `WasmPlugin`s.

pub mod config;
pub mod filter;
pub mod part;

#[cfg(target_arch = "wasm32")]
mod adapter;
