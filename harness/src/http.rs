//! A small blocking HTTP/1.1 toolkit over `std::net`, with optional TLS (rustls).
//!
//! It has three parts:
//!
//! - the message types [`Request`] (what a server receives), [`Response`] (what a
//!   handler answers) and [`ParsedResponse`] (what a client reads back);
//! - the codec: [`read_request`], [`write_response`], [`write_request`] and
//!   [`read_response`], usable by anyone holding a byte stream;
//! - a thread-per-connection [`Server`] and a tiny [`client`].
//!
//! It is a test tool: it favours clarity over speed, but it never panics on bad
//! input — a malformed message is an `io::Error` of kind `InvalidData`.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest request line / status line / header line accepted, in bytes.
const MAX_LINE: usize = 64 * 1024;
/// Most header lines accepted in one message.
const MAX_HEADERS: usize = 500;
/// Largest body accepted, in bytes.
const MAX_BODY: usize = 256 * 1024 * 1024;
/// A response with `chunked: true` is sent in chunks of at most this many bytes.
pub const CHUNK_SIZE: usize = 1024;
/// How long [`Server::stop`] waits for connection threads before leaving them behind.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// A keep-alive connection that stays silent this long is closed by the server.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A list of header lines in wire order. Names keep the case they were sent with.
pub type Headers = Vec<(String, Vec<u8>)>;

/// The callback a [`Server`] runs for every request.
pub type Handler = Arc<dyn Fn(Request) -> Response + Send + Sync>;

fn invalid(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.into())
}

/// The first value of header `name` (compared case-insensitively).
pub fn find_header<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
}

/// Every value of header `name` (compared case-insensitively), in wire order.
pub fn find_headers<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Vec<&'a [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

/// True when a comma-separated header (e.g. `Connection`) contains `token`.
fn header_has_token(headers: &[(String, Vec<u8>)], name: &str, token: &str) -> bool {
    find_headers(headers, name).iter().any(|value| {
        String::from_utf8_lossy(value)
            .split(',')
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    })
}

/// Percent-decodes `text` (invalid escapes are kept as they are); with
/// `plus_as_space`, `+` becomes a space (form / query-string style).
pub fn percent_decode(text: &str, plus_as_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match (b, bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&hi), Some(&lo)) => hex_value(hi).zip(hex_value(lo)),
            _ => None,
        };
        if let Some((hi, lo)) = escaped {
            out.push(hi * 16 + lo);
            i += 3;
        } else {
            out.push(if plus_as_space && b == b'+' { b' ' } else { b });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits a query string into decoded `(key, value)` pairs, in order
/// (`+` is a space; a key without `=` has an empty value).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key, true), percent_decode(value, true))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Request
// ---------------------------------------------------------------------------

/// A request as a [`Server`] received it.
#[derive(Debug, Clone)]
pub struct Request {
    /// e.g. `GET` (as sent, not case-normalised).
    pub method: String,
    /// The request target as sent, e.g. `/a/b?x=1`.
    pub target: String,
    /// e.g. `HTTP/1.1`.
    pub version: String,
    /// Header lines in wire order, duplicates kept.
    pub headers: Headers,
    /// The body, de-chunked if it was sent chunked.
    pub body: Vec<u8>,
    /// The client's address.
    pub peer: SocketAddr,
    /// True when the request came over TLS.
    pub tls: bool,
}

impl Request {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// The first value of a header as text (lossy UTF-8).
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of a header, in wire order.
    pub fn header_all(&self, name: &str) -> Vec<&[u8]> {
        find_headers(&self.headers, name)
    }

    /// The target without its query string.
    pub fn path(&self) -> &str {
        match self.target.split_once('?') {
            Some((path, _)) => path,
            None => &self.target,
        }
    }

    /// The query string (without `?`), if the target has one.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, query)| query)
    }

    /// The decoded value of query parameter `name` (first occurrence).
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_params()
            .into_iter()
            .find_map(|(key, value)| (key == name).then_some(value))
    }

    /// Every decoded query parameter, in order.
    pub fn query_params(&self) -> Vec<(String, String)> {
        self.query().map(parse_query).unwrap_or_default()
    }

    /// The body as text (lossy UTF-8).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

