//! Request-key extraction: which request value a rule is keyed by. Values go through the one
//! normaliser (`normalize`). A key whose value is missing is `None`: the caller's documented
//! outcome applies (for `ratelimit`, like nginx, the rule does not apply to that request).
//!
//! One page has many URLs (`/PostView?blogId=X&logNo=1`, `/X/1`, `/PostList?blogId=X`), so a
//! key can come from the path (`path_segment`, `path_regex`, over the normalised path) and a
//! rule can list alternatives (`first_of`): the first that yields a value is the key, and
//! every form of one blog's URLs gives the same key bytes.

use crate::normalize::{finish_key, path_segments, percent_decode, query_param, split_path};
use crate::ConfigError;
use serde::Deserialize;

/// One component of a key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum KeySpec {
    /// The request authority (`Host`), lowercased, port dropped.
    Host,
    /// The normalised URL path (no query string).
    Path,
    /// The peer address of the connection (no port).
    ClientAddress,
    /// The client address from `x-forwarded-for`, trusting the last `trusted_proxies` hops
    /// (as Envoy's `xff_num_trusted_hops`); with too few entries, the peer address is used.
    ForwardedFor { trusted_proxies: u32 },
    /// A query parameter (first occurrence wins), percent-decoded.
    Query(String),
    /// A request header (first value).
    Header(String),
    /// A fixed key: one bucket for every request the rule matches.
    Fixed(String),
    /// The n-th segment (from 0) of the normalised path: 0 is `X` in `/X/123`.
    PathSegment(usize),
    /// The one capture group of this regex (regex-lite syntax) over the normalised path:
    /// `^/([^/]+)/[0-9]+$` is `X` in `/X/123`. No match: no key.
    PathRegex(String),
}

impl KeySpec {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        match self {
            KeySpec::Query(n) | KeySpec::Header(n) if n.is_empty() => {
                Err(ConfigError::new(path, "name must not be empty"))
            }
            KeySpec::ForwardedFor { trusted_proxies } if *trusted_proxies > 64 => {
                Err(ConfigError::new(path, "trusted_proxies must be at most 64"))
            }
            KeySpec::PathSegment(n) if *n > 64 => {
                Err(ConfigError::new(path, "path_segment must be at most 64"))
            }
            KeySpec::Header(n) if n.starts_with(':') => Err(ConfigError::new(
                path,
                "pseudo-headers are not keys; use host or path",
            )),
            _ => Ok(()),
        }
    }
}

/// What a filter can read about the request. Implemented over host calls in the adapter
/// and over plain structs in tests.
pub trait RequestView {
    /// `:method`.
    fn method(&self) -> &str;
    /// `:path` including the query string.
    fn path(&self) -> &str;
    /// `:authority`.
    fn host(&self) -> &str;
    /// Peer address, possibly with a port (`127.0.0.1:5000`, `[::1]:5000`).
    fn source_address(&self) -> &str;
    /// First value of a request header (name in lowercase).
    fn header(&self, name: &str) -> Option<String>;
    /// The normalised path (`normalize::normalized`): what rules match and keys are taken
    /// from, so every spelling of one URL is the same. Views may cache it.
    fn normalized_path(&self) -> std::borrow::Cow<'_, str> {
        crate::normalize::normalized(self.path())
    }
}

/// Strips a port from `host:port`, `[v6]:port` or a bare address.
pub fn strip_port(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match addr.rsplit_once(':') {
        // A single colon means host:port; more colons is a bare IPv6 address.
        Some((h, p)) if !h.contains(':') && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    }
}

fn forwarded_for<R: RequestView + ?Sized>(req: &R, trusted: u32) -> Vec<u8> {
    let peer = || strip_port(req.source_address()).as_bytes().to_vec();
    if trusted == 0 {
        return peer();
    }
    let Some(xff) = req.header("x-forwarded-for") else {
        return peer();
    };
    let hops: Vec<&str> = xff
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    // The nearest proxy appended the last entry; with N trusted hops the client is the Nth
    // entry from the right.
    match hops
        .len()
        .checked_sub(trusted as usize)
        .and_then(|i| hops.get(i))
    {
        Some(h) => strip_port(h).as_bytes().to_vec(),
        None => peer(),
    }
}

