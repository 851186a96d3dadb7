//! Three real Envoys as three pods ([11/11]): each its own process and admin port, its
//! listeners on its own loopback address (127.0.0.2–4), one demo app behind all three, load
//! spread across them. A local `per_blog` limit is per Envoy: the fleet admits three times
//! it (the baseline). With `"scope": "fleet"`, one Redis and one webdis, the three admit the
//! limit once; with Redis killed or webdis hung they fall back and come back by themselves;
//! with one Envoy killed the others' shares grow back.
//!
//! Speed-independent: every check is on counts (admitted per fleet window, told apart by the
//! clock each request was sent and answered at) or on a state the test waits for with a
//! bound, never on how fast requests went.

use serde_json::{json, Value};
use sg_e2e::upstream::Upstream;
use sg_e2e::{ample, http, Stack};
use sg_integration::redis::{Redis, Webdis};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const IPS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
const BURST: u64 = 20;
const PER_ENVOY: usize = 40;

#[test]
fn three_envoys_with_local_limits_admit_three_times_the_limit() {
    let app = Upstream::start(ample("main")).unwrap();
    let app_port = app.port;
    let rl = json!({"rules": [{"name": "per_blog", "match": {"path_prefix": "/PostView"},
        "key": {"query": "blogId"}, "rate": "1r/s", "burst": BURST, "mode": "nodelay"}]});
    let pods: Vec<(&str, Stack)> = IPS
        .iter()
        .map(|ip| {
            let s = Stack::start_with(&[("ratelimit", rl.clone())], 1, ample("unused"), |b| {
                b.set_cluster_port("main_app", app_port).unwrap();
                b.set_listen_ip(ip);
            });
            (*ip, s)
        })
        .collect();
    // Three processes, three admin ports, three addresses.
    let mut admins: Vec<u16> = pods.iter().map(|(_, s)| s.envoy.admin).collect();
    admins.sort_unstable();
    admins.dedup();
    assert_eq!(admins.len(), 3);
    let mut pids: Vec<u32> = pods.iter().map(|(_, s)| s.envoy.pid()).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 3);
    for (ip, s) in &pods {
        let listeners = http::get(s.envoy.admin, "/listeners").unwrap().body;
        assert!(listeners.contains(&format!("{ip}:")), "{ip}: {listeners}");
    }

    // The load, round-robin over the three (as a Service spreads it).
    let t0 = Instant::now();
    let mut admitted = [0u64; 3];
    let mut refused = [0u64; 3];
    for i in 0..PER_ENVOY * 3 {
        let (ip, s) = &pods[i % 3];
        let r = http::get_at(ip, s.envoy.ingress(), "/PostView?blogId=hot&logNo=1").unwrap();
        match r.status {
            200 => admitted[i % 3] += 1,
            429 => refused[i % 3] += 1,
            other => panic!("{ip}: {other} {}", r.body),
        }
    }
    let elapsed_s = t0.elapsed().as_secs_f64();
    let most = BURST + elapsed_s.ceil() as u64 + 1;
    for (i, (ip, _)) in pods.iter().enumerate() {
        assert!(
            admitted[i] >= BURST && admitted[i] <= most,
            "{ip}: {} admitted, {} refused; its own limit allows {BURST}..={most}",
            admitted[i],
            refused[i]
        );
        assert!(refused[i] > 0, "{ip}: never limited");
    }
    let total: u64 = admitted.iter().sum();
    // Each Envoy spent its whole burst: together at least 3 x the burst, where one limit
    // for the fleet would have allowed at most `most`.
    assert!(total >= 3 * BURST, "{total}");
    eprintln!(
        "three Envoys, local per_blog (burst {BURST}, 1 r/s): admitted {admitted:?} = {total} \
         in {elapsed_s:.1} s; one fleet-wide limit would allow at most {most}"
    );
    drop(app);
}

/// The fleet's engine: one Redis, one webdis in front of it.
struct Engine {
    redis: Redis,
    webdis: Webdis,
}

impl Engine {
    fn start() -> Engine {
        let redis = Redis::start().unwrap_or_else(|e| panic!("redis: {e}"));
        let webdis = Webdis::start(redis.port).unwrap_or_else(|e| panic!("webdis: {e}"));
        Engine { redis, webdis }
    }
}

