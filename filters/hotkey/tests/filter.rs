//! The whole filter (request path and tick) on the in-memory host: workers of one Envoy are
//! `Filter`s sharing one `MemHost` store, time is set by the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use sg_core::host::{Flow, Plugin};
use sg_core::keys::{HK_BLOCKLIST, HK_DIVERT, HK_SHED};
use sg_core::oplist::decode_list;
use sg_core::testing::MemHost;
use sg_core::tick::Periodic;
use sg_hotkey::filter::{Filter, Leader};

const TICK: u64 = 100;

fn config(action: &str, extra: &str) -> String {
    format!(
        r#"{{"tick_ms": {TICK}, {extra} "rules": [{{"name": "post", "match": {{"path_prefix": "/PostView"}},
        "key": {{"query": "blogId"}}, "window_ms": 1000, "threshold_rps": 100, "cooldown_ms": 500,
        "action": {action}}}],
        "alert": {{"webhook_cluster": "control", "cooldown_ms": 60000}}}}"#
    )
}

fn worker(h: &MemHost, json: &str) -> (Filter, Periodic<Leader>) {
    h.set_config(json);
    Filter::configure(h).expect("config accepted")
}

fn get(f: &Filter, h: &MemHost, blog: &str) -> Flow {
    h.get("blog", &format!("/PostView?blogId={blog}&logNo=1"));
    f.on_request(h, &mut ())
}

/// `hot` requests of blog "hot" and one of a cold blog per tick, `ticks` times, ticking after
/// each round. Returns the tick at which "hot" was first shed (None if never).
fn run(w: &mut [(Filter, Periodic<Leader>)], h: &MemHost, hot: u32, ticks: u32) -> Option<u32> {
    let mut first = None;
    for t in 0..ticks {
        for i in 0..hot {
            let (f, _) = &w[i as usize % w.len()];
            if get(f, h, "hot") == Flow::Pause && first.is_none() {
                first = Some(t);
            }
        }
        for (f, _) in w.iter() {
            assert_eq!(
                get(f, h, &format!("cold{t}")),
                Flow::Continue,
                "a cold key is never shed"
            );
        }
        h.advance(TICK);
        for (f, p) in w.iter_mut() {
            f.on_tick(h, p);
        }
    }
    first
}

#[test]
fn a_hot_key_is_shed_on_every_worker_once_its_window_rate_crosses_the_threshold() {
    let h = MemHost::new();
    h.set_now(10_000);
    let json = config(
        r#"{"reject": {"status": 503, "body": "busy\n", "retry_after_s": 7}}"#,
        "",
    );
    let mut w = vec![worker(&h, &json), worker(&h, &json)];
    // 40 requests per 100 ms tick, split over two workers: 400 r/s. The window (1 s, complete
    // buckets only) passes 100 r/s after 3 complete buckets (120 requests); the leader sees a
    // bucket one tick after it is merged, and workers copy the hot set in the same tick.
    let first = run(&mut w, &h, 40, 12).expect("shed");
    assert!((3..=6).contains(&first), "first shed at tick {first}");
    let replies = h.take_replies();
    let r = replies.first().unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.header("x-spikeguard-action"), Some("hotkey"));
    assert_eq!(r.body, b"busy\n");
    for (f, _) in &w {
        assert_eq!(f.hot_keys(), 1, "both workers hold the hot set");
    }
    // Exactly one detection and one webhook alert, naming the key and the top keys.
    let calls = h.take_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let body = String::from_utf8_lossy(calls[0].body.as_deref().unwrap()).into_owned();
    assert!(
        body.contains("hot") && body.contains("shedding started"),
        "{body}"
    );
    let total_detections: i64 = ["sg.hotkey.detections"]
        .iter()
        .map(|m| h.metric(m).unwrap())
        .sum();
    assert_eq!(total_detections, 1);
    assert_eq!(h.metric("sg.hotkey.alerts"), Some(1));
    let seen = h.metric("sg.hotkey.post.seen").unwrap();
    assert_eq!(seen, 12 * (40 + 2), "every request with a key is counted");
    assert_eq!(
        h.metric("sg.hotkey.post.shed").unwrap(),
        replies.len() as i64
    );
    assert!(h.store.get_value(HK_SHED).is_some());
}

