//! The micro-cache: which responses may be kept (RFC 9111 `Cache-Control`, RFC 5861
//! `stale-while-revalidate` / `stale-if-error`), the entry stored in a fixed shared-data slot,
//! its freshness, and refresh collapsing (at most one request per key per interval goes to
//! the backend). No host calls: the adapter reads and writes the slots.
//!
//! Layout: `slots` keys `sg:sp:c:<n>`, each holding at most one entry (the last writer of a
//! slot wins, so two hot pages that share a slot take turns), and `slots` lock keys
//! `sg:sp:l:<n>`. Shared data never frees a key; the memory bound is
//! `slots x (max_body_bytes + MAX_HEADER_BYTES + key)`.

use sg_core::codec::{Reader, Writer};

pub const VERSION: u8 = 1;
/// Response headers kept with an entry (lower-case names) and replayed on a hit.
pub const KEPT_HEADERS: &[&str] = &[
    "content-type",
    "content-encoding",
    "content-language",
    "cache-control",
    "etag",
    "last-modified",
    "vary",
];
/// Total bytes of kept header values.
pub const MAX_HEADER_BYTES: usize = 4096;
/// Longest cache key (bytes); longer keys are not cached.
pub const MAX_KEY_BYTES: usize = 2048;

/// The parts of `Cache-Control` the cache acts on. Unknown directives are ignored; a
/// malformed number makes that directive absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directives {
    pub max_age_s: Option<u64>,
    pub s_maxage_s: Option<u64>,
    pub stale_while_revalidate_s: Option<u64>,
    pub stale_if_error_s: Option<u64>,
    pub private: bool,
    pub no_store: bool,
    pub no_cache: bool,
}

pub fn parse_cache_control(v: &str) -> Directives {
    let mut d = Directives::default();
    for part in v.split(',') {
        let part = part.trim();
        let (name, arg) = match part.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (part, None),
        };
        let num = || arg.and_then(|a| a.parse::<u64>().ok());
        match name.to_ascii_lowercase().as_str() {
            "max-age" => d.max_age_s = num(),
            "s-maxage" => d.s_maxage_s = num(),
            "stale-while-revalidate" => d.stale_while_revalidate_s = num(),
            "stale-if-error" => d.stale_if_error_s = num(),
            "private" => d.private = true,
            "no-store" => d.no_store = true,
            "no-cache" => d.no_cache = true,
            _ => {}
        }
    }
    d
}

/// The rule's cache settings (config, milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Served from the proxy without a backend call for this long (capped by the backend's
    /// `s-maxage` / `max-age`).
    pub ttl_ms: u64,
    /// Stale-while-revalidate when the backend states none.
    pub default_swr_ms: u64,
    /// Stale-if-error when the backend states none.
    pub default_sie_ms: u64,
    /// Larger bodies are not cached.
    pub max_body_bytes: usize,
}

/// Why a response is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCacheable {
    Status,
    SetCookie,
    /// `private`, `no-store` or `no-cache`.
    Directive,
    TooLarge,
    /// An encoded body (`Content-Encoding`) or `Vary` on a request header other than
    /// `Accept-Encoding`: one stored copy could be wrong for the next client.
    Varies,
}

/// Freshness windows of a response stored at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    pub fresh_until_ms: u64,
    pub swr_until_ms: u64,
    pub sie_until_ms: u64,
}

