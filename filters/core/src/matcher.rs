//! Which requests a rule applies to: path prefixes, path regexes, methods, Envoy route name.
//! Paths are matched normalised (`RequestView::normalized_path`), so `/Post%56iew` or
//! `//PostView` is `/PostView`. Compiled once at configure time; matching allocates nothing
//! for an ordinary URL.

use crate::key::RequestView;
use crate::ConfigError;
use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchConfig {
    /// The normalised path (before `?`) starts with this prefix, or one of these.
    #[serde(default)]
    pub path_prefix: OneOrMany,
    /// The normalised path (before `?`) matches this regex (regex-lite syntax), or one of
    /// these. With both prefixes and regexes, any one of them matching is enough.
    #[serde(default)]
    pub path_regex: OneOrMany,
    /// One of these methods (upper case); empty means any method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Envoy's route name (`route_name` property) equals this.
    #[serde(default)]
    pub route: Option<String>,
}

/// A string or a list of strings in config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn items(&self) -> &[String] {
        match self {
            OneOrMany::None => &[],
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
    /// Field path of item `i` (`<at>` for a single string, `<at>[i]` for a list).
    fn at(&self, at: &str, i: usize) -> String {
        match self {
            OneOrMany::Many(_) => format!("{at}[{i}]"),
            _ => at.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Matcher {
    prefixes: Vec<String>,
    regexes: Vec<regex_lite::Regex>,
    methods: Vec<String>,
    route: Option<String>,
}

impl MatchConfig {
    pub fn compile(&self, path: &str) -> Result<Matcher, ConfigError> {
        let at = format!("{path}.path_prefix");
        for (i, p) in self.path_prefix.items().iter().enumerate() {
            if !p.starts_with('/') {
                return Err(ConfigError::new(
                    self.path_prefix.at(&at, i),
                    format!("{p:?} must start with '/'"),
                ));
            }
        }
        let at = format!("{path}.path_regex");
        let mut regexes = Vec::new();
        for (i, r) in self.path_regex.items().iter().enumerate() {
            regexes.push(regex_lite::Regex::new(r).map_err(|e| {
                ConfigError::new(
                    self.path_regex.at(&at, i),
                    format!("{r:?} is not a valid regex: {e}"),
                )
            })?);
        }
        if self.path_prefix.items().len() + regexes.len() > 32 {
            return Err(ConfigError::new(
                format!("{path}.path_prefix"),
                "at most 32 prefixes and regexes in all",
            ));
        }
        for (i, m) in self.methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(ConfigError::new(
                    format!("{path}.methods[{i}]"),
                    format!("{m:?} is not an upper-case HTTP method"),
                ));
            }
        }
        Ok(Matcher {
            prefixes: self.path_prefix.items().to_vec(),
            regexes,
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
        if self.prefixes.is_empty() && self.regexes.is_empty() {
            return self.route_ok(route);
        }
        self.path_ok(&req.normalized_path()) && self.route_ok(route)
    }

    pub fn matches(&self, method: &str, raw_path: &str, route: Option<&str>) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        if self.prefixes.is_empty() && self.regexes.is_empty() {
            return self.route_ok(route);
        }
        self.path_ok(&crate::normalize::normalized(raw_path)) && self.route_ok(route)
    }

    /// Any prefix or any regex matches the normalised path.
    fn path_ok(&self, path: &str) -> bool {
        self.prefixes.iter().any(|p| path.starts_with(p.as_str()))
            || self.regexes.iter().any(|r| r.is_match(path))
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
        // Several forms of one page: any prefix or regex; matched on the normalised path.
        let many =
            m(r#"{"path_prefix":["/PostView","/PostList"],"path_regex":["^/[a-z]+/[0-9]+$"]}"#)
                .unwrap_or_default();
        for p in [
            "/PostView?blogId=a",
            "/PostList",
            "/alice/12",
            "//Post%56iew",
            "/x/../PostList/",
        ] {
            assert!(many.matches("GET", p, None), "{p}");
        }
        for p in ["/", "/Post", "/alice/x", "/api/PostView"] {
            assert!(!many.matches("GET", p, None), "{p}");
        }
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
        let e = m(r#"{"path_prefix":["/a","b"]}"#).err().map(|e| e.path);
        assert_eq!(e.as_deref(), Some("rules[0].match.path_prefix[1]"));
        let e = m(r#"{"path_regex":["^/a$","(["]}"#).err().map(|e| e.path);
        assert_eq!(e.as_deref(), Some("rules[0].match.path_regex[1]"));
        let e = m(r#"{"methods":["get"]}"#).err().map(|e| e.path);
        assert_eq!(e.as_deref(), Some("rules[0].match.methods[0]"));
    }
}
