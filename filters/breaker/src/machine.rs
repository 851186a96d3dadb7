//! One API's circuit breaker: resilience4j's `CircuitBreakerStateMachine` states and
//! transitions on an injected clock (integer ms), as a value kept in shared data so that every
//! worker of an Envoy sees one state (`sg:br:<api>`, written with CAS).
//!
//! - CLOSED: every call permitted; the leader judges the merged window (`window`) on its tick
//!   (`judge`): at least the minimum calls and a failure or slow-call rate `>=` its threshold
//!   opens it (so it opens within one tick of the threshold being crossed).
//! - OPEN: every call rejected until strictly after `retry_at_ms`; the first call after it (or
//!   the tick: the transition is also checked there, so it never waits for traffic) moves to
//!   HALF_OPEN. The wait grows by `backoff` for each consecutive opening.
//! - HALF_OPEN: `half_open_calls` permits; their outcomes are recorded here, exactly
//!   (`record`); after `min(min_calls, half_open_calls)` outcomes the rates close or reopen
//!   it. `half_open_max_wait_ms` bounds the stay (checked lazily on every call and tick, so it
//!   holds on a fake clock): never stuck half-open, then to `after_half_open_wait`.
//! - DISABLED (no breaker, nothing judged), METRICS_ONLY (judged and reported, never acts:
//!   the shadow mode), FORCED_OPEN (every call rejected): operator flags.
//!
//! Differences from resilience4j (docs/BREAKER.md): a permit carries the state's generation,
//! so an outcome of a call permitted before a transition is not counted as a half-open trial.

use crate::window::Tally;
use sg_core::codec::{Reader, Writer};

pub const VERSION: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Closed,
    Open,
    HalfOpen,
    Disabled,
    MetricsOnly,
    ForcedOpen,
}

impl Kind {
    /// Every state, in gauge order.
    pub const ALL: [Kind; 6] = [
        Kind::Closed,
        Kind::Open,
        Kind::HalfOpen,
        Kind::Disabled,
        Kind::MetricsOnly,
        Kind::ForcedOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Closed => "closed",
            Kind::Open => "open",
            Kind::HalfOpen => "half_open",
            Kind::Disabled => "disabled",
            Kind::MetricsOnly => "metrics_only",
            Kind::ForcedOpen => "forced_open",
        }
    }

    /// The state gauge's value (stable: dashboards map it).
    pub fn gauge(self) -> u64 {
        match self {
            Kind::Closed => 0,
            Kind::Open => 1,
            Kind::HalfOpen => 2,
            Kind::Disabled => 3,
            Kind::MetricsOnly => 4,
            Kind::ForcedOpen => 5,
        }
    }

    fn from_u8(b: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.gauge() == u64::from(b))
    }
}

/// Exponential wait in OPEN: attempt 1 waits `wait_open_ms`, each later attempt the previous
/// wait times `multiplier_permille / 1000` (truncated, as resilience4j), at most `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub multiplier_permille: u64,
    pub max_ms: u64,
}

/// What the breaker of one API is configured with (validated by the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Opens at a failure rate at or above this (per mille, 1..=1000).
    pub failure_permille: u64,
    /// Opens at a slow-call rate at or above this (per mille, 1..=1000).
    pub slow_permille: u64,
    /// Minimum calls in the window before a rate is judged (clamped to a count window).
    pub min_calls: u64,
    pub wait_open_ms: u64,
    pub backoff: Option<Backoff>,
    pub half_open_calls: u32,
    /// 0: no limit.
    pub half_open_max_wait_ms: u64,
    /// Where the half-open limit leads: `Open` or `Closed`.
    pub after_half_open_wait: Kind,
}

impl Settings {
    /// resilience4j's defaults (failure 50%, slow 100%, min 100 calls, 60 s open, 10 probes).
    pub fn resilience4j_defaults() -> Settings {
        Settings {
            failure_permille: 500,
            slow_permille: 1000,
            min_calls: 100,
            wait_open_ms: 60_000,
            backoff: None,
            half_open_calls: 10,
            half_open_max_wait_ms: 0,
            after_half_open_wait: Kind::Open,
        }
    }

