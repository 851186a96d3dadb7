//! Property tests of the ratelimit slot codec (`sg:rl:<rule>:<slot>`) and of config parsing.
//!
//! The codec laws and the config are `sg_core::testing::laws`'s. Natively, proptest keeps
//! each failure's seed in `tests/proptests.proptest-regressions` (commit it) and replays it
//! first. On wasm32 nothing is persisted: node:wasi has no filesystem preopened.

use proptest::prelude::*;
use sg_core::testing::laws::{self, bytes, config, edgy_u64_small_below};
use sg_ratelimit::config::{Compile, Config, Rate};
use sg_ratelimit::limiter::{delay_ms, Entry, Mode, Params, Slot, WAYS};

/// `laws::edgy_u64`, with the small values drawn below 100_000.
fn edgy_u64() -> impl Strategy<Value = u64> {
    edgy_u64_small_below(100_000)
}

fn entry() -> impl Strategy<Value = Entry> {
    (edgy_u64(), edgy_u64()).prop_map(|(excess, last)| Entry { excess, last })
}

/// Slots as the limiter stores them: at most WAYS entries.
fn slot() -> impl Strategy<Value = Slot> {
    (
        entry(),
        proptest::collection::vec((edgy_u64(), entry()), 0..=WAYS),
    )
        .prop_map(|(floor, entries)| Slot { floor, entries })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn slot_round_trips(s in slot()) {
        prop_assert_eq!(s.encode().len(), 18 + 24 * s.entries.len());
        laws::round_trip(&s, Slot::encode, Slot::decode)?;
    }

    /// An empty value is an empty slot (whose encoding is not empty).
    #[test]
    fn slot_decode_of_any_bytes_is_canonical_or_none(b in bytes(0..140)) {
        laws::canonical_or_none_empty_is_default(&b, Slot::encode, Slot::decode)?;
    }

    #[test]
    fn slot_decode_of_framed_garbage_never_panics(n in any::<u8>(), rest in bytes(0..140)) {
        let mut b = vec![sg_ratelimit::limiter::VERSION, n];
        b.extend_from_slice(&rest);
        if let Some(s) = Slot::decode(&b) {
            prop_assert!(s.entries.len() <= WAYS);
        }
    }

    /// An empty value is an empty slot ("no state yet"); every other prefix is unreadable.
    #[test]
    fn slot_truncated_is_none(s in slot()) {
        laws::truncated_is_none_empty_is_default(&s, Slot::encode, Slot::decode)?;
    }

    #[test]
    fn config_parse_never_panics(b in bytes(0..200)) {
        let _ = Config::parse(&b);
    }

    #[test]
    fn config_parse_of_any_rule_fields_never_panics(rate in "\\PC{0,12}", mode in "\\PC{0,16}", burst in any::<i64>()) {
        let json = format!(
            r#"{{"rules":[{{"name":"r","key":"host","rate":{},"burst":{burst},"mode":{mode}}}]}}"#,
            serde_json::Value::String(rate),
        );
        let _ = Config::parse(json.as_bytes());
    }

    #[test]
    fn rates_parse_as_written(n in 1u64..=10_000_000, per_minute in any::<bool>(), spaced in any::<bool>()) {
        let (unit, window_s) = if per_minute { ("m", 60) } else { ("s", 1) };
        let s = if spaced { format!(" {n} r / {unit} ") } else { format!("{n}r/{unit}") };
        prop_assert_eq!(
            Rate::parse(&s),
            Ok(Rate { milli_per_s: n * 1000 / window_s, quota: n, window_s })
        );
    }

    #[test]
    fn nodelay_never_delays_and_delay_after_n_passes_the_first_n(
        rps in 1u64..=10_000_000, n in 0u64..1000, excess in edgy_u64()
    ) {
        let p = |mode| Params { rate: rps * 1000, burst: u64::MAX, mode };
        prop_assert_eq!(delay_ms(&p(Mode::NoDelay), excess), 0);
        if excess <= n * 1000 {
            prop_assert_eq!(delay_ms(&p(Mode::DelayAfter(n * 1000)), excess), 0);
        }
        prop_assert_eq!(delay_ms(&p(Mode::Delay), excess), delay_ms(&p(Mode::DelayAfter(0)), excess));
    }
}