// ---------------------------------------------------------------------------
// Response
// ---------------------------------------------------------------------------

/// What a handler answers.
///
/// The server adds `Content-Length` (or `Transfer-Encoding: chunked` when
/// `chunked` is set) unless the handler already put that header in `headers`,
/// so a test can also send deliberately wrong framing.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Reason phrase; `None` uses the standard one for `status`.
    pub reason: Option<String>,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// Send the body with `Transfer-Encoding: chunked`, in pieces of at most [`CHUNK_SIZE`] bytes.
    pub chunked: bool,
    /// Sleep this long before answering (for timeout tests). Cut short when the server stops.
    pub delay: Option<Duration>,
}

impl Response {
    /// A response with no headers and an empty body.
    pub fn new(status: u16) -> Response {
        Response {
            status,
            reason: None,
            headers: Vec::new(),
            body: Vec::new(),
            chunked: false,
            delay: None,
        }
    }

    /// A JSON response (`Content-Type: application/json`).
    pub fn json(status: u16, value: &Value) -> Response {
        Response::new(status)
            .with_header("Content-Type", "application/json")
            .with_body(value.to_string())
    }

    /// A plain-text response (`Content-Type: text/plain; charset=utf-8`).
    pub fn text(status: u16, text: impl Into<String>) -> Response {
        Response::new(status)
            .with_header("Content-Type", "text/plain; charset=utf-8")
            .with_body(text.into())
    }

    /// Appends a header line (duplicates allowed).
    pub fn with_header(mut self, name: impl Into<String>, value: impl AsRef<[u8]>) -> Response {
        self.headers.push((name.into(), value.as_ref().to_vec()));
        self
    }

    /// Replaces the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// Replaces the reason phrase.
    pub fn with_reason(mut self, reason: impl Into<String>) -> Response {
        self.reason = Some(reason.into());
        self
    }

    /// Sends the body chunked.
    pub fn with_chunked(mut self) -> Response {
        self.chunked = true;
        self
    }

    /// Waits before answering.
    pub fn with_delay(mut self, delay: Duration) -> Response {
        self.delay = Some(delay);
        self
    }

    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }
}

/// The standard reason phrase for a status code ("" when unknown).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        418 => "I'm a teapot",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

// ---------------------------------------------------------------------------
// Parsed response (client side)
// ---------------------------------------------------------------------------

/// A response as a client read it.
#[derive(Debug, Clone, Default)]
pub struct ParsedResponse {
    /// e.g. `HTTP/1.1`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    /// Header lines in wire order, duplicates kept.
    pub headers: Headers,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// When the body was chunked: the data of every chunk, in order (the final
    /// empty chunk is not included). `None` for other framings.
    pub chunks: Option<Vec<Vec<u8>>>,
    /// Trailer header lines after a chunked body.
    pub trailers: Headers,
}

impl ParsedResponse {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// The first value of a header as text (lossy UTF-8).
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of a header, in wire order.
    pub fn header_all(&self, name: &str) -> Vec<&[u8]> {
        find_headers(&self.headers, name)
    }

    /// The body as text (lossy UTF-8).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// True when the server said it will close the connection.
    pub fn closes_connection(&self) -> bool {
        if header_has_token(&self.headers, "connection", "close") {
            return true;
        }
        self.version.eq_ignore_ascii_case("HTTP/1.0")
            && !header_has_token(&self.headers, "connection", "keep-alive")
    }
}

// ---------------------------------------------------------------------------
// Codec: reading
// ---------------------------------------------------------------------------

