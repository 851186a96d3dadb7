//! Real nginx (Debian's) as a reference peer: `limit_req` in front of an upstream, on an
//! ephemeral loopback port, killed on drop.

use crate::{http, wait};
use std::io;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

pub fn nginx_bin() -> PathBuf {
    std::env::var_os("NGINX_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
}

pub struct Nginx {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    _tmp: TempDir,
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Nginx {
    /// Starts nginx with `limit_req_zone $arg_<key_arg> rate=<rate>` and
    /// `limit_req <limit_req_args>` (e.g. `burst=5 nodelay`) proxying to `upstream_port`.
    pub fn limit_req(
        upstream_port: u16,
        key_arg: &str,
        rate: &str,
        limit_req_args: &str,
        status: u16,
    ) -> io::Result<Nginx> {
        Self::limit_req_front(
            upstream_port,
            &format!("$arg_{key_arg}"),
            rate,
            limit_req_args,
            status,
            None,
        )
    }

    /// Like [`Nginx::limit_req`] with any zone key expression (e.g. `$server_name`: one
    /// bucket for the whole site, as in front of an app) and, when `read_timeout_ms` is set,
    /// `proxy_read_timeout` (nginx's default is 60 s).
    pub fn limit_req_front(
        upstream_port: u16,
        key: &str,
        rate: &str,
        limit_req_args: &str,
        status: u16,
        read_timeout_ms: Option<u64>,
    ) -> io::Result<Nginx> {
        let read_timeout = read_timeout_ms
            .map(|ms| format!("proxy_read_timeout {ms}ms;"))
            .unwrap_or_default();
        let tmp = tempfile::Builder::new().prefix("sg-nginx-").tempdir()?;
        let dir = tmp.path().to_path_buf();
        let port = free_port()?;
        let d = dir.display();
        let conf = format!(
            r#"worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  limit_req_zone {key} zone=sg:10m rate={rate};
  upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      limit_req zone=sg {limit_req_args};
      limit_req_status {status};
      proxy_http_version 1.1;
      {read_timeout}
      proxy_set_header Connection "";
      proxy_pass http://app;
    }}
    location = /__ready {{ return 200; }}
  }}
}}
"#
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf)?;
        let child = Command::new(nginx_bin())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut n = Nginx {
            child,
            port,
            dir,
            _tmp: tmp,
        };
        let ready = wait::try_eventually("nginx /__ready", Duration::from_secs(10), || {
            if let Ok(Some(st)) = n.child.try_wait() {
                return Ok(Err(format!("nginx exited {st}")));
            }
            match http::get(port, "/__ready") {
                Ok(r) if r.status == 200 => Ok(Ok(())),
                Ok(r) => Err(format!("status {}", r.status)),
                Err(e) => Err(e.to_string()),
            }
        });
        match ready {
            Ok(Ok(())) => Ok(n),
            Ok(Err(e)) => Err(io::Error::other(format!("{e}: {}", n.error_log()))),
            Err(e) => Err(io::Error::other(format!("{e}: {}", n.error_log()))),
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
