//! proxy-wasm host adapters for the core traits (wasm32 only): shared data, headers,
//! local replies, counters, time.
//!
//! The SDK's (0.2.5) host-call wrappers `panic!` on any status they do not expect, and its
//! trait helpers `unwrap` (a non-UTF-8 header value traps the VM). A trap kills the filter
//! for every later request on that worker, so the calls made on request paths go through
//! `raw` below, which returns every status as a value.

use crate::shared::{SharedStore, StoreError, Versioned};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use std::cell::OnceCell;

/// Direct ABI imports (proxy-wasm ABI 0.2.1) with statuses as plain integers.
mod raw {
    pub const OK: u32 = 0;
    pub const NOT_FOUND: u32 = 1;
    pub const CAS_MISMATCH: u32 = 8;

    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn proxy_get_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *mut *mut u8,
            value_size: *mut usize,
            cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *mut *mut u8,
            value_size: *mut usize,
        ) -> u32;
        pub fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
        ) -> u32;
        pub fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer_type: u32,
            start: usize,
            max_size: usize,
            return_buffer_data: *mut *mut u8,
            return_buffer_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            buffer_type: u32,
            start: usize,
            size: usize,
            buffer_data: *const u8,
            buffer_size: usize,
        ) -> u32;
        pub fn proxy_continue_stream(stream_type: u32) -> u32;
        pub fn proxy_set_effective_context(context_id: u32) -> u32;
        #[allow(clippy::too_many_arguments)]
        pub fn proxy_send_local_response(
            status_code: u32,
            details_data: *const u8,
            details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
    }

    /// Takes ownership of a host-returned buffer (allocated through the SDK's exported
    /// `proxy_on_memory_allocate`, i.e. this module's allocator).
    ///
    /// # Safety
    /// `ptr`/`size` must come from a successful host call that returned a buffer.
    pub unsafe fn take(ptr: *mut u8, size: usize) -> Vec<u8> {
        if ptr.is_null() {
            Vec::new()
        } else {
            Vec::from_raw_parts(ptr, size, size)
        }
    }
}

pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
/// Buffer type of the response body (`proxy_get_buffer_bytes`).
pub const RESPONSE_BODY: u32 = 1;

/// All headers of a map as (lower-case name, lossy value) pairs; empty on any failure or
/// malformed host data.
pub fn header_pairs(map: u32) -> Vec<(String, String)> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: valid pointers to locals; the returned buffer is owned by us.
    let status = unsafe { raw::proxy_get_header_map_pairs(map, &mut data, &mut size) };
    if status != raw::OK {
        return Vec::new();
    }
    // SAFETY: the host call succeeded and returned this buffer.
    let bytes = unsafe { raw::take(data, size) };
    deserialize_map(&bytes).unwrap_or_default()
}

/// proxy-wasm map serialisation (see `serialize_map`), checked at every step.
fn deserialize_map(b: &[u8]) -> Option<Vec<(String, String)>> {
    let u32_at = |i: usize| -> Option<usize> {
        let s = b.get(i..i.checked_add(4)?)?;
        Some(u32::from_le_bytes([
            s.first().copied()?,
            s.get(1).copied()?,
            s.get(2).copied()?,
            s.get(3).copied()?,
        ]) as usize)
    };
    let n = u32_at(0)?;
    if n > 10_000 {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    let mut pos = 4usize.checked_add(n.checked_mul(8)?)?;
    for i in 0..n {
        let kl = u32_at(4 + i * 8)?;
        let vl = u32_at(8 + i * 8)?;
        let k = b.get(pos..pos.checked_add(kl)?)?;
        pos = pos.checked_add(kl)?.checked_add(1)?;
        let v = b.get(pos..pos.checked_add(vl)?)?;
        pos = pos.checked_add(vl)?.checked_add(1)?;
        out.push((
            String::from_utf8_lossy(k).to_ascii_lowercase(),
            lossy(v.to_vec()),
        ));
    }
    Some(out)
}

/// Bytes `start..start+max` of a buffer (e.g. `RESPONSE_BODY`); None on failure.
pub fn get_buffer(kind: u32, start: usize, max: usize) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: valid pointers to locals; the returned buffer is owned by us.
    let status = unsafe { raw::proxy_get_buffer_bytes(kind, start, max, &mut data, &mut size) };
    match status {
        // SAFETY: the host call succeeded and returned this buffer.
        raw::OK => Some(unsafe { raw::take(data, size) }),
        raw::NOT_FOUND => Some(Vec::new()),
        _ => None,
    }
}

/// Replaces `start..start+size` of a buffer with `value`; false on failure.
pub fn set_buffer(kind: u32, start: usize, size: usize, value: &[u8]) -> bool {
    // SAFETY: pointer and length of a live slice.
    unsafe {
        raw::proxy_set_buffer_bytes(kind, start, size, value.as_ptr(), value.len()) == raw::OK
    }
}

/// Envoy's shared data, through the host calls.
pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        let mut cas: u32 = 0;
        // SAFETY: valid pointers to locals; the returned buffer is owned by us.
        let status = unsafe {
            raw::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas)
        };
        match status {
            raw::OK => Ok(Versioned {
                // SAFETY: the host call succeeded and returned this buffer.
                value: Some(unsafe { raw::take(data, size) }),
                cas,
            }),
            raw::NOT_FOUND => Ok(Versioned {
                value: None,
                cas: 0,
            }),
            _ => Err(StoreError::Host),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        // SAFETY: pointers and lengths of live slices.
        let status = unsafe {
            raw::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
        };
        match status {
            raw::OK => Ok(()),
            raw::CAS_MISMATCH => Err(StoreError::CasMismatch),
            _ => Err(StoreError::Host),
        }
    }
}

