//! Tests of the host emulator against the behaviours Kong's Wasm host shows
//! (`host-observed.md`, items marked "(emulate)", and the host's source).
//! Each test drives the probe filter (`harness/probe-filter`) through request
//! headers that tell it what to do, and fails if the emulator were lenient.

// Test helpers outside `#[test]` functions may fail loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ping_auth_harness::emulator::*;
use ping_auth_harness::wasm_build;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

fn probe() -> PathBuf {
    wasm_build::build("probe-filter").expect("building the probe filter")
}

/// A request the test server received.
#[derive(Clone, Debug)]
struct Seen {
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

/// A small HTTP/1.1 server on 127.0.0.1 whose answers depend on the path:
/// `/slow/<ms>` waits, `/stall/<len>/<n>` sends the head with
/// `Content-Length: <len>` and n body bytes, then stalls, `/chunked/<n>` sends n bytes chunked, `/big/<n>`
/// sends n bytes with Content-Length, `/status/<code>`, `/hang` never
/// answers, `/garbage` sends an invalid response, `/auth` answers 401 with
/// `WWW-Authenticate` and a relative `Location`; anything else answers 200
/// `ok` with `X-Upstream: 1`. Every request is recorded.
struct TestServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let seen = seen.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut workers = Vec::new();
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let seen = seen.clone();
                    let stop = stop.clone();
                    workers.push(std::thread::spawn(move || serve(conn, seen, stop)));
                }
                for w in workers {
                    let _ = w.join();
                }
            })
        };
        Self {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(conn: TcpStream, seen: Arc<Mutex<Vec<Seen>>>, stop: Arc<AtomicBool>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let line = line.trim_end().to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    let _ = reader.read_exact(&mut body);
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    seen.lock().unwrap().push(Seen {
        line: line.clone(),
        headers,
        body,
    });
    let mut out = conn;
    let reply = |out: &mut TcpStream, status: u16, body: &[u8], extra: &str| {
        let head = format!(
            "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nContent-Type: text/plain\r\nX-Upstream: 1\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        );
        let _ = out.write_all(head.as_bytes());
        let _ = out.write_all(body);
    };
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.split('/').next().unwrap_or("0").parse().unwrap_or(0);
        std::thread::sleep(Duration::from_millis(ms));
        reply(&mut out, 200, b"slow", "");
    } else if let Some(n) = path.strip_prefix("/chunked/") {
        let n: usize = n.parse().unwrap_or(0);
        let _ = out.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        );
        let data = vec![b'c'; n];
        for piece in data.chunks(7) {
            let _ = out.write_all(format!("{:x}\r\n", piece.len()).as_bytes());
            let _ = out.write_all(piece);
            let _ = out.write_all(b"\r\n");
        }
        let _ = out.write_all(b"0\r\n\r\n");
    } else if let Some(n) = path.strip_prefix("/big/") {
        let n: usize = n.parse().unwrap_or(0);
        reply(&mut out, 200, &vec![b'b'; n], "");
    } else if let Some(code) = path.strip_prefix("/status/") {
        reply(&mut out, code.parse().unwrap_or(200), b"status", "");
    } else if let Some(rest) = path.strip_prefix("/stall/") {
        let mut parts = rest.split('/');
        let len: usize = parts.next().unwrap_or("0").parse().unwrap_or(0);
        let sent: usize = parts.next().unwrap_or("0").parse().unwrap_or(0);
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nX-Upstream: 1\r\nConnection: close\r\n\r\n"
        );
        let _ = out.write_all(head.as_bytes());
        let _ = out.write_all(&vec![b's'; sent]);
        let _ = out.flush();
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    } else if path.starts_with("/hang") {
        while !stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
    } else if path.starts_with("/auth") {
        reply(
            &mut out,
            401,
            b"auth",
            "WWW-Authenticate: Basic realm=\"a\"\r\nLocation: /relative\r\n",
        );
    } else if path.starts_with("/garbage") {
        let _ = out.write_all(b"this is not http\r\n\r\n");
    } else if path.starts_with("/json") {
        reply(
            &mut out,
            200,
            b"{\"allow\":true}",
            "X-Multi: a\r\nX-Multi: b\r\n",
        );
    } else {
        reply(&mut out, 200, b"ok", "");
    }
}

/// An emulator with one chain (`probe` filter) whose service is `server`.
fn setup(opts: HostOptions, server: &TestServer, config: &str) -> (Emulator, ChainId) {
    let mut emu = Emulator::new(&probe(), opts).expect("loading the probe filter");
    let chain = emu
        .add_chain(
            Service::new("svc", "http", "127.0.0.1", server.port()),
            Route::new("rt", &["/"]),
            vec![FilterEntry::new("probe", config)],
        )
        .expect("configuring");
    (emu, chain)
}

fn kong(server: &TestServer) -> (Emulator, ChainId) {
    setup(HostOptions::default(), server, "")
}

/// A test server and a Kong host with one `probe` chain proxying to it.
fn kong_env() -> (TestServer, Emulator, ChainId) {
    let server = TestServer::start();
    let (emu, chain) = kong(&server);
    (server, emu, chain)
}

/// A test server and a plain nginx host with one `probe` chain proxying to it.
fn nginx_env() -> (TestServer, Emulator, ChainId) {
    let server = TestServer::start();
    let (emu, chain) = nginx(&server);
    (server, emu, chain)
}

/// Plain ngx_wasm_module in nginx (no Kong), one `probe` chain on `server`.
fn nginx(server: &TestServer) -> (Emulator, ChainId) {
    let opts = HostOptions {
        kong: false,
        ..HostOptions::default()
    };
    setup(opts, server, "")
}

/// An emulator (Kong host) with no chain yet.
fn emulator() -> Emulator {
    Emulator::new(&probe(), HostOptions::default()).unwrap()
}

/// Adds a chain of `probe` filters with these configurations, its service
/// (on `server`) and route (`/`) both called `name`.
fn add_probes(
    emu: &mut Emulator,
    name: &str,
    server: &TestServer,
    configs: &[&str],
) -> Result<ChainId, ConfigureError> {
    emu.add_chain(
        Service::new(name, "http", "127.0.0.1", server.port()),
        Route::new(name, &["/"]),
        configs
            .iter()
            .map(|config| FilterEntry::new("probe", *config))
            .collect(),
    )
}

/// Log lines written by the filter.
fn filter_lines(emu: &Emulator) -> Vec<String> {
    emu.logs()
        .iter()
        .filter(|l| l.from_filter)
        .map(|l| l.message.clone())
        .collect()
}

fn all_lines(emu: &Emulator) -> Vec<String> {
    emu.logs().iter().map(|l| l.message.clone()).collect()
}

fn has_line(emu: &Emulator, needle: &str) -> bool {
    emu.logs().iter().any(|l| l.message.contains(needle))
}

fn lines_with(emu: &Emulator, needle: &str) -> Vec<String> {
    filter_lines(emu)
        .into_iter()
        .filter(|l| l.contains(needle))
        .collect()
}

fn get(path: &str) -> ClientRequest {
    ClientRequest::get(path)
}

/// `GET /a` whose `on_http_request_headers` runs `req_headers` (a dispatch
/// and a pause) and whose `on_http_call_response` runs `call_response`
/// (`x-probe-req-headers` and `x-probe-call-response` commands).
fn get_with_call_response(req_headers: &str, call_response: &str) -> ClientRequest {
    get("/a")
        .header("x-probe-req-headers", req_headers)
        .header("x-probe-call-response", call_response)
}

/// `GET /a`, answered by the probe with a local response (`local`, an
/// `x-probe-req-headers` command) whose headers it then changes
/// (`resp_headers`, `x-probe-resp-headers` commands).
fn local_reply(local: &str, resp_headers: &str) -> ClientRequest {
    get("/a")
        .header("x-probe-req-headers", local)
        .header("x-probe-resp-headers", resp_headers)
}

/// A port with nothing listening.
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

// ------------------------------------------------------------ lifecycle

#[test]
fn request_lifecycle_order_and_eof_flags() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(chain, ClientRequest::post("/a", b"hello"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok");
    let steps: Vec<String> = filter_lines(&emu)
        .into_iter()
        .filter(|l| l.starts_with("step ") && !l.contains(" end "))
        .map(|l| l.split(" id=").next().unwrap().to_string())
        .collect();
    // The host calls on_done before on_log (ABI 0.1/0.2).
    assert_eq!(
        steps,
        vec![
            "step req-headers",
            "step req-body",
            "step resp-headers",
            "step resp-body",
            "step done",
            "step log"
        ]
    );
    assert_eq!(lines_with(&emu, "step req-headers id").len(), 1);
    assert!(
        has_line(&emu, "eof=false")
            && lines_with(&emu, "step req-headers")[0].contains("eof=false")
    );
    assert!(lines_with(&emu, "step resp-headers id")[0].contains("eof=false"));
    assert!(lines_with(&emu, "step req-body")[0].contains("size=5 eof=true"));
}

#[test]
fn empty_body_gets_no_body_step() {
    let (server, mut emu, chain) = kong_env();
    let mut req = ClientRequest::post("/a", b"");
    req.body_mode = BodyMode::Chunked;
    let resp = emu.send(chain, req);
    assert_eq!(resp.status, 200);
    assert!(lines_with(&emu, "step req-body").is_empty());
    // The upstream still gets a Content-Length for the (empty) body.
    assert_eq!(
        server.seen()[0].header("content-length").as_deref(),
        Some("0")
    );
}

#[test]
fn request_body_read_in_body_step_not_in_headers_step() {
    let (_server, mut emu, chain) = kong_env();
    let req = ClientRequest::post("/a", b"hello")
        .header("x-probe-req-headers", "read-body")
        .header("x-probe-req-body", "read-body")
        .header("x-probe-log", "read-body");
    emu.send(chain, req);
    let reads: Vec<String> = filter_lines(&emu)
        .into_iter()
        .filter(|l| l.starts_with("req-body "))
        .collect();
    assert_eq!(
        reads[0], "req-body none",
        "not read yet in on_request_headers"
    );
    assert_eq!(reads[1], "req-body len=5 data=hello");
    assert_eq!(
        reads[2], "req-body len=5 data=hello",
        "still readable in on_log"
    );
}

#[test]
fn get_request_body_copies_from_the_start_whatever_the_offset() {
    let (_server, mut emu, chain) = kong_env();
    let req = ClientRequest::post("/a", b"0123456789").header("x-probe-req-body", "read-body:4|3");
    emu.send(chain, req);
    assert_eq!(lines_with(&emu, "req-body len=").len(), 1);
    assert!(
        has_line(&emu, "req-body len=3 data=012"),
        "{:?}",
        filter_lines(&emu)
    );
}

#[test]
fn spooled_request_body_cannot_be_read() {
    let (server, mut emu, chain) = kong_env();
    let body = vec![b'x'; 9000];
    let req = ClientRequest::post("/a", &body).header("x-probe-req-body", "read-body");
    let resp = emu.send(chain, req);
    assert_eq!(resp.status, 200);
    assert!(lines_with(&emu, "step req-body")[0].contains("size=9000 eof=true"));
    assert_eq!(lines_with(&emu, "req-body none").len(), 1);
    assert!(has_line(&emu, "cannot read request body buffered to file"));
    // The upstream still receives the whole body.
    assert_eq!(server.seen()[0].body.len(), 9000);
}

#[test]
fn larger_client_body_buffer_keeps_body_readable() {
    let server = TestServer::start();
    let opts = HostOptions {
        client_body_buffer_size: 1 << 20,
        ..HostOptions::default()
    };
    let (mut emu, chain) = setup(opts, &server, "");
    let req = ClientRequest::post("/a", &vec![b'x'; 9000]).header("x-probe-req-body", "read-body");
    emu.send(chain, req);
    assert_eq!(lines_with(&emu, "req-body len=9000").len(), 1);
}

// ------------------------------------------------------------- dispatch

#[test]
fn dispatch_in_response_headers_traps_and_upstream_response_passes() {
    let (server, mut emu, chain) = kong_env();
    let cmd = format!(
        "dispatch:{}|/x|1000;add-resp-header:x-after=1",
        server.target()
    );
    let resp = emu.send(chain, get("/a").header("x-probe-resp-headers", &cmd));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok");
    assert!(resp.trapped);
    assert_eq!(
        resp.header("x-after"),
        None,
        "the callback aborted at the trap"
    );
    assert!(lines_with(&emu, "step resp-headers end").is_empty());
    assert!(has_line(&emu, "can only send HTTP dispatch during"));
    // Later steps of the failed filter do not run.
    assert!(lines_with(&emu, "step resp-body").is_empty());
    assert!(lines_with(&emu, "step log").is_empty());
    assert_eq!(
        server.seen().len(),
        1,
        "only the proxied request reached the server"
    );
}

#[test]
fn dispatch_in_response_body_and_log_traps() {
    let (server, mut emu, chain) = kong_env();
    let cmd = format!("dispatch:{}|/x|1000", server.target());
    let resp = emu.send(chain, get("/a").header("x-probe-resp-body", &cmd));
    assert!(resp.trapped);
    assert_eq!(resp.text(), "ok");
    let resp = emu.send(chain, get("/a").header("x-probe-log", &cmd));
    assert!(resp.trapped);
    assert_eq!(resp.status, 200);
    assert_eq!(
        emu.logs()
            .iter()
            .filter(|l| l.message.contains("can only send HTTP dispatch during"))
            .count(),
        2
    );
}

#[test]
fn trap_replaces_instance_and_reconfigures_lazily_without_vm_start() {
    let (_server, mut emu, chain) = kong_env();
    assert_eq!(lines_with(&emu, "vm_start").len(), 1);
    assert_eq!(lines_with(&emu, "configure").len(), 1);
    let resp = emu.send(chain, get("/a").header("x-probe-req-headers", "trap"));
    assert!(resp.trapped);
    assert_eq!(
        emu.stats().instances_created,
        1,
        "no new instance until needed"
    );
    let resp = emu.send(chain, get("/a"));
    assert_eq!(resp.status, 200);
    assert_eq!(emu.stats().instances_created, 2);
    assert_eq!(
        lines_with(&emu, "vm_start").len(),
        1,
        "on_vm_start is not re-run"
    );
    assert_eq!(
        lines_with(&emu, "configure").len(),
        2,
        "on_configure runs again"
    );
    // Context ids keep growing across instances.
    assert!(has_line(&emu, "create_http_context id=2"));
}

#[test]
fn trap_in_request_headers_answers_500() {
    let (server, mut emu, chain) = kong_env();
    let resp = emu.send(chain, get("/a").header("x-probe-req-headers", "trap"));
    assert_eq!(resp.status, 500);
    assert!(resp.text().contains("An unexpected error occurred"));
    assert!(server.seen().is_empty());
    // Kong's error page replaces the response: no response steps, no on_log.
    assert!(lines_with(&emu, "step resp-headers").is_empty());
    assert!(lines_with(&emu, "step log").is_empty());

    let (_server, mut emu, chain) = nginx_env();
    let resp = emu.send(chain, get("/a").header("x-probe-req-headers", "trap"));
    assert_eq!(resp.status, 500);
    assert!(resp.text().contains("500 Internal Server Error"));
}

#[test]
fn dispatch_success_headers_include_status_and_dispatch_status_ok() {
    let (server, mut emu, chain) = kong_env();
    let cmd = format!("dispatch:{}|/json|1000;pause", server.target());
    let resp = emu.send(chain, get_with_call_response(&cmd, "dump-call"));
    assert_eq!(resp.status, 200);
    let call = lines_with(&emu, "step call-response")[0].clone();
    assert!(
        call.contains("status=Some(\"200\") dispatch_status=Some(\"ok\")"),
        "{call}"
    );
    assert!(call.contains("body=14"));
    let dump = lines_with(&emu, "call-headers ")[0].clone();
    assert!(
        dump.starts_with("call-headers :status: 200 | :dispatch_status: ok | Content-Length: 14"),
        "{dump}"
    );
    assert!(dump.contains("X-Multi: a | X-Multi: b"));
    assert!(has_line(&emu, "call-body Some(\"{\\\"allow\\\":true}\")"));
    // The upstream request went out only after the dispatch answered.
    let seen = server.seen();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].line.starts_with("POST /json "));
    assert!(seen[1].line.starts_with("GET /a "));
}

