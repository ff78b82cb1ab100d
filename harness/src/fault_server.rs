//! A scripted raw-TCP server for fault tests: it plays a policy server or an
//! upstream that misbehaves *on the wire*, where [`crate::http::Server`] can
//! only send well-formed messages.
//!
//! [`FaultServer::start`] listens on `127.0.0.1:0`. For every connection it
//! reads the request (head, then a `Content-Length` body), records it, asks
//! the test's script which [`Fault`] to play for it, and plays it:
//!
//! | [`Fault`] | what the peer sees |
//! | --- | --- |
//! | [`Fault::Reply`] | these bytes, then an orderly close (FIN) |
//! | [`Fault::Stall`] | these bytes (maybe none), then silence for the given time, then a close: a timeout before the head, or mid-head, or mid-body |
//! | [`Fault::Reset`] | these bytes, then a reset (RST): "connection reset by peer" mid-reply |
//!
//! The bytes are raw, so anything can be sent: a truncated chunked body, a
//! header block over the host's 8 KiB, a `100 Continue` with nothing after
//! it, a body that is not JSON or not UTF-8. [`raw_response`] builds a
//! well-framed response for the common case.
//!
//! ```no_run
//! use ping_auth_harness::fault_server::{raw_response, Fault, FaultServer};
//! use std::time::Duration;
//! // A policy server whose reply stops after 20 bytes of a 100-byte body.
//! let server = FaultServer::start(|_req| Fault::Stall {
//!     bytes: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"source_ip\":\"10.0.".to_vec(),
//!     hold: Duration::from_secs(2),
//! })
//! .unwrap();
//! // ... point the filter at http://127.0.0.1:<server.port()>/ ...
//! assert!(server.requests().iter().all(|r| r.path() == "/sideband/request"));
//! # let _ = raw_response(200, &[], b"");
//! ```
//!
//! **What it records.** [`FaultServer::requests`] lists the HTTP requests
//! received, so a test can assert whether (and how often) the server was
//! reached; [`FaultServer::connections`] also counts connections that sent
//! something else (a TLS client hello, when a TLS client is pointed at this
//! plain server: that is how a test makes a "TLS failure") or nothing.
//! [`FaultServer::log_lines`] is its log, one line per connection (method,
//! path, body size, the fault played; never a header or a body, so never the
//! shared secret).
//!
//! **How the reset is made.** `std` has no stable `set_linger`, and the
//! harness has neither `socket2` nor `libc`, so the classic `SO_LINGER` 0
//! close is not available. The server gets the same RST another way: for a
//! [`Fault::Reset`] it only *peeks* at the request and never reads it, and
//! closing a TCP socket whose received data is still unread makes the kernel
//! answer with RST instead of FIN (Linux `tcp_close`, RFC 2525 §2.17; the BSDs
//! and macOS do the same). Like `SO_LINGER` 0 it drops whatever is still
//! unsent, so the server waits [`RESET_DELAY`] after writing the partial
//! reply, which on loopback is delivered by then. The difference from a
//! linger-0 close: the RST only happens because the request is left unread,
//! so a [`Fault::Reset`] of a request that sent no bytes at all is a normal
//! close.
//!
//! **Limits.** Requests are read up to [`MAX_REQUEST`] bytes (what the
//! kernel lets one peek see); a chunked request body is recorded as it came
//! (not de-chunked), complete at its `0` chunk. One connection carries one
//! request: the server closes after the fault. It is a test tool; it
//! never panics on bad input.
//!
//! **Stopping.** [`FaultServer::stop`] (also run on drop) stops accepting,
//! wakes every stalled connection and joins every thread it started.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::{find_header, reason_phrase, Headers};

/// Largest request the server reads (head and body together).
pub const MAX_REQUEST: usize = 256 * 1024;
/// How long the server waits for a whole request before playing the fault
/// with what it has.
pub const REQUEST_WAIT: Duration = Duration::from_secs(5);
/// Pause between the partial reply of a [`Fault::Reset`] and the reset, so
/// the peer has the bytes before the RST (which discards unsent data).
pub const RESET_DELAY: Duration = Duration::from_millis(30);
/// How often blocked reads and stalls look at the stop flag.
const POLL: Duration = Duration::from_millis(10);

/// What the server does with one connection, after reading its request.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Send `bytes`, then close normally (FIN). `Reply(vec![])` closes
    /// without a word.
    Reply(Vec<u8>),
    /// Send `bytes` (may be empty), then keep the connection open and silent
    /// for `hold`, then close normally. With a `hold` longer than the
    /// client's timeout this is a timeout before the head (no bytes), in the
    /// head, or mid-body, depending on `bytes`.
    Stall { bytes: Vec<u8>, hold: Duration },
    /// Send `bytes`, wait [`RESET_DELAY`], then reset the connection (RST;
    /// see the module documentation for how).
    Reset(Vec<u8>),
}

