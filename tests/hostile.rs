//! Hostile requests (issue 15, "[10/11] Hardening"): what the internet sends, through the WHOLE
//! bundle (every filter of `envoy.yaml` with its shipped config, on both listeners) in a real
//! Envoy with ONE worker (`--concurrency 1`), so every request of a test meets the same filter
//! VMs. Each case of the table has its defined outcome, and after each one the next normal
//! requests on that worker must still be protected:
//! - hotkey's block list still refuses the blocked key (403),
//! - a fresh ratelimit key still gets 200 then 429 (1r/m, burst 0),
//! - simplepage still diverts its always-diverted page to the simple-page backend,
//! - sli counted every request that reached the filters (its totals, waited for),
//! - and Envoy shows no Wasm failure: every `wasm.*.vm_reload*` counter 0, as many live V8
//!   VMs as at start, no panic or failed Wasm call in its log.
//!
//! The probe rules (`guard_*`) are added to the shipped configs, which are otherwise unchanged
//! (sli's `tick_ms` is 100 so its counts are flushed sooner); the ingress routes have no
//! timeout, so a slow machine never turns an answer into a 504. A slow client (slowloris) runs
//! beside the table and must be ended by the bundle's `request_headers_timeout`.
//! `a_1_mib_key_is_capped_by_every_filter` raises Envoy's header limit (the shipped 60 KiB
//! refuses a 1 MiB key with 431, a case of the table) to show each filter's key cap, and
//! `many_distinct_keys_through_every_filter_stay_bounded` sends 75,000 new keys through every
//! filter at once (`make memory` runs 1,000,000, docs/BENCHMARKS.md "Memory"; this run is
//! kept short for `make test`).
//! Nothing here depends on the machine's speed: every wait is for a condition.

use serde_json::{json, Value};
use sg_e2e::envoy::Bundle;
use sg_e2e::http::{self, H2Outcome, Response};
use sg_e2e::loadgen::{self, KeyMix, LoadConfig};
use sg_e2e::{wait, Stack};
use sg_integration::memory::wasm_memories;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);
const BLOCKED: &str = "blocked-blog";
const BLOCK_BODY: &str = "blocked by hotkey\n";

/// The bundle's six filters with their shipped configs, plus the probe rules:
/// hotkey `guard_block` (403 for blog `blocked-blog`, from header `x-client` else `blogId`,
/// on every PostView URL form), simplepage `guard_page` (`/guard-simple` always diverted),
/// ratelimit `guard` (`/guard-limit`, key: query `k` else header `x-k`, 1r/m, burst 0), hotkey
/// `guard_hot` (`/guard-hot`, the same key, hot at 2 r/s, 503).
fn probe_bundle(sli_tick_ms: u64) -> Vec<(&'static str, Value)> {
    sg_e2e::shipped()
        .into_iter()
        .map(|(f, mut cfg)| {
            let rules = |c: &mut Value| -> Vec<Value> {
                c["rules"].as_array().cloned().unwrap_or_default()
            };
            match f {
                "sli" => cfg["tick_ms"] = json!(sli_tick_ms),
                "hotkey" => {
                    let mut r = rules(&mut cfg);
                    r.push(json!({"name": "guard_block",
                        "match": {"path_prefix": ["/PostView", "/PostList"],
                                  "path_regex": "^/[A-Za-z0-9_.-]+/[0-9]+$"},
                        "key": {"first_of": [{"header": "x-client"}, {"query": "blogId"},
                                             {"path_regex": "^/([A-Za-z0-9_.-]+)/[0-9]+$"}]},
                        "lowercase_key": true, "threshold_rps": 1_000_000,
                        "action": {"reject": {"status": 403, "body": BLOCK_BODY}},
                        "block": [{"key": BLOCKED}]}));
                    r.push(
                        json!({"name": "guard_hot", "match": {"path_prefix": "/guard-hot"},
                        "key": {"first_of": [{"query": "k"}, {"header": "x-k"}]}, "threshold_rps": 2, "cooldown_ms": 60_000,
                        "action": {"reject": {"status": 503}}}),
                    );
                    cfg["rules"] = json!(r);
                }
                "simplepage" => {
                    let mut r = rules(&mut cfg);
                    r.insert(
                        0,
                        json!({"name": "guard_page", "match": {"path_prefix": "/guard-simple"},
                        "triggers": {"always": true}, "cache": {"ttl_ms": 60_000}}),
                    );
                    cfg["rules"] = json!(r);
                }
                "ratelimit" => {
                    let mut r = rules(&mut cfg);
                    r.push(
                        json!({"name": "guard", "match": {"path_prefix": "/guard-limit"},
                        "key": {"first_of": [{"query": "k"}, {"header": "x-k"}]}, "rate": "1r/m", "burst": 0, "mode": "nodelay"}),
                    );
                    cfg["rules"] = json!(r);
                }
                _ => {}
            }
            (f, cfg)
        })
        .collect()
}

