//! `Part`: the host as one part of the combined module sees it. It forwards every call to the
//! real host, except:
//! - reads (`header`, `property`, `property_bytes`, the clock) go through the callback's
//!   `Reads`, so the parts of one callback share one host call per value; a header or body
//!   change a part makes drops what it could have changed;
//! - `plugin_config` is the part's own section;
//! - effects the combined module must route are recorded in the part's `Effects`: its tick
//!   period, the tokens of its HTTP calls, whether it sent a local reply, and (on a tick) the
//!   streams it resumed that the combined module holds for the parts after it.

use sg_core::host::{Call, Host, Map, MetricKind};
use sg_core::shared::{SharedStore, StoreError, Versioned};
use std::cell::{Cell, RefCell};

/// A header read: map, name, value (None: absent).
type HeaderRead = (Map, String, Option<Vec<u8>>);
/// A property read: path, value (None: absent).
type PropertyRead = (Vec<String>, Option<Vec<u8>>);
/// An every-header read of a map.
type AllRead = (Map, Vec<(String, String)>);

/// What the parts of one callback have read from the host.
#[derive(Default)]
pub struct Reads {
    now: Cell<Option<u64>>,
    headers: RefCell<Vec<HeaderRead>>,
    properties: RefCell<Vec<PropertyRead>>,
    /// Every header of a map, as `headers` returned it (names lower-case, values lossy).
    all: RefCell<Vec<AllRead>>,
}

impl Reads {
    /// A change to `map` may change what any header or property of it reads (a request header
    /// change re-selects the route, so `route_name` goes too).
    fn changed(&self, map: Map) {
        if let Ok(mut h) = self.headers.try_borrow_mut() {
            h.retain(|(m, _, _)| *m != map);
        }
        if let Ok(mut a) = self.all.try_borrow_mut() {
            a.retain(|(m, _)| *m != map);
        }
        if let Ok(mut p) = self.properties.try_borrow_mut() {
            p.clear();
        }
    }

    /// A header's value from an every-header read of its map: Some(None) when that read has
    /// no such header, None when there was no such read or its value was not valid UTF-8
    /// (the lossy copy would differ from the raw bytes).
    fn in_all(&self, map: Map, name: &str) -> Option<Option<Vec<u8>>> {
        let all = self.all.try_borrow().ok()?;
        let (_, pairs) = all.iter().find(|(m, _)| *m == map)?;
        match pairs.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            None => Some(None),
            Some((_, v)) if v.contains('\u{FFFD}') => None,
            Some((_, v)) => Some(Some(v.as_bytes().to_vec())),
        }
    }
}

/// What one part did during one call that the combined module routes.
#[derive(Default)]
pub struct Effects {
    /// The tick period the part asked for (0: none asked).
    pub tick_ms: Cell<u64>,
    /// Tokens of the HTTP calls it dispatched.
    pub calls: RefCell<Vec<u32>>,
    /// It answered the current request with a local reply the host took.
    pub replied: Cell<bool>,
    /// Streams it resumed that wait in the combined module (their next parts run first).
    pub resumed: RefCell<Vec<u32>>,
}

/// The host for one part during one call.
pub struct Part<'a, H: Host + ?Sized> {
    host: &'a H,
    reads: &'a Reads,
    fx: &'a Effects,
    section: &'a [u8],
    /// Whether a stream resumed now waits in the combined module (only on a tick).
    held: &'a dyn Fn(u32) -> bool,
}

fn never(_: u32) -> bool {
    false
}

impl<'a, H: Host + ?Sized> Part<'a, H> {
    pub fn new(host: &'a H, reads: &'a Reads, fx: &'a Effects) -> Self {
        Part {
            host,
            reads,
            fx,
            section: &[],
            held: &never,
        }
    }

    /// With the part's config section (`on_configure`).
    pub fn with_section(mut self, section: &'a [u8]) -> Self {
        self.section = section;
        self
    }

    /// With the streams held by the combined module (a tick): a resume of one of them is
    /// recorded, not forwarded.
    pub fn with_held(mut self, held: &'a dyn Fn(u32) -> bool) -> Self {
        self.held = held;
        self
    }
}

