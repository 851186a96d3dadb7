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
        // A path names a field only for data errors (wrong type, unknown field); a syntax
        // error is located by line and column.
        let data = inner.classify() == serde_json::error::Category::Data;
        if !data || path.is_empty() || path == "." || path.contains('?') {
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

/// Fields of an example config that its JSON schema does not describe (`config/*.schema.json`
/// must keep step with the structs; the shipped example uses every field). Follows local
/// `$ref`s, `items` and `oneOf` (the best-matching alternative); a schema without
/// `properties` / `items` accepts anything below it.
pub fn schema_gaps(schema: &serde_json::Value, example: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    gaps(schema, schema, example, "", &mut out);
    out
}

/// `schema_gaps` of two JSON texts (a shipped schema and example); an unparsable text is
/// reported as a gap.
pub fn schema_gaps_of(schema: &str, example: &str) -> Vec<String> {
    match (
        serde_json::from_str::<serde_json::Value>(schema),
        serde_json::from_str::<serde_json::Value>(example),
    ) {
        (Ok(s), Ok(e)) => schema_gaps(&s, &e),
        (s, e) => vec![format!(
            "unparsable: schema {:?}, example {:?}",
            s.err(),
            e.err()
        )],
    }
}

fn gaps(
    root: &serde_json::Value,
    s: &serde_json::Value,
    v: &serde_json::Value,
    at: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    let s = match s.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .unwrap_or(&Value::Null),
        None => s,
    };
    if let Some(alts) = s.get("oneOf").and_then(Value::as_array) {
        let best = alts
            .iter()
            .map(|a| {
                let mut g = Vec::new();
                gaps(root, a, v, at, &mut g);
                g
            })
            .min_by_key(Vec::len);
        out.extend(best.unwrap_or_default());
        return;
    }
    match v {
        Value::Object(m) => {
            let Some(props) = s.get("properties") else {
                return;
            };
            for (k, sub) in m {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match props.get(k) {
                    Some(ps) => gaps(root, ps, sub, &path, out),
                    None => out.push(path),
                }
            }
        }
        Value::Array(items) => {
            if let Some(is) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    gaps(root, is, x, &format!("{at}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
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
    fn schema_gaps_name_undescribed_fields() {
        let schema = serde_json::json!({"properties": {
            "rules": {"items": {"$ref": "#/$defs/rule"}},
            "mode": {"oneOf": [{"properties": {"a": {}}}, {"properties": {"b": {}}}]}},
            "$defs": {"rule": {"properties": {"name": {}, "key": {}}}}});
        let ok =
            serde_json::json!({"rules": [{"name": "r", "key": {"anything": 1}}], "mode": {"b": 1}});
        assert!(schema_gaps(&schema, &ok).is_empty());
        let bad =
            serde_json::json!({"rules": [{"name": "r", "rate": 1}], "mode": {"c": 1}, "x": 0});
        assert_eq!(
            schema_gaps(&schema, &bad),
            vec!["mode.c", "rules[0].rate", "x"]
        );
    }

    #[test]
    fn syntax_errors_and_trailing_garbage_give_a_position() {
        for bad in [
            &br#"{"rules": [}"#[..],
            b"{not json",
            b"{\"rules\": [{\"rps\": 1",
        ] {
            let e = parse_json::<Doc>(bad).err().map(|e| e.to_string());
            assert!(e.as_deref().unwrap_or("").starts_with("(line 1"), "{e:?}");
        }
        assert!(parse_json::<Doc>(br#"{"rules": []} x"#).is_err());
        assert!(
            parse_json::<Doc>(b"  ").is_err(),
            "empty is {{}}: rules missing"
        );
    }
}
