//! The whole filter (request path, end of stream, tick) on the in-memory host: workers of one
//! Envoy are `Filter`s sharing one `MemHost` store; time is set by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use sg_breaker::filter::{Filter, Leader, Stream};
use sg_breaker::machine::{Breaker, Kind};
use sg_breaker::window::Buckets;
use sg_core::host::{Flow, Plugin};
use sg_core::keys::{br_slots, br_state, br_window, BR_FLAGS, BR_OPEN};
use sg_core::oplist::{decode_list, encode_list, Entry, List};
use sg_core::shared::SharedStore;
use sg_core::testing::MemHost;
use sg_core::tick::Periodic;

const TICK: u64 = 100;
const UF: u64 = 1 << 5;
const DC: u64 = 1 << 14;

fn config(api_extra: &str, extra: &str) -> String {
    format!(
        r#"{{"tick_ms": {TICK}, {extra} "apis": [{{"name": "api", "cluster": "outbound_api",
        "match": {{"path_prefix": "/api/"}}, "window": {{"count": 20}}, "min_calls": 10,
        "failure_rate_percent": 50, "slow_call_ms": 500, "slow_call_rate_percent": 80,
        "wait_open_ms": 1000, "half_open_calls": 3,
        "fallback": {{"status": 200, "headers": {{"content-type": "application/json"}}, "body": "[]"}}
        {api_extra}}}],
        "alert": {{"webhook_cluster": "control"}}}}"#
    )
}

type Worker = (Filter, Periodic<Leader>);

fn worker(h: &MemHost, json: &str) -> Worker {
    h.set_config(json);
    Filter::configure(h).expect("config accepted")
}

fn host() -> MemHost {
    let h = MemHost::new();
    h.set_now(1_000_000);
    h.set_property(&["xds", "cluster_name"], "outbound_api");
    h
}

/// A call of `/api/x` starting on worker `f`: its flow and stream.
fn start(f: &Filter, h: &MemHost, id: u32) -> (Flow, Stream) {
    h.get("api.internal", "/api/x");
    let mut s = Filter::stream(id);
    let flow = f.on_request(h, &mut s);
    (flow, s)
}

/// The stream ends as Envoy reports it: response headers with `code` (0: none came) then the
/// body's end, unless a response flag says the stream was cut (a reset, a time-out, the client
/// leaving); `on_log` with the `response.code`/`response.flags` properties.
fn end(f: &Filter, h: &MemHost, s: &mut Stream, code: u64, flags: u64) {
    if code != 0 {
        h.respond(code as u16, &[], b"");
        assert_eq!(f.on_response_headers(h, s, false), Flow::Continue);
        f.on_response_body(h, s, 0, flags == 0);
    }
    h.set_property_u64(&["response", "code"], code);
    h.set_property_u64(&["response", "flags"], flags);
    f.on_log(h, s);
}

/// A whole call: start and, if it went on, end with `code`/`flags`. True if it went on.
fn call(f: &Filter, h: &MemHost, code: u64, flags: u64) -> bool {
    let (flow, mut s) = start(f, h, 1);
    if flow == Flow::Continue {
        end(f, h, &mut s, code, flags);
        return true;
    }
    f.on_log(h, &mut s);
    false
}

fn state(h: &MemHost) -> Breaker {
    let b = h
        .store
        .get(&br_state("api"))
        .unwrap()
        .value
        .unwrap_or_default();
    if b.is_empty() {
        return Breaker::default();
    }
    Breaker::decode(&b).expect("a valid state")
}

fn tick_all(w: &mut [Worker], h: &MemHost) {
    for (f, p) in w.iter_mut() {
        f.on_tick(h, p);
    }
}

fn metric(h: &MemHost, what: &str) -> i64 {
    h.metric(&format!("sg.breaker.api.{what}")).unwrap_or(-1)
}

