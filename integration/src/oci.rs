//! Wasm OCI images of the filters, in the layouts Istio's Wasm image fetcher accepts
//! (istio/istio `pkg/wasm/imagefetcher.go`), written as OCI image layouts on disk
//! (`oci-layout`, `index.json`, `blobs/sha256/<hex>`) that `skopeo copy oci:DIR:TAG
//! docker://...` pushes to a registry.
//!
//! Two layouts:
//! - [`Layout::Compat`] (the default, what `make images` ships): an ordinary OCI image whose
//!   one layer (`application/vnd.oci.image.layer.v1.tar+gzip`) holds `plugin.wasm`; Istio takes
//!   the LAST layer, gunzips it and reads the tar entry whose base name is `plugin.wasm`. The
//!   same image `docker build` makes from `FROM scratch` + `COPY plugin.wasm ./`.
//! - [`Layout::Wasm`]: the Solo "oci" variant, exactly two layers, one of them the raw module
//!   (`application/vnd.module.wasm.content.layer.v1+wasm`), the other the module config
//!   (`application/vnd.module.wasm.config.v1+json`, also the manifest's config).
//!
//! Istio rejects a single raw-Wasm layer and the CNCF `application/wasm` artifact layout; this
//! module writes neither. [`istio_extract`] applies Istio's rules to a manifest, so a test can
//! prove what Istio would load from a pulled image.
//!
//! Reproducible: the same module bytes and tag give the same manifest digest. The tar entry has
//! mtime 0, uid/gid 0, mode 0644 and no user names; gzip has mtime 0, OS "unknown" and a fixed
//! level; the config has no `created`; every JSON document is written with sorted keys (the
//! `oci-spec` types keep annotations in a `HashMap`, whose order changes per process).
//!
//! The WasmPlugin `sha256` of an `oci://` url is the hex of the MANIFEST digest (Istio compares
//! it with the manifest it fetched), not the module's sha256: [`Built::manifest_digest`].

use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, Digest, ImageConfigurationBuilder,
    ImageIndex, ImageIndexBuilder, ImageManifest, ImageManifestBuilder, MediaType,
    OciLayoutBuilder, Os, RootFsBuilder, ANNOTATION_LICENSES, ANNOTATION_REF_NAME,
    ANNOTATION_TITLE, ANNOTATION_VERSION,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The images `make images` builds: the five filters and the combined module.
pub const IMAGES: [&str; 6] = [
    "ratelimit",
    "hotkey",
    "simplepage",
    "breaker",
    "sli",
    "combined",
];

/// Name of the module inside a compat image (Istio: `wasmPluginFileName`).
pub const PLUGIN_FILE: &str = "plugin.wasm";
pub const WASM_CONTENT_MEDIA_TYPE: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
pub const WASM_CONFIG_MEDIA_TYPE: &str = "application/vnd.module.wasm.config.v1+json";
pub const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LAYER_MEDIA_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Compat,
    Wasm,
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Layout, String> {
        match s {
            "compat" => Ok(Layout::Compat),
            "wasm" => Ok(Layout::Wasm),
            other => Err(format!("layout {other:?}: expected compat or wasm")),
        }
    }
}

/// One image written as an OCI layout.
#[derive(Debug, Clone)]
pub struct Built {
    pub name: String,
    pub tag: String,
    /// The OCI layout directory (`skopeo copy oci:<dir>:<tag> ...`).
    pub dir: PathBuf,
    /// `sha256:<hex>` of the manifest: what a registry answers as `Docker-Content-Digest` and
    /// what a WasmPlugin's `sha256` pins (hex only).
    pub manifest_digest: String,
    /// `sha256:<hex>` of the module itself.
    pub module_digest: String,
    pub module_bytes: u64,
    /// Manifest + config + layers: what a pull transfers.
    pub image_bytes: u64,
}

fn err(m: impl Into<String>) -> io::Error {
    io::Error::other(m.into())
}