/// Reads one line ending in LF (CRLF or bare LF), without the line ending.
/// Returns `Ok(None)` on a clean end of stream before any byte.
fn read_line<R: BufRead>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let read = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        if line.len() > MAX_LINE {
            return Err(invalid("line too long"));
        }
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in the middle of a line",
        ));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(Some(line))
}

fn read_line_required<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    read_line(r)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed unexpectedly",
        )
    })
}

/// Reads header lines up to and including the empty line.
fn read_headers<R: BufRead>(r: &mut R) -> io::Result<Headers> {
    let mut headers = Vec::new();
    loop {
        let line = read_line_required(r)?;
        if line.is_empty() {
            return Ok(headers);
        }
        if headers.len() >= MAX_HEADERS {
            return Err(invalid("too many header lines"));
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or_else(|| invalid("header line without ':'"))?;
        let (name, rest) = line.split_at(colon);
        let name = std::str::from_utf8(name)
            .map_err(|_| invalid("header name is not UTF-8"))?
            .to_string();
        if name.is_empty() || name.contains(|c: char| c.is_ascii_whitespace()) {
            return Err(invalid(format!("bad header name {name:?}")));
        }
        let value = rest.get(1..).unwrap_or_default();
        headers.push((name, trim_ows(value).to_vec()));
    }
}

fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

fn content_length(headers: &[(String, Vec<u8>)]) -> io::Result<Option<usize>> {
    let values = find_headers(headers, "content-length");
    let Some(first) = values.first() else {
        return Ok(None);
    };
    if values.iter().any(|v| v != first) {
        return Err(invalid("conflicting Content-Length headers"));
    }
    let text = std::str::from_utf8(first).map_err(|_| invalid("bad Content-Length"))?;
    let length: usize = text
        .trim()
        .parse()
        .map_err(|_| invalid(format!("bad Content-Length {text:?}")))?;
    if length > MAX_BODY {
        return Err(invalid(format!("body of {length} bytes is too large")));
    }
    Ok(Some(length))
}

fn is_chunked(headers: &[(String, Vec<u8>)]) -> bool {
    header_has_token(headers, "transfer-encoding", "chunked")
}

fn read_exact_body<R: BufRead>(r: &mut R, length: usize) -> io::Result<Vec<u8>> {
    let mut body = vec![0; length];
    r.read_exact(&mut body)?;
    Ok(body)
}

/// A de-chunked body: the whole data, each chunk, and the trailers.
struct ChunkedBody {
    body: Vec<u8>,
    chunks: Vec<Vec<u8>>,
    trailers: Headers,
}

fn read_chunked_body<R: BufRead>(r: &mut R) -> io::Result<ChunkedBody> {
    let mut body = Vec::new();
    let mut chunks = Vec::new();
    loop {
        let line = read_line_required(r)?;
        let text = String::from_utf8_lossy(&line);
        let size_text = text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| invalid(format!("bad chunk size line {text:?}")))?;
        if size == 0 {
            let trailers = read_headers(r)?;
            return Ok(ChunkedBody {
                body,
                chunks,
                trailers,
            });
        }
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(invalid("chunked body is too large"));
        }
        let chunk = read_exact_body(r, size)?;
        let end = read_line_required(r)?;
        if !end.is_empty() {
            return Err(invalid("chunk data not followed by CRLF"));
        }
        body.extend_from_slice(&chunk);
        chunks.push(chunk);
    }
}

/// Reads one request. Returns `Ok(None)` when the stream ends cleanly before a
/// request starts (the client closed an idle keep-alive connection).
pub fn read_request<R: BufRead>(
    r: &mut R,
    peer: SocketAddr,
    tls: bool,
) -> io::Result<Option<Request>> {
    let Some(mut request) = read_request_head(r, peer, tls)? else {
        return Ok(None);
    };
    request.body = read_request_body(r, &request.headers)?;
    Ok(Some(request))
}

