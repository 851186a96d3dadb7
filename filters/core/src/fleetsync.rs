//! The fleet sync's call side ([11/11]), shared by every filter with fleet-scoped rules: the
//! lease holder calls [`Client::tick`] on its tick and [`Client::on_response`] with each
//! HTTP-call answer. The client loads the script once (`SCRIPT LOAD`), then sends one
//! `EVALSHA` per sync period with what the filter's [`Side`] collected, keeps a failed
//! sync's deltas for the next one (nothing counted is lost), reloads the script when Redis
//! restarted empty, and tracks [`Health`]: one fallback (counted, one warning) per outage and
//! a recovery when the engine answers again. What the deltas are and what a reply does is
//! the filter's ([`Side`]). No call is ever made on a request's path.

use crate::fleet::{self, Change, Deltas, FleetConfig, Health, Reply, SyncError};
use crate::host::{Call, Host};
use crate::keys::FL_ENVOY;
use std::hash::{BuildHasher, Hash, Hasher};

crate::metrics! {
    /// The sync's own metrics, `sg.<filter>.fleet_*` (declared with the filter's prefix).
    pub struct FleetMetrics {
        fleet_sync_ok: Counter = "fleet_sync_ok", "fleet syncs answered by Redis (through webdis)";
        fleet_sync_failed: Counter = "fleet_sync_failed", "fleet syncs that failed or timed out (their deltas go with the next one)";
        fleet_fallback: Counter = "fleet_fallback", "times the fleet sync was lost and fleet rules fell back to local decisions";
        fleet_recovered: Counter = "fleet_recovered", "times the fleet sync came back after a fallback";
        fleet_keys_dropped: Counter = "fleet_keys_dropped", "counts a sync could not report per key (key cap reached, or evicted from a full slot)";
        fleet_synced: Gauge = "fleet_synced", "1 while this Envoy's fleet sync is healthy (the lease holder's view)";
    }
}

/// What a filter syncs: its deltas out, the fleet's answer in.
pub trait Side<H: Host + ?Sized> {
    /// What to report now (a sync is due). Keys that did not fit go to
    /// `m.fleet_keys_dropped` (the client adds the report's own `dropped`).
    fn collect(&mut self, host: &H, max_keys: usize, m: &FleetMetrics) -> Deltas;
    /// The fleet's answer to the report `sent`, received at `now` (this Envoy's clock).
    fn apply(&mut self, host: &H, reply: &Reply, sent: &Deltas, now: u64);
    /// Whether a failed sync's report goes with the next one (default: yes, nothing counted
    /// is lost). A side whose counts are only worth their window (hot keys) says no: late
    /// counts would be added to a later window and inflate it.
    fn resend_failed(&self) -> bool {
        true
    }
    /// The sync was lost: switch every fleet rule to its local decision; returns what that
    /// is, for the one warning.
    fn fell_back(&mut self, host: &H) -> String;
}

/// One sync's context: the filter (log lines), its `fleet` config and metrics.
#[derive(Clone, Copy)]
pub struct Link<'a> {
    pub filter: &'a str,
    pub cfg: &'a FleetConfig,
    pub m: &'a FleetMetrics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Load,
    Sync,
}

#[derive(Debug)]
struct InFlight {
    token: u32,
    kind: Kind,
    sent_ms: u64,
    /// A sync's body, kept to be sent again if the call fails.
    deltas: Deltas,
}

/// The lease holder's sync state.
#[derive(Debug, Default)]
pub struct Client {
    health: Option<Health>,
    sha: Option<String>,
    call: Option<InFlight>,
    /// What failed syncs carried, sent with the next one.
    carry: Option<Deltas>,
    next_ms: u64,
    envoy: Option<String>,
}

