//! spikeguard test harness: Envoy launcher, demo upstream, load generator, tiny HTTP client.

pub mod control;
pub mod envoy;
pub mod http;
pub mod loadgen;
pub mod nginx;
pub mod server;
pub mod upstream;
