//! The one URL/key normaliser shared by every filter, so a hot post cannot escape a rule by
//! URL variants (`%62logId`, `+` vs `%20`, `//`, trailing slashes). It decides how a raw
//! request value becomes key bytes; it does not decide which value a rule uses (see `key`).

use std::borrow::Cow;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `input`. Invalid sequences (`%zz`, a trailing `%`) are kept literally;
/// with `plus_as_space`, `+` decodes to a space (form encoding, used in query strings).
/// Borrows when nothing needs decoding.
pub fn percent_decode(input: &[u8], plus_as_space: bool) -> Cow<'_, [u8]> {
    if !input
        .iter()
        .any(|&b| b == b'%' || (plus_as_space && b == b'+'))
    {
        return Cow::Borrowed(input);
    }
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        if b == b'%' {
            let pair = (
                input.get(i + 1).copied().and_then(hex),
                input.get(i + 2).copied().and_then(hex),
            );
            if let (Some(h), Some(l)) = pair {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
            out.push(b'%');
        } else if plus_as_space && b == b'+' {
            out.push(b' ');
        } else {
            out.push(b);
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// Splits `:path` into the path and the query string (without `?`); the fragment, which a
/// client should not send, is dropped.
pub fn split_path(raw: &str) -> (&str, &str) {
    let no_frag = raw.split('#').next().unwrap_or(raw);
    match no_frag.split_once('?') {
        Some((p, q)) => (p, q),
        None => (no_frag, ""),
    }
}

/// Value of query parameter `name` in `query`. Names and values are percent-decoded before
/// comparison, so `%62logId=7` matches `blogId`; an encoded `&` or `=` inside a value stays
/// part of the value because splitting happens before decoding. The FIRST occurrence wins
/// (`?blogId=a&blogId=b` is `a`), as in nginx's `$arg_` variables. A parameter present with
/// no `=` has the empty value.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, [u8]>> {
    for pair in query.as_bytes().split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (
                pair.get(..eq).unwrap_or(&[]),
                pair.get(eq + 1..).unwrap_or(&[]),
            ),
            None => (pair, &[][..]),
        };
        if percent_decode(k, true).as_ref() == name.as_bytes() {
            return Some(percent_decode(v, true));
        }
    }
    None
}

/// Normalises a URL path: percent-decodes it (not `+`, which is literal in paths), collapses
/// runs of `/`, and drops a trailing `/` except for the root.
pub fn normalize_path(path: &str) -> Vec<u8> {
    let decoded = percent_decode(path.as_bytes(), false);
    let mut out = Vec::with_capacity(decoded.len());
    for &b in decoded.iter() {
        if b == b'/' && out.last() == Some(&b'/') {
            continue;
        }
        out.push(b);
    }
    if out.len() > 1 && out.last() == Some(&b'/') {
        out.pop();
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// Final shaping of key bytes: optional ASCII case folding and a length cap. Longer keys
/// are truncated to `max_len` bytes (documented outcome: variants beyond the cap share a key).
pub fn finish_key(mut key: Vec<u8>, lowercase: bool, max_len: usize) -> Vec<u8> {
    if lowercase {
        key.make_ascii_lowercase();
    }
    key.truncate(max_len);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_table() {
        let cases: &[(&str, bool, &[u8])] = &[
            ("abc", true, b"abc"),
            ("a%20b", true, b"a b"),
            ("a+b", true, b"a b"),
            ("a+b", false, b"a+b"),
            ("%41%4a%4A", true, b"AJJ"),
            ("%zz", true, b"%zz"),
            ("%", true, b"%"),
            ("%4", true, b"%4"),
            ("100%", true, b"100%"),
            ("%3F%26%3D", true, b"?&="),
            ("%00", true, b"\0"),
            ("%ff", true, b"\xff"),
        ];
        for (input, plus, want) in cases {
            assert_eq!(
                percent_decode(input.as_bytes(), *plus).as_ref(),
                *want,
                "{input}"
            );
        }
    }

    #[test]
    fn query_parameter_table() {
        let cases: &[(&str, &str, Option<&[u8]>)] = &[
            ("blogId=alice&logNo=1", "blogId", Some(b"alice")),
            ("logNo=1&blogId=alice", "blogId", Some(b"alice")),
            ("blogId=a&blogId=b", "blogId", Some(b"a")),
            ("%62logId=bob", "blogId", Some(b"bob")),
            ("blogId=a%26logNo%3D2", "blogId", Some(b"a&logNo=2")),
            ("blogId=a+b", "blogId", Some(b"a b")),
            ("blogId=a%20b", "blogId", Some(b"a b")),
            ("blogId", "blogId", Some(b"")),
            ("blogId=", "blogId", Some(b"")),
            ("&&blogId=x&", "blogId", Some(b"x")),
            ("blogid=x", "blogId", None),
            ("", "blogId", None),
            ("blogIdx=1", "blogId", None),
        ];
        for (q, name, want) in cases {
            assert_eq!(query_param(q, name).as_deref(), *want, "{q}");
        }
    }

    #[test]
    fn path_table() {
        let cases: &[(&str, &[u8])] = &[
            ("/alice/1", b"/alice/1"),
            ("/alice/1/", b"/alice/1"),
            ("//alice///1", b"/alice/1"),
            ("/%61lice/1", b"/alice/1"),
            ("/a+b", b"/a+b"),
            ("/", b"/"),
            ("", b"/"),
        ];
        for (p, want) in cases {
            assert_eq!(normalize_path(p), want.to_vec(), "{p}");
        }
        assert_eq!(split_path("/a?b=1#f"), ("/a", "b=1"));
        assert_eq!(split_path("/a"), ("/a", ""));
        assert_eq!(split_path("/a?x?y"), ("/a", "x?y"));
    }

    #[test]
    fn finish_folds_and_caps() {
        assert_eq!(finish_key(b"AbC".to_vec(), true, 10), b"abc");
        assert_eq!(finish_key(b"AbC".to_vec(), false, 2), b"Ab");
    }
}
