//! The shipped bundle (`envoy.yaml` as it is: every filter's config, the route timeout and the
//! main_app circuit breakers) in front of a finite app, hit by the emergency-SMS spike: 28x the
//! baseline on three hot blogs whose links are written in several URL forms (query spellings,
//! encodings, cache-busters, the path form, the post list), over a Zipf baseline of normal users.
//! What is asserted is what spikeguard decides, read per request from the answer: which backend
//! answered (`x-upstream`), whether it was a simple page (`x-spikeguard-simple-page`).

use sg_e2e::envoy::{Bundle, Envoy};
use sg_e2e::loadgen::{run_schedule, Outcome, Planned};
use sg_e2e::upstream::{Upstream, UpstreamConfig};
use std::collections::BTreeMap;

/// Baseline: 90 pages/s over 10,000 blogs (Zipf, s = 1).
const BASE_RPS: u64 = 90;
const BLOGS: u64 = 10_000;
/// The spike: 28x the baseline, on three blogs.
const HOT: [&str; 3] = ["hotA", "hotB", "hotC"];
const SPIKE_X: u64 = 28;
const PRE_MS: u64 = 4_000;
const SPIKE_MS: u64 = 10_000;

/// The hot blogs' URL forms: (label, template). `{b}` blog, `{n}` post, `{r}` a random number.
const FORMS: &[(&str, &str)] = &[
    ("query", "/PostView?blogId={b}&logNo={n}"),
    ("query reordered", "/PostView?logNo={n}&blogId={b}"),
    ("query encoded", "/PostView?%62logId={b}&log%4Eo={n}"),
    ("cache-buster", "/PostView?blogId={b}&logNo={n}&x={r}"),
    (
        "utm + buster",
        "/PostView?utm_source=sms&blogId={b}&_={r}&logNo={n}",
    ),
    ("path form", "/{b}/{n}"),
    ("path form, slash", "/{b}/{n}/"),
    ("post list", "/PostList?blogId={b}"),
];

/// A small deterministic generator (the schedule must not depend on the machine).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 11
    }
    fn unit(&mut self) -> f64 {
        (self.next() % 1_000_000) as f64 / 1_000_000.0
    }
}

/// Zipf rank in 1..=n by inverse CDF over precomputed cumulative weights.
fn zipf(cdf: &[f64], u: f64) -> u64 {
    cdf.partition_point(|&c| c < u) as u64 + 1
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Normal { spike: bool },
    Hot { form: usize },
}

fn plan(rng: &mut Lcg) -> (Vec<Planned>, Vec<Who>) {
    let h: f64 = (1..=BLOGS).map(|r| 1.0 / r as f64).sum();
    let mut acc = 0.0;
    let cdf: Vec<f64> = (1..=BLOGS)
        .map(|r| {
            acc += 1.0 / r as f64 / h;
            acc
        })
        .collect();
    let (mut plan, mut who) = (Vec::new(), Vec::new());
    let total_ms = PRE_MS + SPIKE_MS;
    // Normal users: PostView (both forms) and PostList, evenly spaced.
    let n = BASE_RPS * total_ms / 1000;
    for i in 0..n {
        let at = i * 1_000_000 / BASE_RPS;
        let blog = zipf(&cdf, rng.unit());
        let path = match i % 5 {
            0 => format!("/PostList?blogId=blog{blog}"),
            1 => format!("/blog{blog}/{}", 1 + rng.next() % 50),
            _ => format!("/PostView?blogId=blog{blog}&logNo={}", 1 + rng.next() % 50),
        };
        plan.push(Planned::get(at, path));
        who.push(Who::Normal {
            spike: at >= PRE_MS * 1000,
        });
    }
    // The spike: 28x the baseline rate on the hot blogs, every form in turn.
    let rate = BASE_RPS * SPIKE_X;
    let m = rate * SPIKE_MS / 1000;
    for i in 0..m {
        let at = PRE_MS * 1000 + i * 1_000_000 / rate;
        let form = (i as usize / HOT.len()) % FORMS.len();
        let path = FORMS[form]
            .1
            .replace("{b}", HOT[i as usize % HOT.len()])
            .replace("{n}", &(1 + rng.next() % 3).to_string())
            .replace("{r}", &rng.next().to_string());
        plan.push(Planned::get(at, path));
        who.push(Who::Hot { form });
    }
    (plan, who)
}

/// The shipped bundle with ports pointed at this test's backends, nothing else changed.
fn bundle(app: &Upstream, simple: &Upstream) -> Envoy {
    let mut b = Bundle::load().unwrap_or_else(|e| panic!("bundle: {e}"));
    for (cluster, port) in [
        ("main_app", app.port),
        ("outbound_api", app.port),
        ("simple_page", simple.port),
        ("spikeguard_control", simple.port),
    ] {
        b.set_cluster_port(cluster, port)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    b.launch(2).unwrap_or_else(|e| panic!("envoy: {e}"))
}

fn simple_page() -> Upstream {
    Upstream::start(UpstreamConfig {
        name: "simple".into(),
        capacity: 4096,
        max_queue: 100_000,
        cache_control: Some("public, max-age=600".into()),
        ..UpstreamConfig::default()
    })
    .unwrap_or_else(|e| panic!("simple-page upstream: {e}"))
}

fn p99(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0)
}