/// Extracts one component's raw (normalised but not yet folded/capped) value.
pub fn extract<R: RequestView + ?Sized>(spec: &KeySpec, req: &R) -> Option<Vec<u8>> {
    match spec {
        KeySpec::Host => {
            let h = strip_port(req.host());
            (!h.is_empty()).then(|| h.to_ascii_lowercase().into_bytes())
        }
        KeySpec::Path => Some(req.normalized_path().as_bytes().to_vec()),
        KeySpec::ClientAddress => {
            let a = strip_port(req.source_address());
            (!a.is_empty()).then(|| a.as_bytes().to_vec())
        }
        KeySpec::ForwardedFor { trusted_proxies } => {
            let v = forwarded_for(req, *trusted_proxies);
            (!v.is_empty()).then_some(v)
        }
        KeySpec::Query(name) => query_param(split_path(req.path()).1, name).map(|c| c.into_owned()),
        KeySpec::Header(name) => req
            .header(name)
            .map(|v| percent_decode(v.trim().as_bytes(), false).into_owned()),
        KeySpec::Fixed(v) => Some(v.as_bytes().to_vec()),
        KeySpec::PathSegment(n) => path_segments(req.normalized_path().as_bytes())
            .nth(*n)
            .map(<[u8]>::to_vec),
        // Compiled into a `KeyPart::Regex` by `KeyConfig::compile`; uncompiled, it has no value.
        KeySpec::PathRegex(_) => None,
    }
}

/// A compiled key component.
#[derive(Debug, Clone)]
pub enum KeyPart {
    Spec(KeySpec),
    /// `KeySpec::PathRegex`, compiled: exactly one capture group.
    Regex(regex_lite::Regex),
}

impl KeyPart {
    fn extract<R: RequestView + ?Sized>(&self, req: &R) -> Option<Vec<u8>> {
        match self {
            KeyPart::Spec(s) => extract(s, req),
            KeyPart::Regex(re) => {
                let p = req.normalized_path();
                let c = re.captures(&p)?.get(1)?;
                Some(c.as_str().as_bytes().to_vec())
            }
        }
    }

    fn compile(spec: &KeySpec, path: &str) -> Result<KeyPart, ConfigError> {
        spec.validate(path)?;
        let KeySpec::PathRegex(r) = spec else {
            return Ok(KeyPart::Spec(spec.clone()));
        };
        let bad = |why: String| ConfigError::new(format!("{path}.path_regex"), why);
        let re = regex_lite::Regex::new(r)
            .map_err(|e| bad(format!("{r:?} is not a valid regex: {e}")))?;
        if re.captures_len() != 2 {
            return Err(bad(format!(
                "{r:?} must have exactly one capture group, the key"
            )));
        }
        Ok(KeyPart::Regex(re))
    }
}

/// A rule's `key` in config: one component, a list (composite key), or
/// `{"first_of": [...]}`: alternatives (each one component or a list), the first that has a
/// value wins.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeyConfig {
    One(KeySpec),
    Many(Vec<KeySpec>),
    FirstOf(FirstOf),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirstOf {
    pub first_of: Vec<Alternative>,
}

/// One alternative of `first_of`: a component or a composite.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Alternative {
    One(KeySpec),
    Many(Vec<KeySpec>),
}

impl Alternative {
    fn parts(&self) -> Vec<KeySpec> {
        match self {
            Alternative::One(k) => vec![k.clone()],
            Alternative::Many(v) => v.clone(),
        }
    }
}

/// Compiles one alternative's components at `at` (`<rule>.key`, or `<rule>.key.first_of[i]`).
fn compile_parts(parts: &[KeySpec], at: &str) -> Result<Vec<KeyPart>, ConfigError> {
    if parts.is_empty() || parts.len() > 8 {
        return Err(ConfigError::new(at, "must have 1 to 8 components"));
    }
    parts
        .iter()
        .enumerate()
        .map(|(j, p)| KeyPart::compile(p, &format!("{at}[{j}]")))
        .collect()
}

/// Default cap on key bytes (`max_key_len`).
pub fn default_max_key_len() -> usize {
    256
}

impl KeyConfig {
    /// Validates and compiles the key of the rule at config path `path` (errors name
    /// `<path>.key[...]` or `<path>.max_key_len`).
    pub fn compile(
        &self,
        lowercase: bool,
        max_len: usize,
        path: &str,
    ) -> Result<KeyPlan, ConfigError> {
        let at = format!("{path}.key");
        let alternatives = match self {
            KeyConfig::One(k) => vec![compile_parts(std::slice::from_ref(k), &at)?],
            KeyConfig::Many(v) => vec![compile_parts(v, &at)?],
            KeyConfig::FirstOf(f) => {
                if f.first_of.is_empty() || f.first_of.len() > 8 {
                    return Err(ConfigError::new(
                        format!("{at}.first_of"),
                        "must have 1 to 8 alternatives",
                    ));
                }
                f.first_of
                    .iter()
                    .enumerate()
                    .map(|(i, a)| compile_parts(&a.parts(), &format!("{at}.first_of[{i}]")))
                    .collect::<Result<Vec<_>, _>>()?
            }
        };
        if max_len == 0 || max_len > 4096 {
            return Err(ConfigError::new(
                format!("{path}.max_key_len"),
                "must be from 1 to 4096",
            ));
        }
        Ok(KeyPlan {
            alternatives,
            lowercase,
            max_len,
        })
    }
}

