//! Real Redis and webdis for the fleet tests ([11/11]): Debian's `redis-server` (7.0) and
//! `webdis` (0.1.9) on 127.0.0.1, each on its own free port, with logs and config in a
//! temporary directory. Killed on drop. Redis can be killed and restarted on its port, and
//! webdis stopped (SIGSTOP: it accepts connections and answers nothing, a hanging engine) and
//! continued.

use crate::http;
use crate::wait;
use std::io;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

fn err(m: impl Into<String>) -> io::Error {
    io::Error::other(m.into())
}

fn free_port() -> io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

const START: Duration = Duration::from_secs(30);

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: TempDir,
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Redis {
    /// `redis-server` without persistence on a free loopback port; waits (bounded) until it
    /// accepts connections.
    pub fn start() -> io::Result<Redis> {
        let dir = tempfile::Builder::new().prefix("sg-redis-").tempdir()?;
        let mut r = Redis {
            child: None,
            port: free_port()?,
            dir,
        };
        r.restart()?;
        Ok(r)
    }

    /// Starts it again on the same port (empty: no persistence, so the script is gone too).
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(format!("redis-server: {e} (make setup installs it)")))?;
        self.child = Some(child);
        let port = self.port;
        wait::try_eventually("redis-server accepting", START, || {
            std::net::TcpStream::connect(("127.0.0.1", port))
        })
        .map(|_| ())
        .map_err(|e| err(format!("{e:?}: {}", self.log())))
    }

    /// SIGKILL: gone mid-load, as a crashed Redis is.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

pub struct Webdis {
    child: Child,
    pub port: u16,
    dir: TempDir,
}

impl Drop for Webdis {
    fn drop(&mut self) {
        self.resume();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Webdis {
    /// webdis in front of the Redis on `redis_port`, on a free loopback port, in the
    /// foreground; waits (bounded) until `GET /PING` answers.
    pub fn start(redis_port: u16) -> io::Result<Webdis> {
        let dir = tempfile::Builder::new().prefix("sg-webdis-").tempdir()?;
        let port = free_port()?;
        let cfg = serde_json::json!({
            "redis_host": "127.0.0.1", "redis_port": redis_port,
            "http_host": "127.0.0.1", "http_port": port, "threads": 1,
            "daemonize": false, "database": 0, "verbosity": 3,
            "logfile": dir.path().join("webdis.log"),
            "acl": [{"disabled": ["DEBUG", "FLUSHALL", "FLUSHDB", "CONFIG", "SHUTDOWN"]}]
        });
        let path = dir.path().join("webdis.json");
        std::fs::write(&path, cfg.to_string())?;
        let child = Command::new("webdis")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| err(format!("webdis: {e} (make setup installs it)")))?;
        let w = Webdis { child, port, dir };
        wait::try_eventually("webdis answering", START, || {
            match http::get(port, "/PING") {
                Ok(r) if r.status == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .map_err(|e| err(format!("{e:?}: {}", w.log())))?;
        Ok(w)
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status();
    }

    /// SIGSTOP: connections are accepted by the kernel, nothing is answered.
    pub fn hang(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("webdis.log")).unwrap_or_default()
    }
}
