//! Tick leadership: a lease in shared data (`sg:lead:<task>`) so periodic work (detection,
//! polling an operator endpoint, sending alerts) runs once per Envoy, not once per worker.
//! Every worker tries on its tick; the holder renews, anyone takes over an expired lease.

use crate::codec::{Reader, Writer};
use crate::shared::{update, SharedStore, Step, Update};

pub const VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub holder: u64,
    pub expires_ms: u64,
}

impl Lease {
    pub fn decode(b: &[u8]) -> Option<Lease> {
        let mut r = Reader::new(b);
        if r.u8()? != VERSION {
            return None;
        }
        let l = Lease {
            holder: r.u64()?,
            expires_ms: r.u64()?,
        };
        (r.remaining() == 0).then_some(l)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(17);
        w.u8(VERSION).u64(self.holder).u64(self.expires_ms);
        w.finish()
    }
}

/// A number no other VM of this Envoy got: a CAS-incremented counter in shared data
/// (`sg:lead:ids`). VMs cannot tell themselves apart otherwise: every worker's VM starts from
/// the same image at about the same millisecond. None if shared data fails.
pub fn unique_id<S: SharedStore + ?Sized>(store: &S) -> Option<u64> {
    let r = update(store, "sg:lead:ids", 32, |cur| {
        let next = cur
            .and_then(|b| Reader::new(b).u64())
            .unwrap_or(0)
            .wrapping_add(1);
        let mut w = Writer::with_capacity(8);
        w.u64(next);
        Step::Write(w.finish(), next)
    });
    match r {
        Update::Done { result, .. } => Some(result),
        _ => None,
    }
}

/// Shared-data key of a task's lease.
pub fn lease_key(task: &str) -> String {
    format!("sg:lead:{task}")
}

/// Takes or renews the lease of `task` for `me` until `now + ttl_ms`. True when `me` holds it.
/// An unreadable value counts as expired; shared-data trouble means "not leader" this tick.
pub fn try_acquire<S: SharedStore + ?Sized>(
    store: &S,
    task: &str,
    me: u64,
    now: u64,
    ttl_ms: u64,
) -> bool {
    let r = update(store, &lease_key(task), 4, |cur| {
        let held = cur.and_then(Lease::decode);
        match held {
            Some(l) if l.holder != me && l.expires_ms > now => Step::Keep(false),
            _ => Step::Write(
                Lease {
                    holder: me,
                    expires_ms: now.saturating_add(ttl_ms),
                }
                .encode(),
                true,
            ),
        }
    });
    matches!(r, Update::Done { result: true, .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shared::MemStore;

    #[test]
    fn one_holder_until_expiry_then_takeover() {
        let s = MemStore::new();
        assert!(try_acquire(&s, "hk", 1, 0, 100));
        assert!(!try_acquire(&s, "hk", 2, 50, 100));
        assert!(try_acquire(&s, "hk", 1, 90, 100)); // renew to 190
        assert!(!try_acquire(&s, "hk", 2, 150, 100));
        assert!(try_acquire(&s, "hk", 2, 190, 100)); // expired: taken over
        assert!(!try_acquire(&s, "hk", 1, 200, 100));
    }

    #[test]
    fn garbage_counts_as_expired_and_store_failure_as_not_leader() {
        let s = MemStore::new();
        let _ = crate::shared::SharedStore::set(&s, "sg:lead:hk", b"junk", 0);
        assert!(try_acquire(&s, "hk", 7, 0, 100));
        s.set_failing(true);
        assert!(!try_acquire(&s, "hk", 7, 10, 100));
    }

    #[test]
    fn unique_ids_differ() {
        let s = MemStore::new();
        let a = unique_id(&s);
        let b = unique_id(&s);
        assert!(a.is_some() && b.is_some() && a != b);
    }

    #[test]
    fn codec_round_trip() {
        let l = Lease {
            holder: 9,
            expires_ms: 77,
        };
        assert_eq!(Lease::decode(&l.encode()), Some(l));
        assert_eq!(Lease::decode(&[1, 2]), None);
    }
}