fn oci(e: impl std::fmt::Display) -> io::Error {
    err(format!("oci: {e}"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest_of(bytes: &[u8]) -> io::Result<Digest> {
    Digest::from_str(&format!("sha256:{}", sha256_hex(bytes))).map_err(oci)
}

/// Recursively sorted object keys: a byte-stable JSON form whatever the map types inside.
fn canonical(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<String, Value> =
                m.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

fn canonical_json<T: serde::Serialize>(t: &T) -> io::Result<Vec<u8>> {
    let v = serde_json::to_value(t).map_err(oci)?;
    serde_json::to_vec(&canonical(v)).map_err(oci)
}

/// The compat layer: a tar holding only `plugin.wasm`, gzipped, with nothing that depends on
/// when or by whom it was built. Returns (gzipped layer, uncompressed tar).
pub fn compat_layer(module: &[u8]) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut header = tar::Header::new_ustar();
    header.set_path(PLUGIN_FILE)?;
    header.set_size(module.len() as u64);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut builder = tar::Builder::new(Vec::new());
    builder.append(&header, module)?;
    let tar = builder.into_inner()?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar)?;
    Ok((gz.finish()?, tar))
}

fn descriptor(
    media_type: MediaType,
    bytes: &[u8],
    annotations: &[(&str, &str)],
) -> io::Result<Descriptor> {
    let mut b = DescriptorBuilder::default()
        .media_type(media_type)
        .size(bytes.len() as u64)
        .digest(digest_of(bytes)?);
    if !annotations.is_empty() {
        let map: HashMap<String, String> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        b = b.annotations(map);
    }
    b.build().map_err(oci)
}

fn write_blob(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(blobs.join(sha256_hex(bytes)), bytes)
}

/// Writes the image of `module` named `spikeguard/<name>:<tag>` as an OCI layout in `dir`
/// (emptied first).
pub fn build_image(
    module: &[u8],
    name: &str,
    tag: &str,
    layout: Layout,
    dir: &Path,
) -> io::Result<Built> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let title = format!("spikeguard-{name}");
    let (config_desc, config_bytes, layers) = match layout {
        Layout::Compat => {
            let (layer, tar) = compat_layer(module)?;
            let rootfs = RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![format!("sha256:{}", sha256_hex(&tar))])
                .build()
                .map_err(oci)?;
            let mut labels = HashMap::new();
            labels.insert(ANNOTATION_TITLE.to_string(), title.clone());
            labels.insert(ANNOTATION_VERSION.to_string(), tag.to_string());
            let config = ImageConfigurationBuilder::default()
                .architecture(Arch::Wasm)
                .os(Os::Other("wasip1".to_string()))
                .rootfs(rootfs)
                .config(
                    ConfigBuilder::default()
                        .labels(labels)
                        .build()
                        .map_err(oci)?,
                )
                .build()
                .map_err(oci)?;
            let config_bytes = canonical_json(&config)?;
            let desc = descriptor(MediaType::ImageConfig, &config_bytes, &[])?;
            let layer_desc = descriptor(
                MediaType::ImageLayerGzip,
                &layer,
                &[(ANNOTATION_TITLE, PLUGIN_FILE)],
            )?;
            (desc, config_bytes, vec![(layer_desc, layer)])
        }
        Layout::Wasm => {
            // The Solo spec's module config; Istio never reads it, Solo's tooling does.
            let config = serde_json::json!({
                "type": "envoy_proxy",
                "abiVersions": ["proxy_abi_version_0_2_1"],
                "title": title,
                "version": tag,
            });
            let config_bytes = canonical_json(&config)?;
            let config_media = MediaType::Other(WASM_CONFIG_MEDIA_TYPE.to_string());
            let desc = descriptor(config_media.clone(), &config_bytes, &[])?;
            let config_layer = descriptor(config_media, &config_bytes, &[])?;
            let wasm_layer = descriptor(
                MediaType::Other(WASM_CONTENT_MEDIA_TYPE.to_string()),
                module,
                &[(ANNOTATION_TITLE, PLUGIN_FILE)],
            )?;
            (
                desc,
                config_bytes.clone(),
                vec![(config_layer, config_bytes), (wasm_layer, module.to_vec())],
            )
        }
    };
    let mut annotations = HashMap::new();
    annotations.insert(ANNOTATION_TITLE.to_string(), title);
    annotations.insert(ANNOTATION_VERSION.to_string(), tag.to_string());
    annotations.insert(ANNOTATION_LICENSES.to_string(), "Apache-2.0".to_string());
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>())
        .annotations(annotations)
        .build()
        .map_err(oci)?;
    let manifest_bytes = canonical_json(&manifest)?;
    let mut image_bytes = manifest_bytes.len() as u64 + config_bytes.len() as u64;
    write_blob(dir, &config_bytes)?;
    for (_, bytes) in &layers {
        write_blob(dir, bytes)?;
        image_bytes += bytes.len() as u64;
    }
    if layout == Layout::Wasm {
        // The config blob is also the first layer: a pull transfers it once.
        image_bytes -= config_bytes.len() as u64;
    }
    write_blob(dir, &manifest_bytes)?;
    let manifest_desc = descriptor(
        MediaType::ImageManifest,
        &manifest_bytes,
        &[(ANNOTATION_REF_NAME, tag)],
    )?;
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![manifest_desc])
        .build()
        .map_err(oci)?;
    std::fs::write(dir.join("index.json"), canonical_json(&index)?)?;
    let layout_file = OciLayoutBuilder::default()
        .image_layout_version("1.0.0")
        .build()
        .map_err(oci)?;
    std::fs::write(dir.join("oci-layout"), canonical_json(&layout_file)?)?;
    Ok(Built {
        name: name.to_string(),
        tag: tag.to_string(),
        dir: dir.to_path_buf(),
        manifest_digest: format!("sha256:{}", sha256_hex(&manifest_bytes)),
        module_digest: format!("sha256:{}", sha256_hex(module)),
        module_bytes: module.len() as u64,
        image_bytes,
    })
}

