//! The operator-list (block list) parser: what the operator endpoint answers
//! (`oplist::List::parse`), its shared-data copy (`encode_list` / `decode_list`) and the
//! lookups the filters make with it.
//!
//! Input: byte 0 is the entry bound (`% 65`), bytes 1..9 the time (LE), the rest the body.

use sg_core::normalize::normalize_path;

/// The request path that means `p` once normalised: `%`, `?`, `#` and non-ASCII bytes
/// percent-encoded (a normalised path can hold a decoded `?`).
fn request_path_of(p: &str) -> String {
    let mut s = String::with_capacity(p.len());
    for &c in p.as_bytes() {
        if matches!(c, b'%' | b'?' | b'#') || !c.is_ascii() {
            s.push_str(&format!("%{c:02X}"));
        } else {
            s.push(char::from(c));
        }
    }
    s
}
use sg_core::oplist::{decode_list, encode_list, List, MAX_KEY_BYTES};

/// Properties: an accepted list has at most the bound, every entry exactly one of key or
/// path prefix, keys within `MAX_KEY_BYTES`, prefixes rooted; its shared-data copy decodes
/// to the same list (and is refused below its length); every entry in force blocks what
/// it names (a key byte for byte, a normal-form prefix through the request-path lookup).
pub fn oplist(data: &[u8]) {
    let max = usize::from(data.first().copied().unwrap_or(0) % 65);
    let now = data
        .get(1..9)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
    let body = data.get(9..).unwrap_or_default();
    let list = match List::parse(body, max) {
        Ok(l) => l,
        Err(reason) => {
            assert!(!reason.is_empty(), "a refusal without a reason");
            return;
        }
    };
    assert!(
        list.entries.len() <= max,
        "{} entries over {max}",
        list.entries.len()
    );
    for e in &list.entries {
        match (&e.key, &e.path_prefix) {
            (Some(k), None) => assert!(k.len() <= MAX_KEY_BYTES, "key of {} bytes", k.len()),
            (None, Some(p)) => assert!(p.starts_with('/'), "prefix {p:?}"),
            other => panic!("entry with {other:?}"),
        }
    }
    for version in [0, now, u64::MAX] {
        let enc = encode_list(version, &list);
        assert_eq!(
            decode_list(&enc, max),
            Some((version, list.clone())),
            "round trip"
        );
        if !list.entries.is_empty() {
            assert_eq!(
                decode_list(&enc, list.entries.len() - 1),
                None,
                "over the bound"
            );
        }
    }
    for e in list.active(now) {
        let rule = e.rule.clone().unwrap_or_else(|| "any".into());
        if let Some(k) = &e.key {
            assert!(
                list.blocks_key(&rule, k.as_bytes(), now),
                "{e:?} does not block"
            );
        }
        if let Some(p) = &e.path_prefix {
            if normalize_path(p) == p.as_bytes() {
                let raw = request_path_of(p);
                assert!(list.blocks_request_path(&rule, &raw, now), "{e:?}: {raw}");
                let deeper = format!("{raw}/x?q=1");
                assert!(
                    list.blocks_request_path(&rule, &deeper, now),
                    "{e:?}: {deeper}"
                );
            }
        }
    }
    // Lookups of anything never panic.
    let text = String::from_utf8_lossy(body);
    let _ = list.blocks_key("r", body, now);
    let _ = list.blocks_request_path("r", &text, now);
}