#[test]
fn dispatch_request_is_http11_with_connection_close_and_authority_as_host() {
    let (server, mut emu, chain) = kong_env();
    let cmd = format!(
        "dispatch:{}|/p?q=1|1000||pdp.example:8443|POST|payload;pause",
        server.target()
    );
    emu.send(chain, get("/a").header("x-probe-req-headers", &cmd));
    let d = &server.seen()[0];
    assert_eq!(d.line, "POST /p?q=1 HTTP/1.1");
    assert_eq!(
        d.headers[0],
        ("Host".to_string(), "pdp.example:8443".to_string())
    );
    assert_eq!(
        d.headers[1],
        ("Connection".to_string(), "close".to_string())
    );
    assert_eq!(d.header("content-length").as_deref(), Some("7"));
    assert_eq!(d.header("x-probe-sent").as_deref(), Some("1"));
    // The filter's own Host header is dropped.
    assert_eq!(
        d.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("host"))
            .count(),
        1
    );
    assert_eq!(d.body, b"payload");
}

#[test]
fn dispatch_failures_call_back_with_no_status() {
    let (server, mut emu, chain) = kong_env();
    let hang = format!("dispatch:{}|/hang|200;pause", server.target());
    let garbage = format!("dispatch:{}|/garbage|1000;pause", server.target());
    let refused = format!("dispatch:127.0.0.1:{}|/x|1000;pause", closed_port());
    let tls = format!(
        "dispatch:{}|/x|1000|https|pdp.example;pause",
        server.target()
    );
    let cases = [
        (refused, "broken connection"),
        (hang, "timeout"),
        (garbage, "reader failure"),
        (tls, "tls handshake failure"),
    ];
    for (cmd, expected) in cases {
        emu.take_logs();
        let started = Instant::now();
        let resp = emu.send(chain, get("/a").header("x-probe-req-headers", &cmd));
        let call = lines_with(&emu, "step call-response");
        assert_eq!(call.len(), 1, "{expected}: {:?}", all_lines(&emu));
        assert!(
            call[0].contains(&format!(
                "headers=0 body=0 status=None dispatch_status=Some(\"{expected}\")"
            )),
            "{expected}: {}",
            call[0]
        );
        assert!(
            has_line(&emu, "dispatch failed: tcp socket - "),
            "{expected}"
        );
        // The filter did nothing about it: the request goes on (fail-open is
        // the filter's responsibility).
        assert_eq!(resp.status, 200);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// Seen on a real build: the head and part of the body arrived, then the
/// read timed out. The host calls back with the head's headers and the
/// partial length, but has no body buffer: reading it answers BadArgument.
#[test]
fn dispatch_read_timeout_mid_body_calls_back_with_head_and_unreadable_body() {
    let (server, mut emu, chain) = kong_env();
    let cmd = format!("dispatch:{}|/stall/100/10|300;pause", server.target());
    let started = Instant::now();
    let resp = emu.send(
        chain,
        get_with_call_response(&cmd, "dump-call-headers;call-body-status"),
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let call = lines_with(&emu, "step call-response");
    assert_eq!(call.len(), 1, "{:?}", all_lines(&emu));
    assert!(
        call[0]
            .contains("headers=3 body=10 status=Some(\"200\") dispatch_status=Some(\"timeout\")"),
        "{}",
        call[0]
    );
    let dump = lines_with(&emu, "call-headers ");
    assert_eq!(
        dump,
        vec![
            "call-headers :status: 200 | :dispatch_status: timeout | Content-Length: 100 \
             | X-Upstream: 1 | Connection: close"
                .to_string()
        ]
    );
    // BadArgument (2), not a body and not NotFound.
    assert_eq!(
        lines_with(&emu, "call-body-status"),
        vec!["call-body-status 2 len=0".to_string()]
    );
    assert!(has_line(
        &emu,
        &format!(
            "dispatch failed: tcp socket - timed out reading from \"{}\"",
            server.target()
        )
    ));
    // The filter did not trap; the failed dispatch resumes the request with
    // the host's error path, like the other dispatch failures.
    assert!(!has_line(&emu, "panicked"));
    assert_eq!(resp.status, 200);
}

#[test]
fn dispatch_resolver_failure() {
    let (_server, mut emu, chain) = kong_env();
    let cmd = "dispatch:no-such-host.invalid:80|/x|1000;pause";
    emu.send(chain, get("/a").header("x-probe-req-headers", cmd));
    let call = lines_with(&emu, "step call-response");
    assert!(
        call[0].contains("dispatch_status=Some(\"resolver failure\")"),
        "{}",
        call[0]
    );
}

#[test]
fn dispatch_timeout_zero_uses_socket_timeout() {
    let server = TestServer::start();
    let opts = HostOptions {
        socket_timeout: Duration::from_millis(300),
        ..HostOptions::default()
    };
    let (mut emu, chain) = setup(opts, &server, "");
    let cmd = format!("dispatch:{}|/hang|0;pause", server.target());
    let started = Instant::now();
    emu.send(chain, get("/a").header("x-probe-req-headers", &cmd));
    let took = started.elapsed();
    assert!(has_line(&emu, "dispatch_status=Some(\"timeout\")"));
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn dispatch_tls_requires_trusted_ca_and_sni_name() {
    let (server, mut emu, chain) = kong_env();
    // An IP literal with no :authority cannot give an SNI.
    let cmd = format!("dispatch:{}|/x|1000|https;pause", server.target());
    emu.send(chain, get("/a").header("x-probe-req-headers", &cmd));
    assert!(has_line(&emu, "could not derive tls sni from host"));
    assert!(has_line(
        &emu,
        "dispatch_status=Some(\"tls handshake failure\")"
    ));
}

#[test]
fn dispatch_bad_arguments_trap() {
    let (server, mut emu, chain) = kong_env();
    for (cmd, msg) in [
        (
            format!("dispatch:{}|/x|1000|||-", server.target()),
            "dispatch failed: no :method",
        ),
        (
            format!("dispatch:{}|-|1000", server.target()),
            "dispatch failed: no :path",
        ),
        (
            "dispatch:127.0.0.1:99999|/x|1000".to_string(),
            "dispatch failed: tcp socket - invalid port",
        ),
    ] {
        let resp = emu.send(chain, get("/a").header("x-probe-req-headers", &cmd));
        assert_eq!(resp.status, 500, "{msg}");
        assert!(resp.trapped);
        assert!(has_line(&emu, msg), "{msg}");
    }
}

#[test]
fn chained_dispatches_keep_request_paused_until_the_last() {
    let (server, mut emu, chain) = kong_env();
    let first = format!("dispatch:{}|/slow/50|1000;pause", server.target());
    let second = format!("dispatch:{}|/slow/30/second|1000", server.target());
    let resp = emu.send(
        chain,
        get("/a")
            .header("x-probe-req-headers", &first)
            .header("x-probe-call-response-1", &second),
    );
    assert_eq!(resp.status, 200);
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen[1].line.contains("/second"));
    assert!(
        seen[2].line.starts_with("GET /a"),
        "upstream only after the last dispatch"
    );
    assert_eq!(lines_with(&emu, "step call-response").len(), 2);
}

#[test]
fn parallel_dispatches_resume_after_all() {
    let (server, mut emu, chain) = kong_env();
    let cmd = format!(
        "dispatch:{t}|/slow/80/a|1000;dispatch:{t}|/slow/10/b|1000;pause",
        t = server.target()
    );
    let resp = emu.send(chain, get("/a").header("x-probe-req-headers", &cmd));
    assert_eq!(resp.status, 200);
    // Tokens start at 0 and are global.
    assert!(has_line(&emu, "dispatch ok token=0"));
    assert!(has_line(&emu, "dispatch ok token=1"));
    let calls = lines_with(&emu, "step call-response");
    assert!(
        calls[0].contains("token=1"),
        "completion order: the faster first"
    );
    assert_eq!(server.seen().last().unwrap().line, "GET /a HTTP/1.1");
}

#[test]
fn continue_after_dispatch_does_not_wait() {
    let (server, mut emu, chain) = kong_env();
    let cmd = format!("dispatch:{}|/slow/300|1000;continue", server.target());
    let started = Instant::now();
    let id = emu.start(chain, get("/a").header("x-probe-req-headers", &cmd));
    // The request went upstream without waiting for the dispatch.
    emu.deliver_next(Duration::from_secs(2));
    assert!(started.elapsed() < Duration::from_millis(280));
    let resp = emu.finish(id);
    assert_eq!(resp.status, 200);
}

/// Seen on a real build: a request that went on without waiting and
/// finished before its dispatch's reply leaves the call pending, and reading
/// the reply then crashes the worker (the request's memory is freed).
#[test]
fn a_dispatch_outliving_its_request_crashes_the_worker_when_read() {
    let (server, mut emu, chain) = kong_env();
    let cmd = format!("dispatch:{}|/slow/300|1000;continue", server.target());
    let resp = emu.send(chain, get("/a").header("x-probe-req-headers", &cmd));
    assert_eq!(resp.status, 200, "the request itself completes");
    assert_eq!(emu.stats().host_faults, 0);
    // The reply comes after the request has finished.
    emu.deliver_next(Duration::from_secs(2));
    assert_eq!(emu.stats().host_faults, 1);
    assert!(emu.logs().iter().any(|l| l
        .message
        .contains("was read after its request had finished")));
    // A reply that comes while the request is still in flight is harmless.
    let (server, mut emu, chain) = kong_env();
    let cmd = format!("dispatch:{}|/x|1000;continue", server.target());
    let slow_upstream = get("/slow/300").header("x-probe-req-headers", &cmd);
    let resp = emu.send(chain, slow_upstream);
    assert_eq!(resp.status, 200);
    assert_eq!(emu.stats().host_faults, 0);
}

#[test]
fn resume_http_request_in_call_response_is_harmless() {
    let (server, mut emu, chain) = kong_env();
    let cmd = format!("dispatch:{}|/x|1000;pause", server.target());
    let resp = emu.send(
        chain,
        get_with_call_response(&cmd, "resume;resume-response"),
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.upstream_requests, 1);
    assert!(has_line(&emu, "resume-response result=Ok(())"));
}

#[test]
fn requests_interleave_and_callbacks_come_in_completion_order() {
    let (server, mut emu, chain) = kong_env();
    let slow = format!("dispatch:{}|/slow/200|2000;pause", server.target());
    let fast = format!("dispatch:{}|/slow/10|2000;pause", server.target());
    let a = emu.start(chain, get("/a").header("x-probe-req-headers", &slow));
    let b = emu.start(chain, get("/b").header("x-probe-req-headers", &fast));
    assert!(!emu.is_complete(a) && !emu.is_complete(b));
    assert_eq!(emu.deliver_next(Duration::from_secs(2)), Some(b));
    let rb = emu.finish(b);
    assert_eq!(rb.status, 200);
    assert!(!emu.is_complete(a));
    let ra = emu.finish(a);
    assert_eq!(ra.status, 200);
}

// ------------------------------------------------------- actions & pause

#[test]
fn pause_without_dispatch_stalls_the_request() {
    let (server, mut emu, chain) = kong_env();
    let resp = emu.send(chain, get("/a").header("x-probe-req-headers", "pause"));
    assert!(resp.stalled);
    assert!(server.seen().is_empty());
}

#[test]
fn pause_in_response_headers_means_local_response() {
    let (server, mut emu, chain) = kong_env();
    let resp = emu.send(chain, get("/a").header("x-probe-resp-headers", "pause"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok");
    assert!(has_line(
        &emu,
        "\"ResponseHeaders\" returned \"PAUSE\": local response expected but none produced"
    ));
    assert_eq!(lines_with(&emu, "step resp-body id").len(), 1);

    // With two filters, the pause stops the chain: the second filter's
    // on_response_headers is skipped, and so is the first filter's first
    // on_response_body (the chain resumes from the second filter).
    let mut emu = emulator();
    let chain = add_probes(&mut emu, "a", &server, &["one", "two"]).unwrap();
    emu.send(chain, get("/a").header("x-probe-resp-headers", "pause"));
    assert_eq!(lines_with(&emu, "step resp-headers id").len(), 1);
    let body_calls = lines_with(&emu, "step resp-body id");
    assert!(body_calls[0].contains("id=2"), "{body_calls:?}");
}

#[test]
fn pause_in_request_body_without_dispatch_stalls() {
    let (server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        ClientRequest::post("/a", b"x").header("x-probe-req-body", "pause"),
    );
    assert!(resp.stalled);
    assert!(server.seen().is_empty());
}

#[test]
fn second_pause_in_response_body_is_ignored_with_error() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(chain, get("/big/100").header("x-probe-resp-body", "pause"));
    assert_eq!(resp.text().len(), 100);
    let calls = lines_with(&emu, "step resp-body id");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].contains("size=100 eof=true"));
    assert!(calls[1].contains("size=100 eof=true"));
    assert!(has_line(&emu, "invalid \"on_response_body\" return action (PAUSE): response body buffering already requested"));
}

// ------------------------------------------------------- local responses

#[test]
fn local_response_from_request_headers() {
    let (server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        local_reply("local:403|denied|x-a=1", "add-resp-header:x-late=1"),
    );
    assert_eq!(resp.status, 403);
    assert!(resp.local);
    assert_eq!(resp.body, b"denied\n", "the host appends one newline");
    assert_eq!(resp.header("content-length").as_deref(), Some("7"));
    assert_eq!(resp.header("x-a").as_deref(), Some("1"));
    assert_eq!(
        resp.header("x-late").as_deref(),
        Some("1"),
        "on_response_headers runs for local replies"
    );
    assert_eq!(resp.upstream_requests, 0);
    assert!(server.seen().is_empty());
    assert!(lines_with(&emu, "step resp-body")[0].contains("size=7 eof=true"));
    // Kong's location has default_type '': no Content-Type is invented.
    assert_eq!(resp.header("content-type"), None);
    // Kong's header filter ran: Via and Server are there.
    assert_eq!(resp.header("via").as_deref(), Some("1.1 kong/3.9.3"));
    assert_eq!(resp.framing_error, None);
}

#[test]
fn local_response_empty_body() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(chain, get("/a").header("x-probe-req-headers", "local:401|"));
    assert_eq!(resp.status, 401);
    assert!(resp.body.is_empty());
    assert_eq!(resp.header("content-length").as_deref(), Some("0"));
    assert!(lines_with(&emu, "step resp-body")[0].contains("size=0 eof=true"));
}

#[test]
fn local_response_keeps_last_value_of_repeated_header() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        local_reply(
            "local:200|x|set-cookie=a=1,set-cookie=b=2",
            "add-resp-header:Set-Cookie=c=3",
        ),
    );
    assert_eq!(resp.header_all("set-cookie"), vec!["b=2", "c=3"]);
}