/// Reads the request line and headers only; `body` is left empty (read it with
/// [`read_request_body`]). Lets a server answer `Expect: 100-continue` in between.
pub fn read_request_head<R: BufRead>(
    r: &mut R,
    peer: SocketAddr,
    tls: bool,
) -> io::Result<Option<Request>> {
    // Tolerate empty lines before the request line (RFC 9112 §2.2).
    let line = loop {
        match read_line(r)? {
            None => return Ok(None),
            Some(line) if line.is_empty() => continue,
            Some(line) => break line,
        }
    };
    let line = String::from_utf8(line).map_err(|_| invalid("request line is not UTF-8"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("bad request line {line:?}")));
    };
    if method.is_empty() || target.is_empty() || !version.starts_with("HTTP/") {
        return Err(invalid(format!("bad request line {line:?}")));
    }
    let headers = read_headers(r)?;
    Ok(Some(Request {
        method: method.to_string(),
        target: target.to_string(),
        version: version.to_string(),
        headers,
        body: Vec::new(),
        peer,
        tls,
    }))
}

/// Reads a request body framed as `headers` say (chunked, Content-Length, or none).
pub fn read_request_body<R: BufRead>(
    r: &mut R,
    headers: &[(String, Vec<u8>)],
) -> io::Result<Vec<u8>> {
    if is_chunked(headers) {
        return Ok(read_chunked_body(r)?.body);
    }
    match content_length(headers)? {
        Some(length) => read_exact_body(r, length),
        None => Ok(Vec::new()),
    }
}

/// Reads one response to a request that was not `HEAD`.
/// Interim `1xx` responses (e.g. `100 Continue`) are skipped.
pub fn read_response<R: BufRead>(r: &mut R) -> io::Result<ParsedResponse> {
    read_response_to(r, "GET")
}

/// Reads one response to a request made with `method` (a `HEAD` response has no body).
pub fn read_response_to<R: BufRead>(r: &mut R, method: &str) -> io::Result<ParsedResponse> {
    loop {
        let line = read_line_required(r)?;
        let line = String::from_utf8(line).map_err(|_| invalid("status line is not UTF-8"))?;
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        let code = parts.next().unwrap_or_default();
        let reason = parts.next().unwrap_or_default().to_string();
        if !version.starts_with("HTTP/") {
            return Err(invalid(format!("bad status line {line:?}")));
        }
        let status: u16 = code
            .parse()
            .map_err(|_| invalid(format!("bad status line {line:?}")))?;
        let headers = read_headers(r)?;
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let mut response = ParsedResponse {
            version,
            status,
            reason,
            headers,
            ..ParsedResponse::default()
        };
        let no_body = method.eq_ignore_ascii_case("HEAD")
            || status == 204
            || status == 304
            || (100..200).contains(&status);
        if no_body {
            return Ok(response);
        }
        if is_chunked(&response.headers) {
            let chunked = read_chunked_body(r)?;
            response.body = chunked.body;
            response.chunks = Some(chunked.chunks);
            response.trailers = chunked.trailers;
        } else if let Some(length) = content_length(&response.headers)? {
            response.body = read_exact_body(r, length)?;
        } else {
            // Close-delimited body.
            let mut body = Vec::new();
            r.take(MAX_BODY as u64 + 1).read_to_end(&mut body)?;
            if body.len() > MAX_BODY {
                return Err(invalid("close-delimited body is too large"));
            }
            response.body = body;
        }
        return Ok(response);
    }
}

// ---------------------------------------------------------------------------
// Codec: writing
// ---------------------------------------------------------------------------

fn write_header_lines<W: Write, N: AsRef<str>, V: AsRef<[u8]>>(
    w: &mut W,
    headers: &[(N, V)],
) -> io::Result<()> {
    for (name, value) in headers {
        w.write_all(name.as_ref().as_bytes())?;
        w.write_all(b": ")?;
        w.write_all(value.as_ref())?;
        w.write_all(b"\r\n")?;
    }
    Ok(())
}

