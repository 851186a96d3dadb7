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

/// The raw (still encoded) name and value of each `&`-separated parameter, empty ones
/// skipped; a parameter with no `=` has the empty value. Splitting happens before decoding, so
/// an encoded `&` or `=` stays inside its value.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .as_bytes()
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(eq) => (
                pair.get(..eq).unwrap_or(&[]),
                pair.get(eq + 1..).unwrap_or(&[]),
            ),
            None => (pair, &[][..]),
        })
}

/// Value of query parameter `name` in `query`. Names and values are percent-decoded before
/// comparison, so `%62logId=7` matches `blogId`; an encoded `&` or `=` inside a value stays
/// part of the value because splitting happens before decoding. The FIRST occurrence wins
/// (`?blogId=a&blogId=b` is `a`), as in nginx's `$arg_` variables. A parameter present with
/// no `=` has the empty value.
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, [u8]>> {
    for (k, v) in query_pairs(query) {
        if percent_decode(k, true).as_ref() == name.as_bytes() {
            return Some(percent_decode(v, true));
        }
    }
    None
}

/// Normalises a URL path: percent-decodes it (not `+`, which is literal in paths), collapses
/// runs of `/`, removes `.` and `..` segments (RFC 3986 5.2.4, as Envoy's `normalize_path`;
/// `..` never climbs above the root), and drops a trailing `/` except for the root.
pub fn normalize_path(path: &str) -> Vec<u8> {
    let decoded = percent_decode(path.as_bytes(), false);
    let mut segs: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len().max(1));
    for s in &segs {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// `normalize_path` of the path part (before `?`) of a raw `:path`, as text (lossy), borrowed
/// when it is already normal (the common case: no `%`, no empty, `.` or `..` segment, no
/// trailing `/`), so matching and key extraction allocate nothing for ordinary URLs.
pub fn normalized(raw: &str) -> Cow<'_, str> {
    let path = split_path(raw).0;
    let normal = path == "/"
        || (path.starts_with('/')
            && !path.contains('%')
            && path
                .split('/')
                .skip(1)
                .all(|seg| !seg.is_empty() && seg != "." && seg != ".."));
    if normal {
        return Cow::Borrowed(path);
    }
    match String::from_utf8(normalize_path(path)) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`),
/// upper-case hex: the one spelling of a decoded query name or value.
pub fn encode_component(b: &[u8], out: &mut String) {
    let hex = |n: u8| char::from(if n < 10 { b'0' + n } else { b'A' + n - 10 });
    for &c in b {
        if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(c));
        } else {
            out.push('%');
            out.push(hex(c >> 4));
            out.push(hex(c & 15));
        }
    }
}

/// The canonical form of a query string for a cache key. Names and values are decoded (`+` is
/// a space) and re-encoded one way (`encode_component`), then sorted by name, then value.
/// With `keep`, only the named parameters stay, and only the first occurrence of each (the one
/// key extraction reads): `logNo=1&x=913&blogId=a` with `[blogId, logNo]` is
/// `blogId=a&logNo=1`, so a cache-buster or a reordering is the same page. Without `keep`
/// every parameter stays (duplicates too): distinct pages can never share an entry.
pub fn canonical_query(query: &str, keep: Option<&[String]>) -> String {
    // Borrowed unless a name or value needs decoding: no allocation per parameter.
    type Pair<'q> = (Cow<'q, [u8]>, Cow<'q, [u8]>);
    let mut pairs: Vec<Pair<'_>> = Vec::new();
    for (k, v) in query_pairs(query) {
        let k = percent_decode(k, true);
        if let Some(keep) = keep {
            if !keep.iter().any(|n| n.as_bytes() == &*k) || pairs.iter().any(|(seen, _)| *seen == k)
            {
                continue;
            }
        }
        pairs.push((k, percent_decode(v, true)));
    }
    pairs.sort();
    let mut out = String::with_capacity(query.len());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        encode_component(k, &mut out);
        out.push('=');
        encode_component(v, &mut out);
    }
    out
}

/// The segments of a normalised path (`/a/b` -> `a`, `b`; `/` -> none).
pub fn path_segments(normalised: &[u8]) -> impl Iterator<Item = &[u8]> {
    normalised.split(|&b| b == b'/').filter(|s| !s.is_empty())
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
            ("/a/./b", b"/a/b"),
            ("/a/../b", b"/b"),
            ("/../../b", b"/b"),
            ("/a/b/..", b"/a"),
            ("/%2e%2e/b", b"/b"),
            ("/a/.../b", b"/a/.../b"),
            ("/..", b"/"),
        ];
        for (p, want) in cases {
            assert_eq!(normalize_path(p), want.to_vec(), "{p}");
        }
        assert_eq!(split_path("/a?b=1#f"), ("/a", "b=1"));
        assert_eq!(split_path("/a"), ("/a", ""));
        assert_eq!(split_path("/a?x?y"), ("/a", "x?y"));
    }

    #[test]
    fn normalized_borrows_ordinary_paths_and_agrees_with_normalize_path() {
        for raw in [
            "/",
            "/PostView?blogId=a",
            "/alice/12",
            "/a/b.c",
            "/.well-known/x",
        ] {
            assert!(matches!(normalized(raw), Cow::Borrowed(_)), "{raw}");
        }
        for raw in [
            "/", "", "/a/", "//a", "/a/./b", "/a/../b", "/%61", "/a?x", "/a/.", "/a/..", "/.b/",
            "/a%2Fb", "/x//y/", "a/b",
        ] {
            let want = String::from_utf8_lossy(&normalize_path(split_path(raw).0)).into_owned();
            assert_eq!(normalized(raw), want, "{raw}");
        }
    }

    #[test]
    fn canonical_query_table() {
        let page = ["blogId".to_string(), "logNo".to_string()];
        let keep: Option<&[String]> = Some(&page);
        let cases: &[(&str, Option<&[String]>, &str)] = &[
            ("blogId=a&logNo=1", keep, "blogId=a&logNo=1"),
            ("logNo=1&blogId=a", keep, "blogId=a&logNo=1"),
            ("blogId=a&logNo=1&x=913", keep, "blogId=a&logNo=1"),
            (
                "utm_source=sms&blogId=a&logNo=1&_=1700000000",
                keep,
                "blogId=a&logNo=1",
            ),
            ("%62logId=a&logNo=%31", keep, "blogId=a&logNo=1"),
            ("blogId=a&blogId=b&logNo=1", keep, "blogId=a&logNo=1"),
            ("blogId=a+b&logNo=1", keep, "blogId=a%20b&logNo=1"),
            ("blogId=a%20b&logNo=1", keep, "blogId=a%20b&logNo=1"),
            ("blogId=%e3%81%82", keep, "blogId=%E3%81%82"),
            ("blogId&logNo=", keep, "blogId=&logNo="),
            ("&&blogId=a&&", keep, "blogId=a"),
            ("x=1", keep, ""),
            ("", keep, ""),
            ("b=2&a=1&a=0", None, "a=0&a=1&b=2"),
            ("a=%7e&b=~", None, "a=~&b=~"),
            ("q=a%26b", None, "q=a%26b"),
        ];
        for (q, keep, want) in cases {
            assert_eq!(canonical_query(q, *keep), *want, "{q}");
        }
    }

    #[test]
    fn finish_folds_and_caps() {
        assert_eq!(finish_key(b"AbC".to_vec(), true, 10), b"abc");
        assert_eq!(finish_key(b"AbC".to_vec(), false, 2), b"Ab");
    }
}
