//! The kit's shared-data side: typed reads, counted read-modify-writes, and the worker's copy
//! of a published value. Every failure is counted in the filter's `StoreMetrics`
//! (`bad_state`, `cas_giveup`, `store_error`) and reads as "no state yet": shared-data
//! trouble never drops a request.

use crate::hash::hash64;
use crate::metrics::StoreMetrics;
use crate::shared::{update, SharedStore, Step, Update};
use std::rc::Rc;

/// CAS attempts of every read-modify-write outside `ratelimit`'s configurable request path.
/// Contention is at most one writer per worker per key per tick, so 8 covers the workers of
/// any sidecar; a give-up is counted, never retried without bound.
pub const CAS_ATTEMPTS: u32 = 8;

/// A value kept in shared data, decoded with bounds checks (None for anything odd).
pub trait Decode: Sized {
    fn decode(b: &[u8]) -> Option<Self>;
}

/// Shared data as a filter uses it: the store plus the counters its failures go to.
#[derive(Clone, Copy)]
pub struct Data<'a, S: SharedStore + ?Sized> {
    pub store: &'a S,
    pub m: &'a StoreMetrics,
}

impl<'a, S: SharedStore + ?Sized> Data<'a, S> {
    pub fn new(store: &'a S, m: &'a StoreMetrics) -> Self {
        Data { store, m }
    }

    /// The raw bytes of `key`; None when absent or the host failed (counted).
    pub fn bytes(&self, key: &str) -> Option<Vec<u8>> {
        match self.store.get(key) {
            Ok(v) => v.value,
            Err(_) => {
                self.m.store_error.inc();
                None
            }
        }
    }

    /// `key` decoded by `decode`; None when absent, unreadable (counted `bad_state`) or failed.
    pub fn read_with<T>(&self, key: &str, decode: impl FnOnce(&[u8]) -> Option<T>) -> Option<T> {
        let b = self.bytes(key)?;
        let v = decode(&b);
        // Empty is what `ensure` creates: absent in all but name.
        if v.is_none() && !b.is_empty() {
            self.m.bad_state.inc();
        }
        v
    }

    pub fn read<T: Decode>(&self, key: &str) -> Option<T> {
        self.read_with(key, T::decode)
    }

    /// Read-modify-write with CAS (`CAS_ATTEMPTS`); the closure's result when written or kept,
    /// None when every attempt lost the race (`cas_giveup`) or the host failed (`store_error`).
    pub fn update<T>(&self, key: &str, f: impl FnMut(Option<&[u8]>) -> Step<T>) -> Option<T> {
        self.counted(update(self.store, key, CAS_ATTEMPTS, f))
    }

    /// As `update`, decoding the current value with `decode` (an unreadable one counts as
    /// `bad_state` and is replaced as if absent).
    pub fn modify<V, T>(
        &self,
        key: &str,
        decode: impl Fn(&[u8]) -> Option<V>,
        mut f: impl FnMut(Option<V>) -> Step<T>,
    ) -> Option<T> {
        let mut bad = false;
        let r = self.update(key, |cur| {
            let v = cur.and_then(|b| {
                let v = decode(b);
                bad |= v.is_none() && !b.is_empty();
                v
            });
            f(v)
        });
        if bad {
            self.m.bad_state.inc();
        }
        r
    }

    /// Replaces `key` with `bytes` (through CAS, so it is created safely). False on failure.
    pub fn put(&self, key: &str, bytes: &[u8]) -> bool {
        self.update(key, |_| Step::Write(bytes.to_vec(), ()))
            .is_some()
    }

    /// Counts what an `update` outcome lost.
    pub fn counted<T>(&self, r: Update<T>) -> Option<T> {
        match r {
            Update::Done { result, .. } => Some(result),
            Update::GaveUp { .. } => {
                self.m.cas_giveup.inc();
                None
            }
            Update::Failed(_) => {
                self.m.store_error.inc();
                None
            }
        }
    }
}

/// What `Published::refresh` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// Same bytes as last time: nothing decoded.
    Unchanged,
    /// New bytes, decoded and now held.
    Updated,
    /// The key is absent (or the host failed): the copy is as before.
    Absent,
    /// New bytes that did not decode (counted): the last good copy is kept.
    Bad,
}

/// A worker's copy of a value another context publishes in shared data (the hot set, an
/// operator list, overload state), re-decoded only when its bytes changed. Request paths read
/// the copy (`get`), never shared data.
#[derive(Debug)]
pub struct Published<T> {
    value: Rc<T>,
    hash: Option<u64>,
}