fn from_main(o: &Outcome) -> bool {
    o.header("x-upstream") == Some("main")
}

#[test]
fn a_28x_spike_on_hot_blogs_in_every_url_form_is_served_and_normal_users_do_not_notice() {
    // The demo app: 32 workers, 50 ms a page (640 pages/s), its own 1 s queue timeout.
    let app = Upstream::start(UpstreamConfig {
        name: "main".into(),
        capacity: 32,
        latency_ms: 50,
        queue_timeout_ms: 1000,
        ..UpstreamConfig::default()
    })
    .unwrap_or_else(|e| panic!("app: {e}"));
    let simple = simple_page();
    let envoy = bundle(&app, &simple);
    let (plan, who) = plan(&mut Lcg(7));
    let out = run_schedule(&envoy.url(), &plan, 10_000).unwrap_or_else(|e| panic!("{e}"));

    // Detection: the first hot request answered as a simple page.
    let hot: Vec<(&Outcome, usize)> = out
        .iter()
        .zip(&who)
        .filter_map(|(o, w)| match w {
            Who::Hot { form } => Some((o, *form)),
            Who::Normal { .. } => None,
        })
        .collect();
    let detected_us = hot
        .iter()
        .filter(|(o, _)| o.header("x-spikeguard-simple-page").is_some())
        .map(|(o, _)| o.sent_us)
        .min()
        .unwrap_or_else(|| panic!("the hot blogs were never diverted; {}", envoy.log_tail(40)));
    let settled_us = detected_us + 1_000_000;

    // Per URL form: requests, 200s, reached the app (whole spike; after detection + 1 s).
    let mut table: BTreeMap<usize, [u64; 6]> = BTreeMap::new();
    for (o, form) in &hot {
        let row = table.entry(*form).or_default();
        let after = o.sent_us >= settled_us;
        let cols = [
            true,
            o.status == 200,
            from_main(o),
            after,
            after && o.status == 200,
            after && from_main(o),
        ];
        for (c, on) in row.iter_mut().zip(cols) {
            *c += u64::from(on);
        }
    }
    println!(
        "detected {} ms after the spike began\n{:<18} {:>8} {:>8} {:>8} | after detection + 1 s: {:>8} {:>8} {:>8}",
        (detected_us / 1000).saturating_sub(PRE_MS),
        "form",
        "requests",
        "200",
        "to app",
        "requests",
        "200",
        "to app"
    );
    for (form, r) in &table {
        println!(
            "{:<18} {:>8} {:>8} {:>8} | {:>30} {:>8} {:>8}",
            FORMS[*form].0, r[0], r[1], r[2], r[3], r[4], r[5]
        );
    }
    let sum = |i: usize| table.values().map(|r| r[i]).sum::<u64>();
    let (after, after_ok, after_app) = (sum(3), sum(4), sum(5));

    // Normal users: success and latency before and during the spike.
    let normal = |spiking: bool| -> Vec<&Outcome> {
        out.iter()
            .zip(&who)
            .filter(|(_, w)| **w == Who::Normal { spike: spiking })
            .map(|(o, _)| o)
            .collect()
    };
    let (pre, during) = (normal(false), normal(true));
    let ok = |v: &[&Outcome]| v.iter().filter(|o| o.status == 200).count();
    let lat = |v: &[&Outcome]| -> Vec<u64> {
        v.iter()
            .filter(|o| o.status == 200)
            .map(|o| o.done_us.saturating_sub(o.sent_us))
            .collect()
    };
    let (pre_p99, spike_p99) = (p99(lat(&pre)), p99(lat(&during)));
    for o in pre.iter().chain(&during).filter(|o| o.status != 200) {
        println!(
            "normal user not served: status {} at {} ms ({} ms into the spike), headers {:?}",
            o.status,
            o.sent_us / 1000,
            (o.sent_us / 1000) as i64 - PRE_MS as i64,
            o.headers
        );
    }
    let all_normal = pre.len() + during.len();
    let normal_ok = ok(&pre) + ok(&during);
    println!(
        "normal users: {normal_ok}/{all_normal} answered 200; p99 {} ms before the spike, {} ms during it",
        pre_p99 / 1000,
        spike_p99 / 1000
    );
    println!(
        "hot blogs: {} requests, {} answered 200, {} reached the app; after detection + 1 s: {after_ok}/{after} 200, {after_app} to the app",
        sum(0),
        sum(1),
        sum(2)
    );
    let st = envoy.stats();
    let rl_skipped: i64 = st
        .iter()
        .filter(|(k, _)| {
            k.starts_with("wasmcustom.sg.ratelimit.") && k.ends_with(".skipped_diverted")
        })
        .map(|(_, v)| *v)
        .sum();
    println!("ratelimit skipped {rl_skipped} diverted requests");

    assert!(
        detected_us < (PRE_MS + SPIKE_MS / 2) * 1000,
        "detected only {} ms into the spike",
        detected_us / 1000 - PRE_MS
    );
    assert_eq!(
        after_app, 0,
        "after detection + 1 s no hot-blog request reaches the main app, whatever its URL form"
    );
    for (form, r) in &table {
        assert!(r[3] > 0, "{} was sent after detection", FORMS[*form].0);
    }
    assert!(
        after_ok * 100 >= after * 99,
        "hot blogs after detection + 1 s: {after_ok}/{after} answered 200"
    );
    assert!(
        normal_ok * 1000 >= all_normal * 999,
        "normal users: {normal_ok}/{all_normal} answered 200"
    );
    // Normal users' p99 during the spike vs before is printed above, not asserted: it is a
    // speed figure (the 2-core machine itself runs the spike), measured by `make drill`
    // (docs/DRILL.md), and a test must not fail because the machine is slow.
    assert!(
        rl_skipped > 0,
        "diverted requests are not charged to the app's limits"
    );
}

