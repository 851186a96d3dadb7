//! The image builder (`sg_integration::oci`) on synthetic modules: reproducible digests,
//! the two layouts Istio's fetcher accepts, and the layouts it refuses refused by the same
//! rules (`istio_extract` mirrors istio/istio `pkg/wasm/imagefetcher.go`). The real modules
//! through a real registry and into Envoy are tests/images.rs.

use oci_spec::image::{DescriptorBuilder, Digest, ImageManifestBuilder, MediaType};
use sg_integration::oci::{
    self, build_all, build_image, istio_extract, pin_manifests, sha256_hex, Layout, LayoutImage,
};
use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

fn module(n: u8) -> Vec<u8> {
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    m.extend((0..5000u32).map(|i| (i as u8).wrapping_mul(n)));
    m
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn the_same_module_gives_the_same_image_byte_for_byte_and_another_module_another() {
    for layout in [Layout::Compat, Layout::Wasm] {
        let t = tempfile::tempdir().unwrap();
        // Two module directories holding the same bytes, written at different times.
        for (sub, pause) in [("m1", false), ("m2", true)] {
            let d = t.path().join(sub);
            std::fs::create_dir_all(&d).unwrap();
            if pause {
                std::thread::sleep(std::time::Duration::from_millis(1100));
            }
            for (i, name) in oci::IMAGES.iter().enumerate() {
                std::fs::write(oci::module_path(&d, name), module(i as u8 + 1)).unwrap();
            }
        }
        let a = build_all(
            &t.path().join("m1"),
            &t.path().join("a"),
            "0.1.0",
            layout,
            &oci::IMAGES,
        )
        .unwrap();
        let b = build_all(
            &t.path().join("m2"),
            &t.path().join("b"),
            "0.1.0",
            layout,
            &oci::IMAGES,
        )
        .unwrap();
        assert_eq!(
            files(&t.path().join("a")),
            files(&t.path().join("b")),
            "{layout:?}: every file of the two builds"
        );
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.manifest_digest, y.manifest_digest);
            // The pin is the manifest's digest, never the module's.
            assert_ne!(x.manifest_digest, x.module_digest);
        }
        let digests: std::collections::BTreeSet<_> =
            a.iter().map(|x| x.manifest_digest.clone()).collect();
        assert_eq!(
            digests.len(),
            a.len(),
            "{layout:?}: distinct modules, distinct images"
        );
        // One byte of the module changed: another digest. Another tag: another digest.
        let mut m = module(1);
        m[100] ^= 1;
        let c = build_image(&m, "ratelimit", "0.1.0", layout, &t.path().join("c")).unwrap();
        assert_ne!(c.manifest_digest, a[0].manifest_digest);
        let d = build_image(
            &module(1),
            "ratelimit",
            "0.1.1",
            layout,
            &t.path().join("d"),
        )
        .unwrap();
        assert_ne!(d.manifest_digest, a[0].manifest_digest);
    }
}

