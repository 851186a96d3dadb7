//! What a client sends as text: the URL/key normaliser, every key extractor, query-string
//! and cookie parsing, and the `Cache-Control` parser (a backend's, but a cached response
//! is served to every client).

use arbitrary::{Result as AResult, Unstructured};
use sg_core::key::{strip_port, Alternative, FirstOf, KeyConfig, KeySpec, SimpleRequest};
use sg_core::normalize::{
    canonical_query, normalize_path, normalized, path_segments, percent_decode, query_pairs,
    query_param, split_path,
};
use sg_simplepage::cache::{parse_cache_control, policy, NotCacheable, Settings};
use sg_simplepage::decide::has_cookie;

use crate::lossy;

/// Percent-encodes `%` and every non-ASCII byte: read back by the normaliser (which decodes
/// once), the result is exactly `b`.
fn escape_for_reread(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if c == b'%' || !c.is_ascii() {
            s.push_str(&format!("%{c:02X}"));
        } else {
            s.push(char::from(c));
        }
    }
    s
}

/// The normal form: starts with `/`, no empty, `.` or `..` segment, no trailing `/` (but the
/// root).
fn assert_normal_form(raw: &str, n: &[u8]) {
    assert!(n.first() == Some(&b'/'), "{raw:?} -> {n:?}: not rooted");
    if n != b"/" {
        for seg in n.split(|&b| b == b'/').skip(1) {
            assert!(
                !seg.is_empty() && seg != b"." && seg != b"..",
                "{raw:?} -> {:?}: segment {:?}",
                String::from_utf8_lossy(n),
                String::from_utf8_lossy(seg)
            );
        }
    }
}

/// The normaliser (`normalize_path`, `normalized`, `percent_decode`, `path_segments`).
/// Properties: the normal form; idempotent (decoding once, as the backend does: the normal
/// form read back with its own `%` and non-ASCII bytes escaped is itself, and one without
/// `%` normalises to itself unescaped); the borrowing `normalized` agrees with
/// `normalize_path`; decoding never lengthens.
pub fn normalize(data: &[u8]) {
    let raw = lossy(data);
    let (path, query) = split_path(&raw);
    assert!(
        !path.contains('?') && !path.contains('#'),
        "{raw:?}: path {path:?}"
    );
    assert!(!query.contains('#'), "{raw:?}: query {query:?}");
    let n = normalize_path(path);
    assert_normal_form(&raw, &n);
    assert_eq!(
        normalize_path(&escape_for_reread(&n)),
        n,
        "{raw:?}: not idempotent"
    );
    if let Ok(text) = std::str::from_utf8(&n) {
        if !text.contains('%') {
            assert_eq!(normalize_path(text).as_slice(), text.as_bytes(), "{raw:?}");
        }
    }
    let borrowed = normalized(&raw);
    assert_eq!(
        borrowed.as_ref(),
        String::from_utf8_lossy(&n).as_ref(),
        "{raw:?}: normalized() disagrees with normalize_path()"
    );
    let segs: Vec<&[u8]> = path_segments(&n).collect();
    assert_eq!(
        segs.len(),
        n.iter().filter(|&&b| b == b'/').count() - usize::from(n == b"/")
    );
    for plus in [false, true] {
        let d = percent_decode(data, plus);
        assert!(d.len() <= data.len(), "decoding lengthened {data:?}");
    }
}

fn name(u: &mut Unstructured) -> AResult<String> {
    Ok(match u.int_in_range(0..=4)? {
        0 => "x-user".into(),
        1 => "x-forwarded-for".into(),
        2 => "blogId".into(),
        3 => "".into(),
        _ => u.arbitrary::<String>()?,
    })
}

fn spec(u: &mut Unstructured) -> AResult<KeySpec> {
    Ok(match u.int_in_range(0..=8)? {
        0 => KeySpec::Host,
        1 => KeySpec::Path,
        2 => KeySpec::ClientAddress,
        3 => KeySpec::ForwardedFor {
            trusted_proxies: u.int_in_range(0..=70)?,
        },
        4 => KeySpec::Query(name(u)?),
        5 => KeySpec::Header(name(u)?),
        6 => KeySpec::Fixed(u.arbitrary()?),
        7 => KeySpec::PathSegment(u.int_in_range(0..=70)?),
        _ => KeySpec::PathRegex(
            [
                "^/([^/]+)/[0-9]+$",
                "^/(.*)$",
                "([a-z]+)",
                "(x)?",
                "^/PostView",
                "(a)(b)",
            ][u.choose_index(6)?]
            .into(),
        ),
    })
}

