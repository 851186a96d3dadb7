//! Metrics: naming, the counter and gauge types, and `metrics!`, the one declaration per
//! metric that both defines it in Envoy and flushes it.
//!
//! Envoy exposes a Wasm metric `sg.<filter>.<rule>.<what>` as
//! `wasmcustom.sg.<filter>.<rule>.<what>` in /stats; the bundle's `stats_tags` turn the rule
//! part into a `sg_rule` tag, so Prometheus sees `envoy_wasmcustom_sg_<filter>_<what>{sg_rule=..}`.
//! Names are stable: dashboards and alerts depend on them.
//!
//! Counting never makes a host call: increments wait in the VM until `flush` (from the root
//! context's tick), so a request pays nothing for its metrics; stats lag by at most one flush.

use crate::host::{Host, MetricKind};
use std::cell::Cell;

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

/// A counter. `inc`/`add` only touch VM memory; `flush` sends the pending increments.
/// A metric the host refused to define counts in memory and reports nothing (a metric
/// failure never affects a request).
#[derive(Debug, Default)]
pub struct Counter {
    id: Option<u32>,
    pending: Cell<i64>,
    /// Everything ever counted (native tests and diagnostics read it).
    total: Cell<u64>,
}

impl Counter {
    pub fn define<H: Host + ?Sized>(host: &H, name: &str) -> Counter {
        Counter {
            id: host.define_metric(MetricKind::Counter, name),
            ..Counter::default()
        }
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.pending.set(self.pending.get().saturating_add(n));
        self.total
            .set(self.total.get().saturating_add(n.unsigned_abs()));
    }
    /// Everything counted since definition (flushed or not).
    pub fn get(&self) -> u64 {
        self.total.get()
    }
    pub fn flush<H: Host + ?Sized>(&self, host: &H) {
        let n = self.pending.replace(0);
        if let (Some(id), true) = (self.id, n != 0) {
            host.increment_metric(id, n);
        }
    }
}

/// A gauge: `set` keeps the value in VM memory, `flush` records it when it changed.
/// Every worker's VM defines the same gauge and Envoy keeps one value per name, so a VM
/// that never `set` it records nothing: gauges are set by the lease holder alone, and a
/// worker flushing its untouched 0 would overwrite the holder's value.
#[derive(Debug, Default)]
pub struct Gauge {
    id: Option<u32>,
    value: Cell<Option<u64>>,
    sent: Cell<Option<u64>>,
}

impl Gauge {
    pub fn define<H: Host + ?Sized>(host: &H, name: &str) -> Gauge {
        Gauge {
            id: host.define_metric(MetricKind::Gauge, name),
            ..Gauge::default()
        }
    }
    pub fn set(&self, v: u64) {
        self.value.set(Some(v));
    }
    pub fn get(&self) -> u64 {
        self.value.get().unwrap_or(0)
    }
    pub fn flush<H: Host + ?Sized>(&self, host: &H) {
        let Some(v) = self.value.get() else {
            return;
        };
        if let (Some(id), false) = (self.id, self.sent.get() == Some(v)) {
            host.record_metric(id, v);
            self.sent.set(Some(v));
        }
    }
}

/// Declares a metrics struct: one line per metric (field, kind, the name's last part, help
/// text). The same line defines the metric in Envoy and flushes it, so a metric cannot be
/// declared and never reported. `define` takes the function that turns the last part into the
/// full name (`|w| filter_metric("hotkey", w)`, or a rule's `rule_metric`).
///
/// ```
/// sg_core::metrics! {
///     /// Per rule.
///     pub struct RuleMetrics {
///         seen: Counter = "seen", "requests the rule matched";
///     }
/// }
/// ```
#[macro_export]
macro_rules! metrics {
    ($(#[$m:meta])* $vis:vis struct $name:ident {
        $( $field:ident : $kind:ident = $what:literal, $help:literal; )*
    }) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        $vis struct $name {
            $( #[doc = $help] pub $field: $crate::metrics::$kind, )*
        }
        impl $name {
            /// (last part of the name, kind, help) of every metric, in declaration order.
            #[allow(dead_code)]
            pub const TABLE: &'static [(&'static str, &'static str, &'static str)] =
                &[$( ($what, stringify!($kind), $help) ),*];
            #[allow(dead_code)]
            pub fn define<H: $crate::host::Host + ?Sized>(host: &H, name: impl Fn(&str) -> String) -> Self {
                Self { $( $field: $crate::metrics::$kind::define(host, &name($what)), )* }
            }
            #[allow(dead_code)]
            pub fn flush<H: $crate::host::Host + ?Sized>(&self, host: &H) {
                $( self.$field.flush(host); )*
            }
        }
        impl $crate::metrics::Declared for $name {
            fn declare<H: $crate::host::Host + ?Sized>(host: &H, name: &dyn Fn(&str) -> String) -> Self {
                Self::define(host, name)
            }
            fn flush_to<H: $crate::host::Host + ?Sized>(&self, host: &H) {
                self.flush(host)
            }
        }
    };
}

