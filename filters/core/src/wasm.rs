//! `WasmHost`: the `Host` trait over proxy-wasm host calls, and `install`, the one proxy-wasm
//! adapter every filter uses (wasm32 only).
//!
//! The SDK's (0.2.5) host-call wrappers `panic!` on any status they do not expect, and its
//! trait helpers `unwrap` (a non-UTF-8 header value traps the VM). A trap kills the filter
//! for every later request on that worker, so the calls made on request paths go through
//! `raw` below, which returns every status as a value.

use crate::host::{lossy, Call, Flow, Host, Map, MetricKind, Plugin};
use crate::shared::{SharedStore, StoreError, Versioned};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::rc::Rc;
use std::time::Duration;

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

const REQUEST_HEADERS: u32 = 0;
const RESPONSE_HEADERS: u32 = 2;
/// Buffer type of the response body (`proxy_get_buffer_bytes`).
const RESPONSE_BODY: u32 = 1;

fn map_id(map: Map) -> u32 {
    match map {
        Map::Request => REQUEST_HEADERS,
        Map::Response => RESPONSE_HEADERS,
    }
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

/// The proxy-wasm host. Stateless: every call goes to Envoy.
#[derive(Debug, Clone, Copy, Default)]
pub struct WasmHost;

impl SharedStore for WasmHost {
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

impl Host for WasmHost {
    fn now_ms(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: valid pointers to locals; the returned buffer is owned by us.
        let status = unsafe {
            raw::proxy_get_header_map_value(
                map_id(map),
                name.as_ptr(),
                name.len(),
                &mut data,
                &mut size,
            )
        };
        // SAFETY: the host call succeeded and returned this buffer.
        (status == raw::OK).then(|| unsafe { raw::take(data, size) })
    }

    fn headers(&self, map: Map) -> Vec<(String, String)> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: valid pointers to locals; the returned buffer is owned by us.
        let status = unsafe { raw::proxy_get_header_map_pairs(map_id(map), &mut data, &mut size) };
        if status != raw::OK {
            return Vec::new();
        }
        // SAFETY: the host call succeeded and returned this buffer.
        let bytes = unsafe { raw::take(data, size) };
        deserialize_map(&bytes).unwrap_or_default()
    }

    fn set_header(&self, map: Map, name: &str, value: &str) -> bool {
        // SAFETY: pointers and lengths of live slices.
        unsafe {
            raw::proxy_replace_header_map_value(
                map_id(map),
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            ) == raw::OK
        }
    }

    fn remove_header(&self, map: Map, name: &str) -> bool {
        // SAFETY: pointer and length of a live slice.
        unsafe {
            raw::proxy_remove_header_map_value(map_id(map), name.as_ptr(), name.len()) == raw::OK
        }
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        hostcalls::get_property(path.to_vec())
            .ok()
            .flatten()
            .map(lossy)
    }

    fn property_bytes(&self, path: &[&str]) -> Option<Vec<u8>> {
        hostcalls::get_property(path.to_vec()).ok().flatten()
    }

    fn response_body(&self, start: usize, max: usize) -> Option<Vec<u8>> {
        let mut data: *mut u8 = std::ptr::null_mut();
        let mut size: usize = 0;
        // SAFETY: valid pointers to locals; the returned buffer is owned by us.
        let status =
            unsafe { raw::proxy_get_buffer_bytes(RESPONSE_BODY, start, max, &mut data, &mut size) };
        match status {
            // SAFETY: the host call succeeded and returned this buffer.
            raw::OK => Some(unsafe { raw::take(data, size) }),
            raw::NOT_FOUND => Some(Vec::new()),
            _ => None,
        }
    }

    fn set_response_body(&self, start: usize, size: usize, value: &[u8]) -> bool {
        // SAFETY: pointer and length of a live slice.
        unsafe {
            raw::proxy_set_buffer_bytes(RESPONSE_BODY, start, size, value.as_ptr(), value.len())
                == raw::OK
        }
    }

    fn send_reply(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
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

    fn reply_for(&self, id: u32, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
        // SAFETY: plain integer argument.
        let ok = unsafe { raw::proxy_set_effective_context(id) == raw::OK };
        ok && self.send_reply(status, headers, body)
    }

    fn resume(&self, id: u32) -> bool {
        // SAFETY: plain integer arguments.
        unsafe {
            raw::proxy_set_effective_context(id) == raw::OK
                && raw::proxy_continue_stream(0) == raw::OK
        }
    }

    fn enter(&self, id: u32) -> bool {
        // SAFETY: plain integer argument.
        unsafe { raw::proxy_set_effective_context(id) == raw::OK }
    }

    fn dispatch(&self, call: &Call) -> Option<u32> {
        hostcalls::dispatch_http_call(
            call.cluster,
            call.headers.clone(),
            call.body,
            vec![],
            Duration::from_millis(call.timeout_ms),
        )
        .ok()
    }

    fn call_response_headers(&self) -> Vec<(String, String)> {
        hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), lossy(v)))
            .collect()
    }

    fn call_response_body(&self, size: usize) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let t = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
        };
        hostcalls::define_metric(t, name).ok()
    }

    fn increment_metric(&self, id: u32, n: i64) {
        let _ = hostcalls::increment_metric(id, n);
    }

    fn record_metric(&self, id: u32, v: u64) {
        let _ = hostcalls::record_metric(id, v);
    }

    fn set_tick_period_ms(&self, ms: u64) -> bool {
        hostcalls::set_tick_period(Duration::from_millis(ms)).is_ok()
    }

    fn plugin_config(&self) -> Vec<u8> {
        hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX)
            .ok()
            .flatten()
            .unwrap_or_default()
    }
}

