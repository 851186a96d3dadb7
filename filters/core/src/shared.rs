//! Shared data: the trait the filters use, an in-memory store for native tests, and the
//! CAS-and-retry helper every writer goes through.
//!
//! Envoy's shared data is a per-`vm_id` map of `key -> (bytes, cas)`. A `set` with a non-zero
//! cas fails with `CasMismatch` when someone wrote in between; a `set` on an absent key is
//! unconditional, so writers first create the key (see `ensure`) and then always CAS.
//! Envoy never frees a key: every filter uses a fixed, configured set of keys.

use std::cell::RefCell;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// The value changed since it was read.
    CasMismatch,
    /// Any other host failure (bad status, serialization failure).
    Host,
}

/// A value and the cas token it was read with. `cas == 0` only for absent keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub value: Option<Vec<u8>>,
    pub cas: u32,
}

pub trait SharedStore {
    /// Reads a key. Absent keys are `Ok(Versioned { value: None, cas: 0 })`.
    fn get(&self, key: &str) -> Result<Versioned, StoreError>;
    /// Writes a key; `cas == 0` writes unconditionally.
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// Outcome of `update`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update<T> {
    /// Written (or nothing to write) after `attempts` tries; carries the closure's result.
    Done { result: T, attempts: u32 },
    /// Every try lost the race; nothing was written.
    GaveUp { attempts: u32 },
    /// The host failed; nothing was written.
    Failed(StoreError),
}

/// What an update closure decides for the value it was shown.
pub enum Step<T> {
    /// Write this value (with CAS) and return `T`.
    Write(Vec<u8>, T),
    /// Leave the value as it is and return `T` (e.g. a rejected request charges nothing).
    Keep(T),
}

/// Read-modify-write with compare-and-swap, retried at most `max_attempts` times.
/// `f` is called once per attempt with the current value (None when absent) and must be
/// side-effect free apart from its return value.
pub fn update<S, T, F>(store: &S, key: &str, max_attempts: u32, f: F) -> Update<T>
where
    S: SharedStore + ?Sized,
    F: FnMut(Option<&[u8]>) -> Step<T>,
{
    update_from(store, key, None, max_attempts, f)
}

/// As `update`, but the first attempt uses `first`, a value the caller already read (saves
/// one host call on the common, uncontended path).
pub fn update_from<S, T, F>(
    store: &S,
    key: &str,
    mut first: Option<Versioned>,
    max_attempts: u32,
    mut f: F,
) -> Update<T>
where
    S: SharedStore + ?Sized,
    F: FnMut(Option<&[u8]>) -> Step<T>,
{
    let mut attempts = 0;
    while attempts < max_attempts.max(1) {
        attempts += 1;
        let cur = match first.take() {
            Some(v) => v,
            None => match store.get(key) {
                Ok(v) => v,
                Err(e) => return Update::Failed(e),
            },
        };
        match f(cur.value.as_deref()) {
            Step::Keep(result) => return Update::Done { result, attempts },
            Step::Write(bytes, result) => {
                if cur.value.is_none() {
                    // Absent: create the key first, then CAS on top of whatever is there now,
                    // so two workers creating the same key cannot both write blindly.
                    if let Err(e) = ensure(store, key, &[]) {
                        return Update::Failed(e);
                    }
                    continue;
                }
                match store.set(key, &bytes, cur.cas) {
                    Ok(()) => return Update::Done { result, attempts },
                    Err(StoreError::CasMismatch) => continue,
                    Err(e) => return Update::Failed(e),
                }
            }
        }
    }
    Update::GaveUp { attempts }
}

/// Creates `key` with `initial` if it is absent. Used at configure time for every slot key so
/// that request-time writes are always CAS writes.
pub fn ensure<S: SharedStore + ?Sized>(
    store: &S,
    key: &str,
    initial: &[u8],
) -> Result<(), StoreError> {
    match store.get(key) {
        Ok(Versioned { value: Some(_), .. }) => Ok(()),
        Ok(Versioned { value: None, .. }) => store.set(key, initial, 0),
        Err(e) => Err(e),
    }
}

/// Creates every key in `keys` (empty) that is absent, at configure time. Envoy has no
/// create-if-absent: two workers creating a key on their first request could both write
/// blindly and lose a count. One warning when some could not be created (they are then
/// created on first use). Returns how many failed.
pub fn ensure_all<S, K>(store: &S, filter: &str, keys: impl IntoIterator<Item = K>) -> usize
where
    S: SharedStore + ?Sized,
    K: AsRef<str>,
{
    let failed = keys
        .into_iter()
        .filter(|k| ensure(store, k.as_ref(), &[]).is_err())
        .count();
    if failed > 0 {
        log::warn!(
            "{filter}: {failed} shared keys could not be created; they are created on first use"
        );
    }
    failed
}

