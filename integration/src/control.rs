//! Operator control plane: a tiny HTTP server standing in for the operator endpoints that
//! Envoy filters poll (a blocklist) and post alerts to (webhooks), for end-to-end tests.
//!
//! - `GET /blocklist*` answers what [`Control::set_blocklist`] set (default `200
//!   {"entries":[]}`, no ETag), with `content-type: application/json`. When an ETag is set and
//!   the request's `If-None-Match` matches it, the answer is `304` with no body.
//! - `POST /hook*` records the body and answers `200 ok` (or the status set by
//!   [`Control::set_hook_status`]).
//! - Anything else: `404`.
//!
//! Either endpoint can be made to hang ([`Control::hold_blocklist`], [`Control::hold_hooks`]):
//! a request is received (and counted, a hook's body recorded) but not answered until
//! released, or until the caller gives up (Envoy's call timeout resets the stream).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, ETAG, IF_NONE_MATCH};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::watch;

/// Most hook bodies kept by [`Control::hooks`] (the oldest are dropped first).
pub const MAX_HOOKS: usize = 1000;
/// Most `If-None-Match` values kept by [`Control::if_none_match_seen`].
pub const MAX_IF_NONE_MATCH: usize = 100;
/// Default blocklist body.
pub const DEFAULT_BLOCKLIST: &str = "{\"entries\":[]}";

struct Blocklist {
    status: u16,
    body: Bytes,
    etag: Option<String>,
}

struct Shared {
    blocklist: Mutex<Blocklist>,
    polls: AtomicU64,
    not_modified: AtomicU64,
    if_none_match: Mutex<VecDeque<String>>,
    hooks: Mutex<VecDeque<String>>,
    hook_status: AtomicU16,
    /// Hang `GET /blocklist*` / `POST /hook*` while true.
    hold_blocklist: watch::Sender<bool>,
    hold_hooks: watch::Sender<bool>,
    /// Requests hanging now, by endpoint (the caller has not given up yet).
    held_blocklist: AtomicU64,
    held_hooks: AtomicU64,
}

/// Counts a request as hanging while it lives (the handler future is dropped when the
/// caller resets the stream).
struct Held<'a>(&'a AtomicU64);

