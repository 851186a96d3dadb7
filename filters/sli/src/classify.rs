//! The bounded labels of one request: page type (from the config), status code and class,
//! which spikeguard filter acted, and the duration bucket. Pure functions; no label value
//! ever comes from a client unless it is one of a configured, finite set.

/// Longest label value (page names).
pub const MAX_LABEL: usize = 64;
pub use sg_core::flags::FLAG_DC;

/// The response flags that mean Envoy answered itself (no upstream answer to time).
pub fn local_flags() -> u64 {
    sg_core::flags::mask(&[
        "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "URX", "SI", "DT", "UPE", "NC", "OM",
        "DF", "DO", "UMSDR",
    ])
}

/// Which spikeguard filter answered or changed a request (`action` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    None,
    Ratelimit,
    Shed,
    Diverted,
    Cache,
    Breaker,
    Other,
}

impl Action {
    pub const ALL: [Action; 7] = [
        Action::None,
        Action::Ratelimit,
        Action::Shed,
        Action::Diverted,
        Action::Cache,
        Action::Breaker,
        Action::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::None => "none",
            Action::Ratelimit => "ratelimit",
            Action::Shed => "shed",
            Action::Diverted => "diverted",
            Action::Cache => "cache",
            Action::Breaker => "breaker",
            Action::Other => "other",
        }
    }

    /// From the response's marks: `x-spikeguard-action` (set by `ratelimit`, `hotkey` and
    /// `breaker` on their local replies) and `x-spikeguard-simple-page` (every simple page:
    /// `<trigger>[; cache=hit|stale|stale-if-error]`).
    pub fn from_marks(action: Option<&str>, simple_page: Option<&str>) -> Action {
        if let Some(sp) = simple_page {
            return if sp.contains("cache=") {
                Action::Cache
            } else {
                Action::Diverted
            };
        }
        match action.map(str::trim) {
            None => Action::None,
            Some("ratelimit") => Action::Ratelimit,
            Some("hotkey") => Action::Shed,
            Some("breaker") => Action::Breaker,
            Some("simplepage") => Action::Diverted,
            Some(_) => Action::Other,
        }
    }
}

/// The `code` label of a request: an exact code of the configured set, `other`, or `000`
/// (nothing sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Code {
    Exact(u16),
    Other(u8),
    Nothing,
}

impl Code {
    /// The code sent downstream as the SLI counts it: 499 when the downstream left before the
    /// response was complete (Envoy's `DC` flag), else the status (0: nothing was sent).
    pub fn of(status: u16, flags: u64, codes: &[u16]) -> Code {
        let code = if flags & FLAG_DC != 0 { 499 } else { status };
        if code == 0 {
            Code::Nothing
        } else if codes.binary_search(&code).is_ok() {
            Code::Exact(code)
        } else {
            // The class is kept for `other` so error ratios stay right.
            Code::Other(u8::try_from(code / 100).unwrap_or(9).min(9))
        }
    }

    pub fn label(self) -> String {
        match self {
            Code::Exact(c) => format!("{c:03}"),
            Code::Other(_) => "other".to_string(),
            Code::Nothing => "000".to_string(),
        }
    }

    pub fn class(self) -> &'static str {
        let digit = match self {
            Code::Exact(c) => c / 100,
            Code::Other(d) => u16::from(d),
            Code::Nothing => return "none",
        };
        match digit {
            1 => "1xx",
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "none",
        }
    }

    /// A server error (5xx) or a downstream that gave up (499): what error ratios count.
    pub fn is_error(self) -> bool {
        self.class() == "5xx" || self == Code::Exact(499)
    }
}

/// Index of the first bucket edge `ms` fits under (`ms <= edge`); `edges.len()` = `+Inf`.
pub fn bucket(ms: u64, edges: &[u64]) -> usize {
    edges.partition_point(|&e| e < ms)
}

/// A label value as it may appear in a stat name: `[A-Za-z0-9_.+-]` (`+` for `+Inf`),
/// anything else `_`, at
/// most `MAX_LABEL` bytes (Istio's grammar ends a value at `;.;`, which cannot occur).
pub fn label_value(s: &str) -> String {
    s.bytes()
        .take(MAX_LABEL)
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'+') {
                char::from(b)
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODES: [u16; 5] = [200, 404, 499, 502, 503];

    #[test]
    fn codes_and_classes() {
        assert_eq!(Code::of(200, 0, &CODES), Code::Exact(200));
        assert_eq!(
            Code::of(200, FLAG_DC, &CODES),
            Code::Exact(499),
            "left early"
        );
        assert_eq!(Code::of(0, FLAG_DC, &CODES), Code::Exact(499));
        assert_eq!(Code::of(0, 0, &CODES), Code::Nothing);
        assert_eq!(Code::of(418, 0, &CODES), Code::Other(4));
        assert_eq!(Code::of(418, 0, &CODES).label(), "other");
        assert_eq!(Code::of(418, 0, &CODES).class(), "4xx");
        assert_eq!(Code::of(599, 0, &CODES).class(), "5xx");
        assert!(Code::of(599, 0, &CODES).is_error());
        assert!(Code::Exact(499).is_error());
        assert!(!Code::Exact(404).is_error());
        assert_eq!(Code::Nothing.label(), "000");
        assert_eq!(Code::Nothing.class(), "none");
        assert_eq!(Code::Exact(503).label(), "503");
    }

    #[test]
    fn actions_from_marks() {
        assert_eq!(Action::from_marks(None, None), Action::None);
        assert_eq!(
            Action::from_marks(Some("ratelimit"), None),
            Action::Ratelimit
        );
        assert_eq!(Action::from_marks(Some("hotkey"), None), Action::Shed);
        assert_eq!(Action::from_marks(Some("breaker"), None), Action::Breaker);
        assert_eq!(Action::from_marks(Some("x"), None), Action::Other);
        assert_eq!(Action::from_marks(None, Some("hotkey")), Action::Diverted);
        assert_eq!(
            Action::from_marks(None, Some("overload:latency; cache=hit")),
            Action::Cache
        );
    }

    #[test]
    fn buckets() {
        let e = [200, 1000, 3000];
        assert_eq!(bucket(0, &e), 0);
        assert_eq!(bucket(200, &e), 0, "le is inclusive");
        assert_eq!(bucket(201, &e), 1);
        assert_eq!(bucket(3000, &e), 2);
        assert_eq!(bucket(3001, &e), 3, "+Inf");
    }

    #[test]
    fn label_values_are_safe_in_a_stat_name() {
        assert_eq!(label_value("Post-View.v2"), "Post-View.v2");
        assert_eq!(label_value("a;.;b=c"), "a_._b_c");
        assert_eq!(label_value(&"x".repeat(100)).len(), MAX_LABEL);
    }
}
