//! Native tests of the harness: demo upstream + load generator, all on 127.0.0.1.

use std::time::Duration;

use sg_integration::http::{self, Response};
use sg_integration::loadgen::{
    run, run_schedule, run_with_progress, KeyMix, LoadConfig, Planned, Progress,
};
use sg_integration::upstream::{Upstream, UpstreamConfig, UpstreamStats};
use sg_integration::wait;

/// One request through the shared test client, a JSON body when there is one.
fn send(port: u16, method: &str, path: &str, body: &str) -> Response {
    let json: &[(&str, &[u8])] = &[("content-type", b"application/json")];
    let headers = if body.is_empty() { &[][..] } else { json };
    http::request(port, method, path, headers, body.as_bytes())
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

#[test]
fn small_pool_answers_thread_full() {
    let up = Upstream::start(UpstreamConfig {
        name: "tiny".into(),
        capacity: 2,
        latency_ms: 200,
        queue_timeout_ms: 100,
        ..UpstreamConfig::default()
    })
    .unwrap();
    let port = up.port;
    let handles: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                send(port, "GET", &format!("/PostView?blogId=b{i}&logNo=1"), "")
            })
        })
        .collect();
    let results: Vec<Response> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = results.iter().filter(|r| r.status == 200).count();
    let full = results
        .iter()
        .filter(|r| r.status == 503 && r.body.contains("thread full"))
        .count();
    assert!(ok >= 2, "{results:?}");
    assert!(full >= 1, "{results:?}");
    assert_eq!(ok + full, 6, "{results:?}");
    for r in &results {
        assert_eq!(r.header("x-upstream"), Some("tiny"), "{r:?}");
    }
    let st = up.stats();
    assert_eq!(st.total, 6);
    assert_eq!(st.thread_full, full as u64);
    assert!(st.max_in_flight <= 2, "{st:?}");
    assert_eq!(st.by_page.get("PostView"), Some(&6));
    assert_eq!(st.by_status.get(&503), Some(&(full as u64)));
}

#[test]
fn constant_rate_run_is_all_ok() {
    let up = Upstream::start(UpstreamConfig::default()).unwrap();
    let report = run(&LoadConfig {
        target: up.url(),
        rate_rps: 200.0,
        duration_ms: 1000,
        path_template: "/PostView?blogId={key}&logNo=1".into(),
        timeout_ms: 2000,
        record: true,
        ..LoadConfig::default()
    })
    .unwrap();
    assert!((195..=200).contains(&report.sent), "{report:?}");
    assert_eq!(report.completed, report.sent);
    assert_eq!(report.errors, 0);
    assert_eq!(report.dropped_client_side, 0);
    assert_eq!(report.by_status.get(&200), Some(&report.sent));
    assert!(
        report.latency_us.p50 > 0 && report.latency_us.p50 < 100_000,
        "{:?}",
        report.latency_us
    );
    assert!(report.latency_us.max >= report.latency_us.p99);
    assert!(
        report.duration_ms >= 990 && report.duration_ms < 3000,
        "{}",
        report.duration_ms
    );
    assert_eq!(report.records.len() as u64, report.sent);
    let r = &report.records[10];
    assert_eq!(r.key, "k0");
    assert!(r.done_us >= r.sent_us && r.sent_us + 1000 >= r.intended_us);
    assert!(
        r.headers
            .iter()
            .any(|(k, v)| k == "x-upstream" && v == "main"),
        "{r:?}"
    );
    // Intended times follow the schedule: request i at i * 5 ms.
    assert_eq!(report.records[100].intended_us, 500_000);
    let st = up.stats();
    assert_eq!(st.by_key.get("k0"), Some(&report.sent));
    assert_eq!(st.requests_by_method.get("GET"), Some(&report.sent));
    assert_eq!(st.request_log_tail.len(), 200.min(report.sent as usize));
}

/// Two loads counting into one `Progress` (as the demo's normal traffic and spike do): its
/// counters add up to their reports, and normal users are the keys not in `hot`.
#[test]
fn progress_counts_two_loads() {
    let up = Upstream::start(UpstreamConfig::default()).unwrap();
    let progress = std::sync::Arc::new(Progress::default());
    let cfg = |rate: f64, hot: Vec<(String, f64)>| LoadConfig {
        target: up.url(),
        rate_rps: rate,
        duration_ms: 1000,
        keys: KeyMix {
            hot,
            ..KeyMix::default()
        },
        timeout_ms: 5000,
        ..LoadConfig::default()
    };
    let normal = cfg(100.0, Vec::new());
    let spike = cfg(200.0, vec![("hot".into(), 1.0)]);
    let (a, b) = std::thread::scope(|s| {
        let p = progress.clone();
        let a = s.spawn(move || run_with_progress(&normal, Some(p)).unwrap());
        let p = progress.clone();
        let b = s.spawn(move || run_with_progress(&spike, Some(p)).unwrap());
        (a.join().unwrap(), b.join().unwrap())
    });
    let ord = std::sync::atomic::Ordering::Relaxed;
    assert_eq!(
        progress.offered.load(ord),
        a.sent + a.dropped_client_side + b.sent + b.dropped_client_side
    );
    let ok = |r: &sg_integration::loadgen::Report| r.by_status.get(&200).copied().unwrap_or(0);
    assert_eq!(progress.done(2), ok(&a) + ok(&b));
    assert_eq!(progress.done(0), a.errors + b.errors);
    assert_eq!(progress.normal_done.load(ord), a.sent);
    assert_eq!(progress.normal_ok.load(ord), ok(&a));
    let h = progress.take_normal_latency().unwrap();
    assert_eq!(h.len(), a.completed);
    assert!(progress.take_normal_latency().is_none());
}