fn write_chunked<W: Write>(w: &mut W, body: &[u8]) -> io::Result<()> {
    for chunk in body.chunks(CHUNK_SIZE) {
        write!(w, "{:x}\r\n", chunk.len())?;
        w.write_all(chunk)?;
        w.write_all(b"\r\n")?;
    }
    w.write_all(b"0\r\n\r\n")
}

fn has_header<N: AsRef<str>, V>(headers: &[(N, V)], name: &str) -> bool {
    headers
        .iter()
        .any(|(n, _)| n.as_ref().eq_ignore_ascii_case(name))
}

/// Writes a request. Headers are written as given (add `Host` yourself).
/// If `headers` has no `Content-Length` / `Transfer-Encoding`, `Content-Length`
/// is added when the body is not empty or the method is POST/PUT/PATCH.
/// If `headers` has `Transfer-Encoding: chunked`, the body is written chunked.
pub fn write_request<W: Write, N: AsRef<str>, V: AsRef<[u8]>>(
    w: &mut W,
    method: &str,
    target: &str,
    headers: &[(N, V)],
    body: &[u8],
) -> io::Result<()> {
    let mut out = BufWriter::new(w);
    write!(out, "{method} {target} HTTP/1.1\r\n")?;
    write_header_lines(&mut out, headers)?;
    let chunked = headers.iter().any(|(n, v)| {
        n.as_ref().eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(v.as_ref())
                .to_ascii_lowercase()
                .contains("chunked")
    });
    let framed = chunked || has_header(headers, "content-length");
    let wants_length = !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH");
    if !framed && wants_length {
        write!(out, "Content-Length: {}\r\n", body.len())?;
    }
    out.write_all(b"\r\n")?;
    if chunked {
        write_chunked(&mut out, body)?;
    } else {
        out.write_all(body)?;
    }
    out.flush()
}

/// Writes a response. `head_only` leaves the body out (answer to `HEAD`);
/// `close` adds `Connection: close` unless the handler set a `Connection` header.
pub fn write_response<W: Write>(
    w: &mut W,
    response: &Response,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let mut out = BufWriter::new(w);
    let reason = match &response.reason {
        Some(reason) => reason.as_str(),
        None => reason_phrase(response.status),
    };
    write!(out, "HTTP/1.1 {} {}\r\n", response.status, reason)?;
    write_header_lines(&mut out, &response.headers)?;
    let bodyless_status = response.status == 204 || response.status == 304;
    let has_length = has_header(&response.headers, "content-length");
    let has_te = has_header(&response.headers, "transfer-encoding");
    if !bodyless_status {
        if response.chunked {
            if !has_te {
                out.write_all(b"Transfer-Encoding: chunked\r\n")?;
            }
        } else if !has_length && !has_te {
            write!(out, "Content-Length: {}\r\n", response.body.len())?;
        }
    }
    if close && !has_header(&response.headers, "connection") {
        out.write_all(b"Connection: close\r\n")?;
    }
    out.write_all(b"\r\n")?;
    if !head_only && !bodyless_status {
        if response.chunked {
            write_chunked(&mut out, &response.body)?;
        } else {
            out.write_all(&response.body)?;
        }
    }
    out.flush()
}

// ---------------------------------------------------------------------------
// Streams (plain or TLS)
// ---------------------------------------------------------------------------

