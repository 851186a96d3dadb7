//! spikeguard `simplepage`: diverts page traffic to a read-only simple-page backend when the
//! page's key is hot (published by `hotkey`), listed by an operator, when the main backend is
//! overloaded, or always (maintenance switch); and keeps the hottest diverted pages in an
//! in-proxy micro-cache with `stale-while-revalidate` / `stale-if-error`.
//!
//! Pure logic: `config`, `cache` (Cache-Control, cacheability, the slot entry and its
//! freshness, refresh collapsing), `overload` (windowed load with a latency histogram and
//! hysteresis, the published overload state), `decide` (safety rules and triggers), `inbound`
//! (the "simple page inbound" tally), `shadow` (shadow mode's paced log), `filter` (configure, metrics, the tick and the waiters,
//! over `sg_core::host::Host`) and `stream` (the request and response paths and the cache
//! state machine). The adapter (wasm32 only) only forwards proxy-wasm callbacks to them.

pub mod cache;
pub mod config;
pub mod decide;
pub mod filter;
pub mod inbound;
pub mod overload;
pub mod shadow;
pub mod stream;

// Off when the crate is a part of the combined module (`sg-combined`), which has its own.
#[cfg(all(target_arch = "wasm32", feature = "adapter"))]
mod adapter;
