//! Fleet-scoped rules' periodic side ([11/11]): every worker adds the requests it saw to
//! `sg:fl:<rule>:n` and reads each rule's sync state (`sg:fl:<rule>:m`) on its tick; the
//! holder of the `ratelimit-fleet` lease syncs with Redis through webdis once per
//! `fleet.sync_ms` (one `dispatch_http_call`, never on a request's path): it takes what every
//! slot admitted since the last sync, sends it with `EVALSHA`, and writes the answer back into
//! the slots (allowances) and the rule's state (share, Redis' clock, healthy or not).
//! The request path is in `engine` (`FleetCtx`); the pure state in `sg_core::fleetslot`.

use crate::config::{FleetConfig, Plan};
use crate::filter::{FilterMetrics, FILTER};
use sg_core::fleet::{self, Change, Deltas, Health, SyncError};
use sg_core::fleetslot::{self, parse_wire_key, wire_key, Meta};
use sg_core::hash::slot_of;
use sg_core::host::{Call, Host};
use sg_core::keys::{fl_meta, fl_seen, fl_slot, FL_ENVOY, RL_FLEET_TASK};
use sg_core::lease::Leadership;
use sg_core::shared::{update, SharedStore, Step, Update};
use std::cell::{Cell, RefCell};

/// A holder's answer older than this is not trusted by the workers: the `Health` staleness
/// (2 periods + the timeout) plus one tick for the workers' own reading.
pub fn stale_ms(cfg: &FleetConfig, tick_ms: u64) -> u64 {
    2 * cfg.sync_ms + cfg.timeout_ms + tick_ms
}

/// The tick of a filter with fleet rules: at most a tenth of the sync period (so the sync
/// starts within 10% of it), at least 10 ms.
pub fn tick_ms(cfg: &FleetConfig) -> u64 {
    (cfg.sync_ms / 10).max(10)
}

/// Every worker's part: the requests it saw per fleet rule since its last tick, and the
/// rules' sync state as it last read it.
#[derive(Debug, Default)]
pub struct Worker {
    pub seen: Vec<Cell<u64>>,
    pub metas: RefCell<Vec<Option<Meta>>>,
}

impl Worker {
    pub fn new(plan: &Plan) -> Worker {
        Worker {
            seen: plan.rules.iter().map(|_| Cell::new(0)).collect(),
            metas: RefCell::new(plan.rules.iter().map(|_| None).collect()),
        }
    }

    pub fn saw(&self, idx: usize) {
        if let Some(c) = self.seen.get(idx) {
            c.set(c.get().saturating_add(1));
        }
    }

    /// Tick, every worker: add this worker's seen counts to shared data, then read each fleet
    /// rule's state. A failed add keeps the count for the next tick (nothing counted is lost).
    pub fn tick<S: SharedStore + ?Sized>(&self, store: &S, plan: &Plan) {
        let Ok(mut metas) = self.metas.try_borrow_mut() else {
            return;
        };
        for (idx, rule) in plan.rules.iter().enumerate() {
            if rule.fleet.is_none() {
                continue;
            }
            if let Some(c) = self.seen.get(idx) {
                let n = c.get();
                if n > 0 {
                    let r = update(store, &fl_seen(&rule.name), plan.cas_attempts, |cur| {
                        let total = fleetslot::decode_count(cur).saturating_add(n);
                        Step::Write(fleetslot::encode_count(total), ())
                    });
                    if matches!(r, Update::Done { .. }) {
                        c.set(c.get().saturating_sub(n));
                    }
                }
            }
            if let Some(m) = metas.get_mut(idx) {
                *m = store
                    .get(&fl_meta(&rule.name))
                    .ok()
                    .and_then(|v| v.value)
                    .and_then(|b| Meta::decode(&b));
            }
        }
    }
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

/// The sync (root context; only the lease holder's does anything).
#[derive(Debug, Default)]
pub struct Sync {
    lead: Leadership,
    health: Option<Health>,
    sha: Option<String>,
    call: Option<InFlight>,
    /// What failed syncs carried, sent with the next one.
    carry: Option<Deltas>,
    next_ms: u64,
    envoy: Option<String>,
}

/// This Envoy's name in the fleet's per-Envoy traffic (the share): Envoy's node id and a
/// random part, chosen once per Envoy by the first holder (`sg:fl:envoy`), so a lease that
/// moves between workers keeps it and two Envoys with one node id do not merge.
fn envoy_name<H: Host + ?Sized>(host: &H) -> Option<String> {
    if let Ok(v) = host.get(FL_ENVOY) {
        if let Some(b) = v.value.filter(|b| !b.is_empty()) {
            return Some(String::from_utf8_lossy(&b).into_owned());
        }
        let node = host.property(&["node", "id"]).unwrap_or_default();
        let node: String = node
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&host.now_ms(), &mut h);
        let random = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), h.finish());
        let name = format!("{node}-{random:016x}");
        let _ = host.set(FL_ENVOY, name.as_bytes(), v.cas);
    }
    host.get(FL_ENVOY)
        .ok()
        .and_then(|v| v.value)
        .filter(|b| !b.is_empty())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