/// Installs `P` as this module's root context (from `proxy_wasm::main!`): every proxy-wasm
/// callback is forwarded to `P` with `WasmHost`. A refused config keeps the previous plugin.
pub fn install<P: Plugin>(level: LogLevel) {
    proxy_wasm::set_log_level(level);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root::<P> { filter: None })
    });
}

fn action(f: Flow) -> Action {
    match f {
        Flow::Continue => Action::Continue,
        Flow::Pause => Action::Pause,
    }
}

struct Root<P: Plugin> {
    filter: Option<(Rc<P>, P::Periodic)>,
}

impl<P: Plugin> Context for Root<P> {
    fn on_http_call_response(&mut self, token: u32, _h: usize, body_size: usize, _t: usize) {
        if let Some((f, p)) = self.filter.as_mut() {
            f.on_call_response(&WasmHost, p, token, body_size);
        }
    }
}

impl<P: Plugin> RootContext for Root<P> {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some((f, p)) = P::configure(&WasmHost) else {
            return false;
        };
        if let Some((old, _)) = &self.filter {
            old.flush(&WasmHost);
        }
        self.filter = Some((Rc::new(f), p));
        true
    }

    fn on_tick(&mut self) {
        if let Some((f, p)) = self.filter.as_mut() {
            f.on_tick(&WasmHost, p);
        }
    }

    fn create_http_context(&self, id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::<P> {
            filter: self.filter.as_ref().map(|(f, _)| f.clone()),
            s: P::stream(id),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http<P: Plugin> {
    filter: Option<Rc<P>>,
    s: P::Stream,
}

impl<P: Plugin> Context for Http<P> {}

impl<P: Plugin> HttpContext for Http<P> {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        match &self.filter {
            Some(f) => action(f.on_request(&WasmHost, &mut self.s)),
            None => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _n: usize, eos: bool) -> Action {
        match &self.filter {
            Some(f) => action(f.on_response_headers(&WasmHost, &mut self.s, eos)),
            None => Action::Continue,
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, eos: bool) -> Action {
        match &self.filter {
            Some(f) => action(f.on_response_body(&WasmHost, &mut self.s, body_size, eos)),
            None => Action::Continue,
        }
    }

    fn on_log(&mut self) {
        if let Some(f) = &self.filter {
            f.on_log(&WasmHost, &mut self.s);
        }
    }
}

impl<P: Plugin> Drop for Http<P> {
    fn drop(&mut self) {
        if let Some(f) = &self.filter {
            f.on_done(&mut self.s);
        }
    }
}