impl<'a> Held<'a> {
    fn new(n: &'a AtomicU64) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Held(n)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits while `hold` is true (returns at once when it is not).
async fn wait_released(hold: &watch::Sender<bool>, held: &AtomicU64) {
    let mut rx = hold.subscribe();
    if !*rx.borrow_and_update() {
        return;
    }
    let _held = Held::new(held);
    let _ = rx.wait_for(|h| !*h).await;
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn push_bounded(q: &mut VecDeque<String>, max: usize, v: String) {
    while q.len() >= max {
        q.pop_front();
    }
    q.push_back(v);
}

/// A running control plane. Dropping it stops the server.
pub struct Control {
    /// Port it listens on (127.0.0.1).
    pub port: u16,
    shared: Arc<Shared>,
    _server: Server,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("port", &self.port).finish()
    }
}

impl Control {
    /// Starts on an ephemeral port of 127.0.0.1; returns once it is listening.
    pub fn start() -> std::io::Result<Control> {
        let bound = server::bind("control", 0, 1)?;
        let port = bound.port;
        let shared = Arc::new(Shared {
            blocklist: Mutex::new(Blocklist {
                status: 200,
                body: Bytes::from_static(DEFAULT_BLOCKLIST.as_bytes()),
                etag: None,
            }),
            polls: AtomicU64::new(0),
            not_modified: AtomicU64::new(0),
            if_none_match: Mutex::new(VecDeque::new()),
            hooks: Mutex::new(VecDeque::new()),
            hook_status: AtomicU16::new(200),
            hold_blocklist: watch::Sender::new(false),
            hold_hooks: watch::Sender::new(false),
            held_blocklist: AtomicU64::new(0),
            held_hooks: AtomicU64::new(0),
        });
        let server = bound.serve(
            shared.clone(),
            |sh, req| async move { handle(&sh, req).await },
        )?;
        Ok(Control {
            port,
            shared,
            _server: server,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What `GET /blocklist*` answers from now on: status, body, and an optional ETag (sent
    /// as given, so include the quotes, e.g. `"\"v1\""`). When an ETag is set and the
    /// request's `If-None-Match` equals it (or lists it, or is `*`), the answer is `304`
    /// with no body.
    pub fn set_blocklist(&self, status: u16, body: &str, etag: Option<&str>) {
        *lock(&self.shared.blocklist) = Blocklist {
            status,
            body: Bytes::copy_from_slice(body.as_bytes()),
            etag: etag.map(str::to_string),
        };
    }

    /// Number of `GET /blocklist*` requests received.
    pub fn polls(&self) -> u64 {
        self.shared.polls.load(Ordering::SeqCst)
    }

    /// How many `GET /blocklist*` requests were answered `304`.
    pub fn not_modified(&self) -> u64 {
        self.shared.not_modified.load(Ordering::SeqCst)
    }

    /// The `If-None-Match` values received on `GET /blocklist*`, in order (the last
    /// [`MAX_IF_NONE_MATCH`]).
    pub fn if_none_match_seen(&self) -> Vec<String> {
        lock(&self.shared.if_none_match).iter().cloned().collect()
    }

    /// Bodies (lossy UTF-8) of every `POST /hook*`, in order (the last [`MAX_HOOKS`]),
    /// including those answered with a failure status.
    pub fn hooks(&self) -> Vec<String> {
        lock(&self.shared.hooks).iter().cloned().collect()
    }

    /// From now on `GET /blocklist*` hangs (counted in [`Control::polls`], unanswered) until
    /// [`Control::release_blocklist`]; then the held requests get the current answer.
    pub fn hold_blocklist(&self) {
        self.shared.hold_blocklist.send_replace(true);
    }

    /// Stops hanging `GET /blocklist*` and answers the held requests.
    pub fn release_blocklist(&self) {
        self.shared.hold_blocklist.send_replace(false);
    }

    /// `GET /blocklist*` requests hanging now (the caller has not given up).
    pub fn blocklist_held(&self) -> u64 {
        self.shared.held_blocklist.load(Ordering::SeqCst)
    }

    /// From now on `POST /hook*` hangs (its body recorded in [`Control::hooks`] at once, no
    /// answer) until [`Control::release_hooks`].
    pub fn hold_hooks(&self) {
        self.shared.hold_hooks.send_replace(true);
    }

    /// Stops hanging `POST /hook*` and answers the held requests.
    pub fn release_hooks(&self) {
        self.shared.hold_hooks.send_replace(false);
    }

    /// `POST /hook*` requests hanging now (the caller has not given up).
    pub fn hooks_held(&self) -> u64 {
        self.shared.held_hooks.load(Ordering::SeqCst)
    }

    /// Makes `POST /hook*` answer this status from now on (default 200).
    pub fn set_hook_status(&self, status: u16) {
        self.shared.hook_status.store(status, Ordering::SeqCst);
    }
}

use crate::server::{self, Resp, Server};

fn respond(status: u16, content_type: &'static str, body: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Whether an `If-None-Match` value matches `etag` (exact, listed, weak form, or `*`).
fn etag_matches(if_none_match: &str, etag: &str) -> bool {
    let strip_weak = |s: &str| s.trim().trim_start_matches("W/").to_string();
    let want = strip_weak(etag);
    if_none_match.trim() == etag.trim()
        || if_none_match
            .split(',')
            .map(strip_weak)
            .any(|t| t == "*" || t == want)
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Resp {
    let path = req.uri().path();
    if req.method() == Method::GET && path.starts_with("/blocklist") {
        shared.polls.fetch_add(1, Ordering::SeqCst);
        wait_released(&shared.hold_blocklist, &shared.held_blocklist).await;
        return blocklist(shared, &req);
    }
    if req.method() == Method::POST && path.starts_with("/hook") {
        return hook(shared, req).await;
    }
    respond(
        404,
        "text/plain; charset=utf-8",
        Bytes::from_static(b"not found"),
    )
}

fn blocklist(shared: &Shared, req: &Request<Incoming>) -> Resp {
    let inm = req
        .headers()
        .get(IF_NONE_MATCH)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if let Some(v) = &inm {
        push_bounded(
            &mut lock(&shared.if_none_match),
            MAX_IF_NONE_MATCH,
            v.clone(),
        );
    }
    let (status, body, etag) = {
        let b = lock(&shared.blocklist);
        (b.status, b.body.clone(), b.etag.clone())
    };
    let etag_value = etag.as_deref().and_then(|e| HeaderValue::from_str(e).ok());
    let not_modified = match (&etag, &inm) {
        (Some(e), Some(v)) => etag_matches(v, e),
        _ => false,
    };
    let mut resp = if not_modified {
        shared.not_modified.fetch_add(1, Ordering::SeqCst);
        respond(304, "application/json", Bytes::new())
    } else {
        respond(status, "application/json", body)
    };
    if let Some(v) = etag_value {
        resp.headers_mut().insert(ETAG, v);
    }
    resp
}

async fn hook(shared: &Shared, req: Request<Incoming>) -> Resp {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return respond(
                400,
                "text/plain; charset=utf-8",
                Bytes::from(format!("bad body: {e}")),
            )
        }
    };
    push_bounded(
        &mut lock(&shared.hooks),
        MAX_HOOKS,
        String::from_utf8_lossy(&body).into_owned(),
    );
    wait_released(&shared.hold_hooks, &shared.held_hooks).await;
    let status = shared.hook_status.load(Ordering::SeqCst);
    let text: &'static [u8] = if (200..300).contains(&status) {
        b"ok"
    } else {
        b"hook failure"
    };
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request;

    #[test]
    fn matches_etags() {
        assert!(etag_matches("\"v1\"", "\"v1\""));
        assert!(etag_matches("\"v0\", W/\"v1\"", "\"v1\""));
        assert!(etag_matches("*", "\"v1\""));
        assert!(!etag_matches("\"v2\"", "\"v1\""));
    }

    #[test]
    fn blocklist_and_hooks() {
        let c = Control::start().unwrap();
        assert_eq!(c.url(), format!("http://127.0.0.1:{}", c.port));

        // Default blocklist.
        let r = request(c.port, "GET", "/blocklist", &[], &[]).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, DEFAULT_BLOCKLIST);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("etag"), None);
        assert_eq!(c.polls(), 1);

        // With an ETag: a stale If-None-Match gets the body, a matching one 304.
        let body = r#"{"entries":["1.2.3.4"]}"#;
        c.set_blocklist(200, body, Some("\"v1\""));
        let r = request(
            c.port,
            "GET",
            "/blocklist?x=1",
            &[("If-None-Match", b"\"v0\"")],
            &[],
        )
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body);
        assert_eq!(r.header("etag"), Some("\"v1\""));
        let r = request(
            c.port,
            "GET",
            "/blocklist/v2",
            &[("If-None-Match", b"\"v1\"")],
            &[],
        )
        .unwrap();
        assert_eq!(r.status, 304);
        assert_eq!(r.body, "");
        assert_eq!(r.header("etag"), Some("\"v1\""));
        assert_eq!(c.polls(), 3);
        assert_eq!(c.not_modified(), 1);
        assert_eq!(c.if_none_match_seen(), vec!["\"v0\"", "\"v1\""]);

        // Error status, no ETag: If-None-Match is ignored.
        c.set_blocklist(503, "{\"error\":1}", None);
        let r = request(
            c.port,
            "GET",
            "/blocklist",
            &[("If-None-Match", b"\"v1\"")],
            &[],
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "{\"error\":1}");
        assert_eq!(c.not_modified(), 1);

        // Hooks.
        let r = request(c.port, "POST", "/hook", &[], b"{\"alert\":1}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ok"));
        c.set_hook_status(500);
        let r = request(c.port, "POST", "/hook/alerts", &[], b"second").unwrap();
        assert_eq!(r.status, 500);
        assert_eq!(c.hooks(), vec!["{\"alert\":1}", "second"]);

        // Anything else.
        assert_eq!(
            request(c.port, "GET", "/other", &[], &[]).unwrap().status,
            404
        );
        assert_eq!(
            request(c.port, "GET", "/hook", &[], &[]).unwrap().status,
            404
        );
        assert_eq!(
            request(c.port, "POST", "/blocklist", &[], b"x")
                .unwrap()
                .status,
            404
        );
        assert_eq!(c.polls(), 4);
        assert_eq!(c.hooks().len(), 2);
    }

    #[test]
    fn held_endpoints_answer_once_released() {
        let c = Control::start().unwrap();
        c.hold_blocklist();
        c.hold_hooks();
        let port = c.port;
        let poll = std::thread::spawn(move || request(port, "GET", "/blocklist", &[], &[]));
        let hook = std::thread::spawn(move || request(port, "POST", "/hook", &[], b"held"));
        let t0 = std::time::Instant::now();
        while (c.blocklist_held() < 1 || c.hooks_held() < 1)
            && t0.elapsed() < std::time::Duration::from_secs(20)
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!((c.blocklist_held(), c.hooks_held()), (1, 1));
        assert_eq!(c.polls(), 1);
        assert_eq!(c.hooks(), vec!["held"]);
        c.release_blocklist();
        c.release_hooks();
        assert_eq!(poll.join().unwrap().unwrap().status, 200);
        assert_eq!(hook.join().unwrap().unwrap().status, 200);
        assert_eq!((c.blocklist_held(), c.hooks_held()), (0, 0));
    }

    #[test]
    fn bounded_queues() {
        let mut q = VecDeque::new();
        for i in 0..(MAX_HOOKS + 5) {
            push_bounded(&mut q, MAX_HOOKS, i.to_string());
        }
        assert_eq!(q.len(), MAX_HOOKS);
        assert_eq!(q.front().map(String::as_str), Some("5"));
    }
}