/// A connection that is either plain TCP or TLS over TCP.
pub enum Stream {
    Plain(TcpStream),
    ServerTls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
    ClientTls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    /// The underlying TCP socket.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::ServerTls(s) => &s.sock,
            Stream::ClientTls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::ServerTls(s) => s.read(buf),
            Stream::ClientTls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::ServerTls(s) => s.write(buf),
            Stream::ClientTls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::ServerTls(s) => s.flush(),
            Stream::ClientTls(s) => s.flush(),
        }
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking handler thread must not make the server unusable.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// State shared by the accept thread and the connection threads.
struct Shared {
    stopping: AtomicBool,
    /// Clones of open sockets, so `stop` can shut them down and wake blocked reads.
    sockets: Mutex<Vec<(u64, TcpStream)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// A blocking HTTP/1.1 server: one thread per connection, keep-alive supported.
/// Stops (and joins its threads, waiting a bounded time) on [`Server::stop`] or drop.
pub struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `bind` (e.g. `127.0.0.1:0`) and serves every request with `handler`.
    /// With `tls`, connections are TLS (HTTP/1.1 only).
    pub fn start(
        bind: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: Handler,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            sockets: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = thread::Builder::new()
            .name(format!("http-accept-{addr}"))
            .spawn(move || accept_loop(listener, accept_shared, tls, handler))?;
        Ok(Server {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL `scheme://addr`, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Stops accepting, closes open connections and joins the threads
    /// (waiting at most a few seconds for busy handlers). Idempotent.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept_thread.take() {
            join_bounded(accept, STOP_GRACE);
        }
        for (_, socket) in lock(&self.shared.sockets).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        let threads: Vec<JoinHandle<()>> = lock(&self.shared.threads).drain(..).collect();
        let deadline = Instant::now() + STOP_GRACE;
        for handle in threads {
            join_bounded(handle, deadline.saturating_duration_since(Instant::now()));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Joins `handle` if it finishes within `limit`; otherwise leaves it running.
fn join_bounded(handle: JoinHandle<()>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !handle.is_finished() {
        if Instant::now() >= deadline {
            return;
        }
        thread::sleep(Duration::from_millis(5));
    }
    let _ = handle.join();
}

fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Handler,
) {
    let mut next_id: u64 = 0;
    while !shared.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((socket, peer)) => {
                next_id += 1;
                let id = next_id;
                if let Err(err) = start_connection(id, socket, peer, &shared, &tls, &handler) {
                    eprintln!("http server: cannot start connection from {peer}: {err}");
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5));
            }
            Err(err) => {
                eprintln!("http server: accept failed: {err}");
                thread::sleep(Duration::from_millis(20));
            }
        }
        // Forget finished connection threads so the list does not grow forever.
        lock(&shared.threads).retain(|handle| !handle.is_finished());
    }
}

fn start_connection(
    id: u64,
    socket: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    tls: &Option<Arc<rustls::ServerConfig>>,
    handler: &Handler,
) -> io::Result<()> {
    socket.set_nonblocking(false)?;
    socket.set_nodelay(true)?;
    socket.set_read_timeout(Some(IDLE_TIMEOUT))?;
    lock(&shared.sockets).push((id, socket.try_clone()?));
    let stream = match tls {
        Some(config) => {
            let connection = rustls::ServerConnection::new(Arc::clone(config))
                .map_err(|e| io::Error::other(format!("TLS setup failed: {e}")))?;
            Stream::ServerTls(Box::new(rustls::StreamOwned::new(connection, socket)))
        }
        None => Stream::Plain(socket),
    };
    let thread_shared = Arc::clone(shared);
    let handler = Arc::clone(handler);
    let is_tls = tls.is_some();
    let handle = thread::Builder::new()
        .name(format!("http-conn-{peer}"))
        .spawn(move || {
            serve_connection(stream, peer, is_tls, &thread_shared, &handler);
            lock(&thread_shared.sockets).retain(|(socket_id, _)| *socket_id != id);
        })?;
    lock(&shared.threads).push(handle);
    Ok(())
}

/// True when the client asked to close the connection after this request.
fn request_wants_close(request: &Request) -> bool {
    if header_has_token(&request.headers, "connection", "close") {
        return true;
    }
    request.version.eq_ignore_ascii_case("HTTP/1.0")
        && !header_has_token(&request.headers, "connection", "keep-alive")
}

