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

/// Checks a rule name at config path `path` (`rules[i]`): valid for metric names and
/// shared-data keys, and not used by an earlier rule (`taken`).
pub fn check_rule_name(name: &str, taken: bool, path: &str) -> Result<(), crate::ConfigError> {
    let err = |why: String| Err(crate::ConfigError::new(format!("{path}.name"), why));
    if !valid_name(name) {
        return err(format!("{name:?} must be 1-64 letters, digits or '_'"));
    }
    if taken {
        return err(format!("{name:?} is used twice"));
    }
    Ok(())
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