/// The release module of an image (`sg_<name>.wasm` in `modules`).
pub fn module_path(modules: &Path, name: &str) -> PathBuf {
    modules.join(format!("sg_{name}.wasm"))
}

/// Builds `names` from `modules` into `out/<name>/` and writes `out/images.json`
/// (name, tag, layout, manifest and module digests, sizes).
pub fn build_all(
    modules: &Path,
    out: &Path,
    tag: &str,
    layout: Layout,
    names: &[&str],
) -> io::Result<Vec<Built>> {
    let mut built = Vec::new();
    for name in names {
        let path = module_path(modules, name);
        let module = std::fs::read(&path)
            .map_err(|e| err(format!("{}: {e} (run `make wasm`)", path.display())))?;
        built.push(build_image(&module, name, tag, layout, &out.join(name))?);
    }
    let summary: Vec<Value> = built
        .iter()
        .map(|b| {
            serde_json::json!({
                "image": format!("spikeguard/{}:{}", b.name, b.tag),
                "layout": format!("{layout:?}").to_lowercase(),
                "manifest_digest": b.manifest_digest,
                "module_digest": b.module_digest,
                "module_bytes": b.module_bytes,
                "image_bytes": b.image_bytes,
            })
        })
        .collect();
    let mut text = serde_json::to_vec_pretty(&summary).map_err(oci)?;
    text.push(b'\n');
    std::fs::write(out.join("images.json"), text)?;
    Ok(built)
}

/// An OCI layout read back: the manifest a tag (or, with `None`, the only entry) of
/// `index.json` names, with its digest, and the blobs by digest.
#[derive(Debug, Clone)]
pub struct LayoutImage {
    pub dir: PathBuf,
    pub manifest_digest: String,
    pub manifest: ImageManifest,
    /// The manifest's own `mediaType`, as written (None for OCI manifests that omit it).
    pub manifest_media_type: Option<String>,
}

impl LayoutImage {
    pub fn open(dir: &Path, tag: Option<&str>) -> io::Result<LayoutImage> {
        let index = ImageIndex::from_file(dir.join("index.json")).map_err(oci)?;
        let entries = index.manifests();
        let entry = match tag {
            Some(tag) => entries.iter().find(|d| {
                d.annotations()
                    .as_ref()
                    .and_then(|a| a.get(ANNOTATION_REF_NAME))
                    .is_some_and(|t| t == tag)
            }),
            None if entries.len() == 1 => entries.first(),
            None => None,
        }
        .ok_or_else(|| err(format!("{}: no manifest for {tag:?}", dir.display())))?;
        let digest = entry.digest().to_string();
        let bytes = read_blob(dir, &digest)?;
        let raw: Value = serde_json::from_slice(&bytes).map_err(oci)?;
        let manifest = ImageManifest::from_reader(bytes.as_slice()).map_err(oci)?;
        Ok(LayoutImage {
            dir: dir.to_path_buf(),
            manifest_digest: digest,
            manifest,
            manifest_media_type: raw["mediaType"].as_str().map(str::to_string),
        })
    }

