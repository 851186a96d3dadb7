//! Envoy launcher (written separately).