#[test]
fn istio_finds_the_module_in_both_layouts() {
    let t = tempfile::tempdir().unwrap();
    let m = module(7);
    for (layout, layers, media) in [
        (
            Layout::Compat,
            1,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (Layout::Wasm, 2, oci::WASM_CONTENT_MEDIA_TYPE),
    ] {
        let dir = t.path().join(format!("{layout:?}"));
        let built = build_image(&m, "hotkey", "0.1.0", layout, &dir).unwrap();
        let img = LayoutImage::open(&dir, Some("0.1.0")).unwrap();
        assert_eq!(img.manifest_digest, built.manifest_digest);
        assert_eq!(img.manifest.layers().len(), layers, "{layout:?}");
        assert!(
            img.manifest
                .layers()
                .iter()
                .any(|l| l.media_type().to_string() == media),
            "{layout:?}"
        );
        let got = img.istio_module().unwrap();
        assert_eq!(sha256_hex(&got), sha256_hex(&m), "{layout:?}");
        // Compat: the module is a gzip layer, so the image is smaller than the module here.
        if layout == Layout::Compat {
            assert!(built.image_bytes < built.module_bytes + 2000);
        }
    }
    assert!(LayoutImage::open(&t.path().join("Compat"), Some("9.9.9")).is_err());
}

fn desc(media: &str, bytes: &[u8]) -> oci_spec::image::Descriptor {
    DescriptorBuilder::default()
        .media_type(MediaType::from(media))
        .size(bytes.len() as u64)
        .digest(Digest::from_str(&format!("sha256:{}", sha256_hex(bytes))).unwrap())
        .build()
        .unwrap()
}

#[test]
fn layouts_istio_refuses_are_refused() {
    let m = module(3);
    let config = b"{}".to_vec();
    let blobs: BTreeMap<String, Vec<u8>> = [&m, &config]
        .iter()
        .map(|b| (format!("sha256:{}", sha256_hex(b)), b.to_vec()))
        .collect();
    let get = |d: &oci_spec::image::Descriptor| {
        blobs
            .get(&d.digest().to_string())
            .cloned()
            .ok_or_else(|| std::io::Error::other("no blob"))
    };
    let manifest = |config_media: &str, layers: Vec<oci_spec::image::Descriptor>| {
        ImageManifestBuilder::default()
            .schema_version(2u32)
            .config(desc(config_media, &config))
            .layers(layers)
            .build()
            .unwrap()
    };
    // A single raw-Wasm layer (what `oras push x.wasm` or some tools make).
    let single = manifest(
        oci::WASM_CONFIG_MEDIA_TYPE,
        vec![desc(oci::WASM_CONTENT_MEDIA_TYPE, &m)],
    );
    let e = istio_extract(None, &single, get).unwrap_err();
    assert!(e.contains("number of layers must be 2 but got 1"), "{e}");
    // The CNCF Wasm artifact layout (`application/wasm` layer, wasm config media type).
    let cncf = manifest(
        "application/vnd.wasm.config.v0+json",
        vec![desc("application/wasm", &m)],
    );
    let e = istio_extract(None, &cncf, get).unwrap_err();
    assert!(
        e.contains("as compat variant: invalid media type application/wasm"),
        "{e}"
    );
    // Two layers but neither is the Wasm content layer.
    let two = manifest(
        oci::WASM_CONFIG_MEDIA_TYPE,
        vec![
            desc("application/wasm", &m),
            desc("application/json", &config),
        ],
    );
    let e = istio_extract(None, &two, get).unwrap_err();
    assert!(e.contains("could not find the layer of type"), "{e}");
    // A gzip layer that holds no plugin.wasm.
    // The module packed under another name.
    let mut header = tar::Header::new_ustar();
    header.set_path("module.wasm").unwrap();
    header.set_size(m.len() as u64);
    header.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&header, m.as_slice()).unwrap();
    let tar = b.into_inner().unwrap();
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, &tar).unwrap();
    let renamed = enc.finish().unwrap();
    let blobs2: BTreeMap<String, Vec<u8>> =
        [(format!("sha256:{}", sha256_hex(&renamed)), renamed.clone())]
            .into_iter()
            .collect();
    let wrong_name = manifest(
        "application/vnd.oci.image.config.v1+json",
        vec![desc(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &renamed,
        )],
    );
    let e = istio_extract(None, &wrong_name, |d| {
        blobs2
            .get(&d.digest().to_string())
            .cloned()
            .ok_or_else(|| std::io::Error::other("no blob"))
    })
    .unwrap_err();
    assert!(e.contains("plugin.wasm not found in the archive"), "{e}");
}

#[test]
fn pins_are_rewritten_to_the_manifest_digest_and_comments_stay() {
    let t = tempfile::tempdir().unwrap();
    let yaml = "# a comment\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nspec:\n  url: oci://r.example/spikeguard/hotkey:0.1.0\n  # Istio compares it with the manifest digest\n  sha256: 0000000000000000000000000000000000000000000000000000000000000000\n---\nkind: WasmPlugin\nspec:\n  sha256: \"1111111111111111111111111111111111111111111111111111111111111111\"\n  url: \"oci://r.example/spikeguard/sli:0.1.0\"\n---\nkind: WasmPlugin\nspec:\n  url: oci://r.example/other/sli:0.1.0\n  sha256: 2222222222222222222222222222222222222222222222222222222222222222\n";
    std::fs::create_dir_all(t.path().join("sub")).unwrap();
    let f = t.path().join("sub/x.yaml");
    std::fs::write(&f, yaml).unwrap();
    let digests: BTreeMap<String, String> = [
        ("hotkey".to_string(), format!("sha256:{}", "a".repeat(64))),
        ("sli".to_string(), format!("sha256:{}", "b".repeat(64))),
    ]
    .into_iter()
    .collect();
    let changed = pin_manifests(t.path(), &digests).unwrap();
    assert_eq!(changed.len(), 2, "{changed:?}");
    let got = std::fs::read_to_string(&f).unwrap();
    assert!(
        got.contains(&format!("  sha256: {}\n", "a".repeat(64))),
        "{got}"
    );
    assert!(
        got.contains(&format!("  sha256: {}\n", "b".repeat(64))),
        "{got}"
    );
    assert!(
        got.contains("2222222222222222"),
        "another image's pin is left alone: {got}"
    );
    assert!(got.contains("# Istio compares it with the manifest digest"));
    assert!(got.starts_with("# a comment\n"));
    // Nothing left to change the second time.
    assert!(pin_manifests(t.path(), &digests).unwrap().is_empty());
}