    /// The wait in OPEN for the `attempts`-th consecutive opening (1-based).
    pub fn wait_ms(&self, attempts: u32) -> u64 {
        let Some(b) = self.backoff else {
            return self.wait_open_ms;
        };
        let mut w = self.wait_open_ms;
        for _ in 1..attempts.min(64) {
            w = w.saturating_mul(b.multiplier_permille) / 1000;
            if w >= b.max_ms {
                return b.max_ms;
            }
        }
        w.min(b.max_ms)
    }

    /// Whether `t` is over a threshold (`>=`, as resilience4j) once it holds `min` calls.
    fn exceeded(&self, t: &Tally, min: u64) -> bool {
        t.calls >= min.max(1)
            && (t
                .failure_permille()
                .is_some_and(|r| r >= self.failure_permille)
                || t.slow_permille().is_some_and(|r| r >= self.slow_permille))
    }
}

/// How one call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub failed: bool,
    pub slow: bool,
}

/// The answer to "may this call go to the upstream?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Yes; report the outcome with this generation (a half-open probe must).
    Granted { generation: u64, probe: bool },
    /// No: fail fast with the API's fallback.
    Rejected,
}

/// A state change, for metrics, the alert and the published open set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: Kind,
    pub to: Kind,
    pub at_ms: u64,
}

/// The breaker of one API (the shared-data value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Breaker {
    pub kind: Kind,
    pub since_ms: u64,
    /// Consecutive openings (backoff); 0 after CLOSED, DISABLED, METRICS_ONLY.
    pub attempts: u32,
    /// OPEN: the first instant strictly after which a call may probe.
    pub retry_at_ms: u64,
    /// HALF_OPEN: permits left, and the probes' outcomes so far.
    pub permits_left: u32,
    pub probes: Tally,
    /// Bumped on every transition: an outcome reported with another generation is dropped.
    pub generation: u64,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            kind: Kind::Closed,
            since_ms: 0,
            attempts: 0,
            retry_at_ms: 0,
            permits_left: 0,
            probes: Tally::default(),
            generation: 0,
        }
    }
}

impl Breaker {
    fn go(&mut self, to: Kind, s: &Settings, now: u64) -> Transition {
        let from = self.kind;
        self.attempts = match to {
            Kind::Open | Kind::ForcedOpen => self.attempts.saturating_add(1),
            Kind::HalfOpen => self.attempts,
            _ => 0,
        };
        self.kind = to;
        self.since_ms = now;
        self.generation = self.generation.wrapping_add(1);
        self.probes = Tally::default();
        self.permits_left = if to == Kind::HalfOpen {
            s.half_open_calls.max(1)
        } else {
            0
        };
        self.retry_at_ms = if to == Kind::Open {
            now.saturating_add(s.wait_ms(self.attempts))
        } else {
            0
        };
        Transition {
            from,
            to,
            at_ms: now,
        }
    }

    /// Time-driven transitions: OPEN past its wait -> HALF_OPEN; HALF_OPEN past its limit ->
    /// `after_half_open_wait`. Checked on every call and every tick.
    pub fn advance(&mut self, s: &Settings, now: u64) -> Option<Transition> {
        match self.kind {
            Kind::Open if now > self.retry_at_ms => Some(self.go(Kind::HalfOpen, s, now)),
            Kind::HalfOpen
                if s.half_open_max_wait_ms > 0
                    && now.saturating_sub(self.since_ms) >= s.half_open_max_wait_ms =>
            {
                let to = match s.after_half_open_wait {
                    Kind::Closed => Kind::Closed,
                    _ => Kind::Open,
                };
                Some(self.go(to, s, now))
            }
            _ => None,
        }
    }