#[test]
fn a_breaker_opens_on_the_tick_whose_merge_crosses_the_threshold_on_any_worker() {
    let h = host();
    let json = config("", "");
    let mut w = vec![worker(&h, &json), worker(&h, &json)];
    tick_all(&mut w, &h);
    // 5 failures on each worker: 10 calls at 100% once both are merged.
    for _ in 0..5 {
        assert!(call(&w[0].0, &h, 503, 0));
        assert!(call(&w[1].0, &h, 0, UF), "a refused connection");
    }
    assert_eq!(
        w[0].0.pending_calls(),
        5,
        "counted in VM memory, not shared data"
    );
    h.advance(TICK);
    let (f0, p0) = &mut w[0];
    f0.on_tick(&h, p0);
    assert_eq!(state(&h).kind, Kind::Closed, "5 calls: below the minimum");
    let (f1, p1) = &mut w[1];
    f1.on_tick(&h, p1);
    assert_eq!(
        state(&h).kind,
        Kind::Open,
        "opened by the merge that crossed it, on that worker's tick (no leader needed)"
    );
    // Both workers see one state: the fallback, never the upstream.
    for (f, _) in &w {
        let (flow, _) = start(f, &h, 7);
        assert_eq!(flow, Flow::Pause);
    }
    let r = h.take_replies();
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].status, 200);
    assert_eq!(r[0].body, b"[]");
    assert_eq!(r[0].header("content-type"), Some("application/json"));
    assert_eq!(r[0].header("x-spikeguard-action"), Some("breaker"));
    assert_eq!(r[0].header("x-spikeguard-reason"), Some("open"));
    assert_eq!(
        r[0].header("retry-after"),
        None,
        "a 200 fallback has no Retry-After"
    );
    tick_all(&mut w, &h);
    assert_eq!(metric(&h, "failure"), 10);
    assert_eq!(metric(&h, "not_permitted"), 2);
    assert_eq!(metric(&h, "opened"), 1);
    assert_eq!(metric(&h, "state"), 1);
    assert_eq!(h.metric("sg.breaker.open_apis"), Some(1));
    // The leader alerted (webhook) and published the open set for simplepage.
    let calls = h.take_calls();
    let hook = calls
        .iter()
        .find(|c| c.cluster == "control")
        .expect("webhook");
    let body = String::from_utf8_lossy(hook.body.as_deref().unwrap()).into_owned();
    assert!(body.contains("circuit breaker open (was closed)"), "{body}");
    let open = h.store.get(BR_OPEN).unwrap().value.unwrap();
    let (_, list) = decode_list(&open, 64).unwrap();
    assert_eq!(list.entries.len(), 1);
    assert_eq!(list.entries[0].rule.as_deref(), Some("api"));
    assert_eq!(list.entries[0].key.as_deref(), Some("open"));
}

#[test]
fn below_the_rate_or_the_minimum_it_stays_closed_and_ignored_calls_do_not_count() {
    let h = host();
    let mut w = vec![worker(&h, &config("", ""))];
    for i in 0..20 {
        // 4 in 10 fail: 40% < 50%.
        let code = if i % 5 < 2 { 500 } else { 200 };
        assert!(call(&w[0].0, &h, code, 0));
    }
    for _ in 0..30 {
        assert!(call(&w[0].0, &h, 404, 0), "4xx: ignored by default");
        assert!(call(&w[0].0, &h, 0, DC), "the client left: ignored");
    }
    h.advance(TICK);
    tick_all(&mut w, &h);
    assert_eq!(state(&h).kind, Kind::Closed);
    assert_eq!(metric(&h, "ignored"), 60);
    assert_eq!(metric(&h, "success"), 12);
    let win = Buckets::decode(&h.store.get(&br_window("api")).unwrap().value.unwrap()).unwrap();
    assert_eq!(
        win.buckets.iter().map(|(_, t)| t.calls).sum::<u64>(),
        20,
        "only counted outcomes reach the window"
    );
}

