//! spikeguard `breaker` (in progress, issue [6/11]): one circuit breaker per outbound API for
//! the whole Envoy, with resilience4j's states and transitions.
//!
//! So far the pure logic: `machine` (the state machine on an injected clock, its shared-data
//! codec) and `window` (the sliding windows, as per-tick buckets that workers merge). The
//! filter (config, request path, bulkhead, flags, adapter) builds on these with the core kit.
//! Where this differs from resilience4j and why: `docs/BREAKER.md`.

pub mod machine;
pub mod window;