fn specs(u: &mut Unstructured) -> AResult<Vec<KeySpec>> {
    let n = u.int_in_range(0..=9)?;
    (0..n).map(|_| spec(u)).collect()
}

fn key_config(u: &mut Unstructured) -> AResult<KeyConfig> {
    Ok(match u.int_in_range(0..=2)? {
        0 => KeyConfig::One(spec(u)?),
        1 => KeyConfig::Many(specs(u)?),
        _ => {
            let n = u.int_in_range(0..=9)?;
            let mut first_of = Vec::new();
            for _ in 0..n {
                first_of.push(if u.arbitrary()? {
                    Alternative::One(spec(u)?)
                } else {
                    Alternative::Many(specs(u)?)
                });
            }
            KeyConfig::FirstOf(FirstOf { first_of })
        }
    })
}

fn request(u: &mut Unstructured) -> AResult<SimpleRequest> {
    let mut headers = Vec::new();
    for _ in 0..u.int_in_range(0..=6)? {
        headers.push((name(u)?, u.arbitrary()?));
    }
    Ok(SimpleRequest {
        method: "GET".into(),
        path: u.arbitrary()?,
        host: u.arbitrary()?,
        source: u.arbitrary()?,
        headers,
    })
}

/// Every key extractor (`KeyConfig::compile`, `KeyPlan::key`: host, path, client address,
/// forwarded-for, query, header, fixed, path segment, path regex; composites and `first_of`).
/// Properties: a cap outside 1..=4096 is refused; a key never exceeds its cap; a lower-cased
/// key has no upper-case ASCII; extraction is deterministic; `strip_port` returns a part of
/// its input.
pub fn key(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(cfg), Ok(lowercase), Ok(max_len), Ok(req)) = (
        key_config(&mut u),
        u.arbitrary::<bool>(),
        u.int_in_range(0usize..=5000),
        request(&mut u),
    ) else {
        return;
    };
    let plan = match cfg.compile(lowercase, max_len, "rules[0]") {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.reason.is_empty());
            return;
        }
    };
    assert!(
        (1..=4096).contains(&max_len),
        "accepted max_key_len {max_len}"
    );
    let k = plan.key(&req);
    assert_eq!(k, plan.key(&req), "not deterministic");
    if let Some(k) = &k {
        assert!(
            k.len() <= max_len,
            "key of {} bytes over its cap {max_len}",
            k.len()
        );
        if lowercase {
            assert!(
                !k.iter().any(u8::is_ascii_uppercase),
                "{k:?} not lower-cased"
            );
        }
    }
    for a in [&req.host, &req.source] {
        let s = strip_port(a);
        assert!(a.contains(s), "strip_port({a:?}) = {s:?}");
    }
}

/// Splits fuzzer bytes at 0xFF into up to `n` parts (0xFF never occurs in UTF-8).
fn parts(data: &[u8], n: usize) -> Vec<String> {
    let mut v: Vec<String> = data.splitn(n, |&b| b == 0xff).map(lossy).collect();
    v.resize(n, String::new());
    v
}

