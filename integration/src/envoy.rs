//! Envoy launcher: renders the bundle (`envoy.yaml`) for a test — ephemeral ports, absolute
//! wasm paths, per-test filter configs — validates it with `envoy --mode validate`, starts
//! Envoy, waits for `/ready`, and reads stats. Envoy is killed on drop, and its log is printed
//! when the test thread is panicking.

use crate::http;
use crate::wait;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `$ENVOY_BIN`, else the project's `.venv/bin/envoy` (installed by the Makefile).
pub fn envoy_bin() -> PathBuf {
    std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"))
}

/// Release wasm module of a filter crate (`sg_<name>.wasm`).
pub fn wasm_path(name: &str) -> PathBuf {
    repo_root().join(format!("target/wasm32-wasip1/release/sg_{name}.wasm"))
}

fn err(m: impl Into<String>) -> io::Error {
    io::Error::other(m.into())
}

/// The bundle as a JSON document, with edit helpers.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub doc: Value,
}

impl Bundle {
    pub fn load() -> io::Result<Bundle> {
        let text = std::fs::read_to_string(repo_root().join("envoy.yaml"))?;
        Bundle::from_yaml(&text)
    }

    pub fn from_yaml(text: &str) -> io::Result<Bundle> {
        let doc: Value = serde_yaml::from_str(text).map_err(|e| err(format!("envoy.yaml: {e}")))?;
        Ok(Bundle { doc })
    }

    fn listeners_mut(&mut self) -> impl Iterator<Item = &mut Value> {
        self.doc["static_resources"]["listeners"]
            .as_array_mut()
            .into_iter()
            .flatten()
    }

