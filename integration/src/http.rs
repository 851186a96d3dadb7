//! The tests' HTTP client: blocking, one request per connection (so consecutive requests are
//! spread over Envoy's workers), loopback only, every call bounded by [`TIMEOUT`]. Built on
//! hyper's HTTP/1.1 client connection, driven by a small current-thread runtime per call.
//!
//! [`raw`] sends bytes exactly as given, for malformed-request tests (bytes a conforming
//! client would not send); it is the only hand-written HTTP here.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST};
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;

/// Bound of one whole call: connect, send, response head and body.
pub const TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Lower-case names, values as sent (lossy UTF-8), in order, repeated names kept.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: no answer within {TIMEOUT:?}"),
    )
}

/// Sends `method path` to 127.0.0.1:port with extra headers (`host: localhost` and
/// `connection: close` are set) and an optional body (with `content-length` when there is a
/// body or the method is POST).
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> io::Result<Response> {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).map_err(invalid)?)
        .uri(path)
        .header(HOST, "localhost")
        .header(CONNECTION, "close")
        .body(Full::new(Bytes::copy_from_slice(body)))
        .map_err(invalid)?;
    for (k, v) in headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(invalid)?;
        let value = HeaderValue::from_bytes(v).map_err(invalid)?;
        req.headers_mut().append(name, value);
    }
    if !body.is_empty() || method == "POST" {
        req.headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let what = format!("{method} 127.0.0.1:{port}{path}");
    rt.block_on(async {
        tokio::time::timeout(TIMEOUT, exchange(port, req))
            .await
            .unwrap_or_else(|_| Err(timed_out(&what)))
    })
}

async fn exchange(port: u16, req: Request<Full<Bytes>>) -> io::Result<Response> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(io::Error::other)?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(io::Error::other)?;
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(io::Error::other)?
        .to_bytes();
    conn.abort();
    Ok(Response {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

pub fn get(port: u16, path: &str) -> io::Result<Response> {
    request(port, "GET", path, &[], &[])
}

/// Writes `bytes` as they are to 127.0.0.1:port and reads one response (`content-length`
/// bodies, or up to EOF; chunked bodies are not decoded). For malformed-request tests only:
/// everything else goes through [`request`].
pub fn raw(port: u16, bytes: &[u8]) -> io::Result<Response> {
    let deadline = Instant::now() + TIMEOUT;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(bytes)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out("raw request"));
        }
        s.set_read_timeout(Some(left))?;
        let n = s.read(&mut buf)?;
        raw.extend_from_slice(&buf[..n]);
        if let Some(r) = parse_raw(&raw, n == 0)? {
            return Ok(r);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the response was complete",
            ));
        }
    }
}

/// The response in `raw` if it is complete: its `content-length` body has arrived (no need
/// to wait for EOF: after a local reply Envoy may hold the connection open up to its
/// delayed-close timeout), or it has no length and the peer closed (`eof`).
fn parse_raw(raw: &[u8], eof: bool) -> io::Result<Option<Response>> {
    let mut heads = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut heads);
    let httparse::Status::Complete(head_len) = parsed.parse(raw).map_err(invalid)? else {
        return Ok(None);
    };
    let status = parsed.code.unwrap_or(0);
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            let v = String::from_utf8_lossy(h.value).trim().to_string();
            (h.name.to_ascii_lowercase(), v)
        })
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let body = raw.get(head_len..).unwrap_or_default();
    let end = match length {
        _ if matches!(status, 204 | 304) => 0,
        Some(n) if body.len() >= n => n,
        None if eof => body.len(),
        _ => return Ok(None),
    };
    Ok(Some(Response {
        status,
        headers,
        body: String::from_utf8_lossy(body.get(..end).unwrap_or_default()).into_owned(),
    }))
}