    /// A call asks to go to the upstream.
    pub fn permit(&mut self, s: &Settings, now: u64) -> (Permit, Option<Transition>) {
        let t = self.advance(s, now);
        let p = match self.kind {
            Kind::Closed | Kind::Disabled | Kind::MetricsOnly => Permit::Granted {
                generation: self.generation,
                probe: false,
            },
            Kind::Open | Kind::ForcedOpen => Permit::Rejected,
            Kind::HalfOpen if self.permits_left > 0 => {
                self.permits_left -= 1;
                Permit::Granted {
                    generation: self.generation,
                    probe: true,
                }
            }
            Kind::HalfOpen => Permit::Rejected,
        };
        (p, t)
    }

    /// A half-open probe's outcome (`None` = ignored: its permit is given back, as
    /// resilience4j's fix for #544). After `min(min_calls, half_open_calls)` outcomes the
    /// probes close or reopen the breaker. An outcome of another generation is dropped.
    pub fn record(
        &mut self,
        s: &Settings,
        generation: u64,
        outcome: Option<Outcome>,
        now: u64,
    ) -> Option<Transition> {
        if self.kind != Kind::HalfOpen || generation != self.generation {
            return None;
        }
        let Some(o) = outcome else {
            self.permits_left = self.permits_left.saturating_add(1).min(s.half_open_calls);
            return None;
        };
        self.probes.add(&Tally {
            calls: 1,
            failures: u64::from(o.failed),
            slow: u64::from(o.slow),
        });
        let min = s.min_calls.min(u64::from(s.half_open_calls.max(1)));
        if self.probes.calls < min {
            return None;
        }
        let to = if s.exceeded(&self.probes, min) {
            Kind::Open
        } else {
            Kind::Closed
        };
        Some(self.go(to, s, now))
    }

    /// The leader's judgement of the CLOSED window (`min` is the effective minimum: clamped
    /// to a count window's size). METRICS_ONLY judges too but never acts: `Some(true)` tells
    /// the caller to report "would open".
    pub fn judge(&mut self, s: &Settings, window: &Tally, min: u64, now: u64) -> Judged {
        if let Some(t) = self.advance(s, now) {
            return Judged::Moved(t);
        }
        match self.kind {
            Kind::Closed if s.exceeded(window, min) => Judged::Moved(self.go(Kind::Open, s, now)),
            Kind::MetricsOnly if s.exceeded(window, min) => Judged::WouldOpen,
            _ => Judged::Steady,
        }
    }

    /// An operator flag or a reset: DISABLED, METRICS_ONLY, FORCED_OPEN or back to CLOSED.
    /// No transition when already there (resilience4j publishes none for a same-state move).
    pub fn force(&mut self, to: Kind, s: &Settings, now: u64) -> Option<Transition> {
        (self.kind != to).then(|| self.go(to, s, now))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64);
        w.u8(VERSION)
            .u8(self.kind.gauge() as u8)
            .u64(self.since_ms)
            .u32(self.attempts)
            .u64(self.retry_at_ms)
            .u32(self.permits_left)
            .u64(self.probes.calls)
            .u64(self.probes.failures)
            .u64(self.probes.slow)
            .u64(self.generation);
        w.finish()
    }

    pub fn decode(b: &[u8]) -> Option<Breaker> {
        let mut r = Reader::new(b);
        if r.u8()? != VERSION {
            return None;
        }
        let v = Breaker {
            kind: Kind::from_u8(r.u8()?)?,
            since_ms: r.u64()?,
            attempts: r.u32()?,
            retry_at_ms: r.u64()?,
            permits_left: r.u32()?,
            probes: Tally {
                calls: r.u64()?,
                failures: r.u64()?,
                slow: r.u64()?,
            },
            generation: r.u64()?,
        };
        let sane = v.probes.failures <= v.probes.calls && v.probes.slow <= v.probes.calls;
        (sane && r.remaining() == 0).then_some(v)
    }
}

impl sg_core::store::Decode for Breaker {
    fn decode(b: &[u8]) -> Option<Breaker> {
        Breaker::decode(b)
    }
}

/// What `judge` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judged {
    Steady,
    Moved(Transition),
    /// METRICS_ONLY: the thresholds are crossed; reported, not acted on.
    WouldOpen,
}
