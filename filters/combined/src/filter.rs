//! `Combined`: the five parts as one `Plugin`, with the semantics of the same filters in an
//! Envoy filter chain, in `config::PARTS` order:
//! - request headers go through the parts forwards; a part that answers with a local reply
//!   ends the request for the parts after it; a part that pauses the request (ratelimit's
//!   delay, simplepage's wait for a cache fill, breaker's bulkhead queue) holds it here, and
//!   when that part resumes it (from its tick) the parts after it run first, then Envoy
//!   continues (or one of them answers or pauses it again);
//! - response headers and body go through the parts that saw the request, backwards; a part
//!   that pauses response headers or body holds them from the parts before it until it lets
//!   them go, as Envoy's encoder chain does; `on_log` and the stream's end reach every part;
//! - one root tick at the greatest common divisor of the parts' periods runs each part's tick
//!   at its own period; HTTP-call answers go back to the part that made the call.

use crate::config::{sections, N, PARTS};
use crate::part::{Effects, Part, Reads};
use sg_core::host::{Flow, Host, Plugin};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

type Sli = sg_sli::filter::Filter;
type Hotkey = sg_hotkey::filter::Filter;
type Simplepage = sg_simplepage::filter::Filter;
type Ratelimit = sg_ratelimit::filter::Filter;
type Breaker = sg_breaker::filter::Filter;

/// At most this many HTTP calls in flight are routed back (a part's call beyond it is
/// answered to nobody; the parts make a few per tick).
const MAX_CALLS: usize = 4096;

/// Runs `$body` with `$f` the enabled part `$i` and `$s` its field of `$st`; None when the
/// part is off. `$st` is the parts' streams or periodics (fields named as the parts).
macro_rules! at {
    ($this:expr, $st:expr, $i:expr, |$f:ident, $s:ident| $body:expr) => {
        match $i {
            0 => $this.sli.as_ref().map(|$f| {
                let $s = &mut $st.sli;
                $body
            }),
            1 => $this.hotkey.as_ref().map(|$f| {
                let $s = &mut $st.hotkey;
                $body
            }),
            2 => $this.simplepage.as_ref().map(|$f| {
                let $s = &mut $st.simplepage;
                $body
            }),
            3 => $this.ratelimit.as_ref().map(|$f| {
                let $s = &mut $st.ratelimit;
                $body
            }),
            4 => $this.breaker.as_ref().map(|$f| {
                let $s = &mut $st.breaker;
                $body
            }),
            _ => None,
        }
    };
}

/// One value of each part's type `T` (its stream, or its periodic state).
pub struct Each<A, B, C, D, E> {
    sli: A,
    hotkey: B,
    simplepage: C,
    ratelimit: D,
    breaker: E,
}

pub type Streams = Each<
    <Sli as Plugin>::Stream,
    <Hotkey as Plugin>::Stream,
    <Simplepage as Plugin>::Stream,
    <Ratelimit as Plugin>::Stream,
    <Breaker as Plugin>::Stream,
>;

type Periodics = Each<
    Option<<Sli as Plugin>::Periodic>,
    Option<<Hotkey as Plugin>::Periodic>,
    Option<<Simplepage as Plugin>::Periodic>,
    Option<<Ratelimit as Plugin>::Periodic>,
    Option<<Breaker as Plugin>::Periodic>,
>;

/// One stream through the parts.
pub struct StreamState {
    id: u32,
    parts: Streams,
    /// How many parts its request headers reached (the response goes through those).
    reached: usize,
    /// The part that paused the request, while it is held here.
    waiting_at: Option<usize>,
    /// Response headers are held by this part from the parts before it.
    headers_held_at: Option<usize>,
    /// Whether response headers were seen with end of stream.
    headers_eos: bool,
}

/// The combined stream (shared with the plugin while the request waits in it).
pub struct Stream(Rc<RefCell<StreamState>>);

/// The root context's state: each part's, and the tick schedule.
pub struct Periodic {
    parts: Periodics,
    /// The root tick, in ms (0: none).
    tick_ms: u64,
    /// Each part's tick period in ms (0: none).
    periods: [u64; N],
    ticks: u64,
}