impl<H: Host + ?Sized> SharedStore for Part<'_, H> {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        self.host.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        self.host.set(key, value, cas)
    }
}

impl<H: Host + ?Sized> Host for Part<'_, H> {
    fn now_ms(&self) -> u64 {
        match self.reads.now.get() {
            Some(t) => t,
            None => {
                let t = self.host.now_ms();
                self.reads.now.set(Some(t));
                t
            }
        }
    }

    fn header(&self, map: Map, name: &str) -> Option<Vec<u8>> {
        if let Ok(seen) = self.reads.headers.try_borrow() {
            if let Some((_, _, v)) = seen.iter().find(|(m, n, _)| *m == map && n == name) {
                return v.clone();
            }
        }
        if let Some(v) = self.reads.in_all(map, name) {
            return v;
        }
        let v = self.host.header(map, name);
        if let Ok(mut seen) = self.reads.headers.try_borrow_mut() {
            // Bounded: a callback reads a handful of names; past 64 the reads are not kept.
            if seen.len() < 64 {
                seen.push((map, name.to_string(), v.clone()));
            }
        }
        v
    }

    fn headers(&self, map: Map) -> Vec<(String, String)> {
        if let Ok(all) = self.reads.all.try_borrow() {
            if let Some((_, pairs)) = all.iter().find(|(m, _)| *m == map) {
                return pairs.clone();
            }
        }
        let pairs = self.host.headers(map);
        if let Ok(mut all) = self.reads.all.try_borrow_mut() {
            all.push((map, pairs.clone()));
        }
        pairs
    }

    fn set_header(&self, map: Map, name: &str, value: &str) -> bool {
        self.reads.changed(map);
        self.host.set_header(map, name, value)
    }

    fn remove_header(&self, map: Map, name: &str) -> bool {
        self.reads.changed(map);
        self.host.remove_header(map, name)
    }

    fn property(&self, path: &[&str]) -> Option<String> {
        self.property_bytes(path).map(sg_core::host::lossy)
    }

    fn property_bytes(&self, path: &[&str]) -> Option<Vec<u8>> {
        let same =
            |p: &Vec<String>| p.len() == path.len() && p.iter().zip(path).all(|(a, b)| a == b);
        if let Ok(seen) = self.reads.properties.try_borrow() {
            if let Some((_, v)) = seen.iter().find(|(p, _)| same(p)) {
                return v.clone();
            }
        }
        let v = self.host.property_bytes(path);
        if let Ok(mut seen) = self.reads.properties.try_borrow_mut() {
            if seen.len() < 16 {
                seen.push((path.iter().map(|s| s.to_string()).collect(), v.clone()));
            }
        }
        v
    }

    fn response_body(&self, start: usize, max: usize) -> Option<Vec<u8>> {
        self.host.response_body(start, max)
    }

    fn set_response_body(&self, start: usize, size: usize, value: &[u8]) -> bool {
        self.host.set_response_body(start, size, value)
    }

    fn send_reply(&self, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
        let sent = self.host.send_reply(status, headers, body);
        if sent {
            self.fx.replied.set(true);
        }
        sent
    }

    fn reply_for(&self, id: u32, status: u16, headers: &[(&str, &str)], body: &[u8]) -> bool {
        self.host.reply_for(id, status, headers, body)
    }

    fn resume(&self, id: u32) -> bool {
        if (self.held)(id) {
            if let Ok(mut r) = self.fx.resumed.try_borrow_mut() {
                r.push(id);
                return true;
            }
        }
        self.host.resume(id)
    }

    fn enter(&self, id: u32) -> bool {
        self.host.enter(id)
    }

    fn dispatch(&self, call: &Call) -> Option<u32> {
        let token = self.host.dispatch(call)?;
        if let Ok(mut c) = self.fx.calls.try_borrow_mut() {
            c.push(token);
        }
        Some(token)
    }

    fn call_response_headers(&self) -> Vec<(String, String)> {
        self.host.call_response_headers()
    }

    fn call_response_body(&self, size: usize) -> Vec<u8> {
        self.host.call_response_body(size)
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> Option<u32> {
        self.host.define_metric(kind, name)
    }

    fn increment_metric(&self, id: u32, n: i64) {
        self.host.increment_metric(id, n)
    }

    fn record_metric(&self, id: u32, v: u64) {
        self.host.record_metric(id, v)
    }

    fn set_tick_period_ms(&self, ms: u64) -> bool {
        self.fx.tick_ms.set(ms);
        true
    }

    fn plugin_config(&self) -> Vec<u8> {
        self.section.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sg_core::testing::MemHost;

    #[test]
    fn parts_of_one_callback_share_reads_and_a_change_drops_them() {
        let h = MemHost::new();
        h.get("blog.example", "/PostView?blogId=a");
        let reads = Reads::default();
        let fx = Effects::default();
        let p = Part::new(&h, &reads, &fx);
        assert_eq!(
            p.header(Map::Request, ":path").as_deref(),
            Some(&b"/PostView?blogId=a"[..])
        );
        // The host's value changes behind the cache: a second read is the shared one...
        h.request(&[(":path", "/other"), (":authority", "blog.example")]);
        assert_eq!(
            p.header(Map::Request, ":path").as_deref(),
            Some(&b"/PostView?blogId=a"[..])
        );
        // ...until a part changes a request header.
        assert!(p.set_header(Map::Request, "x-mark", "1"));
        assert_eq!(
            p.header(Map::Request, ":path").as_deref(),
            Some(&b"/other"[..])
        );
        h.set_now(5);
        assert_eq!(p.now_ms(), 5);
        h.set_now(9);
        assert_eq!(p.now_ms(), 5, "one clock read per callback");
    }

    #[test]
    fn an_every_header_read_answers_later_single_reads_until_a_change() {
        let h = MemHost::new();
        h.respond(200, &[("x-sg", "shed"), ("x-bin", "\u{FFFD}")], b"");
        let reads = Reads::default();
        let fx = Effects::default();
        let p = Part::new(&h, &reads, &fx);
        assert_eq!(p.headers(Map::Response).len(), 3);
        h.respond(503, &[], b"");
        assert_eq!(
            p.header(Map::Response, ":status").as_deref(),
            Some(&b"200"[..])
        );
        assert_eq!(
            p.header(Map::Response, "x-sg").as_deref(),
            Some(&b"shed"[..])
        );
        assert_eq!(p.header(Map::Response, "x-none"), None);
        // A value the lossy copy may have changed is read from the host.
        assert_eq!(p.header(Map::Response, "x-bin"), None);
        assert!(p.remove_header(Map::Response, "x-sg"));
        assert_eq!(
            p.header(Map::Response, ":status").as_deref(),
            Some(&b"503"[..])
        );
        assert_eq!(p.headers(Map::Response).len(), 1);
    }

    #[test]
    fn config_tick_calls_replies_and_held_resumes_are_recorded() {
        let h = MemHost::new();
        let reads = Reads::default();
        let fx = Effects::default();
        let held = |id: u32| id == 7;
        let p = Part::new(&h, &reads, &fx)
            .with_section(br#"{"a":1}"#)
            .with_held(&held);
        assert_eq!(p.plugin_config(), br#"{"a":1}"#.to_vec());
        assert!(p.set_tick_period_ms(100));
        assert_eq!(fx.tick_ms.get(), 100);
        assert_eq!(
            h.tick_period_ms(),
            0,
            "the combined module sets the host's tick"
        );
        let call = Call {
            cluster: "c",
            headers: vec![],
            body: None,
            timeout_ms: 10,
        };
        let t = p.dispatch(&call).expect("dispatched");
        assert_eq!(*fx.calls.borrow(), vec![t]);
        assert!(p.send_reply(503, &[], b""));
        assert!(fx.replied.get());
        assert!(p.resume(7) && p.resume(8));
        assert_eq!(*fx.resumed.borrow(), vec![7], "7 is held: recorded");
        assert_eq!(h.take_resumed(), vec![8], "8 is not: forwarded");
    }
}
