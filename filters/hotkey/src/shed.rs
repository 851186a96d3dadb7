//! What the leader publishes in `sg:hk:shed` for every worker: the hot keys of every rule,
//! and the per-request decision for a key of a rule. Readers treat an unreadable value as
//! "no hot keys" (fail open) and keep their last good copy.

use crate::config::{ActionConfig, Rule};

/// The hot set's type and codec live in `sg_core::published` (also read by `sli`);
/// re-exported under their old names.
pub use sg_core::published::{decode_shed as decode, encode_shed as encode};
pub use sg_core::published::{ShedEntry, SHED_MAX_ENTRIES as MAX_ENTRIES, SHED_VERSION as VERSION};

/// Why a request of a rule is acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Hot,
    Blocked,
}

/// The per-request outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Pass,
    /// Counted only (`observe`).
    Observe(Cause),
    Reject {
        status: u16,
        body: String,
        retry_after_s: u64,
        cause: Cause,
    },
    Redirect {
        status: u16,
        location: String,
        cause: Cause,
    },
    /// `divert`: published for `simplepage`; with a header, also set it to the rule name.
    Divert {
        header: Option<String>,
        cause: Cause,
    },
}

/// Percent-encodes a key for a URL (unreserved characters kept).
pub fn url_encode(key: &[u8]) -> String {
    let mut s = String::with_capacity(key.len());
    for &b in key {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// `limit` admission: a per-key credit accumulator admits exactly `enter/rate` of the
/// requests (spread evenly, no randomness). Returns (admit, new credit).
pub fn limit_admit(credit: u64, enter_milli_rps: u64, rate_milli_rps: u64) -> (bool, u64) {
    if rate_milli_rps <= enter_milli_rps {
        return (true, 0);
    }
    let c = credit.saturating_add(enter_milli_rps);
    if c >= rate_milli_rps {
        (true, c - rate_milli_rps)
    } else {
        (false, c)
    }
}

/// What to do with a request of `rule` whose key is `key`: `allowed` (allow list wins),
/// `blocked` (operator), `hot` (the key's published rate, if hot), `credit` for `limit`.
pub fn decide(
    rule: &Rule,
    key: &[u8],
    blocked: bool,
    hot: Option<u64>,
    credit: &mut u64,
) -> Decision {
    if rule.allow.iter().any(|a| a.as_slice() == key) {
        return Decision::Pass;
    }
    let cause = match (blocked, hot) {
        (true, _) => Cause::Blocked,
        (false, Some(_)) => Cause::Hot,
        (false, None) => return Decision::Pass,
    };
    let reject = |cause| Decision::Reject {
        status: 503,
        body: "This page is very busy right now. Please try again in a moment.\n".into(),
        retry_after_s: 5,
        cause,
    };
    match &rule.action {
        ActionConfig::Observe => Decision::Observe(cause),
        ActionConfig::Reject {
            status,
            body,
            retry_after_s,
        } => Decision::Reject {
            status: *status,
            body: body.clone(),
            retry_after_s: *retry_after_s,
            cause,
        },
        ActionConfig::Redirect { status, location } => Decision::Redirect {
            status: *status,
            location: location.replace("{key}", &url_encode(key)),
            cause,
        },
        ActionConfig::Limit => match (cause, hot) {
            (Cause::Hot, Some(rate)) => {
                let (admit, c) = limit_admit(*credit, rule.thresholds.enter_milli_rps, rate);
                *credit = c;
                if admit {
                    Decision::Pass
                } else {
                    reject(cause)
                }
            }
            _ => reject(cause),
        },
        ActionConfig::Divert { header } => Decision::Divert {
            header: header.clone(),
            cause,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_admits_exactly_the_threshold_share() {
        // enter 100 r/s, key at 400 r/s: one in four admitted.
        let mut c = 0;
        let admitted = (0..400)
            .filter(|_| {
                let (a, n) = limit_admit(c, 100_000, 400_000);
                c = n;
                a
            })
            .count();
        assert_eq!(admitted, 100);
        assert_eq!(limit_admit(0, 100, 50), (true, 0));
    }

    #[test]
    fn keys_are_url_encoded_in_redirects() {
        assert_eq!(url_encode(b"a b/\xff~"), "a%20b%2F%FF~");
    }
}