pub struct Combined {
    sli: Option<Sli>,
    hotkey: Option<Hotkey>,
    simplepage: Option<Simplepage>,
    ratelimit: Option<Ratelimit>,
    breaker: Option<Breaker>,
    /// Requests paused by a part that is not the last, by context id.
    waiting: RefCell<HashMap<u32, Rc<RefCell<StreamState>>>>,
    /// The part that dispatched each HTTP call in flight, by token.
    calls: RefCell<HashMap<u32, usize>>,
}

/// How a request's run through the parts ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Through every part: Envoy continues.
    Through,
    /// A part answered it.
    Replied,
    /// Part `i` paused it.
    Waiting(usize),
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Configures one part from its section: None when the part is off; Err when its section
/// was refused (the part logged the field).
fn part<P: Plugin, H: Host + ?Sized>(
    host: &H,
    section: Option<&[u8]>,
    period: &mut u64,
    calls: &mut Vec<u32>,
) -> Result<Option<(P, P::Periodic)>, ()> {
    let Some(section) = section else {
        return Ok(None);
    };
    let reads = Reads::default();
    let fx = Effects::default();
    let got = P::configure(&Part::new(host, &reads, &fx).with_section(section)).ok_or(())?;
    *period = fx.tick_ms.get();
    calls.extend(fx.calls.take());
    Ok(Some(got))
}

impl Combined {
    fn note_calls(&self, fx: &Effects, i: usize) {
        let tokens = fx.calls.take();
        if tokens.is_empty() {
            return;
        }
        if let Ok(mut calls) = self.calls.try_borrow_mut() {
            for t in tokens {
                if calls.len() < MAX_CALLS {
                    calls.insert(t, i);
                }
            }
        }
    }

    /// Runs the request through parts `from..` with `host` acting on the stream.
    fn run<H: Host + ?Sized>(&self, host: &H, st: &mut StreamState, from: usize) -> Stop {
        let reads = Reads::default();
        for i in from..N {
            let fx = Effects::default();
            let p = Part::new(host, &reads, &fx);
            let Some(flow) = at!(self, st.parts, i, |f, s| f.on_request(&p, s)) else {
                continue;
            };
            st.reached = i + 1;
            self.note_calls(&fx, i);
            if flow == Flow::Pause {
                return if fx.replied.get() {
                    Stop::Replied
                } else {
                    Stop::Waiting(i)
                };
            }
        }
        Stop::Through
    }

    fn hold(&self, s: &Rc<RefCell<StreamState>>, id: u32, at: usize) {
        if let Ok(mut st) = s.try_borrow_mut() {
            st.waiting_at = Some(at);
        }
        if let Ok(mut w) = self.waiting.try_borrow_mut() {
            w.insert(id, s.clone());
        }
    }

    /// Part `i`'s tick, then the held requests it resumed: each goes through the parts after
    /// `i` (acting on that stream), and Envoy resumes it if they all let it through.
    fn tick_part<H: Host + ?Sized>(&self, host: &H, p: &mut Periodic, i: usize) {
        let reads = Reads::default();
        let fx = Effects::default();
        let held = |id: u32| {
            self.waiting
                .try_borrow()
                .map(|w| {
                    w.get(&id).is_some_and(|s| {
                        s.try_borrow()
                            .map(|s| s.waiting_at == Some(i))
                            .unwrap_or(false)
                    })
                })
                .unwrap_or(false)
        };
        let part = Part::new(host, &reads, &fx).with_held(&held);
        let ran = at!(self, p.parts, i, |f, s| {
            if let Some(s) = s.as_mut() {
                f.on_tick(&part, s);
            }
        });
        if ran.is_none() {
            return;
        }
        self.note_calls(&fx, i);
        if fx.tick_ms.get() != 0 {
            self.reschedule(host, p, i, fx.tick_ms.get());
        }
        for id in fx.resumed.take() {
            let Some(s) = self
                .waiting
                .try_borrow_mut()
                .ok()
                .and_then(|mut w| w.remove(&id))
            else {
                continue;
            };
            if !host.enter(id) {
                continue;
            }
            let Ok(mut st) = s.try_borrow_mut() else {
                // Not reachable (nothing else holds it during a tick): let Envoy go on.
                host.resume(id);
                continue;
            };
            st.waiting_at = None;
            match self.run(host, &mut st, i + 1) {
                Stop::Through => {
                    host.resume(id);
                }
                Stop::Replied => {}
                Stop::Waiting(j) => {
                    drop(st);
                    self.hold(&s, id, j);
                }
            }
        }
    }

