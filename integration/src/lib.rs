//! spikeguard test harness: Envoy launcher, demo upstream, load generator, HTTP client, waits.

pub mod alertmanager;
pub mod control;
pub mod drill;
pub mod envoy;
pub mod http;
pub mod loadgen;
pub mod memory;
pub mod nginx;
pub mod prometheus;
pub mod server;
pub mod slo;
pub mod upstream;
pub mod wait;
