//! Property tests of core's shared-data codecs (lease, operator list) and of the one URL/key
//! normaliser.
//!
//! The codec laws and the config are `sg_core::testing::laws`'s. Natively, proptest keeps
//! each failure's seed in `tests/proptests.proptest-regressions` (commit it) and replays it
//! first. On wasm32 nothing is persisted: node:wasi has no filesystem preopened.
#![allow(clippy::indexing_slicing)] // test code: fail loudly

use proptest::prelude::*;
use sg_core::lease::Lease;
use sg_core::normalize::{
    canonical_query, normalize_path, normalized, percent_decode, query_param, split_path,
};
use sg_core::oplist::{decode_list, encode_list, Entry, List, MAX_KEY_BYTES};
use sg_core::testing::laws::{self, bytes, config, edgy_u64};

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

/// `encode_list` over the (version, list) pair `decode_list` returns.
fn oplist_encode((version, l): &(u64, List)) -> Vec<u8> {
    encode_list(*version, l)
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
        laws::round_trip(&l, Lease::encode, Lease::decode)?;
    }

    #[test]
    fn lease_decode_of_any_bytes_is_canonical_or_none(b in bytes(0..40)) {
        laws::canonical_or_none(&b, Lease::encode, Lease::decode)?;
    }

    #[test]
    fn lease_truncated_is_none(l in lease()) {
        laws::truncated_is_none(&l, Lease::encode, Lease::decode)?;
    }

    #[test]
    fn oplist_round_trips(version in edgy_u64(), l in list()) {
        let n = l.entries.len();
        let v = (version, l);
        laws::round_trip(&v, oplist_encode, |b| decode_list(b, n.max(1)))?;
        // One entry over the reader's bound is refused, not cut.
        if n > 0 {
            prop_assert_eq!(decode_list(&oplist_encode(&v), n - 1), None);
        }
    }

    #[test]
    fn oplist_keys_up_to_the_bound_round_trip(k in proptest::collection::vec(any::<char>(), 0..300)) {
        let mut key: String = k.into_iter().collect();
        while key.len() > MAX_KEY_BYTES {
            key.pop();
        }
        let l = List { entries: vec![Entry { rule: None, key: Some(key), path_prefix: None, expires_at_ms: None }] };
        laws::round_trip(&(1, l), oplist_encode, |b| decode_list(b, 1))?;
    }

    #[test]
    fn oplist_decode_of_any_bytes_never_panics(b in bytes(0..200)) {
        let _ = decode_list(&b, 100);
        let mut framed = vec![1u8, 0, 0, 0, 0, 0, 0, 0, 0];
        framed.extend_from_slice(&b);
        let _ = decode_list(&framed, 100);
    }

    #[test]
    fn oplist_truncated_is_none(version in edgy_u64(), l in list()) {
        laws::truncated_is_none(&(version, l), oplist_encode, |b| decode_list(b, 100))?;
    }

    #[test]
    fn normaliser_never_panics_on_any_bytes(b in bytes(0..200), name in "\\PC{0,8}") {
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