#[test]
fn the_slow_call_rule_opens_it_too() {
    let h = host();
    let mut w = vec![worker(&h, &config("", ""))];
    for _ in 0..10 {
        let (flow, mut s) = start(&w[0].0, &h, 1);
        assert_eq!(flow, Flow::Continue);
        h.advance(600);
        end(&w[0].0, &h, &mut s, 200, 0);
    }
    h.advance(TICK);
    tick_all(&mut w, &h);
    assert_eq!(state(&h).kind, Kind::Open);
    assert_eq!(metric(&h, "slow"), 10);
}

/// Opens the breaker with 10 failures on worker 0 and one tick.
fn open(w: &mut [Worker], h: &MemHost) {
    for _ in 0..10 {
        assert!(call(&w[0].0, h, 503, 0));
    }
    h.advance(TICK);
    tick_all(w, h);
    assert_eq!(state(h).kind, Kind::Open);
}

#[test]
fn half_open_lets_exactly_the_permitted_probes_through_across_workers_and_closes() {
    let h = host();
    let json = config("", "");
    let mut w = vec![worker(&h, &json), worker(&h, &json)];
    open(&mut w, &h);
    h.advance(1_000);
    assert!(!call(&w[1].0, &h, 200, 0), "still open at exactly the wait");
    h.take_replies();
    h.advance(1);
    // Three probes, from both workers; a fourth is refused.
    let (a, mut sa) = start(&w[0].0, &h, 1);
    let (b, mut sb) = start(&w[1].0, &h, 2);
    let (c, mut sc) = start(&w[0].0, &h, 3);
    let (d, _) = start(&w[1].0, &h, 4);
    assert_eq!(
        [a, b, c, d],
        [Flow::Continue, Flow::Continue, Flow::Continue, Flow::Pause]
    );
    assert_eq!(state(&h).kind, Kind::HalfOpen);
    assert_eq!(
        h.take_replies()[0].header("x-spikeguard-reason"),
        Some("half_open")
    );
    end(&w[0].0, &h, &mut sa, 200, 0);
    end(&w[1].0, &h, &mut sb, 200, 0);
    assert_eq!(state(&h).kind, Kind::HalfOpen, "2 of 3 probes in");
    end(&w[0].0, &h, &mut sc, 200, 0);
    assert_eq!(
        state(&h).kind,
        Kind::Closed,
        "recovered: closed at the third probe"
    );
    assert!(call(&w[1].0, &h, 200, 0));
}

#[test]
fn a_failing_probe_reopens_it_with_backoff_and_a_stale_call_is_not_a_probe() {
    let h = host();
    let json = config(
        r#", "backoff": {"multiplier": 2, "max_wait_ms": 60000}"#,
        "",
    );
    let mut w = vec![worker(&h, &json)];
    // A call permitted while CLOSED, still running when the breaker opens.
    let (flow, mut stale) = start(&w[0].0, &h, 9);
    assert_eq!(flow, Flow::Continue);
    open(&mut w, &h);
    h.advance(1_001);
    let mut probes: Vec<Stream> = (0..3).map(|i| start(&w[0].0, &h, i).1).collect();
    assert_eq!(state(&h).kind, Kind::HalfOpen);
    end(&w[0].0, &h, &mut stale, 200, 0);
    let b = state(&h);
    assert_eq!(
        (b.kind, b.probes.calls),
        (Kind::HalfOpen, 0),
        "a CLOSED-era success is not a probe"
    );
    for s in &mut probes {
        end(&w[0].0, &h, s, 502, 0);
    }
    let b = state(&h);
    assert_eq!(b.kind, Kind::Open, "failing probes reopen it");
    assert_eq!(
        b.retry_at_ms - b.since_ms,
        2_000,
        "second opening waits twice as long"
    );
    h.advance(TICK);
    tick_all(&mut w, &h);
    assert_eq!(metric(&h, "opened"), 2);
    // After the wait, the tick alone moves it to HALF_OPEN (no traffic needed).
    h.advance(2_001);
    tick_all(&mut w, &h);
    assert_eq!(state(&h).kind, Kind::HalfOpen);
}