/// Three Envoys (2 workers each: the lease picks one to sync) with `rl` as ratelimit's config,
/// the `webdis` cluster pointed at `webdis`.
fn pods(rl: &Value, app_port: u16, webdis: u16) -> Vec<(&'static str, Stack)> {
    pods_of("ratelimit", rl, app_port, webdis)
}

/// Three Envoys running only `filter`, configured with `cfg`.
fn pods_of(filter: &str, cfg: &Value, app_port: u16, webdis: u16) -> Vec<(&'static str, Stack)> {
    IPS.iter()
        .map(|ip| {
            let s = Stack::start_with(&[(filter, cfg.clone())], 2, ample("unused"), |b| {
                b.set_cluster_port("main_app", app_port).unwrap();
                b.set_cluster_port("webdis", webdis).unwrap();
                b.set_listen_ip(ip);
            });
            (*ip, s)
        })
        .collect()
}

fn fleet_rule(rate: &str, sync_ms: u64) -> Value {
    json!({
        "fleet": {"cluster": "webdis", "expected_envoys": 3, "sync_ms": sync_ms, "timeout_ms": sync_ms.min(150)},
        "rules": [{"name": "per_blog", "match": {"path_prefix": "/PostView"},
            "key": {"query": "blogId"}, "rate": rate, "mode": "nodelay", "scope": "fleet"}]
    })
}

fn stat(s: &Stack, what: &str) -> i64 {
    s.envoy.stat(&format!("wasmcustom.sg.ratelimit.{what}"))
}

