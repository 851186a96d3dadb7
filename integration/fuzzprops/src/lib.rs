//! The properties spikeguard's fuzz targets check, as plain functions so that they also run
//! on stable in `make test`: each `pub fn <target>(data: &[u8])` panics when a property is
//! violated (or when the code under test panics, which on a request path would be a trap).
//!
//! `filters/fuzz/fuzz_targets/<target>.rs` (cargo-fuzz, libFuzzer, nightly) is a one-line
//! wrapper of the function of the same name; `tests/replay.rs` replays every committed
//! corpus file (`filters/fuzz/corpus/<target>/`) and crash regression
//! (`filters/fuzz/regressions/<target>/`) through the same functions. [`TARGETS`] lists
//! them; README, "Fuzzing", says what each checks.
#![allow(clippy::indexing_slicing)] // a property check fails loudly; it is not a request path
#![allow(clippy::panic)] // a violated property is a panic, which is what a fuzzer reports

pub mod bundle;
pub mod codecs;
pub mod configs;
pub mod oplist;
pub mod ops;
pub mod text;

pub use bundle::bundle;
pub use codecs::codecs;
pub use configs::{
    config_breaker, config_combined, config_hotkey, config_ratelimit, config_simplepage, config_sli,
};
pub use oplist::oplist;
pub use ops::{sketch, window};
pub use text::{cache_control, key, normalize, query_cookie};

/// A fuzz target: its name (the file name in `filters/fuzz/fuzz_targets/` and the corpus
/// directory) and its property body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, in the order `make fuzz` runs them.
pub const TARGETS: &[Target] = &[
    ("config_ratelimit", config_ratelimit),
    ("config_hotkey", config_hotkey),
    ("config_simplepage", config_simplepage),
    ("config_breaker", config_breaker),
    ("config_sli", config_sli),
    ("config_combined", config_combined),
    ("normalize", normalize),
    ("key", key),
    ("query_cookie", query_cookie),
    ("cache_control", cache_control),
    ("oplist", oplist),
    ("codecs", codecs),
    ("sketch", sketch),
    ("window", window),
    ("bundle", bundle),
];

/// Text from fuzzer bytes as a filter sees it: header values and paths reach the filters as
/// `&str` (the adapter converts lossily), so invalid UTF-8 becomes U+FFFD.
pub fn lossy(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}