    /// The HTTP filter list of a listener (`ingress` or `egress`).
    pub fn http_filters_mut(&mut self, listener: &str) -> Option<&mut Vec<Value>> {
        let l = self.listeners_mut().find(|l| l["name"] == listener)?;
        l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].as_array_mut()
    }

    fn hcm_mut(&mut self, listener: &str) -> Option<&mut Value> {
        let l = self.listeners_mut().find(|l| l["name"] == listener)?;
        Some(&mut l["filter_chains"][0]["filters"][0]["typed_config"])
    }

    /// Route table of a listener's connection manager.
    pub fn route_config_mut(&mut self, listener: &str) -> Option<&mut Value> {
        Some(&mut self.hcm_mut(listener)?["route_config"])
    }

    fn wasm_filter_mut(&mut self, filter: &str) -> Option<&mut Value> {
        let name = format!("spikeguard.{filter}");
        for l in self.listeners_mut() {
            if let Some(fs) =
                l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].as_array_mut()
            {
                if let Some(f) = fs.iter_mut().find(|f| f["name"] == name.as_str()) {
                    return Some(f);
                }
            }
        }
        None
    }

    /// Current config of a spikeguard filter (`ratelimit`, ...), parsed.
    pub fn filter_config(&mut self, filter: &str) -> Option<Value> {
        let f = self.wasm_filter_mut(filter)?;
        let s = f["typed_config"]["config"]["configuration"]["value"].as_str()?;
        serde_json::from_str(s).ok()
    }

    /// Replaces a spikeguard filter's config (any JSON value, or a raw string to test
    /// refusal of malformed configs).
    pub fn set_filter_config(&mut self, filter: &str, config: &Value) -> io::Result<()> {
        let f = self
            .wasm_filter_mut(filter)
            .ok_or_else(|| err(format!("no filter spikeguard.{filter} in the bundle")))?;
        let text = match config {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        f["typed_config"]["config"]["configuration"]["value"] = Value::String(text);
        Ok(())
    }

    /// Removes every spikeguard filter not listed (keeps router and native filters).
    pub fn keep_filters(&mut self, keep: &[&str]) {
        for l in self.listeners_mut() {
            if let Some(fs) =
                l["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"].as_array_mut()
            {
                fs.retain(|f| {
                    let n = f["name"].as_str().unwrap_or("");
                    match n.strip_prefix("spikeguard.") {
                        Some(x) => keep.contains(&x),
                        None => true,
                    }
                });
            }
        }
    }

    /// Inserts an HTTP filter at the front of a listener's chain.
    pub fn prepend_http_filter(&mut self, listener: &str, filter: Value) -> io::Result<()> {
        let fs = self
            .http_filters_mut(listener)
            .ok_or_else(|| err(format!("no listener {listener}")))?;
        fs.insert(0, filter);
        Ok(())
    }

    /// Replaces spikeguard filters of `listener` by ONE filter `spikeguard.<name>` running the
    /// combined module (`sg_combined.wasm`, docs/COMBINED.md) at the place of the first of
    /// them: `parts` pairs each filter with its section (`("sli_egress", "sli")`), and each
    /// filter's current config becomes that section, unchanged. The parts keep their order
    /// whatever the order of `parts` (the module runs them in its own, the bundle's, order).
    pub fn combine(
        &mut self,
        listener: &str,
        name: &str,
        parts: &[(&str, &str)],
    ) -> io::Result<()> {
        let mut sections = serde_json::Map::new();
        for (filter, section) in parts {
            let cfg = self
                .filter_config(filter)
                .ok_or_else(|| err(format!("no spikeguard.{filter} with a JSON config")))?;
            sections.insert((*section).to_string(), cfg);
        }
        let names: Vec<String> = parts
            .iter()
            .map(|(f, _)| format!("spikeguard.{f}"))
            .collect();
        let is_part = |f: &Value| names.iter().any(|n| f["name"] == n.as_str());
        let fs = self
            .http_filters_mut(listener)
            .ok_or_else(|| err(format!("no listener {listener}")))?;
        let at = fs
            .iter()
            .position(is_part)
            .ok_or_else(|| err(format!("none of {names:?} on listener {listener}")))?;
        if fs.iter().filter(|f| is_part(f)).count() != parts.len() {
            return Err(err(format!("not all of {names:?} on listener {listener}")));
        }
        fs.retain(|f| !is_part(f));
        fs.insert(
            at,
            Bundle::wasm_filter(name, "combined", &Value::Object(sections)),
        );
        Ok(())
    }

    /// Points every Wasm filter that loads `sg_<module>.wasm` at `file` instead (e.g. a module
    /// pulled from a registry). Returns how many filters now load it.
    pub fn use_module_file(&mut self, module: &str, file: &Path) -> usize {
        let wanted = format!("sg_{module}.wasm");
        let mut n = 0;
        for code in module_files_mut(&mut self.doc) {
            if code.as_str().is_some_and(|p| p.ends_with(&wanted)) {
                *code = Value::String(file.display().to_string());
                n += 1;
            }
        }
        n
    }

    /// Has Envoy give tcmalloc's free pages back to the OS: up to `bytes` every `interval_ms`
    /// (bootstrap `memory_allocator_manager`). 0 removes the setting.
    pub fn set_memory_release(&mut self, bytes: u64, interval_ms: u64) {
        match self.doc.as_object_mut() {
            Some(o) if bytes == 0 => {
                o.remove("memory_allocator_manager");
            }
            Some(o) => {
                o.insert(
                    "memory_allocator_manager".into(),
                    json!({
                        "bytes_to_release": bytes,
                        "memory_release_interval": format!("{:.3}s", interval_ms as f64 / 1000.0),
                    }),
                );
            }
            None => {}
        }
    }

    /// A Wasm HTTP filter entry for module `sg_<module>.wasm` in the shared `spikeguard` VM.
    pub fn wasm_filter(name: &str, module: &str, config: &Value) -> Value {
        json!({
            "name": format!("spikeguard.{name}"),
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                "config": {
                    "name": name, "root_id": name, "failure_policy": "FAIL_OPEN",
                    "vm_config": {
                        "vm_id": "spikeguard", "runtime": "envoy.wasm.runtime.v8",
                        "code": {"local": {"filename": wasm_path(module).display().to_string()}}
                    },
                    "configuration": {
                        "@type": "type.googleapis.com/google.protobuf.StringValue",
                        "value": config.to_string()
                    }
                }
            }
        })
    }

    /// Serves a spikeguard filter's config by ECDS from `file` (Envoy's extension config
    /// discovery with a `path_config_source`) instead of inline: the filter keeps its place and
    /// name in the chain, its current config is written to `file`, and Envoy applies every
    /// later [`write_ecds`] of that file without a restart. This is how a plain-Envoy user
    /// changes a filter's config live; Istio pushes `WasmPlugin` changes by ECDS too.
    pub fn use_ecds_file(&mut self, filter: &str, file: &Path) -> io::Result<()> {
        let name = format!("spikeguard.{filter}");
        let f = self
            .wasm_filter_mut(filter)
            .ok_or_else(|| err(format!("no filter {name} in the bundle")))?;
        let mut typed = f["typed_config"].take();
        if let Some(code) = typed.pointer_mut("/config/vm_config/code/local/filename") {
            if let Some(p) = code.as_str() {
                if Path::new(p).is_relative() {
                    *code = Value::String(repo_root().join(p).display().to_string());
                }
            }
        }
        write_ecds(file, &name, &typed)?;
        *f = json!({
            "name": name,
            "config_discovery": {
                "config_source": {
                    "path_config_source": {"path": file.display().to_string()},
                    "resource_api_version": "V3"
                },
                "type_urls": [WASM_TYPE_URL]
            }
        });
        Ok(())
    }

    /// Sets `vm_config.vm_id` of every inline Wasm filter on every listener (spikeguard's and
    /// any other) to `vm_id`. `""` is what Istio does: a `WasmPlugin` sets no `vm_id`, so all
    /// the plugins of a sidecar share one shared-data namespace with each other (and with any
    /// other Wasm extension there). Call it after [`Bundle::combine`], which adds filters with
    /// the bundle's `spikeguard`. Returns how many filters it changed.
    pub fn set_vm_id(&mut self, vm_id: &str) -> usize {
        let mut n = 0;
        for l in self.listeners_mut() {
            let fs = l
                .pointer_mut("/filter_chains/0/filters/0/typed_config/http_filters")
                .and_then(Value::as_array_mut);
            for f in fs.into_iter().flatten() {
                if let Some(id) = f.pointer_mut("/typed_config/config/vm_config/vm_id") {
                    *id = Value::String(vm_id.to_string());
                    n += 1;
                }
            }
        }
        n
    }

    /// Replaces a listener's routes with one `direct_response` route (`direct`, 200, `body`):
    /// Envoy answers every request itself after the HTTP filters ran, so no upstream (and no
    /// cluster circuit breaker) can limit a test's throughput.
    pub fn answer_directly(&mut self, listener: &str, body: &str) -> io::Result<()> {
        let rc = self
            .route_config_mut(listener)
            .ok_or_else(|| err(format!("no listener {listener}")))?;
        let vh = rc
            .pointer_mut("/virtual_hosts/0")
            .ok_or_else(|| err(format!("{listener}: no virtual_hosts[0]")))?;
        vh["routes"] = json!([{"name": "direct", "match": {"prefix": "/"},
            "direct_response": {"status": 200, "body": {"inline_string": body}}}]);
        Ok(())
    }

    /// Raises every cluster's default circuit breakers (Envoy's default: 1,024 connections,
    /// pending and active requests) to `max`, so that in tests a request is refused by a
    /// spikeguard filter or the test's upstream, never by an Envoy limit the test is not about.
    pub fn raise_circuit_breakers(&mut self, max: u32) {
        let cs = self.doc["static_resources"]["clusters"].as_array_mut();
        for c in cs.into_iter().flatten() {
            // Replaces the bundle's own limits too (sized to the demo app, not to a test's
            // unlimited upstream).
            c["circuit_breakers"] = json!({"thresholds": [{"priority": "DEFAULT",
                "max_connections": max, "max_pending_requests": max, "max_requests": max}]});
        }
    }

    /// Points a cluster's single endpoint at 127.0.0.1:port.
    pub fn set_cluster_port(&mut self, cluster: &str, port: u16) -> io::Result<()> {
        let cs = self.doc["static_resources"]["clusters"]
            .as_array_mut()
            .ok_or_else(|| err("no clusters"))?;
        let c = cs
            .iter_mut()
            .find(|c| c["name"] == cluster)
            .ok_or_else(|| err(format!("no cluster {cluster}")))?;
        c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"] = json!({"address": "127.0.0.1", "port_value": port});
        Ok(())
    }

    /// Every listener on `ip` (a loopback address, 127.0.0.x) instead of envoy.yaml's: several
    /// Envoys on one machine, each on its own address, as pods are ([11/11]).
    pub fn set_listen_ip(&mut self, ip: &str) {
        if let Some(ls) = self.doc["static_resources"]["listeners"].as_array_mut() {
            for l in ls {
                l["address"]["socket_address"]["address"] = json!(ip);
            }
        }
    }

    /// Ephemeral ports for admin and listeners; absolute wasm paths.
    fn render(&self) -> Value {
        let mut doc = self.doc.clone();
        doc["admin"]["address"]["socket_address"] =
            json!({"address": "127.0.0.1", "port_value": 0});
        if let Some(ls) = doc["static_resources"]["listeners"].as_array_mut() {
            for l in ls {
                l["address"]["socket_address"]["port_value"] = json!(0);
            }
        }
        for code in module_files_mut(&mut doc) {
            if let Some(p) = code.as_str() {
                if Path::new(p).is_relative() {
                    *code = Value::String(repo_root().join(p).display().to_string());
                }
            }
        }
        doc
    }

    /// Validates and starts Envoy with `--concurrency`.
    pub fn launch(&self, concurrency: u32) -> io::Result<Envoy> {
        let tmp = tempfile::Builder::new().prefix("sg-envoy-").tempdir()?;
        let cfg = tmp.path().join("envoy.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&self.render())?)?;
        validate(&cfg)?;
        Envoy::start(&cfg, tmp, concurrency)
    }
}

