//! Real Alertmanager (Debian's `prometheus-alertmanager`) for tests: a free loopback port, a
//! temporary storage directory, clustering off, killed on drop. [`WebhookReceiver`] is a
//! loopback HTTP server thread that records every request (a stand-in for a Slack-compatible
//! incoming webhook).

use crate::prometheus::{free_port, tool_bin, wait_http_ready, TinyServer};
use crate::{http, wait};
use serde_json::Value;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tempfile::TempDir;

pub fn alertmanager_bin() -> PathBuf {
    tool_bin("ALERTMANAGER_BIN", "prometheus-alertmanager")
}

pub fn amtool_bin() -> PathBuf {
    tool_bin("AMTOOL_BIN", "amtool")
}

/// `amtool check-config <path>`: `Ok(output)` if valid, `Err(output)` if not.
pub fn amtool_check_config(path: &Path) -> io::Result<Result<String, String>> {
    let out = Command::new(amtool_bin())
        .arg("check-config")
        .arg(path)
        .stdin(Stdio::null())
        .output()?;
    let text = format!(
        "amtool check-config {}: {}\n{}{}",
        path.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    })
}

pub struct Alertmanager {
    child: Child,
    port: u16,
    dir: PathBuf,
    _tmp: TempDir,
}

impl Alertmanager {
    /// Starts Alertmanager with the config text on a free 127.0.0.1 port (no cluster
    /// listener) and waits until `/-/ready` answers 200.
    pub fn start(config_yaml: &str) -> io::Result<Alertmanager> {
        let tmp = tempfile::Builder::new()
            .prefix("sg-alertmanager-")
            .tempdir()?;
        let dir = tmp.path().to_path_buf();
        let path = dir.join("alertmanager.yml");
        std::fs::write(&path, config_yaml)?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("alertmanager.log"))?;
        let child = Command::new(alertmanager_bin())
            .arg(format!("--config.file={}", path.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut am = Alertmanager {
            child,
            port,
            dir,
            _tmp: tmp,
        };
        match wait_http_ready("alertmanager", &mut am.child, port) {
            Ok(()) => Ok(am),
            Err(e) => Err(io::Error::other(format!("{e}: {}", am.log()))),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("alertmanager.log")).unwrap_or_default()
    }

    /// POSTs alerts (a JSON array of `{labels, annotations, startsAt?, ...}`) to `/api/v2/alerts`.
    pub fn post_alerts(&self, alerts: &Value) -> io::Result<()> {
        let body = serde_json::to_vec(alerts).map_err(io::Error::other)?;
        let r = http::request(
            self.port,
            "POST",
            "/api/v2/alerts",
            &[("content-type", b"application/json")],
            &body,
        )?;
        if r.status != 200 {
            return Err(io::Error::other(format!(
                "POST /api/v2/alerts: {} {}",
                r.status, r.body
            )));
        }
        Ok(())
    }

    /// `GET /api/v2/alerts`: the alerts Alertmanager holds.
    pub fn alerts(&self) -> io::Result<Value> {
        let r = http::get(self.port, "/api/v2/alerts")?;
        serde_json::from_str(&r.body).map_err(io::Error::other)
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub body: String,
}

/// Records every request; answers 200 `ok` (what Slack answers).
pub struct WebhookReceiver {
    server: TinyServer,
    got: Arc<Mutex<Vec<Received>>>,
}

impl WebhookReceiver {
    pub fn start() -> io::Result<WebhookReceiver> {
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        let server = TinyServer::start(move |req| {
            if let Ok(mut g) = sink.lock() {
                g.push(Received {
                    method: req.method.clone(),
                    path: req.path.clone(),
                    body: String::from_utf8_lossy(&req.body).into_owned(),
                });
            }
            (200, "text/plain".into(), b"ok".to_vec())
        })?;
        Ok(WebhookReceiver { server, got })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// `http://127.0.0.1:<port><path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Waits until a request arrived whose body satisfies `pred`; returns it.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Received) -> bool,
    ) -> io::Result<Received> {
        wait::try_eventually_every(what, timeout, Duration::from_millis(100), || {
            let got = self.received();
            got.iter().find(|r| pred(r)).cloned().ok_or(got.len())
        })
        .map_err(io::Error::from)
    }
}
