//! Istio resources validated against Istio's own CRD schemas, vendored unmodified in
//! `deploy/istio/crds/istio-crds.yaml` (istio/api 1.30.3: WasmPlugin, TrafficExtension,
//! ServiceEntry, DestinationRule, VirtualService) and embedded in the binary.
//!
//! A document's `apiVersion` must be `<group>/<version>` of a version its CRD serves; its body
//! is checked against that version's `openAPIV3Schema`, read the way the Kubernetes API server
//! reads a structural schema with strict field validation (`kubectl apply`'s default):
//! - an object schema with `properties` and no `x-kubernetes-preserve-unknown-fields` refuses
//!   unknown fields (the API server would refuse them, or prune them with validation off);
//! - `nullable: true` also admits `null`; `format: int32` bounds the integer to 32 bits (the
//!   other formats, e.g. `date-time` under `status`, are not checked);
//! - `apiVersion`, `kind` and `metadata` are the implicit ObjectMeta fields: `metadata.name` is
//!   required (a DNS-1123 subdomain), `metadata.namespace` a DNS-1123 label, `labels` and
//!   `annotations` maps of strings.
//!
//! Not evaluated (no CEL interpreter here, and no cluster): `x-kubernetes-validations` rules,
//! e.g. "only one of targetRefs or selector", the `url` scheme rule, no `*` in label
//! selectors; and `x-kubernetes-list-type: map` key uniqueness. The API server still checks
//! those at apply time.

use jsonschema::Validator;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;

/// The vendored CRDs, embedded so that the binary checks manifests from any directory.
pub const CRDS: &str = include_str!("../../../deploy/istio/crds/istio-crds.yaml");

/// One served version of a kind, with its compiled schema.
struct Served {
    version: String,
    validator: Validator,
}

/// One kind of the vendored CRDs.
struct KindSchema {
    group: String,
    kind: String,
    served: Vec<Served>,
    /// Versions the CRD lists but does not serve.
    not_served: Vec<String>,
}

/// Every kind the vendored CRD file defines.
pub struct Schemas {
    kinds: Vec<KindSchema>,
}

/// One schema violation: the JSON pointer of the offending value in the document (e.g.
/// `/spec/failStrategy`, empty for the document itself) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub reason: String,
}

fn violation(path: &str, reason: impl Into<String>) -> Violation {
    Violation {
        path: path.to_string(),
        reason: reason.into(),
    }
}

static NULL: Value = Value::Null;

/// `v` at a JSON pointer, `null` when absent.
fn at<'a>(v: &'a Value, pointer: &str) -> &'a Value {
    v.pointer(pointer).unwrap_or(&NULL)
}

static SCHEMAS: OnceLock<Result<Schemas, String>> = OnceLock::new();

/// The embedded schemas, compiled once. An `Err` means the vendored file itself is broken
/// (tested: it is not).
pub fn schemas() -> &'static Result<Schemas, String> {
    SCHEMAS.get_or_init(|| Schemas::parse(CRDS))
}

const DNS1123_SUBDOMAIN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const DNS1123_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// The implicit top-level fields of every Kubernetes object (ObjectMeta, the parts a
/// manifest sets).
fn object_meta() -> Value {
    json!({
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": DNS1123_SUBDOMAIN},
            "namespace": {"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            // The rest of ObjectMeta, as a manifest read back from a cluster carries it.
            "generateName": {"type": "string"},
            "uid": {"type": "string"},
            "resourceVersion": {"type": "string"},
            "generation": {"type": "integer"},
            "creationTimestamp": {},
            "deletionTimestamp": {},
            "deletionGracePeriodSeconds": {"type": "integer"},
            "finalizers": {"type": "array", "items": {"type": "string"}},
            "ownerReferences": {"type": "array"},
            "managedFields": {"type": "array"},
            "selfLink": {"type": "string"}
        }
    })
}

/// Keywords whose value is one schema.
const ONE_SCHEMA: [&str; 3] = ["items", "not", "additionalProperties"];
/// Keywords whose value is a list of schemas.
const LIST_OF_SCHEMAS: [&str; 3] = ["allOf", "anyOf", "oneOf"];
/// Keywords whose value maps names to schemas.
const MAP_OF_SCHEMAS: [&str; 2] = ["properties", "patternProperties"];

