//! One way to wait in tests: poll an observable condition until it holds or a deadline
//! passes. Tests never sleep to synchronise; they wait for what they need to see (an Envoy
//! stat, a log line, an upstream counter) with one of these.
//!
//! The poll function returns `Ok(value)` when the condition holds and `Err(last seen)`
//! while it does not; on timeout the panic (or error) names what was awaited and the last
//! value seen.

use std::fmt::Debug;
use std::time::{Duration, Instant};

/// Default pause between polls.
pub const POLL: Duration = Duration::from_millis(20);

/// The condition did not hold within the deadline.
#[derive(Debug, Clone)]
pub struct TimedOut<E> {
    pub what: String,
    pub waited: Duration,
    /// The last value the poll function returned (None if it was never called).
    pub last: Option<E>,
}

impl<E: Debug> std::fmt::Display for TimedOut<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}; last seen: {:?}",
            self.waited, self.what, self.last
        )
    }
}

impl<E: Debug> std::error::Error for TimedOut<E> {}

impl<E: Debug> From<TimedOut<E>> for std::io::Error {
    fn from(t: TimedOut<E>) -> Self {
        std::io::Error::new(std::io::ErrorKind::TimedOut, t.to_string())
    }
}

/// Polls `poll` every `every` until it returns `Ok`, or returns [`TimedOut`] with the last
/// `Err` once `timeout` has passed. The condition is always checked at least once, and once
/// more after the deadline passed.
pub fn try_eventually_every<T, E>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut poll: impl FnMut() -> Result<T, E>,
) -> Result<T, TimedOut<E>> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let past = Instant::now() >= deadline;
        match poll() {
            Ok(v) => return Ok(v),
            Err(last) if past => {
                return Err(TimedOut {
                    what: what.to_string(),
                    waited: start.elapsed(),
                    last: Some(last),
                })
            }
            Err(_) => {}
        }
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(every.min(left.max(Duration::from_millis(1))));
    }
}

/// [`try_eventually_every`] with the default poll interval.
pub fn try_eventually<T, E>(
    what: &str,
    timeout: Duration,
    poll: impl FnMut() -> Result<T, E>,
) -> Result<T, TimedOut<E>> {
    try_eventually_every(what, timeout, POLL, poll)
}

/// Polls `poll` until it returns `Ok(value)` and returns the value; panics after `timeout`
/// naming `what` and the last `Err` value seen.
#[track_caller]
pub fn eventually<T, E: Debug>(
    what: &str,
    timeout: Duration,
    poll: impl FnMut() -> Result<T, E>,
) -> T {
    eventually_every(what, timeout, POLL, poll)
}

/// [`eventually`] polling every `every` (for conditions whose polling has a cost, e.g. a
/// request that itself counts as traffic).
#[track_caller]
pub fn eventually_every<T, E: Debug>(
    what: &str,
    timeout: Duration,
    every: Duration,
    poll: impl FnMut() -> Result<T, E>,
) -> T {
    match try_eventually_every(what, timeout, every, poll) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// Reads `read` until `pred` holds for the value read, and returns that value; panics after
/// `timeout` naming `what` and the last value read.
#[track_caller]
pub fn until<V: Debug>(
    what: &str,
    timeout: Duration,
    mut read: impl FnMut() -> V,
    pred: impl Fn(&V) -> bool,
) -> V {
    eventually(what, timeout, || {
        let v = read();
        if pred(&v) {
            Ok(v)
        } else {
            Err(v)
        }
    })
}

/// Polls `cond` until it is true; panics after `timeout` naming `what`.
#[track_caller]
pub fn until_true(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    eventually(what, timeout, || if cond() { Ok(()) } else { Err(false) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_first_ok_value() {
        let mut n = 0;
        let v = eventually("n reaches 3", Duration::from_secs(5), || {
            n += 1;
            if n >= 3 {
                Ok(n)
            } else {
                Err(n)
            }
        });
        assert_eq!(v, 3);
    }

    #[test]
    fn times_out_naming_what_and_the_last_value() {
        let mut n = 0;
        let e = try_eventually("never", Duration::from_millis(50), || {
            n += 1;
            Err::<(), _>(n)
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("waiting for never"), "{e}");
        assert!(e.contains(&format!("Some({n})")), "{e}");
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible; last seen: Some(7)")]
    fn until_panics_with_the_last_reading() {
        until(
            "the impossible",
            Duration::from_millis(30),
            || 7,
            |v| *v > 7,
        );
    }
}