#[test]
fn the_bulkhead_is_exact_across_workers_and_every_ending_gives_the_slot_back() {
    let h = host();
    let json = config(r#", "bulkhead": {"max_concurrent": 2}"#, "");
    let mut w = vec![worker(&h, &json), worker(&h, &json)];
    let (a, mut sa) = start(&w[0].0, &h, 1);
    let (b, mut sb) = start(&w[1].0, &h, 2);
    let (c, mut sc) = start(&w[0].0, &h, 3);
    assert_eq!([a, b, c], [Flow::Continue, Flow::Continue, Flow::Pause]);
    let r = h.take_replies();
    assert_eq!(r[0].header("x-spikeguard-reason"), Some("bulkhead"));
    w[0].0.on_log(&h, &mut sc);
    let slots = |h: &MemHost| {
        u64::from_le_bytes(
            h.store.get(&br_slots("api")).unwrap().value.unwrap()[..8]
                .try_into()
                .unwrap(),
        )
    };
    assert_eq!(slots(&h), 2, "the refused call held no slot");
    // A reset (no status, UR) and a client disconnect both end in on_log.
    end(&w[0].0, &h, &mut sa, 0, 1 << 4);
    end(&w[1].0, &h, &mut sb, 0, DC);
    assert_eq!(slots(&h), 0);
    // A stream destroyed without on_log: given back on the next tick.
    let (_, mut sd) = start(&w[1].0, &h, 4);
    assert_eq!(slots(&h), 1);
    w[1].0.on_done(&mut sd);
    assert_eq!(slots(&h), 1);
    tick_all(&mut w, &h);
    assert_eq!(slots(&h), 0);
    assert_eq!(metric(&h, "bulkhead_rejected"), 1);
    assert_eq!(
        metric(&h, "in_flight"),
        1,
        "the lease holder (worker 0) ticked before worker 1 gave the slot back"
    );
    h.advance(TICK);
    tick_all(&mut w, &h);
    assert_eq!(metric(&h, "in_flight"), 0);
}

#[test]
fn a_call_over_the_bulkhead_waits_for_a_slot_then_times_out() {
    let h = host();
    let json = config(
        r#", "bulkhead": {"max_concurrent": 1, "max_wait_ms": 50}"#,
        "",
    );
    let (f, mut p) = worker(&h, &json);
    assert_eq!(h.tick_period_ms(), 10, "waiting calls need a short tick");
    let (a, mut sa) = start(&f, &h, 1);
    let (b, mut sb) = start(&f, &h, 2);
    assert_eq!([a, b], [Flow::Continue, Flow::Pause]);
    assert_eq!(f.waiting(), 1);
    h.advance(10);
    f.on_tick(&h, &mut p);
    assert!(h.take_resumed().is_empty(), "no slot yet");
    end(&f, &h, &mut sa, 200, 0);
    h.advance(10);
    f.on_tick(&h, &mut p);
    assert_eq!(h.take_resumed(), vec![2], "the waiter got the freed slot");
    // A third call waits and times out: the fallback goes to its context.
    let (c, mut sc) = start(&f, &h, 3);
    assert_eq!(c, Flow::Pause);
    h.advance(60);
    f.on_tick(&h, &mut p);
    let r = h.take_replies();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].id, Some(3));
    assert_eq!(r[0].header("x-spikeguard-reason"), Some("bulkhead"));
    f.on_log(&h, &mut sc);
    end(&f, &h, &mut sb, 200, 0);
    let slots = h.store.get(&br_slots("api")).unwrap().value.unwrap();
    assert_eq!(slots, 0u64.to_le_bytes().to_vec(), "every slot came back");
    // A waiter whose client leaves is dropped from the queue.
    let (_, mut s1) = start(&f, &h, 4);
    let (_, mut s2) = start(&f, &h, 5);
    assert_eq!(f.waiting(), 1);
    end(&f, &h, &mut s2, 0, DC);
    assert_eq!(f.waiting(), 0);
    end(&f, &h, &mut s1, 200, 0);
    assert_eq!(
        h.store.get(&br_slots("api")).unwrap().value.unwrap(),
        0u64.to_le_bytes().to_vec()
    );
}