#[test]
fn local_response_content_type_defaults() {
    let (_server, mut emu, chain) = nginx_env();
    let resp = emu.send(
        chain,
        get("/a").header("x-probe-req-headers", "local:200|hi"),
    );
    assert_eq!(resp.header("content-type").as_deref(), Some("text/plain"));
    let resp = emu.send(
        chain,
        get("/a").header(
            "x-probe-req-headers",
            "local:200|hi|content-type=application/json",
        ),
    );
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
}

#[test]
fn second_local_response_traps() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        get("/a").header("x-probe-req-headers", "local:403|a;local:401|b"),
    );
    assert!(resp.trapped);
    assert!(has_line(&emu, "local response already stashed"));
}

#[test]
fn local_response_from_call_response_cancels_pending_dispatches() {
    let (server, mut emu, chain) = kong_env();
    let cmd = format!(
        "dispatch:{t}|/slow/10|2000;dispatch:{t}|/slow/300|2000;pause",
        t = server.target()
    );
    let started = Instant::now();
    let resp = emu.send(chain, get_with_call_response(&cmd, "local:503|pdp down"));
    assert_eq!(resp.status, 503);
    assert_eq!(resp.body, b"pdp down\n");
    assert!(has_line(
        &emu,
        "local response produced, cancelling pending dispatch operations"
    ));
    assert_eq!(lines_with(&emu, "step call-response").len(), 1);
    assert!(started.elapsed() < Duration::from_millis(290));
    assert!(!server.seen().iter().any(|s| s.line.starts_with("GET /a")));
}

#[test]
fn local_response_from_response_headers_replaces_status_and_body_only() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        get("/a").header(
            "x-probe-resp-headers",
            "remove-resp-header:content-length;local:418|teapot|x-ignored=1",
        ),
    );
    assert_eq!(resp.status, 418);
    assert_eq!(resp.text(), "teapot\n");
    assert_eq!(resp.header("x-ignored"), None, "headers argument ignored");
    assert_eq!(resp.header("x-upstream").as_deref(), Some("1"));
}

#[test]
fn local_response_from_response_headers_keeps_upstream_content_length() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        get("/a").header("x-probe-resp-headers", "local:403|forbidden"),
    );
    assert_eq!(resp.status, 403);
    // Content-Length: 2 from the upstream stays: the client sees a broken body.
    assert!(resp.framing_error.is_some());
}

#[test]
fn local_response_from_response_body_traps() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(chain, get("/a").header("x-probe-resp-body", "local:403|x"));
    assert!(resp.trapped);
    assert!(has_line(&emu, "response already sent"));
    assert_eq!(resp.text(), "ok");
}

// --------------------------------------------------------------- bodies

#[test]
fn response_body_buffering_gives_whole_body_with_eof() {
    let server = TestServer::start();
    let opts = HostOptions {
        upstream_chunk_size: 10,
        ..HostOptions::default()
    };
    let (mut emu, chain) = setup(opts, &server, "");
    let resp = emu.send(
        chain,
        get("/chunked/35")
            .header("x-probe-resp-body-1", "pause")
            .header("x-probe-resp-body-2", "read-resp-body"),
    );
    assert_eq!(resp.body.len(), 35);
    let calls = lines_with(&emu, "step resp-body id");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls[0].contains("size=10 eof=false"));
    assert!(calls[1].contains("size=35 eof=true"));
    assert!(has_line(
        &emu,
        &format!("resp-body-data {}", "c".repeat(35))
    ));
}

#[test]
fn response_body_buffers_full_stream_on_without_eof() {
    let server = TestServer::start();
    let opts = HostOptions {
        upstream_chunk_size: 10,
        response_body_buffers: (2, 8),
        ..HostOptions::default()
    };
    let (mut emu, chain) = setup(opts, &server, "");
    let resp = emu.send(
        chain,
        get("/chunked/40").header("x-probe-resp-body-1", "pause"),
    );
    assert_eq!(resp.body.len(), 40);
    let sizes: Vec<String> = lines_with(&emu, "step resp-body id")
        .iter()
        .map(|l| l.split(" n=").nth(1).unwrap().to_string())
        .collect();
    // 16 bytes of buffers: the first piece (10, paused) fills 10; the second
    // needs 4 bytes more than what is left, so the buffers are flushed with
    // the whole second piece (20 bytes, eof=false); the rest streams on.
    assert_eq!(
        sizes,
        vec![
            "1 size=10 eof=false",
            "2 size=20 eof=false",
            "3 size=10 eof=false",
            "4 size=10 eof=false",
            "5 size=0 eof=true"
        ]
    );
}

#[test]
fn content_length_upstream_in_pieces_never_gets_eof() {
    let server = TestServer::start();
    let opts = HostOptions {
        upstream_chunk_size: 10,
        ..HostOptions::default()
    };
    let (mut emu, chain) = setup(opts, &server, "");
    let resp = emu.send(chain, get("/big/30"));
    assert_eq!(resp.body.len(), 30);
    let calls = lines_with(&emu, "step resp-body id");
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.contains("eof=false")), "{calls:?}");
    // A single piece equal to Content-Length does get eof=true.
    emu.take_logs();
    emu.send(chain, get("/big/5"));
    assert!(lines_with(&emu, "step resp-body id")[0].contains("size=5 eof=true"));
}

#[test]
fn chunked_upstream_ends_with_empty_eof_call() {
    let server = TestServer::start();
    let opts = HostOptions {
        upstream_chunk_size: 10,
        ..HostOptions::default()
    };
    let (mut emu, chain) = setup(opts, &server, "");
    emu.send(chain, get("/chunked/20"));
    let calls = lines_with(&emu, "step resp-body id");
    assert_eq!(calls.len(), 3);
    assert!(calls[2].contains("size=0 eof=true"));
}

#[test]
fn set_response_body_cuts_value_to_size() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        get("/a")
            .header("x-probe-resp-headers", "remove-resp-header:content-length")
            .header("x-probe-resp-body-1", "set-resp-body:0|2|abcdef"),
    );
    assert_eq!(resp.text(), "ab");
    let resp = emu.send(
        chain,
        get("/a")
            .header("x-probe-resp-headers", "remove-resp-header:content-length")
            .header("x-probe-resp-body-1", "set-resp-body:0|100|abcdef"),
    );
    assert_eq!(resp.text(), "abcdef");
    assert_eq!(resp.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(resp.framing_error, None);
}

#[test]
fn changing_body_length_without_removing_content_length_breaks_framing() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        get("/a").header("x-probe-resp-body-1", "set-resp-body:0|100|longer body"),
    );
    assert!(resp.framing_error.is_some());
    assert_eq!(resp.text(), "lo");
    assert!(has_line(
        &emu,
        "overriding response body chunk while Content-Length header already sent"
    ));
}

// ------------------------------------------------------ headers & maps

#[test]
fn request_pseudo_headers_come_first() {
    let (_server, mut emu, chain) = kong_env();
    let mut req = get("/a/./b/../c%20d?x=1&y").header("X-Mixed-Case", "v");
    req.server_port = 8000;
    emu.send(chain, req.header("x-probe-req-headers", "dump-req-headers"));
    let dump = lines_with(&emu, "req-headers :path")[0].clone();
    assert!(
        dump.starts_with("req-headers :path: /a/c d?x=1&y | :method: GET | :scheme: http | :authority: kong:8000 | Host: example.com | X-Mixed-Case: v"),
        "{dump}"
    );
}

#[test]
fn response_headers_include_status_shims_and_kong_headers() {
    let (_server, mut emu, chain) = kong_env();
    emu.send(
        chain,
        get("/a").header("x-probe-resp-headers", "dump-resp-headers"),
    );
    let dump = lines_with(&emu, "resp-headers :status")[0].clone();
    assert!(dump.starts_with("resp-headers :status: 200 | Content-Type: text/plain | Connection: keep-alive | Content-Length: 2"), "{dump}");
    assert!(dump.contains("Via: 1.1 kong/3.9.3"));
    assert!(dump.contains("X-Kong-Request-Id: "));
}

#[test]
fn path_and_host_headers_alone_do_not_change_kong_proxying() {
    let (server, mut emu, chain) = kong_env();
    emu.send(
        chain,
        get("/a?x=1").header(
            "x-probe-req-headers",
            "set-req-header::path=/changed;set-req-header:host=other.example",
        ),
    );
    let seen = &server.seen()[0];
    assert_eq!(seen.line, "GET /a?x=1 HTTP/1.1");
    assert_eq!(
        seen.header("host").as_deref(),
        Some(&*format!("127.0.0.1:{}", server.port()))
    );
    emu.send(
        chain,
        get("/a?x=1").header(
            "x-probe-req-headers",
            "set-property:ngx.upstream_uri=/new?z=2;set-property:ngx.upstream_host=pinned.example",
        ),
    );
    let seen = &server.seen()[1];
    assert_eq!(seen.line, "GET /new?z=2 HTTP/1.1");
    assert_eq!(seen.header("host").as_deref(), Some("pinned.example"));
    assert_eq!(seen.header("x-forwarded-path").as_deref(), Some("/a"));
}

#[test]
fn plain_nginx_proxies_path_and_host_header() {
    let (server, mut emu, chain) = nginx_env();
    emu.send(
        chain,
        get("/a?x=1").header(
            "x-probe-req-headers",
            "set-req-header::path=/changed?q;set-req-header:host=other.example",
        ),
    );
    let seen = &server.seen()[0];
    assert_eq!(seen.line, "GET /changed?q HTTP/1.1");
    assert_eq!(seen.header("host").as_deref(), Some("other.example"));
}

#[test]
fn kong_proxies_with_forwarded_headers_and_strip_path() {
    let server = TestServer::start();
    let mut emu = emulator();
    let mut service = Service::new("svc", "http", "127.0.0.1", server.port());
    service.path = Some("/base".to_string());
    let chain = emu
        .add_chain(
            service,
            Route::new("rt", &["/echo"]),
            vec![FilterEntry::new("probe", "")],
        )
        .unwrap();
    let resp = emu.send(chain, get("/echo/x?y=1"));
    assert_eq!(resp.status, 200);
    let seen = &server.seen()[0];
    assert_eq!(seen.line, "GET /base/x?y=1 HTTP/1.1");
    assert_eq!(seen.header("x-forwarded-prefix").as_deref(), Some("/echo"));
    assert_eq!(
        seen.header("x-forwarded-host").as_deref(),
        Some("example.com")
    );
    assert_eq!(seen.header("x-forwarded-port").as_deref(), Some("8000"));
    assert_eq!(seen.header("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert_eq!(seen.header("via").as_deref(), Some("1.1 kong/3.9.3"));
    // No route: Kong answers 404 itself, no filter runs.
    emu.take_logs();
    let resp = emu.send(chain, get("/other"));
    assert_eq!(resp.status, 404);
    assert!(resp.text().contains("no Route matched with those values"));
    assert!(filter_lines(&emu).is_empty());
}

#[test]
fn setting_response_headers_after_body_started_traps() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        get("/a").header("x-probe-resp-body", "add-resp-header:x=1"),
    );
    assert!(resp.trapped);
    assert!(has_line(
        &emu,
        "can only set response headers before \"on_response_body\""
    ));
}