    pub fn blob(&self, digest: &str) -> io::Result<Vec<u8>> {
        read_blob(&self.dir, digest)
    }

    /// What Istio would load from this image (see [`istio_extract`]).
    pub fn istio_module(&self) -> Result<Vec<u8>, String> {
        istio_extract(
            self.manifest_media_type.as_deref(),
            &self.manifest,
            |d: &Descriptor| self.blob(d.digest().as_ref()),
        )
    }
}

/// Reads `blobs/<alg>/<hex>` and checks its digest.
pub fn read_blob(dir: &Path, digest: &str) -> io::Result<Vec<u8>> {
    let (alg, hex) = digest
        .split_once(':')
        .ok_or_else(|| err(format!("digest {digest:?} has no algorithm")))?;
    if alg != "sha256" || hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(err(format!(
            "digest {digest:?}: only sha256:<64 hex> is read"
        )));
    }
    let bytes = std::fs::read(dir.join("blobs").join(alg).join(hex))?;
    let got = sha256_hex(&bytes);
    if got != hex {
        return Err(err(format!("blob {digest} has sha256 {got}")));
    }
    Ok(bytes)
}

/// Istio's Wasm image rules (imagefetcher.go `PrepareFetch`), in its order: a Docker schema 2
/// manifest must end in a Docker gzip layer holding `plugin.wasm`; otherwise the compat
/// variant (the LAST layer is `application/vnd.oci.image.layer.v1.tar+gzip` with a tar entry
/// whose base name is `plugin.wasm`); otherwise the oci variant (exactly two layers, one of
/// media type `application/vnd.module.wasm.content.layer.v1+wasm`, the raw module). Anything
/// else is refused with the reasons, as Istio refuses it.
pub fn istio_extract(
    manifest_media_type: Option<&str>,
    manifest: &ImageManifest,
    blob: impl Fn(&Descriptor) -> io::Result<Vec<u8>>,
) -> Result<Vec<u8>, String> {
    let layers = manifest.layers();
    let last_of = |want: &str| -> Result<Vec<u8>, String> {
        let layer = layers
            .last()
            .ok_or("number of layers must be greater than zero")?;
        let mt = layer.media_type().to_string();
        if mt != want {
            return Err(format!("invalid media type {mt} (expect {want})"));
        }
        let gz = blob(layer).map_err(|e| e.to_string())?;
        plugin_from_tar_gz(&gz)
    };
    if manifest_media_type == Some(DOCKER_MANIFEST_MEDIA_TYPE) {
        return last_of(DOCKER_LAYER_MEDIA_TYPE).map_err(|e| format!("docker image: {e}"));
    }
    let compat = match last_of("application/vnd.oci.image.layer.v1.tar+gzip") {
        Ok(module) => return Ok(module),
        Err(e) => e,
    };
    let artifact = (|| {
        if layers.len() != 2 {
            return Err(format!(
                "number of layers must be 2 but got {}",
                layers.len()
            ));
        }
        let layer = layers
            .iter()
            .find(|l| l.media_type().to_string() == WASM_CONTENT_MEDIA_TYPE)
            .ok_or(format!(
                "could not find the layer of type {WASM_CONTENT_MEDIA_TYPE}"
            ))?;
        blob(layer).map_err(|e| e.to_string())
    })();
    artifact.map_err(|oci| {
        format!("not a Wasm image: as compat variant: {compat}; as oci variant: {oci}")
    })
}

fn plugin_from_tar_gz(gz: &[u8]) -> Result<Vec<u8>, String> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    let entries = archive
        .entries()
        .map_err(|e| format!("failed to parse layer as tar.gz: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| e.to_string())?;
        let is_plugin = entry
            .path()
            .ok()
            .and_then(|p| p.file_name().map(|f| f == PLUGIN_FILE))
            .unwrap_or(false);
        if is_plugin {
            let mut out = Vec::new();
            entry
                .read_to_end(&mut out)
                .map_err(|e| format!("failed to read {PLUGIN_FILE}: {e}"))?;
            return Ok(out);
        }
    }
    Err(format!("{PLUGIN_FILE} not found in the archive"))
}