/// Query-string and cookie parsing (`query_pairs`, `query_param`, `canonical_query`,
/// simplepage's `has_cookie`). Properties: the pairs are the non-empty `&`-separated items
/// split at their first `=`; `query_param` is the first pair whose decoded name matches;
/// a canonical query is canonical (re-canonicalising changes nothing) and ASCII, and keeps
/// only the listed names, once each; a cookie of a listed name is always found, `*` finds
/// any named cookie, and more names never find less.
pub fn query_cookie(data: &[u8]) {
    let p = parts(data, 4);
    let (q, name, cookie, names) = (&p[0], &p[1], &p[2], &p[3]);
    let items: Vec<&str> = q.split('&').filter(|s| !s.is_empty()).collect();
    let pairs: Vec<(&[u8], &[u8])> = query_pairs(q).collect();
    assert_eq!(items.len(), pairs.len(), "{q:?}");
    for (item, (k, v)) in items.iter().zip(&pairs) {
        assert!(!k.contains(&b'='), "{q:?}: name {k:?}");
        let mut back = k.to_vec();
        if item.contains('=') {
            back.push(b'=');
            back.extend_from_slice(v);
        }
        assert_eq!(back, item.as_bytes(), "{q:?}");
    }
    let want = pairs
        .iter()
        .find(|(k, _)| percent_decode(k, true).as_ref() == name.as_bytes())
        .map(|(_, v)| percent_decode(v, true).into_owned());
    assert_eq!(
        query_param(q, name).map(|c| c.into_owned()),
        want,
        "{q:?} {name:?}"
    );
    let keep: Vec<String> = names.split(',').map(str::to_string).collect();
    for filter in [None, Some(keep.as_slice())] {
        let c = canonical_query(q, filter);
        assert!(c.is_ascii(), "{q:?} -> {c:?}");
        assert_eq!(canonical_query(&c, filter), c, "{q:?}: not canonical");
        if let Some(keep) = filter {
            let mut seen = Vec::new();
            for (k, _) in query_pairs(&c) {
                let k = percent_decode(k, true).into_owned();
                assert!(keep.iter().any(|n| n.as_bytes() == k), "{q:?}: kept {k:?}");
                assert!(!seen.contains(&k), "{q:?}: {k:?} twice");
                seen.push(k);
            }
        }
    }
    let found = has_cookie(cookie, &keep);
    let any = has_cookie(cookie, &["*".to_string()]);
    assert!(
        !found || any,
        "{cookie:?}: a listed cookie but not any cookie"
    );
    let mut more = keep.clone();
    more.push(name.clone());
    assert!(
        !found || has_cookie(cookie, &more),
        "{cookie:?}: more names found less"
    );
    let n = name.trim();
    if !n.is_empty() && !n.contains(';') && !n.contains('=') {
        let with = format!("{cookie}; {n}=1");
        assert!(has_cookie(&with, &[n.to_string()]), "{with:?} lacks {n:?}");
    }
}

/// The `Cache-Control` parser and the cache policy built on it. Properties: directive names
/// are case-insensitive; repeating the header changes nothing (the last value of a directive
/// wins); a `private`/`no-store`/`no-cache` response is never kept; a kept response is
/// fresh for at most the rule's TTL, and its stale windows start after freshness.
pub fn cache_control(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(ttl_ms), Ok(now), Ok(rest)) = (
        u.int_in_range(0u64..=86_400_000),
        u.arbitrary::<u64>(),
        u.arbitrary::<Vec<u8>>(),
    ) else {
        return;
    };
    let v = lossy(&rest);
    let d = parse_cache_control(&v);
    assert_eq!(
        parse_cache_control(&v.to_ascii_uppercase()),
        d,
        "{v:?}: case"
    );
    assert_eq!(
        parse_cache_control(&format!("{v},{v}")),
        d,
        "{v:?}: repeated"
    );
    let s = Settings {
        ttl_ms,
        default_swr_ms: 1000,
        default_sie_ms: 2000,
        max_body_bytes: 1 << 20,
    };
    let headers = vec![("cache-control".to_string(), v.clone())];
    match policy(200, &headers, None, &s, now) {
        Ok(w) => {
            assert!(!(d.private || d.no_store || d.no_cache), "{v:?} kept");
            assert!(
                w.fresh_until_ms <= now.saturating_add(ttl_ms),
                "{v:?}: {w:?}"
            );
            assert!(w.fresh_until_ms >= now.min(w.fresh_until_ms));
            assert!(w.swr_until_ms >= w.fresh_until_ms && w.sie_until_ms >= w.fresh_until_ms);
        }
        Err(NotCacheable::Directive) => assert!(d.private || d.no_store || d.no_cache),
        Err(other) => panic!("{v:?}: {other:?} for a plain 200"),
    }
}