/// A struct of metrics declared by `metrics!` (or `()`, none).
pub trait Declared: Default {
    fn declare<H: Host + ?Sized>(host: &H, name: &dyn Fn(&str) -> String) -> Self;
    fn flush_to<H: Host + ?Sized>(&self, host: &H);
}

impl Declared for () {
    fn declare<H: Host + ?Sized>(_: &H, _: &dyn Fn(&str) -> String) {}
    fn flush_to<H: Host + ?Sized>(&self, _: &H) {}
}

/// A filter's metrics: `R` per rule (`sg.<filter>.<rule>.<what>`), `F` filter-wide
/// (`sg.<filter>.<what>`), the operator side `O` (`()` for a filter without one), and the
/// shared-data failures every filter counts.
#[derive(Debug, Default)]
pub struct Metrics<R, F, O = OpsMetrics> {
    pub rules: Vec<R>,
    pub filter: F,
    pub ops: O,
    pub store: StoreMetrics,
}

impl<R: Declared, F: Declared, O: Declared> Metrics<R, F, O> {
    pub fn define<'a, H: Host + ?Sized>(
        host: &H,
        filter: &str,
        rules: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let f = |w: &str| filter_metric(filter, w);
        Metrics {
            rules: rules
                .into_iter()
                .map(|rule| R::declare(host, &|w: &str| rule_metric(filter, rule, w)))
                .collect(),
            filter: F::declare(host, &f),
            ops: O::declare(host, &f),
            store: StoreMetrics::define(host, f),
        }
    }

    pub fn flush<H: Host + ?Sized>(&self, host: &H) {
        self.rules.iter().for_each(|r| r.flush_to(host));
        self.filter.flush_to(host);
        self.ops.flush_to(host);
        self.store.flush(host);
    }
}

metrics! {
    /// What every filter counts about shared data (`sg.<filter>.<what>`): an unreadable value
    /// treated as "no state yet", a read-modify-write that lost every CAS race, a host failure.
    pub struct StoreMetrics {
        bad_state: Counter = "bad_state", "shared-data values that did not decode (treated as absent)";
        cas_giveup: Counter = "cas_giveup", "shared-data updates that lost every CAS attempt (nothing written)";
        store_error: Counter = "store_error", "shared-data reads or writes the host failed";
    }
}

metrics! {
    /// The operator side (`core::ops`): alerts, webhook and operator-endpoint failures.
    pub struct OpsMetrics {
        alerts: Counter = "alerts", "alerts sent (log line, and webhook when configured)";
        webhook_errors: Counter = "webhook_errors", "webhook posts refused or answered non-2xx";
        operator_errors: Counter = "operator_errors", "operator-list polls that failed (last good list kept)";
        operator_applied: Counter = "operator_applied", "operator lists applied";
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemHost;

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

    #[test]
    fn every_declared_metric_is_defined_and_flushed() {
        let h = MemHost::new();
        let m = StoreMetrics::define(&h, |w| filter_metric("t", w));
        m.bad_state.inc();
        m.cas_giveup.add(2);
        m.store_error.add(3);
        assert_eq!(
            h.metric("sg.t.cas_giveup"),
            Some(0),
            "defined, nothing sent yet"
        );
        m.flush(&h);
        assert_eq!(h.metric("sg.t.bad_state"), Some(1));
        assert_eq!(h.metric("sg.t.cas_giveup"), Some(2));
        assert_eq!(h.metric("sg.t.store_error"), Some(3));
        m.flush(&h);
        assert_eq!(
            h.metric("sg.t.store_error"),
            Some(3),
            "a flush sends only what is new"
        );
        assert_eq!(StoreMetrics::TABLE.len(), 3);
        assert_eq!(h.metric_names().len(), 3);
    }

    #[test]
    fn gauges_are_recorded_when_they_change_and_never_by_a_vm_that_did_not_set_them() {
        let h = MemHost::new();
        let g = Gauge::define(&h, "sg.t.g");
        let other_worker = Gauge::define(&h, "sg.t.g");
        g.set(5);
        g.flush(&h);
        other_worker.flush(&h);
        assert_eq!(
            h.metric("sg.t.g"),
            Some(5),
            "an untouched gauge records nothing"
        );
        g.set(5);
        g.flush(&h);
        assert_eq!(h.metric("sg.t.g"), Some(5));
        g.set(2);
        g.flush(&h);
        assert_eq!(h.metric("sg.t.g"), Some(2));
    }
}