/// This Envoy's name in the fleet's per-Envoy traffic (the share): Envoy's node id and a
/// random part, chosen once per Envoy by the first holder of any filter (`sg:fl:envoy`), so
/// a lease that moves between workers keeps it and two Envoys with one node id do not merge.
pub fn envoy_name<H: Host + ?Sized>(host: &H) -> Option<String> {
    let read = |host: &H| {
        host.get(FL_ENVOY)
            .ok()
            .and_then(|v| v.value)
            .filter(|b| !b.is_empty())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    if let Some(name) = read(host) {
        return Some(name);
    }
    let cas = host.get(FL_ENVOY).ok().map_or(0, |v| v.cas);
    let node: String = host
        .property(&["node", "id"])
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    let mut h = std::hash::DefaultHasher::new();
    host.now_ms().hash(&mut h);
    let random = std::hash::RandomState::new().hash_one(h.finish());
    // Two first holders racing: the CAS lets one win, and both read the winner's.
    let _ = host.set(FL_ENVOY, format!("{node}-{random:016x}").as_bytes(), cas);
    read(host)
}

fn why(e: &SyncError, status: u32) -> String {
    match e {
        SyncError::Timeout => "timeout".into(),
        SyncError::Status(0) => "no answer (timeout or connection refused)".into(),
        SyncError::Status(s) => format!("webdis answered {s}"),
        SyncError::Redis(r) => format!("Redis answered an error: {r}"),
        SyncError::Malformed(why) => format!("answer not understood ({status}): {why}"),
        SyncError::NoScript => "NOSCRIPT".into(),
    }
}

impl Client {
    /// True while the engine answers (the holder's view).
    pub fn synced(&self) -> bool {
        self.health.as_ref().is_some_and(Health::synced)
    }

    /// The holder's tick: notices a lost engine, forgets a call Envoy never answered, and
    /// starts the next sync when one is due and none is in flight.
    pub fn tick<H: Host + ?Sized, S: Side<H>>(&mut self, host: &H, l: Link, side: &mut S) {
        let now = host.now_ms();
        let health = self.health.get_or_insert_with(|| Health::new(now));
        if health.check(now, l.cfg) == Change::FellBack {
            self.fell_back(host, l, side, "no sync answer in time");
        }
        if let Some(c) = self.call.as_ref() {
            if now.saturating_sub(c.sent_ms) > l.cfg.timeout_ms + l.cfg.sync_ms {
                if let Some(c) = self.call.take() {
                    self.failed(host, l, side, c, "the call was never answered");
                }
            }
        }
        if self.call.is_some() || now < self.next_ms {
            return;
        }
        self.next_ms = now.saturating_add(l.cfg.sync_ms);
        if self.envoy.is_none() {
            self.envoy = envoy_name(host);
        }
        let Some(envoy) = self.envoy.as_deref() else {
            return;
        };
        if let Some(sha) = self.sha.as_deref() {
            let mut d = side.collect(host, l.cfg.max_keys, l.m);
            if let Some(c) = self.carry.take() {
                d.merge(c);
            }
            l.m.fleet_keys_dropped.add(std::mem::take(&mut d.dropped));
            let body = d.body(envoy);
            let path = fleet::sync_path(sha);
            self.dispatch(host, l, side, Kind::Sync, "PUT", &path, &body, d);
        } else {
            let body = fleet::load_body();
            self.dispatch(
                host,
                l,
                side,
                Kind::Load,
                "POST",
                "/",
                &body,
                Deltas::new(0),
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch<H: Host + ?Sized, S: Side<H>>(
        &mut self,
        host: &H,
        l: Link,
        side: &mut S,
        kind: Kind,
        method: &str,
        path: &str,
        body: &[u8],
        deltas: Deltas,
    ) {
        let call = Call {
            cluster: &l.cfg.cluster,
            headers: vec![
                (":method", method),
                (":path", path),
                (":authority", l.cfg.authority.as_str()),
            ],
            body: Some(body),
            timeout_ms: l.cfg.timeout_ms,
        };
        let token = host.dispatch(&call);
        let c = InFlight {
            token: token.unwrap_or(0),
            kind,
            sent_ms: host.now_ms(),
            deltas,
        };
        if token.is_some() {
            self.call = Some(c);
        } else {
            let why = "dispatch_http_call refused (unknown cluster?)";
            self.failed(host, l, side, c, why);
        }
    }

    fn failed<H: Host + ?Sized, S: Side<H>>(
        &mut self,
        host: &H,
        l: Link,
        side: &mut S,
        c: InFlight,
        why: &str,
    ) {
        l.m.fleet_sync_failed.inc();
        if c.kind == Kind::Sync && side.resend_failed() {
            // Sent again with the next sync (the body already holds earlier carries).
            self.carry = Some(c.deltas);
        }
        let now = host.now_ms();
        let health = self.health.get_or_insert_with(|| Health::new(now));
        if health.failed(now) == Change::FellBack {
            self.fell_back(host, l, side, why);
        } else {
            log::debug!("{}: fleet sync failed: {why}", l.filter);
        }
    }

    /// Once per outage: counted, one warning, the side switched to local decisions.
    fn fell_back<H: Host + ?Sized, S: Side<H>>(&self, host: &H, l: Link, side: &mut S, why: &str) {
        l.m.fleet_fallback.inc();
        l.m.fleet_synced.set(0);
        let local = side.fell_back(host);
        log::warn!(
            "{}: fleet sync lost ({why}): {local} until the engine answers again",
            l.filter
        );
    }

    /// An HTTP-call answer. False when the token is not this client's call.
    pub fn on_response<H: Host + ?Sized, S: Side<H>>(
        &mut self,
        host: &H,
        l: Link,
        token: u32,
        body_size: usize,
        side: &mut S,
    ) -> bool {
        if self.call.as_ref().is_none_or(|c| c.token != token) {
            return false;
        }
        let Some(c) = self.call.take() else {
            return false;
        };
        let status: u32 = host
            .call_response_headers()
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body = host.call_response_body(body_size);
        let now = host.now_ms();
        match c.kind {
            Kind::Load => match fleet::decode_load(status, &body) {
                Ok(sha) => {
                    log::info!("{}: fleet sync script loaded ({sha})", l.filter);
                    self.sha = Some(sha);
                    // Sync at the next tick.
                    self.next_ms = now;
                }
                Err(e) => self.failed(host, l, side, c, &why(&e, status)),
            },
            Kind::Sync => match fleet::decode(status, &body) {
                Ok(reply) => {
                    l.m.fleet_sync_ok.inc();
                    side.apply(host, &reply, &c.deltas, now);
                    let change = self.health.get_or_insert_with(|| Health::new(now)).ok(now);
                    l.m.fleet_synced.set(1);
                    match change {
                        Change::Recovered => {
                            l.m.fleet_recovered.inc();
                            log::warn!("{}: fleet sync recovered: fleet rules again", l.filter);
                        }
                        Change::Joined => log::info!("{}: fleet sync joined", l.filter),
                        _ => {}
                    }
                }
                Err(SyncError::NoScript) => {
                    // Redis restarted empty: the script ran nowhere; load it and send the
                    // same deltas again at once.
                    log::info!(
                        "{}: fleet sync script missing in Redis: loading it",
                        l.filter
                    );
                    self.sha = None;
                    self.carry = Some(c.deltas);
                    self.next_ms = now;
                }
                Err(e) => self.failed(host, l, side, c, &why(&e, status)),
            },
        }
        true
    }
}