fn flags(h: &MemHost, entries: &[(&str, &str)], version: u64) {
    let list = List {
        entries: entries
            .iter()
            .map(|(api, flag)| Entry {
                rule: Some(api.to_string()),
                key: Some(flag.to_string()),
                path_prefix: None,
                expires_at_ms: None,
            })
            .collect(),
    };
    h.store
        .set(BR_FLAGS, &encode_list(version, &list), 0)
        .unwrap();
}

#[test]
fn operator_flags_force_open_and_clearing_them_closes_it() {
    let h = host();
    let mut w = vec![worker(&h, &config("", ""))];
    tick_all(&mut w, &h);
    flags(&h, &[("api", "force_open")], 1);
    h.advance(TICK);
    tick_all(&mut w, &h);
    assert_eq!(state(&h).kind, Kind::ForcedOpen);
    assert!(!call(&w[0].0, &h, 200, 0));
    assert_eq!(
        h.take_replies()[0].header("x-spikeguard-reason"),
        Some("forced_open")
    );
    flags(&h, &[("other", "force_open")], 2);
    h.advance(TICK);
    tick_all(&mut w, &h);
    assert_eq!(
        state(&h).kind,
        Kind::Closed,
        "a flag for another API does not apply"
    );
    assert!(call(&w[0].0, &h, 200, 0));
    assert_eq!(metric(&h, "state"), 0);
}