/// Waits (bounded) until every pod's `what` reaches `at_least`; the time it took.
fn wait_all(pods: &[(&str, Stack)], what: &str, at_least: impl Fn(usize) -> i64) -> Duration {
    let t0 = Instant::now();
    for (i, (_, s)) in pods.iter().enumerate() {
        s.envoy.wait_stat(
            &format!("wasmcustom.sg.ratelimit.{what}"),
            Duration::from_secs(30),
            |v| v >= at_least(i),
        );
    }
    t0.elapsed()
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One request for the hot blog through pod `ip`: 200 or 429 (anything else fails the test),
/// with the clock at send and at answer.
fn hit(ip: &str, s: &Stack, blog: &str) -> (bool, u64, u64) {
    let sent = epoch_ms();
    let r = http::get_at(
        ip,
        s.envoy.ingress(),
        &format!("/PostView?blogId={blog}&logNo=1"),
    )
    .unwrap_or_else(|e| panic!("{ip}: {e}"));
    let answered = epoch_ms();
    match r.status {
        200 => (true, sent, answered),
        429 => (false, sent, answered),
        other => panic!("{ip}: {other} {}", r.body),
    }
}

#[test]
fn three_envoys_with_a_fleet_limit_admit_it_once() {
    let engine = Engine::start();
    let app = Upstream::start(ample("main")).unwrap();
    const LIMIT: u64 = 30; // per minute, across the fleet
    let pods = pods(&fleet_rule("30r/m", 200), app.port, engine.webdis.port);
    // All three have synced once (the load starts on fleet shares, not the start-up fallback).
    let joined = wait_all(&pods, "fleet_sync_ok", |_| 1);
    let before: Vec<i64> = pods.iter().map(|(_, s)| stat(s, "fleet_sync_ok")).collect();

    // Four rounds of 15 requests per Envoy, round-robin; between rounds each Envoy syncs
    // twice (its admissions reported, the fleet's answer back).
    let mut admitted: Vec<(usize, u64, u64)> = Vec::new();
    let mut refused = 0u64;
    for round in 0..4i64 {
        for i in 0..15 * 3 {
            let (ip, s) = &pods[i % 3];
            match hit(ip, s, "hot") {
                (true, sent, answered) => admitted.push((i % 3, sent, answered)),
                (false, _, _) => refused += 1,
            }
        }
        wait_all(&pods, "fleet_sync_ok", |i| before[i] + 2 * (round + 1));
    }
    // Per fleet window (Redis' clock is this machine's): the requests surely in window w
    // (sent and answered in it). At most the limit, plus one per Envoy (each Envoy's share
    // rounds down, but the three shares, taken at different moments, need not add up to 1).
    let window = |t: u64| t / 60_000;
    let mut sure: BTreeMap<u64, u64> = BTreeMap::new();
    for (_, sent, answered) in &admitted {
        if window(*sent) == window(*answered) {
            *sure.entry(window(*sent)).or_default() += 1;
        }
    }
    let total = admitted.len() as u64;
    let per_pod: Vec<usize> = (0..3)
        .map(|p| admitted.iter().filter(|(i, _, _)| *i == p).count())
        .collect();
    for (w, n) in &sure {
        assert!(
            *n <= LIMIT + 3,
            "window {w}: {n} admitted across the fleet, limit {LIMIT}"
        );
    }
    assert!(
        total >= LIMIT - 3,
        "{total}: the fleet's budget went unused"
    );
    assert!(refused > 0);
    for (ip, s) in &pods {
        assert_eq!(stat(s, "fleet_fallback"), 0, "{ip}");
        assert_eq!(stat(s, "fleet_synced"), 1, "{ip}");
    }
    eprintln!(
        "three Envoys, fleet per_blog ({LIMIT}/min): admitted {per_pod:?} = {total} of {} \
         (per window {sure:?}); all joined {joined:?} after start",
        total + refused
    );
    drop(app);
}

/// Polls while `load` keeps sending, until `done` or 30 s / 20,000 requests.
fn load_until(mut load: impl FnMut(), mut done: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    for n in 0..20_000u32 {
        load();
        if n % 10 == 0 && done() {
            return t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    panic!("not reached within 30 s of load");
}

#[test]
fn a_lost_engine_means_a_fallback_per_envoy_and_a_recovery_on_its_return() {
    let mut engine = Engine::start();
    let app = Upstream::start(ample("main")).unwrap();
    // 600,000 per minute across the fleet: on the fallback, 200,000 per Envoy, more than
    // the whole test can send (at most 4 x 20,000 rounds of 3): whatever this machine's speed,
    // no request is refused, so a refusal or error would be the outage's.
    let pods = pods(&fleet_rule("600000r/m", 200), app.port, engine.webdis.port);
    wait_all(&pods, "fleet_sync_ok", |_| 1);
    let send = |n: usize| -> u64 {
        let mut ok = 0;
        for i in 0..n {
            let (ip, s) = &pods[i % 3];
            ok += u64::from(hit(ip, s, "hot").0);
        }
        ok
    };
    assert_eq!(send(30), 30, "within the limit");

    // Redis killed mid-load: webdis answers errors; every Envoy falls back, alone.
    engine.redis.kill();
    let mut sent_during = 0u64;
    let mut ok_during = 0u64;
    let fell_back = load_until(
        || {
            sent_during += 3;
            ok_during += send(3);
        },
        || pods.iter().all(|(_, s)| stat(s, "fleet_fallback") >= 1),
    );
    // No request error meanwhile (hit() fails on anything but 200/429), none refused: the
    // fallback is far above what can be sent.
    assert_eq!(ok_during, sent_during);
    for (ip, s) in &pods {
        assert_eq!(stat(s, "fleet_synced"), 0, "{ip}");
        assert!(stat(s, "fleet_sync_failed") >= 1, "{ip}");
    }
    // Redis back (empty: NOSCRIPT, the script loaded again): recovered by itself.
    engine.redis.restart().unwrap();
    let recovered = load_until(
        || {
            send(3);
        },
        || pods.iter().all(|(_, s)| stat(s, "fleet_recovered") >= 1),
    );

    // webdis hanging: syncs time out (150 ms); requests go on, decided locally.
    engine.webdis.hang();
    let mut hung_sent = 0u64;
    let mut hung_ok = 0u64;
    let fell_back_hung = load_until(
        || {
            hung_sent += 3;
            hung_ok += send(3);
        },
        || pods.iter().all(|(_, s)| stat(s, "fleet_fallback") >= 2),
    );
    assert_eq!(hung_ok, hung_sent, "requests unaffected by the hung engine");
    engine.webdis.resume();
    let recovered_hung = load_until(
        || {
            send(3);
        },
        || pods.iter().all(|(_, s)| stat(s, "fleet_recovered") >= 2),
    );
    for (ip, s) in &pods {
        assert_eq!(
            stat(s, "fleet_fallback"),
            2,
            "{ip}: one fallback per outage"
        );
        assert_eq!(stat(s, "fleet_synced"), 1, "{ip}");
    }
    eprintln!(
        "fleet faults (sync 200 ms, timeout 150 ms): Redis killed -> all three on the fallback in \
         {fell_back:?}, Redis restarted -> all recovered in {recovered:?}; webdis hung -> \
         fallback in {fell_back_hung:?}, resumed -> recovered in {recovered_hung:?}; \
         {sent_during} + {hung_sent} requests during the outages, all answered 200"
    );
    drop(app);
}

#[test]
fn one_envoy_killed_the_others_shares_grow_back() {
    let engine = Engine::start();
    let app = Upstream::start(ample("main")).unwrap();
    // A 1 s window: a share is this and the last window's traffic, so it moves within 2 s.
    let mut pods = pods(&fleet_rule("1000r/s", 100), app.port, engine.webdis.port);
    wait_all(&pods, "fleet_sync_ok", |_| 1);
    let share = |s: &Stack| stat(s, "per_blog.fleet_share_ppm");
    let even = load_until(
        || {
            for (ip, s) in &pods {
                hit(ip, s, "hot");
            }
        },
        || {
            pods.iter()
                .all(|(_, s)| (250_000..=420_000).contains(&share(s)))
        },
    );
    let (_, gone) = pods.remove(2);
    drop(gone);
    let grown = load_until(
        || {
            for (ip, s) in &pods {
                hit(ip, s, "hot");
            }
        },
        || pods.iter().all(|(_, s)| share(s) >= 450_000),
    );
    let shares: Vec<i64> = pods.iter().map(|(_, s)| share(s)).collect();
    eprintln!(
        "fleet shares: even (about 1/3 each) after {even:?} of load; one Envoy killed -> the \
         other two at {shares:?} ppm after {grown:?}"
    );
    drop(app);
}

/// hotkey's rule: hot at 60 r/s over a 1 s window (100 ms ticks); with `fleet`, the rate is
/// the fleet's (sync 200 ms).
fn hot_rule(fleet: bool) -> Value {
    let mut rule = json!({"name": "post_view", "match": {"path_prefix": "/PostView"},
        "key": {"query": "blogId"}, "window_ms": 1000, "threshold_rps": HOT_RPS,
        "cooldown_ms": 5000,
        "action": {"reject": {"status": 503, "retry_after_s": 5}}});
    let mut cfg = json!({"tick_ms": 100, "rules": []});
    if fleet {
        rule["scope"] = json!("fleet");
        cfg["fleet"] =
            json!({"cluster": "webdis", "expected_envoys": 3, "sync_ms": 200, "timeout_ms": 150});
    }
    cfg["rules"] = json!([rule]);
    cfg
}

const HOT_RPS: u64 = 60;
/// What each Envoy is sent: 25 r/s, 0.42 of the threshold; the fleet's 75 r/s is 1.25 x it.
const EACH_RPS: u64 = 25;

/// What one Envoy answered to a paced load of one blog.
#[derive(Debug, Default)]
struct HotLoad {
    sent: u64,
    shed: u64,
    /// Since the load began: when the first shed answer came.
    first_shed: Option<Duration>,
}

/// `rps` requests per second of `blog` to every pod at once (a thread per pod), for
/// `secs`. Paced by a schedule without catch-up: a slot missed is skipped, so no Envoy is
/// ever sent more than `rps`, however slow this machine is.
fn hot_load(pods: &[(&str, Stack)], blog: &str, rps: u64, secs: u64) -> Vec<HotLoad> {
    let t0 = Instant::now();
    let every = Duration::from_micros(1_000_000 / rps);
    let end = Duration::from_secs(secs);
    std::thread::scope(|sc| {
        let handles: Vec<_> = pods
            .iter()
            .map(|(ip, s)| {
                let port = s.envoy.ingress();
                sc.spawn(move || {
                    let mut out = HotLoad::default();
                    let mut next = Duration::ZERO;
                    while next < end {
                        let now = t0.elapsed();
                        if now < next {
                            std::thread::sleep(next - now);
                        }
                        let path = format!("/PostView?blogId={blog}&logNo=1");
                        let r =
                            http::get_at(ip, port, &path).unwrap_or_else(|e| panic!("{ip}: {e}"));
                        out.sent += 1;
                        match r.status {
                            200 => {}
                            503 if r.header("x-spikeguard-action") == Some("hotkey") => {
                                out.shed += 1;
                                out.first_shed.get_or_insert(t0.elapsed());
                            }
                            other => panic!("{ip}: {other} {}", r.body),
                        }
                        // The next slot after now (a slot missed is not made up).
                        next += every;
                        let now = t0.elapsed();
                        while next < now {
                            next += every;
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| panic!("load thread")))
            .collect()
    })
}

fn hot_stat(s: &Stack, what: &str) -> i64 {
    s.envoy.stat(&format!("wasmcustom.sg.hotkey.{what}"))
}

#[test]
fn a_blog_hot_across_the_fleet_only_is_shed_on_all_three() {
    let engine = Engine::start();
    let app = Upstream::start(ample("main")).unwrap();

    // Control: the same rule, local. Each Envoy sees 25 r/s of a 60 r/s threshold: never hot.
    let local = pods_of("hotkey", &hot_rule(false), app.port, engine.webdis.port);
    let control = hot_load(&local, "quiz", EACH_RPS, 4);
    for ((ip, s), l) in local.iter().zip(&control) {
        assert_eq!(l.shed, 0, "{ip}: shed while local: {l:?}");
        assert_eq!(hot_stat(s, "detections"), 0, "{ip}");
        assert!(
            hot_stat(s, "post_view.seen") >= 1,
            "{ip}: the rule saw nothing"
        );
    }
    // The reference: the fleet's whole 75 r/s sent to one Envoy, judged locally. Detection
    // waits for the 1 s window to hold the threshold's worth (60 / 75 = 0.8 s) either way;
    // what the fleet adds on top is the sync.
    let one = hot_load(&local[..1], "quiz2", 3 * EACH_RPS, 4);
    let alone = one[0]
        .first_shed
        .unwrap_or_else(|| panic!("one Envoy at {} r/s never shed: {:?}", 3 * EACH_RPS, one[0]));
    drop(local);

    // Fleet: the same load is 75 r/s across the three, hot on every one of them.
    let pods = pods_of("hotkey", &hot_rule(true), app.port, engine.webdis.port);
    for (_, s) in &pods {
        s.envoy.wait_stat(
            "wasmcustom.sg.hotkey.fleet_sync_ok",
            Duration::from_secs(30),
            |v| v >= 1,
        );
    }
    let fleet = hot_load(&pods, "quiz", EACH_RPS, 6);
    let mut firsts = Vec::new();
    let mut fallbacks = Vec::new();
    for ((ip, s), l) in pods.iter().zip(&fleet) {
        let first = l
            .first_shed
            .unwrap_or_else(|| panic!("{ip}: never shed, fleet-wide hot: {l:?}"));
        firsts.push(first);
        assert!(hot_stat(s, "detections") >= 1, "{ip}");
        assert!(hot_stat(s, "post_view.shed") >= 1, "{ip}");
        // Locally 25 r/s is never hot (the control): what shed here was the fleet's rate. A
        // sync that timed out on a busy machine (a fallback, then a recovery) does not undo
        // that, so it is reported, not failed on.
        assert!(hot_stat(s, "fleet_sync_ok") >= 2, "{ip}");
        fallbacks.push(hot_stat(s, "fleet_fallback"));
    }
    eprintln!(
        "fleet hot key: {EACH_RPS} r/s to each of three Envoys (threshold {HOT_RPS} r/s, sync \
         200 ms, tick 100 ms): local-only never hot ({:?} sent); fleet: first shed on each \
         after {firsts:?} of load; shed/sent {:?}; reference, all {} r/s to one Envoy \
         (local): first shed after {alone:?}; fallbacks {fallbacks:?}",
        control.iter().map(|l| l.sent).collect::<Vec<_>>(),
        fleet.iter().map(|l| (l.shed, l.sent)).collect::<Vec<_>>(),
        3 * EACH_RPS
    );
    drop(app);
}
