//! `spikeguard check`: validates spikeguard configs with exactly the code the filters run at
//! configure time (`<Config as Compile>::parse`, the call behind every filter's
//! `on_configure` refusal; for the combined module its section split, then each part's).
//!
//! Files: a filter config (JSON; the filter from `--filter` or the file name, e.g.
//! `ratelimit.json`, `ratelimit-prod.json`), an Istio manifest (YAML, one or more documents),
//! or an Envoy bootstrap such as the bundle (`envoy.yaml`: every Wasm HTTP filter whose module
//! is `sg_<filter>.wasm`, its `configuration.value`).
//!
//! In a manifest every Istio resource (WasmPlugin, TrafficExtension, ServiceEntry,
//! DestinationRule, VirtualService) is checked against Istio's own CRD schema ([`istio`]);
//! a document of any other kind is reported, not skipped. A `WasmPlugin`'s `spec.pluginConfig`
//! and a `TrafficExtension`'s `spec.wasm.pluginConfig` also go through the filter's own parse
//! (the filter from the url, else `metadata.name`).

pub mod istio;

use serde::Deserialize;
use serde_json::Value;
use sg_core::config::Compile;
use sg_core::ConfigError;
use std::path::Path;

/// The filters a config can be for (`combined`: the combined module, docs/COMBINED.md).
pub const FILTERS: [&str; 6] = [
    "sli",
    "hotkey",
    "simplepage",
    "ratelimit",
    "breaker",
    "combined",
];

/// One refused config: where it is in the file, the filter, and the filter's own error (its
/// `path` is the field path inside that config).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub at: String,
    pub filter: String,
    pub error: ConfigError,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let field = if self.error.path.is_empty() {
            "(document)"
        } else {
            &self.error.path
        };
        if self.filter.is_empty() {
            // A schema violation: the field is a JSON pointer into the document.
            write!(f, "{}: {field}: {}", self.at, self.error.reason)
        } else {
            write!(
                f,
                "{}: {}: {field}: {}",
                self.at, self.filter, self.error.reason
            )
        }
    }
}

static NULL: Value = Value::Null;

/// `v` at a JSON pointer, `null` when absent (reads never panic).
fn get<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer).unwrap_or(&NULL)
}

/// What a file held: how many filter configs were checked, how many Istio resources were
/// checked against their CRD schema, and the refusals.
#[derive(Debug, Default)]
pub struct Report {
    pub checked: usize,
    pub resources: usize,
    pub findings: Vec<Finding>,
}

/// Checks one filter's config with that filter's own parse-and-compile.
pub fn check_config(filter: &str, bytes: &[u8]) -> Result<(), ConfigError> {
    match filter {
        "sli" => sg_sli::config::Config::parse(bytes).map(drop),
        "hotkey" => sg_hotkey::config::Config::parse(bytes).map(drop),
        "simplepage" => sg_simplepage::config::Config::parse(bytes).map(drop),
        "ratelimit" => sg_ratelimit::config::Config::parse(bytes).map(drop),
        "breaker" => sg_breaker::config::Config::parse(bytes).map(drop),
        "combined" => {
            let sections = sg_combined::config::sections(bytes)?;
            for (name, section) in sg_combined::config::PARTS.iter().zip(sections.iter()) {
                if let Some(s) = section {
                    check_config(name, s).map_err(|e| ConfigError {
                        path: if e.path.is_empty() {
                            (*name).to_string()
                        } else {
                            format!("{name}.{}", e.path)
                        },
                        reason: e.reason,
                    })?;
                }
            }
            Ok(())
        }
        other => Err(ConfigError::new(
            "",
            format!("unknown filter {other:?} (one of {})", FILTERS.join(", ")),
        )),
    }
}

/// The filter a name points at: `ratelimit`, `ratelimit.json`, `ratelimit-prod`,
/// `spikeguard-ratelimit`, `sg_ratelimit.wasm`, `.../spikeguard/ratelimit:0.1.0`.
pub fn filter_of(name: &str) -> Option<&'static str> {
    let last = name.rsplit('/').next().unwrap_or(name);
    let last = last.split([':', '@']).next().unwrap_or(last);
    let last = last
        .strip_prefix("spikeguard-")
        .or_else(|| last.strip_prefix("sg_"))
        .unwrap_or(last);
    FILTERS.iter().copied().find(|f| {
        last == *f
            || last.starts_with(&format!("{f}."))
            || last.starts_with(&format!("{f}-"))
            || last.starts_with(&format!("{f}_"))
    })
}

fn refused(at: String, filter: &str, error: ConfigError) -> Finding {
    Finding {
        at,
        filter: filter.to_string(),
        error,
    }
}