#[test]
fn zipf_rank_one_is_hottest() {
    let up = Upstream::start(UpstreamConfig::default()).unwrap();
    let report = run(&LoadConfig {
        target: up.url(),
        rate_rps: 400.0,
        duration_ms: 1000,
        path_template: "/{key}/7".into(),
        keys: KeyMix {
            zipf_n: 50,
            zipf_s: 1.1,
            key_prefix: "blog".into(),
            seed: 42,
            ..KeyMix::default()
        },
        ..LoadConfig::default()
    })
    .unwrap();
    assert_eq!(report.by_status.get(&200), Some(&report.sent), "{report:?}");
    let st = up.stats();
    let (top, n) = st.by_key.iter().max_by_key(|(_, n)| **n).unwrap();
    assert_eq!(top, "blog1", "{:?}", st.by_key);
    assert!(*n > st.by_key.get("blog2").copied().unwrap_or(0));
    assert_eq!(
        report.by_key_status.get("blog1").and_then(|m| m.get(&200)),
        Some(n)
    );
    assert!(report.by_key_status.len() <= 50);
    assert!(st.by_key.keys().all(|k| k.starts_with("blog")));
}

#[test]
fn run_schedule_keeps_plan_order() {
    let up = Upstream::start(UpstreamConfig {
        latency_ms: 20,
        ..UpstreamConfig::default()
    })
    .unwrap();
    let mut plan = vec![
        Planned::get(300_000, "/PostList?blogId=late"),
        Planned::get(0, "/PostView?blogId=early&logNo=1"),
    ];
    // Three requests of one key at the same instant.
    for _ in 0..3 {
        plan.push(Planned {
            at_us: 100_000,
            path: "/PostView?blogId=same&logNo=2".into(),
            headers: vec![("x-test".into(), "1".into())],
            method: "GET".into(),
        });
    }
    plan.push(Planned {
        at_us: 0,
        path: "/__nope".into(),
        headers: vec![],
        method: "HEAD".into(),
    });
    let out = run_schedule(&up.url(), &plan, 2000).unwrap();
    assert_eq!(out.len(), plan.len());
    for (i, o) in out.iter().enumerate() {
        assert_eq!(o.index, i);
        assert_eq!(o.status, 200, "{o:?}");
        assert_eq!(o.header("x-upstream"), Some("main"));
        assert!(o.sent_us >= plan[i].at_us, "{o:?}");
        assert!(o.done_us >= o.sent_us + 20_000, "{o:?}");
    }
    assert!(out[0].sent_us > out[1].done_us);
    for o in &out[2..5] {
        assert!(o.sent_us < 150_000, "{o:?}");
    }
    let st = up.stats();
    assert_eq!(st.by_key.get("same"), Some(&3));
    assert_eq!(st.by_page.get("PostList"), Some(&1));
    assert_eq!(st.requests_by_method.get("HEAD"), Some(&1));
}