// -------------------------------------------- builtin response headers

/// The error lines the host itself wrote.
fn host_errors(emu: &Emulator) -> Vec<String> {
    emu.logs()
        .iter()
        .filter(|l| !l.from_filter && l.level == LogLevel::Error)
        .map(|l| l.message.clone())
        .collect()
}

#[test]
fn removed_builtin_header_keeps_its_slot_so_adding_it_again_fails() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        local_reply(
            "local:401|denied|www-authenticate=Bearer",
            "remove-resp-header:www-authenticate;add-resp-header:WWW-Authenticate=Bearer realm=x;\
             remove-resp-header:date;add-resp-header:Date=Thu, 01 Jan 2026 00:00:00 GMT",
        ),
    );
    assert_eq!(resp.status, 401);
    // The remove only blanked the slot's entry: the add is refused, and the
    // header is gone from the reply.
    assert_eq!(resp.header("www-authenticate"), None, "{:?}", resp.headers);
    assert_eq!(resp.header("date"), None, "{:?}", resp.headers);
    let errors = host_errors(&emu);
    assert!(
        errors.contains(&"cannot add new \"WWW-Authenticate\" builtin response header".to_string()),
        "{errors:?}"
    );
    assert!(
        errors.contains(&"cannot add new \"Date\" builtin response header".to_string()),
        "{errors:?}"
    );
    // The filter cannot tell: the host answers Ok.
    assert!(has_line(&emu, "resp-header add WWW-Authenticate -> Ok(())"));
    assert!(has_line(&emu, "resp-header add Date -> Ok(())"));

    // The same on a proxied response (Date comes from the host there).
    let resp = emu.send(
        chain,
        get("/a").header(
            "x-probe-resp-headers",
            "remove-resp-header:Date;add-resp-header:Date=Thu, 01 Jan 2026 00:00:00 GMT",
        ),
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("date"), None, "{:?}", resp.headers);
}

/// Names of the reply's header lines, in order.
fn names(resp: &ClientResponse) -> Vec<&str> {
    resp.headers.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn set_after_remove_revives_a_builtin_header() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        local_reply(
            "local:401|denied|www-authenticate=Bearer,x-after=1",
            "remove-resp-header:www-authenticate;set-resp-header:www-authenticate=Basic;\
             remove-resp-header:date;set-resp-header:date=Thu, 01 Jan 2026 00:00:00 GMT",
        ),
    );
    assert_eq!(resp.header_all("www-authenticate"), vec!["Basic"]);
    assert_eq!(
        resp.header_all("date"),
        vec!["Thu, 01 Jan 2026 00:00:00 GMT"]
    );
    // The slot's own entry comes back, in its place, with the table's
    // spelling of the name.
    let names = names(&resp);
    let auth = names.iter().position(|n| *n == "WWW-Authenticate");
    let after = names.iter().position(|n| *n == "x-after");
    assert!(
        auth.is_some() && auth < after,
        "revived in place: {names:?}"
    );
    assert!(host_errors(&emu).is_empty(), "{:?}", host_errors(&emu));
    // The slot lives on: a second value still cannot be added.
    let resp = emu.send(
        chain,
        local_reply(
            "local:401|denied|www-authenticate=Bearer",
            "remove-resp-header:www-authenticate;set-resp-header:www-authenticate=Basic;\
             add-resp-header:www-authenticate=Digest",
        ),
    );
    assert_eq!(resp.header_all("www-authenticate"), vec!["Basic"]);
}

#[test]
fn second_value_of_a_builtin_header_cannot_be_added() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        local_reply(
            "local:200|x|etag=\"a\"",
            "add-resp-header:etag=\"b\";add-resp-header:server=other",
        ),
    );
    assert_eq!(resp.header_all("etag"), vec!["\"a\""]);
    assert_eq!(resp.header_all("server"), vec!["kong/3.9.3"]);
    // Names of the host's table are written with the table's spelling.
    assert!(
        resp.headers.iter().any(|(n, _)| n == "ETag"),
        "{:?}",
        resp.headers
    );
    let errors = host_errors(&emu);
    assert!(
        errors.contains(&"cannot add new \"ETag\" builtin response header".to_string()),
        "{errors:?}"
    );
    assert!(
        errors.contains(&"cannot add new \"Server\" builtin response header".to_string()),
        "{errors:?}"
    );
}

#[test]
fn relative_location_has_no_slot_so_remove_then_add_sends_it_twice() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        local_reply(
            "local:302|moved|location=/next",
            "remove-resp-header:location;add-resp-header:location=/next",
        ),
    );
    assert_eq!(resp.status, 302);
    assert_eq!(resp.header_all("location"), vec!["/next", "/next"]);
    assert!(host_errors(&emu).is_empty());

    // set_http_response_headers removes the list through the slots: the
    // relative Location survives it.
    let resp = emu.send(
        chain,
        local_reply("local:302|moved|location=/next", "set-resp-headers:x-a=1"),
    );
    assert_eq!(resp.header_all("location"), vec!["/next"]);
    assert_eq!(resp.header("x-a").as_deref(), Some("1"));

    // An absolute Location keeps its slot like the other builtins.
    let resp = emu.send(
        chain,
        local_reply(
            "local:302|moved|location=https://x.example/next",
            "remove-resp-header:location;add-resp-header:location=https://x.example/next",
        ),
    );
    assert_eq!(resp.header("location"), None);
    assert!(has_line(
        &emu,
        "cannot add new \"Location\" builtin response header"
    ));
}

#[test]
fn proxied_builtin_headers_follow_the_upstream_modules_slots() {
    let (_server, mut emu, chain) = kong_env();
    // nginx copies an upstream WWW-Authenticate without a slot and keeps a
    // relative Location out of its slot: a remove does nothing, an add
    // appends.
    let resp = emu.send(
        chain,
        get("/auth").header(
            "x-probe-resp-headers",
            "remove-resp-header:www-authenticate;add-resp-header:www-authenticate=Bearer;\
             remove-resp-header:location",
        ),
    );
    assert_eq!(resp.status, 401);
    assert_eq!(
        resp.header_all("www-authenticate"),
        vec!["Basic realm=\"a\"", "Bearer"]
    );
    assert_eq!(resp.header_all("location"), vec!["/relative"]);
    assert!(host_errors(&emu).is_empty());
}

#[test]
fn ordinary_header_remove_then_add_works() {
    let (_server, mut emu, chain) = kong_env();
    // The same steps on an ordinary header and on a builtin one.
    let resp = emu.send(
        chain,
        local_reply(
            "local:200|x|x-foo=1,content-encoding=identity",
            "remove-resp-header:x-foo;add-resp-header:X-Foo=2;\
             remove-resp-header:content-encoding;add-resp-header:content-encoding=gzip",
        ),
    );
    assert_eq!(resp.header_all("x-foo"), vec!["2"]);
    assert!(names(&resp).contains(&"X-Foo"), "the filter's spelling");
    assert!(resp.header_all("content-encoding").is_empty());
    assert_eq!(
        host_errors(&emu),
        vec!["cannot add new \"Content-Encoding\" builtin response header".to_string()]
    );
}

#[test]
fn cache_control_takes_two_values() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        local_reply(
            "local:200|x|cache-control=private",
            "remove-resp-header:cache-control;add-resp-header:cache-control=no-cache;\
             add-resp-header:cache-control=no-store",
        ),
    );
    assert_eq!(
        resp.header_all("cache-control"),
        vec!["no-cache", "no-store"]
    );
    // A name of the host's table: written with the table's spelling.
    assert_eq!(
        names(&resp)
            .iter()
            .filter(|n| n.eq_ignore_ascii_case("cache-control"))
            .collect::<Vec<_>>(),
        vec![&"Cache-Control", &"Cache-Control"]
    );
    assert!(host_errors(&emu).is_empty());
}

#[test]
fn content_length_and_last_modified_can_be_added_after_a_remove() {
    let (_server, mut emu, chain) = kong_env();
    // Their handlers null the slot on remove (ngx_http_clear_content_length,
    // ngx_http_clear_last_modified).
    let resp = emu.send(
        chain,
        local_reply(
            "local:200|abc|last-modified=Wed, 01 Jan 2025 00:00:00 GMT",
            "remove-resp-header:content-length;add-resp-header:content-length=4;\
             remove-resp-header:last-modified;add-resp-header:last-modified=Thu, 02 Jan 2025 00:00:00 GMT;\
             add-resp-header:content-length=4",
        ),
    );
    assert_eq!(resp.header_all("content-length"), vec!["4"]);
    assert_eq!(
        resp.header_all("last-modified"),
        vec!["Thu, 02 Jan 2025 00:00:00 GMT"]
    );
    assert_eq!(resp.text(), "abc\n");
    assert_eq!(resp.framing_error, None);
    let names = names(&resp);
    assert!(
        names.contains(&"Content-Length") && names.contains(&"Last-Modified"),
        "the table's spelling: {names:?}"
    );
    assert_eq!(
        host_errors(&emu),
        vec!["cannot add new \"Content-Length\" builtin response header".to_string()]
    );
}

#[test]
fn set_of_a_header_with_two_values_removes_both() {
    let (_server, mut emu, chain) = kong_env();
    // ngx_http_wasm_set_header_helper blanks the second match, scans again
    // and blanks the one it had just updated.
    let resp = emu.send(
        chain,
        get("/json").header("x-probe-resp-headers", "set-resp-header:X-Multi=c"),
    );
    assert_eq!(resp.status, 200);
    assert!(resp.header_all("x-multi").is_empty(), "{:?}", resp.headers);
    let resp = emu.send(
        chain,
        get("/json").header(
            "x-probe-resp-headers",
            "set-resp-header:X-Multi=c;set-resp-header:X-Multi=d",
        ),
    );
    assert_eq!(resp.header_all("x-multi"), vec!["d"]);
}

// ------------------------------------------- request headers and proxying

/// The values of `name` the upstream received, in order.
fn sent_values(seen: &Seen, name: &str) -> Vec<String> {
    seen.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.clone())
        .collect()
}

/// The header lines the upstream received, without the probe's commands.
fn sent_lines(seen: &Seen) -> Vec<String> {
    seen.headers
        .iter()
        .filter(|(n, _)| !n.to_ascii_lowercase().starts_with("x-probe-"))
        .map(|(n, v)| format!("{n}: {v}"))
        .collect()
}

/// Kong and plain nginx: both proxy with nginx's proxy module.
fn both_modes(server: &TestServer) -> Vec<(Emulator, ChainId)> {
    vec![kong(server), nginx(server)]
}

#[test]
fn removed_request_header_is_gone_from_the_map_but_still_proxied() {
    let server = TestServer::start();
    for (i, (mut emu, chain)) in both_modes(&server).into_iter().enumerate() {
        let resp = emu.send(
            chain,
            get("/a").header("X-M", "0").header(
                "x-probe-req-headers",
                "remove-req-header:X-M;dump-req-headers;get-req-header:x-m",
            ),
        );
        assert_eq!(resp.status, 200);
        // The filter's map skips the blanked entry ...
        let dump = lines_with(&emu, "req-headers :path")[0].clone();
        assert!(!dump.to_ascii_lowercase().contains("| x-m:"), "{dump}");
        assert!(has_line(&emu, "req-header remove X-M -> Ok(())"));
        // ... its single-value lookup does not (ngx_wasm_get_list_elem) ...
        assert!(
            has_line(&emu, "req-header get x-m = 0"),
            "{:?}",
            filter_lines(&emu)
        );
        // ... and nginx's proxy module sends it with its old value.
        let seen = &server.seen()[i];
        assert_eq!(sent_values(seen, "x-m"), vec!["0"], "{:?}", seen.headers);
    }
}

#[test]
fn removed_then_added_request_header_proxies_old_and_new_values() {
    // Seen on a real build, from on_http_request_headers and from
    // on_http_call_response.
    let server = TestServer::start();
    let change = "remove-req-header:X-M;add-req-header:x-m=1;add-req-header:x-m=2;dump-req-headers";
    let dispatch = format!("dispatch:{}|/json|1000;pause", server.target());
    let (mut emu, chain) = kong(&server);
    emu.send(
        chain,
        get("/a")
            .header("X-M", "0")
            .header("x-probe-req-headers", change),
    );
    emu.send(
        chain,
        get("/b")
            .header("X-M", "0")
            .header("x-probe-req-headers", &dispatch)
            .header("x-probe-call-response", change),
    );
    let seen = server.seen();
    let proxied: Vec<&Seen> = seen.iter().filter(|s| !s.line.contains("/json")).collect();
    assert_eq!(proxied.len(), 2);
    for s in proxied {
        let lines: Vec<String> = sent_lines(s)
            .into_iter()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-m:"))
            .collect();
        assert_eq!(lines, vec!["X-M: 0", "x-m: 1", "x-m: 2"], "{:?}", s.headers);
    }
    // The filter sees only its own values.
    for dump in lines_with(&emu, "req-headers :path") {
        assert!(dump.ends_with("x-m: 1 | x-m: 2"), "{dump}");
        assert!(!dump.contains("X-M: 0"), "{dump}");
    }
    // The plain nginx proxy does the same.
    let (mut emu, chain) = nginx(&server);
    emu.send(
        chain,
        get("/c")
            .header("X-M", "0")
            .header("x-probe-req-headers", change),
    );
    let s = server.seen().last().unwrap().clone();
    assert_eq!(
        sent_values(&s, "x-m"),
        vec!["0", "1", "2"],
        "{:?}",
        s.headers
    );
}

