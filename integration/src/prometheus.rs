//! Real Prometheus (Debian's `prometheus`) for tests: started on a free loopback port with a
//! temporary storage directory and the given rule files, killed on drop; queries through the
//! HTTP API. [`Exporter`] is a tiny HTTP server thread serving a Prometheus text exposition
//! (what Envoy's `/stats/prometheus` would), built by a closure on every scrape.

use crate::{http, wait};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tempfile::TempDir;

/// The samples of a Prometheus text exposition whose metric name starts with `spikeguard_`,
/// keyed by (name, labels). Comment lines and other metrics are skipped.
pub fn samples(text: &str) -> BTreeMap<(String, BTreeMap<String, String>), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || !line.starts_with("spikeguard_") {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels: BTreeMap<String, String> = labels
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
            .collect();
        if let Ok(v) = value.parse::<f64>() {
            out.insert((name.to_string(), labels), v);
        }
    }
    out
}

/// The sum of `name`'s samples (a `spikeguard_` metric) whose labels include every `want`
/// pair.
pub fn value(text: &str, name: &str, want: &[(&str, &str)]) -> f64 {
    samples(text)
        .iter()
        .filter(|((n, l), _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| *v)
        .sum()
}

/// How long a launcher waits for `/-/ready`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The program `default` (looked up on `PATH`), or the path in environment variable `env`.
pub fn tool_bin(env: &str, default: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

pub fn prometheus_bin() -> PathBuf {
    tool_bin("PROMETHEUS_BIN", "prometheus")
}

pub fn promtool_bin() -> PathBuf {
    tool_bin("PROMTOOL_BIN", "promtool")
}

pub(crate) fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Percent-encodes a query-string value (everything but RFC 3986 unreserved characters).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
    _tmp: TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `config_yaml` (its `rule_files` replaced by `rule_files`, made
    /// absolute) on a free 127.0.0.1 port and waits until `/-/ready` answers 200.
    pub fn start(config_yaml: &str, rule_files: &[PathBuf]) -> io::Result<Prometheus> {
        let tmp = tempfile::Builder::new()
            .prefix("sg-prometheus-")
            .tempdir()?;
        let dir = tmp.path().to_path_buf();
        let mut config: Value = serde_yaml::from_str(config_yaml).map_err(io::Error::other)?;
        let files: Vec<Value> = rule_files
            .iter()
            .map(|p| std::fs::canonicalize(p).map(|p| Value::String(p.display().to_string())))
            .collect::<io::Result<_>>()?;
        if let Some(m) = config.as_object_mut() {
            m.insert("rule_files".into(), Value::Array(files));
        }
        let path = dir.join("prometheus.yml");
        std::fs::write(
            &path,
            serde_yaml::to_string(&config).map_err(io::Error::other)?,
        )?;
        let port = free_port()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut p = Prometheus {
            child,
            port,
            dir,
            _tmp: tmp,
        };
        p.wait_ready()?;
        Ok(p)
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        wait_http_ready("prometheus", &mut self.child, self.port)
            .map_err(|e| io::Error::other(format!("{e}: {}", self.log())))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Prometheus's own log (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GETs an API path and returns the JSON body (whatever its `status`).
    pub fn api(&self, path_and_query: &str) -> io::Result<Value> {
        let r = http::get(self.port, path_and_query)?;
        serde_json::from_str(&r.body).map_err(|e| {
            io::Error::other(format!(
                "{path_and_query}: status {} body {:?}: {e}",
                r.status, r.body
            ))
        })
    }

    /// An instant query through `/api/v1/query`; the whole JSON answer (`status`, `data`,
    /// `error`, `errorType`).
    pub fn query(&self, expr: &str) -> io::Result<Value> {
        self.api(&format!("/api/v1/query?query={}", urlencode(expr)))
    }

    /// The `data.result` of a successful instant query, or an error naming the expression.
    pub fn query_result(&self, expr: &str) -> io::Result<Vec<Value>> {
        let v = self.query(expr)?;
        if v["status"] != "success" {
            return Err(io::Error::other(format!("{expr}: {v}")));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// `/api/v1/targets`: the active targets.
    pub fn targets(&self) -> io::Result<Vec<Value>> {
        let v = self.api("/api/v1/targets")?;
        Ok(v["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// `/api/v1/rules`: every rule (group name, rule JSON).
    pub fn rules(&self) -> io::Result<Vec<(String, Value)>> {
        let v = self.api("/api/v1/rules")?;
        let mut out = Vec::new();
        for g in v["data"]["groups"].as_array().into_iter().flatten() {
            let name = g["name"].as_str().unwrap_or_default().to_string();
            for r in g["rules"].as_array().into_iter().flatten() {
                out.push((name.clone(), r.clone()));
            }
        }
        Ok(out)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `promtool` with the arguments; `Ok(output)` if it exited 0, else `Err(output)`.
pub fn promtool(args: &[&str], cwd: &Path) -> io::Result<Result<String, String>> {
    let out = Command::new(promtool_bin())
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()?;
    let text = format!(
        "promtool {}: {}\n{}{}",
        args.join(" "),
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

/// One HTTP/1.1 request read from a connection: method, path, body.
pub(crate) struct Incoming {
    pub method: String,
    pub path: String,
    pub body: Vec<u8>,
}

/// Reads one request (head and `content-length` body) from `s`, bounded by [`http::TIMEOUT`].
pub(crate) fn read_request(s: &mut TcpStream) -> io::Result<Incoming> {
    s.set_read_timeout(Some(http::TIMEOUT))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "request incomplete",
            ));
        }
        raw.extend_from_slice(buf.get(..n).unwrap_or_default());
        let mut heads = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut heads);
        let httparse::Status::Complete(head_len) = req
            .parse(&raw)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        else {
            continue;
        };
        let len = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .unwrap_or(0);
        if raw.len() >= head_len + len {
            return Ok(Incoming {
                method: req.method.unwrap_or_default().to_string(),
                path: req.path.unwrap_or_default().to_string(),
                body: raw
                    .get(head_len..head_len + len)
                    .unwrap_or_default()
                    .to_vec(),
            });
        }
    }
}

/// Writes a complete response and closes.
pub(crate) fn respond(s: &mut TcpStream, status: u16, content_type: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    let _ = s.flush();
}

/// A loopback HTTP server on a free port, one thread, one connection at a time, stopped on
/// drop. `handler(method, path, body)` returns (status, content type, body).
pub(crate) struct TinyServer {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TinyServer {
    pub(crate) fn start(
        mut handler: impl FnMut(&Incoming) -> (u16, String, Vec<u8>) + Send + 'static,
    ) -> io::Result<TinyServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut s) = conn else { continue };
                match read_request(&mut s) {
                    Ok(req) => {
                        let (status, ct, body) = handler(&req);
                        respond(&mut s, status, &ct, &body);
                    }
                    Err(_) => respond(&mut s, 400, "text/plain", b"bad request"),
                }
            }
        });
        Ok(TinyServer {
            port,
            stop,
            thread: Some(thread),
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TinyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves `/stats/prometheus` (any other path: 404) with the text `body(n)` returns, `n` the
/// number of scrapes so far (0 for the first), so counters can grow between scrapes.
pub struct Exporter {
    server: TinyServer,
    scrapes: Arc<AtomicU64>,
}

impl Exporter {
    pub fn start(mut body: impl FnMut(u64) -> String + Send + 'static) -> io::Result<Exporter> {
        let scrapes = Arc::new(AtomicU64::new(0));
        let count = scrapes.clone();
        let server = TinyServer::start(move |req| {
            if req.path.split('?').next() != Some("/stats/prometheus") {
                return (404, "text/plain".into(), b"not found".to_vec());
            }
            let n = count.fetch_add(1, Ordering::SeqCst);
            (
                200,
                "text/plain; version=0.0.4".into(),
                body(n).into_bytes(),
            )
        })?;
        Ok(Exporter { server, scrapes })
    }

    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// How many times `/stats/prometheus` was served.
    pub fn scrapes(&self) -> u64 {
        self.scrapes.load(Ordering::SeqCst)
    }
}

/// Waits until `127.0.0.1:port/-/ready` answers 200 (Prometheus and Alertmanager both serve
/// it), failing early if `child` exits.
pub(crate) fn wait_http_ready(name: &str, child: &mut Child, port: u16) -> Result<(), String> {
    let r = wait::try_eventually(&format!("{name} /-/ready"), READY_TIMEOUT, || {
        if let Ok(Some(st)) = child.try_wait() {
            return Ok(Err(format!("{name} exited {st}")));
        }
        match http::get(port, "/-/ready") {
            Ok(r) if r.status == 200 => Ok(Ok(())),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e.to_string()),
        }
    });
    match r {
        Ok(inner) => inner,
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencode_keeps_unreserved_only() {
        assert_eq!(
            urlencode("a b{c=\"d\"}[1m]"),
            "a%20b%7Bc%3D%22d%22%7D%5B1m%5D"
        );
        assert_eq!(urlencode("x_y.z-~"), "x_y.z-~");
    }

    #[test]
    fn exporter_serves_growing_bodies() {
        let e = Exporter::start(|n| format!("c {n}\n"));
        let Ok(e) = e else {
            return assert!(e.is_ok(), "exporter");
        };
        let a = http::get(e.port(), "/stats/prometheus").map(|r| r.body);
        let b = http::get(e.port(), "/stats/prometheus").map(|r| r.body);
        assert_eq!(a.ok().as_deref(), Some("c 0\n"));
        assert_eq!(b.ok().as_deref(), Some("c 1\n"));
        assert_eq!(http::get(e.port(), "/x").map(|r| r.status).ok(), Some(404));
        assert_eq!(e.scrapes(), 2);
    }
}
