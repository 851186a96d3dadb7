//! A real OCI registry for tests: Debian's `docker-registry` (distribution 2.8) on 127.0.0.1
//! with storage in a temporary directory, and `skopeo` (1.9) to push OCI layouts to it and pull
//! images back into OCI layouts. Plain HTTP on loopback, no auth. Killed on drop.

use crate::http;
use crate::wait;
use std::io;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

fn err(m: impl Into<String>) -> io::Error {
    io::Error::other(m.into())
}

pub struct Registry {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Registry {
    /// Starts `docker-registry serve` and waits (bounded) until `/v2/` answers 200. A port
    /// taken between choosing and binding it is retried with another.
    pub fn start() -> io::Result<Registry> {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new().prefix("sg-registry-").tempdir()?;
            let port = free_port()?;
            let config = format!(
                "version: 0.1\nlog: {{ level: warn }}\nstorage:\n  filesystem: {{ rootdirectory: {} }}\n  delete: {{ enabled: true }}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            );
            let cfg = dir.path().join("config.yml");
            std::fs::write(&cfg, config)?;
            let log = std::fs::File::create(dir.path().join("registry.log"))?;
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&cfg)
                .stdout(Stdio::from(log.try_clone()?))
                .stderr(Stdio::from(log))
                .spawn()
                .map_err(|e| err(format!("docker-registry: {e} (make setup installs it)")))?;
            let mut r = Registry { child, port, dir };
            let up =
                wait::try_eventually(
                    "registry /v2/",
                    Duration::from_secs(30),
                    || match http::get(port, "/v2/") {
                        Ok(resp) if resp.status == 200 => Ok(()),
                        other => Err(format!("{other:?}")),
                    },
                );
            if up.is_ok() {
                return Ok(r);
            }
            last = r.log();
            if r.child.try_wait()?.is_none() {
                return Err(err(format!(
                    "docker-registry did not answer /v2/ in 30 s: {last}"
                )));
            }
        }
        Err(err(format!("docker-registry did not start: {last}")))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `127.0.0.1:<port>`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `skopeo copy --preserve-digests oci:<layout>:<tag> docker://<host>/<repo>:<tag>`: the
    /// manifest is pushed byte for byte (skopeo fails rather than rewrite it).
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) -> io::Result<()> {
        skopeo(&[
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--preserve-digests",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://{}/{repo}:{tag}", self.host()),
        ])
    }

    /// `skopeo copy docker://<host>/<repo>@<digest> oci:<dest>:pulled`: pulls by digest (a
    /// registry that holds another manifest under that digest cannot answer it).
    pub fn pull(&self, repo: &str, digest: &str, dest: &Path) -> io::Result<()> {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        skopeo(&[
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{}/{repo}@{digest}", self.host()),
            &format!("oci:{}:pulled", dest.display()),
        ])
    }

    /// The registry's answer for `GET /v2/<repo>/manifests/<reference>` asking for an OCI
    /// manifest: (Docker-Content-Digest, the body).
    pub fn manifest(&self, repo: &str, reference: &str) -> io::Result<(String, String)> {
        let accept: &[u8] = b"application/vnd.oci.image.manifest.v1+json";
        let r = http::request(
            self.port,
            "GET",
            &format!("/v2/{repo}/manifests/{reference}"),
            &[("accept", accept)],
            &[],
        )?;
        if r.status != 200 {
            return Err(err(format!(
                "manifest {repo}:{reference}: {} {}",
                r.status, r.body
            )));
        }
        let digest = r
            .header("docker-content-digest")
            .ok_or_else(|| err("no Docker-Content-Digest"))?
            .to_string();
        Ok((digest, r.body))
    }
}

fn skopeo(args: &[&str]) -> io::Result<()> {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .map_err(|e| err(format!("skopeo: {e} (make setup installs it)")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(format!(
            "skopeo {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
