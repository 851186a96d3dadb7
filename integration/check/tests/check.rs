//! `spikeguard check`: every shipped config passes; bad ones are refused with the filter and
//! the field path, through the binary (exit status and output) as a user's CI runs it.
//! deploy/istio: every manifest passes Istio's CRD schemas, bad ones are refused with the JSON
//! pointer; the plugins' phases and priorities give envoy.yaml's chain order; their configs
//! are the bundle's but for Istio's cluster names.

#![allow(clippy::panic, clippy::expect_used, clippy::indexing_slicing)] // test code: fail loudly

use serde::Deserialize;
use serde_json::Value;
use sg_check::{check_config, check_text, filter_of};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn spikeguard(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_spikeguard"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spikeguard: {e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
    p.display().to_string()
}

/// The `.yaml` files under `dir` (relative to the root), recursively, sorted; `deploy/istio/crds`
/// (the vendored schemas, not a manifest) left out.
fn yaml_under(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root().join(dir)];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap_or_else(|e| panic!("{e}")).path();
            if p.is_dir() {
                if !p.ends_with("crds") {
                    todo.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_shipped_config_manifest_and_the_bundle_pass() {
    let mut files: Vec<String> = Vec::new();
    for dir in ["config", "config/fleet"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let p = e.unwrap_or_else(|e| panic!("{e}")).path();
            let n = p.display().to_string();
            if n.ends_with(".json") || n.ends_with(".yaml") {
                files.push(n);
            }
        }
    }
    let istio: Vec<String> = yaml_under("deploy/istio")
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert!(istio.len() >= 15, "{istio:?}");
    files.extend(istio.iter().cloned());
    files.push("envoy.yaml".into());
    files.retain(|f| !f.ends_with("slo.yaml"));
    let args: Vec<&str> = std::iter::once("check")
        .chain(files.iter().map(String::as_str))
        .collect();
    let (code, out) = spikeguard(&args);
    assert_eq!(code, 0, "{out}");
    // Every filter's example, the combined one, every Istio manifest, and the bundle's six.
    for f in sg_check::FILTERS {
        assert!(out.contains(&format!("config/{f}.json: ok")), "{f}: {out}");
    }
    for f in &istio {
        assert!(
            out.lines()
                .any(|l| l.starts_with(&format!("{f}: ok (")) && l.contains("schema-checked")),
            "{f}: {out}"
        );
    }
    assert!(
        out.contains("networking.yaml: ok (0 config(s), 8 Istio resource(s)"),
        "{out}"
    );
    assert!(out.contains("envoy.yaml: ok (6 config(s))"), "{out}");
    // The fleet examples (README "Fleet"): the two filters with fleet rules.
    for f in ["ratelimit", "hotkey"] {
        assert!(
            out.contains(&format!("config/fleet/{f}.json: ok")),
            "{f}: {out}"
        );
    }
    assert!(
        out.contains("fleet.yaml: ok (2 config(s), 3 Istio resource(s) schema-checked)"),
        "{out}"
    );
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn bad_istio_manifests_are_refused_with_the_path() {
    let hotkey = "deploy/istio/hotkey-wasmplugin.yaml";
    let breaker_te = "deploy/istio/trafficextension/breaker-trafficextension.yaml";
    let net = "deploy/istio/networking.yaml";
    let zeros = "0".repeat(64);
    // The pin as it stands in the file (zeros, or a release's digest from `make images PIN=1`).
    let pinned = read(hotkey)
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sha256: "))
        .unwrap_or_else(|| panic!("{hotkey}: no sha256 line"))
        .to_string();
    // (what, file, replace, with, the refusal: after "<file> (document N) ")
    let cases: Vec<(&str, &str, &str, String, String)> = vec![
        ("bad enum", hotkey, "failStrategy: FAIL_OPEN", "failStrategy: FAIL_SOMETIMES".into(),
         "(document 1) WasmPlugin spikeguard-hotkey: /spec/failStrategy: \"FAIL_SOMETIMES\" is not one of \"FAIL_CLOSE\", \"FAIL_OPEN\", \"FAIL_RELOAD\"".into()),
        ("unknown field in spec", hotkey, "  imagePullPolicy: IfNotPresent", "  imagePullPolicy: IfNotPresent\n  pullPolicy: Always".into(),
         "(document 1) WasmPlugin spikeguard-hotkey: /spec: Additional properties are not allowed ('pullPolicy' was unexpected)".into()),
        ("wrong type of priority", hotkey, "priority: 300", "priority: high".into(),
         "(document 1) WasmPlugin spikeguard-hotkey: /spec/priority: \"high\" is not of type".into()),
        ("priority beyond int32", hotkey, "priority: 300", "priority: 3000000000".into(),
         "(document 1) WasmPlugin spikeguard-hotkey: /spec/priority: 3000000000 is greater than the maximum of 2147483647".into()),
        ("wrong apiVersion", hotkey, "extensions.istio.io/v1alpha1", "extensions.istio.io/v1".into(),
         "(document 1) WasmPlugin spikeguard-hotkey: /apiVersion: \"extensions.istio.io/v1\" for WasmPlugin: not a version its CRD serves (served: extensions.istio.io/v1alpha1)".into()),
        ("missing metadata.name", hotkey, "  name: spikeguard-hotkey\n", String::new(),
         "(document 1) WasmPlugin: /metadata: \"name\" is a required property".into()),
        ("a digest with its algorithm", hotkey, &pinned, format!("sha256: sha256:{zeros}"),
         "(document 1) WasmPlugin spikeguard-hotkey: /spec/sha256: \"sha256:000".into()),
        ("bad pluginConfig field", hotkey, "threshold_rps: 200", "threshold_rps: 0".into(),
         "(document 1) WasmPlugin spikeguard-hotkey: hotkey: rules[0].threshold_rps:".into()),
        ("ServiceEntry with a bad resolution", net, "resolution: DNS", "resolution: MAGIC".into(),
         "(document 1) ServiceEntry spikeguard-simple-page: /spec/resolution: \"MAGIC\" is not one of \"NONE\", \"STATIC\", \"DNS\", \"DNS_ROUND_ROBIN\", \"DYNAMIC_DNS\"".into()),
        ("DestinationRule with a typo", net, "http1MaxPendingRequests: 4", "http1MaxPendingRequest: 4".into(),
         "(document 6) DestinationRule spikeguard-api: /spec/trafficPolicy/connectionPool/http: Additional properties are not allowed ('http1MaxPendingRequest' was unexpected)".into()),
        ("VirtualService timeout as a number", net, "timeout: 0.3s", "timeout: 0.3".into(),
         "(document 7) VirtualService spikeguard-api: /spec/http/0/timeout: 0.3 is not of type \"string\"".into()),
        ("WasmPlugin's phase name in a TrafficExtension", breaker_te, "phase: UNSPECIFIED", "phase: UNSPECIFIED_PHASE".into(),
         "(document 1) TrafficExtension spikeguard-breaker: /spec/phase: \"UNSPECIFIED_PHASE\" is not one of \"UNSPECIFIED\", \"AUTHN\", \"AUTHZ\", \"STATS\"".into()),
        ("TrafficExtension field outside wasm", breaker_te, "  wasm:\n    url:", "  url: x\n  wasm:\n    url:".into(),
         "(document 1) TrafficExtension spikeguard-breaker: /spec: Additional properties are not allowed ('url' was unexpected)".into()),
        ("bad wasm.pluginConfig field", breaker_te, "slow_call_ms: 150", "slow_call_ms: -1".into(),
         "(document 1) TrafficExtension spikeguard-breaker: breaker: apis[0].slow_call_ms".into()),
        ("a kind with no schema", net, "kind: VirtualService\nmetadata:\n  name: blog", "kind: Gateway\nmetadata:\n  name: blog".into(),
         "(document 8) Gateway blog: /kind: \"Gateway\" (networking.istio.io/v1) has no vendored schema".into()),
    ];
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut files = Vec::new();
    for (i, (what, file, from, to, _)) in cases.iter().enumerate() {
        let good = read(file);
        let bad = good.replacen(from, to, 1);
        assert_ne!(bad, good, "{what}: {file} has {from:?}");
        files.push(write(dir.path(), &format!("case{i}.yaml"), &bad));
    }
    let args: Vec<&str> = std::iter::once("check")
        .chain(files.iter().map(String::as_str))
        .collect();
    let (code, out) = spikeguard(&args);
    assert_eq!(code, 1, "{out}");
    for ((what, _, _, _, refusal), file) in cases.iter().zip(&files) {
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with(&format!("{file} ")))
            .collect();
        assert_eq!(lines.len(), 1, "{what}: exactly one refusal: {lines:#?}");
        assert!(
            lines[0].starts_with(&format!("{file} {refusal}")),
            "{what}: {}\n  wanted: {file} {refusal}",
            lines[0]
        );
    }
}

/// A YAML file's documents as JSON.
fn docs(rel: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(&read(rel))
        .map(|d| {
            let v = serde_yaml::Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}"));
            serde_json::to_value(v).unwrap_or_else(|e| panic!("{rel}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The bundle's spikeguard filters per listener, in chain order: (filter, config JSON).
fn bundle_chain(listener: &str) -> Vec<(String, Value)> {
    let envoy = docs("envoy.yaml").remove(0);
    let l = envoy["static_resources"]["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == listener))
        .unwrap_or_else(|| panic!("envoy.yaml: no listener {listener}"));
    let mut out = Vec::new();
    for hf in l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
        .as_array()
        .expect("http_filters")
    {
        let cfg = &hf["typed_config"]["config"];
        let module = cfg["vm_config"]["code"]["local"]["filename"]
            .as_str()
            .unwrap_or("");
        if let Some(f) = filter_of(module) {
            let value = cfg["configuration"]["value"].as_str().expect("a config");
            let json: Value = serde_json::from_str(value).expect("JSON");
            out.push((f.to_string(), json));
        }
    }
    out
}

/// One spikeguard plugin of a manifest folder, as Istio sees it.
#[derive(Debug)]
struct Plugin {
    file: String,
    name: String,
    filter: String,
    modes: Vec<String>,
    phase: String,
    priority: i64,
    config: Value,
}

/// The WasmPlugins / TrafficExtensions directly in `dir`.
fn plugins(dir: &str) -> Vec<Plugin> {
    let mut out = Vec::new();
    for p in yaml_under(dir) {
        if p.parent() != Some(root().join(dir).as_path()) {
            continue;
        }
        let rel = p.strip_prefix(root()).unwrap_or(&p).display().to_string();
        for d in docs(&rel) {
            let wasm = match d["kind"].as_str() {
                Some("WasmPlugin") => &d["spec"],
                Some("TrafficExtension") => &d["spec"]["wasm"],
                _ => continue,
            };
            let url = wasm["url"].as_str().expect("url");
            let modes: Vec<String> = d["spec"]["match"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| m["mode"].as_str().unwrap_or("UNDEFINED").to_string())
                .collect();
            out.push(Plugin {
                file: rel.clone(),
                name: d["metadata"]["name"].as_str().expect("name").to_string(),
                filter: filter_of(url).expect("a spikeguard url").to_string(),
                modes,
                phase: d["spec"]["phase"].as_str().unwrap_or("").to_string(),
                priority: d["spec"]["priority"].as_i64().unwrap_or(0),
                config: wasm["pluginConfig"].clone(),
            });
        }
    }
    out
}

/// Where Istio puts a phase: AUTHN, AUTHZ and STATS in that order (before Istio's authn,
/// authz, stats filters), then no phase (the end of the chain, before the router). Both
/// WasmPlugin's and TrafficExtension's spellings.
fn phase_rank(phase: &str) -> u8 {
    match phase {
        "AUTHN" => 1,
        "AUTHZ" => 2,
        "STATS" => 3,
        "" | "UNSPECIFIED_PHASE" | "UNSPECIFIED" => 4,
        other => panic!("phase {other:?}"),
    }
}

/// The plugins Istio puts in one direction's chain, in Istio's order: by phase, then
/// priority, higher first (istio/api extensions/v1alpha1 wasm.proto: "applied by priority, in
/// descending order"). Ties would fall back to name and namespace: refused here instead.
fn chain<'a>(ps: &'a [Plugin], mode: &str) -> Vec<&'a Plugin> {
    let mut c: Vec<&Plugin> = ps
        .iter()
        .filter(|p| {
            p.modes.is_empty()
                || p.modes
                    .iter()
                    .any(|m| m == mode || m == "CLIENT_AND_SERVER" || m == "UNDEFINED")
        })
        .collect();
    c.sort_by_key(|p| (phase_rank(&p.phase), -p.priority));
    for w in c.windows(2) {
        assert!(
            (phase_rank(&w[0].phase), w[0].priority) != (phase_rank(&w[1].phase), w[1].priority),
            "{} and {}: same phase and priority, the order would hang on their names",
            w[0].name,
            w[1].name
        );
    }
    c
}

#[test]
fn istio_phases_and_priorities_order_the_filters_as_the_bundle_does() {
    let ingress: Vec<String> = bundle_chain("ingress").into_iter().map(|f| f.0).collect();
    let egress: Vec<String> = bundle_chain("egress").into_iter().map(|f| f.0).collect();
    assert_eq!(ingress.len(), 4, "{ingress:?}");
    assert_eq!(egress.len(), 2, "{egress:?}");
    for dir in ["deploy/istio", "deploy/istio/trafficextension"] {
        let ps = plugins(dir);
        assert_eq!(ps.len(), 6, "{dir}: {ps:#?}");
        let order =
            |mode| -> Vec<String> { chain(&ps, mode).iter().map(|p| p.filter.clone()).collect() };
        assert_eq!(order("SERVER"), ingress, "{dir}: inbound (mode SERVER)");
        assert_eq!(order("CLIENT"), egress, "{dir}: outbound (mode CLIENT)");
    }
    // The combined pair: one plugin per direction whose sections are that chain (the module
    // runs its parts in the fixed order of sg_combined::config::PARTS).
    let ps = plugins("deploy/istio/combined");
    for (mode, want) in [("SERVER", &ingress), ("CLIENT", &egress)] {
        let c = chain(&ps, mode);
        assert_eq!(c.len(), 1, "combined, {mode}: {c:#?}");
        let parts: Vec<String> = sg_combined::config::PARTS
            .iter()
            .filter(|p| c[0].config.get(**p).is_some())
            .map(|p| (*p).to_string())
            .collect();
        assert_eq!(&parts, want, "combined, {mode}");
    }
}

/// The only differences between the Istio plugins' configs and the bundle's: the Envoy
/// clusters Istio builds for the services in deploy/istio/networking.yaml (deploy/README.md).
const ISTIO_CLUSTERS: [(&str, &str); 2] = [
    (
        "spikeguard_control",
        "outbound|8084||control.spikeguard.internal",
    ),
    ("outbound_api", "outbound|80||api.internal"),
];

/// `v` with every `cluster` / `webhook_cluster` named by the bundle renamed to Istio's.
fn istio_clusters(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| {
                    let renamed = match (k.as_str(), x.as_str()) {
                        ("cluster" | "webhook_cluster", Some(c)) => ISTIO_CLUSTERS
                            .iter()
                            .find(|(b, _)| *b == c)
                            .map(|(_, i)| Value::String((*i).to_string())),
                        _ => None,
                    };
                    (k.clone(), renamed.unwrap_or_else(|| istio_clusters(x)))
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(istio_clusters).collect()),
        other => other.clone(),
    }
}

#[test]
fn istio_plugin_configs_are_the_bundles_with_istio_cluster_names() {
    let mut bundle: BTreeMap<(&str, String), Value> = BTreeMap::new();
    for (mode, listener) in [("SERVER", "ingress"), ("CLIENT", "egress")] {
        for (f, cfg) in bundle_chain(listener) {
            bundle.insert((mode, f), istio_clusters(&cfg));
        }
    }
    let mut compared = 0;
    for dir in ["deploy/istio", "deploy/istio/trafficextension"] {
        for p in plugins(dir) {
            let mode = if p.modes.iter().any(|m| m == "CLIENT") {
                "CLIENT"
            } else {
                "SERVER"
            };
            let want = bundle
                .get(&(mode, p.filter.clone()))
                .unwrap_or_else(|| panic!("{}: no {mode} {} in envoy.yaml", p.file, p.filter));
            assert_eq!(&p.config, want, "{} {}", p.file, p.name);
            // And the filter takes it (the same parse Envoy's on_configure runs).
            check_config(&p.filter, p.config.to_string().as_bytes())
                .unwrap_or_else(|e| panic!("{}: {e:?}", p.file));
            compared += 1;
        }
    }
    for p in plugins("deploy/istio/combined") {
        let mode = if p.modes.iter().any(|m| m == "CLIENT") {
            "CLIENT"
        } else {
            "SERVER"
        };
        let obj = p.config.as_object().expect("sections");
        for (section, cfg) in obj {
            let want = bundle
                .get(&(mode, section.clone()))
                .unwrap_or_else(|| panic!("{}: no {mode} {section} in envoy.yaml", p.file));
            assert_eq!(cfg, want, "{} section {section}", p.file);
        }
        compared += 1;
    }
    assert_eq!(compared, 14);
    // Every Istio cluster named is a ServiceEntry host and port of networking.yaml.
    let net = docs("deploy/istio/networking.yaml");
    for (_, c) in ISTIO_CLUSTERS {
        let mut parts = c.split('|');
        let (port, host) = (parts.nth(1).expect("port"), parts.nth(1).expect("host"));
        assert!(
            net.iter().any(|d| d["kind"] == "ServiceEntry"
                && d["spec"]["hosts"]
                    .as_array()
                    .is_some_and(|h| h.iter().any(|x| x == host))
                && d["spec"]["ports"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|x| x["number"]
                        .as_u64()
                        .map(|n| n.to_string())
                        .as_deref()
                        == Some(port)))),
            "{c}: no ServiceEntry for it in networking.yaml"
        );
    }
}

#[test]
fn sha256_is_pinned_on_its_own_line_in_every_plugin() {
    // The release step rewrites `  sha256: <64 hex>` (`    ` under a TrafficExtension's wasm)
    // with the image's manifest digest: every plugin has exactly one such line.
    for p in yaml_under("deploy/istio") {
        let rel = p.strip_prefix(root()).unwrap_or(&p).display().to_string();
        let text = read(&rel);
        let plugins = docs(&rel)
            .iter()
            .filter(|d| d["kind"] == "WasmPlugin" || d["kind"] == "TrafficExtension")
            .count();
        let pinned = text
            .lines()
            .filter(|l| {
                let t = l.trim_start();
                (l.starts_with("  sha256: ") || l.starts_with("    sha256: "))
                    && t.len() == "sha256: ".len() + 64
                    && t["sha256: ".len()..].bytes().all(|b| b.is_ascii_hexdigit())
            })
            .count();
        assert_eq!(pinned, plugins, "{rel}");
        if plugins > 0 {
            assert!(
                text.contains("OCI manifest digest") && text.contains("image MANIFEST"),
                "{rel}: the sha256 comment"
            );
            assert!(text.contains("imagePullPolicy: IfNotPresent"), "{rel}");
            assert!(
                text.contains(":0.1.0\n"),
                "{rel}: tagged with the workspace version"
            );
        }
    }
}

#[test]
fn bad_configs_are_refused_with_the_filter_and_the_field_path() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    let rl = write(
        d,
        "ratelimit-prod.json",
        r#"{"rules": [{"name": "r", "key": "host", "rate": "0r/s"}]}"#,
    );
    let comb = write(
        d,
        "combined.json",
        r#"{"sli": {}, "hotkey": {"rules": [{"name": "h", "key": {"query": "b"}, "threshold_rps": 0, "action": "observe"}]}}"#,
    );
    let anon = write(d, "mine.json", r#"{"rules": []}"#);
    let (code, out) = spikeguard(&["check", &rl, &comb, &anon]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("ratelimit: rules[0].rate:"), "{out}");
    assert!(
        out.contains("combined: hotkey.rules[0].threshold_rps:"),
        "{out}"
    );
    assert!(
        out.contains("mine.json: ?: (document): cannot tell"),
        "{out}"
    );
    // --filter names it; an empty sli config is valid.
    let (code, out) = spikeguard(&["check", "--filter", "sli", &anon]);
    assert_eq!(
        (code, out.contains("ok (1 config(s))")),
        (1, false),
        "{out}"
    );
    let empty = write(d, "x.json", "{}");
    let (code, out) = spikeguard(&["check", "--filter", "sli", &empty]);
    assert_eq!(code, 0, "{out}");
    let (code, _) = spikeguard(&["check", "--filter", "cache", &empty]);
    assert_eq!(code, 2, "an unknown --filter is a usage error");

    // A WasmPlugin (two documents, the second bad) and the bundle with one bad embedded config.
    let manifest = std::fs::read_to_string(root().join("deploy/istio/hotkey-wasmplugin.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    let bad_manifest = manifest.replace("threshold_rps:", "threshold_rps: 0 #");
    assert_ne!(bad_manifest, manifest, "the manifest has a threshold_rps");
    let two = write(
        d,
        "plugins.yaml",
        &format!("{manifest}\n---\n{bad_manifest}"),
    );
    let bundle =
        std::fs::read_to_string(root().join("envoy.yaml")).unwrap_or_else(|e| panic!("{e}"));
    let bad_bundle = bundle.replacen("\"rate\": \"50r/s\"", "\"rate\": \"fast\"", 1);
    assert_ne!(bad_bundle, bundle, "the bundle has a 50r/s rule");
    let b = write(d, "envoy.yaml", &bad_bundle);
    let (code, out) = spikeguard(&["check", &two, &b]);
    assert_eq!(code, 1, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.iter().any(|l| l.contains(
            "(document 2) WasmPlugin spikeguard-hotkey: hotkey: rules[0].threshold_rps:"
        )),
        "{out}"
    );
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("plugins.yaml (document 1)")),
        "{out}"
    );
    assert!(
        lines.iter().any(|l| l
            .contains("listener ingress filter spikeguard.ratelimit: ratelimit: rules[0].rate:")),
        "{out}"
    );
}

#[test]
fn the_checker_decides_as_the_filters_do() {
    // The same call the filters' on_configure makes: what it refuses here, the filter refuses
    // in Envoy (tests/ratelimit.rs, tests/combined.rs refuse these in a real Envoy).
    let e = check_config(
        "ratelimit",
        br#"{"rules": [{"name": "r", "key": "host", "rate": "0r/s"}]}"#,
    )
    .expect_err("refused");
    assert_eq!(e.path, "rules[0].rate");
    let e = check_config("combined", br#"{"sli": {}, "cache": {}}"#).expect_err("refused");
    assert_eq!(e.path, "cache");
    assert!(check_config("breaker", b"{not json").is_err());
    assert!(check_config("sli", b"{}").is_ok());
    assert_eq!(
        filter_of("oci://r.example/spikeguard/ratelimit:0.1.0"),
        Some("ratelimit")
    );
    assert_eq!(
        filter_of("target/wasm32-wasip1/release/sg_sli.wasm"),
        Some("sli")
    );
    assert_eq!(filter_of("spikeguard-simplepage"), Some("simplepage"));
    assert_eq!(filter_of("sg_noop.wasm"), None);
    // A document that is neither kind is reported, not skipped.
    let r = check_text("x.yaml", "kind: Deployment\n", None);
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
}

/// deploy/istio/fleet: replaces the top-level ratelimit and hotkey plugins (same names, phases
/// and priorities, so the chain's order stays), has fleet rules, and syncs through a cluster
/// its own ServiceEntry declares.
#[test]
fn the_fleet_plugins_replace_the_top_level_ones_and_name_their_own_webdis() {
    let top = plugins("deploy/istio");
    let fleet = plugins("deploy/istio/fleet");
    let names: Vec<&str> = fleet.iter().map(|p| p.filter.as_str()).collect();
    assert_eq!(names, ["ratelimit", "hotkey"]);
    let entries = docs("deploy/istio/fleet/fleet.yaml");
    for p in &fleet {
        let t = top
            .iter()
            .find(|t| t.filter == p.filter)
            .unwrap_or_else(|| panic!("no top-level {}", p.filter));
        assert_eq!(
            (&p.name, &p.phase, p.priority, &p.modes),
            (&t.name, &t.phase, t.priority, &t.modes),
            "{}",
            p.filter
        );
        let scopes: Vec<&Value> = p.config["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| &r["scope"])
            .collect();
        assert!(
            scopes.iter().any(|s| *s == "fleet"),
            "{}: {scopes:?}",
            p.filter
        );
        check_config(&p.filter, p.config.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{}: {e:?}", p.filter));
        let cluster = p.config["fleet"]["cluster"]
            .as_str()
            .expect("fleet.cluster");
        let mut parts = cluster.split('|');
        let (port, host) = (parts.nth(1).expect("port"), parts.nth(1).expect("host"));
        assert!(
            entries.iter().any(|d| d["kind"] == "ServiceEntry"
                && d["spec"]["hosts"][0] == host
                && d["spec"]["ports"][0]["number"]
                    .as_u64()
                    .map(|n| n.to_string())
                    .as_deref()
                    == Some(port)),
            "{cluster}: no ServiceEntry for it in fleet.yaml"
        );
        assert_eq!(p.config["fleet"]["authority"], host, "{}", p.filter);
    }
}

/// Every shipped example (`config/<filter>.json`, `config/fleet/<filter>.json`) is valid
/// under its filter's JSON schema (draft 2020-12, by the `jsonschema` crate), and the schemas
/// refuse what the filters refuse: a fleet block without its cluster, an unknown scope.
#[test]
fn every_example_is_valid_under_its_schema() {
    let validator = |f: &str| {
        let schema: Value = serde_json::from_str(&read(&format!("config/{f}.schema.json")))
            .unwrap_or_else(|e| panic!("{f} schema: {e}"));
        jsonschema::draft202012::options()
            .should_validate_formats(false)
            .build(&schema)
            .unwrap_or_else(|e| panic!("config/{f}.schema.json does not compile: {e}"))
    };
    let mut checked = 0;
    let mut valid = |rel: &str, f: &str, doc: &Value| {
        let errors: Vec<String> = validator(f)
            .iter_errors(doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{rel} ({f}): {errors:#?}");
        checked += 1;
    };
    for dir in ["config", "config/fleet"] {
        for f in sg_check::FILTERS {
            let rel = format!("{dir}/{f}.json");
            if !root().join(&rel).exists() {
                continue;
            }
            let doc: Value =
                serde_json::from_str(&read(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
            if f == "combined" {
                // Its schema refers to the filters' by relative `$ref`: each section under
                // its filter's own.
                for (section, cfg) in doc.as_object().expect("sections") {
                    valid(&rel, section, cfg);
                }
            } else {
                valid(&rel, f, &doc);
            }
        }
    }
    assert!(checked >= 11, "{checked} examples checked");
    for f in ["ratelimit", "hotkey"] {
        let v = validator(f);
        let mut doc: Value = serde_json::from_str(&read(&format!("config/fleet/{f}.json")))
            .unwrap_or_else(|e| panic!("{e}"));
        doc["rules"][0]["scope"] = Value::from("global");
        assert!(!v.is_valid(&doc), "{f}: scope global accepted");
        doc["rules"][0]["scope"] = Value::from("fleet");
        assert!(v.is_valid(&doc));
        doc["fleet"]
            .as_object_mut()
            .expect("fleet block")
            .remove("cluster");
        assert!(
            !v.is_valid(&doc),
            "{f}: a fleet block without cluster accepted"
        );
    }
}