/// A compiled key: alternatives, each of components joined with 0x1f (unit separator) into
/// one byte string.
#[derive(Debug, Clone)]
pub struct KeyPlan {
    pub alternatives: Vec<Vec<KeyPart>>,
    pub lowercase: bool,
    pub max_len: usize,
}

impl KeyPlan {
    /// A plan of one alternative of plain components (tests and tools).
    pub fn of(parts: Vec<KeySpec>, lowercase: bool, max_len: usize) -> KeyPlan {
        KeyPlan {
            alternatives: vec![parts.into_iter().map(KeyPart::Spec).collect()],
            lowercase,
            max_len,
        }
    }

    /// The key bytes of the first alternative whose every component has a value; None when
    /// none has.
    pub fn key<R: RequestView + ?Sized>(&self, req: &R) -> Option<Vec<u8>> {
        self.alternatives
            .iter()
            .find_map(|parts| Self::joined(parts, req))
            .map(|k| finish_key(k, self.lowercase, self.max_len))
    }

    fn joined<R: RequestView + ?Sized>(parts: &[KeyPart], req: &R) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                out.push(0x1f);
            }
            out.extend_from_slice(&p.extract(req)?);
        }
        Some(out)
    }
}

/// Plain request for tests and tools.
#[derive(Debug, Clone, Default)]
pub struct SimpleRequest {
    pub method: String,
    pub path: String,
    pub host: String,
    pub source: String,
    pub headers: Vec<(String, String)>,
}

