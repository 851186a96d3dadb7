//! Property tests of core's shared-data codecs (lease, operator list) and of the one URL/key
//! normaliser.
//!
//! Natively, proptest keeps each failure's seed in `tests/proptests.proptest-regressions`
//! (commit it) and replays it first. On wasm32 nothing is persisted: node:wasi has no
//! filesystem preopened.
#![allow(clippy::indexing_slicing)] // test code: fail loudly

use proptest::prelude::*;
use sg_core::lease::Lease;
use sg_core::normalize::{
    canonical_query, normalize_path, normalized, percent_decode, query_param, split_path,
};
use sg_core::oplist::{decode_list, encode_list, Entry, List, MAX_KEY_BYTES};

fn config() -> ProptestConfig {
    #[allow(unused_mut)] // mutated on wasm32 only
    let mut c = ProptestConfig::default();
    #[cfg(target_arch = "wasm32")]
    {
        c.failure_persistence = None;
    }
    c
}

/// Times and ids as they come, with the edges (0, u64::MAX) drawn often.
fn edgy_u64() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), Just(0), Just(u64::MAX), 0u64..1000]
}

fn lease() -> impl Strategy<Value = Lease> {
    (edgy_u64(), edgy_u64()).prop_map(|(holder, expires_ms)| Lease { holder, expires_ms })
}

/// An entry `List::parse` accepts: key xor path_prefix, key at most MAX_KEY_BYTES bytes,
/// path_prefix starting with '/'.
fn entry() -> impl Strategy<Value = Entry> {
    let target = prop_oneof![
        "\\PC{0,40}".prop_map(|k| (Some(k), None)),
        "\\PC{0,40}".prop_map(|p| (None, Some(format!("/{p}")))),
    ];
    (
        proptest::option::of("[A-Za-z0-9_]{1,12}"),
        target,
        proptest::option::of(edgy_u64()),
    )
        .prop_map(|(rule, (key, path_prefix), expires_at_ms)| Entry {
            rule,
            key,
            path_prefix,
            expires_at_ms,
        })
}

fn list() -> impl Strategy<Value = List> {
    proptest::collection::vec(entry(), 0..8).prop_map(|entries| List { entries })
}