/// Sleeps `delay` in small steps, returning early when the server stops.
fn interruptible_sleep(delay: Duration, stopping: &AtomicBool) {
    let deadline = Instant::now() + delay;
    while !stopping.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(10)));
    }
}

/// Reads the next request, answering `Expect: 100-continue` before the body.
fn read_next_request(
    reader: &mut BufReader<Stream>,
    peer: SocketAddr,
    tls: bool,
) -> io::Result<Option<Request>> {
    let Some(mut request) = read_request_head(reader, peer, tls)? else {
        return Ok(None);
    };
    if header_has_token(&request.headers, "expect", "100-continue") {
        reader
            .get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        reader.get_mut().flush()?;
    }
    request.body = read_request_body(reader, &request.headers)?;
    Ok(Some(request))
}

fn serve_connection(
    stream: Stream,
    peer: SocketAddr,
    tls: bool,
    shared: &Shared,
    handler: &Handler,
) {
    let mut reader = BufReader::new(stream);
    while !shared.stopping.load(Ordering::SeqCst) {
        let request = match read_next_request(&mut reader, peer, tls) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(err) => {
                let tls_failure = err
                    .get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>());
                if err.kind() == io::ErrorKind::InvalidData && !tls_failure {
                    let answer = Response::text(400, format!("bad request: {err}\n"));
                    let _ = write_response(reader.get_mut(), &answer, false, true);
                }
                return;
            }
        };
        let close = request_wants_close(&request);
        let head_only = request.method.eq_ignore_ascii_case("HEAD");
        let response = handler(request);
        if let Some(delay) = response.delay {
            interruptible_sleep(delay, &shared.stopping);
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let close = close || header_has_token(&response.headers, "connection", "close");
        if write_response(reader.get_mut(), &response, head_only, close).is_err() || close {
            if let Stream::ServerTls(tls_stream) = reader.get_mut() {
                tls_stream.conn.send_close_notify();
                let _ = tls_stream.flush();
            }
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// A minimal blocking client for tests.
pub mod client {
    use super::*;

    /// TLS settings for a client: the config and the server name to verify (and send as SNI).
    pub type Tls = Option<(Arc<rustls::ClientConfig>, String)>;

    /// One client connection, reusable for several requests (keep-alive).
    pub struct Connection {
        reader: BufReader<Stream>,
        host: String,
    }

    impl Connection {
        /// Connects (and does the TLS handshake). `timeout` bounds the connect
        /// and every read and write.
        pub fn connect(addr: SocketAddr, tls: Tls, timeout: Duration) -> io::Result<Connection> {
            let socket = TcpStream::connect_timeout(&addr, timeout)?;
            socket.set_read_timeout(Some(timeout))?;
            socket.set_write_timeout(Some(timeout))?;
            socket.set_nodelay(true)?;
            let (stream, host) = match tls {
                Some((config, name)) => {
                    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
                        .map_err(|e| invalid(format!("bad TLS server name {name:?}: {e}")))?;
                    let mut connection = rustls::ClientConnection::new(config, server_name)
                        .map_err(|e| io::Error::other(format!("TLS setup failed: {e}")))?;
                    let mut socket = socket;
                    // Handshake now, so that a certificate problem is reported
                    // here rather than as a read timeout later.
                    while connection.is_handshaking() {
                        connection.complete_io(&mut socket)?;
                    }
                    let stream = rustls::StreamOwned::new(connection, socket);
                    (
                        Stream::ClientTls(Box::new(stream)),
                        format!("{name}:{}", addr.port()),
                    )
                }
                None => (Stream::Plain(socket), addr.to_string()),
            };
            Ok(Connection {
                reader: BufReader::new(stream),
                host,
            })
        }

        /// Sends one request and reads its response. A `Host` header is added if missing.
        pub fn send<N: AsRef<str>, V: AsRef<[u8]>>(
            &mut self,
            method: &str,
            target: &str,
            headers: &[(N, V)],
            body: &[u8],
        ) -> io::Result<ParsedResponse> {
            let mut all: Vec<(String, Vec<u8>)> = Vec::new();
            if !has_header(headers, "host") {
                all.push(("Host".to_string(), self.host.clone().into_bytes()));
            }
            for (name, value) in headers {
                all.push((name.as_ref().to_string(), value.as_ref().to_vec()));
            }
            write_request(self.reader.get_mut(), method, target, &all, body)?;
            read_response_to(&mut self.reader, method)
        }

        /// The underlying stream (e.g. to write raw bytes).
        pub fn stream(&mut self) -> &mut Stream {
            self.reader.get_mut()
        }

        /// The buffered reader over the stream (e.g. to read a raw response).
        pub fn reader(&mut self) -> &mut BufReader<Stream> {
            &mut self.reader
        }
    }

    /// Sends one request on a new connection (with `Connection: close` unless the
    /// headers say otherwise) and returns the response. `timeout` bounds the
    /// connect and every read and write.
    pub fn send<N: AsRef<str>, V: AsRef<[u8]>>(
        addr: SocketAddr,
        tls: Tls,
        method: &str,
        target: &str,
        headers: &[(N, V)],
        body: &[u8],
        timeout: Duration,
    ) -> io::Result<ParsedResponse> {
        let mut connection = Connection::connect(addr, tls, timeout)?;
        let mut all: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| (n.as_ref().to_string(), v.as_ref().to_vec()))
            .collect();
        if !has_header(headers, "connection") {
            all.push(("Connection".to_string(), b"close".to_vec()));
        }
        connection.send(method, target, &all, body)
    }

    /// Shorthand: a JSON POST on a new connection.
    pub fn post_json(
        addr: SocketAddr,
        tls: Tls,
        target: &str,
        extra_headers: &[(&str, &str)],
        body: &Value,
        timeout: Duration,
    ) -> io::Result<ParsedResponse> {
        let mut headers: Vec<(String, Vec<u8>)> =
            vec![("Content-Type".to_string(), b"application/json".to_vec())];
        for (name, value) in extra_headers {
            headers.push((name.to_string(), value.as_bytes().to_vec()));
        }
        send(
            addr,
            tls,
            "POST",
            target,
            &headers,
            body.to_string().as_bytes(),
            timeout,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    #[test]
    fn parses_chunked_request_and_trailers() {
        let raw = b"POST /a?b=1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
        let request = read_request(&mut Cursor::new(&raw[..]), peer(), false)
            .unwrap()
            .unwrap();
        assert_eq!(request.body, b"abcde");
        assert_eq!(request.path(), "/a");
        assert_eq!(request.query(), Some("b=1"));
        assert_eq!(request.header("HOST"), Some(&b"x"[..]));
    }

    #[test]
    fn response_round_trip_keeps_chunks_and_duplicates() {
        let response = Response::text(200, "x".repeat(CHUNK_SIZE + 3))
            .with_header("Set-Cookie", "a=1")
            .with_header("Set-Cookie", "b=2")
            .with_chunked();
        let mut wire = Vec::new();
        write_response(&mut wire, &response, false, false).unwrap();
        let parsed = read_response(&mut Cursor::new(wire)).unwrap();
        assert_eq!(parsed.status, 200);
        assert_eq!(parsed.header_all("set-cookie").len(), 2);
        let chunks = parsed.chunks.unwrap();
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].len(), 3);
    }

    #[test]
    fn close_delimited_body() {
        let raw = b"HTTP/1.0 200 OK\r\nX: y\r\n\r\nhello";
        let parsed = read_response(&mut Cursor::new(&raw[..])).unwrap();
        assert_eq!(parsed.body, b"hello");
        assert!(parsed.closes_connection());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for raw in [
            &b"NOT HTTP\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert!(read_request(&mut Cursor::new(raw), peer(), false).is_err());
        }
    }
}