const WASM_TYPE_URL: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";

/// The `vm_config.code.local.filename` of every Wasm HTTP filter of every listener of `doc`.
/// pointer_mut, not indexing: IndexMut would add the path to filters that have no Wasm config
/// (the router).
fn module_files_mut(doc: &mut Value) -> impl Iterator<Item = &mut Value> {
    doc["static_resources"]["listeners"]
        .as_array_mut()
        .into_iter()
        .flatten()
        .filter_map(|l| {
            l.pointer_mut("/filter_chains/0/filters/0/typed_config/http_filters")
                .and_then(Value::as_array_mut)
        })
        .flatten()
        .filter_map(|f| f.pointer_mut("/typed_config/config/vm_config/code/local/filename"))
}

/// Writes an ECDS resource file (a `DiscoveryResponse` with one `TypedExtensionConfig`)
/// atomically: a temporary file renamed over `file`, the move Envoy's file watcher reacts to.
/// `typed_config` is the filter's `typed_config` (see [`Bundle::wasm_filter`]).
pub fn write_ecds(file: &Path, name: &str, typed_config: &Value) -> io::Result<()> {
    let doc = json!({
        "version_info": format!("{}", std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)),
        "resources": [{
            "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
            "name": name,
            "typed_config": typed_config
        }]
    });
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
    std::fs::rename(&tmp, file)
}

