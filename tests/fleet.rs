//! Three real Envoys as three pods ([11/11]): each its own process and admin port, its
//! listeners on its own loopback address (127.0.0.2–4), one demo app behind all three, load
//! spread across them. Today's `per_blog` limit is per Envoy: the fleet admits three times
//! it. This is the baseline the fleet-scoped rule is measured against (`"scope": "fleet"`,
//! not built yet: docs/ARCHITECTURE.md "Fleet").
//!
//! Speed-independent: each Envoy gets far more requests for one blog than its burst, and the
//! check is on counts a token bucket fixes (each admits at least its whole burst, at most
//! burst + rate x elapsed), never on how fast requests went.

use serde_json::json;
use sg_e2e::upstream::Upstream;
use sg_e2e::{ample, http, Stack};
use std::time::Instant;

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