#[test]
fn an_app_smaller_than_the_load_gets_fast_overflow_never_a_queue_longer_than_the_route_timeout() {
    // 8 workers x 20 ms (400 pages/s) against 2,500 pages/s of distinct cold pages for 3 s:
    // no key is hot, so only the bundle's Envoy limits and simplepage's overload trigger act.
    let app = Upstream::start(UpstreamConfig {
        name: "main".into(),
        capacity: 8,
        latency_ms: 20,
        queue_timeout_ms: 1000,
        max_queue: 100_000,
        ..UpstreamConfig::default()
    })
    .unwrap_or_else(|e| panic!("app: {e}"));
    let simple = simple_page();
    let envoy = bundle(&app, &simple);
    let rate = 2_500u64;
    let plan: Vec<Planned> = (0..rate * 3)
        .map(|i| {
            Planned::get(
                i * 1_000_000 / rate,
                format!("/PostView?blogId=cold{i}&logNo=1"),
            )
        })
        .collect();
    let out = run_schedule(&envoy.url(), &plan, 30_000).unwrap_or_else(|e| panic!("{e}"));
    // The bundle's main route timeout (envoy.yaml, blog_main).
    let route_timeout_us = 1_000_000;
    let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
    let mut by_source: BTreeMap<&str, u64> = BTreeMap::new();
    let mut waits: Vec<u64> = Vec::new();
    for o in &out {
        *by_status.entry(o.status).or_default() += 1;
        waits.push(o.done_us.saturating_sub(o.sent_us));
        let source = if o.header("x-envoy-overloaded").is_some() {
            "envoy circuit breaker"
        } else if o.header("x-thread-full").is_some() {
            "app thread full"
        } else if o.header("x-spikeguard-simple-page").is_some() {
            "simple page"
        } else if o.header("x-spikeguard-action").is_some() {
            "spikeguard local reply"
        } else if o.header("x-upstream") == Some("main") {
            "app"
        } else {
            "other"
        };
        *by_source.entry(source).or_default() += 1;
    }
    waits.sort_unstable();
    let max_wait = waits.last().copied().unwrap_or(0);
    let p50 = waits.get(waits.len() / 2).copied().unwrap_or(0);
    let overflow = envoy.stat("cluster.main_app.upstream_rq_pending_overflow")
        + envoy.stat("cluster.main_app.upstream_cx_overflow");
    let timeouts = envoy.stat("cluster.main_app.upstream_rq_timeout");
    println!(
        "statuses {by_status:?}; answered by {by_source:?}; wait p50 {} ms, max {} ms; Envoy overflow {overflow}, route timeouts {timeouts}; app served {}",
        p50 / 1000,
        max_wait / 1000,
        app.stats().total
    );
    assert_eq!(by_status.get(&0), None, "every request got an answer");
    let refused_fast = by_source.get("envoy circuit breaker").copied().unwrap_or(0);
    assert!(
        refused_fast > 0,
        "the app was offered more than it can serve: Envoy's circuit breaker answered the overflow"
    );
    assert_eq!(
        by_source.get("other"),
        None,
        "every answer came from the app, a simple page or Envoy's circuit breaker"
    );
    // One route timeout plus what an answer takes to come back, whatever the machine's speed:
    // a request never waits in a queue longer than the route timeout.
    assert!(
        max_wait <= route_timeout_us + 1_000_000,
        "a request waited {} ms",
        max_wait / 1000
    );
}