#[test]
fn a_key_below_the_threshold_is_never_shed() {
    let h = MemHost::new();
    h.set_now(0);
    let mut w = vec![worker(&h, &config(r#"{"reject": {}}"#, ""))];
    // 9 per tick = 90 r/s < 100 r/s.
    assert_eq!(run(&mut w, &h, 9, 30), None);
    assert!(h.take_calls().is_empty());
    assert_eq!(h.metric("sg.hotkey.detections"), Some(0));
}

#[test]
fn observe_is_a_shadow_mode_counted_and_never_acted_on() {
    let h = MemHost::new();
    h.set_now(0);
    let mut w = vec![worker(&h, &config(r#""observe""#, ""))];
    assert_eq!(run(&mut w, &h, 40, 12), None, "observe never replies");
    assert!(h.metric("sg.hotkey.post.observed").unwrap() > 0);
    assert_eq!(h.metric("sg.hotkey.detections"), Some(1));
}

#[test]
fn a_divert_rule_marks_reads_and_publishes_the_contract_for_simplepage() {
    let h = MemHost::new();
    h.set_now(0);
    let mut w = vec![worker(
        &h,
        &config(r#"{"divert": {"header": "x-spikeguard-divert"}}"#, ""),
    )];
    assert_eq!(run(&mut w, &h, 40, 12), None, "divert never replies");
    let (_, list) = decode_list(&h.store.get_value(HK_DIVERT).unwrap(), 100).unwrap();
    assert!(list.blocks_key("post", b"hot", 0), "{list:?}");
    assert_eq!(get(&w[0].0, &h, "hot"), Flow::Continue);
    assert_eq!(h.req_header("x-spikeguard-divert").as_deref(), Some("post"));
    assert_eq!(
        h.req_header("x-spikeguard-action").as_deref(),
        Some("hotkey")
    );
    // A POST to the hot key is not sent to the read-only page.
    h.request(&[
        (":method", "POST"),
        (":path", "/PostView?blogId=hot"),
        (":authority", "b"),
    ]);
    assert_eq!(w[0].0.on_request(&h, &mut ()), Flow::Continue);
    assert_eq!(h.req_header("x-spikeguard-divert"), None);
}

#[test]
fn an_operator_block_is_applied_published_alerted_once_and_survives_a_bad_poll() {
    let h = MemHost::new();
    h.set_now(1_000);
    let json = config(
        r#"{"reject": {}}"#,
        r#""operator": {"cluster": "control", "poll_ms": 1000},"#,
    );
    let mut w = vec![worker(&h, &json), worker(&h, &json)];
    for (f, p) in w.iter_mut() {
        f.on_tick(&h, p);
    }
    let calls = h.take_calls();
    assert_eq!(calls.len(), 1, "only the lease holder polls");
    let list = br#"{"entries": [{"key": "spam"}]}"#;
    h.answer_call(200, &[], list);
    for (f, p) in w.iter_mut() {
        f.on_call_response(&h, p, calls[0].token, list.len());
    }
    assert!(h.store.get_value(HK_BLOCKLIST).is_some());
    let alerts = h.take_calls();
    assert_eq!(alerts.len(), 1, "one alert for the added key");
    assert!(
        String::from_utf8_lossy(alerts[0].body.as_deref().unwrap()).contains("blocked by operator")
    );
    h.advance(TICK);
    for (f, p) in w.iter_mut() {
        f.on_tick(&h, p);
    }
    for (f, _) in &w {
        assert_eq!(get(f, &h, "spam"), Flow::Pause, "blocked on every worker");
        assert_eq!(get(f, &h, "other"), Flow::Continue);
    }
    // The next poll fails: the last good list stays in force.
    h.advance(1_000);
    for (f, p) in w.iter_mut() {
        f.on_tick(&h, p);
    }
    let calls = h.take_calls();
    assert_eq!(calls.len(), 1);
    h.answer_call(500, &[], b"");
    for (f, p) in w.iter_mut() {
        f.on_call_response(&h, p, calls[0].token, 0);
    }
    h.advance(TICK);
    for (f, p) in w.iter_mut() {
        f.on_tick(&h, p);
    }
    assert_eq!(get(&w[0].0, &h, "spam"), Flow::Pause);
    w[0].0.m.flush(&h);
    assert_eq!(h.metric("sg.hotkey.operator_errors"), Some(1));
    assert_eq!(h.metric("sg.hotkey.post.blocked"), Some(3));
}

#[test]
fn a_new_leader_continues_from_the_published_hot_set_without_alerting_again() {
    let h = MemHost::new();
    h.set_now(0);
    let json = config(r#"{"reject": {}}"#, "");
    let mut w = vec![worker(&h, &json)];
    run(&mut w, &h, 40, 12).expect("shed");
    assert_eq!(h.take_calls().len(), 1);
    // The leader's VM goes away; a new one takes over once the lease (3 ticks) expires.
    let mut w = vec![worker(&h, &json)];
    h.advance(4 * TICK);
    let shed_again = run(&mut w, &h, 40, 6);
    assert!(shed_again.is_some(), "still hot under the new leader");
    assert!(
        h.take_calls().is_empty(),
        "no second alert for the same episode"
    );
}

#[test]
fn unreadable_shared_state_fails_open_and_is_counted() {
    let h = MemHost::new();
    h.set_now(0);
    let mut w = [worker(&h, &config(r#"{"reject": {}}"#, ""))];
    sg_core::shared::SharedStore::set(&h, HK_SHED, b"garbage", 0).unwrap();
    sg_core::shared::SharedStore::set(&h, "sg:hk:post:view", b"garbage", 0).unwrap();
    let (f, p) = &mut w[0];
    assert_eq!(get(f, &h, "x"), Flow::Continue);
    h.advance(TICK);
    f.on_tick(&h, p);
    assert_eq!(get(f, &h, "x"), Flow::Continue);
    assert!(h.metric("sg.hotkey.bad_state").unwrap() >= 1);
}
