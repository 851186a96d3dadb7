//! The whole bundle on one worker: the combined module (all five filters, configured with
//! the shipped `config/combined.json`) on the in-memory host, driven by a random sequence of
//! requests with any method, path, authority and headers, upstream responses with any
//! status, headers and body, ticks, answers to its HTTP calls (the operator list, alert
//! webhooks) with any body, clients that leave while held, and garbage written into any
//! `sg:` key it uses (a neighbour plugin in the same VM).
//!
//! Properties: no callback panics (a panic is a trap that kills the VM); every local reply
//! has a valid status; after all of it a plain request still gets an answer.

use std::collections::HashMap;

use arbitrary::{Result as AResult, Unstructured};
use sg_combined::filter::Combined;
use sg_core::host::{Flow, Plugin};
use sg_core::shared::SharedStore;
use sg_core::testing::MemHost;

use crate::lossy;

type Stream = <Combined as Plugin>::Stream;

const MAX_OPS: usize = 256;

fn text(u: &mut Unstructured, common: &[&str]) -> AResult<String> {
    if !common.is_empty() && u.ratio(3, 4)? {
        return Ok(common[u.choose_index(common.len())?].to_string());
    }
    let n = u.int_in_range(0usize..=300)?;
    Ok(lossy(u.bytes(n.min(u.len()))?))
}

const PATHS: &[&str] = &[
    "/PostView?blogId=alice&logNo=1",
    "/alice/1",
    "/PostList?blogId=hot",
    "/api/comments?x=1",
    "/spikeguard/status",
    "/%2e%2e//PostView/?blogId=%41",
    "/",
];
const HEADERS: &[&str] = &[
    "cookie",
    "authorization",
    "x-forwarded-for",
    "cache-control",
    "content-length",
    "x-user",
    "accept",
];

fn request(u: &mut Unstructured) -> AResult<Vec<(String, String)>> {
    let mut h = vec![
        (":method".to_string(), text(u, &["GET", "HEAD", "POST"])?),
        (":path".to_string(), text(u, PATHS)?),
        (
            ":authority".to_string(),
            text(u, &["blog.example", "Blog.Example:8080"])?,
        ),
    ];
    for _ in 0..u.int_in_range(0..=4)? {
        h.push((
            text(u, HEADERS)?,
            text(u, &["SESSION=1", "1.2.3.4, 10.0.0.1", "max-age=5"])?,
        ));
    }
    Ok(h)
}

fn respond(u: &mut Unstructured, h: &MemHost) -> AResult<()> {
    let status = *u.choose(&[200u16, 200, 404, 500, 503, 0, 999, 301])?;
    let cc = text(
        u,
        &[
            "max-age=60",
            "private",
            "no-store",
            "s-maxage=1, stale-while-revalidate=5",
        ],
    )?;
    let ct = text(u, &["text/html", ""])?;
    let n = u.int_in_range(0usize..=2000)?;
    let body = u.bytes(n.min(u.len()))?.to_vec();
    h.respond(
        status,
        &[("cache-control", &cc), ("content-type", &ct)],
        &body,
    );
    Ok(())
}

fn check_replies(h: &MemHost) {
    for r in h.take_replies() {
        assert!(
            (100..=599).contains(&r.status),
            "a local reply with status {}",
            r.status
        );
    }
}

pub fn bundle(data: &[u8]) {
    let h = MemHost::new();
    h.set_now(1_000_000);
    h.set_property(&["source", "address"], "10.0.0.9:5555");
    h.set_config(include_str!("../../../config/combined.json"));
    let Some((f, mut p)) = Combined::configure(&h) else {
        panic!("the shipped config/combined.json is refused");
    };
    let _ = run(&mut Unstructured::new(data), &h, &f, &mut p);
    // A plain request is still answered.
    h.get("blog.example", "/PostView?blogId=alice&logNo=1");
    let mut s = Combined::stream(u32::MAX);
    if f.on_request(&h, &mut s) == Flow::Continue {
        h.respond(200, &[("content-type", "text/html")], b"ok");
        let _ = f.on_response_headers(&h, &mut s, false);
        let _ = f.on_response_body(&h, &mut s, 2, true);
    }
    f.on_log(&h, &mut s);
    f.on_done(&mut s);
    f.flush(&h);
    check_replies(&h);
}

fn run(
    u: &mut Unstructured,
    h: &MemHost,
    f: &Combined,
    p: &mut <Combined as Plugin>::Periodic,
) -> AResult<()> {
    let mut held: HashMap<u32, Stream> = HashMap::new();
    let mut id = 1u32;
    for _ in 0..MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=9)? {
            0..=3 => {
                id += 1;
                let hdrs = request(u)?;
                let refs: Vec<(&str, &str)> =
                    hdrs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                h.request(&refs);
                let mut s = Combined::stream(id);
                if f.on_request(h, &mut s) == Flow::Pause && u.arbitrary()? {
                    held.insert(id, s);
                    continue;
                }
                respond(u, h)?;
                let size = h.body().len();
                let _ = f.on_response_headers(h, &mut s, false);
                let _ = f.on_response_body(h, &mut s, size, true);
                f.on_log(h, &mut s);
                f.on_done(&mut s);
            }
            4 | 5 => {
                h.advance(u.int_in_range(0u64..=3000)?);
                f.on_tick(h, p);
                // Held requests the tick resumed go on to the response.
                for rid in h.take_resumed() {
                    if let Some(mut s) = held.remove(&rid) {
                        respond(u, h)?;
                        let _ = f.on_response_headers(h, &mut s, true);
                        f.on_log(h, &mut s);
                        f.on_done(&mut s);
                    }
                }
            }
            6 => {
                let keys = h.store.keys();
                if !keys.is_empty() {
                    let k = &keys[u.choose_index(keys.len())?];
                    let n = u.int_in_range(0usize..=600)?;
                    let v = u.bytes(n.min(u.len()))?;
                    let _ = h.store.set(k, v, 0);
                }
            }
            7 => {
                for c in h.take_calls() {
                    let status = *u.choose(&[200u16, 304, 500, 0])?;
                    let n = u.int_in_range(0usize..=600)?;
                    let body = u.bytes(n.min(u.len()))?.to_vec();
                    let etag = text(u, &["\"v1\""])?;
                    h.answer_call(status, &[("etag", &etag)], &body);
                    f.on_call_response(h, p, c.token, body.len());
                }
            }
            8 => {
                // A held client leaves.
                if let Some(&rid) = held.keys().next() {
                    if let Some(mut s) = held.remove(&rid) {
                        h.gone(rid);
                        f.on_done(&mut s);
                    }
                }
            }
            _ => f.flush(h),
        }
        check_replies(h);
    }
    for (_, mut s) in held.drain() {
        f.on_done(&mut s);
    }
    Ok(())
}
