//! The host, as filter logic sees it: every read (clock, headers, properties, bodies, shared
//! data, HTTP-call answers) and every effect (set or remove a header, local reply, resume a
//! paused request, dispatch an HTTP call, metrics, tick period) behind one trait.
//!
//! `core::wasm::WasmHost` implements it with proxy-wasm host calls that cannot trap;
//! `core::testing::MemHost` (feature `test-support`) implements it in memory and records
//! every effect, so a filter's request, response and tick logic runs in native unit tests.
//! Every effect returns whether the host took it; logic decides what a refusal means.

use crate::key::RequestView;
use crate::shared::SharedStore;
use std::cell::OnceCell;

/// Which header map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Map {
    Request,
    Response,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
}

/// An outbound HTTP call (`dispatch_http_call`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call<'a> {
    pub cluster: &'a str,
    pub headers: Vec<(&'a str, &'a str)>,
    pub body: Option<&'a [u8]>,
    pub timeout_ms: u64,
}

pub trait Host: SharedStore {
    /// Wall-clock ms since the Unix epoch (0 if the host fails: time-based logic is then
    /// conservative, never a crash).
    fn now_ms(&self) -> u64;

    /// A header's value as bytes; None when absent or on failure.
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>>;
    /// Every header of a map, names lower-cased, values decoded lossily.
    fn headers(&self, map: Map) -> Vec<(String, String)>;
    fn set_header(&self, map: Map, name: &str, value: &str) -> bool;
    fn remove_header(&self, map: Map, name: &str) -> bool;
    /// A property (`source.address`, `route_name`) as a lossy string.
    fn property(&self, path: &[&str]) -> Option<String>;
    /// A property's raw bytes (numbers such as `response.code` are 8 bytes, little-endian).
    fn property_bytes(&self, path: &[&str]) -> Option<Vec<u8>>;

    /// Bytes `start..start+max` of the response body buffered so far.
    fn response_body(&self, start: usize, max: usize) -> Option<Vec<u8>>;
    /// Replaces `start..start+size` of the response body.
    fn set_response_body(&self, start: usize, size: usize, value: &[u8]) -> bool;

    /// Answers the current request with a local reply.
    fn send_reply(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool;
    /// Answers the paused request of context `id` (from a root context's tick).
    fn reply_for(&self, id: u32, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool;
    /// Resumes the paused request of context `id`; false when it is gone.
    fn resume(&self, id: u32) -> bool;
    /// Makes context `id` the one later header, property and reply calls act on (a paused
    /// stream, from a root context's tick); false when it is gone.
    fn enter(&self, id: u32) -> bool;

    /// Dispatches an HTTP call; its token, or None when refused.
    fn dispatch(&self, call: &Call) -> Option<u32>;
    /// Headers of the HTTP-call answer being delivered (lower-case names).
    fn call_response_headers(&self) -> Vec<(String, String)>;
    /// Body of the HTTP-call answer being delivered.
    fn call_response_body(&self, size: usize) -> Vec<u8>;

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32>;
    fn increment_metric(&self, id: u32, n: i64);
    fn record_metric(&self, id: u32, v: u64);
    fn set_tick_period_ms(&self, ms: u64) -> bool;
    /// The plugin configuration bytes (empty when none was given).
    fn plugin_config(&self) -> Vec<u8>;
}

/// Decodes bytes as UTF-8, lossily (a non-UTF-8 header never traps).
pub fn lossy(b: Vec<u8>) -> String {
    match String::from_utf8(b) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// The request as the host shows it, read lazily: only what a rule asks for is fetched (each
/// value is a host call), and each at most once.
pub struct HostRequest<'h, H: Host + ?Sized> {
    host: &'h H,
    path: OnceCell<String>,
    authority: OnceCell<String>,
    method: OnceCell<String>,
    source: OnceCell<String>,
    normalized: OnceCell<Option<String>>,
    now: OnceCell<u64>,
}

impl<'h, H: Host + ?Sized> HostRequest<'h, H> {
    pub fn new(host: &'h H) -> Self {
        HostRequest {
            host,
            path: OnceCell::new(),
            authority: OnceCell::new(),
            method: OnceCell::new(),
            source: OnceCell::new(),
            normalized: OnceCell::new(),
            now: OnceCell::new(),
        }
    }

    /// The time of this request: the clock is read once, and only if something needs it.
    pub fn now(&self) -> u64 {
        *self.now.get_or_init(|| self.host.now_ms())
    }

    fn get(&self, name: &str) -> String {
        self.host
            .header(Map::Request, name)
            .map(lossy)
            .unwrap_or_default()
    }

    /// The route's name (`route_name` property) when `needed`, else None without a host call.
    pub fn route_if(&self, needed: bool) -> Option<String> {
        needed
            .then(|| self.host.property(&["route_name"]))
            .flatten()
    }
}

impl<H: Host + ?Sized> RequestView for HostRequest<'_, H> {
    fn method(&self) -> &str {
        self.method.get_or_init(|| self.get(":method"))
    }
    fn path(&self) -> &str {
        self.path.get_or_init(|| self.get(":path"))
    }
    fn host(&self) -> &str {
        self.authority.get_or_init(|| self.get(":authority"))
    }
    fn source_address(&self) -> &str {
        self.source.get_or_init(|| {
            self.host
                .property(&["source", "address"])
                .unwrap_or_default()
        })
    }
    fn header(&self, name: &str) -> Option<String> {
        self.host.header(Map::Request, name).map(lossy)
    }
    fn normalized_path(&self) -> std::borrow::Cow<'_, str> {
        // Computed once per request; None when the raw path is already normal (borrowed).
        let owned =
            self.normalized
                .get_or_init(|| match crate::normalize::normalized(self.path()) {
                    std::borrow::Cow::Borrowed(_) => None,
                    std::borrow::Cow::Owned(s) => Some(s),
                });
        match owned {
            Some(s) => std::borrow::Cow::Borrowed(s.as_str()),
            None => crate::normalize::normalized(self.path()),
        }
    }
}

