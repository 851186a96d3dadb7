//! spikeguard core: what two or more filters share, and nothing one filter alone needs.
//!
//! Everything here is plain Rust over the `host::Host` trait; only `wasm` (wasm32) makes
//! proxy-wasm host calls, and `testing` (feature `test-support`) is the in-memory host that
//! native tests use. docs/ARCHITECTURE.md, "Writing a filter", says how the pieces fit.

pub mod alert;
pub mod codec;
pub mod config;
pub mod error;
pub mod flags;
pub mod fleet;
pub mod fleetslot;
pub mod fleetsync;
pub mod hash;
pub mod host;
pub mod key;
pub mod keys;
pub mod lease;
pub mod matcher;
pub mod metrics;
pub mod normalize;
pub mod oplist;
pub mod ops;
pub mod published;
pub mod shared;
pub mod sketch;
pub mod store;
pub mod tick;
pub mod topview;

#[cfg(any(test, feature = "test-support"))]
pub mod testing;
#[cfg(target_arch = "wasm32")]
pub mod wasm;

pub use error::ConfigError;
