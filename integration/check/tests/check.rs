//! `spikeguard check`: every shipped config passes; bad ones are refused with the filter and
//! the field path, through the binary (exit status and output) as a user's CI runs it.

#![allow(clippy::panic, clippy::expect_used)] // test code: fail loudly

use sg_check::{check_config, check_text, filter_of};
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

#[test]
fn every_shipped_config_manifest_and_the_bundle_pass() {
    let mut files: Vec<String> = Vec::new();
    for dir in ["config", "deploy/istio"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap_or_else(|e| panic!("{dir}: {e}")) {
            let p = e.unwrap_or_else(|e| panic!("{e}")).path();
            let n = p.display().to_string();
            if n.ends_with(".json") || n.ends_with(".yaml") {
                files.push(n);
            }
        }
    }
    files.push("envoy.yaml".into());
    files.retain(|f| !f.ends_with("slo.yaml"));
    let args: Vec<&str> = std::iter::once("check")
        .chain(files.iter().map(String::as_str))
        .collect();
    let (code, out) = spikeguard(&args);
    assert_eq!(code, 0, "{out}");
    // Every filter's example, the combined one, every WasmPlugin, and the bundle's six.
    for f in sg_check::FILTERS {
        assert!(out.contains(&format!("config/{f}.json: ok")), "{f}: {out}");
    }
    assert!(out.contains("ratelimit-wasmplugin.yaml: ok"), "{out}");
    assert!(out.contains("envoy.yaml: ok (6 config(s))"), "{out}");
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
