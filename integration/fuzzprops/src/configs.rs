//! Each filter's config parser (`Compile::parse`, what `on_configure` runs on the operator's
//! JSON), and the combined module's section split.
//!
//! Properties: parsing never panics; a refusal names a reason; the outcome is the same for
//! the same bytes, and for the same document re-serialised (compact or pretty: no
//! dependence on spelling); an accepted config uses only fields its shipped JSON schema
//! (`config/<filter>.schema.json`) describes (`error::schema_gaps`).

use sg_core::config::Compile;
use sg_core::error::schema_gaps;
use sg_core::ConfigError;

/// The outcome of a parse, without the plan (plans hold compiled regexes and maps).
fn outcome<C: Compile>(bytes: &[u8]) -> Result<(), ConfigError> {
    C::parse(bytes).map(|_| ())
}

fn check<C: Compile>(filter: &str, schema: &str, data: &[u8]) {
    let first = outcome::<C>(data);
    assert_eq!(
        first,
        outcome::<C>(data),
        "{filter}: same bytes, other outcome"
    );
    match &first {
        Err(e) => assert!(!e.reason.is_empty(), "{filter}: a refusal without a reason"),
        Ok(()) => accepted(filter, schema, data, |b| outcome::<C>(b)),
    }
}

/// An accepted config: the same document re-serialised is accepted too, and the schema
/// describes every field it uses.
fn accepted(
    filter: &str,
    schema: &str,
    data: &[u8],
    parse: impl Fn(&[u8]) -> Result<(), ConfigError>,
) {
    if data.iter().all(u8::is_ascii_whitespace) {
        return; // the empty config, read as `{}`
    }
    let doc: serde_json::Value = match serde_json::from_slice(data) {
        Ok(v) => v,
        Err(e) => panic!("{filter}: accepted a config that is not JSON: {e}"),
    };
    for again in [
        serde_json::to_vec(&doc).unwrap_or_default(),
        serde_json::to_vec_pretty(&doc).unwrap_or_default(),
    ] {
        assert_eq!(
            parse(&again),
            Ok(()),
            "{filter}: accepted {:?} but refused its re-serialisation {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&again)
        );
    }
    let schema: serde_json::Value = match serde_json::from_str(schema) {
        Ok(s) => s,
        Err(e) => panic!("{filter}: the shipped schema does not parse: {e}"),
    };
    let gaps = schema_gaps(&schema, &doc);
    assert!(
        gaps.is_empty(),
        "{filter}: accepted fields its schema does not describe: {gaps:?} in {doc}"
    );
}

pub fn config_ratelimit(data: &[u8]) {
    check::<sg_ratelimit::config::Config>(
        "ratelimit",
        include_str!("../../../config/ratelimit.schema.json"),
        data,
    );
}

pub fn config_hotkey(data: &[u8]) {
    check::<sg_hotkey::config::Config>(
        "hotkey",
        include_str!("../../../config/hotkey.schema.json"),
        data,
    );
}

pub fn config_simplepage(data: &[u8]) {
    check::<sg_simplepage::config::Config>(
        "simplepage",
        include_str!("../../../config/simplepage.schema.json"),
        data,
    );
}

pub fn config_breaker(data: &[u8]) {
    check::<sg_breaker::config::Config>(
        "breaker",
        include_str!("../../../config/breaker.schema.json"),
        data,
    );
}

pub fn config_sli(data: &[u8]) {
    check::<sg_sli::config::Config>("sli", include_str!("../../../config/sli.schema.json"), data);
}

/// The part of `combined` at `i` (`config::PARTS` order) parses its section.
fn part(i: usize, section: &[u8]) -> Result<(), ConfigError> {
    use sg_combined::config::PARTS;
    match PARTS.get(i).copied() {
        Some("sli") => outcome::<sg_sli::config::Config>(section),
        Some("hotkey") => outcome::<sg_hotkey::config::Config>(section),
        Some("simplepage") => outcome::<sg_simplepage::config::Config>(section),
        Some("ratelimit") => outcome::<sg_ratelimit::config::Config>(section),
        Some("breaker") => outcome::<sg_breaker::config::Config>(section),
        other => panic!("combined: unknown part {other:?}"),
    }
}

/// The combined module's whole config: split into sections (`config::sections`), each
/// checked by its part as the part's own filter would.
fn combined(data: &[u8]) -> Result<(), ConfigError> {
    let sections = sg_combined::config::sections(data)?;
    for (i, s) in sections.iter().enumerate() {
        if let Some(s) = s {
            part(i, s)?;
        }
    }
    Ok(())
}

pub fn config_combined(data: &[u8]) {
    let first = combined(data);
    assert_eq!(first, combined(data), "combined: same bytes, other outcome");
    if let Ok(sections) = sg_combined::config::sections(data) {
        assert!(
            sections.iter().any(Option::is_some),
            "combined: accepted with every part off"
        );
    }
    match &first {
        Err(e) => assert!(!e.reason.is_empty(), "combined: a refusal without a reason"),
        Ok(()) => accepted(
            "combined",
            include_str!("../../../config/combined.schema.json"),
            data,
            combined,
        ),
    }
}