#[test]
fn admin_config_changes_latency_and_errors() {
    let up = Upstream::start(UpstreamConfig::default()).unwrap();
    let port = up.port;
    let one = |path: &str| {
        run_schedule(&up.url(), &[Planned::get(0, path)], 3000)
            .unwrap()
            .remove(0)
    };

    let fast = one("/PostView?blogId=a&logNo=1");
    assert_eq!(fast.status, 200);
    assert!(fast.done_us - fast.sent_us < 150_000, "{fast:?}");

    let r = send(port, "POST", "/__admin/config", r#"{"latency_ms":300}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    let slow = one("/PostView?blogId=a&logNo=1");
    assert_eq!(slow.status, 200);
    assert!(slow.done_us - slow.sent_us >= 300_000, "{slow:?}");

    let r = send(
        port,
        "POST",
        "/__admin/config",
        r#"{"latency_ms":0,"error_rate":1.0,"error_status":502}"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(one("/").status, 502);
    up.set_error_rate(0.0, 500);
    assert_eq!(one("/healthz").status, 200);

    assert_eq!(
        send(port, "POST", "/__admin/config", "{not json").status,
        400
    );

    let r = send(port, "GET", "/__admin/stats", "");
    assert_eq!(r.status, 200);
    let st: UpstreamStats = serde_json::from_str(&r.body).unwrap();
    assert_eq!(st.total, 4);
    assert_eq!(st.by_status.get(&502), Some(&1));
    assert_eq!(st.by_page.get("Other"), Some(&2));
    assert_eq!(st, up.stats());

    assert_eq!(send(port, "POST", "/__admin/reset", "").status, 200);
    wait::until(
        "upstream counters reset",
        Duration::from_secs(2),
        || up.stats().total,
        |t| *t == 0,
    );

    up.set_latency_ms(250);
    let slow = one("/x");
    assert!(slow.done_us - slow.sent_us >= 250_000, "{slow:?}");
}

#[test]
fn api_proxy_reports_egress_status() {
    let api = Upstream::start(UpstreamConfig {
        name: "api".into(),
        ..UpstreamConfig::default()
    })
    .unwrap();
    let main = Upstream::start(UpstreamConfig {
        egress_url: Some(api.url()),
        cache_control: Some("public, max-age=60".into()),
        ..UpstreamConfig::default()
    })
    .unwrap();
    let lone = Upstream::start(UpstreamConfig::default()).unwrap();

    let r = send(main.port, "GET", "/api-proxy", "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-egress-status"), Some("200"), "{r:?}");
    let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(doc["egress_status"], 200);
    assert_eq!(api.stats().by_page.get("Api"), Some(&1));

    api.set_error_rate(1.0, 429);
    assert_eq!(send(main.port, "GET", "/api-proxy", "").status, 429);

    assert_eq!(send(lone.port, "GET", "/api-proxy", "").status, 502);

    let r = send(main.port, "GET", "/alice/123", "");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("cache-control"),
        Some("public, max-age=60"),
        "{r:?}"
    );
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.contains("text/html")),
        "{r:?}"
    );
    assert!(
        r.body.contains("PostView") && r.body.contains("alice"),
        "{}",
        r.body
    );

    let r = send(api.port, "GET", "/api/json?x=1", "");
    assert_eq!(
        r.status, 429,
        "error injection applies to the API too: {}",
        r.body
    );
    assert_eq!(r.header("cache-control"), None);
    drop(api);
    // The upstream is gone: the proxy call fails.
    assert_eq!(send(main.port, "GET", "/api-proxy", "").status, 502);
}

#[test]
fn drops_when_max_in_flight_reached_and_counts_errors() {
    let up = Upstream::start(UpstreamConfig {
        latency_ms: 400,
        ..UpstreamConfig::default()
    })
    .unwrap();
    let report = run(&LoadConfig {
        target: up.url(),
        rate_rps: 100.0,
        duration_ms: 300,
        max_in_flight: 5,
        timeout_ms: 200,
        ..LoadConfig::default()
    })
    .unwrap();
    assert_eq!(report.sent + report.dropped_client_side, 30, "{report:?}");
    assert!(report.dropped_client_side > 0, "{report:?}");
    assert_eq!(report.errors, report.sent, "all time out: {report:?}");
    assert_eq!(report.by_status.get(&0), Some(&report.sent));
}

#[test]
fn pages_call_egress_when_configured() {
    let api = Upstream::start(UpstreamConfig {
        name: "api".into(),
        ..UpstreamConfig::default()
    })
    .unwrap();
    let main = Upstream::start(UpstreamConfig {
        page_calls_egress: true,
        ..UpstreamConfig::default()
    })
    .unwrap();
    // No egress URL yet: the page fails like an API error.
    let r = send(main.port, "GET", "/PostView?blogId=bob&logNo=1", "");
    assert_eq!((r.status, r.header("x-api")), (502, Some("error")), "{r:?}");

    main.set_egress_url(&api.url());
    let r = send(main.port, "GET", "/PostView?blogId=bob&logNo=1", "");
    assert_eq!((r.status, r.header("x-api")), (200, Some("ok")), "{r:?}");
    assert!(r.body.contains("related: from the api"), "{}", r.body);
    let r = send(main.port, "GET", "/bob/1", "");
    assert_eq!((r.status, r.header("x-api")), (200, Some("ok")), "{r:?}");
    assert_eq!(api.stats().by_page.get("Api"), Some(&2));
    // PostList does not call it.
    let r = send(main.port, "GET", "/PostList?blogId=bob", "");
    assert_eq!((r.status, r.header("x-api")), (200, None), "{r:?}");

    api.set_error_rate(1.0, 503);
    let r = send(main.port, "GET", "/PostView?blogId=bob&logNo=1", "");
    assert_eq!((r.status, r.header("x-api")), (502, Some("error")), "{r:?}");
    let counts = main.stats().api;
    assert_eq!(counts.get("ok"), Some(&2), "{counts:?}");
    assert_eq!(counts.get("error"), Some(&2), "{counts:?}");

    // Off by default.
    let plain = Upstream::start(UpstreamConfig {
        egress_url: Some(api.url()),
        ..UpstreamConfig::default()
    })
    .unwrap();
    let r = send(plain.port, "GET", "/PostView?blogId=bob&logNo=1", "");
    assert_eq!((r.status, r.header("x-api")), (200, None), "{r:?}");
    assert!(plain.stats().api.is_empty());
}
