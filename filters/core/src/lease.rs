//! Tick leadership: a lease in shared data (`sg:lead:<task>`) so periodic work (detection,
//! polling an operator endpoint, sending alerts) runs once per Envoy, not once per worker.
//! Every worker tries on its tick; the holder renews, anyone takes over an expired lease.

use crate::codec::{Reader, Writer};
use crate::shared::{update, SharedStore, Step, Update};
use crate::store::CAS_ATTEMPTS;

/// Attempts to take an id: every worker takes its id on the same first tick, so the counter
/// is contended by all of them at once.
const ID_ATTEMPTS: u32 = 32;

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
    let r = update(store, crate::keys::LEAD_IDS, ID_ATTEMPTS, |cur| {
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

/// Takes or renews the lease of `task` for `me` until `now + ttl_ms`. True when `me` holds it.
/// An unreadable value counts as expired; shared-data trouble means "not leader" this tick.
pub fn try_acquire<S: SharedStore + ?Sized>(
    store: &S,
    task: &str,
    me: u64,
    now: u64,
    ttl_ms: u64,
) -> bool {
    let r = update(store, &crate::keys::lease(task), CAS_ATTEMPTS, |cur| {
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

/// One VM's side of a task's lease, called on every tick. Its id is taken on the first tick,
/// not earlier: Envoy clones the configured base VM, memory included, for each worker, so a
/// value made in `on_vm_start` or `on_configure` can be the same on every worker (measured:
/// every VM polled as "the" leader).
#[derive(Debug, Default)]
pub struct Leadership {
    me: u64,
    leading: bool,
}

impl Leadership {
    /// Some(true when it just became the holder) while this VM holds the lease of `task`
    /// (renewed to `now + ttl_ms`); None otherwise.
    pub fn tick<S: SharedStore + ?Sized>(
        &mut self,
        store: &S,
        task: &str,
        now: u64,
        ttl_ms: u64,
    ) -> Option<bool> {
        if self.me == 0 {
            self.me = unique_id(store).unwrap_or(0);
        }
        let leader = self.me != 0 && try_acquire(store, task, self.me, now, ttl_ms);
        let became = leader && !self.leading;
        if became {
            log::info!(
                "{task}: this VM (id {}) now leads the periodic work",
                self.me
            );
        }
        self.leading = leader;
        leader.then_some(became)
    }

    /// This VM's id (0 before its first tick).
    pub fn id(&self) -> u64 {
        self.me
    }
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
    fn leadership_reports_takeover_once() {
        let s = MemStore::new();
        let (mut a, mut b) = (Leadership::default(), Leadership::default());
        assert_eq!(a.tick(&s, "t", 0, 100), Some(true));
        assert_eq!(b.tick(&s, "t", 10, 100), None);
        assert_eq!(a.tick(&s, "t", 50, 100), Some(false));
        assert!(a.id() != 0 && b.id() != 0 && a.id() != b.id());
        // a stops ticking; b takes over once the lease expires.
        assert_eq!(b.tick(&s, "t", 149, 100), None);
        assert_eq!(b.tick(&s, "t", 150, 100), Some(true));
        assert_eq!(b.tick(&s, "t", 160, 100), Some(false));
        assert_eq!(a.tick(&s, "t", 170, 100), None);
        s.set_failing(true);
        assert_eq!(b.tick(&s, "t", 180, 100), None);
        s.set_failing(false);
        assert_eq!(b.tick(&s, "t", 190, 100), Some(true), "lost and regained");
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
