//! The request state machine: how the host walks a request through nginx's
//! phases and the filter chain.
//!
//! The functions mirror ngx_wasm_module so that its quirks come out the
//! same: [`Host::pw_resume`] is `ngx_proxy_wasm_resume` (resume the chain for
//! a step from `exec_index`), [`Host::action2rc`] turns the chain's action into
//! an nginx return code, [`Host::run_step`] calls one filter's callback
//! (re-creating its context in a fresh instance after a trap),
//! [`Host::dispatch_done`] is the dispatch resume handler, and
//! [`Host::access`] / [`Host::content`] / [`Host::send_response`] /
//! [`Host::body_filter`] stand for nginx's phases and filters.
//!
//! [`Host`] is one `impl` spread over one file per phase; this file holds
//! the worker itself and the driver (starting a request, delivering
//! completions, running until idle or until a request completes):
//! - `root.rs`: chains and root contexts (`on_configure`, ticks);
//! - `request.rs`: a new request, Kong's access, the access and content
//!   phases, waiting and stalls;
//! - `steps.rs`: resuming the chain and running one filter's step;
//! - `dispatch.rs`: dispatch completions;
//! - `upstream.rs`: proxying to the service and its response;
//! - `response.rs`: the header and body filters, body buffering;
//! - `finish.rs`: local responses, error responses, the log and done steps.
//!
//! The phase files import nothing from one another but `finish.rs`'s
//! `client_headers`; they call each other's methods on [`Host`].

mod dispatch;
mod finish;
mod request;
mod response;
mod root;
mod steps;
mod upstream;

use crate::emulator::api::{
    ChainId, ClientRequest, ClientResponse, HostOptions, HostStats, LogLevel, LogRecord, StreamId,
};
use crate::emulator::faults;
use crate::emulator::net::{self, Completion};
use crate::emulator::script::Network;
use crate::emulator::state::{CallOwner, HostCtx, Stage, Stream};
use crate::emulator::vm::Vm;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The emulated worker.
pub(crate) struct Host {
    vm: Vm,
    rx: Receiver<Completion>,
    next_stream: u64,
}

fn guest_i32(v: usize) -> i32 {
    i32::from_ne_bytes(u32::try_from(v).unwrap_or(u32::MAX).to_ne_bytes())
}

fn id_i32(v: u32) -> i32 {
    i32::from_ne_bytes(v.to_ne_bytes())
}

fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_ascii_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Host {
    pub fn new(wasm: &Path, opts: HostOptions) -> anyhow::Result<Self> {
        crate::emulator::metrics::validate(&opts)?;
        let (tx, rx) = mpsc::channel();
        let tls = Arc::new(net::TlsSettings::new(
            opts.tls_verify_cert,
            opts.tls_verify_host,
            opts.tls_trusted_certificate.as_deref(),
        ));
        let echo_logs = std::env::var("PING_AUTH_EMU_LOG").is_ok_and(|v| v == "1");
        let ctx = HostCtx::new(
            Arc::new(opts),
            tx,
            tls,
            echo_logs,
            machine_hostname(),
            Instant::now(),
        );
        let vm = Vm::new(wasm, ctx)?;
        Ok(Self {
            vm,
            rx,
            next_stream: 1,
        })
    }

    fn ctx(&self) -> &HostCtx {
        self.vm.data()
    }

    fn ctx_mut(&mut self) -> &mut HostCtx {
        self.vm.data_mut()
    }

    fn log(&mut self, level: LogLevel, id: u32, msg: impl Into<String>) {
        self.ctx_mut().log(level, id, false, msg.into());
    }

    fn stream(&self, sid: u64) -> Option<&Stream> {
        self.ctx().streams.get(&sid)
    }

    fn stream_mut(&mut self, sid: u64) -> Option<&mut Stream> {
        self.ctx_mut().streams.get_mut(&sid)
    }

    pub fn start(&mut self, chain: ChainId, req: ClientRequest) -> StreamId {
        let sid = self.next_stream;
        self.next_stream += 1;
        let stream = self.new_stream(sid, chain.0, req);
        self.ctx_mut().streams.insert(sid, stream);
        self.begin(sid);
        faults::reap(self.ctx_mut());
        StreamId(sid)
    }

    /// Delivers one completion; a host fault it caused is reaped before
    /// returning.
    fn deliver(&mut self, completion: Completion) -> Option<u64> {
        let sid = self.deliver_one(completion);
        faults::reap(self.ctx_mut());
        sid
    }

    fn deliver_one(&mut self, completion: Completion) -> Option<u64> {
        match completion {
            Completion::Dispatch { token, result } => {
                let (owner, orphaned) = {
                    let call = self.ctx_mut().calls.get_mut(&token)?;
                    call.result = Some(result);
                    (call.owner, call.orphaned)
                };
                if orphaned {
                    faults::orphaned_call_read(self.ctx_mut(), token);
                    return None;
                }
                match owner {
                    CallOwner::Http { stream, exec } => {
                        self.dispatch_done(stream, exec, token);
                        Some(stream)
                    }
                    CallOwner::Root { root } => {
                        self.root_dispatch_done(root, token);
                        None
                    }
                }
            }
            Completion::Upstream {
                stream,
                job,
                result,
            } => {
                self.upstream_done(stream, job, result);
                Some(stream)
            }
        }
    }

    /// Something can still complete (I/O in flight).
    fn io_in_flight(&self) -> bool {
        self.ctx().calls.values().any(|c| c.result.is_none())
            || self
                .ctx()
                .streams
                .values()
                .any(|s| s.stage == Stage::Upstream)
    }

    fn recv(&mut self, timeout: Duration) -> Option<Completion> {
        let started = Instant::now();
        let r = self.rx.recv_timeout(timeout);
        self.ctx_mut().stats.io_wait_time += started.elapsed();
        match r {
            Ok(c) => Some(c),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    fn reap_threads(&mut self) {
        let threads = std::mem::take(&mut self.ctx_mut().threads);
        let (done, running): (Vec<_>, Vec<_>) = threads.into_iter().partition(|t| t.is_finished());
        for t in done {
            let _ = t.join();
        }
        self.ctx_mut().threads = running;
    }

    pub fn run_until_idle(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.run_ticks();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if !self.io_in_flight() {
                match self.next_tick_in() {
                    Some(t) if t < left => {
                        std::thread::sleep(t);
                        continue;
                    }
                    _ => break,
                }
            }
            let wait = self.next_tick_in().map_or(left, |t| t.min(left));
            if let Some(c) = self.recv(wait) {
                self.deliver(c);
            }
        }
        self.reap_threads();
    }

    pub fn deliver_next(&mut self, timeout: Duration) -> Option<StreamId> {
        let deadline = Instant::now() + timeout;
        loop {
            self.run_ticks();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let wait = self.next_tick_in().map_or(left, |t| t.min(left));
            if let Some(c) = self.recv(wait) {
                let sid = self.deliver(c);
                self.reap_threads();
                match sid {
                    Some(s) => return Some(StreamId(s)),
                    None => continue,
                }
            }
        }
    }

    pub fn is_complete(&self, id: StreamId) -> bool {
        self.stream(id.0).is_some_and(|s| s.outcome.is_some())
    }

    pub fn finish(&mut self, id: StreamId) -> ClientResponse {
        let limit = {
            let o = &self.ctx().opts;
            o.socket_timeout * 4 + Duration::from_secs(600)
        };
        let deadline = Instant::now() + limit;
        loop {
            let Some(s) = self.stream(id.0) else {
                return ClientResponse {
                    stalled: true,
                    ..ClientResponse::default()
                };
            };
            if s.outcome.is_some() {
                break;
            }
            let waiting_on_io = self.pending_calls(id.0) > 0 || s.stage == Stage::Upstream;
            if !waiting_on_io {
                self.check_stall(id.0);
                if self.stream(id.0).is_some_and(|s| s.outcome.is_none()) {
                    self.stall(id.0);
                }
                continue;
            }
            self.run_ticks();
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.log(
                    LogLevel::Error,
                    0,
                    "[emulator] request did not complete in time",
                );
                self.stall(id.0);
                continue;
            }
            let wait = self.next_tick_in().map_or(left, |t| t.min(left));
            if let Some(c) = self.recv(wait) {
                self.deliver(c);
            }
        }
        self.reap_threads();
        let out = self
            .ctx_mut()
            .streams
            .remove(&id.0)
            .and_then(|s| s.outcome)
            .unwrap_or_default();
        self.ctx_mut().stats.memory_bytes = self.vm.memory_bytes();
        out
    }

    pub fn logs(&self) -> &[LogRecord] {
        &self.ctx().logs
    }

    pub fn take_logs(&mut self) -> Vec<LogRecord> {
        std::mem::take(&mut self.ctx_mut().logs)
    }

    pub fn set_network(&mut self, network: Option<Arc<dyn Network>>) {
        self.ctx_mut().network = network;
    }

    pub fn metrics(&self) -> &crate::emulator::metrics::MetricsStore {
        &self.ctx().metrics
    }

    pub fn stats(&self) -> HostStats {
        let mut s = self.ctx().stats.clone();
        s.memory_bytes = self.vm.memory_bytes();
        s
    }

    pub fn reset_stats(&mut self) {
        self.ctx_mut().stats = HostStats::default();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let ctx = self.ctx_mut();
        for call in ctx.calls.values() {
            call.cancel.store(true, Ordering::SeqCst);
        }
        for s in ctx.streams.values_mut() {
            if let Some(c) = s.upstream_cancel.take() {
                c.store(true, Ordering::SeqCst);
            }
        }
        let threads = std::mem::take(&mut ctx.threads);
        for t in threads {
            let _ = t.join();
        }
    }
}
