//! Which requests a rule applies to: path prefix, path regex, methods, Envoy route name.
//! Compiled once at configure time; matching allocates nothing.

use crate::key::RequestView;
use crate::normalize::split_path;
use crate::ConfigError;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// The path (before `?`) starts with this.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// The path (before `?`) matches this regex (regex-lite syntax).
    #[serde(default)]
    pub path_regex: Option<String>,
    /// One of these methods (upper case); empty means any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Envoy's route name (`route_name` property) equals this.
    #[serde(default)]
    pub route: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Matcher {
    prefix: Option<String>,
    regex: Option<regex_lite::Regex>,
    methods: Vec<String>,
    route: Option<String>,
}

impl MatchConfig {
    pub fn compile(&self, path: &str) -> Result<Matcher, ConfigError> {
        if let Some(p) = &self.path_prefix {
            if !p.starts_with('/') {
                return Err(ConfigError::new(
                    format!("{path}.path_prefix"),
                    format!("{p:?} must start with '/'"),
                ));
            }
        }
        let regex = match &self.path_regex {
            Some(r) => Some(regex_lite::Regex::new(r).map_err(|e| {
                ConfigError::new(
                    format!("{path}.path_regex"),
                    format!("{r:?} is not a valid regex: {e}"),
                )
            })?),
            None => None,
        };
        for (i, m) in self.methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ConfigError::new(
                    format!("{path}.methods[{i}]"),
                    format!("{m:?} is not an upper-case HTTP method"),
                ));
            }
        }
        Ok(Matcher {
            prefix: self.path_prefix.clone(),
            regex,
            methods: self.methods.clone(),
            route: self.route.clone(),
        })
    }
}

impl Matcher {
    /// Whether the matcher needs the `route_name` property (a host call) at all.
    pub fn needs_route(&self) -> bool {
        self.route.is_some()
    }

    /// Matches a request, reading from it only what the matcher needs (each read of a
    /// request value is a host call in the adapter).
    pub fn matches_request<R: RequestView + ?Sized>(&self, req: &R, route: Option<&str>) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == req.method()) {
            return false;
        }
        if self.prefix.is_none() && self.regex.is_none() {
            return self.route_ok(route);
        }
        self.path_ok(split_path(req.path()).0) && self.route_ok(route)
    }

    pub fn matches(&self, method: &str, raw_path: &str, route: Option<&str>) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        self.path_ok(split_path(raw_path).0) && self.route_ok(route)
    }

    fn path_ok(&self, path: &str) -> bool {
        if let Some(p) = &self.prefix {
            if !path.starts_with(p.as_str()) {
                return false;
            }
        }
        if let Some(r) = &self.regex {
            if !r.is_match(path) {
                return false;
            }
        }
        true
    }

    fn route_ok(&self, route: Option<&str>) -> bool {
        if let Some(want) = &self.route {
            if route != Some(want.as_str()) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(json: &str) -> Result<Matcher, ConfigError> {
        let c: MatchConfig = serde_json::from_str(json).map_err(|e| ConfigError::from_json(&e))?;
        c.compile("rules[0].match")
    }

    #[test]
    fn matching_table() {
        let any = m("{}").unwrap_or_default();
        assert!(any.matches("GET", "/x", None));
        let g = m(r#"{"path_prefix":"/Post","methods":["GET","HEAD"]}"#).unwrap_or_default();
        assert!(g.matches("GET", "/PostView?x=1", None));
        assert!(!g.matches("POST", "/PostView", None));
        assert!(!g.matches("GET", "/api?/Post", None));
        let r = m(r#"{"path_regex":"^/[a-z]+/[0-9]+$"}"#).unwrap_or_default();
        assert!(r.matches("GET", "/alice/12?q", None));
        assert!(!r.matches("GET", "/alice/x", None));
        let rt = m(r#"{"route":"blog"}"#).unwrap_or_default();
        assert!(rt.needs_route());
        assert!(rt.matches("GET", "/", Some("blog")));
        assert!(!rt.matches("GET", "/", None));
    }

    #[test]
    fn bad_match_config_names_the_field() {
        let e = m(r#"{"path_regex":"(["}"#).err().map(|e| e.path);
        assert_eq!(e.as_deref(), Some("rules[0].match.path_regex"));
        let e = m(r#"{"path_prefix":"x"}"#).err().map(|e| e.path);
        assert_eq!(e.as_deref(), Some("rules[0].match.path_prefix"));
        let e = m(r#"{"methods":["get"]}"#).err().map(|e| e.path);
        assert_eq!(e.as_deref(), Some("rules[0].match.methods[0]"));
    }
}