/// Reads a header (request or response map) as bytes; None when absent or on any failure.
pub fn get_header(map: u32, name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: valid pointers to locals; the returned buffer is owned by us.
    let status = unsafe {
        raw::proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut size)
    };
    // SAFETY: the host call succeeded and returned this buffer.
    (status == raw::OK).then(|| unsafe { raw::take(data, size) })
}

/// Sets (replaces) a header; false on failure.
pub fn set_header(map: u32, name: &str, value: &str) -> bool {
    // SAFETY: pointers and lengths of live slices.
    unsafe {
        raw::proxy_replace_header_map_value(
            map,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        ) == raw::OK
    }
}

/// Removes a header; false on failure.
pub fn remove_header(map: u32, name: &str) -> bool {
    // SAFETY: pointer and length of a live slice.
    unsafe { raw::proxy_remove_header_map_value(map, name.as_ptr(), name.len()) == raw::OK }
}

/// Resumes a paused request of context `id` (from a root context's tick); false when the
/// context is gone (client went away) or the host refused.
pub fn resume_request_of(id: u32) -> bool {
    // SAFETY: plain integer arguments.
    unsafe {
        raw::proxy_set_effective_context(id) == raw::OK && raw::proxy_continue_stream(0) == raw::OK
    }
}

/// Answers a paused request of context `id` with a local reply (from a root context's
/// tick); false when the context is gone or the host refused.
pub fn reply_for(id: u32, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
    // SAFETY: plain integer argument.
    let ok = unsafe { raw::proxy_set_effective_context(id) == raw::OK };
    ok && send_reply(status, headers, body)
}

/// proxy-wasm header map serialisation: count, (key len, value len)*, then key\0value\0*.
fn serialize_map(headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(headers.len() as u32).to_le_bytes());
    for (k, v) in headers {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Sends a local reply; false when the host refused (the caller then lets the request go on).
pub fn send_reply(status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
    let h = serialize_map(headers);
    // SAFETY: pointers and lengths of live buffers.
    unsafe {
        raw::proxy_send_local_response(
            u32::from(status),
            std::ptr::null(),
            0,
            body.as_ptr(),
            body.len(),
            h.as_ptr(),
            h.len(),
            -1,
        ) == raw::OK
    }
}

/// A counter defined at configure time. Increments are kept in the VM and sent to Envoy by
/// `flush` (from the root context's tick), so a request pays no metric host call; stats lag
/// by at most one flush period, and a VM torn down loses at most that much. A metric failure
/// never affects a request.
#[derive(Debug, Default)]
pub struct Counter {
    id: Option<u32>,
    pending: std::cell::Cell<i64>,
}

impl Counter {
    pub fn define(name: &str) -> Counter {
        Counter {
            id: hostcalls::define_metric(MetricType::Counter, name).ok(),
            pending: std::cell::Cell::new(0),
        }
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: i64) {
        self.pending.set(self.pending.get().saturating_add(n));
    }
    /// Sends the pending increments to Envoy.
    pub fn flush(&self) {
        let n = self.pending.replace(0);
        if let (Some(id), true) = (self.id, n != 0) {
            let _ = hostcalls::increment_metric(id, n);
        }
    }
}

/// A gauge defined at configure time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauge(Option<u32>);

impl Gauge {
    pub fn define(name: &str) -> Gauge {
        Gauge(hostcalls::define_metric(MetricType::Gauge, name).ok())
    }
    pub fn set(&self, v: u64) {
        if let Some(id) = self.0 {
            let _ = hostcalls::record_metric(id, v);
        }
    }
}

/// Host wall-clock time in milliseconds since the Unix epoch (0 if the host fails, which
/// only makes time-based logic conservative, never panics).
pub fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A request as the host shows it, read lazily: only what a rule asks for is fetched (each
/// value is a host call). Header values are read as bytes and decoded lossily: a non-UTF-8
/// header never traps.
#[derive(Default)]
pub struct HostRequest {
    path: OnceCell<String>,
    host: OnceCell<String>,
    method: OnceCell<String>,
    source: OnceCell<String>,
}

fn header_bytes(name: &str) -> Option<Vec<u8>> {
    get_header(REQUEST_HEADERS, name)
}

fn header_string(name: &str) -> String {
    header_bytes(name).map(lossy).unwrap_or_default()
}

fn lossy(b: Vec<u8>) -> String {
    match String::from_utf8(b) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// Reads a property as a lossy string (`source.address`, `route_name`, ...).
pub fn property_string(path: &[&str]) -> Option<String> {
    hostcalls::get_property(path.to_vec())
        .ok()
        .flatten()
        .map(lossy)
}

impl crate::key::RequestView for HostRequest {
    fn method(&self) -> &str {
        self.method.get_or_init(|| header_string(":method"))
    }
    fn path(&self) -> &str {
        self.path.get_or_init(|| header_string(":path"))
    }
    fn host(&self) -> &str {
        self.host.get_or_init(|| header_string(":authority"))
    }
    fn source_address(&self) -> &str {
        self.source
            .get_or_init(|| property_string(&["source", "address"]).unwrap_or_default())
    }
    fn header(&self, name: &str) -> Option<String> {
        header_bytes(name).map(lossy)
    }
}

/// The route's name (`route_name` property) when some rule matches on it, else None without
/// a host call.
pub fn route_name_if(needed: bool) -> Option<String> {
    if needed {
        property_string(&["route_name"])
    } else {
        None
    }
}

/// The plugin configuration bytes (empty when none was given).
pub fn plugin_config() -> Vec<u8> {
    hostcalls::get_buffer(
        proxy_wasm::types::BufferType::PluginConfiguration,
        0,
        usize::MAX,
    )
    .ok()
    .flatten()
    .unwrap_or_default()
}
