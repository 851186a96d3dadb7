//! The per-request decision: is this request allowed on the read-only simple page at all
//! (safety), and which trigger, if any, sends it there.

use crate::config::Rule;
use crate::overload::Reason;
use sg_core::key::RequestView;

/// Why an eligible request is diverted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Hotkey,
    Operator,
    Overload(Reason),
    /// A `breaker` API the page needs refuses calls (`sg:br:open`).
    Breaker,
    Always,
}

impl Trigger {
    /// Value of the divert header and of the response header.
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Hotkey => "hotkey",
            Trigger::Operator => "operator",
            Trigger::Overload(Reason::Rate) => "overload:rate",
            Trigger::Overload(Reason::Errors) => "overload:errors",
            Trigger::Overload(Reason::Latency) => "overload:latency",
            Trigger::Breaker => "breaker",
            Trigger::Always => "always",
        }
    }

    /// Index into per-trigger counters: hotkey, operator, overload, always.
    pub fn index(&self) -> usize {
        match self {
            Trigger::Hotkey => 0,
            Trigger::Operator => 1,
            Trigger::Overload(_) => 2,
            Trigger::Always => 3,
            Trigger::Breaker => 4,
        }
    }
}

/// Why a request that a trigger would divert stays on the main backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excluded {
    /// Not GET or HEAD: the simple page is read-only.
    Method,
    Cookie,
    Authorization,
}

/// Safety rules, checked only when a trigger applies (each is a header read).
pub fn eligible<R: RequestView + ?Sized>(rule: &Rule, req: &R) -> Result<(), Excluded> {
    if !matches!(req.method(), "GET" | "HEAD") {
        return Err(Excluded::Method);
    }
    if rule.exclude_authorization && req.header("authorization").is_some() {
        return Err(Excluded::Authorization);
    }
    if !rule.exclude_cookies.is_empty() {
        if let Some(c) = req.header("cookie") {
            if has_cookie(&c, &rule.exclude_cookies) {
                return Err(Excluded::Cookie);
            }
        }
    }
    Ok(())
}

/// Whether a `Cookie` header carries one of `names` (`"*"`: any cookie at all).
pub fn has_cookie(header: &str, names: &[String]) -> bool {
    header.split(';').any(|pair| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n).trim();
        !name.is_empty() && names.iter().any(|n| n == "*" || n == name)
    })
}

/// What the request's state says, gathered by the adapter (cheapest first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals {
    pub always: bool,
    pub listed: bool,
    pub hot: bool,
    pub overloaded: Option<Reason>,
    /// A `breaker` API the rule names is open (half-open, forced open).
    pub breaker_open: bool,
    /// This request is one of the probes that keep going to the main backend in overload.
    pub probe: bool,
}

/// The trigger that diverts the request, in precedence order: always, operator, hotkey,
/// breaker, overload (unless the request is a probe).
pub fn trigger(s: &Signals) -> Option<Trigger> {
    if s.always {
        Some(Trigger::Always)
    } else if s.listed {
        Some(Trigger::Operator)
    } else if s.hot {
        Some(Trigger::Hotkey)
    } else if s.breaker_open {
        Some(Trigger::Breaker)
    } else {
        match s.overloaded {
            Some(r) if !s.probe => Some(Trigger::Overload(r)),
            _ => None,
        }
    }
}

/// Probe selection: request number `n` of a worker is a probe for `percent` in 100.
pub fn is_probe(n: u64, percent: u64) -> bool {
    percent > 0 && n % 100 < percent
}

/// What becomes of the simple-page backend's answer to a diverted request (header divert).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DivertedAnswer {
    /// Below 500: passed (and maybe cached).
    Good,
    /// Failed (5xx, reset, no answer): replaced by the stale copy (stale-if-error), whose body
    /// replaces the one that follows.
    StaleCopy,
    /// Failed, no usable stale copy: replaced by the rule's fallback (status, headers, and
    /// the body when one follows).
    Fallback,
    /// Failed and nothing to replace it with (`fallback: null`): passed as it is.
    Failed,
}