/// Checks a file's text; `filter` overrides what the name or the manifest says.
pub fn check_text(name: &str, text: &str, filter: Option<&str>) -> Report {
    let mut r = Report::default();
    let is_json = Path::new(name)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json && name.ends_with(".schema.json") {
        // A JSON schema (config/<filter>.schema.json), not a config: nothing to check.
        return r;
    }
    if is_json {
        let Some(f) = filter.or_else(|| {
            Path::new(name)
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(filter_of)
        }) else {
            r.findings.push(refused(
                name.to_string(),
                "?",
                ConfigError::new(
                    "",
                    "cannot tell which filter this is for: name the file <filter>.json or pass --filter",
                ),
            ));
            return r;
        };
        r.checked += 1;
        if let Err(e) = check_config(f, text.as_bytes()) {
            r.findings.push(refused(name.to_string(), f, e));
        }
        return r;
    }
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let at = format!("{name} (document {})", i + 1);
        let v = match serde_yaml::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                r.findings.push(refused(
                    at,
                    "?",
                    ConfigError::new("", format!("not YAML: {e}")),
                ));
                continue;
            }
        };
        let v: Value = match serde_json::to_value(&v) {
            Ok(v) => v,
            Err(e) => {
                r.findings
                    .push(refused(at, "?", ConfigError::new("", e.to_string())));
                continue;
            }
        };
        if v.get("static_resources").is_some() {
            check_envoy(&at, &v, filter, &mut r);
        } else if v.get("kind").is_some() || v.get("apiVersion").is_some() {
            check_resource(&at, &v, filter, &mut r);
        } else if !v.is_null() {
            r.findings.push(refused(
                at,
                "?",
                ConfigError::new(
                    "",
                    "neither a Kubernetes resource (apiVersion, kind) nor an Envoy bootstrap (static_resources)",
                ),
            ));
        }
    }
    r
}

/// One Kubernetes document: its CRD schema, then (WasmPlugin, TrafficExtension with `wasm`)
/// the filter's own parse of its plugin config.
fn check_resource(at: &str, v: &Value, filter: Option<&str>, r: &mut Report) {
    let kind = get(v, "/kind").as_str().unwrap_or("?");
    let name = get(v, "/metadata/name").as_str().unwrap_or("");
    let at = if name.is_empty() {
        format!("{at} {kind}")
    } else {
        format!("{at} {kind} {name}")
    };
    match istio::schemas() {
        Ok(s) => {
            if s.knows(v) {
                r.resources += 1;
            }
            for e in s.validate(v) {
                r.findings
                    .push(refused(at.clone(), "", ConfigError::new(e.path, e.reason)));
            }
        }
        Err(e) => r.findings.push(refused(
            at.clone(),
            "",
            ConfigError::new("", format!("the embedded Istio CRD schemas: {e}")),
        )),
    }
    match kind {
        "WasmPlugin" => check_plugin(&at, v, "/spec", filter, r),
        "TrafficExtension" if get(v, "/spec/wasm").is_object() => {
            check_plugin(&at, v, "/spec/wasm", filter, r)
        }
        _ => {}
    }
}

/// The plugin config of a WasmPlugin (`wasm` = `/spec`) or TrafficExtension (`/spec/wasm`).
fn check_plugin(at: &str, v: &Value, wasm: &str, filter: Option<&str>, r: &mut Report) {
    let name = get(v, "/metadata/name").as_str().unwrap_or("");
    let at = at.to_string();
    let url = get(v, &format!("{wasm}/url")).as_str().unwrap_or("");
    let field = |f: &str| format!("{}.{f}", wasm.trim_start_matches('/').replace('/', "."));
    let Some(f) = filter
        .or_else(|| filter_of(url))
        .or_else(|| filter_of(name))
    else {
        r.findings.push(refused(
            at,
            "?",
            ConfigError::new(
                field("url"),
                "cannot tell which spikeguard filter this is (url or metadata.name names it)",
            ),
        ));
        return;
    };
    r.checked += 1;
    let cfg = get(v, wasm)
        .get("pluginConfig")
        .cloned()
        .unwrap_or(Value::Null);
    if !cfg.is_object() {
        r.findings.push(refused(
            at,
            f,
            ConfigError::new(field("pluginConfig"), "missing or not an object"),
        ));
        return;
    }
    if let Err(e) = check_config(f, cfg.to_string().as_bytes()) {
        r.findings.push(refused(at, f, e));
    }
}

fn check_envoy(at: &str, v: &Value, filter: Option<&str>, r: &mut Report) {
    let listeners = get(v, "/static_resources/listeners").as_array();
    for l in listeners.into_iter().flatten() {
        let chains = get(l, "/filter_chains").as_array();
        for nf in chains
            .into_iter()
            .flatten()
            .filter_map(|c| c["filters"].as_array())
            .flatten()
        {
            for hf in get(nf, "/typed_config/http_filters")
                .as_array()
                .into_iter()
                .flatten()
            {
                let cfg = &get(hf, "/typed_config/config");
                let module = get(cfg, "/vm_config/code/local/filename")
                    .as_str()
                    .unwrap_or("");
                let Some(f) = filter_of(module).or(filter.filter(|_| !module.is_empty())) else {
                    continue;
                };
                let where_ = format!(
                    "{at} listener {} filter {}",
                    get(l, "/name").as_str().unwrap_or("?"),
                    get(hf, "/name").as_str().unwrap_or("?")
                );
                r.checked += 1;
                let value = &get(cfg, "/configuration/value");
                let text = match value {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                if let Err(e) = check_config(f, text.as_bytes()) {
                    r.findings.push(refused(where_, f, e));
                }
            }
        }
    }
}

/// Checks a file on disk.
pub fn check_file(path: &Path, filter: Option<&str>) -> Report {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => check_text(&name, &text, filter),
        Err(e) => Report {
            checked: 0,
            resources: 0,
            findings: vec![refused(name, "?", ConfigError::new("", e.to_string()))],
        },
    }
}
