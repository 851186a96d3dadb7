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
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, HOST};
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

fn timed_out(what: &str, timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what}: no answer within {timeout:?}"),
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
    let mut all = vec![("connection", b"close".as_slice())];
    all.extend_from_slice(headers);
    request_within(port, method, path, &all, body, TIMEOUT)
}

/// [`request`] with its own timeout (an error of kind `TimedOut` when no answer came), and
/// without `connection: close` (the connection is dropped after the answer all the same), as
/// Envoy's pooled connections send: webdis 0.1.9 never answers a `connection: close` request
/// whose body is over 4 KiB.
pub fn request_within(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    request_at("127.0.0.1", port, method, path, headers, body, timeout)
}

/// A GET to `ip:port` (a listener on another loopback address, 127.0.0.x), with
/// `connection: close`.
pub fn get_at(ip: &str, port: u16, path: &str) -> io::Result<Response> {
    let close = [("connection", b"close".as_slice())];
    request_at(ip, port, "GET", path, &close, &[], TIMEOUT)
}

/// [`request_within`] to `ip:port`.
pub fn request_at(
    ip: &str,
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
    timeout: Duration,
) -> io::Result<Response> {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).map_err(invalid)?)
        .uri(path)
        .header(HOST, "localhost")
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
    let what = format!("{method} {ip}:{port}{path}");
    rt.block_on(async {
        tokio::time::timeout(timeout, exchange(ip, port, req))
            .await
            .unwrap_or_else(|_| Err(timed_out(&what, timeout)))
    })
}

async fn exchange(ip: &str, port: u16, req: Request<Full<Bytes>>) -> io::Result<Response> {
    let stream = tokio::net::TcpStream::connect((ip, port)).await?;
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
            return Err(timed_out("raw request", TIMEOUT));
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

/// What an HTTP/2 server did with the one request [`h2_raw`] sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H2Outcome {
    /// Response headers on the request's stream, with their `:status`.
    Status(u16),
    /// The stream was reset (`RST_STREAM`) with this error code (2: `INTERNAL_ERROR`).
    Reset(u32),
    /// The connection ended without an answer on the stream, after a `GOAWAY` with this
    /// error code.
    GoAway(u32),
    /// The connection was closed without an answer on the stream and without `GOAWAY`.
    Closed,
}

