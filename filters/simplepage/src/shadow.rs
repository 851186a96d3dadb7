//! Shadow mode's log (`shadow: true`, for all rules or one): a shadow rule makes every
//! decision, counts it (`sg.simplepage.<rule>.shadow_diverted_<trigger>`) and sends the
//! request on to the main backend untouched. The log says what it would have done, at most one
//! line per rule per worker per `LOG_EVERY_MS`: the first would-be diversion is logged at once
//! (so a canary shows it in its log straight away), then a line with the count since the last
//! one, naming the latest request.

use crate::decide::Trigger;

/// At most one shadow log line per rule per worker in this period.
pub const LOG_EVERY_MS: u64 = 10_000;
/// A logged path is cut at this many bytes (on a character boundary).
pub const MAX_LOGGED_PATH: usize = 200;

/// One rule's shadow log state on one worker.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShadowLog {
    /// When the last line was written (None: never).
    last_ms: Option<u64>,
    /// Would-be diversions not yet in a line.
    pending: u64,
}

impl ShadowLog {
    /// One would-be diversion at `now`. Some(n) when a line is due now: n would-be
    /// diversions since the last line, this one included.
    pub fn record(&mut self, now: u64) -> Option<u64> {
        self.pending = self.pending.saturating_add(1);
        let due = match self.last_ms {
            None => true,
            Some(t) => now.saturating_sub(t) >= LOG_EVERY_MS,
        };
        if !due {
            return None;
        }
        self.last_ms = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// The log line: `simplepage: shadow rule=<rule> would divert (<trigger>) <METHOD> <path>; <n>
/// would-be diversions on this worker since the last line`.
pub fn line(rule: &str, trigger: Trigger, method: &str, path: &str, n: u64) -> String {
    let mut cut = path.len().min(MAX_LOGGED_PATH);
    while !path.is_char_boundary(cut) {
        cut = cut.saturating_sub(1);
    }
    let shown = path.get(..cut).unwrap_or_default();
    let more = if cut < path.len() { "..." } else { "" };
    format!(
        "simplepage: shadow rule={rule} would divert ({}) {method} {shown:?}{more}; {n} would-be diversions on this worker since the last line",
        trigger.as_str()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_would_be_diversion_is_logged_at_once_then_one_line_per_period_with_the_count() {
        let mut l = ShadowLog::default();
        assert_eq!(l.record(5_000), Some(1), "first one: at once");
        for t in 5_001..5_100 {
            assert_eq!(l.record(t), None);
        }
        assert_eq!(l.record(5_000 + LOG_EVERY_MS - 1), None);
        assert_eq!(
            l.record(5_000 + LOG_EVERY_MS),
            Some(101),
            "99 + 1 + this one"
        );
        assert_eq!(
            l.record(5_000 + 5 * LOG_EVERY_MS),
            Some(1),
            "quiet, then one"
        );
        // A clock that goes back never logs more often.
        assert_eq!(l.record(0), None);
    }

    #[test]
    fn the_line_names_rule_trigger_and_request_and_cuts_a_long_path() {
        let s = line("pv", Trigger::Hotkey, "GET", "/PostView?blogId=a", 3);
        assert_eq!(
            s,
            "simplepage: shadow rule=pv would divert (hotkey) GET \"/PostView?blogId=a\"; 3 would-be diversions on this worker since the last line"
        );
        let long = format!("/{}", "é".repeat(300));
        let s = line("pv", Trigger::Always, "HEAD", &long, 1);
        assert!(s.contains("...;"), "{s}");
        assert!(s.len() < MAX_LOGGED_PATH + 150, "{}", s.len());
    }
}
