//! End-to-end tests of the `ratelimit` filter in a real Envoy (1.40, V8).

use serde_json::json;
use sg_e2e::Stack;

#[test]
fn nodelay_burst_then_reject_with_headers() {
    let cfg = json!({"rules": [{"name": "per_blog", "key": {"query": "blogId"},
        "rate": "1r/m", "burst": 2, "mode": "nodelay"}]});
    let s = Stack::start(&[("ratelimit", cfg)], 1);
    let codes: Vec<u16> = (0..5).map(|_| s.get("/PostView?blogId=a&logNo=1").status).collect();
    assert_eq!(codes, vec![200, 200, 200, 429, 429], "{}", s.envoy.log_tail(30));
    let r = s.get("/PostView?blogId=a&logNo=1");
    assert_eq!(r.header("x-spikeguard-action"), Some("ratelimit"));
    assert!(r.header("retry-after").is_some_and(|v| v.parse::<u64>().unwrap_or(0) >= 1), "{r:?}");
    assert_eq!(r.header("ratelimit-policy"), Some("\"per_blog\";q=1;w=60"));
    // Another key is unaffected and carries the quota headers.
    let ok = s.get("/PostView?blogId=b&logNo=1");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("ratelimit"), Some("\"per_blog\";r=2;t=0"), "{ok:?}");
    assert_eq!(s.envoy.stat("wasmcustom.sg.ratelimit.per_blog.rejected"), 3);
    assert_eq!(s.envoy.stat("wasmcustom.sg.ratelimit.per_blog.allowed"), 4);
}
