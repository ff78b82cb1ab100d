//! A minimal loopback HTTP/1.1 server for the benchmark's policy server and
//! upstream.
//!
//! Kong's Wasm host opens a new connection for every dispatch, so the server
//! sees one request per connection. It blocks in `accept` (the harness's
//! [`crate::http::Server`] polls its listener every 5 ms, which would add up
//! to 5 ms of idle waiting to every call and make a 10,000-request run take
//! minutes) and serves each connection on the accepting thread: the emulator
//! runs one request at a time. Every answer carries `Connection: close`.

use crate::http::{self, Request, Response};
use std::io::{self, BufReader};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Answers one request.
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// How long a connection may stay silent before the server drops it.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A server on `127.0.0.1:<ephemeral>`; stopped by [`LoopbackServer::stop`]
/// or on drop.
pub struct LoopbackServer {
    addr: SocketAddr,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl LoopbackServer {
    pub fn start(name: &str, handler: Handler) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stopping);
        let thread = std::thread::Builder::new()
            .name(format!("bench-{name}"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(conn) = conn {
                        serve(conn, &handler);
                    }
                }
            })?;
        Ok(Self {
            addr,
            stopping,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops accepting (waking the blocked `accept` with a connection of its
    /// own) and joins the thread. Idempotent.
    pub fn stop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
            let _ = thread.join();
        }
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(conn: TcpStream, handler: &Handler) {
    let Ok(peer) = conn.peer_addr() else {
        return;
    };
    let _ = conn.set_nodelay(true);
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    if let Ok(Some(request)) = http::read_request(&mut reader, peer, false) {
        let response = handler(&request);
        let mut writer = &conn;
        let _ = http::write_response(&mut writer, &response, request.method == "HEAD", true);
    }
    let _ = conn.shutdown(Shutdown::Both);
}