/// Decides from the response head whether it may be kept, and for how long.
/// `content_length` is the declared length, if any (the body is checked again when complete).
pub fn policy(
    status: u16,
    headers: &[(String, String)],
    content_length: Option<usize>,
    s: &Settings,
    now: u64,
) -> Result<Windows, NotCacheable> {
    if status != 200 {
        return Err(NotCacheable::Status);
    }
    if headers.iter().any(|(k, _)| k == "set-cookie") {
        return Err(NotCacheable::SetCookie);
    }
    let cc = headers
        .iter()
        .filter(|(k, _)| k == "cache-control")
        .map(|(_, v)| v.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let d = parse_cache_control(&cc);
    if d.private || d.no_store || d.no_cache {
        return Err(NotCacheable::Directive);
    }
    let encoded = headers
        .iter()
        .any(|(k, v)| k == "content-encoding" && !v.trim().eq_ignore_ascii_case("identity"));
    let varies = headers
        .iter()
        .filter(|(k, _)| k == "vary")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .any(|v| !v.is_empty() && !v.eq_ignore_ascii_case("accept-encoding"));
    if encoded || varies {
        return Err(NotCacheable::Varies);
    }
    if content_length.is_some_and(|n| n > s.max_body_bytes) {
        return Err(NotCacheable::TooLarge);
    }
    let backend_ms = d.s_maxage_s.or(d.max_age_s).map(|x| x.saturating_mul(1000));
    let fresh = backend_ms.map_or(s.ttl_ms, |b| b.min(s.ttl_ms));
    let swr = d
        .stale_while_revalidate_s
        .map_or(s.default_swr_ms, |x| x.saturating_mul(1000));
    let sie = d
        .stale_if_error_s
        .map_or(s.default_sie_ms, |x| x.saturating_mul(1000));
    let fresh_until_ms = now.saturating_add(fresh);
    Ok(Windows {
        fresh_until_ms,
        swr_until_ms: fresh_until_ms.saturating_add(swr),
        sie_until_ms: fresh_until_ms.saturating_add(sie),
    })
}

/// The kept subset of response headers, within `MAX_HEADER_BYTES`.
pub fn kept_headers(headers: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for (k, v) in headers {
        if KEPT_HEADERS.contains(&k.as_str()) {
            bytes = bytes.saturating_add(k.len() + v.len());
            if bytes > MAX_HEADER_BYTES {
                break;
            }
            out.push((k.clone(), v.clone()));
        }
    }
    out
}

/// One cached response in a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub stored_ms: u64,
    pub windows: Windows,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What an entry is good for at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Fresh,
    /// Serve it, and let one request refresh it.
    StaleWhileRevalidate,
    /// Only as a fallback when the backend fails.
    StaleIfError,
    Expired,
}

impl Entry {
    pub fn state(&self, now: u64) -> State {
        let w = &self.windows;
        if now < w.fresh_until_ms {
            State::Fresh
        } else if now < w.swr_until_ms {
            State::StaleWhileRevalidate
        } else if now < w.sie_until_ms {
            State::StaleIfError
        } else {
            State::Expired
        }
    }

    /// Seconds since stored (the `Age` header of a hit).
    pub fn age_s(&self, now: u64) -> u64 {
        now.saturating_sub(self.stored_ms) / 1000
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.key.len() + self.body.len());
        w.u8(VERSION)
            .u32(self.key.len() as u32)
            .bytes(&self.key)
            .u64(self.stored_ms)
            .u64(self.windows.fresh_until_ms)
            .u64(self.windows.swr_until_ms)
            .u64(self.windows.sie_until_ms)
            .u32(self.headers.len() as u32);
        for (k, v) in &self.headers {
            w.u32(k.len() as u32)
                .bytes(k.as_bytes())
                .u32(v.len() as u32)
                .bytes(v.as_bytes());
        }
        w.u32(self.body.len() as u32).bytes(&self.body);
        w.finish()
    }

    /// None for anything not written by `encode` (readers then treat the slot as empty).
    pub fn decode(b: &[u8]) -> Option<Entry> {
        let mut r = Reader::new(b);
        if r.u8()? != VERSION {
            return None;
        }
        let klen = r.u32()? as usize;
        if klen > MAX_KEY_BYTES {
            return None;
        }
        let key = r.take(klen)?.to_vec();
        let stored_ms = r.u64()?;
        let windows = Windows {
            fresh_until_ms: r.u64()?,
            swr_until_ms: r.u64()?,
            sie_until_ms: r.u64()?,
        };
        let n = r.u32()? as usize;
        if n > KEPT_HEADERS.len() {
            return None;
        }
        let mut headers = Vec::with_capacity(n);
        for _ in 0..n {
            let kl = r.u32()? as usize;
            let k = String::from_utf8(r.take(kl)?.to_vec()).ok()?;
            let vl = r.u32()? as usize;
            let v = String::from_utf8(r.take(vl)?.to_vec()).ok()?;
            headers.push((k, v));
        }
        let blen = r.u32()? as usize;
        let body = r.take(blen)?.to_vec();
        (r.remaining() == 0).then_some(Entry {
            key,
            stored_ms,
            windows,
            headers,
            body,
        })
    }
}