/// In-memory store with Envoy's semantics, for native tests. `interfere` makes the next N
/// CAS writes fail as if another worker had written in between; `fail` makes calls fail.
#[derive(Default)]
pub struct MemStore {
    map: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: RefCell<u32>,
    interfere: RefCell<u32>,
    fail: RefCell<bool>,
    gets: std::cell::Cell<u64>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn interfere_next(&self, n: u32) {
        *self.interfere.borrow_mut() = n;
    }
    pub fn set_failing(&self, on: bool) {
        *self.fail.borrow_mut() = on;
    }
    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }
    /// `get` calls so far (a test counts the shared-data reads a path makes).
    pub fn gets(&self) -> u64 {
        self.gets.get()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The bytes of `key` (None when absent), for test assertions.
    pub fn get_value(&self, key: &str) -> Option<Vec<u8>> {
        self.map.borrow().get(key).map(|v| v.0.clone())
    }
    /// Every key held, sorted (tests that write into what the filters use).
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.map.borrow().keys().cloned().collect();
        k.sort();
        k
    }
    pub fn total_bytes(&self) -> usize {
        self.map
            .borrow()
            .iter()
            .map(|(k, v)| k.len() + v.0.len())
            .sum()
    }
}

impl SharedStore for MemStore {
    fn get(&self, key: &str) -> Result<Versioned, StoreError> {
        self.gets.set(self.gets.get().saturating_add(1));
        if *self.fail.borrow() {
            return Err(StoreError::Host);
        }
        Ok(match self.map.borrow().get(key) {
            Some((v, cas)) => Versioned {
                value: Some(v.clone()),
                cas: *cas,
            },
            None => Versioned {
                value: None,
                cas: 0,
            },
        })
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if *self.fail.borrow() {
            return Err(StoreError::Host);
        }
        let mut map = self.map.borrow_mut();
        if cas != 0 {
            let mut left = self.interfere.borrow_mut();
            if *left > 0 {
                *left -= 1;
                if let Some(entry) = map.get_mut(key) {
                    // Someone else wrote: bump the cas without changing the bytes.
                    let mut n = self.next_cas.borrow_mut();
                    *n = n.wrapping_add(1).max(1);
                    entry.1 = *n;
                }
                return Err(StoreError::CasMismatch);
            }
            if let Some((_, cur)) = map.get(key) {
                if *cur != cas {
                    return Err(StoreError::CasMismatch);
                }
            }
        }
        let mut n = self.next_cas.borrow_mut();
        *n = n.wrapping_add(1).max(1);
        map.insert(key.to_string(), (value.to_vec(), *n));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn incr(store: &MemStore, attempts: u32) -> Update<u64> {
        update(store, "sg:t:k", attempts, |cur| {
            let n = cur
                .and_then(|b| crate::codec::Reader::new(b).u64())
                .unwrap_or(0)
                + 1;
            let mut w = crate::codec::Writer::default();
            w.u64(n);
            Step::Write(w.finish(), n)
        })
    }

    #[test]
    fn absent_key_is_created_then_written_with_cas() {
        let s = MemStore::new();
        assert_eq!(
            incr(&s, 4),
            Update::Done {
                result: 1,
                attempts: 2
            }
        );
        assert_eq!(
            incr(&s, 4),
            Update::Done {
                result: 2,
                attempts: 1
            }
        );
    }

    #[test]
    fn cas_conflicts_are_retried_then_given_up_without_writing() {
        let s = MemStore::new();
        incr(&s, 4);
        s.interfere_next(2);
        assert_eq!(
            incr(&s, 4),
            Update::Done {
                result: 2,
                attempts: 3
            }
        );
        s.interfere_next(10);
        assert_eq!(incr(&s, 3), Update::GaveUp { attempts: 3 });
        s.interfere_next(0);
        assert_eq!(
            incr(&s, 3),
            Update::Done {
                result: 3,
                attempts: 1
            }
        );
    }

    #[test]
    fn host_failure_is_reported_not_panicked() {
        let s = MemStore::new();
        s.set_failing(true);
        assert_eq!(incr(&s, 3), Update::Failed(StoreError::Host));
    }

    #[test]
    fn keep_writes_nothing() {
        let s = MemStore::new();
        let r = update(&s, "sg:t:x", 3, |_| Step::<u8>::Keep(9));
        assert_eq!(
            r,
            Update::Done {
                result: 9,
                attempts: 1
            }
        );
        assert!(s.is_empty());
    }
}