/// `envoy --mode validate`: fails with Envoy's own message.
pub fn validate(cfg: &Path) -> io::Result<()> {
    let out = Command::new(envoy_bin())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "-l",
            "warn",
            "-c",
        ])
        .arg(cfg)
        .output()
        .map_err(|e| {
            err(format!(
                "cannot run {}: {e} (run `make setup`)",
                envoy_bin().display()
            ))
        })?;
    if !out.status.success() {
        return Err(err(format!(
            "envoy --mode validate refused {}:\n{}{}",
            cfg.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

pub struct Envoy {
    child: Child,
    pub admin: u16,
    /// Listener ports by name (`ingress`, `egress`).
    pub ports: BTreeMap<String, u16>,
    /// Config, log and admin address file; removed on drop unless the test failed.
    pub dir: PathBuf,
    tmp: Option<TempDir>,
    concurrency: u32,
    /// Hot restart enabled ([`Bundle::launch_hot`]): its settings.
    hot: Option<HotRestart>,
    /// The restart epoch of the running process (0 until [`Envoy::hot_restart`]).
    pub epoch: u32,
    /// The previous epoch's process while it drains (after a hot restart).
    parent: Option<Child>,
}

/// Hot restart settings of an Envoy started by [`Bundle::launch_hot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HotRestart {
    /// `--drain-time-s`: how long the parent drains its connections.
    pub drain_s: u32,
    /// `--parent-shutdown-time-s`: when the child tells the parent to exit.
    pub parent_shutdown_s: u32,
}

impl Bundle {
    /// Validates and starts Envoy with hot restart enabled (`--use-dynamic-base-id`, epoch 0):
    /// [`Envoy::hot_restart`] then starts the next epoch, which takes the listen sockets over.
    pub fn launch_hot(&self, concurrency: u32, hot: HotRestart) -> io::Result<Envoy> {
        let tmp = tempfile::Builder::new().prefix("sg-envoy-").tempdir()?;
        let cfg = tmp.path().join("envoy.json");
        std::fs::write(&cfg, serde_json::to_vec_pretty(&self.render())?)?;
        validate(&cfg)?;
        Envoy::start_epoch(&cfg, tmp, concurrency, Some(hot), 0, None)
    }
}

impl Envoy {
    fn start(cfg: &Path, tmp: TempDir, concurrency: u32) -> io::Result<Envoy> {
        Envoy::start_epoch(cfg, tmp, concurrency, None, 0, None)
    }

    fn log_file(dir: &Path, epoch: u32) -> PathBuf {
        match epoch {
            0 => dir.join("envoy.log"),
            n => dir.join(format!("envoy-{n}.log")),
        }
    }

    fn admin_file(dir: &Path, epoch: u32) -> PathBuf {
        match epoch {
            0 => dir.join("admin.addr"),
            n => dir.join(format!("admin-{n}.addr")),
        }
    }

    /// Spawns Envoy for `epoch`: without `hot`, `--disable-hot-restart`; with it, epoch 0
    /// picks a free base ID (written to `base_id`), a later one uses that ID.
    fn spawn(
        cfg: &Path,
        dir: &Path,
        concurrency: u32,
        hot: Option<HotRestart>,
        epoch: u32,
    ) -> io::Result<Child> {
        let mut cmd = Command::new(envoy_bin());
        match hot {
            None => {
                cmd.arg("--disable-hot-restart");
            }
            Some(h) => {
                let base_id = dir.join("base_id");
                if epoch == 0 {
                    cmd.arg("--use-dynamic-base-id")
                        .arg("--base-id-path")
                        .arg(&base_id);
                } else {
                    let id = std::fs::read_to_string(&base_id)?;
                    cmd.arg("--base-id").arg(id.trim());
                }
                cmd.arg("--restart-epoch")
                    .arg(epoch.to_string())
                    .arg("--drain-time-s")
                    .arg(h.drain_s.to_string())
                    .arg("--parent-shutdown-time-s")
                    .arg(h.parent_shutdown_s.to_string());
            }
        }
        // Flush the log file every 100 ms (default 10 s) so tests can read it.
        cmd.args([
            "-l",
            "info",
            "--file-flush-interval-msec",
            "100",
            "--concurrency",
        ])
        .arg(concurrency.to_string())
        .arg("-c")
        .arg(cfg)
        .arg("--log-path")
        .arg(Envoy::log_file(dir, epoch))
        .arg("--admin-address-path")
        .arg(Envoy::admin_file(dir, epoch))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err(format!("cannot start {}: {e}", envoy_bin().display())))
    }

    fn start_epoch(
        cfg: &Path,
        tmp: TempDir,
        concurrency: u32,
        hot: Option<HotRestart>,
        epoch: u32,
        parent: Option<Child>,
    ) -> io::Result<Envoy> {
        let dir = tmp.path().to_path_buf();
        let child = Envoy::spawn(cfg, &dir, concurrency, hot, epoch)?;
        let mut e = Envoy {
            child,
            admin: 0,
            ports: BTreeMap::new(),
            dir,
            tmp: Some(tmp),
            concurrency,
            hot,
            epoch,
            parent,
        };
        e.wait_ready(Duration::from_secs(60))?;
        Ok(e)
    }

    /// Envoy's hot restart (`--restart-epoch` + 1, same base ID): starts the next epoch with
    /// the same config, its listeners on the ports the running process listens on (a hot
    /// restart hands listen sockets over by address), and returns once it is ready (its
    /// admin address in [`Envoy::admin`], listener ports unchanged). The old process drains
    /// for `drain_s` and exits after `parent_shutdown_s` ([`Envoy::wait_parent_exit`]).
    /// Only for an Envoy started by [`Bundle::launch_hot`].
    pub fn hot_restart(&mut self) -> io::Result<()> {
        let hot = self
            .hot
            .ok_or_else(|| err("hot restart needs an Envoy started by Bundle::launch_hot"))?;
        if self.parent.is_some() {
            return Err(err("the previous hot restart's parent is still running"));
        }
        let text = std::fs::read_to_string(self.dir.join("envoy.json"))?;
        let mut doc: Value = serde_json::from_str(&text).map_err(|e| err(e.to_string()))?;
        if let Some(ls) = doc["static_resources"]["listeners"].as_array_mut() {
            for l in ls {
                let port = l["name"].as_str().and_then(|n| self.ports.get(n)).copied();
                if let Some(p) = port {
                    l["address"]["socket_address"]["port_value"] = json!(p);
                }
            }
        }
        let epoch = self.epoch + 1;
        let cfg = self.dir.join(format!("envoy-{epoch}.json"));
        std::fs::write(&cfg, serde_json::to_vec_pretty(&doc)?)?;
        let child = Envoy::spawn(&cfg, &self.dir, self.concurrency, Some(hot), epoch)?;
        let parent = std::mem::replace(&mut self.child, child);
        self.parent = Some(parent);
        self.epoch = epoch;
        self.admin = 0;
        let before = std::mem::take(&mut self.ports);
        self.wait_ready(Duration::from_secs(60))?;
        if self.ports != before {
            return Err(err(format!(
                "listener ports changed on hot restart: {before:?} -> {:?}",
                self.ports
            )));
        }
        Ok(())
    }

    /// The previous epoch's process is still running (it drains after a hot restart).
    pub fn parent_alive(&mut self) -> bool {
        match self.parent.as_mut() {
            Some(p) => matches!(p.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until the previous epoch's process has exited by itself (it is told to after
    /// `parent_shutdown_s`); Ok at once when there is none.
    pub fn wait_parent_exit(&mut self, timeout: Duration) -> io::Result<()> {
        let every = Duration::from_millis(50);
        let r =
            wait::try_eventually_every("hot restart parent exit", timeout, every, || {
                match self.parent.as_mut().map(Child::try_wait) {
                    None | Some(Ok(Some(_))) => Ok(()),
                    Some(Ok(None)) => Err("still running".to_string()),
                    Some(Err(e)) => Err(e.to_string()),
                }
            });
        r.map_err(|e| err(e.to_string()))?;
        self.parent = None;
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let every = Duration::from_millis(50);
        let ready = wait::try_eventually_every("envoy /ready", timeout, every, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Ok(Err(format!("envoy exited with {status} before ready")));
            }
            self.poll_ready().map(Ok)
        });
        match ready {
            Ok(Ok(())) => Ok(()),
            Ok(Err(exited)) => Err(err(format!("{exited}:\n{}", self.log_tail(60)))),
            Err(e) => Err(err(format!("{e}:\n{}", self.log_tail(60)))),
        }
    }

    /// One look at the admin address file, `/ready` and `/listeners`: Ok once Envoy is ready
    /// and every listener has its port, else what is missing.
    fn poll_ready(&mut self) -> Result<(), String> {
        if self.admin == 0 {
            let file = Envoy::admin_file(&self.dir, self.epoch);
            let s = std::fs::read_to_string(file).unwrap_or_default();
            let port = s.trim().rsplit(':').next().and_then(|p| p.parse().ok());
            self.admin = port.ok_or("no admin address yet")?;
        }
        match http::get(self.admin, "/ready") {
            Ok(r) if r.status == 200 => {}
            Ok(r) => return Err(format!("/ready: {} {}", r.status, r.body.trim())),
            Err(e) => return Err(format!("/ready: {e}")),
        }
        let r = http::get(self.admin, "/listeners?format=json").map_err(|e| e.to_string())?;
        let v = serde_json::from_str::<Value>(&r.body).map_err(|e| e.to_string())?;
        for l in v["listener_statuses"].as_array().into_iter().flatten() {
            let port = l["local_address"]["socket_address"]["port_value"].as_u64();
            if let (Some(n), Some(p)) = (l["name"].as_str(), port) {
                self.ports.insert(n.to_string(), p as u16);
            }
        }
        if self.ports.is_empty() || self.ports.values().any(|p| *p == 0) {
            return Err(format!("listener ports: {:?}", self.ports));
        }
        Ok(())
    }

    pub fn port(&self, listener: &str) -> u16 {
        self.ports.get(listener).copied().unwrap_or(0)
    }

    pub fn ingress(&self) -> u16 {
        self.port("ingress")
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ingress())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the Envoy process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Counters and gauges from `/stats` (histograms skipped).
    pub fn stats(&self) -> BTreeMap<String, i64> {
        self.stats_at("/stats")
    }

    /// Counters and gauges whose names match `filter`, a regular expression of letters,
    /// digits, `_` and `.` only (sent unescaped as `/stats?filter=`): a smaller answer than
    /// [`Envoy::stats`] for a caller that polls.
    pub fn stats_matching(&self, filter: &str) -> BTreeMap<String, i64> {
        if !filter
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.')
        {
            return BTreeMap::new();
        }
        self.stats_at(&format!("/stats?filter={filter}"))
    }

    fn stats_at(&self, path: &str) -> BTreeMap<String, i64> {
        let mut out = BTreeMap::new();
        if let Ok(r) = http::get(self.admin, path) {
            for line in r.body.lines() {
                if let Some((k, v)) = line.split_once(": ") {
                    if let Ok(n) = v.trim().parse::<i64>() {
                        out.insert(k.to_string(), n);
                    }
                }
            }
        }
        out
    }

    pub fn stat(&self, name: &str) -> i64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    /// `/stats/prometheus` text.
    pub fn prometheus(&self) -> String {
        http::get(self.admin, "/stats/prometheus")
            .map(|r| r.body)
            .unwrap_or_default()
    }

    /// Polls a stat until `pred` holds and returns that value; panics (naming the stat and
    /// its last value) if it does not hold within `timeout`.
    #[track_caller]
    pub fn wait_stat(&self, name: &str, timeout: Duration, pred: impl Fn(i64) -> bool) -> i64 {
        wait::until(
            &format!("stat {name}"),
            timeout,
            || self.stat(name),
            |v| pred(*v),
        )
    }

    /// Bytes tcmalloc has allocated and not freed (Envoy's live heap), read now from
    /// `/memory` (the `server.memory_allocated` gauge lags by a stats flush, 5 s).
    pub fn heap_allocated(&self) -> i64 {
        http::get(self.admin, "/memory")
            .ok()
            .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
            .and_then(|v| v["allocated"].as_str().and_then(|a| a.parse().ok()))
            .unwrap_or(0)
    }

    /// Polls the live heap until it is at most `limit` bytes and returns that reading; panics
    /// with the last reading if it stays above within `timeout`.
    #[track_caller]
    pub fn wait_heap_at_most(&self, limit: i64, timeout: Duration) -> i64 {
        let what = format!("Envoy live heap <= {limit} bytes");
        wait::until(&what, timeout, || self.heap_allocated(), |v| *v <= limit)
    }

    /// Resident memory of the Envoy process in KiB.
    pub fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
            })
            .unwrap_or(0)
    }

    /// CPU time (user + system) Envoy has used, in microseconds.
    pub fn cpu_us(&self) -> u64 {
        let Ok(s) = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())) else {
            return 0;
        };
        // Fields after the ")" of the command name: utime is field 14, stime 15 (1-based).
        let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
        // `rest` starts at field 3 (state), so utime (14) is index 11 and stime (15) index 12.
        (ticks(11) + ticks(12)) * 1_000_000 / clk_tck()
    }

    /// Polls Envoy's log until it contains `needle`; panics (with the log's last lines) if
    /// it does not within `timeout`.
    #[track_caller]
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let what = format!("{needle:?} in the Envoy log");
        wait::eventually(&what, timeout, || {
            if self.log().contains(needle) {
                Ok(())
            } else {
                Err(format!("log tail:\n{}", self.log_tail(10)))
            }
        })
    }

    /// The running epoch's log (the first epoch's: `envoy.log`).
    pub fn log(&self) -> String {
        std::fs::read_to_string(Envoy::log_file(&self.dir, self.epoch)).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

fn clk_tck() -> u64 {
    // Linux's USER_HZ is 100 on every architecture Envoy ships for.
    100
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(mut p) = self.parent.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        if std::thread::panicking() {
            // Keep the directory (config and full log) for the post-mortem.
            if let Some(tmp) = self.tmp.take() {
                let _ = tmp.keep();
            }
            eprintln!(
                "----- envoy log ({}) -----\n{}\n----- end of envoy log -----",
                self.dir.display(),
                self.log_tail(200)
            );
        }
    }
}

/// Starts Envoy with a config that is expected to be refused; returns Envoy's log once it
/// has exited (Ok) or an error if it became ready (it served with a bad config).
pub fn expect_refused(bundle: &Bundle, concurrency: u32) -> io::Result<String> {
    match bundle.launch(concurrency) {
        Ok(e) => Err(err(format!("envoy became ready on port {}", e.ingress()))),
        Err(e) => Ok(e.to_string()),
    }
}
