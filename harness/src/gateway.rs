//! The emulator behind a real listening socket: one nginx worker serving
//! many client connections at once.
//!
//! Clients connect over HTTP/1.1 ([`http::Server`], one thread per
//! connection, keep-alive). Each request is handed over a channel to one
//! worker thread that owns the [`Emulator`] (one worker, one Wasm instance),
//! which interleaves every in-flight request as nginx's event loop does.
//! Requests on one TCP connection carry one [`ClientRequest::connection`] id,
//! so per-connection host state (and host faults) follow the connection.
//!
//! Used by `kong-emu` (the demo), the load tests and `make bench`.

use crate::emulator::{
    BodyMode, ChainId, ClientRequest, ClientResponse, Emulator, HttpVersion, LogRecord, StreamId,
};
use crate::http;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Receives the emulator's log lines as the worker produces them. Without
/// one, the lines stay in the emulator (read them after [`Gateway::stop`]).
pub type LogSink = Box<dyn FnMut(Vec<LogRecord>) + Send>;

/// How long a client connection waits for the worker before a 504.
const WORKER_ANSWER_LIMIT: Duration = Duration::from_secs(600);

enum Msg {
    Request(ClientRequest, Sender<ClientResponse>),
    Stop,
}

/// A running emulated gateway. Stop it with [`Gateway::stop`] (dropping it
/// stops it too, discarding the emulator).
pub struct Gateway {
    server: Option<http::Server>,
    tx: Mutex<Sender<Msg>>,
    worker: Option<JoinHandle<Emulator>>,
}

impl Gateway {
    /// Serves `chain` of `emu` on `listen` (e.g. `127.0.0.1:0`). `server_port`
    /// is the Kong listener port the requests are said to arrive on.
    pub fn start(
        emu: Emulator,
        chain: ChainId,
        listen: &str,
        server_port: u16,
        logs: Option<LogSink>,
    ) -> std::io::Result<Gateway> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let worker = std::thread::Builder::new()
            .name("gateway-worker".into())
            .spawn(move || run_worker(emu, chain, rx, logs))?;
        let handler_tx = Mutex::new(tx.clone());
        let handler: http::Handler = Arc::new(move |req: http::Request| {
            let (reply_tx, reply_rx) = mpsc::channel();
            let sent = handler_tx
                .lock()
                .map(|tx| {
                    tx.send(Msg::Request(to_client_request(req, server_port), reply_tx))
                        .is_ok()
                })
                .unwrap_or(false);
            if !sent {
                return http::Response::text(503, "gateway: worker stopped\n");
            }
            match reply_rx.recv_timeout(WORKER_ANSWER_LIMIT) {
                Ok(resp) => to_http_response(resp),
                Err(_) => http::Response::text(504, "gateway: no answer from the worker\n"),
            }
        });
        let server = http::Server::start(listen, None, handler)?;
        Ok(Gateway {
            server: Some(server),
            tx: Mutex::new(tx),
            worker: Some(worker),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)), |s| s.addr())
    }

    /// Closes the listener and every client connection, lets the worker
    /// finish what is in flight, and hands the emulator back (its logs and
    /// stats tell what happened).
    pub fn stop(mut self) -> Option<Emulator> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Option<Emulator> {
        if let Some(mut server) = self.server.take() {
            server.stop();
        }
        if let Ok(tx) = self.tx.lock() {
            let _ = tx.send(Msg::Stop);
        }
        self.worker.take().and_then(|w| w.join().ok())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The worker: owns the emulator, starts requests, delivers I/O, replies.
fn run_worker(
    mut emu: Emulator,
    chain: ChainId,
    rx: Receiver<Msg>,
    mut logs: Option<LogSink>,
) -> Emulator {
    let mut pending: Vec<(StreamId, Sender<ClientResponse>)> = Vec::new();
    let mut stopping = false;
    loop {
        // Wait for work when idle, otherwise poll.
        if pending.is_empty() {
            if stopping {
                return emu;
            }
            match rx.recv() {
                Ok(Msg::Request(req, reply)) => pending.push((emu.start(chain, req), reply)),
                Ok(Msg::Stop) | Err(_) => return emu,
            }
        }
        for msg in rx.try_iter() {
            match msg {
                Msg::Request(req, reply) => pending.push((emu.start(chain, req), reply)),
                Msg::Stop => stopping = true,
            }
        }
        if pending.iter().any(|(id, _)| !emu.is_complete(*id)) {
            let _ = emu.deliver_next(Duration::from_millis(5));
        }
        let mut still = Vec::new();
        for (id, reply) in pending.drain(..) {
            if emu.is_complete(id) {
                let _ = reply.send(emu.finish(id));
            } else {
                still.push((id, reply));
            }
        }
        pending = still;
        if let Some(sink) = logs.as_mut() {
            sink(emu.take_logs());
        }
    }
}

/// One id per client TCP connection (its peer address, unique while open).
pub fn connection_id(peer: &SocketAddr) -> u64 {
    let mut h = DefaultHasher::new();
    peer.hash(&mut h);
    h.finish()
}

fn to_client_request(req: http::Request, server_port: u16) -> ClientRequest {
    let version = match req.version.as_str() {
        "HTTP/1.0" => HttpVersion::Http10,
        _ => HttpVersion::Http11,
    };
    let chunked = req
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"));
    ClientRequest {
        method: req.method,
        target: req.target,
        version,
        headers: req.headers,
        body: req.body,
        body_mode: if chunked {
            BodyMode::Chunked
        } else {
            BodyMode::ContentLength
        },
        client_addr: req.peer,
        tls: req.tls,
        server_port,
        client_cert_pem: None,
        connection: Some(connection_id(&req.peer)),
    }
}

/// The emulator's response as the client gets it. What a real client would
/// see as broken (a stall, bad framing, a lost request) becomes a 5xx with a
/// `gateway:` body, so a test cannot mistake it for a reply.
fn to_http_response(resp: ClientResponse) -> http::Response {
    if let Some(fault) = &resp.host_fault {
        return http::Response::text(599, format!("gateway: request lost: {fault}\n"))
            .with_header("connection", "close");
    }
    if resp.stalled {
        return http::Response::text(
            504,
            "gateway: the request stalled (Kong would leave it hanging until the client times out)\n",
        );
    }
    if let Some(error) = &resp.framing_error {
        return http::Response::text(598, format!("gateway: framing error: {error}\n"));
    }
    let mut out = http::Response::new(resp.status);
    for (name, value) in resp.headers {
        let lower = name.to_ascii_lowercase();
        if lower == "connection" {
            // The host closes the connection after this response.
            if String::from_utf8_lossy(&value)
                .to_ascii_lowercase()
                .contains("close")
            {
                out = out.with_header("Connection", "close");
            }
            continue;
        }
        if matches!(
            lower.as_str(),
            "transfer-encoding" | "content-length" | "keep-alive"
        ) {
            continue;
        }
        out = out.with_header(name, value);
    }
    out.with_body(resp.body)
}
