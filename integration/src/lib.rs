pub mod envoy;
pub mod loadgen;
pub mod upstream;