/// The refresh lock of a slot: which key may refresh, until when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lock {
    pub key_fp: u64,
    pub until_ms: u64,
}

impl Lock {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(17);
        w.u8(VERSION).u64(self.key_fp).u64(self.until_ms);
        w.finish()
    }
    pub fn decode(b: &[u8]) -> Option<Lock> {
        let mut r = Reader::new(b);
        if r.u8()? != VERSION {
            return None;
        }
        let l = Lock {
            key_fp: r.u64()?,
            until_ms: r.u64()?,
        };
        (r.remaining() == 0).then_some(l)
    }
}

/// Refresh collapsing: given the current lock of the slot, whether this request (for key
/// `fp`) may go to the backend now, and the lock to write if so. One winner per key per
/// `interval_ms`; a lock of another key held in the same slot does not block this key for
/// longer than its own interval.
pub fn take_lock(current: Option<Lock>, fp: u64, now: u64, interval_ms: u64) -> Option<Lock> {
    match current {
        Some(l) if l.key_fp == fp && l.until_ms > now => None,
        _ => Some(Lock {
            key_fp: fp,
            until_ms: now.saturating_add(interval_ms),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const S: Settings = Settings {
        ttl_ms: 1000,
        default_swr_ms: 5000,
        default_sie_ms: 60_000,
        max_body_bytes: 1024,
    };

    #[test]
    fn cache_control_directives() {
        let d = parse_cache_control(
            "public, max-age=600, s-maxage=\"30\", stale-while-revalidate=10, stale-if-error=86400",
        );
        assert_eq!(d.max_age_s, Some(600));
        assert_eq!(d.s_maxage_s, Some(30));
        assert_eq!(d.stale_while_revalidate_s, Some(10));
        assert_eq!(d.stale_if_error_s, Some(86400));
        assert!(!d.private && !d.no_store);
        let d = parse_cache_control("Private, NO-STORE, max-age=abc");
        assert!(d.private && d.no_store);
        assert_eq!(d.max_age_s, None);
        assert_eq!(parse_cache_control(""), Directives::default());
    }

    #[test]
    fn never_cached_set_cookie_private_no_store_non_200_too_large() {
        let ok = h(&[("content-type", "text/html")]);
        assert!(policy(200, &ok, Some(10), &S, 0).is_ok());
        assert_eq!(policy(404, &ok, None, &S, 0), Err(NotCacheable::Status));
        assert_eq!(policy(503, &ok, None, &S, 0), Err(NotCacheable::Status));
        let c = h(&[("set-cookie", "sid=1"), ("cache-control", "max-age=60")]);
        assert_eq!(policy(200, &c, None, &S, 0), Err(NotCacheable::SetCookie));
        for cc in ["private", "no-store", "no-cache", "max-age=60, private"] {
            let x = h(&[("cache-control", cc)]);
            assert_eq!(
                policy(200, &x, None, &S, 0),
                Err(NotCacheable::Directive),
                "{cc}"
            );
        }
        assert_eq!(
            policy(200, &ok, Some(1025), &S, 0),
            Err(NotCacheable::TooLarge)
        );
        for (k, v) in [
            ("content-encoding", "gzip"),
            ("vary", "Cookie"),
            ("vary", "*"),
        ] {
            let x = h(&[(k, v)]);
            assert_eq!(
                policy(200, &x, None, &S, 0),
                Err(NotCacheable::Varies),
                "{k}: {v}"
            );
        }
        for (k, v) in [
            ("content-encoding", "identity"),
            ("vary", "Accept-Encoding"),
        ] {
            assert!(policy(200, &h(&[(k, v)]), None, &S, 0).is_ok(), "{k}: {v}");
        }
    }

    #[test]
    fn windows_honour_the_backend_and_cap_freshness_at_the_ttl() {
        // Backend: max-age 600 (capped to the 1 s TTL), SWR 10 s, SIE 1 day.
        let x = h(&[(
            "cache-control",
            "max-age=600, stale-while-revalidate=10, stale-if-error=86400",
        )]);
        let w = policy(200, &x, None, &S, 1000).unwrap_or(Windows {
            fresh_until_ms: 0,
            swr_until_ms: 0,
            sie_until_ms: 0,
        });
        assert_eq!(
            w,
            Windows {
                fresh_until_ms: 2000,
                swr_until_ms: 12_000,
                sie_until_ms: 86_402_000
            }
        );
        // Backend max-age 0: never fresh, still stale-while-revalidate by default.
        let x = h(&[("cache-control", "max-age=0")]);
        let w = policy(200, &x, None, &S, 1000).ok();
        assert_eq!(w.map(|w| w.fresh_until_ms), Some(1000));
        assert_eq!(w.map(|w| w.swr_until_ms), Some(6000));
    }

    #[test]
    fn entry_states_and_round_trip() {
        let e = Entry {
            key: b"post_view:/PostView?blogId=a".to_vec(),
            stored_ms: 1000,
            windows: Windows {
                fresh_until_ms: 2000,
                swr_until_ms: 3000,
                sie_until_ms: 10_000,
            },
            headers: h(&[("content-type", "text/html"), ("etag", "\"x\"")]),
            body: b"<html>".to_vec(),
        };
        assert_eq!(e.state(1999), State::Fresh);
        assert_eq!(e.state(2000), State::StaleWhileRevalidate);
        assert_eq!(e.state(3000), State::StaleIfError);
        assert_eq!(e.state(10_000), State::Expired);
        assert_eq!(e.age_s(3500), 2);
        let b = e.encode();
        assert_eq!(Entry::decode(&b), Some(e));
        for cut in 0..b.len() {
            assert_eq!(
                Entry::decode(b.get(..cut).unwrap_or(&[])),
                None,
                "cut {cut}"
            );
        }
        assert_eq!(Entry::decode(b"garbage"), None);
    }

    #[test]
    fn one_refresh_per_key_per_interval() {
        let l = take_lock(None, 7, 100, 1000);
        assert_eq!(
            l,
            Some(Lock {
                key_fp: 7,
                until_ms: 1100
            })
        );
        assert_eq!(take_lock(l, 7, 500, 1000), None);
        assert_eq!(take_lock(l, 7, 1099, 1000), None);
        assert!(take_lock(l, 7, 1100, 1000).is_some());
        // Another key of the same slot is not blocked.
        assert!(take_lock(l, 8, 500, 1000).is_some());
        let enc = Lock {
            key_fp: 1,
            until_ms: 2,
        };
        assert_eq!(Lock::decode(&enc.encode()), Some(enc));
        assert_eq!(Lock::decode(b"x"), None);
    }

    #[test]
    fn kept_headers_are_a_bounded_subset() {
        let x = h(&[
            ("content-type", "text/html"),
            ("set-cookie", "a=b"),
            ("x-upstream", "simple"),
            ("cache-control", "max-age=1"),
        ]);
        assert_eq!(
            kept_headers(&x),
            h(&[
                ("content-type", "text/html"),
                ("cache-control", "max-age=1")
            ])
        );
        let big = vec![("etag".to_string(), "x".repeat(MAX_HEADER_BYTES + 1))];
        assert!(kept_headers(&big).is_empty());
    }
}