use std::hash::Hasher;

impl Sync {
    /// On every tick of every worker: only the lease holder syncs.
    pub fn tick<H: Host + ?Sized>(&mut self, host: &H, plan: &Plan, tick: u64, m: &FilterMetrics) {
        let Some(cfg) = plan.fleet.as_ref() else {
            return;
        };
        let now = host.now_ms();
        if self
            .lead
            .tick(host, RL_FLEET_TASK, now, tick.saturating_mul(3))
            .is_none()
        {
            return;
        }
        let health = self.health.get_or_insert_with(|| Health::new(now));
        if health.check(now, cfg) == Change::FellBack {
            self.fell_back(host, plan, m, "no sync answer in time");
        }
        // A call Envoy never answered (its timeout should have): forgotten, its deltas kept.
        if let Some(c) = self.call.as_ref() {
            if now.saturating_sub(c.sent_ms) > cfg.timeout_ms + cfg.sync_ms {
                if let Some(c) = self.call.take() {
                    self.failed(host, plan, m, c, "the call was never answered");
                }
            }
        }
        if self.call.is_some() || now < self.next_ms {
            return;
        }
        self.next_ms = now.saturating_add(cfg.sync_ms);
        if self.envoy.is_none() {
            self.envoy = envoy_name(host);
        }
        let Some(envoy) = self.envoy.clone() else {
            return;
        };
        let Some(sha) = self.sha.clone() else {
            let body = fleet::load_body();
            self.dispatch(
                host,
                cfg,
                Kind::Load,
                "POST",
                "/",
                &body,
                Deltas::new(0),
                m,
                plan,
            );
            return;
        };
        let deltas = self.collect(host, plan, cfg, m);
        let body = deltas.body(&envoy);
        let path = fleet::sync_path(&sha);
        self.dispatch(host, cfg, Kind::Sync, "PUT", &path, &body, deltas, m, plan);
    }