/// Rewrites, in every `*.yaml` under `dir`, the `sha256:` of each document whose `url:` is
/// `oci://<registry>/spikeguard/<name>:<tag>` (or `@...`) to the hex of that image's manifest
/// digest from `digests` (name -> `sha256:<hex>`). Line-based, so comments and layout stay.
/// Returns (file, image name, old value, new value) for each pin that changed.
pub fn pin_manifests(
    dir: &Path,
    digests: &BTreeMap<String, String>,
) -> io::Result<Vec<(PathBuf, String, String, String)>> {
    let mut changed = Vec::new();
    let mut files = Vec::new();
    collect_yaml(dir, &mut files)?;
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let mut out = Vec::new();
        // Per YAML document: the image named by its url, and the index of its sha256 line.
        let mut image: Option<String> = None;
        let mut sha_line: Option<usize> = None;
        let mut doc_changes = Vec::new();
        let flush = |out: &mut Vec<String>,
                     image: &mut Option<String>,
                     sha_line: &mut Option<usize>,
                     doc_changes: &mut Vec<(String, String, String)>| {
            if let (Some(name), Some(i)) = (image.take(), sha_line.take()) {
                if let (Some(digest), Some(line)) = (digests.get(&name), out.get_mut(i)) {
                    let hex = digest.trim_start_matches("sha256:");
                    let indent: String = line.chars().take_while(|c| *c == ' ').collect();
                    let old = line
                        .trim()
                        .trim_start_matches("sha256:")
                        .trim()
                        .trim_matches('"')
                        .to_string();
                    if old != hex {
                        *line = format!("{indent}sha256: {hex}");
                        doc_changes.push((name, old, hex.to_string()));
                    }
                }
            }
            *image = None;
            *sha_line = None;
        };
        for line in text.lines() {
            if line.trim_end() == "---" {
                flush(&mut out, &mut image, &mut sha_line, &mut doc_changes);
            }
            let t = line.trim();
            if let Some(url) = t.strip_prefix("url:") {
                image = image_name_of_url(url.trim().trim_matches('"'));
            } else if t.starts_with("sha256:") {
                sha_line = Some(out.len());
            }
            out.push(line.to_string());
        }
        flush(&mut out, &mut image, &mut sha_line, &mut doc_changes);
        if !doc_changes.is_empty() {
            let mut new = out.join("\n");
            if text.ends_with('\n') {
                new.push('\n');
            }
            std::fs::write(&file, new)?;
            for (name, old, new) in doc_changes {
                changed.push((file.clone(), name, old, new));
            }
        }
    }
    Ok(changed)
}

/// `oci://host/spikeguard/hotkey:0.1.0` -> `hotkey`.
pub fn image_name_of_url(url: &str) -> Option<String> {
    let rest = url.strip_prefix("oci://")?;
    let path = rest.split_once('/')?.1;
    let path = path.split(['@', ':']).next()?;
    let name = path.strip_prefix("spikeguard/")?;
    IMAGES.contains(&name).then(|| name.to_string())
}

fn collect_yaml(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_yaml(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compat_layer_has_no_time_or_owner_in_it() {
        let (gz, tar) = compat_layer(b"\0asm\x01\0\0\0").unwrap();
        // gzip header: magic, CM, FLG, MTIME (4 bytes, 0), XFL, OS (255).
        assert_eq!(&gz[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&gz[4..8], &[0, 0, 0, 0]);
        assert_eq!(gz[9], 255);
        let mut a = tar::Archive::new(tar.as_slice());
        let entries: Vec<_> = a.entries().unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(entries.len(), 1);
        let h = entries[0].header();
        assert_eq!(h.mtime().unwrap(), 0);
        assert_eq!(h.uid().unwrap(), 0);
        assert_eq!(h.mode().unwrap(), 0o644);
        assert_eq!(entries[0].path().unwrap().to_str(), Some(PLUGIN_FILE));
        assert_eq!(plugin_from_tar_gz(&gz).unwrap(), b"\0asm\x01\0\0\0");
    }

    #[test]
    fn url_names() {
        assert_eq!(
            image_name_of_url("oci://r.example:5000/spikeguard/hotkey:0.1.0").as_deref(),
            Some("hotkey")
        );
        assert_eq!(
            image_name_of_url("oci://r/spikeguard/combined@sha256:ab").as_deref(),
            Some("combined")
        );
        assert_eq!(image_name_of_url("oci://r/other/hotkey:1"), None);
        assert_eq!(image_name_of_url("file:///x.wasm"), None);
        assert_eq!(image_name_of_url("oci://r/spikeguard/nope:1"), None);
    }
}