    /// Part `i` asks for a tick every `ms`: the root tick becomes the periods' gcd.
    fn reschedule<H: Host + ?Sized>(&self, host: &H, p: &mut Periodic, i: usize, ms: u64) {
        if let Some(slot) = p.periods.get_mut(i) {
            *slot = ms;
        }
        let g = p.periods.iter().fold(0, |g, &ms| gcd(g, ms));
        if g != p.tick_ms {
            p.tick_ms = g;
            p.ticks = 0;
            if g > 0 && !host.set_tick_period_ms(g) {
                log::warn!("combined: could not set the tick period; parts will not tick");
            }
        }
    }
}

impl Plugin for Combined {
    type Stream = Stream;
    type Periodic = Periodic;

    fn configure<H: Host + ?Sized>(host: &H) -> Option<(Combined, Periodic)> {
        let secs = match sections(&host.plugin_config()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("combined: {e}");
                return None;
            }
        };
        let sec = |i: usize| secs.get(i).and_then(|s| s.as_deref());
        let mut periods = [0u64; N];
        let mut calls = Vec::new();
        let [p0, p1, p2, p3, p4] = &mut periods;
        let sli = part::<Sli, H>(host, sec(0), p0, &mut calls).ok()?;
        let hotkey = part::<Hotkey, H>(host, sec(1), p1, &mut calls).ok()?;
        let simplepage = part::<Simplepage, H>(host, sec(2), p2, &mut calls).ok()?;
        let ratelimit = part::<Ratelimit, H>(host, sec(3), p3, &mut calls).ok()?;
        let breaker = part::<Breaker, H>(host, sec(4), p4, &mut calls).ok()?;
        let (sli, sli_p) = sli.map_or((None, None), |(f, p)| (Some(f), Some(p)));
        let (hotkey, hotkey_p) = hotkey.map_or((None, None), |(f, p)| (Some(f), Some(p)));
        let (simplepage, simplepage_p) =
            simplepage.map_or((None, None), |(f, p)| (Some(f), Some(p)));
        let (ratelimit, ratelimit_p) = ratelimit.map_or((None, None), |(f, p)| (Some(f), Some(p)));
        let (breaker, breaker_p) = breaker.map_or((None, None), |(f, p)| (Some(f), Some(p)));
        let c = Combined {
            sli,
            hotkey,
            simplepage,
            ratelimit,
            breaker,
            waiting: RefCell::default(),
            calls: RefCell::default(),
        };
        // A part that dispatched a call while configuring is not routed its answer (none do).
        drop(calls);
        let mut p = Periodic {
            parts: Each {
                sli: sli_p,
                hotkey: hotkey_p,
                simplepage: simplepage_p,
                ratelimit: ratelimit_p,
                breaker: breaker_p,
            },
            tick_ms: 0,
            periods: [0; N],
            ticks: 0,
        };
        for (i, ms) in periods.iter().enumerate() {
            if *ms > 0 {
                c.reschedule(host, &mut p, i, *ms);
            }
        }
        let on: Vec<&str> = PARTS
            .iter()
            .enumerate()
            .filter(|(i, _)| sec(*i).is_some())
            .map(|(_, n)| *n)
            .collect();
        log::info!(
            "combined: configured {} (tick {} ms)",
            on.join(", "),
            p.tick_ms
        );
        Some((c, p))
    }

    fn stream(id: u32) -> Stream {
        Stream(Rc::new(RefCell::new(StreamState {
            id,
            parts: Each {
                sli: Sli::stream(id),
                hotkey: Hotkey::stream(id),
                simplepage: Simplepage::stream(id),
                ratelimit: Ratelimit::stream(id),
                breaker: Breaker::stream(id),
            },
            reached: 0,
            waiting_at: None,
            headers_held_at: None,
            headers_eos: false,
        })))
    }

    fn flush<H: Host + ?Sized>(&self, host: &H) {
        let reads = Reads::default();
        let fx = Effects::default();
        let p = Part::new(host, &reads, &fx);
        let mut unit = Each {
            sli: (),
            hotkey: (),
            simplepage: (),
            ratelimit: (),
            breaker: (),
        };
        for i in 0..N {
            at!(self, unit, i, |f, _s| f.flush(&p));
        }
    }

    fn on_tick<H: Host + ?Sized>(&self, host: &H, p: &mut Periodic) {
        p.ticks = p.ticks.wrapping_add(1);
        let g = p.tick_ms.max(1);
        for i in 0..N {
            let every = p.periods.get(i).copied().unwrap_or(0) / g;
            if every > 0 && p.ticks.is_multiple_of(every) {
                self.tick_part(host, p, i);
            }
        }
    }

    fn on_call_response<H: Host + ?Sized>(
        &self,
        host: &H,
        p: &mut Periodic,
        token: u32,
        body_size: usize,
    ) {
        let Some(i) = self
            .calls
            .try_borrow_mut()
            .ok()
            .and_then(|mut c| c.remove(&token))
        else {
            return;
        };
        let reads = Reads::default();
        let fx = Effects::default();
        let part = Part::new(host, &reads, &fx);
        at!(self, p.parts, i, |f, s| {
            if let Some(s) = s.as_mut() {
                f.on_call_response(&part, s, token, body_size);
            }
        });
        self.note_calls(&fx, i);
    }

    fn on_request<H: Host + ?Sized>(&self, host: &H, s: &mut Stream) -> Flow {
        let Ok(mut st) = s.0.try_borrow_mut() else {
            return Flow::Continue;
        };
        let id = st.id;
        match self.run(host, &mut st, 0) {
            Stop::Through => Flow::Continue,
            Stop::Replied => Flow::Pause,
            Stop::Waiting(i) => {
                drop(st);
                self.hold(&s.0, id, i);
                Flow::Pause
            }
        }
    }

    fn on_response_headers<H: Host + ?Sized>(&self, host: &H, s: &mut Stream, eos: bool) -> Flow {
        let Ok(mut st) = s.0.try_borrow_mut() else {
            return Flow::Continue;
        };
        st.headers_eos = eos;
        let reads = Reads::default();
        for i in (0..st.reached).rev() {
            let fx = Effects::default();
            let p = Part::new(host, &reads, &fx);
            let flow = at!(self, st.parts, i, |f, s| f.on_response_headers(&p, s, eos));
            self.note_calls(&fx, i);
            if flow == Some(Flow::Pause) {
                st.headers_held_at = Some(i);
                return Flow::Pause;
            }
        }
        Flow::Continue
    }

    fn on_response_body<H: Host + ?Sized>(
        &self,
        host: &H,
        s: &mut Stream,
        body_size: usize,
        eos: bool,
    ) -> Flow {
        let Ok(mut st) = s.0.try_borrow_mut() else {
            return Flow::Continue;
        };
        let reads = Reads::default();
        for i in (0..st.reached).rev() {
            // Parts before the one that held the response headers get them first.
            if st.headers_held_at.is_some_and(|h| i < h) {
                let fx = Effects::default();
                let p = Part::new(host, &reads, &fx);
                let he = st.headers_eos;
                let flow = at!(self, st.parts, i, |f, s| f.on_response_headers(&p, s, he));
                self.note_calls(&fx, i);
                st.headers_held_at = Some(i);
                if flow == Some(Flow::Pause) {
                    return Flow::Pause;
                }
            }
            let fx = Effects::default();
            let p = Part::new(host, &reads, &fx);
            let flow = at!(self, st.parts, i, |f, s| f
                .on_response_body(&p, s, body_size, eos));
            self.note_calls(&fx, i);
            if flow == Some(Flow::Pause) {
                return Flow::Pause;
            }
        }
        st.headers_held_at = None;
        Flow::Continue
    }

    fn on_log<H: Host + ?Sized>(&self, host: &H, s: &mut Stream) {
        let Ok(mut st) = s.0.try_borrow_mut() else {
            return;
        };
        let reads = Reads::default();
        for i in 0..N {
            let fx = Effects::default();
            let p = Part::new(host, &reads, &fx);
            at!(self, st.parts, i, |f, s| f.on_log(&p, s));
            self.note_calls(&fx, i);
        }
    }

    fn on_done(&self, s: &mut Stream) {
        let Ok(mut st) = s.0.try_borrow_mut() else {
            return;
        };
        if st.waiting_at.take().is_some() {
            if let Ok(mut w) = self.waiting.try_borrow_mut() {
                w.remove(&st.id);
            }
        }
        for i in 0..N {
            at!(self, st.parts, i, |f, s| f.on_done(s));
        }
    }
}
