//! `MemHost`: the `Host` trait in memory, for native unit tests of filter logic (feature
//! `test-support`, or this crate's own tests). It holds a request and a response, a clock the
//! test sets, shared data with Envoy's CAS semantics (`MemStore`), and it records every effect
//! (replies, resumes, HTTP calls, metric values) for exact assertions.
//!
//! `laws`: the shared-data codec laws and the proptest config every crate's property tests
//! (`tests/proptests.rs`) use.

use crate::host::{Call, Host, Map, MetricKind};
use crate::shared::{MemStore, SharedStore, StoreError, Versioned};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

/// A local reply the logic sent: to the current request (`id: None`) or to context `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentReply {
    pub id: Option<u32>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl SentReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// An HTTP call the logic dispatched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCall {
    pub token: u32,
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

impl SentCall {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// A fleet sync's body (`crate::fleetsync`): the first entry of `part` (`"l"`, limit
    /// rules; `"h"`, hot-key rules) as JSON, its keys with their counts, and its `n`
    /// (requests seen). Null, nothing and 0 where the body does not have them.
    pub fn sync_entry(&self, part: &str) -> (serde_json::Value, Vec<(String, u64)>, u64) {
        let v: serde_json::Value = self
            .body
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .unwrap_or_default();
        let e = v
            .get(part)
            .and_then(|p| p.get(0))
            .cloned()
            .unwrap_or_default();
        let keys = e
            .get("k")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|kv| Some((kv.get(0)?.as_str()?.to_string(), kv.get(1)?.as_u64()?)))
            .collect();
        let n = e.get("n").and_then(serde_json::Value::as_u64).unwrap_or(0);
        (e, keys, n)
    }
}

/// Header names (lower-case) and raw values, in order.
type Headers = Vec<(String, Vec<u8>)>;
/// An HTTP-call answer: headers and body.
type CallAnswer = (Vec<(String, String)>, Vec<u8>);

#[derive(Default)]
pub struct MemHost {
    pub store: MemStore,
    now: Cell<u64>,
    maps: RefCell<HashMap<Map, Headers>>,
    properties: RefCell<HashMap<String, Vec<u8>>>,
    body: RefCell<Vec<u8>>,
    replies: RefCell<Vec<SentReply>>,
    resumed: RefCell<Vec<u32>>,
    entered: RefCell<Vec<u32>>,
    calls: RefCell<Vec<SentCall>>,
    next_token: Cell<u32>,
    call_answer: RefCell<CallAnswer>,
    metrics: RefCell<Vec<(String, MetricKind, i64)>>,
    tick_ms: Cell<u64>,
    config: RefCell<Vec<u8>>,
    /// Contexts that are gone: replies and resumes for them are refused.
    gone: RefCell<Vec<u32>>,
    refuse_replies: Cell<bool>,
    refuse_calls: Cell<bool>,
}

impl MemHost {
    pub fn new() -> Self {
        Self::default()
    }

    // ---- what the test sets -------------------------------------------------------------

