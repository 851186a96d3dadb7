//! spikeguard core: what two or more filters share, and nothing one filter alone needs.
//!
//! Everything here is plain Rust with no host calls except the `host` module, which exists
//! only on wasm32 and adapts the proxy-wasm host to the traits defined here.

pub mod alert;
pub mod codec;
pub mod error;
pub mod hash;
pub mod key;
pub mod lease;
pub mod matcher;
pub mod metrics;
pub mod normalize;
pub mod oplist;
pub mod shared;

#[cfg(target_arch = "wasm32")]
pub mod host;
#[cfg(target_arch = "wasm32")]
pub mod ops;

pub use error::ConfigError;