impl<T: Default> Default for Published<T> {
    fn default() -> Self {
        Published {
            value: Rc::new(T::default()),
            hash: None,
        }
    }
}

impl<T: Default> Published<T> {
    pub fn get(&self) -> &Rc<T> {
        &self.value
    }

    /// Reads `key`; decodes it with `decode` only when its bytes changed since the last call.
    pub fn refresh<S: SharedStore + ?Sized>(
        &mut self,
        data: &Data<S>,
        key: &str,
        decode: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Refresh {
        let Some(bytes) = data.bytes(key) else {
            return Refresh::Absent;
        };
        let h = hash64(key.as_bytes(), &bytes);
        if self.hash == Some(h) {
            return Refresh::Unchanged;
        }
        match decode(&bytes) {
            Some(v) => {
                self.value = Rc::new(v);
                self.hash = Some(h);
                Refresh::Updated
            }
            None => {
                // Remembered too, so the same bad bytes are not decoded (and counted) again.
                self.hash = Some(h);
                data.m.bad_state.inc();
                Refresh::Bad
            }
        }
    }

    /// Forgets the copy (e.g. the publisher removed the key's content).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemStore;

    struct N(u64);
    impl Decode for N {
        fn decode(b: &[u8]) -> Option<N> {
            crate::codec::Reader::new(b).u64().map(N)
        }
    }

    fn n(v: u64) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    #[test]
    fn reads_count_bad_values_and_host_failures() {
        let s = MemStore::new();
        let m = StoreMetrics::default();
        let d = Data::new(&s, &m);
        assert!(d.read::<N>("sg:t").is_none());
        assert_eq!(m.bad_state.get(), 0, "absent is not bad");
        assert!(d.put("sg:t", &n(7)));
        assert_eq!(d.read::<N>("sg:t").map(|x| x.0), Some(7));
        assert!(d.put("sg:t", b"x"));
        assert!(d.read::<N>("sg:t").is_none());
        assert_eq!(m.bad_state.get(), 1);
        s.set_failing(true);
        assert!(d.read::<N>("sg:t").is_none());
        assert!(!d.put("sg:t", &n(1)));
        assert_eq!(m.store_error.get(), 2);
    }

    #[test]
    fn a_lost_race_is_counted_as_a_give_up() {
        let s = MemStore::new();
        let m = StoreMetrics::default();
        let d = Data::new(&s, &m);
        assert!(d.put("sg:t", &n(1)));
        s.interfere_next(CAS_ATTEMPTS);
        assert_eq!(d.update("sg:t", |_| Step::Write(n(2), ())), None);
        assert_eq!(m.cas_giveup.get(), 1);
        s.interfere_next(CAS_ATTEMPTS - 1);
        assert_eq!(d.update("sg:t", |_| Step::Write(n(3), 5)), Some(5));
        assert_eq!(d.read::<N>("sg:t").map(|x| x.0), Some(3));
    }

    #[test]
    fn modify_replaces_an_unreadable_value_and_counts_it() {
        let s = MemStore::new();
        let m = StoreMetrics::default();
        let d = Data::new(&s, &m);
        assert!(d.put("sg:t", b"junk"));
        let r = d.modify("sg:t", N::decode, |cur| {
            let v = cur.map_or(0, |x| x.0) + 1;
            Step::Write(n(v), v)
        });
        assert_eq!(r, Some(1));
        assert_eq!(m.bad_state.get(), 1);
    }

    #[test]
    fn a_copy_is_decoded_only_when_its_bytes_change() {
        let s = MemStore::new();
        let m = StoreMetrics::default();
        let d = Data::new(&s, &m);
        let mut p: Published<u64> = Published::default();
        let mut decodes = 0;
        let mut dec = |b: &[u8]| {
            decodes += 1;
            N::decode(b).map(|x| x.0)
        };
        assert_eq!(p.refresh(&d, "sg:p", &mut dec), Refresh::Absent);
        d.put("sg:p", &n(4));
        assert_eq!(p.refresh(&d, "sg:p", &mut dec), Refresh::Updated);
        assert_eq!(p.refresh(&d, "sg:p", &mut dec), Refresh::Unchanged);
        assert_eq!(**p.get(), 4);
        d.put("sg:p", b"bad");
        assert_eq!(p.refresh(&d, "sg:p", &mut dec), Refresh::Bad);
        assert_eq!(**p.get(), 4, "the last good copy is kept");
        d.put("sg:p", &n(9));
        assert_eq!(p.refresh(&d, "sg:p", &mut dec), Refresh::Updated);
        assert_eq!(**p.get(), 9);
        assert_eq!(decodes, 3);
        assert_eq!(m.bad_state.get(), 1);
    }
}
