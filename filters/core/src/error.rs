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
    let mut de = serde_json::Deserializer::from_slice(trimmed);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            ConfigError::from_json(&inner)
        } else {
            // "rules[0].threshold_rps: invalid value: integer `-5`, expected u64 (line 1, column 73)"
            ConfigError::new(
                path,
                format!("{inner}")
                    .replace(" at line ", " (line ")
                    .replace(" column ", ", column ")
                    + ")",
            )
        }
    })?;
    de.end().map_err(|e| ConfigError::from_json(&e))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rule {
        #[allow(dead_code)]
        rps: u64,
    }
    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        #[allow(dead_code)]
        rules: Vec<Rule>,
    }

    #[test]
    fn type_errors_name_the_field_path() {
        let e = parse_json::<Doc>(br#"{"rules": [{"rps": 1}, {"rps": -5}]}"#).err();
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.starts_with("rules[1].rps: invalid value: integer `-5`"),
            "{e}"
        );
        let e = parse_json::<Doc>(br#"{"rules": [{"rps": 1, "burst": 2}]}"#).err();
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            e.starts_with("rules[0].burst: unknown field `burst`"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_and_trailing_garbage_give_a_position() {
        let e = parse_json::<Doc>(br#"{"rules": [}"#)
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("line 1"));
        assert!(parse_json::<Doc>(br#"{"rules": []} x"#).is_err());
        assert!(
            parse_json::<Doc>(b"  ").is_err(),
            "empty is {{}}: rules missing"
        );
    }
}
