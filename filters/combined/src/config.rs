//! The combined module's config: one JSON object with a section per part, each section
//! exactly the config that part's own filter takes (`config/<filter>.json`). A part whose
//! section is absent is off. The sections are checked by the parts' own `on_configure` code;
//! this module only splits them.

use sg_core::ConfigError;

/// The parts, in the chain's order (the order of the bundle's ingress chain, then the
/// egress filter): requests go through them forwards, responses backwards.
pub const PARTS: [&str; 5] = ["sli", "hotkey", "simplepage", "ratelimit", "breaker"];
/// How many parts there are.
pub const N: usize = PARTS.len();

/// Each part's section (compact JSON), or None when the part is off.
pub type Sections = [Option<Vec<u8>>; N];

/// Splits the config into sections. Refuses a config that is not a JSON object, names an
/// unknown section, or turns every part off.
pub fn sections(bytes: &[u8]) -> Result<Sections, ConfigError> {
    let doc: serde_json::Value = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        serde_json::from_slice(bytes).map_err(|e| ConfigError::from_json(&e))?
    };
    let serde_json::Value::Object(map) = doc else {
        return Err(ConfigError::new(
            "",
            "must be a JSON object with a section per filter",
        ));
    };
    let mut out: Sections = Default::default();
    for (name, value) in map {
        let Some(i) = PARTS.iter().position(|p| *p == name) else {
            return Err(ConfigError::new(
                name,
                format!("unknown section (expected one of {})", PARTS.join(", ")),
            ));
        };
        if !value.is_object() {
            return Err(ConfigError::new(
                name,
                "must be an object (that filter's config)",
            ));
        }
        let bytes = serde_json::to_vec(&value).map_err(|e| ConfigError::from_json(&e))?;
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(bytes);
        }
    }
    if out.iter().all(Option::is_none) {
        return Err(ConfigError::new(
            "",
            format!("at least one section is required ({})", PARTS.join(", ")),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_sections_in_chain_order_and_leaves_absent_parts_off() {
        let s = sections(br#"{"ratelimit": {"rules": []}, "sli": {}}"#).expect("accepted");
        assert_eq!(s[0].as_deref(), Some(&b"{}"[..]));
        assert_eq!(s[3].as_deref(), Some(&br#"{"rules":[]}"#[..]));
        assert!(s[1].is_none() && s[2].is_none() && s[4].is_none());
    }

    #[test]
    fn refuses_unknown_sections_non_objects_and_an_empty_config() {
        let e = sections(br#"{"sli": {}, "cache": {}}"#).expect_err("unknown");
        assert_eq!(e.path, "cache");
        assert!(e
            .reason
            .contains("sli, hotkey, simplepage, ratelimit, breaker"));
        assert_eq!(sections(br#"{"sli": 3}"#).expect_err("number").path, "sli");
        assert!(sections(b"[]").is_err());
        assert!(sections(b"").is_err());
        assert!(sections(b"{}").is_err());
        assert!(sections(b"{").is_err());
    }
}