/// True when `b` holds a `%XX` escape that `percent_decode` would decode.
fn has_escape(b: &[u8]) -> bool {
    b.windows(3)
        .any(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
}

/// RFC 3986 unreserved characters: percent-encoding one does not change what it means.
const UNRESERVED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";

/// A path of unreserved characters and slashes, as (byte, encode it?, upper-case hex?).
fn plain_path() -> impl Strategy<Value = Vec<(u8, bool, bool)>> {
    let byte = prop_oneof![
        4 => proptest::sample::select(UNRESERVED),
        1 => Just(b'/'),
    ];
    proptest::collection::vec((byte, any::<bool>(), any::<bool>()), 0..40)
}

fn render(parts: &[(u8, bool, bool)], encode: bool) -> String {
    let mut s = String::new();
    for &(b, enc, upper) in parts {
        if encode && enc && b != b'/' {
            if upper {
                s.push_str(&format!("%{b:02X}"));
            } else {
                s.push_str(&format!("%{b:02x}"));
            }
        } else {
            s.push(char::from(b));
        }
    }
    s
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lease_round_trips(l in lease()) {
        prop_assert_eq!(Lease::decode(&l.encode()), Some(l));
    }

    #[test]
    fn lease_decode_of_any_bytes_is_canonical_or_none(b in proptest::collection::vec(any::<u8>(), 0..40)) {
        if let Some(l) = Lease::decode(&b) {
            prop_assert_eq!(l.encode(), b);
        }
    }

    #[test]
    fn lease_truncated_is_none(l in lease()) {
        let b = l.encode();
        for n in 0..b.len() {
            prop_assert_eq!(Lease::decode(&b[..n]), None, "prefix {}", n);
        }
    }

    #[test]
    fn oplist_round_trips(version in edgy_u64(), l in list()) {
        let b = encode_list(version, &l);
        let max = l.entries.len().max(1);
        prop_assert_eq!(decode_list(&b, max), Some((version, l.clone())));
        // One entry over the reader's bound is refused, not cut.
        if !l.entries.is_empty() {
            prop_assert_eq!(decode_list(&b, l.entries.len() - 1), None);
        }
    }

    #[test]
    fn oplist_keys_up_to_the_bound_round_trip(k in proptest::collection::vec(any::<char>(), 0..300)) {
        let mut key: String = k.into_iter().collect();
        while key.len() > MAX_KEY_BYTES {
            key.pop();
        }
        let l = List { entries: vec![Entry { rule: None, key: Some(key), path_prefix: None, expires_at_ms: None }] };
        prop_assert_eq!(decode_list(&encode_list(1, &l), 1), Some((1, l)));
    }

    #[test]
    fn oplist_decode_of_any_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_list(&b, 100);
        let mut framed = vec![1u8, 0, 0, 0, 0, 0, 0, 0, 0];
        framed.extend_from_slice(&b);
        let _ = decode_list(&framed, 100);
    }

    #[test]
    fn oplist_truncated_is_none(version in edgy_u64(), l in list()) {
        let b = encode_list(version, &l);
        for n in 0..b.len() {
            prop_assert_eq!(decode_list(&b[..n], 100), None, "prefix {}", n);
        }
    }

    #[test]
    fn normaliser_never_panics_on_any_bytes(b in proptest::collection::vec(any::<u8>(), 0..200), name in "\\PC{0,8}") {
        let _ = percent_decode(&b, true);
        let _ = percent_decode(&b, false);
        let s = String::from_utf8_lossy(&b);
        let (p, q) = split_path(&s);
        let _ = normalize_path(p);
        let _ = normalize_path(&s);
        let _ = query_param(q, &name);
    }

    #[test]
    fn normalised_paths_have_no_double_or_trailing_slash(s in "[/%a-f0-9A-F+.]{0,40}|\\PC{0,40}") {
        let n = normalize_path(&s);
        prop_assert!(!n.is_empty());
        prop_assert!(!n.windows(2).any(|w| w == b"//"), "{:?} -> {:?}", s, String::from_utf8_lossy(&n));
        prop_assert!(n == b"/" || n.last() != Some(&b'/'), "{:?}", s);
    }

    /// Idempotent on what it produces, as long as that output is not itself still encoded:
    /// the normaliser decodes once, as the backend does, so `/%2541` is `/%41`, not `/A`
    /// (see `decodes_once_like_the_backend`).
    #[test]
    fn normalise_is_idempotent(s in "[/%a-f0-9A-F+.~]{0,40}|\\PC{0,40}") {
        let n = normalize_path(&s);
        if let Ok(text) = std::str::from_utf8(&n) {
            if !has_escape(&n) {
                prop_assert_eq!(normalize_path(text), n.clone(), "{:?}", s);
            }
        }
    }

    /// Idempotent without conditions on paths whose decoding leaves no escape behind: any
    /// mix of slashes, unreserved characters and their encodings.
    #[test]
    fn normalise_of_plain_paths_is_idempotent(parts in plain_path()) {
        let raw = render(&parts, true);
        let n = normalize_path(&raw);
        let text = String::from_utf8(n.clone()).unwrap_or_default();
        prop_assert_eq!(normalize_path(&text), n);
    }

    #[test]
    fn encoded_unreserved_characters_normalise_equal(parts in plain_path()) {
        let plain = render(&parts, false);
        let encoded = render(&parts, true);
        prop_assert_eq!(normalize_path(&encoded), normalize_path(&plain), "{} vs {}", encoded, plain);
        // Doubled slashes and a trailing slash are the same path too.
        let doubled = plain.replace('/', "//") + "/";
        prop_assert_eq!(normalize_path(&doubled), normalize_path(&plain), "{}", doubled);
    }

    #[test]
    fn encoded_query_names_and_values_match(name in plain_path(), value in plain_path()) {
        let (n_plain, v_plain) = (render(&name, false), render(&value, false));
        prop_assume!(!n_plain.is_empty() && n_plain != "x");
        let q = format!("x=1&{}={}", render(&name, true), render(&value, true));
        let got = query_param(&q, &n_plain);
        prop_assert_eq!(got.as_deref(), Some(v_plain.as_bytes()), "{}", q);
    }

    #[test]
    fn the_borrowing_normaliser_agrees_with_normalize_path(s in "[/%a-f0-9A-F+.?]{0,40}|\\PC{0,40}") {
        let want = String::from_utf8_lossy(&normalize_path(split_path(&s).0)).into_owned();
        prop_assert_eq!(normalized(&s).into_owned(), want, "{:?}", s);
    }

    #[test]
    fn a_canonical_query_is_canonical(q in "[a-z%0-9=&+]{0,40}|\\PC{0,30}") {
        // Canonical once is canonical: re-canonicalising changes nothing, with or without a
        // parameter filter.
        let all = canonical_query(&q, None);
        prop_assert_eq!(canonical_query(&all, None), all.clone());
        let keep = vec!["a".to_string(), "b".to_string()];
        let some = canonical_query(&q, Some(&keep));
        prop_assert_eq!(canonical_query(&some, Some(&keep)), some.clone());
    }
}

/// Not a property: the reason `normalise_is_idempotent` excludes still-encoded output.
#[test]
fn decodes_once_like_the_backend() {
    assert_eq!(normalize_path("/%2541"), b"/%41".to_vec());
    assert_eq!(normalize_path("/%41"), b"/A".to_vec());
}
