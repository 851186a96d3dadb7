//! One Envoy's fleet sync as the filters run it ([11/11]), outside Envoy: `sg_core::fleet`'s
//! pure parts (deltas, the fleet limit, health) driven by this process, talking to a real
//! webdis with the same bodies and paths the filter's `dispatch_http_call` sends. Used by
//! `integration/tests/fleet.rs` to prove the wire format and the Lua script against real
//! Redis, before (and beside) the three-Envoy tests.

use crate::http;
use sg_core::fleet::{self, Change, Deltas, FleetConfig, FleetLimit, Health, SyncError};
use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A clock in ms: the real one, or a virtual one a simulation moves.
#[derive(Clone)]
pub enum Clock {
    Real(Instant),
    Virtual(Rc<Cell<u64>>),
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::Real(t) => t.elapsed().as_millis() as u64,
            Clock::Virtual(c) => c.get(),
        }
    }
}

/// The one fleet-scoped limit rule and hot-key rule of a [`SimEnvoy`].
pub const LIMIT_RULE: &str = "per_blog";
pub const HOT_RULE: &str = "post_view";

/// How a sync reaches the engine: real webdis over HTTP, or [`MemEngine`] in a simulation.
pub trait Transport {
    /// One call: (status, body), or `Timeout` when no answer came in time.
    fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u32, Vec<u8>), SyncError>;
}

/// webdis on 127.0.0.1:port, each call bounded by `timeout`.
pub struct WebdisHttp {
    pub port: u16,
    pub timeout: Duration,
}

impl Transport for WebdisHttp {
    fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u32, Vec<u8>), SyncError> {
        // No answer in time and no connection are one outcome for the sync: no reply.
        http::request_within(self.port, method, path, &[], body, self.timeout)
            .map(|r| (u32::from(r.status), r.body.into_bytes()))
            .map_err(|_| SyncError::Timeout)
    }
}

pub struct SimEnvoy {
    pub id: String,
    pub cfg: FleetConfig,
    pub health: Health,
    pub deltas: Deltas,
    pub limit: FleetLimit,
    /// The hot-key rule's window and top-K.
    pub hot_window_ms: u64,
    pub hot_top: u32,
    /// Fleet-wide rates (r/s) of the last good sync, the highest first.
    pub hot_rates: Vec<(String, f64)>,
    pub webdis: u16,
    transport: Box<dyn Transport>,
    sha: Option<String>,
    clock: Clock,
    /// Syncs that failed, by kind of error (the last one kept).
    pub failures: u64,
    pub last_error: Option<SyncError>,
}

impl SimEnvoy {
    /// An Envoy syncing with the real webdis on `webdis`, on the real clock.
    pub fn new(id: &str, webdis: u16, cfg: FleetConfig, limit: u64, window_ms: u64) -> SimEnvoy {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let t = WebdisHttp {
            port: webdis,
            timeout,
        };
        let mut e = SimEnvoy::with(
            id,
            Box::new(t),
            Clock::Real(Instant::now()),
            cfg,
            limit,
            window_ms,
        );
        e.webdis = webdis;
        e
    }

    /// An Envoy on any transport and clock (the simulation: [`MemEngine`], virtual time).
    pub fn with(
        id: &str,
        transport: Box<dyn Transport>,
        clock: Clock,
        cfg: FleetConfig,
        limit: u64,
        window_ms: u64,
    ) -> SimEnvoy {
        SimEnvoy {
            id: id.to_string(),
            health: Health::new(0),
            deltas: Deltas::new(cfg.max_keys),
            limit: FleetLimit::new(limit, window_ms, cfg.expected_envoys, cfg.max_keys),
            hot_window_ms: 1000,
            hot_top: 10,
            hot_rates: Vec::new(),
            cfg,
            webdis: 0,
            transport,
            sha: None,
            clock,
            failures: 0,
            last_error: None,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// One request of the limit rule: decided locally, counted for the next sync.
    pub fn request(&mut self, key: &str) -> bool {
        let now = self.now_ms();
        let fallback = self.cfg.fallback_limit(self.limit.limit);
        let ok = self.limit.decide(now, key, self.health.synced(), fallback);
        self.deltas.limit(LIMIT_RULE, self.limit.window_ms, key, ok);
        ok
    }

    /// `n` requests of the hot-key rule for `key`.
    pub fn seen(&mut self, key: &str, n: u64) {
        let (w, top) = (self.hot_window_ms, self.hot_top);
        self.deltas.hot(HOT_RULE, w, top, key, n);
    }

    fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Result<(u32, Vec<u8>), SyncError> {
        self.transport.call(method, path, body)
    }

    fn load(&mut self) -> Result<String, SyncError> {
        let (status, body) = self.call("POST", "/", &fleet::load_body())?;
        let sha = fleet::decode_load(status, &body)?;
        self.sha = Some(sha.clone());
        Ok(sha)
    }

    fn exchange(&mut self, body: &[u8]) -> Result<fleet::Reply, SyncError> {
        let sha = match self.sha.clone() {
            Some(s) => s,
            None => self.load()?,
        };
        let (status, answer) = self.call("PUT", &fleet::sync_path(&sha), body)?;
        match fleet::decode(status, &answer) {
            Err(SyncError::NoScript) => {
                // Redis restarted empty: load the script again and call once more.
                let sha = self.load()?;
                let (status, answer) = self.call("PUT", &fleet::sync_path(&sha), body)?;
                fleet::decode(status, &answer)
            }
            other => other,
        }
    }

    /// One sync: this Envoy's deltas out, the fleet's totals in. A failed sync keeps its
    /// deltas for the next one and falls back.
    pub fn sync(&mut self) -> Change {
        let stale = self.health.check(self.now_ms(), &self.cfg);
        self.deltas.touch_limit(LIMIT_RULE, self.limit.window_ms);
        self.deltas
            .touch_hot(HOT_RULE, self.hot_window_ms, self.hot_top);
        let sent = self.deltas.take();
        self.limit.sent();
        let body = sent.body(&self.id);
        match self.exchange(&body) {
            Ok(reply) => {
                let now = self.now_ms();
                for l in reply.l.iter().filter(|l| l.r == LIMIT_RULE) {
                    self.limit.apply(now, l, self.cfg.expected_envoys);
                }
                if let Some(h) = reply.h.iter().find(|h| h.r == HOT_RULE) {
                    self.hot_rates = h.rates(self.hot_window_ms);
                }
                self.health.ok(now)
            }
            Err(e) => {
                self.deltas.merge(sent);
                self.failures += 1;
                self.last_error = Some(e);
                match self.health.failed(self.now_ms()) {
                    Change::None => stale,
                    c => c,
                }
            }
        }
    }
}
