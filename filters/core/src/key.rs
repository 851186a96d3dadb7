//! Request-key extraction: which request value a rule is keyed by. Values go through the one
//! normaliser (`normalize`). A key whose value is missing is `None`: the caller's documented
//! outcome applies (for `ratelimit`, like nginx, the rule does not apply to that request).

use crate::normalize::{finish_key, normalize_path, percent_decode, query_param, split_path};
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
        KeySpec::Path => Some(normalize_path(split_path(req.path()).0)),
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
    }
}

/// A rule's `key` in config: one component or a list (composite key).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum KeyConfig {
    One(KeySpec),
    Many(Vec<KeySpec>),
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
        let parts = match self {
            KeyConfig::One(k) => vec![k.clone()],
            KeyConfig::Many(v) => v.clone(),
        };
        if parts.is_empty() || parts.len() > 8 {
            return Err(ConfigError::new(
                format!("{path}.key"),
                "must have 1 to 8 components",
            ));
        }
        for (j, p) in parts.iter().enumerate() {
            p.validate(&format!("{path}.key[{j}]"))?;
        }
        if max_len == 0 || max_len > 4096 {
            return Err(ConfigError::new(
                format!("{path}.max_key_len"),
                "must be from 1 to 4096",
            ));
        }
        Ok(KeyPlan {
            parts,
            lowercase,
            max_len,
        })
    }
}

/// A compiled key: its components, joined with 0x1f (unit separator) into one byte string.
#[derive(Debug, Clone)]
pub struct KeyPlan {
    pub parts: Vec<KeySpec>,
    pub lowercase: bool,
    pub max_len: usize,
}

impl KeyPlan {
    /// The key bytes, or None when any component is missing.
    pub fn key<R: RequestView + ?Sized>(&self, req: &R) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push(0x1f);
            }
            out.extend_from_slice(&extract(p, req)?);
        }
        Some(finish_key(out, self.lowercase, self.max_len))
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
        let plan = KeyPlan {
            parts: vec![
                KeySpec::Query("blogId".into()),
                KeySpec::Query("logNo".into()),
            ],
            lowercase: true,
            max_len: 64,
        };
        assert_eq!(
            plan.key(&req("/PostView?blogId=Alice&logNo=7", None)),
            Some(b"alice\x1f7".to_vec())
        );
        assert_eq!(plan.key(&req("/PostView?blogId=Alice", None)), None);
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