#[test]
fn removed_builtin_request_header_cannot_be_added_again_and_its_old_value_is_proxied() {
    // Seen on a real build (Authorization, User-Agent).
    let server = TestServer::start();
    for (i, (mut emu, chain)) in both_modes(&server).into_iter().enumerate() {
        emu.send(
            chain,
            get("/a")
                .header("Authorization", "Bearer old")
                .header("User-Agent", "old-agent")
                .header(
                    "x-probe-req-headers",
                    "remove-req-header:Authorization;add-req-header:Authorization=Bearer new;\
                     remove-req-header:user-agent;add-req-header:User-Agent=new-agent;\
                     dump-req-headers",
                ),
        );
        let errors = host_errors(&emu);
        for name in ["Authorization", "User-Agent"] {
            assert!(
                errors.contains(&format!("cannot add new \"{name}\" builtin request header")),
                "{errors:?}"
            );
            // The filter gets Ok all the same.
            assert!(has_line(&emu, &format!("req-header add {name} -> Ok(())")));
        }
        let dump = lines_with(&emu, "req-headers :path")[0].clone();
        assert!(!dump.contains("| Authorization:"), "{dump}");
        assert!(!dump.contains("| User-Agent:"), "{dump}");
        let seen = &server.seen()[i];
        assert_eq!(sent_values(seen, "authorization"), vec!["Bearer old"]);
        assert_eq!(sent_values(seen, "user-agent"), vec!["old-agent"]);
    }
}

#[test]
fn set_of_a_builtin_request_header_replaces_the_client_value_in_place() {
    let (server, mut emu, chain) = kong_env();
    for cmd in [
        "set-req-header:authorization=Bearer new",
        // A set after a remove revives the blanked entry, still in place.
        "remove-req-header:Authorization;set-req-header:authorization=Bearer new",
    ] {
        emu.send(
            chain,
            get("/a")
                .header("Authorization", "Bearer old")
                .header("X-After", "1")
                .header("x-probe-req-headers", cmd),
        );
    }
    for seen in server.seen() {
        let lines = sent_lines(&seen);
        let auth = lines.iter().position(|l| l.starts_with("Authorization"));
        let after = lines.iter().position(|l| l == "X-After: 1");
        // The table's spelling, only the new value, before X-After.
        assert_eq!(sent_values(&seen, "authorization"), vec!["Bearer new"]);
        assert!(
            lines.contains(&"Authorization: Bearer new".to_string()),
            "{lines:?}"
        );
        assert!(auth < after, "{lines:?}");
    }
    assert!(host_errors(&emu).is_empty(), "{:?}", host_errors(&emu));
}

#[test]
fn set_of_a_request_header_sent_once_replaces_it_but_not_after_a_remove() {
    let (server, mut emu, chain) = kong_env();
    emu.send(
        chain,
        get("/a")
            .header("X-M", "0")
            .header("X-After", "1")
            .header("x-probe-req-headers", "set-req-header:x-m=1"),
    );
    let seen = &server.seen()[0];
    let lines = sent_lines(seen);
    assert_eq!(sent_values(seen, "x-m"), vec!["1"]);
    // Updated in place, with the filter's spelling.
    let at = lines.iter().position(|l| l == "x-m: 1");
    assert!(at.is_some() && at < lines.iter().position(|l| l == "X-After: 1"));
    // After a remove, the set finds no live entry and appends one: the
    // upstream gets the blanked old value and the new one.
    emu.send(
        chain,
        get("/a").header("X-M", "0").header(
            "x-probe-req-headers",
            "remove-req-header:X-M;set-req-header:x-m=1;dump-req-headers",
        ),
    );
    let seen = &server.seen()[1];
    assert_eq!(
        sent_values(seen, "x-m"),
        vec!["0", "1"],
        "{:?}",
        seen.headers
    );
    let dump = lines_with(&emu, "req-headers :path")[0].clone();
    assert!(dump.ends_with("x-m: 1"), "{dump}");
}

#[test]
fn set_of_a_request_header_sent_twice_blanks_both_and_both_are_proxied() {
    // ngx_http_wasm_set_header_helper updates the first entry, blanks the
    // second, scans again and blanks the first too. Both stay in the list,
    // the first with the new value, the second with its old one.
    let server = TestServer::start();
    for (i, (mut emu, chain)) in both_modes(&server).into_iter().enumerate() {
        emu.send(
            chain,
            get("/a").header("X-M", "a").header("X-M", "b").header(
                "x-probe-req-headers",
                "set-req-header:x-m=c;dump-req-headers;get-req-header:x-m",
            ),
        );
        let dump = lines_with(&emu, "req-headers :path")[0].clone();
        assert!(!dump.to_ascii_lowercase().contains("| x-m:"), "{dump}");
        assert!(
            has_line(&emu, "req-header get x-m = c"),
            "{:?}",
            filter_lines(&emu)
        );
        let seen = &server.seen()[i];
        let lines: Vec<String> = sent_lines(seen)
            .into_iter()
            .filter(|l| l.to_ascii_lowercase().starts_with("x-m:"))
            .collect();
        assert_eq!(lines, vec!["x-m: c", "X-M: b"], "{:?}", seen.headers);
    }
}

#[test]
fn set_of_a_request_header_to_an_empty_value_proxies_it_empty() {
    let (server, mut emu, chain) = kong_env();
    emu.send(
        chain,
        get("/a")
            .header("X-M", "0")
            .header("User-Agent", "agent")
            .header("X-After", "1")
            .header(
                "x-probe-req-headers",
                "set-req-header:X-M=;set-req-header:X-New=;\
                 remove-req-header:User-Agent;set-req-header:User-Agent=;dump-req-headers",
            ),
    );
    let seen = &server.seen()[0];
    assert_eq!(sent_values(seen, "x-m"), vec![""], "{:?}", seen.headers);
    assert_eq!(sent_values(seen, "x-new"), vec![""], "{:?}", seen.headers);
    // The revived User-Agent slot keeps its place.
    let lines = sent_lines(seen);
    let ua = lines.iter().position(|l| l.starts_with("User-Agent:"));
    assert!(
        ua.is_some() && ua < lines.iter().position(|l| l == "X-After: 1"),
        "{lines:?}"
    );
    assert_eq!(sent_values(seen, "user-agent"), vec![""]);
    let dump = lines_with(&emu, "req-headers :path")[0].clone();
    assert!(dump.contains("X-M: "), "{dump}");
}

#[test]
fn set_request_headers_blanks_every_old_header_and_they_are_still_proxied() {
    // ngx_http_wasm_clear_req_headers removes each header through the
    // handlers before the new map is set.
    let (server, mut emu, chain) = kong_env();
    emu.send(
        chain,
        get("/a")
            .header("X-M", "0")
            .header("Authorization", "Bearer old")
            .header(
                "x-probe-req-headers",
                "set-req-headers:x-n=1,authorization=Bearer new;dump-req-headers",
            ),
    );
    assert!(has_line(&emu, "req-headers set -> Ok(())"));
    let dump = lines_with(&emu, "req-headers :path")[0].clone();
    assert!(
        dump.ends_with(":authority: kong:8000 | Authorization: Bearer new | x-n: 1"),
        "{dump}"
    );
    let seen = &server.seen()[0];
    assert_eq!(sent_values(seen, "x-m"), vec!["0"], "{:?}", seen.headers);
    assert_eq!(sent_values(seen, "authorization"), vec!["Bearer new"]);
    assert_eq!(sent_values(seen, "x-n"), vec!["1"]);
}

#[test]
fn removed_response_header_is_still_found_by_a_single_lookup() {
    // ngx_wasm_get_list_elem, behind get_http_response_header, does not
    // skip blanked entries; the map and the client do.
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        get("/a").header(
            "x-probe-resp-headers",
            "remove-resp-header:X-Upstream;get-resp-header:x-upstream;dump-resp-headers",
        ),
    );
    assert_eq!(resp.header("x-upstream"), None, "{:?}", resp.headers);
    assert!(
        has_line(&emu, "resp-header get x-upstream = 1"),
        "{:?}",
        filter_lines(&emu)
    );
    let dump = lines_with(&emu, "resp-headers :status")[0].clone();
    assert!(!dump.contains("X-Upstream"), "{dump}");
}

#[test]
fn connection_response_header_values_are_matched_like_the_host() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        get("/a").header("x-probe-resp-headers", "set-resp-header:Connection=close"),
    );
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    // The host compares the value's length, not the word's: a token that
    // does not end the value is not seen.
    let resp = emu.send(
        chain,
        get("/a").header("Connection", "close").header(
            "x-probe-resp-headers",
            "set-resp-header:Connection=keep-alive, x",
        ),
    );
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    assert!(has_line(
        &emu,
        "attempt to set invalid Connection response header: \"keep-alive, x\""
    ));
}

// ----------------------------------------------------------- properties

fn props(emu: &Emulator) -> Vec<String> {
    lines_with(emu, "property ")
}

#[test]
fn standard_and_ngx_properties() {
    let (_server, mut emu, chain) = kong_env();
    let mut req = get("/a/%7Ex/../b?q=1").header(
        "x-probe-req-headers",
        "get-property:source.address;get-property:source.port;get-property:request.path;\
         get-property:request.url_path;get-property:request.query;get-property:request.method;\
         get-property:request.protocol;get-property:request.host;get-property:ngx.host;\
         get-property:ngx.http_host;get-property:ngx.server_port;get-property:ngx.scheme;\
         get-property:plugin_name;get-property:plugin_root_id;get-property:request.id;\
         get-property:ngx.nonexistent;get-property:ngx.ssl_client_raw_cert",
    );
    req.client_addr = "10.1.2.3:5555".parse().unwrap();
    req.headers[0].1 = b"Example.COM:8000".to_vec();
    emu.send(chain, req);
    let p = props(&emu);
    let expect = [
        "property source.address = 10.1.2.3",
        "property source.port = 5555",
        "property request.path = /a/%7Ex/../b?q=1",
        "property request.url_path = /a/b",
        "property request.query = q=1",
        "property request.method = GET",
        "property request.protocol = HTTP/1.1",
        "property ngx.host = example.com",
        "property ngx.http_host = Example.COM:8000",
        "property ngx.server_port = 8000",
        "property ngx.scheme = http",
        "property plugin_name = probe",
        "property plugin_root_id = 0",
        "property request.id = <none>",
        "property ngx.nonexistent = <none>",
        "property ngx.ssl_client_raw_cert = <none>",
    ];
    for e in expect {
        assert!(p.iter().any(|l| l == e), "missing {e:?} in {p:#?}");
    }
    // request.host is the machine's hostname, not the Host header.
    let host = p
        .iter()
        .find(|l| l.starts_with("property request.host"))
        .unwrap();
    assert!(!host.contains("example.com"));
}

#[test]
fn client_certificate_property() {
    let (_server, mut emu, chain) = kong_env();
    let mut req = get("/a").header(
        "x-probe-req-headers",
        "get-property:ngx.ssl_client_raw_cert;get-property:connection.mtls",
    );
    req.tls = true;
    req.client_cert_pem = Some("-----BEGIN CERTIFICATE-----X".to_string());
    emu.send(chain, req);
    let p = props(&emu);
    assert!(
        p.contains(&"property ngx.ssl_client_raw_cert = -----BEGIN CERTIFICATE-----X".to_string())
    );
    assert!(p.contains(&"property connection.mtls = true".to_string()));
}

#[test]
fn kong_properties_inside_kong_only() {
    let (_server, mut emu, chain) = kong_env();
    let cmds = "get-property:kong.router.service;get-property:kong.router.route;get-property:kong.route_id;\
        get-property:kong.service_name;get-property:kong.version;get-property:kong.request.forwarded_scheme;\
        get-property:kong.request.port;set-property:kong.ctx.shared.k=v1;get-property:kong.ctx.shared.k;\
        get-property:kong.nothing";
    emu.send(chain, get("/a").header("x-probe-req-headers", cmds));
    let p = props(&emu);
    let service = p
        .iter()
        .find(|l| l.starts_with("property kong.router.service"))
        .unwrap();
    assert!(
        service.contains("\"host\":\"127.0.0.1\"") && service.contains("\"name\":\"svc\""),
        "{service}"
    );
    let route = p
        .iter()
        .find(|l| l.starts_with("property kong.router.route"))
        .unwrap();
    assert!(
        route.contains("\"paths\":[\"\\/\"]"),
        "cjson escapes '/': {route}"
    );
    for e in [
        "property kong.service_name = svc",
        "property kong.version = 3.9.3",
        "property kong.request.forwarded_scheme = http",
        "property kong.request.port = 8000",
        "property kong.ctx.shared.k = v1",
        "property kong.nothing = <none>",
    ] {
        assert!(p.contains(&e.to_string()), "missing {e:?} in {p:#?}");
    }

    let (_server, mut emu, chain) = nginx_env();
    emu.send(
        chain,
        get("/a").header(
            "x-probe-req-headers",
            "get-property:kong.router.service;get-property:kong.version",
        ),
    );
    let p = props(&emu);
    assert!(p.contains(&"property kong.router.service = <none>".to_string()));
    assert!(p.contains(&"property kong.version = <none>".to_string()));
}

#[test]
fn kong_service_target_changes_the_upstream() {
    let server = TestServer::start();
    let other = TestServer::start();
    let (mut emu, chain) = kong(&server);
    let cmd = format!(
        "set-property:kong.service.target=127.0.0.1:{}",
        other.port()
    );
    emu.send(chain, get("/a").header("x-probe-req-headers", &cmd));
    assert!(server.seen().is_empty());
    assert_eq!(other.seen().len(), 1);
    // A bad value makes the host trap.
    let resp = emu.send(
        chain,
        get("/a").header(
            "x-probe-req-headers",
            "set-property:kong.service.target=nope",
        ),
    );
    assert!(resp.trapped);
    assert!(has_line(
        &emu,
        "could not set \"kong.service.target\": unknown error"
    ));
}

#[test]
fn setting_unchangeable_ngx_variable_fails_and_sdk_traps() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        get("/a").header("x-probe-req-headers", "set-property:ngx.host=x"),
    );
    assert_eq!(resp.status, 500);
    assert!(resp.trapped, "the Rust SDK panics on InternalFailure");
    assert!(has_line(&emu, "variable \"host\" is not changeable"));
}