    /// Takes what every fleet rule's slots and seen counter hold since the last sync, with
    /// what failed syncs carried.
    fn collect<H: Host + ?Sized>(
        &mut self,
        host: &H,
        plan: &Plan,
        cfg: &FleetConfig,
        m: &FilterMetrics,
    ) -> Deltas {
        let mut d = Deltas::new(cfg.max_keys);
        for rule in &plan.rules {
            let Some(b) = rule.fleet else {
                continue;
            };
            d.touch_limit(&rule.name, b.window_ms);
            let r = update(host, &fl_seen(&rule.name), plan.cas_attempts, |cur| {
                match fleetslot::decode_count(cur) {
                    0 => Step::Keep(0),
                    n => Step::Write(fleetslot::encode_count(0), n),
                }
            });
            if let Update::Done { result: n, .. } = r {
                d.limit_n(&rule.name, b.window_ms, n, None);
            }
            for slot in 0..rule.sets {
                let r = update(host, &fl_slot(&rule.name, slot), plan.cas_attempts, |cur| {
                    let Some(mut s) = cur.and_then(fleetslot::Slot::decode) else {
                        return Step::Keep(None);
                    };
                    match s.take() {
                        Some(t) => Step::Write(s.encode(), Some(t)),
                        None => Step::Keep(None),
                    }
                });
                if let Update::Done {
                    result: Some((keys, dropped)),
                    ..
                } = r
                {
                    m.fleet_keys_dropped.add(dropped);
                    for (fp, n) in keys {
                        d.limit_n(
                            &rule.name,
                            b.window_ms,
                            0,
                            Some((&wire_key(fp), u64::from(n))),
                        );
                    }
                }
            }
        }
        if let Some(c) = self.carry.take() {
            d.merge(c);
        }
        m.fleet_keys_dropped.add(std::mem::take(&mut d.dropped));
        d
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch<H: Host + ?Sized>(
        &mut self,
        host: &H,
        cfg: &FleetConfig,
        kind: Kind,
        method: &str,
        path: &str,
        body: &[u8],
        deltas: Deltas,
        m: &FilterMetrics,
        plan: &Plan,
    ) {
        let call = Call {
            cluster: &cfg.cluster,
            headers: vec![
                (":method", method),
                (":path", path),
                (":authority", cfg.authority.as_str()),
            ],
            body: Some(body),
            timeout_ms: cfg.timeout_ms,
        };
        let now = host.now_ms();
        match host.dispatch(&call) {
            Some(token) => {
                self.call = Some(InFlight {
                    token,
                    kind,
                    sent_ms: now,
                    deltas,
                });
            }
            None => {
                let c = InFlight {
                    token: 0,
                    kind,
                    sent_ms: now,
                    deltas,
                };
                self.failed(
                    host,
                    plan,
                    m,
                    c,
                    "dispatch_http_call refused (unknown cluster?)",
                );
            }
        }
    }

    fn failed<H: Host + ?Sized>(
        &mut self,
        host: &H,
        plan: &Plan,
        m: &FilterMetrics,
        c: InFlight,
        why: &str,
    ) {
        m.fleet_sync_failed.inc();
        if c.kind == Kind::Sync {
            // Sent again with the next sync (the body already holds earlier carries).
            self.carry = Some(c.deltas);
        }
        let now = host.now_ms();
        let change = self
            .health
            .get_or_insert_with(|| Health::new(now))
            .failed(now);
        if change == Change::FellBack {
            self.fell_back(host, plan, m, why);
        } else {
            log::debug!("{FILTER}: fleet sync failed: {why}");
        }
    }

    /// Once per outage: counted, one warning, every fleet rule's state marked unsynced (the
    /// workers use the fallback limit from their next tick).
    fn fell_back<H: Host + ?Sized>(&self, host: &H, plan: &Plan, m: &FilterMetrics, why: &str) {
        m.fleet_fallback.inc();
        m.fleet_synced.set(0);
        log::warn!(
            "{FILTER}: fleet sync lost ({why}): each fleet rule falls back to its limit / {} per key until the engine answers again",
            plan.fleet.as_ref().map_or(1, |f| f.expected_envoys)
        );
        let now = host.now_ms();
        for rule in plan.rules.iter().filter(|r| r.fleet.is_some()) {
            let key = fl_meta(&rule.name);
            let _ = update(host, &key, plan.cas_attempts, |cur| {
                let mut meta = cur.and_then(Meta::decode).unwrap_or_default();
                meta.synced = false;
                meta.updated_ms = now;
                Step::Write(meta.encode(), ())
            });
        }
    }

    /// An HTTP-call answer (root context). False when the token is not this sync's.
    pub fn on_response<H: Host + ?Sized>(
        &mut self,
        host: &H,
        plan: &Plan,
        token: u32,
        body_size: usize,
        m: &FilterMetrics,
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
                    log::info!("{FILTER}: fleet sync script loaded ({sha})");
                    self.sha = Some(sha);
                    // Sync at the next tick.
                    self.next_ms = now;
                }
                Err(e) => self.failed(host, plan, m, c, &why(&e, status)),
            },
            Kind::Sync => match fleet::decode(status, &body) {
                Ok(reply) => {
                    m.fleet_sync_ok.inc();
                    self.apply(host, plan, &reply, now);
                    let change = self.health.get_or_insert_with(|| Health::new(now)).ok(now);
                    m.fleet_synced.set(1);
                    match change {
                        Change::Recovered => {
                            m.fleet_recovered.inc();
                            log::warn!("{FILTER}: fleet sync recovered: fleet limits again");
                        }
                        Change::Joined => log::info!("{FILTER}: fleet sync joined"),
                        _ => {}
                    }
                }
                Err(SyncError::NoScript) => {
                    // Redis restarted empty: the script ran nowhere; load it and send the
                    // same deltas again at once.
                    log::info!("{FILTER}: fleet sync script missing in Redis: loading it");
                    self.sha = None;
                    self.carry = Some(c.deltas);
                    self.next_ms = now;
                }
                Err(e) => self.failed(host, plan, m, c, &why(&e, status)),
            },
        }
        true
    }

    fn apply<H: Host + ?Sized>(&self, host: &H, plan: &Plan, reply: &fleet::Reply, now: u64) {
        let Some(cfg) = plan.fleet.as_ref() else {
            return;
        };
        let offset = i64::try_from(i128::from(reply.t) - i128::from(now)).unwrap_or(0);
        for lr in &reply.l {
            let Some(rule) = plan.rules.iter().find(|r| r.name == lr.r) else {
                continue;
            };
            let Some(b) = rule.fleet else {
                continue;
            };
            let share = lr.share(cfg.expected_envoys);
            let meta = Meta {
                synced: true,
                share_ppm: Meta::share_ppm(share),
                offset_ms: offset,
                updated_ms: now,
            };
            let _ = host.set(&fl_meta(&rule.name), &meta.encode(), 0);
            for (k, total) in &lr.k {
                let Some(fp) = parse_wire_key(k) else {
                    continue;
                };
                let key = fl_slot(&rule.name, slot_of(fp, rule.sets));
                let _ = update(host, &key, plan.cas_attempts, |cur| {
                    let Some(mut s) = cur.and_then(fleetslot::Slot::decode) else {
                        return Step::Keep(());
                    };
                    if s.apply(fp, lr.win, *total, share, &b) {
                        Step::Write(s.encode(), ())
                    } else {
                        Step::Keep(())
                    }
                });
            }
        }
    }
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