    pub fn set_now(&self, ms: u64) {
        self.now.set(ms);
    }
    pub fn advance(&self, ms: u64) {
        self.now.set(self.now.get().saturating_add(ms));
    }
    /// A new request: the request map replaced by these headers, the response cleared.
    pub fn request(&self, headers: &[(&str, &str)]) {
        let mut maps = self.maps.borrow_mut();
        maps.insert(
            Map::Request,
            headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec()))
                .collect(),
        );
        maps.remove(&Map::Response);
        self.body.borrow_mut().clear();
    }
    /// A GET of `path` on `host`.
    pub fn get(&self, host: &str, path: &str) {
        self.request(&[(":method", "GET"), (":path", path), (":authority", host)]);
    }
    /// The response headers the upstream answered with (and its body).
    pub fn respond(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let mut h: Headers = vec![(":status".into(), status.to_string().into())];
        h.extend(
            headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.as_bytes().to_vec())),
        );
        self.maps.borrow_mut().insert(Map::Response, h);
        *self.body.borrow_mut() = body.to_vec();
    }
    pub fn set_property(&self, path: &[&str], value: &str) {
        self.properties
            .borrow_mut()
            .insert(path.join("."), value.as_bytes().to_vec());
    }
    /// A numeric property as Envoy serialises it (`response.code`, `response.flags`: 8 bytes,
    /// little-endian).
    pub fn set_property_u64(&self, path: &[&str], value: u64) {
        self.properties
            .borrow_mut()
            .insert(path.join("."), value.to_le_bytes().to_vec());
    }
    pub fn clear_property(&self, path: &[&str]) {
        self.properties.borrow_mut().remove(&path.join("."));
    }
    pub fn set_config(&self, json: &str) {
        *self.config.borrow_mut() = json.as_bytes().to_vec();
    }
    /// The answer the next `on_http_call_response` reads.
    pub fn answer_call(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) {
        let mut h = vec![(":status".to_string(), status.to_string())];
        h.extend(headers.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        *self.call_answer.borrow_mut() = (h, body.to_vec());
    }
    pub fn gone(&self, id: u32) {
        self.gone.borrow_mut().push(id);
    }
    pub fn refuse_replies(&self, on: bool) {
        self.refuse_replies.set(on);
    }
    pub fn refuse_calls(&self, on: bool) {
        self.refuse_calls.set(on);
    }

    // ---- what the test reads ------------------------------------------------------------

    pub fn req_header(&self, name: &str) -> Option<String> {
        self.header(Map::Request, name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }
    pub fn resp_header(&self, name: &str) -> Option<String> {
        self.header(Map::Response, name)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }
    pub fn body(&self) -> Vec<u8> {
        self.body.borrow().clone()
    }
    /// Replies sent so far, drained.
    pub fn take_replies(&self) -> Vec<SentReply> {
        std::mem::take(&mut *self.replies.borrow_mut())
    }
    /// Contexts resumed so far, drained.
    pub fn take_resumed(&self) -> Vec<u32> {
        std::mem::take(&mut *self.resumed.borrow_mut())
    }
    /// The contexts `enter` switched to, in order.
    pub fn take_entered(&self) -> Vec<u32> {
        std::mem::take(&mut *self.entered.borrow_mut())
    }
    /// HTTP calls dispatched so far, drained.
    pub fn take_calls(&self) -> Vec<SentCall> {
        std::mem::take(&mut *self.calls.borrow_mut())
    }
    /// A metric's value as Envoy would show it (the sum of flushed increments, or the last
    /// recorded gauge value); None if never defined.
    pub fn metric(&self, name: &str) -> Option<i64> {
        self.metrics
            .borrow()
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
    }
    pub fn metric_names(&self) -> Vec<String> {
        self.metrics
            .borrow()
            .iter()
            .map(|(n, _, _)| n.clone())
            .collect()
    }
    pub fn tick_period_ms(&self) -> u64 {
        self.tick_ms.get()
    }
}

impl SharedStore for MemHost {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        self.store.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.store.set(key, value, cas)
    }
}

fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Host for MemHost {
    fn now_ms(&self) -> u64 {
        self.now.get()
    }
    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        let name = name.to_ascii_lowercase();
        self.maps
            .borrow()
            .get(&map)?
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    }
    fn headers(&self, map: Map) -> Vec<(String, String)> {
        self.maps
            .borrow()
            .get(&map)
            .map(|h| {
                h.iter()
                    .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }
    fn set_header(&self, map: Map, name: &str, value: &str) -> bool {
        let name = name.to_ascii_lowercase();
        let mut maps = self.maps.borrow_mut();
        let h = maps.entry(map).or_default();
        h.retain(|(k, _)| *k != name);
        h.push((name, value.as_bytes().to_vec()));
        true
    }
    fn remove_header(&self, map: Map, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        if let Some(h) = self.maps.borrow_mut().get_mut(&map) {
            h.retain(|(k, _)| *k != name);
        }
        true
    }
    fn property(&self, path: &[&str]) -> Option<String> {
        self.property_bytes(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }
    fn property_bytes(&self, path: &[&str]) -> Option<Vec<u8>> {
        self.properties.borrow().get(&path.join(".")).cloned()
    }
    fn response_body(&self, start: usize, max: usize) -> Option<Vec<u8>> {
        let b = self.body.borrow();
        let end = start.saturating_add(max).min(b.len());
        Some(b.get(start.min(end)..end).unwrap_or_default().to_vec())
    }
    fn set_response_body(&self, start: usize, size: usize, value: &[u8]) -> bool {
        let mut b = self.body.borrow_mut();
        let start = start.min(b.len());
        let end = start.saturating_add(size).min(b.len());
        b.splice(start..end, value.iter().copied());
        true
    }
    fn send_reply(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
        if self.refuse_replies.get() {
            return false;
        }
        self.replies.borrow_mut().push(SentReply {
            id: None,
            status,
            headers: owned(headers),
            body: body.to_vec(),
        });
        true
    }
    fn reply_for(&self, id: u32, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
        if self.refuse_replies.get() || self.gone.borrow().contains(&id) {
            return false;
        }
        self.replies.borrow_mut().push(SentReply {
            id: Some(id),
            status,
            headers: owned(headers),
            body: body.to_vec(),
        });
        true
    }
    fn resume(&self, id: u32) -> bool {
        if self.gone.borrow().contains(&id) {
            return false;
        }
        self.resumed.borrow_mut().push(id);
        true
    }
    fn enter(&self, id: u32) -> bool {
        if self.gone.borrow().contains(&id) {
            return false;
        }
        self.entered.borrow_mut().push(id);
        true
    }
    fn dispatch(&self, call: &Call) -> Option<u32> {
        if self.refuse_calls.get() {
            return None;
        }
        let token = self.next_token.get().wrapping_add(1);
        self.next_token.set(token);
        self.calls.borrow_mut().push(SentCall {
            token,
            cluster: call.cluster.to_string(),
            headers: owned(&call.headers),
            body: call.body.map(<[u8]>::to_vec),
            timeout_ms: call.timeout_ms,
        });
        Some(token)
    }
    fn call_response_headers(&self) -> Vec<(String, String)> {
        self.call_answer.borrow().0.clone()
    }
    fn call_response_body(&self, size: usize) -> Vec<u8> {
        let b = &self.call_answer.borrow().1;
        b.get(..size.min(b.len())).unwrap_or_default().to_vec()
    }
    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        let mut m = self.metrics.borrow_mut();
        if let Some(i) = m.iter().position(|(n, _, _)| n == name) {
            return u32::try_from(i).ok();
        }
        m.push((name.to_string(), kind, 0));
        u32::try_from(m.len() - 1).ok()
    }
    fn increment_metric(&self, id: u32, n: i64) {
        if let Some(e) = self.metrics.borrow_mut().get_mut(id as usize) {
            e.2 = e.2.saturating_add(n);
        }
    }
    fn record_metric(&self, id: u32, v: u64) {
        if let Some(e) = self.metrics.borrow_mut().get_mut(id as usize) {
            e.2 = i64::try_from(v).unwrap_or(i64::MAX);
        }
    }
    fn set_tick_period_ms(&self, ms: u64) -> bool {
        self.tick_ms.set(ms);
        true
    }
    fn plugin_config(&self) -> Vec<u8> {
        self.config.borrow().clone()
    }
}

/// The laws every shared-data codec obeys, and the proptest setup, for the property tests
/// (`tests/proptests.rs` in each filter crate). Each law returns a `TestCaseError` that names
/// the values involved, so a `proptest!` body calls it with `?`; the strategies stay in the
/// test files, one `#[test]` per law and codec.
pub mod laws {
    use proptest::collection::SizeRange;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;
    use std::fmt::Debug;

    /// proptest's defaults, whose failure persistence writes next to the test's source file
    /// (natively: `tests/proptests.rs` keeps each failure's seed in
    /// `tests/proptests.proptest-regressions`, replayed first). On wasm32 nothing is
    /// persisted: node:wasi has no filesystem preopened.
    pub fn config() -> ProptestConfig {
        #[allow(unused_mut)] // mutated on wasm32 only
        let mut c = ProptestConfig::default();
        #[cfg(target_arch = "wasm32")]
        {
            c.failure_persistence = None;
        }
        c
    }

    /// Times and ids as they come, with the edges (0, u64::MAX) drawn often, and small
    /// values (below 1000) as often as each edge.
    pub fn edgy_u64() -> impl Strategy<Value = u64> {
        edgy_u64_small_below(1000)
    }

    /// [`edgy_u64`] with the small values drawn below `small` instead.
    pub fn edgy_u64_small_below(small: u64) -> impl Strategy<Value = u64> {
        prop_oneof![any::<u64>(), Just(0), Just(u64::MAX), 0..small]
    }

    /// Any bytes, of a length in `len`.
    pub fn bytes(len: impl Into<SizeRange>) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), len)
    }

    /// `decode(encode(value)) == Some(value)`.
    pub fn round_trip<T: Debug + PartialEq>(
        value: &T,
        encode: impl Fn(&T) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<(), TestCaseError> {
        round_trip_as(value, value, encode, decode)
    }

    /// `decode(encode(value)) == Some(want)`: a round trip up to what the codec documents it
    /// drops or cuts.
    pub fn round_trip_as<T: Debug, U: Debug + PartialEq>(
        value: &T,
        want: &U,
        encode: impl Fn(&T) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Option<U>,
    ) -> Result<(), TestCaseError> {
        let b = encode(value);
        let got = decode(&b);
        prop_assert_eq!(got.as_ref(), Some(want), "{:?} encoded as {:?}", value, b);
        Ok(())
    }

    /// Decoding any bytes gives None or the one value that encodes to exactly those bytes:
    /// no second spelling of a value, no trailing bytes ignored.
    pub fn canonical_or_none<T: Debug>(
        bytes: &[u8],
        encode: impl Fn(&T) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<(), TestCaseError> {
        if let Some(v) = decode(bytes) {
            prop_assert_eq!(encode(&v), bytes, "{:?} decoded as {:?}", bytes, v);
        }
        Ok(())
    }

    /// [`canonical_or_none`] for a codec that reads the empty value as the empty state
    /// (`T::default()`, "no state yet"), whose encoding is not empty.
    pub fn canonical_or_none_empty_is_default<T: Debug + PartialEq + Default>(
        bytes: &[u8],
        encode: impl Fn(&T) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<(), TestCaseError> {
        if bytes.is_empty() {
            prop_assert_eq!(decode(bytes), Some(T::default()), "the empty value");
            return Ok(());
        }
        canonical_or_none(bytes, encode, decode)
    }

    /// Every strict prefix of `encode(value)`, the empty one included, decodes to None: a
    /// cut-off write is never read as a value.
    pub fn truncated_is_none<T: Debug + PartialEq>(
        value: &T,
        encode: impl Fn(&T) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<(), TestCaseError> {
        prefixes_are_none(value, 0, encode, decode)
    }

    /// [`truncated_is_none`] for a codec that reads the empty value as the empty state
    /// (`T::default()`): that prefix decodes to it, every longer strict prefix to None.
    pub fn truncated_is_none_empty_is_default<T: Debug + PartialEq + Default>(
        value: &T,
        encode: impl Fn(&T) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<(), TestCaseError> {
        prop_assert_eq!(decode(&[]), Some(T::default()), "the empty value");
        prefixes_are_none(value, 1, encode, decode)
    }

    /// The strict prefixes of `encode(value)` from `from` bytes on decode to None.
    fn prefixes_are_none<T: Debug + PartialEq>(
        value: &T,
        from: usize,
        encode: impl Fn(&T) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<(), TestCaseError> {
        let b = encode(value);
        for n in from..b.len() {
            let prefix = b.get(..n).unwrap_or_default();
            prop_assert_eq!(
                decode(prefix),
                None,
                "prefix {} of {:?} (encoding of {:?})",
                n,
                b,
                value
            );
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        //! The laws hold for a sound codec and catch each kind of unsound one.
        use super::*;

        /// A u16 as two little-endian bytes: sound.
        fn enc(v: &u16) -> Vec<u8> {
            v.to_le_bytes().to_vec()
        }
        fn dec(b: &[u8]) -> Option<u16> {
            Some(u16::from_le_bytes(b.try_into().ok()?))
        }

        #[test]
        fn a_sound_codec_keeps_every_law() {
            for v in [0u16, 1, 0x1234, u16::MAX] {
                assert!(round_trip(&v, enc, dec).is_ok());
                assert!(truncated_is_none(&v, enc, dec).is_ok());
            }
            for b in [&[][..], &[1][..], &[1, 2][..], &[1, 2, 3][..]] {
                assert!(canonical_or_none(b, enc, dec).is_ok());
            }
        }

        #[test]
        fn each_law_catches_its_breach() {
            // Drops the high byte.
            assert!(round_trip(&0x1234, enc, |b| dec(b).map(|v| v & 0xff)).is_err());
            // Ignores trailing bytes.
            let lax = |b: &[u8]| dec(b.get(..2)?);
            assert!(canonical_or_none(&[1, 2, 3], enc, lax).is_err());
            // Reads a short value as zero-extended.
            let short = |b: &[u8]| {
                let mut a = [0u8; 2];
                a.get_mut(..b.len())?.copy_from_slice(b);
                Some(u16::from_le_bytes(a))
            };
            assert!(truncated_is_none(&7, enc, short).is_err());
            // The empty value is the empty state only where the law says so.
            let empty_zero = |b: &[u8]| if b.is_empty() { Some(0) } else { dec(b) };
            assert!(truncated_is_none(&7, enc, empty_zero).is_err());
            assert!(truncated_is_none_empty_is_default(&7, enc, empty_zero).is_ok());
            assert!(truncated_is_none_empty_is_default(&7, enc, dec).is_err());
            assert!(canonical_or_none(&[], enc, empty_zero).is_err());
            assert!(canonical_or_none_empty_is_default(&[], enc, empty_zero).is_ok());
            assert!(canonical_or_none_empty_is_default(&[], enc, dec).is_err());
        }
    }
}