/// HPACK integer (RFC 7541 5.1) with an `n`-bit prefix, the prefix's other bits `flags`.
fn hpack_int(out: &mut Vec<u8>, flags: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// One HPACK "literal header field without indexing, new name", no Huffman coding.
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    hpack_int(out, 0, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

fn h2_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// `:status` from the first field of a response header block: a static-table entry, or a
/// literal with the `:status` name index and a plain or Huffman-coded (digits only) value.
fn h2_status(block: &[u8]) -> Option<u16> {
    const STATIC: [u16; 7] = [200, 204, 206, 304, 400, 404, 500];
    let first = *block.first()?;
    if (0x88..=0x8e).contains(&first) {
        return STATIC.get(usize::from(first - 0x88)).copied();
    }
    // 0x48: incremental indexing, 0x08: without indexing, 0x18: never indexed; name index 8.
    if !matches!(first, 0x48 | 0x08 | 0x18) {
        return None;
    }
    let len_byte = *block.get(1)?;
    let value = block.get(2..2 + usize::from(len_byte & 0x7f))?;
    let digits: Vec<u8> = if len_byte & 0x80 == 0 {
        value.to_vec()
    } else {
        // Huffman codes of the digits (RFC 7541 Appendix B): '0'-'2' are 5 bits
        // (00000-00010), '3'-'9' 6 bits (011001-011111); the padding is 1s.
        let mut bits: Vec<bool> = Vec::new();
        for b in value {
            bits.extend((0..8).rev().map(|i| b >> i & 1 == 1));
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i + 5 <= bits.len() {
            let five = bits
                .get(i..i + 5)?
                .iter()
                .fold(0u8, |a, b| a << 1 | u8::from(*b));
            if five <= 2 {
                out.push(b'0' + five);
                i += 5;
            } else if i + 6 <= bits.len() && (0b01100..=0b01111).contains(&five) {
                let six = five << 1 | u8::from(*bits.get(i + 5)?);
                if !(0b011001..=0b011111).contains(&six) {
                    return None;
                }
                out.push(b'0' + six - 0b011001 + 3);
                i += 6;
            } else {
                break;
            }
        }
        if bits.get(i..)?.iter().any(|b| !b) {
            return None;
        }
        out
    };
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// Sends ONE HTTP/2 request over cleartext with prior knowledge to 127.0.0.1:port: the
/// connection preface, an empty `SETTINGS`, then `fields` as the request's header block on
/// stream 1, exactly as given (pseudo-headers included or left out: a conforming client can
/// not leave out `:path`), HPACK literals without indexing, split into `CONTINUATION`
/// frames of at most 16 KiB, with `END_STREAM`. Returns what the server did with the stream.
/// For malformed-request tests only, like [`raw`].
pub fn h2_raw(port: u16, fields: &[(&[u8], &[u8])]) -> io::Result<H2Outcome> {
    const MAX_FRAME: usize = 16_384;
    let mut block = Vec::new();
    for (k, v) in fields {
        hpack_literal(&mut block, k, v);
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2_frame(&mut out, 4, 0, 0, &[]);
    let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME).collect();
    let last = chunks.len().saturating_sub(1);
    for (i, c) in chunks.iter().enumerate() {
        let end_headers = if i == last { 0x4 } else { 0 };
        match i {
            0 => h2_frame(&mut out, 1, 0x1 | end_headers, 1, c),
            _ => h2_frame(&mut out, 9, end_headers, 1, c),
        }
    }
    let deadline = Instant::now() + TIMEOUT;
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(&out)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut goaway = None;
    let mut headers: Option<Vec<u8>> = None;
    loop {
        // Every complete frame in the buffer.
        while buf.len() >= 9 {
            let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload: Vec<u8> = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            let code = || {
                payload
                    .get(..4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(0)
            };
            match (kind, stream) {
                // SETTINGS from the server: acknowledge (nothing else is sent).
                (4, 0) if flags & 1 == 0 => {
                    let mut ack = Vec::new();
                    h2_frame(&mut ack, 4, 1, 0, &[]);
                    let _ = s.write_all(&ack);
                }
                (1, 1) | (9, 1) => {
                    let mut p = payload.as_slice();
                    if kind == 1 {
                        // PADDED (0x8) and PRIORITY (0x20) fields before the block.
                        let pad = if flags & 0x8 != 0 {
                            usize::from(p[0])
                        } else {
                            0
                        };
                        p = &p[usize::from(flags & 0x8 != 0)..p.len() - pad];
                        if flags & 0x20 != 0 {
                            p = &p[5..];
                        }
                    }
                    let h = headers.get_or_insert_with(Vec::new);
                    h.extend_from_slice(p);
                    if flags & 0x4 != 0 {
                        return h2_status(h).map(H2Outcome::Status).ok_or_else(|| {
                            invalid(format!(
                                "no readable :status in {:02x?}",
                                &h[..h.len().min(16)]
                            ))
                        });
                    }
                }
                (3, 1) => return Ok(H2Outcome::Reset(code())),
                (7, 0) => {
                    goaway = Some(u32::from_be_bytes([
                        payload.get(4).copied().unwrap_or(0),
                        payload.get(5).copied().unwrap_or(0),
                        payload.get(6).copied().unwrap_or(0),
                        payload.get(7).copied().unwrap_or(0),
                    ]))
                }
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out("HTTP/2 request", TIMEOUT));
        }
        s.set_read_timeout(Some(left))?;
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(goaway.map_or(H2Outcome::Closed, H2Outcome::GoAway));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_follow_rfc_7541_examples() {
        let mut out = Vec::new();
        hpack_int(&mut out, 0, 5, 10);
        assert_eq!(out, [10]);
        out.clear();
        hpack_int(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]);
        out.clear();
        hpack_int(&mut out, 0x80, 7, 127);
        assert_eq!(out, [0xff, 0]);
    }

    #[test]
    fn status_is_read_from_static_plain_and_huffman_fields() {
        assert_eq!(h2_status(&[0x88]), Some(200));
        assert_eq!(h2_status(&[0x8d]), Some(404));
        assert_eq!(h2_status(b"\x48\x03503"), Some(503));
        // RFC 7541 C.4.1-style Huffman: "302" is 0x64 0x02 (C.6.1 uses it for :status 302).
        assert_eq!(h2_status(&[0x48, 0x82, 0x64, 0x02]), Some(302));
        // "201": 00010 00000 00001 + 1 bit of padding = 0x10 0x03.
        assert_eq!(h2_status(&[0x48, 0x82, 0x10, 0x03]), Some(201));
        assert_eq!(h2_status(&[0x40]), None);
    }
}