impl RequestView for SimpleRequest {
    fn method(&self) -> &str {
        &self.method
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn host(&self) -> &str {
        &self.host
    }
    fn source_address(&self) -> &str {
        &self.source
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str, xff: Option<&str>) -> SimpleRequest {
        SimpleRequest {
            method: "GET".into(),
            path: path.into(),
            host: "Blog.Example:8080".into(),
            source: "10.0.0.9:5555".into(),
            headers: xff
                .map(|v| vec![("x-forwarded-for".to_string(), v.to_string())])
                .unwrap_or_default(),
        }
    }

    #[test]
    fn extraction_table() {
        let r = req(
            "/PostView?blogId=al%69ce&logNo=7",
            Some("1.1.1.1, 2.2.2.2, 3.3.3.3"),
        );
        let cases: Vec<(KeySpec, Option<&[u8]>)> = vec![
            (KeySpec::Host, Some(b"blog.example")),
            (KeySpec::Path, Some(b"/PostView")),
            (KeySpec::ClientAddress, Some(b"10.0.0.9")),
            (
                KeySpec::ForwardedFor { trusted_proxies: 0 },
                Some(b"10.0.0.9"),
            ),
            (
                KeySpec::ForwardedFor { trusted_proxies: 1 },
                Some(b"3.3.3.3"),
            ),
            (
                KeySpec::ForwardedFor { trusted_proxies: 3 },
                Some(b"1.1.1.1"),
            ),
            (
                KeySpec::ForwardedFor { trusted_proxies: 4 },
                Some(b"10.0.0.9"),
            ),
            (KeySpec::Query("blogId".into()), Some(b"alice")),
            (KeySpec::Query("nope".into()), None),
            (
                KeySpec::Header("x-forwarded-for".into()),
                Some(b"1.1.1.1, 2.2.2.2, 3.3.3.3"),
            ),
            (KeySpec::Header("x-missing".into()), None),
            (KeySpec::Fixed("all".into()), Some(b"all")),
        ];
        for (spec, want) in cases {
            assert_eq!(extract(&spec, &r).as_deref(), want, "{spec:?}");
        }
    }

    #[test]
    fn composite_keys_need_every_part() {
        let plan = KeyPlan::of(
            vec![
                KeySpec::Query("blogId".into()),
                KeySpec::Query("logNo".into()),
            ],
            true,
            64,
        );
        assert_eq!(
            plan.key(&req("/PostView?blogId=Alice&logNo=7", None)),
            Some(b"alice\x1f7".to_vec())
        );
        assert_eq!(plan.key(&req("/PostView?blogId=Alice", None)), None);
    }

    fn compiled(json: &str) -> Result<KeyPlan, ConfigError> {
        let k: KeyConfig =
            serde_json::from_str(json).map_err(|e| ConfigError::new("", e.to_string()))?;
        k.compile(true, 256, "rules[0]")
    }

    const BLOG: &str =
        r#"{"first_of": [{"query": "blogId"}, {"path_regex": "^/([A-Za-z0-9_.-]+)/[0-9]+$"}]}"#;

    #[test]
    fn one_blog_has_one_key_whichever_url_form_it_is_written_in() {
        let plan = compiled(BLOG).unwrap();
        let cases: &[(&str, Option<&[u8]>)] = &[
            ("/PostView?blogId=Alice&logNo=12", Some(b"alice")),
            ("/PostView?logNo=12&blogId=alice&x=913", Some(b"alice")),
            ("/PostView?%62logId=alice", Some(b"alice")),
            ("/PostList?blogId=alice", Some(b"alice")),
            ("/alice/12", Some(b"alice")),
            ("/alice/12/", Some(b"alice")),
            ("//alice//12", Some(b"alice")),
            ("/%61lice/12", Some(b"alice")),
            ("/x/../alice/12", Some(b"alice")),
            ("/./alice/./12", Some(b"alice")),
            ("/alice/12?utm=1", Some(b"alice")),
            ("/PostView?blogId=bob&logNo=1", Some(b"bob")),
            ("/PostView", None),
            ("/alice", None),
            ("/alice/12/comments", None),
            ("/", None),
        ];
        for (path, want) in cases {
            assert_eq!(plan.key(&req(path, None)).as_deref(), *want, "{path}");
        }
    }

    #[test]
    fn path_segments_count_from_zero_over_the_normalised_path() {
        let cases: &[(&str, usize, Option<&[u8]>)] = &[
            ("/alice/12", 0, Some(b"alice")),
            ("/alice/12", 1, Some(b"12")),
            ("/alice/12", 2, None),
            ("//alice///12/", 1, Some(b"12")),
            ("/a/b/../c", 1, Some(b"c")),
            ("/%2e%2e/alice", 0, Some(b"alice")),
            ("/", 0, None),
            ("/a%2Fb/c", 0, Some(b"a")),
        ];
        for (path, n, want) in cases {
            let got = extract(&KeySpec::PathSegment(*n), &req(path, None));
            assert_eq!(got.as_deref(), *want, "{path} [{n}]");
        }
    }

    #[test]
    fn composite_alternatives_and_bad_specs_are_named() {
        let plan = compiled(
            r#"{"first_of": [[{"query": "blogId"}, {"query": "logNo"}], {"path_segment": 0}]}"#,
        )
        .unwrap();
        assert_eq!(
            plan.key(&req("/P?blogId=a&logNo=1", None)),
            Some(b"a\x1f1".to_vec())
        );
        assert_eq!(
            plan.key(&req("/P?blogId=a", None)),
            Some(b"p".to_vec()),
            "falls through"
        );
        let err = |j: &str| compiled(j).err().map(|e| e.path);
        assert_eq!(
            err(r#"{"path_regex": "^/([a-z]+)/([0-9]+)$"}"#).as_deref(),
            Some("rules[0].key[0].path_regex")
        );
        assert_eq!(
            err(r#"{"path_regex": "^/[a-z]+$"}"#).as_deref(),
            Some("rules[0].key[0].path_regex")
        );
        assert_eq!(
            err(r#"{"path_regex": "(["}"#).as_deref(),
            Some("rules[0].key[0].path_regex")
        );
        assert_eq!(
            err(r#"{"first_of": []}"#).as_deref(),
            Some("rules[0].key.first_of")
        );
        assert_eq!(
            err(r#"{"first_of": [{"query": ""}]}"#).as_deref(),
            Some("rules[0].key.first_of[0][0]")
        );
        assert_eq!(
            err(r#"{"path_segment": 65}"#).as_deref(),
            Some("rules[0].key[0]")
        );
    }

    #[test]
    fn ports_are_stripped() {
        assert_eq!(strip_port("1.2.3.4:80"), "1.2.3.4");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("host"), "host");
        assert_eq!(strip_port(""), "");
    }

    #[test]
    fn config_shapes_parse() {
        let v: Vec<KeySpec> = serde_json::from_str(
            r#"["host","path","client_address",{"forwarded_for":{"trusted_proxies":2}},
               {"query":"blogId"},{"header":"x-user"},{"fixed":"g"}]"#,
        )
        .unwrap_or_default();
        assert_eq!(v.len(), 7);
        assert!(serde_json::from_str::<KeySpec>(r#"{"qery":"x"}"#).is_err());
        assert!(KeySpec::Query(String::new()).validate("k").is_err());
    }
}