/// The ingress routes without their timeout (the app's 1 s): a slow machine's slow answer is
/// never a 504; what is tested is what Envoy and the filters decide.
fn no_route_timeout(b: &mut Bundle) {
    let routes = b
        .route_config_mut("ingress")
        .and_then(|rc| rc["virtual_hosts"].as_array_mut())
        .unwrap_or_else(|| panic!("no ingress virtual hosts"));
    for r in routes
        .iter_mut()
        .filter_map(|v| v["routes"].as_array_mut())
        .flatten()
    {
        r["route"]["timeout"] = json!("0s");
    }
}

/// An HTTP/1.1 GET of `target` exactly as written, with `Host` and `Connection: close`.
fn get_raw(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A request line and raw header lines (no `Connection: close` added).
fn raw_with(line: &str, headers: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("{line}\r\n").into_bytes();
    for h in headers {
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

/// An HTTP/2 header block: the pseudo-headers given, then `extra`.
fn h2_fields(pseudo: &[(&str, &str)], extra: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut f: Vec<(Vec<u8>, Vec<u8>)> = pseudo
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    f.extend((0..extra).map(|i| (format!("x-h{i}").into_bytes(), b"v".to_vec())));
    f
}

enum Send {
    /// HTTP/1.1 bytes written as they are (`http::raw`).
    Raw(Vec<u8>),
    /// A conforming HTTP/1.1 request (hyper): method, target, body.
    Request(&'static str, String, Vec<u8>),
    /// One HTTP/2 request (prior knowledge) with exactly these header fields (`http::h2_raw`).
    H2(Vec<(Vec<u8>, Vec<u8>)>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Envoy answers this status itself (its codec, before any filter runs).
    Envoy(u16),
    /// The app answers 200 (`x-upstream: main`): every filter ran and let it through.
    App,
    /// hotkey's block list refused it: the blocked key was found in this URL form (403).
    Blocked,
    /// The HTTP/2 stream or connection ended thus.
    H2(H2Outcome),
}

impl Want {
    /// Whether the request reached the filters (and so is counted by sli).
    fn reaches_filters(self) -> bool {
        matches!(
            self,
            Want::App | Want::Blocked | Want::H2(H2Outcome::Status(_))
        )
    }
}

struct Case {
    name: &'static str,
    send: Send,
    want: Want,
}

fn case(name: &'static str, send: Send, want: Want) -> Case {
    Case { name, send, want }
}

fn cases() -> Vec<Case> {
    let mib_key = format!("/PostView?blogId={}&logNo=1", "a".repeat(1 << 20));
    let q60k = {
        let head = "blogId=q60k&x=";
        format!("/PostView?{head}{}", "a".repeat(61_440 - head.len()))
    };
    let params = |n: usize| "a=1&".repeat(n);
    let pseudo = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "localhost"),
    ];
    let with_path = |p: &'static str| {
        let mut v = pseudo.to_vec();
        v.push((":path", p));
        v
    };
    vec![
        case(
            "header values with invalid UTF-8 (x-client key, cookie, user-agent)",
            Send::Raw(raw_with(
                "GET /PostView?blogId=utf8-hv&logNo=1 HTTP/1.1",
                &[
                    b"Host: localhost",
                    b"X-Client: \xff\xfe\xc0\xafblocked-blog",
                    b"Cookie: SESSION=\xff; a=\xc3\x28",
                    b"User-Agent: \xed\xa0\x80",
                ],
            )),
            Want::App,
        ),
        case(
            "header value with NUL",
            Send::Raw(raw_with(
                "GET /PostView?blogId=nul-hv&logNo=1 HTTP/1.1",
                &[b"Host: localhost", b"X-Client: blocked\x00-blog"],
            )),
            Want::Envoy(400),
        ),
        case(
            "60 KiB query string",
            Send::Raw(get_raw(&q60k)),
            Want::Envoy(431),
        ),
        case(
            "58 KiB query string, blocked key after it",
            Send::Raw(get_raw(&format!(
                "/PostView?x={}&blogId={BLOCKED}",
                "a".repeat(58 * 1024)
            ))),
            Want::Blocked,
        ),
        case(
            "10,000 query parameters, blocked key last",
            Send::Raw(get_raw(&format!(
                "/PostView?{}blogId={BLOCKED}",
                params(10_000)
            ))),
            Want::Blocked,
        ),
        case(
            "10,000 query parameters through every filter",
            Send::Raw(get_raw(&format!("/PostList?{}blogId=p10k", params(10_000)))),
            Want::App,
        ),
        case(
            "1 MiB key with the shipped header limit",
            Send::Raw(get_raw(&mib_key)),
            Want::Envoy(431),
        ),
        case(
            "`%` at the end of the key",
            Send::Raw(get_raw(&format!("/PostView?blogId={BLOCKED}%"))),
            Want::App,
        ),
        case(
            "`%` at the end of the path",
            Send::Raw(get_raw(&format!("/PostView%?blogId={BLOCKED}"))),
            Want::Blocked,
        ),
        case(
            "`%zz` in the key",
            Send::Raw(get_raw(&format!("/PostView?blogId=%zz{BLOCKED}"))),
            Want::App,
        ),
        case(
            "`%zz` in the path",
            Send::Raw(get_raw(&format!("/Post%zzView?blogId={BLOCKED}"))),
            Want::App,
        ),
        case(
            "overlong UTF-8 `/` (`%C0%AF`) around `..`",
            Send::Raw(get_raw(&format!(
                "/x%C0%AF..%C0%AFPostView?blogId={BLOCKED}"
            ))),
            Want::App,
        ),
        case(
            "overlong UTF-8 (`%C0%AF`) in the key",
            Send::Raw(get_raw(&format!("/PostView?blogId=%C0%AF{BLOCKED}"))),
            Want::App,
        ),
        case(
            "double encoding `%252e%252e`",
            Send::Raw(get_raw(&format!("/x/%252e%252e/PostView?blogId={BLOCKED}"))),
            Want::App,
        ),
        case(
            "encoded `%2e%2e` (single encoding)",
            Send::Raw(get_raw(&format!("/x/%2e%2e/PostView?blogId={BLOCKED}"))),
            Want::Blocked,
        ),
        case(
            "`..` path",
            Send::Raw(get_raw(&format!("/x/../PostView?blogId={BLOCKED}"))),
            Want::Blocked,
        ),
        case(
            "`..` above the root",
            Send::Raw(get_raw(&format!("/../../PostView?blogId={BLOCKED}"))),
            Want::Blocked,
        ),
        case(
            "`//` path",
            Send::Raw(get_raw(&format!("//PostView//?blogId={BLOCKED}"))),
            Want::Blocked,
        ),
        case(
            "`//` in the path form",
            Send::Raw(get_raw(&format!("//{BLOCKED}//1"))),
            Want::Blocked,
        ),
        case(
            "HTTP/1.1 request line without a path",
            Send::Raw(raw_with("GET  HTTP/1.1", &[b"Host: localhost"])),
            Want::Envoy(400),
        ),
        case(
            "HTTP/2 without :path",
            Send::H2(h2_fields(&pseudo, 0)),
            Want::H2(H2Outcome::Closed),
        ),
        case(
            "missing Host (HTTP/1.1)",
            Send::Raw(raw_with(
                "GET /PostView?blogId=nohost&logNo=1 HTTP/1.1",
                &[],
            )),
            Want::Envoy(400),
        ),
        case(
            "missing Host (HTTP/1.0)",
            Send::Raw(b"GET /PostView?blogId=nohost10&logNo=1 HTTP/1.0\r\n\r\n".to_vec()),
            Want::Envoy(426),
        ),
        case(
            "duplicated Host",
            Send::Raw(raw_with(
                "GET /PostView?blogId=duphost&logNo=1 HTTP/1.1",
                &[b"Host: localhost", b"Host: evil.example"],
            )),
            Want::App,
        ),
        case(
            "HTTP/2 with 1,000 headers",
            Send::H2(h2_fields(
                &with_path("/PostView?blogId=h2many&logNo=1"),
                1000,
            )),
            Want::H2(H2Outcome::Reset(2)),
        ),
        case(
            "HTTP/2 with 90 headers, blocked key",
            Send::H2(h2_fields(
                &with_path("/PostView?blogId=blocked-blog&logNo=1"),
                90,
            )),
            Want::H2(H2Outcome::Status(403)),
        ),
        case(
            "HTTP/1.1 with 1,000 headers",
            Send::Raw(raw_with(
                "GET /PostView?blogId=h1many&logNo=1 HTTP/1.1",
                &(0..1000)
                    .map(|i| format!("x-h{i}: v").into_bytes())
                    .chain([b"Host: localhost".to_vec()])
                    .collect::<Vec<_>>()
                    .iter()
                    .map(Vec::as_slice)
                    .collect::<Vec<_>>(),
            )),
            Want::Envoy(431),
        ),
        case(
            "body on GET (16 KiB)",
            Send::Request(
                "GET",
                "/PostView?blogId=getbody&logNo=1".into(),
                vec![b'x'; 16 * 1024],
            ),
            Want::App,
        ),
        case(
            "body on GET of the blocked key",
            Send::Request(
                "GET",
                format!("/PostView?blogId={BLOCKED}&logNo=1"),
                vec![b'x'; 1024],
            ),
            Want::Blocked,
        ),
    ]
}

#[derive(Debug)]
enum Got {
    Http(Response),
    H2(H2Outcome),
}

fn send(port: u16, s: &Send) -> Got {
    match s {
        Send::Raw(b) => Got::Http(http::raw(port, b).unwrap_or_else(|e| panic!("{e}"))),
        Send::Request(m, p, body) => {
            Got::Http(http::request(port, m, p, &[], body).unwrap_or_else(|e| panic!("{e}")))
        }
        Send::H2(fields) => {
            let f: Vec<(&[u8], &[u8])> = fields
                .iter()
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            Got::H2(http::h2_raw(port, &f).unwrap_or_else(|e| panic!("{e}")))
        }
    }
}

fn matches(want: Want, got: &Got) -> bool {
    match (want, got) {
        (Want::Envoy(code), Got::Http(r)) => r.status == code && r.header("x-upstream").is_none(),
        (Want::App, Got::Http(r)) => r.status == 200 && r.header("x-upstream") == Some("main"),
        (Want::Blocked, Got::Http(r)) => r.status == 403 && r.body == BLOCK_BODY,
        (Want::H2(w), Got::H2(g)) => w == *g,
        _ => false,
    }
}

/// Sum of sli's `spikeguard_requests_total` series whose labels contain every one of `labels`.
fn sli_requests(s: &Stack, labels: &[&str]) -> f64 {
    s.envoy
        .prometheus()
        .lines()
        .filter(|l| {
            l.starts_with("spikeguard_requests_total{")
                && l.contains("direction=\"inbound\"")
                && labels.iter().all(|w| l.contains(w))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// The protection checks and the Wasm health of the one worker.
struct Guard<'a> {
    s: &'a Stack,
    checks: u32,
    /// Requests the filters saw so far (what sli must have counted).
    seen: f64,
    /// Of those, the 429s of ratelimit (sli's `action="ratelimit"`).
    limited: f64,
    v8_active: i64,
}

impl<'a> Guard<'a> {
    fn new(s: &'a Stack) -> Guard<'a> {
        let v8_active = s.envoy.stat("wasm.envoy.wasm.runtime.v8.active");
        assert!(
            v8_active > 0,
            "no live V8 VM: {:?}",
            s.envoy.stats_matching("wasm")
        );
        Guard {
            s,
            checks: 0,
            seen: 0.0,
            limited: 0.0,
            v8_active,
        }
    }

    /// Every filter still protects: the next normal requests on the worker are refused,
    /// limited and diverted as configured, sli counted everything, and no Wasm failure.
    #[track_caller]
    fn check(&mut self, after: &str) {
        let s = self.s;
        self.checks += 1;
        let n = self.checks;
        let r = s.get(&format!("/PostView?blogId={BLOCKED}&logNo=1"));
        assert_eq!(
            (r.status, r.body.as_str()),
            (403, BLOCK_BODY),
            "after {after}: hotkey no longer blocks: {r:?}"
        );
        let p = format!("/guard-limit?k=g{n}");
        let (a, b) = (s.get(&p), s.get(&p));
        assert_eq!(
            (a.status, b.status),
            (200, 429),
            "after {after}: ratelimit no longer limits: {a:?} {b:?}"
        );
        let r = s.get(&format!("/guard-simple/{n}"));
        assert_eq!(
            (
                r.status,
                r.header("x-upstream"),
                r.header("x-spikeguard-simple-page")
            ),
            (200, Some("simple"), Some("always")),
            "after {after}: simplepage no longer diverts: {r:?}"
        );
        self.seen += 4.0;
        self.limited += 1.0;
        let want = self.seen;
        wait::until(
            &format!("after {after}: sli counted {want} requests"),
            WAIT,
            || sli_requests(s, &[]),
            |v| *v == want,
        );
        let limited = self.limited;
        wait::until(
            &format!("after {after}: sli labelled {limited} requests action=ratelimit"),
            WAIT,
            || sli_requests(s, &["action=\"ratelimit\"", "code=\"429\""]),
            |v| *v == limited,
        );
        self.assert_no_wasm_failure(after);
    }

    #[track_caller]
    fn assert_no_wasm_failure(&self, after: &str) {
        let stats = self.s.envoy.stats_matching("wasm");
        let failed: Vec<(&String, &i64)> = stats
            .iter()
            .filter(|(k, v)| {
                k.starts_with("wasm.")
                    && **v > 0
                    && ["reload", "fail", "crash", "trap", "abort"]
                        .iter()
                        .any(|w| k.contains(w))
            })
            .collect();
        assert!(failed.is_empty(), "after {after}: wasm failures {failed:?}");
        let active = stats
            .get("wasm.envoy.wasm.runtime.v8.active")
            .copied()
            .unwrap_or(0);
        assert_eq!(active, self.v8_active, "after {after}: live V8 VMs");
        let log = self.s.envoy.log();
        let bad: Vec<&str> = log
            .lines()
            .filter(|l| {
                ["panicked", "Function: proxy_", "Uncaught", "wasm vm failed"]
                    .iter()
                    .any(|w| l.contains(w))
            })
            .collect();
        assert!(bad.is_empty(), "after {after}: Envoy log: {bad:#?}");
    }
}

/// `HttpConnectionManager.request_headers_timeout` of a listener in envoy.yaml (seconds).
fn headers_timeout_s(listener: &str) -> f64 {
    let b = Bundle::load().unwrap_or_else(|e| panic!("{e}"));
    let l = b.doc["static_resources"]["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == listener))
        .unwrap_or_else(|| panic!("no listener {listener}"));
    let t = l["filter_chains"][0]["filters"][0]["typed_config"]["request_headers_timeout"]
        .as_str()
        .unwrap_or_else(|| panic!("{listener}: no request_headers_timeout in envoy.yaml"));
    t.trim_end_matches('s')
        .parse()
        .unwrap_or_else(|e| panic!("{listener}: request_headers_timeout {t:?}: {e}"))
}

/// What a slowloris client saw: Envoy's answer (if any) and when the connection ended.
#[derive(Debug)]
struct Slow {
    sent: usize,
    answer: Vec<u8>,
    closed_at: Option<Instant>,
}

/// Sends a request's headers one byte per 100 ms (never completing them: the last header's
/// value goes on) until Envoy closes the connection, or `limit` has passed.
fn slowloris(port: u16, limit: Duration) -> Slow {
    let mut bytes =
        b"GET /PostView?blogId=slow&logNo=1 HTTP/1.1\r\nHost: localhost\r\nX-Slow: ".to_vec();
    bytes.extend(std::iter::repeat_n(b'a', 4096));
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("{e}"));
    s.set_nodelay(true).unwrap_or_else(|e| panic!("{e}"));
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let mut out = Slow {
        sent: 0,
        answer: Vec::new(),
        closed_at: None,
    };
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit && out.sent < bytes.len() {
        if s.write_all(&bytes[out.sent..out.sent + 1]).is_err() {
            out.closed_at = Some(Instant::now());
            break;
        }
        out.sent += 1;
        // The read doubles as the 100 ms pause.
        match s.read(&mut buf) {
            Ok(0) => {
                out.closed_at = Some(Instant::now());
                break;
            }
            Ok(n) => out.answer.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                out.closed_at = Some(Instant::now());
                break;
            }
        }
    }
    out
}

#[test]
fn hostile_requests_leave_every_filter_protecting() {
    let s = Stack::start_with(
        &probe_bundle(100),
        1,
        sg_e2e::ample("main"),
        no_route_timeout,
    );
    let mut g = Guard::new(&s);
    g.check("start");

    // Slowloris beside the table: the bundle's request_headers_timeout must end it while the
    // worker serves everyone else.
    let timeout = Duration::from_secs_f64(headers_timeout_s("ingress"));
    assert!(timeout <= Duration::from_secs(30), "{timeout:?}");
    let port = s.port();
    let slow = std::thread::spawn(move || slowloris(port, timeout + Duration::from_secs(30)));
    // A normal request while the slow one trickles in: served at once.
    let r = s.get("/PostView?blogId=beside-slow&logNo=1");
    assert_eq!(
        (r.status, r.header("x-upstream")),
        (200, Some("main")),
        "{r:?}"
    );
    let served_at = Instant::now();
    g.seen += 1.0;

    let mut report = Vec::new();
    for c in cases() {
        let before = s.envoy.stats();
        let got = send(s.port(), &c.send);
        assert!(
            matches(c.want, &got),
            "{}: want {:?}, got {got:?}",
            c.name,
            c.want
        );
        if c.want.reaches_filters() {
            g.seen += 1.0;
        }
        // The codec's refusals are counted where Envoy says they are.
        let after = s.envoy.stats();
        let delta = |k: &str| after.get(k).unwrap_or(&0) - before.get(k).unwrap_or(&0);
        match c.want {
            Want::H2(H2Outcome::Reset(_)) => assert_eq!(delta("http2.header_overflow"), 1),
            Want::H2(H2Outcome::Closed) => {
                assert_eq!(delta("http.ingress.downstream_cx_protocol_error"), 1)
            }
            _ => {}
        }
        let outcome = match &got {
            Got::Http(r) => format!("{} (x-upstream {:?})", r.status, r.header("x-upstream")),
            Got::H2(o) => format!("{o:?}"),
        };
        report.push(format!("{:<60} -> {:?}: {outcome}", c.name, c.want));
        g.check(c.name);
    }

    let slow = slow
        .join()
        .unwrap_or_else(|_| panic!("slowloris thread panicked"));
    let closed_at = slow
        .closed_at
        .unwrap_or_else(|| panic!("the slow connection was never closed: {slow:?}"));
    assert!(served_at < closed_at, "served while the slow one was open");
    assert!(
        slow.answer.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&slow.answer)
    );
    assert!(slow.sent < 4096, "{slow:?}");
    assert_eq!(s.envoy.stat("http.ingress.downstream_rq_header_timeout"), 1);
    report.push(format!(
        "{:<60} -> 408 and closed after {} bytes (request_headers_timeout {timeout:?})",
        "slowloris: headers one byte per 100 ms", slow.sent
    ));
    g.check("slowloris");
    eprintln!("hostile requests:\n  {}", report.join("\n  "));
}

/// Raises the ingress listener's `max_request_headers_kb` (Envoy's limit on the request line
/// plus headers; the bundle keeps Envoy's 60 KiB default).
fn raise_header_limit(b: &mut Bundle, kib: u32) {
    let ls = b.doc["static_resources"]["listeners"]
        .as_array_mut()
        .unwrap_or_else(|| panic!("no listeners"));
    let l = ls
        .iter_mut()
        .find(|l| l["name"] == "ingress")
        .unwrap_or_else(|| panic!("no ingress listener"));
    l["filter_chains"][0]["filters"][0]["typed_config"]["max_request_headers_kb"] = json!(kib);
}

/// The sli status page, parsed (sli answers it itself and does not count it).
fn status(s: &Stack) -> Value {
    let r = s.get("/spikeguard/status");
    assert_eq!(r.status, 200, "{r:?}");
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

/// `GET target` with these header lines (besides `Connection: close`), as they are.
fn raw_get(s: &Stack, target: &str, headers: &[&[u8]]) -> Response {
    let mut h: Vec<&[u8]> = headers.to_vec();
    if !headers.iter().any(|l| l.starts_with(b"Host:")) {
        h.push(b"Host: localhost");
    }
    let req = raw_with(&format!("GET {target} HTTP/1.1"), &h);
    http::raw(s.port(), &req).unwrap_or_else(|e| panic!("GET {} bytes: {e}", req.len()))
}

#[test]
fn a_1_mib_key_is_capped_by_every_filter() {
    const MIB: usize = 1 << 20;
    let s = Stack::start_with(&probe_bundle(100), 1, sg_e2e::ample("main"), |b| {
        raise_header_limit(b, 4096);
        no_route_timeout(b);
    });
    let mut g = Guard::new(&s);
    // 1 MiB after decoding: the first 1,024 bytes percent-encoded. Sent in a header (the
    // probe rules' `x-k`): the test's app (hyper) refuses URLs over 64 KiB (414).
    let a = format!("x-k: {}{}", "%61".repeat(1024), "a".repeat(MIB - 1024)).into_bytes();
    // The same first 256 bytes (ratelimit's max_key_len), then different ones; and a key
    // that differs within the cap.
    let beyond = format!("x-k: {}{}", "a".repeat(256), "b".repeat(MIB - 256)).into_bytes();
    let within = format!("x-k: {}{}", "a".repeat(255), "c".repeat(MIB - 255)).into_bytes();

    // ratelimit (1r/m per key): the capped key is what is limited.
    let r = raw_get(&s, "/guard-limit", &[&a]);
    assert_eq!(
        (r.status, r.header("x-upstream")),
        (200, Some("main")),
        "{r:?}"
    );
    let r = raw_get(&s, "/guard-limit", &[&beyond]);
    assert_eq!(
        r.status, 429,
        "a key equal to the first within the cap shares its bucket"
    );
    let r = raw_get(&s, "/guard-limit", &[&within]);
    assert_eq!(
        r.status, 200,
        "a key different within the cap is another key"
    );
    g.seen += 3.0;
    g.limited += 1.0;

    // hotkey (threshold 2 r/s): the 1 MiB key becomes hot and is named capped.
    let mut hot_sent = 0;
    wait::until_true("the 1 MiB key shed by hotkey", WAIT, || {
        hot_sent += 1;
        raw_get(&s, "/guard-hot", &[&a]).status == 503
    });
    g.seen += f64::from(hot_sent);
    let st = status(&s);
    let hot = st["hotkey_hot"].as_array().cloned().unwrap_or_default();
    let key = hot
        .iter()
        .find_map(|h| h["key"].as_str())
        .unwrap_or_else(|| panic!("no hot key on the status page: {st}"))
        .to_string();
    assert!(
        !key.is_empty() && key.len() <= 128 && key.bytes().all(|b| b == b'a'),
        "hot key named {} bytes: {key:?}",
        key.len()
    );
    let needle = "spikeguard alert filter=hotkey rule=guard_hot";
    s.envoy.wait_log(needle, WAIT);
    let alert = s
        .envoy
        .log()
        .lines()
        .find(|l| l.contains(needle))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no hotkey alert logged"));
    assert!(alert.len() < 2048, "alert line of {} bytes", alert.len());

    // sli: a 1 MiB URL (the app answers it 414) is named capped in the top URLs.
    let page = format!("/PostView?blogId={}&logNo=1", "a".repeat(MIB));
    let top = wait::eventually("the 1 MiB URL in sli's top URLs", WAIT, || {
        let r = raw_get(&s, &page, &[]);
        // hyper's own 414, through Envoy from the app.
        assert_eq!(r.status, 414, "{r:?}");
        assert!(r.header("x-envoy-upstream-service-time").is_some(), "{r:?}");
        g.seen += 1.0;
        let st = status(&s);
        let urls: Vec<String> = st["top_urls"]["urls"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u["url"].as_str().map(str::to_string))
            .filter(|u| u.starts_with("/PostView?blogId=aaaa"))
            .collect();
        urls.into_iter().next().ok_or(st)
    });
    assert!(top.len() <= 128, "top URL of {} bytes", top.len());

    // simplepage: a cache key (rule, host, path, query) over its 2 KiB bound is not cached:
    // with a 1 MiB Host each request goes to the simple page; a short one is cached.
    let big_host = format!("Host: {}", "h".repeat(MIB)).into_bytes();
    let fills = s.envoy.stat("wasmcustom.sg.simplepage.cache_fill");
    let before = s.simple.stats().total;
    for _ in 0..2 {
        let r = raw_get(&s, "/guard-simple/big", &[&big_host]);
        assert_eq!(
            (r.status, r.header("x-upstream")),
            (200, Some("simple")),
            "{r:?}"
        );
    }
    assert_eq!(
        s.simple.stats().total,
        before + 2,
        "both reached the simple page"
    );
    let r = raw_get(&s, "/guard-simple/small", &[]);
    assert_eq!(r.header("x-upstream"), Some("simple"), "{r:?}");
    s.envoy
        .wait_stat("wasmcustom.sg.simplepage.cache_fill", WAIT, |v| {
            v == fills + 1
        });
    let r = raw_get(&s, "/guard-simple/small", &[]);
    assert_eq!(
        r.header("x-spikeguard-simple-page"),
        Some("always; cache=hit"),
        "{r:?}"
    );
    g.seen += 4.0;
    g.check("a 1 MiB key");
    eprintln!(
        "1 MiB key: ratelimit keyed by its first 256 bytes; hotkey shed it after {hot_sent} \
         requests and names it with {} bytes; sli's top URL {} bytes; simplepage did not cache a \
         1 MiB Host",
        key.len(),
        top.len()
    );
}

/// Sends GETs of `template` for `seconds`, each with a new key `{prefix}u<n>`, at most 16 at
/// once (as fast as Envoy answers); returns how many were sent, every one answered 200.
fn load(s: &Stack, template: &str, prefix: String, seconds: u64) -> u64 {
    let r = loadgen::run(&LoadConfig {
        target: s.envoy.url(),
        // Far above what one Envoy worker serves: at most `max_in_flight` are outstanding, so
        // the run sends as fast as Envoy answers, whatever the machine.
        rate_rps: 20_000.0,
        duration_ms: seconds * 1000,
        path_template: template.into(),
        keys: KeyMix {
            unique: true,
            key_prefix: prefix,
            ..KeyMix::default()
        },
        max_in_flight: 16,
        timeout_ms: 10_000,
        ..LoadConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(r.by_status.get(&200).copied().unwrap_or(0), r.sent, "{r:?}");
    r.sent
}

/// Envoy's stat names now (a per-key stat would add names).
fn stat_names(s: &Stack) -> usize {
    s.envoy.stats().len()
}

#[test]
fn many_distinct_keys_through_every_filter_stay_bounded() {
    const KEYS: u64 = 60_000;
    const WARM: u64 = 15_000;
    let mut filters = probe_bundle(1000);
    for (f, cfg) in &mut filters {
        match *f {
            // As `make memory`: the global limit out of the way (a rejected request charges no
            // rule, so per_blog would see fewer keys), and /PostList always diverted and cached
            // so that simplepage's slots see every key too.
            "ratelimit" => {
                for r in cfg["rules"].as_array_mut().into_iter().flatten() {
                    if r["name"] == "global" {
                        r["rate"] = json!("1000000r/s");
                        r["burst"] = json!(1_000_000);
                    }
                }
            }
            "simplepage" => {
                if let Some(r) = cfg["rules"].as_array_mut() {
                    r.insert(
                        0,
                        json!({"name": "post_list_cached",
                        "match": {"path_prefix": "/PostList"}, "key": {"query": "blogId"},
                        "triggers": {"always": true},
                        "cache": {"ttl_ms": 1000, "query_params": ["blogId"]}}),
                    );
                }
            }
            _ => {}
        }
    }
    // Two workers: this test is about the whole Envoy's memory, not one worker's VMs, and
    // the second one doubles the keys a run sends in the same time.
    let s = Stack::start_with(&filters, 2, sg_e2e::ample("main"), no_route_timeout);
    let mut g = Guard::new(&s);
    let cfg_of = |f: &str| filters.iter().find(|x| x.0 == f).map(|x| x.1.clone());
    let slots = cfg_of("simplepage").map_or(0, |c| c["cache"]["slots"].as_u64().unwrap_or(0));
    let max_body =
        cfg_of("simplepage").map_or(0, |c| c["cache"]["max_body_bytes"].as_u64().unwrap_or(0));
    assert!(slots > 0 && max_body > 0);

    // Two URL forms at once, each request a new key: PostView pages (hotkey's sketch,
    // ratelimit per_blog, sli top URLs) and PostList pages (the same, and simplepage's slots).
    let run = |round: u64, seconds: u64| -> (u64, u64) {
        std::thread::scope(|t| {
            let v = t.spawn(|| {
                load(
                    &s,
                    "/PostView?blogId={key}&logNo=1",
                    format!("v{round}-"),
                    seconds,
                )
            });
            let l = t.spawn(|| {
                load(
                    &s,
                    "/PostList?blogId={key}&page=1",
                    format!("l{round}-"),
                    seconds,
                )
            });
            (
                v.join().unwrap_or_else(|_| panic!("load thread")),
                l.join().unwrap_or_else(|_| panic!("load thread")),
            )
        })
    };
    let (mut views, mut lists) = (0, 0);
    let mut round = 0;
    let started = Instant::now();
    let mut warm = None;
    while views + lists < WARM + KEYS {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {} keys sent in 300 s",
            views + lists
        );
        let (v, l) = run(round, 2);
        (views, lists, round) = (views + v, lists + l, round + 1);
        if warm.is_none() && views + lists >= WARM {
            // Every table is full by now (10,000 per_blog keys in 2,500 slots, 64 cache
            // slots, the sketches): what is reached here is the fixed cost.
            std::thread::sleep(Duration::from_millis(1500));
            warm = Some((
                views + lists,
                s.envoy.heap_allocated(),
                wasm_memories(s.envoy.pid()).1,
                stat_names(&s),
            ));
        }
    }
    let (warm_keys, warm_heap, warm_wasm_kib, warm_stats) =
        warm.unwrap_or_else(|| panic!("no warm-up sample"));
    let total = views + lists;

    // Every filter saw every key.
    s.envoy
        .wait_stat("wasmcustom.sg.hotkey.post_view.seen", WAIT, |v| {
            v as u64 == total
        });
    s.envoy
        .wait_stat("wasmcustom.sg.ratelimit.per_blog.allowed", WAIT, |v| {
            v as u64 == views
        });
    s.envoy.wait_stat(
        "wasmcustom.sg.simplepage.post_list_cached.diverted_always",
        WAIT,
        |v| v as u64 == lists,
    );
    wait::until(
        "sli counted every request",
        WAIT,
        || sli_requests(&s, &[]),
        |v| *v as u64 == total,
    );
    assert_eq!(
        s.app.stats().total,
        views,
        "the PostView pages reached the app"
    );

    // Bounded: no stat per key, the tables within their caps, the memory of the warm-up.
    let stats = s.envoy.stats();
    assert_eq!(stats.len(), warm_stats, "stat names after {total} keys");
    let st = |k: &str| stats.get(k).copied().unwrap_or(0);
    assert_eq!(st("wasmcustom.sg.ratelimit.per_blog.rejected"), 0);
    assert_eq!(st("wasmcustom.sg.ratelimit.evicted_in_debt"), 0);
    let cache_bytes = st("wasmcustom.sg.simplepage.cache_bytes");
    assert!(
        cache_bytes > 0 && cache_bytes as u64 <= slots * max_body,
        "cache_bytes {cache_bytes}"
    );
    assert_eq!(st("wasmcustom.sg.hotkey.hot_keys"), 0, "no key is hot");
    let status = status(&s);
    let top = status["top_urls"]["urls"].as_array().map_or(0, Vec::len);
    assert!((1..=20).contains(&top), "{status}");
    // The fixed allowances are 10x and more what 80,000 keys added here (+0.2 MiB of heap,
    // +0.25 MiB of Wasm memory; `make memory`: +0.4 MiB of heap per 100,000 keys); a leak of
    // more than 70 bytes a key would exceed them.
    let allowance: i64 = 4 << 20;
    let heap = s.envoy.wait_heap_at_most(warm_heap + allowance, WAIT);
    let wasm_kib = wasm_memories(s.envoy.pid()).1;
    assert!(
        wasm_kib <= warm_wasm_kib + 4096,
        "Wasm memories {wasm_kib} KiB after {total} keys, {warm_wasm_kib} KiB after {warm_keys}"
    );
    g.seen = total as f64;
    g.check("many keys");
    eprintln!(
        "{total} distinct keys ({views} PostView, {lists} PostList) in {} s: heap {} -> {} KiB, \
         Wasm memories {warm_wasm_kib} -> {wasm_kib} KiB (after {warm_keys} keys -> after all), \
         stat names {warm_stats}, cache_bytes {cache_bytes}, top URLs {top}",
        started.elapsed().as_secs(),
        warm_heap / 1024,
        heap / 1024
    );
}
