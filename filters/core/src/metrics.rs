//! Metric naming. Envoy exposes a Wasm metric `sg.<filter>.<rule>.<what>` as
//! `wasmcustom.sg.<filter>.<rule>.<what>` in /stats; the bundle's `stats_tags` turn the rule
//! part into a `sg_rule` tag, so Prometheus sees `envoy_wasmcustom_sg_<filter>_<what>{sg_rule=..}`.
//! Names are stable: dashboards and alerts depend on them.

/// Rule names become part of metric names: letters, digits and `_` only.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

pub fn rule_metric(filter: &str, rule: &str, what: &str) -> String {
    format!("sg.{filter}.{rule}.{what}")
}

pub fn filter_metric(filter: &str, what: &str) -> String {
    format!("sg.{filter}.{what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("per_ip_1"));
        assert!(!valid_name("a.b"));
        assert!(!valid_name(""));
        assert_eq!(
            rule_metric("ratelimit", "r", "allowed"),
            "sg.ratelimit.r.allowed"
        );
        assert_eq!(
            filter_metric("ratelimit", "cas_giveup"),
            "sg.ratelimit.cas_giveup"
        );
    }
}