/// Decides [`DivertedAnswer`] from the answer's `status` (0: none), whether its headers end
/// the stream (`eos`: no body follows, so a stale copy's body could not be put in), whether a
/// stale copy within its stale-if-error window is at hand, and whether the rule has a
/// fallback.
pub fn diverted_answer(status: u16, eos: bool, stale: bool, fallback: bool) -> DivertedAnswer {
    if status != 0 && status < 500 {
        DivertedAnswer::Good
    } else if stale && !eos {
        DivertedAnswer::StaleCopy
    } else if fallback {
        DivertedAnswer::Fallback
    } else {
        DivertedAnswer::Failed
    }
}

/// `base_url` + the request's path and query, for the redirect mode.
pub fn redirect_location(base_url: &str, path: &str) -> String {
    let base = base_url.trim_end_matches('/');
    if path.starts_with('/') {
        format!("{base}{path}")
    } else {
        format!("{base}/{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Compile, Config};
    use sg_core::key::SimpleRequest;

    fn rule(extra: &str) -> Rule {
        let cfg = format!(
            r#"{{"rules":[{{"name":"r","key":{{"query":"blogId"}},"triggers":{{"always":true}}{extra}}}]}}"#
        );
        let p = Config::parse(cfg.as_bytes());
        match p.ok().and_then(|p| p.rules.into_iter().next()) {
            Some(r) => r,
            None => panic!("{cfg}"),
        }
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> SimpleRequest {
        SimpleRequest {
            method: method.to_string(),
            path: "/PostView?blogId=a".to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..SimpleRequest::default()
        }
    }

    #[test]
    fn only_reads_without_credentials_are_eligible() {
        let r = rule(r#","exclude_cookies":["SESSION"]"#);
        assert_eq!(eligible(&r, &req("GET", &[])), Ok(()));
        assert_eq!(eligible(&r, &req("HEAD", &[])), Ok(()));
        for m in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "get"] {
            assert_eq!(eligible(&r, &req(m, &[])), Err(Excluded::Method), "{m}");
        }
        assert_eq!(
            eligible(&r, &req("GET", &[("authorization", "Bearer x")])),
            Err(Excluded::Authorization)
        );
        assert_eq!(
            eligible(&r, &req("GET", &[("cookie", "theme=dark; SESSION=abc")])),
            Err(Excluded::Cookie)
        );
        assert_eq!(
            eligible(&r, &req("GET", &[("cookie", "theme=dark; XSESSION=1")])),
            Ok(())
        );
        let open = rule(r#","exclude_authorization":false"#);
        assert_eq!(
            eligible(
                &open,
                &req("GET", &[("authorization", "x"), ("cookie", "a=b")])
            ),
            Ok(())
        );
        let any = rule(r#","exclude_cookies":["*"]"#);
        assert_eq!(
            eligible(&any, &req("GET", &[("cookie", "a=b")])),
            Err(Excluded::Cookie)
        );
        assert_eq!(eligible(&any, &req("GET", &[("cookie", " ; ")])), Ok(()));
    }

    #[test]
    fn trigger_precedence_and_probes() {
        let mut s = Signals::default();
        assert_eq!(trigger(&s), None);
        s.overloaded = Some(Reason::Latency);
        assert_eq!(trigger(&s), Some(Trigger::Overload(Reason::Latency)));
        s.probe = true;
        assert_eq!(trigger(&s), None, "a probe measures the main backend");
        s.breaker_open = true;
        assert_eq!(
            trigger(&s),
            Some(Trigger::Breaker),
            "an open API the page needs"
        );
        s.hot = true;
        assert_eq!(
            trigger(&s),
            Some(Trigger::Hotkey),
            "probes only skip overload"
        );
        s.listed = true;
        assert_eq!(trigger(&s), Some(Trigger::Operator));
        s.always = true;
        assert_eq!(trigger(&s), Some(Trigger::Always));
        let probes = (0..1000).filter(|n| is_probe(*n, 5)).count();
        assert_eq!(probes, 50);
        assert!(!(0..1000).any(|n| is_probe(n, 0)));
    }

    #[test]
    fn a_failed_simple_page_gets_the_stale_copy_else_the_fallback() {
        use DivertedAnswer::*;
        for status in [200, 204, 304, 404, 429, 499] {
            assert_eq!(diverted_answer(status, false, true, true), Good, "{status}");
            assert_eq!(
                diverted_answer(status, true, false, false),
                Good,
                "{status}"
            );
        }
        for status in [0, 500, 502, 503, 504, 599, 999] {
            assert_eq!(diverted_answer(status, false, true, true), StaleCopy);
            assert_eq!(diverted_answer(status, false, true, false), StaleCopy);
            // No body follows (a HEAD): no stale body can be put in; the fallback's status
            // and headers can.
            assert_eq!(diverted_answer(status, true, true, true), Fallback);
            assert_eq!(diverted_answer(status, false, false, true), Fallback);
            assert_eq!(diverted_answer(status, true, false, true), Fallback);
            assert_eq!(diverted_answer(status, false, false, false), Failed);
            assert_eq!(diverted_answer(status, true, true, false), Failed);
        }
    }

    #[test]
    fn fallback_defaults_null_and_refusals() {
        let r = rule("");
        let f = r.fallback.clone().unwrap();
        assert_eq!(f.status, 503);
        assert!(f
            .headers
            .contains(&("retry-after".to_string(), "5".to_string())));
        assert!(f
            .headers
            .contains(&("cache-control".to_string(), "no-store".to_string())));
        assert!(!f.body.is_empty());
        assert_eq!(rule(r#","fallback":null"#).fallback, None);
        let own = rule(r#","fallback":{"status":200,"headers":{"content-type":"text/html"},"body":"<p>busy</p>"}"#)
            .fallback
            .unwrap();
        assert_eq!(
            (own.status, own.headers, own.body),
            (
                200,
                vec![("content-type".to_string(), "text/html".to_string())],
                b"<p>busy</p>".to_vec()
            )
        );
        for (bad, field) in [
            (r#"{"status":99}"#, "fallback.status"),
            (r#"{"status":600}"#, "fallback.status"),
            (r#"{"headers":{"X-Up":"1"}}"#, "fallback.headers"),
            (r#"{"headers":{":status":"1"}}"#, "fallback.headers"),
            (r#"{"headers":{"content-length":"1"}}"#, "fallback.headers"),
            (
                r#"{"headers":{"x-spikeguard-simple-page":"x"}}"#,
                "fallback.headers",
            ),
            (r#"{"headers":{"a":"x\ny"}}"#, "fallback.headers"),
            (r#"{"nope":1}"#, "fallback"),
        ] {
            let cfg = format!(
                r#"{{"rules":[{{"name":"r","triggers":{{"always":true}},"fallback":{bad}}}]}}"#
            );
            let e = Config::parse(cfg.as_bytes()).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains(field)),
                "{bad}: {e:?}"
            );
        }
        let big = format!(
            r#"{{"rules":[{{"name":"r","triggers":{{"always":true}},"fallback":{{"body":"{}"}}}}]}}"#,
            "x".repeat(crate::config::MAX_FALLBACK_BODY + 1)
        );
        assert!(Config::parse(big.as_bytes()).is_err());
    }

    #[test]
    fn redirect_keeps_path_and_query() {
        assert_eq!(
            redirect_location("https://simple.example/", "/PostView?blogId=a&logNo=1"),
            "https://simple.example/PostView?blogId=a&logNo=1"
        );
        assert_eq!(
            redirect_location("https://s.example", "x"),
            "https://s.example/x"
        );
    }
}
