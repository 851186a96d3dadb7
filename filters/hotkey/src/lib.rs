//! spikeguard `hotkey`: names the hot keys (blog ID, post ID) of each rule with bounded
//! memory, and sheds, diverts, limits or only observes their traffic while everyone else is
//! served. Pure logic in `sketch` (per-worker counting) and `window` (the shared, windowed
//! view), both from `sg_core`,, `detect` (thresholds and hysteresis), `shed` (what is published and the
//! per-request decision), `top` (the alert's top keys of 3 minutes), and `filter` (the request
//! path and the tick over `sg_core::host::Host`, tested natively); the adapter (wasm32 only)
//! only forwards proxy-wasm callbacks to `filter`.

pub mod config;
pub mod detect;
pub mod filter;
pub mod fleet;
pub mod shed;
pub mod top;

/// Space-Saving and the shared windowed view live in `sg_core` (one implementation, also
/// `sli`'s top URLs); re-exported under their old paths.
pub use sg_core::sketch;
pub use sg_core::topview as window;

// Off when the crate is a part of the combined module (`sg-combined`), which has its own.
#[cfg(all(target_arch = "wasm32", feature = "adapter"))]
mod adapter;
