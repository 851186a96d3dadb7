//! The tick outline every filter with periodic work follows, written once: merge this
//! worker's tallies into shared data; if this VM holds the task's lease, evaluate and
//! publish; then refresh this worker's copies of what was published. Each filter supplies
//! the steps (`Steps`); the order and the lease are here.

use crate::host::Host;
use crate::lease::Leadership;

/// One tick's facts, handed to every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub ms: u64,
    /// `ms / tick_ms`: the bucket this tick's counts belong to.
    pub epoch: u64,
}

pub trait Steps<H: Host + ?Sized> {
    /// Every worker: move this tick's per-worker counts into shared data.
    fn merge(&mut self, host: &H, now: Now);
    /// The lease holder only: evaluate the merged state, publish, poll, alert.
    /// `became` is true on the first tick of a new holder (restore from what was published).
    fn lead(&mut self, host: &H, now: Now, became: bool);
    /// Every worker: pick up what was published.
    fn refresh(&mut self, host: &H, now: Now);
}

/// The periodic work of one task (`hotkey`, `simplepage`): its lease and period.
#[derive(Debug, Default)]
pub struct Ticker {
    lead: Leadership,
}

impl Ticker {
    /// Runs one tick of `task` (period `tick_ms`; the lease lives 3 periods, so one missed
    /// tick does not hand it over).
    pub fn run<H: Host + ?Sized, S: Steps<H>>(
        &mut self,
        host: &H,
        task: &str,
        tick_ms: u64,
        steps: &mut S,
    ) {
        let ms = host.now_ms();
        let now = Now {
            ms,
            epoch: ms / tick_ms.max(1),
        };
        steps.merge(host, now);
        if let Some(became) = self.lead.tick(host, task, ms, tick_ms.saturating_mul(3)) {
            steps.lead(host, now, became);
        }
        steps.refresh(host, now);
    }

    /// This VM's lease id (0 before its first tick).
    pub fn id(&self) -> u64 {
        self.lead.id()
    }
}

/// What a filter with periodic work keeps in its root context only: the task's lease and the
/// filter's own leader-side state `L` (detectors, operator side, alert history).
#[derive(Debug, Default)]
pub struct Periodic<L> {
    pub ticker: Ticker,
    pub leader: L,
}

impl<L> Periodic<L> {
    pub fn new(leader: L) -> Self {
        Periodic {
            ticker: Ticker::default(),
            leader,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemHost;

    #[derive(Default)]
    struct Trace(Vec<String>);
    impl Steps<MemHost> for Trace {
        fn merge(&mut self, _: &MemHost, now: Now) {
            self.0.push(format!("merge {}", now.epoch));
        }
        fn lead(&mut self, _: &MemHost, _: Now, became: bool) {
            self.0.push(format!("lead {became}"));
        }
        fn refresh(&mut self, _: &MemHost, _: Now) {
            self.0.push("refresh".into());
        }
    }

    #[test]
    fn merge_then_lead_if_holder_then_refresh() {
        let h = MemHost::new();
        h.set_now(1_000);
        let (mut a, mut b) = (Ticker::default(), Ticker::default());
        let (mut ta, mut tb) = (Trace::default(), Trace::default());
        a.run(&h, "t", 100, &mut ta);
        b.run(&h, "t", 100, &mut tb);
        h.advance(100);
        a.run(&h, "t", 100, &mut ta);
        assert_eq!(
            ta.0,
            [
                "merge 10",
                "lead true",
                "refresh",
                "merge 11",
                "lead false",
                "refresh"
            ]
        );
        assert_eq!(
            tb.0,
            ["merge 10", "refresh"],
            "not the holder: no lead step"
        );
    }
}
