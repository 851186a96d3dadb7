//! Configuration errors: one line naming the field path and the reason, so an operator can
//! fix a refused config from the Envoy log alone (`ratelimit: rules[2].rate: ...`).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Field path in the JSON config, e.g. `rules[2].rate`; empty for the document itself.
    pub path: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// Turns a serde_json error into a ConfigError. serde reports line/column rather than a
    /// field path; the message names the field for unknown/missing fields.
    pub fn from_json(err: &serde_json::Error) -> Self {
        ConfigError::new(
            format!("(line {}, column {})", err.line(), err.column()),
            err.to_string(),
        )
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Parses a filter's JSON config, refusing unknown fields (each struct carries
/// `deny_unknown_fields`). An empty config is parsed as `{}`.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ConfigError> {
    let trimmed: &[u8] = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(trimmed).map_err(|e| ConfigError::from_json(&e))
}
