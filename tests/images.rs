//! The filters' Wasm OCI images (`make images`, `sg_integration::oci`) through a real
//! registry: every image is built from the release modules, pushed with skopeo to Debian's
//! docker-registry on 127.0.0.1, read back by tag (the registry's digest is the one built: the
//! WasmPlugin pin), pulled by digest into a fresh OCI layout, unpacked by Istio's rules, found
//! byte-identical (sha256) to the module that was built, and loaded in Envoy, where every
//! filter (and, in a second Envoy, the combined module) answers as in the bundle.

use serde_json::Value;
use sg_e2e::envoy::wasm_path;
use sg_e2e::oci::{self, sha256_hex, Layout, LayoutImage};
use sg_e2e::registry::Registry;
use sg_e2e::{http, Stack};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

const TAG: &str = env!("CARGO_PKG_VERSION");
const STATS: Duration = Duration::from_secs(10);

/// Builds, pushes, pulls back: image name -> (pulled module file, registry digest).
fn round_trip(reg: &Registry, layout: Layout, work: &Path) -> BTreeMap<String, (PathBuf, String)> {
    let modules = wasm_path("noop").parent().unwrap().to_path_buf();
    let built = oci::build_all(&modules, &work.join("built"), TAG, layout, &oci::IMAGES)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = BTreeMap::new();
    for b in &built {
        let repo = format!("spikeguard/{}-{:?}", b.name, layout).to_lowercase();
        reg.push(&b.dir, TAG, &repo)
            .unwrap_or_else(|e| panic!("{e}\n{}", reg.log()));
        // By tag, as Istio asks first: the registry serves the very manifest built.
        let (digest, body) = reg.manifest(&repo, TAG).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(digest, b.manifest_digest, "{repo}: registry digest");
        assert_eq!(format!("sha256:{}", sha256_hex(body.as_bytes())), digest);
        // Pulled by that digest into a fresh layout.
        let pulled = work.join("pulled").join(&b.name);
        reg.pull(&repo, &digest, &pulled)
            .unwrap_or_else(|e| panic!("{e}"));
        let img = LayoutImage::open(&pulled, Some("pulled")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(img.manifest_digest, digest, "{repo}: pulled manifest");
        let module = img.istio_module().unwrap_or_else(|e| panic!("{repo}: {e}"));
        let original = std::fs::read(oci::module_path(&modules, &b.name)).unwrap();
        assert_eq!(
            sha256_hex(&module),
            sha256_hex(&original),
            "{repo}: the module Istio would load is the one built"
        );
        assert_eq!(format!("sha256:{}", sha256_hex(&module)), b.module_digest);
        assert_ne!(b.module_digest, digest, "the pin is the manifest's digest");
        let file = work.join(format!("{}.wasm", b.name));
        std::fs::write(&file, &module).unwrap();
        eprintln!(
            "{repo}:{TAG}: module {} B, image {} B, manifest {digest}",
            b.module_bytes, b.image_bytes
        );
        out.insert(b.name.clone(), (file, digest));
    }
    out
}

/// Every filter of the stack answers: pages reach the app through the ingress chain, the sli
/// status page answers, each ingress filter counted the pages, the egress breaker counted a
/// call.
fn serves(s: &Stack, what: &str) {
    eprintln!("serves: {what}");
    for n in 0..5 {
        let r = s.get(&format!("/PostView?blogId=b{n}&logNo=1"));
        assert_eq!(
            (r.status, r.header("x-upstream")),
            (200, Some("main")),
            "{what}: {r:?}"
        );
    }
    let st = s.get("/spikeguard/status");
    assert_eq!(st.status, 200, "{what}: {st:?}");
    let r = http::get(s.egress(), "/api/json?x=1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 200, "{what}: {r:?}");
    for stat in [
        "wasmcustom.sg.hotkey.post_view.seen",
        "wasmcustom.sg.simplepage.post_view.seen",
        "wasmcustom.sg.breaker.outbound_api.success",
    ] {
        let v = s.envoy.wait_stat(stat, STATS, |v| v >= 1);
        assert!(v >= 1, "{what}: {stat} = {v}\n{}", s.envoy.log_tail(30));
    }
    // Counted in the VM and flushed on the filter's tick: waited for.
    let ratelimit = sg_e2e::wait::until(
        "the ratelimit filter's counters sum to the pages",
        STATS,
        || {
            s.envoy
                .stats()
                .iter()
                .filter(|(k, _)| k.starts_with("wasmcustom.sg.ratelimit."))
                .map(|(_, v)| *v)
                .sum::<i64>()
        },
        |v| *v >= 5,
    );
    assert!(ratelimit >= 5, "{what}");
}

#[test]
fn every_image_round_trips_through_a_registry_and_loads_in_envoy() {
    let reg = Registry::start().unwrap_or_else(|e| panic!("{e}"));
    let work = tempfile::Builder::new()
        .prefix("sg-images-")
        .tempdir()
        .unwrap();
    let compat = round_trip(&reg, Layout::Compat, &work.path().join("compat"));
    let wasm = round_trip(&reg, Layout::Wasm, &work.path().join("wasm"));
    assert_eq!(compat.len(), oci::IMAGES.len());
    assert_eq!(wasm.len(), oci::IMAGES.len());

    // The five filters from the pulled compat images, in the bundle.
    let s = Stack::start_with(&sg_e2e::shipped(), 2, sg_e2e::ample("main"), |b| {
        for name in ["ratelimit", "hotkey", "simplepage", "breaker", "sli"] {
            let n = b.use_module_file(name, &compat[name].0);
            assert!(n >= 1, "{name}: {n} filters load it");
        }
    });
    let dump = http::get(s.envoy.admin, "/config_dump").unwrap();
    assert!(
        !dump.body.contains("wasm32-wasip1/release"),
        "only pulled modules load"
    );
    serves(&s, "pulled filter images");
    drop(s);

    // The combined module from the pulled two-layer image, ingress and egress.
    let s = Stack::start_with(&sg_e2e::shipped(), 2, sg_e2e::ample("main"), |b| {
        b.combine(
            "ingress",
            "combined",
            &[
                ("sli", "sli"),
                ("hotkey", "hotkey"),
                ("simplepage", "simplepage"),
                ("ratelimit", "ratelimit"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        b.combine(
            "egress",
            "combined_egress",
            &[("sli_egress", "sli"), ("breaker", "breaker")],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(b.use_module_file("combined", &wasm["combined"].0), 2);
    });
    serves(&s, "pulled combined image");

    // The pins a release writes into deploy/istio are these digests (a copy is pinned here).
    let pins = work.path().join("istio");
    copy_dir(&sg_e2e::envoy::repo_root().join("deploy/istio"), &pins);
    let digests: BTreeMap<String, String> = compat
        .iter()
        .map(|(k, (_, d))| (k.clone(), d.clone()))
        .collect();
    oci::pin_manifests(&pins, &digests).unwrap_or_else(|e| panic!("{e}"));
    let mut pinned = 0;
    for_each_yaml(&pins, &mut |text| {
        for doc in serde_yaml_docs(text) {
            let spec = &doc["spec"];
            let (url, sha) = match (spec["url"].as_str(), spec["wasm"]["url"].as_str()) {
                (Some(u), _) => (u, spec["sha256"].as_str()),
                (None, Some(u)) => (u, spec["wasm"]["sha256"].as_str()),
                _ => continue,
            };
            let Some(name) = oci::image_name_of_url(url) else {
                continue;
            };
            assert_eq!(
                sha.map(|s| format!("sha256:{s}")).as_deref(),
                Some(digests[&name].as_str()),
                "{url}"
            );
            pinned += 1;
        }
    });
    assert!(pinned >= 5, "{pinned} pinned manifests under deploy/istio");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
    }
}

fn for_each_yaml(dir: &Path, f: &mut dyn FnMut(&str)) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            for_each_yaml(&p, f);
        } else if p.extension().is_some_and(|x| x == "yaml") {
            f(&std::fs::read_to_string(&p).unwrap());
        }
    }
}

fn serde_yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .filter_map(|d| Value::deserialize(d).ok())
        .collect()
}