#[test]
fn scoped_properties_refused_outside_requests() {
    let server = TestServer::start();
    let (emu, _chain) = setup(HostOptions::default(), &server, "prop:kong.version");
    assert!(has_line(
        &emu,
        "cannot get scoped properties outside of a request"
    ));
    assert!(has_line(&emu, "property kong.version = <err 10>"));
    let (emu, _chain) = setup(HostOptions::default(), &server, "prop:plugin_name");
    assert!(has_line(&emu, "property plugin_name = probe"));
}

// ------------------------------------------------ configuration & roots

#[test]
fn configure_false_refuses_the_chain_with_its_logs() {
    let server = TestServer::start();
    let mut emu = emulator();
    let err = add_probes(&mut emu, "s", &server, &["ok", "fail"]).unwrap_err();
    assert_eq!(err.entry, 1);
    assert_eq!(err.reason, "on_configure returned false");
    assert!(err.logs.iter().any(|l| l.message.contains("config=fail")));
}

#[test]
fn chains_share_one_instance_and_each_entry_has_its_root() {
    let server = TestServer::start();
    let mut emu = emulator();
    let a = add_probes(&mut emu, "a", &server, &["one", "two"]).unwrap();
    let b = add_probes(&mut emu, "b", &server, &["three"]).unwrap();
    assert_eq!(
        lines_with(&emu, "vm_start").len(),
        3,
        "one per root context"
    );
    assert_eq!(lines_with(&emu, "configure").len(), 3);
    emu.send(a, get("/x"));
    emu.send(b, get("/x"));
    assert_eq!(emu.stats().instances_created, 1);
    // Both filters of chain a ran, in order.
    let req_steps = lines_with(&emu, "step req-headers id");
    assert_eq!(req_steps.len(), 3);
}

#[test]
fn filters_of_a_chain_run_in_order_and_a_local_response_stops_the_rest() {
    let server = TestServer::start();
    let mut emu = emulator();
    let chain = add_probes(&mut emu, "a", &server, &["one", "two"]).unwrap();
    let resp = emu.send(
        chain,
        get("/x").header("x-probe-req-headers", "local:403|no"),
    );
    assert_eq!(resp.status, 403);
    // Only the first filter got on_request_headers; both get the response steps.
    assert_eq!(lines_with(&emu, "step req-headers id").len(), 1);
    assert_eq!(lines_with(&emu, "step resp-headers id").len(), 2);
}

#[test]
fn ticks_run_on_the_root_context() {
    let server = TestServer::start();
    let (mut emu, _chain) = setup(HostOptions::default(), &server, "tick:30");
    emu.run_until_idle(Duration::from_millis(120));
    assert!(lines_with(&emu, "tick root=").len() >= 2);
}

// ------------------------------------------- host functions & loading

#[test]
fn nyi_host_functions_trap() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(chain, get("/a").header("x-probe-req-headers", "raw:done"));
    assert_eq!(resp.status, 500);
    assert!(has_line(
        &emu,
        "host trap (function not yet implemented): proxy_done"
    ));
    let resp = emu.send(chain, get("/a").header("x-probe-req-headers", "raw:reset"));
    assert!(resp.trapped);
    assert!(has_line(&emu, "proxy_close_stream"));
}

#[test]
fn shared_data_needs_shm_kv() {
    let (server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        get("/a").header("x-probe-req-headers", "raw:shared-set"),
    );
    assert!(resp.trapped);
    assert!(has_line(&emu, "could not resolve namespace"));
    let opts = HostOptions {
        shm_kv: true,
        ..HostOptions::default()
    };
    let (mut emu, chain) = setup(opts, &server, "");
    emu.send(
        chain,
        get("/a").header("x-probe-req-headers", "raw:shared-set;raw:shared-get"),
    );
    assert!(has_line(&emu, "raw shared-get Ok((Some(1), Some(1)))"));
}

#[test]
fn metrics_and_time_host_functions() {
    let (_server, mut emu, chain) = kong_env();
    emu.send(
        chain,
        get("/a").header("x-probe-req-headers", "raw:metric;raw:time"),
    );
    assert!(has_line(&emu, "raw metric inc Ok(())"));
    assert!(has_line(&emu, "raw metric get Ok(1)"));
    assert!(has_line(&emu, "raw time ok=true"));
    let stats = emu.stats();
    assert!(stats.hostcalls.get("proxy_log").copied().unwrap_or(0) > 0);
    assert!(stats.memory_bytes > 0);
    assert!(stats.wasm_time > Duration::ZERO);
    let resp = emu.send(
        chain,
        get("/a").header("x-probe-req-headers", "raw:foreign"),
    );
    assert!(resp.trapped);
    assert!(has_line(&emu, "unknown foreign function"));
}

#[test]
fn stats_separate_guest_time_from_dispatch_io_start() {
    let (server, mut emu, chain) = kong_env();
    emu.send(chain, get("/a"));
    let plain = emu.stats();
    assert_eq!(
        plain.io_start_time,
        Duration::ZERO,
        "no dispatch, no I/O start"
    );
    assert_eq!(plain.guest_time(), plain.wasm_time);

    let cmd = format!("dispatch:{}|/x|1000;pause", server.target());
    let resp = emu.send(chain, get("/a").header("x-probe-req-headers", &cmd));
    assert_eq!(resp.status, 200);
    let stats = emu.stats();
    assert_eq!(stats.dispatches, 1);
    // Starting the dispatch's I/O thread happens inside the guest call ...
    assert!(stats.io_start_time > Duration::ZERO);
    assert!(stats.io_start_time < stats.wasm_time);
    // ... and is left out of the guest's own time.
    assert_eq!(stats.guest_time(), stats.wasm_time - stats.io_start_time);
    assert!(stats.guest_time() > plain.guest_time());

    emu.reset_stats();
    assert_eq!(emu.stats().io_start_time, Duration::ZERO);
    assert_eq!(emu.stats().guest_time(), Duration::ZERO);
}

#[test]
fn stats_time_host_functions_apart_from_the_module_code() {
    let (server, mut emu, chain) = kong_env();
    // A dispatch: its host function starts the emulator's I/O thread, the
    // longest host function there is, so host time is clearly non-zero.
    let cmd = format!("dispatch:{}|/x|1000;pause", server.target());
    let resp = emu.send(chain, get("/a").header("x-probe-req-headers", &cmd));
    assert_eq!(resp.status, 200);
    let stats = emu.stats();
    assert!(stats.host_fn_time > Duration::ZERO, "host functions timed");
    // The I/O thread start is inside `proxy_http_call`, a host function.
    assert!(stats.host_fn_time >= stats.io_start_time);
    assert!(stats.host_fn_time < stats.wasm_time);
    assert_eq!(stats.code_time(), stats.wasm_time - stats.host_fn_time);
    assert!(stats.code_time() > Duration::ZERO);
    emu.reset_stats();
    assert_eq!(emu.stats().host_fn_time, Duration::ZERO);
}

/// A minimal module: the exports Kong requires plus one import.
fn module_importing(import_module: &str, import_name: &str, params: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let b = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(b);
                break;
            }
            out.push(b | 0x80);
        }
    }
    fn name(s: &str, out: &mut Vec<u8>) {
        leb(s.len(), out);
        out.extend_from_slice(s.as_bytes());
    }
    fn section(id: u8, body: Vec<u8>, out: &mut Vec<u8>) {
        out.push(id);
        leb(body.len(), out);
        out.extend(body);
    }
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // types: 0 = import type, 1 = () -> (), 2 = (i32,i32) -> (), 3 = (i32,i32) -> i32, 4 = (i32)->i32
    let mut types = vec![5];
    types.extend([0x60]);
    leb(params.len(), &mut types);
    types.extend_from_slice(params);
    types.extend([1, 0x7f]);
    types.extend([0x60, 0, 0]);
    types.extend([0x60, 2, 0x7f, 0x7f, 0]);
    types.extend([0x60, 2, 0x7f, 0x7f, 1, 0x7f]);
    types.extend([0x60, 1, 0x7f, 1, 0x7f]);
    section(1, types, &mut m);
    let mut imports = vec![1];
    name(import_module, &mut imports);
    name(import_name, &mut imports);
    imports.extend([0, 0]);
    section(2, imports, &mut m);
    // functions: abi marker, context_create, vm_start, configure, malloc
    section(3, vec![5, 1, 2, 3, 3, 4], &mut m);
    section(5, vec![1, 0, 1], &mut m);
    let mut exports = vec![6];
    for (n, idx) in [
        ("proxy_abi_version_0_2_1", 1u8),
        ("proxy_on_context_create", 2),
        ("proxy_on_vm_start", 3),
        ("proxy_on_configure", 4),
        ("malloc", 5),
    ] {
        name(n, &mut exports);
        exports.extend([0, idx]);
    }
    name("memory", &mut exports);
    exports.extend([2, 0]);
    section(7, exports, &mut m);
    let bodies: Vec<Vec<u8>> = vec![
        vec![0, 0x0b],
        vec![0, 0x0b],
        vec![0, 0x41, 1, 0x0b],
        vec![0, 0x41, 1, 0x0b],
        vec![0, 0x41, 16, 0x0b],
    ];
    let mut code = vec![5];
    for b in bodies {
        leb(b.len(), &mut code);
        code.extend(b);
    }
    section(10, code, &mut m);
    m
}