/// A numeric property (`response.code`, `response.flags`, `upstream.port`): Envoy serialises
/// integers as 8 bytes little-endian. None when absent or of another size.
pub fn property_u64<H: Host + ?Sized>(host: &H, path: &[&str]) -> Option<u64> {
    let b: [u8; 8] = host.property_bytes(path)?.try_into().ok()?;
    Some(u64::from_le_bytes(b))
}

/// The response status (0 when absent or unreadable, e.g. a reset).
pub fn response_status<H: Host + ?Sized>(host: &H) -> u16 {
    host.header(Map::Response, ":status")
        .and_then(|v| std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

/// Reads and compiles the plugin configuration as `C`; on refusal logs the one line
/// `<filter>: <field path>: <reason>` and returns None (the caller returns false from
/// `on_configure`, and Envoy refuses the config).
pub fn configure<C: crate::config::Compile, H: Host + ?Sized>(
    host: &H,
    filter: &str,
) -> Option<C::Plan> {
    match C::parse(&host.plugin_config()) {
        Ok(p) => Some(p),
        Err(e) => {
            log::error!("{filter}: {e}");
            None
        }
    }
}

/// Sets the root context's tick period, logging (not failing) when the host refuses.
pub fn set_tick<H: Host + ?Sized>(host: &H, filter: &str, ms: u64, consequence: &str) {
    if !host.set_tick_period_ms(ms) {
        log::warn!("{filter}: could not set the tick period; {consequence}");
    }
}

/// What a request or response callback tells the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// Stop here: a local reply was sent, or the stream waits to be resumed.
    Pause,
}

impl Flow {
    /// A local reply that the host took ends the stream here; one it refused lets the
    /// request go on (fail open).
    pub fn replied(sent: bool) -> Flow {
        if sent {
            Flow::Pause
        } else {
            Flow::Continue
        }
    }
}

/// A filter as the host drives it: one value per configured plugin on a worker, shared by its
/// root context and its streams. `core::wasm::install` turns any `Plugin` into proxy-wasm
/// contexts, so a filter's adapter is one line; native tests drive the same methods on
/// `testing::MemHost`. Every method is generic over the host and holds the filter's logic
/// (or calls it); none may panic.
pub trait Plugin: Sized + 'static {
    /// What one stream remembers between its callbacks.
    type Stream: 'static;
    /// What only the root context holds: the tick's lease, the leader's state.
    type Periodic: 'static;

    /// `on_configure`: reads and compiles the plugin config, defines metrics, sets the tick;
    /// None (one log line naming the field) refuses the config.
    fn configure<H: Host + ?Sized>(host: &H) -> Option<(Self, Self::Periodic)>;
    /// A new stream of context `id`.
    fn stream(id: u32) -> Self::Stream;
    /// Sends pending metric increments (also when a config is replaced).
    fn flush<H: Host + ?Sized>(&self, host: &H);
    fn on_tick<H: Host + ?Sized>(&self, host: &H, p: &mut Self::Periodic);
    /// An HTTP-call answer delivered to the root context.
    fn on_call_response<H: Host + ?Sized>(
        &self,
        _host: &H,
        _p: &mut Self::Periodic,
        _token: u32,
        _body_size: usize,
    ) {
    }
    fn on_request<H: Host + ?Sized>(&self, host: &H, s: &mut Self::Stream) -> Flow;
    fn on_response_headers<H: Host + ?Sized>(
        &self,
        _host: &H,
        _s: &mut Self::Stream,
        _eos: bool,
    ) -> Flow {
        Flow::Continue
    }
    fn on_response_body<H: Host + ?Sized>(
        &self,
        _host: &H,
        _s: &mut Self::Stream,
        _body_size: usize,
        _eos: bool,
    ) -> Flow {
        Flow::Continue
    }
    /// The stream is over (`on_log`: once per stream, after the response).
    fn on_log<H: Host + ?Sized>(&self, _host: &H, _s: &mut Self::Stream) {}
    /// The stream's context is destroyed (also when it never reached `on_log`).
    fn on_done(&self, _s: &mut Self::Stream) {}
}