impl Fault {
    fn describe(&self) -> String {
        match self {
            Fault::Reply(b) => format!("reply of {} bytes, then close", b.len()),
            Fault::Stall { bytes, hold } => {
                format!(
                    "{} bytes, then stall for {} ms",
                    bytes.len(),
                    hold.as_millis()
                )
            }
            Fault::Reset(b) => format!("{} bytes, then reset", b.len()),
        }
    }
}

/// A request the server received (or, with `http == false`, bytes that were
/// not an HTTP request, such as a TLS client hello).
#[derive(Clone, Debug)]
pub struct Received {
    /// `false` when the bytes did not start like an HTTP request (method,
    /// target, headers and body are then empty).
    pub http: bool,
    pub method: String,
    /// The request target as sent, e.g. `/sideband/request?x=1`.
    pub target: String,
    /// Header lines in wire order (names as sent).
    pub headers: Headers,
    /// The body (`Content-Length` bytes; raw for a chunked body).
    pub body: Vec<u8>,
    /// Every byte seen on the connection before the fault was played.
    pub raw_len: usize,
    /// The whole request arrived (head and announced body).
    pub complete: bool,
}

impl Received {
    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The first value of a header (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// A response with a correct `Content-Length` and `Connection: close`:
/// `HTTP/1.1 <status> <reason>`, `headers`, then `body`.
pub fn raw_response(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason_phrase(status)).into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// The script: which fault to play for a request.
pub type Script = Arc<dyn Fn(&Received) -> Fault + Send + Sync>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct Shared {
    stopping: AtomicBool,
    connections: AtomicUsize,
    requests: Mutex<Vec<Received>>,
    log: Mutex<Vec<String>>,
    /// Clones of open sockets, so `stop` can wake blocked reads.
    sockets: Mutex<Vec<(usize, TcpStream)>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The scripted server. See the module documentation.
pub struct FaultServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl FaultServer {
    /// Listens on `127.0.0.1:0` and plays `script(request)` on every
    /// connection.
    pub fn start(
        script: impl Fn(&Received) -> Fault + Send + Sync + 'static,
    ) -> io::Result<FaultServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            sockets: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let script: Script = Arc::new(script);
        let accept_shared = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("fault-accept-{}", addr.port()))
            .spawn(move || accept_loop(listener, addr, accept_shared, script))?;
        Ok(FaultServer {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// Plays the same fault on every connection.
    pub fn always(fault: Fault) -> io::Result<FaultServer> {
        Self::start(move |_| fault.clone())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The HTTP requests received so far, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.http)
            .cloned()
            .collect()
    }

    /// The HTTP requests whose path ends with `suffix`.
    pub fn calls(&self, suffix: &str) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.path().ends_with(suffix))
            .collect()
    }

    /// Connections accepted so far, HTTP or not.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The server's log: one line per connection (never headers or bodies).
    pub fn log_lines(&self) -> Vec<String> {
        lock(&self.shared.log).clone()
    }

    /// Stops accepting, wakes stalled connections and joins every thread.
    /// Idempotent; also run on drop.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for (_, socket) in lock(&self.shared.sockets).drain(..) {
            let _ = socket.shutdown(Shutdown::Both);
        }
        let threads: Vec<JoinHandle<()>> = lock(&self.shared.threads).drain(..).collect();
        for handle in threads {
            let _ = handle.join();
        }
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, addr: SocketAddr, shared: Arc<Shared>, script: Script) {
    while !shared.stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((socket, _peer)) => {
                let _ = socket.set_nonblocking(false);
                let id = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let conn_shared = Arc::clone(&shared);
                let script = Arc::clone(&script);
                if let Ok(clone) = socket.try_clone() {
                    lock(&shared.sockets).push((id, clone));
                }
                let spawned = thread::Builder::new()
                    .name(format!("fault-conn-{}-{id}", addr.port()))
                    .spawn(move || {
                        serve(id, socket, addr, &conn_shared, &script);
                        lock(&conn_shared.sockets).retain(|(sid, _)| *sid != id);
                    });
                match spawned {
                    Ok(handle) => lock(&shared.threads).push(handle),
                    Err(e) => lock(&shared.log).push(format!(
                        "fault-server {addr}: connection {id}: cannot start a thread: {e}"
                    )),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Sleeps `d` in steps, returning early when the server stops.
fn sleep_unless_stopping(d: Duration, stopping: &AtomicBool) {
    let deadline = Instant::now() + d;
    while !stopping.load(Ordering::SeqCst) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(POLL));
    }
}

fn serve(id: usize, mut socket: TcpStream, addr: SocketAddr, shared: &Shared, script: &Script) {
    let _ = socket.set_nodelay(true);
    let received = peek_request(&socket, &shared.stopping);
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    let fault = script(&received);
    let what = if received.http {
        format!(
            "{} {} ({} body bytes{})",
            received.method,
            received.path(),
            received.body.len(),
            if received.complete {
                ""
            } else {
                ", incomplete"
            }
        )
    } else {
        format!("{} bytes that are not an HTTP request", received.raw_len)
    };
    lock(&shared.log).push(format!(
        "fault-server {addr}: connection {id}: {what}; {}",
        fault.describe()
    ));
    let raw_len = received.raw_len;
    lock(&shared.requests).push(received);
    // Consume the request unless the fault is a reset, which needs it unread.
    if !matches!(fault, Fault::Reset(_)) {
        let mut sink = vec![0u8; raw_len];
        let _ = socket.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = socket.read_exact(&mut sink);
    }
    let _ = socket.set_write_timeout(Some(Duration::from_secs(5)));
    match fault {
        Fault::Reply(bytes) => {
            let _ = socket.write_all(&bytes);
            let _ = socket.flush();
            let _ = socket.shutdown(Shutdown::Write);
            // Let the peer read to the end before the socket goes.
            drain(&mut socket, &shared.stopping);
        }
        Fault::Stall { bytes, hold } => {
            let _ = socket.write_all(&bytes);
            let _ = socket.flush();
            sleep_unless_stopping(hold, &shared.stopping);
            let _ = socket.shutdown(Shutdown::Write);
            drain(&mut socket, &shared.stopping);
        }
        Fault::Reset(bytes) => {
            let _ = socket.write_all(&bytes);
            let _ = socket.flush();
            sleep_unless_stopping(RESET_DELAY, &shared.stopping);
            // Dropping the socket with the request unread sends RST.
        }
    }
}

/// Reads until the peer closes (or 1 s of silence), so the close is a FIN.
fn drain(socket: &mut TcpStream, stopping: &AtomicBool) {
    let _ = socket.set_read_timeout(Some(POLL));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline && !stopping.load(Ordering::SeqCst) {
        match socket.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Peeks at the connection until a whole request is there (or it is clearly
/// not HTTP, or the peer closed, or [`REQUEST_WAIT`] passed), without
/// consuming anything.
fn peek_request(socket: &TcpStream, stopping: &AtomicBool) -> Received {
    let _ = socket.set_read_timeout(Some(POLL));
    let deadline = Instant::now() + REQUEST_WAIT;
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut seen = 0usize;
    loop {
        match socket.peek(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let grew = n > seen;
                seen = n;
                let data = buf.get(..n).unwrap_or_default();
                match parse(data) {
                    Parsed::Complete(r) => return r,
                    Parsed::NotHttp => break,
                    Parsed::Partial if n >= MAX_REQUEST => break,
                    Parsed::Partial => {
                        if !grew {
                            // peek returns at once while data is queued.
                            thread::sleep(POLL);
                        }
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
        if Instant::now() >= deadline || stopping.load(Ordering::SeqCst) {
            break;
        }
    }
    let data = buf.get(..seen).unwrap_or_default();
    match parse(data) {
        Parsed::Complete(r) => r,
        Parsed::Partial => partial(data),
        Parsed::NotHttp => Received {
            http: false,
            method: String::new(),
            target: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            raw_len: data.len(),
            complete: false,
        },
    }
}

enum Parsed {
    Complete(Received),
    Partial,
    NotHttp,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A request that did not arrive whole: what its head says, if anything.
fn partial(data: &[u8]) -> Received {
    let parsed = find(data, b"\r\n\r\n").and_then(|end| parse_head(data, end + 4));
    let (mut r, head_len) = parsed.unwrap_or_else(|| {
        let method = data.split(|b| *b == b' ').next().unwrap_or_default();
        (
            Received {
                http: true,
                method: String::from_utf8_lossy(method).into_owned(),
                target: String::new(),
                headers: Vec::new(),
                body: Vec::new(),
                raw_len: 0,
                complete: false,
            },
            data.len(),
        )
    });
    r.body = data.get(head_len..).unwrap_or_default().to_vec();
    r.raw_len = data.len();
    r
}

fn parse(data: &[u8]) -> Parsed {
    // An HTTP request starts with a method token; a TLS client hello with 0x16.
    match data.first() {
        None => return Parsed::Partial,
        Some(b) if !b.is_ascii_uppercase() => return Parsed::NotHttp,
        Some(_) => {}
    }
    let Some(end) = find(data, b"\r\n\r\n") else {
        return Parsed::Partial;
    };
    let Some((mut r, head_len)) = parse_head(data, end + 4) else {
        return Parsed::NotHttp;
    };
    let rest = data.get(head_len..).unwrap_or_default();
    let chunked = r.header("transfer-encoding").is_some_and(|v| {
        String::from_utf8_lossy(v)
            .to_ascii_lowercase()
            .contains("chunked")
    });
    let body_len = if chunked {
        match find(rest, b"0\r\n\r\n") {
            Some(p) if p == 0 || rest.get(p.wrapping_sub(2)..p) == Some(b"\r\n") => p + 5,
            _ => return Parsed::Partial,
        }
    } else {
        match r.header("content-length") {
            Some(v) => match std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                Some(n) => n,
                None => return Parsed::NotHttp,
            },
            None => 0,
        }
    };
    if rest.len() < body_len {
        return Parsed::Partial;
    }
    r.body = rest.get(..body_len).unwrap_or_default().to_vec();
    r.raw_len = head_len + body_len;
    r.complete = true;
    Parsed::Complete(r)
}

/// Parses the request line and headers of `data[..head_len]`.
fn parse_head(data: &[u8], head_len: usize) -> Option<(Received, usize)> {
    let head = std::str::from_utf8(data.get(..head_len)?).ok()?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.splitn(3, ' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?.to_string();
    if !request_line.next()?.starts_with("HTTP/") {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':')?;
        headers.push((name.to_string(), value.trim().as_bytes().to_vec()));
    }
    Some((
        Received {
            http: true,
            method,
            target,
            headers,
            body: Vec::new(),
            raw_len: head_len,
            complete: false,
        },
        head_len,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    fn send(server: &FaultServer, request: &[u8]) -> TcpStream {
        let mut c = TcpStream::connect(server.addr()).unwrap();
        c.write_all(request).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c
    }

    const POST: &[u8] = b"POST /sideband/request HTTP/1.1\r\nHost: x\r\nCLIENT-TOKEN: hush\r\nContent-Length: 4\r\n\r\nbody";

    #[test]
    fn reply_then_close_records_the_request() {
        let server = FaultServer::always(Fault::Reply(raw_response(200, &[], b"ok"))).unwrap();
        let mut c = send(&server, POST);
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "{got:?}");
        assert!(got.ends_with(b"\r\n\r\nok"));
        let reqs = server.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].method, "POST");
        assert_eq!(reqs[0].path(), "/sideband/request");
        assert_eq!(reqs[0].body, b"body");
        assert!(reqs[0].complete);
        let log = server.log_lines().join("\n");
        assert!(
            log.contains("POST /sideband/request (4 body bytes)"),
            "{log}"
        );
        assert!(!log.contains("hush"), "the log never carries headers");
    }

    #[test]
    fn reset_reaches_the_peer_as_connection_reset_after_the_partial_reply() {
        let server =
            FaultServer::always(Fault::Reset(b"HTTP/1.1 200 OK\r\nContent-Le".to_vec())).unwrap();
        let c = send(&server, POST);
        let mut reader = BufReader::new(c);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(
            line, "HTTP/1.1 200 OK\r\n",
            "the partial reply arrives first"
        );
        let mut rest = Vec::new();
        let err = reader.read_to_end(&mut rest).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "RST, not FIN");
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn stall_holds_the_connection_then_closes() {
        let server = FaultServer::always(Fault::Stall {
            bytes: b"HTTP/1.1 200 OK\r\n".to_vec(),
            hold: Duration::from_millis(300),
        })
        .unwrap();
        let mut c = send(&server, POST);
        let t = Instant::now();
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n");
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
    }

    #[test]
    fn a_tls_client_hello_is_counted_but_is_not_a_request() {
        let server = FaultServer::always(Fault::Reply(raw_response(400, &[], b""))).unwrap();
        let mut c = send(&server, &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]);
        let mut got = Vec::new();
        c.read_to_end(&mut got).unwrap();
        assert!(got.starts_with(b"HTTP/1.1 400"));
        assert!(server.requests().is_empty());
        assert_eq!(server.connections(), 1);
        assert!(server.log_lines()[0].contains("not an HTTP request"));
    }

    #[test]
    fn stop_ends_a_long_stall_at_once() {
        let mut server = FaultServer::always(Fault::Stall {
            bytes: Vec::new(),
            hold: Duration::from_secs(60),
        })
        .unwrap();
        let _c = send(&server, POST);
        while server.requests().is_empty() {
            thread::sleep(Duration::from_millis(5));
        }
        let t = Instant::now();
        server.stop();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
}