#[test]
fn a_config_flag_holds_from_the_first_call_before_any_tick() {
    let h = host();
    let w = worker(&h, &config(r#", "flag": "force_open""#, ""));
    // No tick has run: the state is not in shared data yet.
    assert!(!call(&w.0, &h, 200, 0), "refused on the very first call");
    assert_eq!(
        h.take_replies()[0].header("x-spikeguard-reason"),
        Some("forced_open")
    );
    assert_eq!(
        state(&h).kind,
        Kind::ForcedOpen,
        "and stored for every worker"
    );
    // Without a flag the first call goes on and nothing is written.
    let h = host();
    let w = worker(&h, &config("", ""));
    assert!(call(&w.0, &h, 200, 0));
    assert_eq!(state(&h).kind, Kind::Closed);
}

#[test]
fn disable_turns_breaker_and_bulkhead_off_and_force_closed_never_opens() {
    let h = host();
    let json = config(
        r#", "flag": "disable", "bulkhead": {"max_concurrent": 1}"#,
        "",
    );
    let mut w = vec![worker(&h, &json)];
    tick_all(&mut w, &h);
    assert_eq!(state(&h).kind, Kind::Disabled);
    let held: Vec<_> = (0..3).map(|i| start(&w[0].0, &h, i)).collect();
    assert!(
        held.iter().all(|(f, _)| *f == Flow::Continue),
        "no bulkhead"
    );
    for _ in 0..20 {
        assert!(call(&w[0].0, &h, 503, 0));
    }
    h.advance(TICK);
    tick_all(&mut w, &h);
    assert_eq!(state(&h).kind, Kind::Disabled, "nothing judged");
    // The operator holds it closed (metrics only): judged, reported, never opens.
    flags(&h, &[("api", "force_closed")], 1);
    h.advance(TICK);
    tick_all(&mut w, &h);
    assert_eq!(state(&h).kind, Kind::MetricsOnly);
    for _ in 0..20 {
        assert!(call(&w[0].0, &h, 503, 0));
    }
    h.advance(TICK);
    tick_all(&mut w, &h);
    assert_eq!(state(&h).kind, Kind::MetricsOnly);
    assert!(metric(&h, "would_open") >= 1);
}

#[test]
fn shadow_mode_reports_but_never_refuses() {
    let h = host();
    let json = config(
        r#", "bulkhead": {"max_concurrent": 1}"#,
        r#""shadow": true,"#,
    );
    let mut w = vec![worker(&h, &json)];
    tick_all(&mut w, &h);
    let _held = start(&w[0].0, &h, 1);
    for _ in 0..20 {
        assert!(call(&w[0].0, &h, 503, 0), "shadow: always goes on");
    }
    h.advance(TICK);
    tick_all(&mut w, &h);
    assert_eq!(state(&h).kind, Kind::MetricsOnly);
    assert!(metric(&h, "would_open") >= 1);
    assert_eq!(metric(&h, "shadow_rejected"), 20);
    assert_eq!(metric(&h, "bulkhead_rejected"), 0);
}

#[test]
fn shared_data_failure_fails_open_by_default_and_closed_when_configured() {
    let h = host();
    let (f, _) = worker(&h, &config("", ""));
    h.store.set_failing(true);
    assert!(call(&f, &h, 200, 0), "allow: the call goes on");
    let (g, _) = worker(&h, &config("", r#""on_store_error": "reject","#));
    assert!(!call(&g, &h, 200, 0));
    assert_eq!(
        h.take_replies()[0].header("x-spikeguard-reason"),
        Some("store_error")
    );
    h.store.set_failing(false);
}

#[test]
fn unmatched_calls_pass_untouched() {
    let h = host();
    let (f, _) = worker(&h, &config("", ""));
    h.set_property(&["xds", "cluster_name"], "other_cluster");
    assert!(call(&f, &h, 503, 0));
    h.set_property(&["xds", "cluster_name"], "outbound_api");
    h.get("api.internal", "/other");
    let mut s = Filter::stream(1);
    assert_eq!(f.on_request(&h, &mut s), Flow::Continue);
    assert_eq!(f.pending_calls(), 0);
}

#[test]
fn a_200_cut_by_a_reset_or_time_out_after_its_headers_is_a_failure() {
    let h = host();
    let mut w = vec![worker(&h, &config("", ""))];
    for _ in 0..10 {
        // UR: the upstream reset mid-body; UT: the route timeout fired mid-body.
        assert!(call(&w[0].0, &h, 200, 1 << 4));
        assert!(call(&w[0].0, &h, 200, 1 << 2));
    }
    h.advance(TICK);
    tick_all(&mut w, &h);
    assert_eq!(metric(&h, "failure"), 20);
    assert_eq!(state(&h).kind, Kind::Open);
}

#[test]
fn a_503_envoy_answered_itself_is_a_failure_by_its_flag_even_when_503_is_not_listed() {
    let h = host();
    let json = config(r#", "failure_status": [500], "ignore_status": []"#, "");
    let mut w = vec![worker(&h, &json)];
    for _ in 0..5 {
        assert!(
            call(&w[0].0, &h, 503, 1 << 7),
            "UO: Envoy's cluster overflow"
        );
        assert!(call(&w[0].0, &h, 503, 0), "the API's own 503: not listed");
    }
    h.advance(TICK);
    tick_all(&mut w, &h);
    assert_eq!(metric(&h, "failure"), 5);
    assert_eq!(metric(&h, "success"), 5);
}

#[test]
fn a_refused_config_names_the_field() {
    let h = host();
    h.set_config(r#"{"apis": [{"name": "a", "window": {"count": 0}}]}"#);
    assert!(Filter::configure(&h).is_none());
}

#[test]
fn a_probe_destroyed_without_on_log_gives_its_permit_back_on_the_tick() {
    let h = host();
    let mut w = vec![worker(&h, &config("", ""))];
    open(&mut w, &h);
    h.advance(1_001);
    let mut probes: Vec<(Flow, Stream)> = (0..3).map(|i| start(&w[0].0, &h, i)).collect();
    assert!(probes.iter().all(|(f, _)| *f == Flow::Continue));
    assert_eq!(start(&w[0].0, &h, 9).0, Flow::Pause, "no permit left");
    w[0].0.on_done(&mut probes[0].1);
    tick_all(&mut w, &h);
    assert_eq!(state(&h).permits_left, 1, "given back");
    assert_eq!(start(&w[0].0, &h, 10).0, Flow::Continue);
}

#[test]
fn half_open_never_sticks_by_default() {
    let h = host();
    let mut w = vec![worker(&h, &config("", ""))];
    open(&mut w, &h);
    h.advance(1_001);
    let _lost: Vec<(Flow, Stream)> = (0..3).map(|i| start(&w[0].0, &h, i)).collect();
    assert_eq!(state(&h).kind, Kind::HalfOpen);
    h.advance(60_000);
    tick_all(&mut w, &h);
    assert_eq!(
        state(&h).kind,
        Kind::Open,
        "60 s without probe outcomes: back to OPEN (after_half_open_wait), not stuck"
    );
}

#[test]
fn configure_creates_every_shared_key_and_a_later_worker_keeps_their_values() {
    let h = host();
    let _w1 = worker(&h, &config("", ""));
    for key in [br_state("api"), br_window("api"), br_slots("api")] {
        let v = SharedStore::get(&h, &key).unwrap().value;
        assert_eq!(v.as_deref(), Some(&[][..]), "{key} not created empty");
    }
    // A slot held on the first worker survives the next worker's (or an ECDS) configure.
    SharedStore::set(&h, &br_slots("api"), &3u64.to_le_bytes(), 0).unwrap();
    let _w2 = worker(&h, &config("", ""));
    assert_eq!(
        SharedStore::get(&h, &br_slots("api"))
            .unwrap()
            .value
            .as_deref(),
        Some(&3u64.to_le_bytes()[..])
    );
}

/// Opens the breaker from worker 0's tick with 10 failures there, worker 1 having just
/// served a call (so it holds a fresh CLOSED copy); returns the workers.
fn opened_by_worker_0_after_worker_1_read(h: &MemHost, json: &str) -> Vec<Worker> {
    let mut w = vec![worker(h, json), worker(h, json)];
    tick_all(&mut w, h);
    for _ in 0..10 {
        assert!(call(&w[0].0, h, 503, 0));
    }
    h.advance(TICK);
    assert!(call(&w[1].0, h, 200, 0), "worker 1 reads CLOSED now");
    let (f0, p0) = &mut w[0];
    f0.on_tick(h, p0);
    assert_eq!(state(h).kind, Kind::Open);
    w
}

#[test]
fn a_worker_answers_from_the_state_it_read_less_than_state_cache_ms_ago() {
    let h = host();
    let w = opened_by_worker_0_after_worker_1_read(&h, &config("", ""));
    let reads = || h.store.gets();
    // Within 10 ms of its read, worker 1 still passes calls without reading shared data.
    h.advance(9);
    let before = reads();
    let (flow, mut s) = start(&w[1].0, &h, 3);
    assert_eq!(flow, Flow::Continue, "the CLOSED copy is 9 ms old");
    assert_eq!(reads(), before, "no shared-data read for the permit");
    end(&w[1].0, &h, &mut s, 200, 0);
    // At 10 ms it reads again and sees OPEN.
    h.advance(1);
    let (flow, _) = start(&w[1].0, &h, 4);
    assert_eq!(
        flow,
        Flow::Pause,
        "the transition reached worker 1 within state_cache_ms"
    );
    assert!(reads() > before);
    // Worker 0 made the transition: it never serves its own stale copy.
    let (flow, _) = start(&w[0].0, &h, 5);
    assert_eq!(flow, Flow::Pause);
}

#[test]
fn with_state_cache_ms_0_every_call_reads_the_shared_state() {
    let h = host();
    let w = opened_by_worker_0_after_worker_1_read(&h, &config("", r#""state_cache_ms": 0,"#));
    let (flow, _) = start(&w[1].0, &h, 3);
    assert_eq!(
        flow,
        Flow::Pause,
        "the transition is seen by the very next call"
    );
}