/// A CRD's OpenAPI v3 (structural) schema as a JSON Schema (draft 4, the dialect OpenAPI 3.0
/// schemas are closest to), with the Kubernetes semantics listed in the module doc.
fn to_json_schema(s: &Value) -> Value {
    let Value::Object(m) = s else {
        return s.clone();
    };
    let mut out = Map::new();
    for (k, v) in m {
        if k.starts_with("x-kubernetes-") || k == "nullable" || k == "description" {
            continue;
        }
        let v = if ONE_SCHEMA.contains(&k.as_str()) {
            to_json_schema(v)
        } else if LIST_OF_SCHEMAS.contains(&k.as_str()) {
            match v {
                Value::Array(a) => Value::Array(a.iter().map(to_json_schema).collect()),
                other => other.clone(),
            }
        } else if MAP_OF_SCHEMAS.contains(&k.as_str()) {
            match v {
                Value::Object(p) => Value::Object(
                    p.iter()
                        .map(|(name, s)| (name.clone(), to_json_schema(s)))
                        .collect(),
                ),
                other => other.clone(),
            }
        } else {
            v.clone()
        };
        out.insert(k.clone(), v);
    }
    if m.get("nullable") == Some(&Value::Bool(true)) {
        if let Some(Value::String(t)) = out.get("type").cloned() {
            out.insert("type".into(), json!([t, "null"]));
        }
    }
    if m.get("format").and_then(Value::as_str) == Some("int32") {
        out.entry("minimum").or_insert(json!(i32::MIN));
        out.entry("maximum").or_insert(json!(i32::MAX));
    }
    // Structural schemas: an object with listed properties has no others, unless it says it
    // keeps unknown fields. Only where `type: object` is stated: the branches of
    // allOf/anyOf/oneOf (which never state a type) constrain, they do not list fields.
    let preserves = m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if m.get("type").and_then(Value::as_str) == Some("object")
        && m.contains_key("properties")
        && !m.contains_key("additionalProperties")
        && !preserves
    {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    out.remove("format");
    Value::Object(out)
}

/// The schema for one served version: the CRD's `openAPIV3Schema` plus the implicit
/// `apiVersion`, `kind` and `metadata`.
fn document_schema(open_api: &Value) -> Value {
    let mut s = open_api.clone();
    if let Value::Object(m) = &mut s {
        let props = m
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(p) = props {
            p.insert("apiVersion".into(), json!({"type": "string"}));
            p.insert("kind".into(), json!({"type": "string"}));
            p.insert("metadata".into(), object_meta());
        }
        m.entry("type").or_insert(json!("object"));
        let required = m
            .entry("required")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(r) = required {
            for f in ["apiVersion", "kind", "metadata"] {
                if !r.iter().any(|x| x == f) {
                    r.push(json!(f));
                }
            }
        }
    }
    to_json_schema(&s)
}

impl Schemas {
    /// Reads a file of CustomResourceDefinitions (YAML, one per document).
    pub fn parse(text: &str) -> Result<Schemas, String> {
        let mut kinds = Vec::new();
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v = serde_yaml::Value::deserialize(doc)
                .map_err(|e| format!("CRD document {}: {e}", i + 1))?;
            let v: Value =
                serde_json::to_value(&v).map_err(|e| format!("CRD document {}: {e}", i + 1))?;
            if v.is_null() {
                continue;
            }
            let spec = at(&v, "/spec");
            let group = at(spec, "/group").as_str().unwrap_or_default().to_string();
            let kind = at(spec, "/names/kind")
                .as_str()
                .unwrap_or_default()
                .to_string();
            if group.is_empty() || kind.is_empty() {
                return Err(format!("CRD document {}: no spec.group or kind", i + 1));
            }
            let mut served = Vec::new();
            let mut not_served = Vec::new();
            for ver in at(spec, "/versions").as_array().into_iter().flatten() {
                let version = at(ver, "/name").as_str().unwrap_or_default().to_string();
                if at(ver, "/served") != &Value::Bool(true) {
                    not_served.push(version);
                    continue;
                }
                let schema = document_schema(at(ver, "/schema/openAPIV3Schema"));
                let validator = jsonschema::draft4::options()
                    .should_validate_formats(false)
                    .build(&schema)
                    .map_err(|e| format!("{kind} {version}: schema does not compile: {e}"))?;
                served.push(Served { version, validator });
            }
            kinds.push(KindSchema {
                group,
                kind,
                served,
                not_served,
            });
        }
        Ok(Schemas { kinds })
    }

    /// The kinds known, as `Kind (group)`.
    pub fn kinds(&self) -> Vec<String> {
        self.kinds
            .iter()
            .map(|k| format!("{} ({})", k.kind, k.group))
            .collect()
    }

    /// Whether a document is of a kind these schemas define (whatever its version).
    pub fn knows(&self, doc: &Value) -> bool {
        let kind = at(doc, "/kind").as_str().unwrap_or_default();
        self.kinds.iter().any(|k| k.kind == kind)
    }

    /// Checks one document (already converted from YAML to JSON). An empty list: it conforms.
    pub fn validate(&self, doc: &Value) -> Vec<Violation> {
        let kind = at(doc, "/kind").as_str().unwrap_or_default();
        let api_version = at(doc, "/apiVersion").as_str().unwrap_or_default();
        let Some(k) = self.kinds.iter().find(|k| k.kind == kind) else {
            return vec![violation(
                "/kind",
                format!(
                    "{kind:?} ({api_version}) has no vendored schema: not checked (known: {})",
                    self.kinds().join(", ")
                ),
            )];
        };
        let served: Vec<String> = k
            .served
            .iter()
            .map(|s| format!("{}/{}", k.group, s.version))
            .collect();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let found = (group == k.group)
            .then(|| k.served.iter().find(|s| s.version == version))
            .flatten();
        let Some(s) = found else {
            let why = if group == k.group && k.not_served.iter().any(|v| v == version) {
                "a version its CRD does not serve"
            } else {
                "not a version its CRD serves"
            };
            return vec![violation(
                "/apiVersion",
                format!(
                    "{api_version:?} for {kind}: {why} (served: {})",
                    served.join(", ")
                ),
            )];
        };
        s.validator
            .iter_errors(doc)
            .map(|e| {
                let reason = match e.kind() {
                    // Every allowed value (the library's own message stops after a few).
                    jsonschema::error::ValidationErrorKind::Enum { options } => format!(
                        "{} is not one of {}",
                        e.instance(),
                        options
                            .as_array()
                            .map(|o| o
                                .iter()
                                .map(Value::to_string)
                                .collect::<Vec<_>>()
                                .join(", "))
                            .unwrap_or_else(|| options.to_string())
                    ),
                    _ => e.to_string(),
                };
                violation(e.instance_path().as_str(), reason)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::panic,
        clippy::expect_used,
        clippy::unwrap_used,
        clippy::indexing_slicing
    )]
    use super::*;

    #[test]
    fn the_vendored_crds_compile_with_their_served_versions() {
        let s = schemas().as_ref().expect("vendored CRDs compile");
        let kinds = s.kinds();
        for k in [
            "WasmPlugin (extensions.istio.io)",
            "TrafficExtension (extensions.istio.io)",
            "ServiceEntry (networking.istio.io)",
            "DestinationRule (networking.istio.io)",
            "VirtualService (networking.istio.io)",
        ] {
            assert!(kinds.iter().any(|x| x == k), "{k}: {kinds:?}");
        }
        let vs = |v: &str| {
            json!({"apiVersion": v, "kind": "VirtualService", "metadata": {"name": "a"},
                   "spec": {"hosts": ["a"]}})
        };
        for v in [
            "networking.istio.io/v1",
            "networking.istio.io/v1beta1",
            "networking.istio.io/v1alpha3",
        ] {
            assert_eq!(s.validate(&vs(v)), vec![], "{v}");
        }
        let bad = s.validate(&vs("networking.istio.io/v2"));
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].path, "/apiVersion");
    }

    #[test]
    fn openapi_semantics() {
        let t = to_json_schema(&json!({
            "type": "object",
            "properties": {
                "p": {"type": "integer", "format": "int32", "nullable": true},
                "keep": {"type": "object", "x-kubernetes-preserve-unknown-fields": true,
                         "properties": {"a": {"type": "string"}}},
                "o": {"oneOf": [{"required": ["x"], "properties": {"x": {"type": "string"}}}]}
            }
        }));
        assert_eq!(t["additionalProperties"], json!(false));
        assert_eq!(t["properties"]["p"]["type"], json!(["integer", "null"]));
        assert_eq!(t["properties"]["p"]["maximum"], json!(i32::MAX));
        assert_eq!(t["properties"]["keep"].get("additionalProperties"), None);
        assert_eq!(
            t["properties"]["o"]["oneOf"][0].get("additionalProperties"),
            None
        );
    }
}