#[test]
fn modules_importing_unknown_functions_fail_to_load() {
    let dir = std::env::temp_dir().join(format!("emu-imports-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = dir.join("ok.wasm");
    std::fs::write(
        &ok,
        module_importing("wasi_snapshot_preview1", "random_get", &[0x7f, 0x7f]),
    )
    .unwrap();
    assert!(Emulator::new(&ok, HostOptions::default()).is_ok());

    let poll = dir.join("poll.wasm");
    std::fs::write(
        &poll,
        module_importing("wasi_snapshot_preview1", "poll_oneoff", &[0x7f; 4]),
    )
    .unwrap();
    let err = Emulator::new(&poll, HostOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("poll_oneoff"), "{err}");

    // The SDK declares proxy_get_log_level(i32); Kong defines it with two.
    let level = dir.join("level.wasm");
    std::fs::write(
        &level,
        module_importing("env", "proxy_get_log_level", &[0x7f]),
    )
    .unwrap();
    let err = format!(
        "{:#}",
        Emulator::new(&level, HostOptions::default()).err().unwrap()
    );
    assert!(err.contains("proxy_get_log_level"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ------------------------------------------- traps in dispatch callbacks

#[test]
fn trap_in_call_response_of_bodyless_request_lets_it_through() {
    // Read from ngx_wasm_module's source (not observed): the pausing filter
    // already completed its request-headers step, so after the callback
    // traps the request resumes and is proxied; only the response steps
    // notice the failed filter.
    let (server, mut emu, chain) = kong_env();
    let cmd = format!("dispatch:{}|/x|1000;pause", server.target());
    let resp = emu.send(chain, get_with_call_response(&cmd, "trap"));
    assert!(resp.trapped);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.text(), "ok");
    assert_eq!(resp.upstream_requests, 1);
    assert!(has_line(
        &emu,
        "filter chain failed resuming: previous error"
    ));

    // With a body, the body step finds the failed filter: 500.
    let resp = emu.send(
        chain,
        ClientRequest::post("/a", b"x")
            .header("x-probe-req-headers", &cmd)
            .header("x-probe-call-response", "trap"),
    );
    assert_eq!(resp.status, 500);
}

#[test]
fn in_flight_dispatch_of_a_request_survives_another_requests_trap() {
    let (server, mut emu, chain) = kong_env();
    let slow = format!("dispatch:{}|/slow/100|2000;pause", server.target());
    let a = emu.start(chain, get_with_call_response(&slow, "log:never"));
    let b = emu.send(chain, get("/b").header("x-probe-req-headers", "trap"));
    assert_eq!(b.status, 500);
    let ra = emu.finish(a);
    // The response arrives in a new instance that does not know the token:
    // the SDK panics there, the request of a body-less call goes on.
    assert!(has_line(&emu, "failed resuming after dispatch"));
    assert!(!has_line(&emu, "never"));
    assert_eq!(ra.status, 200);
}

// -------------------------------------------------------------- TLS & h2

/// A TLS server on 127.0.0.1 answering every request with 200 `secure`,
/// with a certificate for `pdp.example` signed by a test CA.
struct TlsServer {
    addr: SocketAddr,
    ca_pem: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TlsServer {
    fn start(dir: &std::path::Path) -> Self {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "emulator test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["pdp.example".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let ca_pem = dir.join("ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca.der().clone()];
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(mut tcp) = conn else { continue };
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
                    let Ok(mut tls) = rustls::ServerConnection::new(config.clone()) else {
                        continue;
                    };
                    let mut stream = rustls::Stream::new(&mut tls, &mut tcp);
                    let mut buf = [0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecure",
                    );
                    let _ = stream.flush();
                    tls.send_close_notify();
                    let _ = tls.complete_io(&mut tcp);
                }
            })
        };
        Self {
            addr,
            ca_pem,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn tls_dispatch_verification_follows_the_global_settings() {
    let dir = std::env::temp_dir().join(format!("emu-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tls = TlsServer::start(&dir);
    let upstream = TestServer::start();
    let target = format!("127.0.0.1:{}", tls.addr.port());
    let call = |opts: HostOptions, authority: &str| -> String {
        let (mut emu, chain) = setup(opts, &upstream, "");
        let cmd = format!("dispatch:{target}|/x|2000|https|{authority};pause");
        emu.send(chain, get("/a").header("x-probe-req-headers", &cmd));
        lines_with(&emu, "step call-response")
            .first()
            .cloned()
            .unwrap_or_default()
    };
    let trusted = HostOptions {
        tls_trusted_certificate: Some(tls.ca_pem.clone()),
        ..HostOptions::default()
    };
    assert!(call(trusted.clone(), "pdp.example").contains("status=Some(\"200\")"));
    // Wrong name, no CA, verification off, name check off.
    assert!(call(trusted.clone(), "other.example").contains("tls handshake failure"));
    assert!(call(HostOptions::default(), "pdp.example").contains("tls handshake failure"));
    let off = HostOptions {
        tls_verify_cert: false,
        tls_verify_host: false,
        ..HostOptions::default()
    };
    assert!(call(off, "other.example").contains("status=Some(\"200\")"));
    let no_host = HostOptions {
        tls_verify_host: false,
        ..trusted
    };
    assert!(call(no_host, "other.example").contains("status=Some(\"200\")"));
    drop(tls);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn http2_and_http10_clients() {
    let (server, mut emu, chain) = kong_env();
    let mut req = ClientRequest::post("/a", b"h2 body")
        .header("X-Upper", "v")
        .header(
            "x-probe-req-headers",
            "get-property:request.protocol;dump-req-headers",
        );
    req.version = HttpVersion::Http2;
    req.body_mode = BodyMode::NoLength;
    let resp = emu.send(chain, req);
    assert_eq!(resp.status, 200);
    assert!(has_line(&emu, "property request.protocol = HTTP/2.0"));
    assert!(
        has_line(&emu, "x-upper: v"),
        "names are lower case on HTTP/2"
    );
    assert!(lines_with(&emu, "step req-body")[0].contains("size=7 eof=true"));
    assert!(resp.header("connection").is_none());
    assert_eq!(server.seen()[0].body, b"h2 body");

    emu.take_logs();
    let mut req = get("/a").header("x-probe-req-headers", "get-property:request.protocol");
    req.version = HttpVersion::Http10;
    let resp = emu.send(chain, req);
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    assert!(has_line(&emu, "property request.protocol = HTTP/1.0"));
}

// ------------------------------------------------------------ host faults

/// A request on client connection `id` (successive requests with the same
/// id are keep-alive requests on one connection).
fn on(mut req: ClientRequest, id: u64) -> ClientRequest {
    req.connection = Some(id);
    req
}

/// A local reply whose body `set_http_response_body(0, ...)` replaces: the
/// host's buffer is emptied (Content-Length removed so the new length is
/// framed).
fn replaced_local_reply() -> ClientRequest {
    local_reply("local:200|hello", "remove-resp-header:content-length")
        .header("x-probe-resp-body", "set-resp-body:0|3|bye")
}

fn dispatching(server: &TestServer) -> ClientRequest {
    let cmd = format!("dispatch:{}|/second|1000;pause", server.target());
    get("/b").header("x-probe-req-headers", &cmd)
}

fn crit_lines(emu: &Emulator) -> Vec<String> {
    emu.logs()
        .iter()
        .filter(|l| l.level == LogLevel::Critical)
        .map(|l| l.message.clone())
        .collect()
}

/// Asserts that a request completed normally (no host fault).
fn assert_answered(resp: &ClientResponse, status: u16) {
    assert_eq!(resp.host_fault, None, "the worker crashed");
    assert_eq!(resp.status, status, "{resp:?}");
}

#[test]
fn emptying_the_local_reply_buffer_crashes_the_worker_at_the_next_dispatch_of_the_connection() {
    let (server, mut emu, chain) = kong_env();
    let first = emu.send(chain, on(replaced_local_reply(), 1));
    assert_answered(&first, 200);
    assert_eq!(first.text(), "bye");
    assert_eq!(emu.stats().host_faults, 0, "nothing happens yet");

    // A request of another client, in flight when the worker dies.
    let slow = format!("dispatch:{}|/slow/300|2000;pause", server.target());
    let other = emu.start(chain, on(get("/c").header("x-probe-req-headers", &slow), 2));
    let instances = emu.stats().instances_created;

    let second = emu.send(chain, on(dispatching(&server), 1));
    assert_eq!(second.status, 0);
    let fault = second.host_fault.clone().expect("a host fault");
    assert!(fault.contains("exited on signal 11"), "{fault}");
    assert!(fault.contains("dispatch_http_call"), "{fault}");
    assert!(
        fault.contains("set_http_response_body emptying the local response's body buffer"),
        "{fault}"
    );
    assert_eq!(crit_lines(&emu), vec![fault.clone()]);
    assert_eq!(emu.stats().host_faults, 1);
    assert!(
        !server.seen().iter().any(|s| s.line.contains("/second")),
        "the crashing dispatch never went out"
    );

    // Every request of the worker is lost.
    let lost = emu.finish(other);
    assert_eq!(lost.status, 0);
    assert_eq!(lost.host_fault.as_deref(), Some(fault.as_str()));
    assert!(!has_line(&emu, "step call-response"));

    // A new worker: a fresh instance, configured again; the connection is
    // a new one.
    let after = emu.send(chain, on(dispatching(&server), 1));
    assert_answered(&after, 200);
    assert_eq!(emu.stats().instances_created, instances + 1);
    assert_eq!(lines_with(&emu, "configure root=").len(), 2);
    assert_eq!(emu.stats().host_faults, 1);
}

#[test]
fn trimming_only_the_appended_byte_leaves_the_connection_safe() {
    let (server, mut emu, chain) = kong_env();
    // "hello" + the host's "\n": cut from offset 5, inside the one buffer.
    let first = emu.send(
        chain,
        on(
            local_reply("local:200|hello", "remove-resp-header:content-length")
                .header("x-probe-resp-body", "set-resp-body:5|1|"),
            1,
        ),
    );
    assert_answered(&first, 200);
    assert_eq!(first.text(), "hello");
    let second = emu.send(chain, on(dispatching(&server), 1));
    assert_answered(&second, 200);
    assert_eq!(emu.stats().host_faults, 0);
    assert!(crit_lines(&emu).is_empty());
}

#[test]
fn emptying_a_host_buffer_is_harmless_when_the_connection_closes() {
    let (server, mut emu, chain) = kong_env();
    // The client closes the connection after the response.
    let first = emu.send(
        chain,
        on(replaced_local_reply().header("Connection", "close"), 1),
    );
    assert_answered(&first, 200);
    assert_eq!(first.header("connection").as_deref(), Some("close"));
    assert_answered(&emu.send(chain, on(dispatching(&server), 1)), 200);

    // The filter closes it (r->keepalive = 0).
    let first = emu.send(
        chain,
        on(
            local_reply(
                "local:200|hello",
                "remove-resp-header:content-length;set-resp-header:Connection=close",
            )
            .header("x-probe-resp-body", "set-resp-body:0|3|bye"),
            2,
        ),
    );
    assert_eq!(first.header("connection").as_deref(), Some("close"));
    assert_answered(&emu.send(chain, on(dispatching(&server), 2)), 200);

    // HTTP/1.0 without keep-alive.
    let mut old = replaced_local_reply();
    old.version = HttpVersion::Http10;
    assert_answered(&emu.send(chain, on(old, 3)), 200);
    assert_answered(&emu.send(chain, on(dispatching(&server), 3)), 200);
    assert_eq!(emu.stats().host_faults, 0);
}

#[test]
fn emptying_a_host_buffer_is_harmless_without_a_shared_connection() {
    let (server, mut emu, chain) = kong_env();
    assert_answered(&emu.send(chain, replaced_local_reply()), 200);
    assert_answered(&emu.send(chain, dispatching(&server)), 200);
    // Another connection is not affected either.
    assert_answered(&emu.send(chain, on(replaced_local_reply(), 1)), 200);
    assert_answered(&emu.send(chain, on(dispatching(&server), 2)), 200);
    assert_eq!(emu.stats().host_faults, 0);
}

#[test]
fn emptying_a_proxied_body_buffer_crashes_at_the_next_body_replacement_of_the_connection() {
    let (_server, mut emu, chain) = kong_env();
    // The upstream's buffer emptied from offset 0.
    let first = emu.send(
        chain,
        on(
            get("/a")
                .header("x-probe-resp-headers", "remove-resp-header:content-length")
                .header("x-probe-resp-body-1", "set-resp-body:0|2|no"),
            1,
        ),
    );
    assert_answered(&first, 200);
    assert_eq!(first.text(), "no");
    // A body replacement takes a chain link from the connection pool too,
    // even a harmless trim.
    let second = emu.send(
        chain,
        on(
            local_reply("local:200|hello", "remove-resp-header:content-length")
                .header("x-probe-resp-body", "set-resp-body:5|1|"),
            1,
        ),
    );
    assert_eq!(second.status, 0);
    let fault = second.host_fault.expect("a host fault");
    assert!(
        fault.contains("set_http_response_body reused a chain link"),
        "{fault}"
    );
    assert!(fault.contains("an upstream response buffer"), "{fault}");
}

#[test]
fn http2_streams_share_the_connection_pool() {
    let (server, mut emu, chain) = kong_env();
    let mut first = replaced_local_reply();
    first.version = HttpVersion::Http2;
    first
        .headers
        .retain(|(n, _)| !n.eq_ignore_ascii_case("host"));
    assert_answered(&emu.send(chain, on(first, 7)), 200);
    let mut second = dispatching(&server);
    second.version = HttpVersion::Http2;
    let second = emu.send(chain, on(second, 7));
    assert!(second.host_fault.is_some(), "{second:?}");
}

#[test]
fn removing_connection_or_a_pseudo_header_crashes_the_worker() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        get("/a").header("x-probe-resp-headers", "remove-resp-header:Connection"),
    );
    assert_eq!(resp.status, 0);
    let fault = resp.host_fault.expect("a host fault");
    assert!(
        fault.contains("ngx_http_wasm_set_connection_header_handler"),
        "{fault}"
    );
    assert!(!has_line(&emu, "resp-header remove Connection"));
    assert_eq!(emu.stats().host_faults, 1);
    assert_eq!(emu.stats().traps, 0, "not a trap of the filter");
    assert_answered(&emu.send(chain, get("/a")), 200);

    // The setters of :path, :method and :status read the NULL value too.
    for (step, cmd) in [
        ("x-probe-req-headers", "remove-req-header::path"),
        ("x-probe-req-headers", "remove-req-header::method"),
        ("x-probe-resp-headers", "remove-resp-header::status"),
    ] {
        let resp = emu.send(chain, get("/a").header(step, cmd));
        let fault = resp.host_fault.expect(cmd);
        assert!(fault.contains("pseudo-header"), "{fault}");
    }
    assert_eq!(emu.stats().host_faults, 4);
}

// ----------------------------------------------------- scripted network

/// Answers every dispatch with `answer` and every upstream request with 201,
/// recording the request lines it was asked.
struct Scripted {
    answer: CallAnswer,
    asked: Mutex<Vec<String>>,
}

impl Network for Scripted {
    fn call(&self, request: &Outgoing<'_>) -> CallAnswer {
        self.asked
            .lock()
            .unwrap()
            .push(format!("call {} {}", request.target, request.path()));
        self.answer.clone()
    }
    fn upstream(&self, request: &Outgoing<'_>) -> UpstreamAnswer {
        self.asked
            .lock()
            .unwrap()
            .push(format!("upstream {} {}", request.target, request.path()));
        UpstreamAnswer::Reply {
            status: 201,
            headers: vec![(b"X-Scripted".to_vec(), b"1".to_vec())],
            body: b"scripted".to_vec(),
        }
    }
}

#[test]
fn a_scripted_network_answers_dispatches_and_the_upstream_without_sockets() {
    // Nothing listens on the service's port: every answer is the script's.
    let (mut emu, chain) = setup(HostOptions::default(), &TestServer::start(), "");
    let script = Arc::new(Scripted {
        answer: CallAnswer::Reply {
            status: 200,
            headers: vec![(b"X-Multi".to_vec(), b"a".to_vec())],
            body: b"{\"allow\":true}".to_vec(),
        },
        asked: Default::default(),
    });
    emu.set_network(Some(script.clone()));
    let cmd = "dispatch:pdp.invalid:9|/json|1000;pause";
    let resp = emu.send(chain, get_with_call_response(cmd, "dump-call"));
    assert_eq!((resp.status, resp.body.as_slice()), (201, &b"scripted"[..]));
    let dump = lines_with(&emu, "call-headers ")[0].clone();
    assert!(
        dump.starts_with("call-headers :status: 200 | :dispatch_status: ok"),
        "{dump}"
    );
    let asked = script.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[0], "call pdp.invalid:9 /json");
    assert!(asked[1].starts_with("upstream 127.0.0.1:") && asked[1].ends_with(" /a"));

    // A failure the network cannot easily produce: a head, then a timeout in the body.
    let script = Arc::new(Scripted {
        answer: CallAnswer::TimedOutInBody {
            status: 200,
            headers: vec![],
            received: 7,
        },
        asked: Default::default(),
    });
    emu.set_network(Some(script));
    let resp = emu.send(chain, get_with_call_response(cmd, "dump-call"));
    assert_eq!(resp.status, 201);
    let call = lines_with(&emu, "step call-response")
        .last()
        .unwrap()
        .clone();
    assert!(
        call.contains("dispatch_status=Some(\"timeout\")") && call.contains("body=7"),
        "{call}"
    );
}

// ---------------------------------------------------------------- metrics

/// A Kong host whose one chain entry is the probe filter named `filter`.
fn metrics_env(opts: HostOptions, filter: &str) -> (TestServer, Emulator, ChainId) {
    let server = TestServer::start();
    let mut emu = Emulator::new(&probe(), opts).expect("loading the probe filter");
    let chain = emu
        .add_chain(
            Service::new("svc", "http", "127.0.0.1", server.port()),
            Route::new("rt", &["/"]),
            vec![FilterEntry::new(filter, "")],
        )
        .expect("configuring");
    (server, emu, chain)
}

fn metric_cmds(cmds: &str) -> ClientRequest {
    get("/a").header("x-probe-req-headers", cmds)
}

#[test]
fn metric_ids_are_the_crc32_of_the_prefixed_name_and_a_second_definition_keeps_the_first() {
    let (_server, mut emu, chain) = kong_env();
    let resp = emu.send(
        chain,
        metric_cmds("metric-define:counter|hits;metric-inc:hits|4;metric-define:gauge|hits"),
    );
    assert_eq!(resp.status, 200);
    // crc32("pw:probe:hits"), not a sequence number.
    assert!(
        has_line(&emu, "metric define hits -> 0 id=2584366348"),
        "{:?}",
        filter_lines(&emu)
    );
    assert_eq!(
        lines_with(&emu, "metric define hits -> 0 id=2584366348").len(),
        2
    );
    let m = emu.metric("pw:probe:hits").expect("stored with its prefix");
    assert_eq!(m.id, 2_584_366_348);
    assert_eq!(
        m.value,
        MetricValue::Counter(4),
        "the kind and value of the first definition stay"
    );
    assert_eq!(emu.metrics().len(), 1);
}

#[test]
fn only_counters_increment_and_a_negative_offset_wraps_around() {
    let (_server, mut emu, chain) = kong_env();
    emu.send(
        chain,
        metric_cmds("metric-define:counter|c;metric-inc:c|5,-7;metric-get:c"),
    );
    assert!(
        has_line(&emu, "metric get c -> 0 value=18446744073709551614"),
        "{:?}",
        filter_lines(&emu)
    );
    assert_eq!(
        emu.metric("pw:probe:c").unwrap().value,
        MetricValue::Counter(u64::MAX - 1)
    );

    let resp = emu.send(chain, metric_cmds("metric-define:gauge|g;metric-inc:g|1"));
    assert!(resp.trapped);
    assert_eq!(resp.status, 500);
    let id = emu.metric("pw:probe:g").unwrap().id;
    assert!(has_line(
        &emu,
        &format!("host trap (internal error): could not increment metric id \"{id}\": metric not a counter")
    ));
    let resp = emu.send(chain, metric_cmds("metric-inc:#12345|1"));
    assert!(resp.trapped);
    assert!(has_line(
        &emu,
        "host trap (internal error): could not increment metric id \"12345\": metric not found"
    ));
}

#[test]
fn gauges_take_the_recorded_value_counters_refuse_it_and_histograms_cannot_be_read() {
    let (_server, mut emu, chain) = kong_env();
    emu.send(
        chain,
        metric_cmds("metric-define:gauge|g;metric-record:g|-1;metric-get:g;metric-record:g|7"),
    );
    assert!(has_line(
        &emu,
        "metric get g -> 0 value=18446744073709551615"
    ));
    assert_eq!(
        emu.metric("pw:probe:g").unwrap().value,
        MetricValue::Gauge(7)
    );

    let resp = emu.send(
        chain,
        metric_cmds("metric-define:counter|c;metric-record:c|3"),
    );
    assert!(resp.trapped);
    let id = emu.metric("pw:probe:c").unwrap().id;
    assert!(has_line(
        &emu,
        &format!("host trap (internal error): could not record value in metric id \"{id}\": metric is a counter")
    ));

    let resp = emu.send(chain, metric_cmds("metric-define:histogram|h;metric-get:h"));
    assert!(resp.trapped);
    let id = emu.metric("pw:probe:h").unwrap().id;
    assert!(has_line(
        &emu,
        &format!("host trap (internal error): could not retrieve metric id \"{id}\": metric is a histogram")
    ));
    let resp = emu.send(chain, metric_cmds("metric-get:#7"));
    assert!(resp.trapped);
    assert!(has_line(
        &emu,
        "host trap (internal error): could not retrieve metric id \"7\": metric not found"
    ));
    let resp = emu.send(chain, metric_cmds("metric-define:3|x"));
    assert!(resp.trapped);
    assert!(has_line(
        &emu,
        "host trap (internal error): could not define metric \"x\": unknown type \"3\""
    ));
}

#[test]
fn histograms_use_log2_bins_and_stop_at_18() {
    let (_server, mut emu, chain) = kong_env();
    let values: Vec<String> = (0..18).map(|k| (1u64 << k).to_string()).collect();
    let cmds = format!(
        "metric-define:histogram|h;metric-record:h|{}",
        values.join(",")
    );
    for _ in 0..2 {
        let resp = emu.send(chain, metric_cmds(&cmds));
        assert_eq!(resp.status, 200);
    }
    // 1, 2, 4 .. 65536 and +Inf: 18 bins; 131072 finds no room and is
    // counted in the next closest bin, +Inf.
    let mut expected: Vec<(u32, u32)> = (0..17).map(|k| (1u32 << k, 2)).collect();
    expected.push((u32::MAX, 2));
    assert_eq!(
        emu.metric("pw:probe:h").unwrap().value,
        MetricValue::Histogram {
            bins: expected,
            sum: 2 * ((1 << 18) - 1)
        }
    );
    assert_eq!(
        lines_with_level(
            &emu,
            LogLevel::Info,
            "cannot add a new histogram bin for value \"131072\", returning next closest bin"
        ),
        2
    );

    // A bin smaller than the first one goes after it, not before.
    emu.send(
        chain,
        metric_cmds("metric-define:histogram|q;metric-record:q|10,1,3,0,40"),
    );
    assert_eq!(
        emu.metric("pw:probe:q").unwrap().value,
        MetricValue::Histogram {
            bins: vec![(16, 1), (1, 2), (4, 1), (64, 1), (u32::MAX, 0)],
            sum: 54
        }
    );
    // Negative values are huge unsigned ones: +Inf; so is anything over 2^31 - 1
    // once read (a worker's 2^31 bin is merged into +Inf).
    emu.send(
        chain,
        metric_cmds("metric-define:histogram|n;metric-record:n|-1,2000000000"),
    );
    assert_eq!(
        emu.metric("pw:probe:n").unwrap().value,
        MetricValue::Histogram {
            bins: vec![(u32::MAX, 2)],
            sum: 2_000_000_000 - 1
        }
    );
}

fn lines_with_level(emu: &Emulator, level: LogLevel, needle: &str) -> usize {
    emu.logs()
        .iter()
        .filter(|l| l.level == level && !l.from_filter && l.message.contains(needle))
        .count()
}

#[test]
fn a_full_metrics_zone_makes_definitions_trap() {
    // The smallest zone: 3 pages give the slab 2; the key-value store's
    // header takes one, 256-byte nodes fill the other with 16 counters.
    let opts = HostOptions {
        metrics_slab_size: 3 * 4096,
        ..HostOptions::default()
    };
    let (_server, mut emu, chain) = metrics_env(opts, "probe");
    let defines: Vec<String> = (10..27)
        .map(|i| format!("metric-define:counter|m{i}"))
        .collect();
    let resp = emu.send(
        chain,
        metric_cmds(&format!("{};metric-inc:m10|3", defines.join(";"))),
    );
    assert!(resp.trapped);
    assert_eq!(resp.status, 500);
    assert_eq!(emu.metrics().len(), 16);
    assert!(emu.metric("pw:probe:m26").is_none());
    assert_eq!(
        lines_with_level(
            &emu,
            LogLevel::Critical,
            "\"metrics\" shm store: no memory; cannot allocate pair with key size 12 and value size 24"
        ),
        1
    );
    assert!(has_line(
        &emu,
        "host trap (internal error): could not define metric \"m26\": no memory (increase \"slab_size\" directive)"
    ));
    // What was defined stays, and works from the next instance on.
    let resp = emu.send(
        chain,
        metric_cmds("metric-define:counter|m10;metric-inc:m10|3;metric-get:m10"),
    );
    assert_eq!(resp.status, 200);
    assert!(has_line(&emu, "metric get m10 -> 0 value=3"));

    // A histogram needs one 64-byte chunk per worker before its node.
    let opts = HostOptions {
        metrics_slab_size: 3 * 4096,
        worker_processes: 4,
        ..HostOptions::default()
    };
    let (_server, mut emu, chain) = metrics_env(opts, "probe");
    let resp = emu.send(chain, metric_cmds("metric-define:histogram|h"));
    assert!(resp.trapped);
    assert!(has_line(&emu, "could not define metric \"h\": no memory"));

    // Zones the directive refuses.
    for size in [2 * 4096, 5 * 4096 + 1] {
        let opts = HostOptions {
            metrics_slab_size: size,
            ..HostOptions::default()
        };
        assert!(Emulator::new(&probe(), opts).is_err(), "slab_size {size}");
    }
}

#[test]
fn metrics_outlive_traps_and_prefixed_names_are_limited() {
    let (_server, mut emu, chain) = kong_env();
    emu.send(
        chain,
        metric_cmds("metric-define:counter|kept;metric-inc:kept|3"),
    );
    let resp = emu.send(chain, metric_cmds("trap"));
    assert!(resp.trapped);
    emu.send(
        chain,
        metric_cmds("metric-define:counter|kept;metric-get:kept"),
    );
    assert!(has_line(&emu, "metric get kept -> 0 value=3"));

    // `pw:probe:` + name may be 256 bytes long.
    let fits = "x".repeat(256 - "pw:probe:".len());
    let resp = emu.send(chain, metric_cmds(&format!("metric-define:gauge|{fits}")));
    assert_eq!(resp.status, 200);
    let long = "y".repeat(256 - "pw:probe:".len() + 1);
    let resp = emu.send(chain, metric_cmds(&format!("metric-define:gauge|{long}")));
    assert!(resp.trapped);
    assert!(has_line(
        &emu,
        &format!("host trap (internal error): could not define metric: name \"{long}\" too long")
    ));
}

#[test]
fn prometheus_export_follows_kongs_wasmx_lua() {
    let (_server, mut emu, chain) = metrics_env(HostOptions::default(), "tests");
    let mut cmds = vec![
        "metric-define:counter|a_counter".to_string(),
        "metric-inc:a_counter|2".to_string(),
        "metric-define:gauge|a_gauge".to_string(),
        "metric-record:a_gauge|1".to_string(),
        "metric-define:histogram|a_histogram".to_string(),
        "metric-record:a_histogram|1,3,1000".to_string(),
    ];
    for svc in ["mock", "mock2"] {
        let c = format!("a_labeled_counter_s_id={svc}_r_id={svc}-route");
        cmds.push(format!("metric-define:counter|{c}"));
        cmds.push(format!("metric-inc:{c}|1"));
        let h = format!("a_labeled_histogram_s_id={svc}_r_id={svc}-route");
        cmds.push(format!("metric-define:histogram|{h}"));
        cmds.push(format!("metric-record:{h}|2"));
    }
    let resp = emu.send(chain, metric_cmds(&cmds.join(";")));
    assert_eq!(resp.status, 200);

    let meta = r#"{"config_schema": {"type": "object"}, "metrics": {"label_patterns": [
        {"label": "service", "pattern": "(_s_id=([0-9a-z%-]+))"},
        {"label": "route", "pattern": "(_r_id=([0-9a-z%-]+))"}]}}"#;
    let patterns = LabelPattern::from_meta_json(meta).unwrap();
    assert_eq!(patterns.len(), 2);
    let mut by_filter = std::collections::BTreeMap::new();
    by_filter.insert("tests".to_string(), patterns);
    let text = emu.prometheus_metrics(&by_filter).unwrap();

    // Series of a family come in the zone's key order.
    let order: Vec<String> = emu.metrics().into_iter().map(|m| m.name).collect();
    let pos = |svc: &str, what: &str| {
        order
            .iter()
            .position(|n| *n == format!("pw:tests:a_labeled_{what}_s_id={svc}_r_id={svc}-route"))
            .unwrap()
    };
    let labels = |svc: &str| format!("service=\"{svc}\",route=\"{svc}-route\"");
    let ordered = |what: &str| {
        let mut svcs = ["mock", "mock2"];
        svcs.sort_by_key(|s| pos(s, what));
        svcs
    };
    let mut expected = String::new();
    expected.push_str(
        "# HELP pw_tests_a_counter\n# TYPE pw_tests_a_counter counter\npw_tests_a_counter 2\n",
    );
    expected
        .push_str("# HELP pw_tests_a_gauge\n# TYPE pw_tests_a_gauge gauge\npw_tests_a_gauge 1\n");
    expected.push_str(
        "# HELP pw_tests_a_histogram\n# TYPE pw_tests_a_histogram histogram\n\
         pw_tests_a_histogram{le=\"1\"} 1\npw_tests_a_histogram{le=\"4\"} 2\n\
         pw_tests_a_histogram{le=\"1024\"} 3\npw_tests_a_histogram{le=\"+Inf\"} 3\n\
         pw_tests_a_histogram_sum 1004\npw_tests_a_histogram_count 3\n",
    );
    expected
        .push_str("# HELP pw_tests_a_labeled_counter\n# TYPE pw_tests_a_labeled_counter counter\n");
    for svc in ordered("counter") {
        expected.push_str(&format!(
            "pw_tests_a_labeled_counter{{{}}} 1\n",
            labels(svc)
        ));
    }
    expected.push_str(
        "# HELP pw_tests_a_labeled_histogram\n# TYPE pw_tests_a_labeled_histogram histogram\n",
    );
    let hs = ordered("histogram");
    for svc in hs {
        let l = labels(svc);
        expected.push_str(&format!(
            "pw_tests_a_labeled_histogram{{{l},le=\"2\"}} 1\npw_tests_a_labeled_histogram{{{l},le=\"+Inf\"}} 1\n"
        ));
    }
    for svc in hs {
        expected.push_str(&format!(
            "pw_tests_a_labeled_histogram_sum{{{}}} 2\n",
            labels(svc)
        ));
    }
    for svc in hs {
        expected.push_str(&format!(
            "pw_tests_a_labeled_histogram_count{{{}}} 1\n",
            labels(svc)
        ));
    }
    expected.push('\n');
    assert_eq!(text, expected);

    // Without label patterns every name is its own family.
    let plain = emu.prometheus_metrics(&Default::default()).unwrap();
    assert!(plain.contains(
        "# TYPE pw_tests_a_labeled_counter_s_id=mock_r_id=mock-route counter\n\
         pw_tests_a_labeled_counter_s_id=mock_r_id=mock-route 1\n"
    ));
}
