//! The data the host keeps: per worker ([`HostCtx`], stored in the Wasmtime
//! store so host functions can reach it), per root context ([`RootCtx`]), per
//! request ([`Stream`]) and per filter of a request ([`Exec`]).
//!
//! Names follow ngx_wasm_module where it helps to compare: a [`Stream`] is the
//! request context (`rctx`) plus the filter-chain context (`pwctx`); an
//! [`Exec`] is one filter's HTTP context (`pwexec`).
//!
//! The buffers of body chains ([`Buf`]) and the worker's fault state
//! ([`Faults`]) are kept here too; what the host does with them is in
//! `faults.rs`.

use super::api::{
    ClientResponse, HostOptions, HostStats, HttpVersion, LogLevel, LogRecord, Route, Service,
};
use super::headers::HeaderList;
use super::metrics::MetricsStore;
use super::net::{self, CallResult, Completion};
use super::script::Network;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};
use wasmtime::{Func, Memory};

/// Proxy-wasm steps, in the host's order (comparisons rely on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Step {
    None,
    ReqHeaders,
    ReqBody,
    RespHeaders,
    RespBody,
    Log,
    Done,
    Tick,
    DispatchResponse,
}

impl Step {
    /// The host's name for the step, as used in its log lines.
    pub fn host_name(self) -> &'static str {
        match self {
            Step::None => "none",
            Step::ReqHeaders => "RequestHeaders",
            Step::ReqBody => "RequestBody",
            Step::RespHeaders => "ResponseHeaders",
            Step::RespBody => "ResponseBody",
            Step::Log => "Log",
            Step::Done => "Done",
            Step::Tick => "Tick",
            Step::DispatchResponse => "DispatchResponse",
        }
    }
}

/// The chain's next action (`pwctx->action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    Continue,
    Pause,
    /// Set by `send_http_response` from a request step.
    Done,
    /// Any other value a filter returned.
    Other(i32),
}

impl Action {
    pub fn from_guest(value: i32) -> Self {
        match value {
            0 => Action::Continue,
            1 => Action::Pause,
            other => Action::Other(other),
        }
    }
}

/// The nginx phase the chain is resumed in (`pwctx->phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Access,
    Content,
    HeaderFilter,
    BodyFilter,
    Log,
    Done,
    /// Dispatch responses and ticks.
    Background,
}

/// Why a filter of a chain failed (`pwexec->ecode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ecode {
    StartFailed,
    InstanceTrapped,
    ReturnAction,
    Unknown,
}

/// What resuming a chain returned (nginx return codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rc {
    Ok,
    /// Yield: waiting for something.
    Again,
    /// A local response was produced.
    Done,
    Error,
    /// A failed filter: the host answers 500.
    Status500,
}

/// `rctx->env.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EnvState {
    Continue,
    Yield,
    Error,
}

/// One chain entry's filter: its configuration and root context.
pub(crate) struct RootCtx {
    pub name: String,
    pub config: Vec<u8>,
    /// The root context id (`filter->id`).
    pub id: u32,
    /// Chain this entry belongs to.
    pub chain: usize,
    /// Index of the entry in its chain.
    pub index: usize,
    /// Generation of the instance where this root context was started.
    pub started_gen: Option<u64>,
    /// `proxy_set_tick_period_milliseconds`.
    pub tick_period: u32,
    pub next_tick: Option<Instant>,
    /// Step being run on the root context (`Tick` or `None`).
    pub step: Step,
    /// Dispatches from `on_tick` still in flight.
    pub dispatch_ops: Vec<u32>,
    /// The dispatch whose response is being delivered.
    pub dispatch_call: Option<u32>,
}

/// One filter's HTTP context within a request (`pwexec`).
pub(crate) struct Exec {
    /// Index into [`HostCtx::roots`].
    pub root: usize,
    pub id: u32,
    pub ecode: Option<Ecode>,
    pub ecode_logged: bool,
    /// Generation of the instance where `on_context_create` ran.
    pub started_gen: Option<u64>,
    /// Dispatch tokens still in flight, newest first.
    pub dispatch_ops: Vec<u32>,
    /// The dispatch whose response is being delivered.
    pub dispatch_call: Option<u32>,
}

/// The filter-chain context of a request (`pwctx`).
pub(crate) struct Chain {
    pub execs: Vec<Exec>,
    pub exec_index: usize,
    pub action: Action,
    pub step: Step,
    pub last_completed: Step,
    pub phase: Phase,
    pub req_body_len: usize,
}

/// A local response stashed by `send_http_response`.
pub(crate) struct LocalResponse {
    pub status: u16,
    pub reason: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Body with the host's trailing `\n`; `None` when empty.
    pub body: Option<Vec<u8>>,
}

/// Who made a buffer of a body chain (nginx's buffer tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BufTag {
    /// ngx_wasm_module's own buffer (`rctx->env.buf_tag`): recycled when
    /// emptied.
    Module,
    /// A buffer made elsewhere, whose chain link lives in the request pool;
    /// the text names it.
    Host(&'static str),
}

/// One buffer of a body chain (only its size and tag matter here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Buf {
    pub len: usize,
    pub tag: BufTag,
}

/// A response body chunk being passed through the body filter.
#[derive(Clone, Debug, Default)]
pub(crate) struct Chunk {
    pub data: Vec<u8>,
    /// `last_buf`: this is the end of the body.
    pub last: bool,
    /// The chain's buffers, in order (their sizes add up to `data.len()`).
    pub bufs: Vec<Buf>,
}

impl Chunk {
    /// One buffer made outside the module (see `faults.rs`).
    pub fn host(data: Vec<u8>, last: bool, what: &'static str) -> Self {
        let bufs = vec![Buf {
            len: data.len(),
            tag: BufTag::Host(what),
        }];
        Self { data, last, bufs }
    }

    /// One buffer of the module's own.
    pub fn module(data: Vec<u8>, last: bool) -> Self {
        let bufs = vec![Buf {
            len: data.len(),
            tag: BufTag::Module,
        }];
        Self { data, last, bufs }
    }
}

/// The request as nginx sees it.
pub(crate) struct Request {
    /// `r->method_name` (settable through `:method`).
    pub method: Vec<u8>,
    /// `$uri`: decoded, normalised path (settable through `:path`).
    pub uri: Vec<u8>,
    /// `$args` (settable through `:path` and `ngx.args`).
    pub args: Vec<u8>,
    /// `$request_uri`: the raw request-target.
    pub request_uri: Vec<u8>,
    /// `:path` or `ngx.args` changed the URI.
    pub uri_changed: bool,
    pub version: HttpVersion,
    pub headers: HeaderList,
    /// The whole body as received (de-chunked).
    pub body: Vec<u8>,
    /// Whether the client sent a body at all (even an empty chunked one).
    pub has_body_framing: bool,
    /// The body was larger than `client_body_buffer_size`.
    pub spooled: bool,
    /// A filter replaced the body (`set_http_request_body`).
    pub body_replaced: bool,
    /// The body's chain (`r->request_body->bufs`), once nginx read it or a
    /// filter replaced it.
    pub body_bufs: Vec<Buf>,
    /// The client asked to keep the connection (`r->keepalive` at the start).
    pub keepalive: bool,
    pub client_addr: SocketAddr,
    pub tls: bool,
    pub server_port: u16,
    pub client_cert_pem: Option<String>,
    pub start: SystemTime,
    pub started_at: Instant,
    /// Variables set by `set` in the nginx configuration (Kong's
    /// `upstream_*` variables); `None` is an unset variable.
    pub set_vars: HashMap<String, Option<Vec<u8>>>,
    /// Values stored under the host property namespace.
    pub host_props: HashMap<String, Vec<u8>>,
    /// `$request_id`.
    pub request_id: String,
    /// Bytes of the request line and headers (for `$request_length`).
    pub header_bytes: usize,
}

/// The response as nginx builds it (`r->headers_out`).
#[derive(Default)]
pub(crate) struct Response {
    pub status: u16,
    pub reason: Option<Vec<u8>>,
    pub headers: HeaderList,
    /// `headers_out.content_type` (not part of the list).
    pub content_type: Option<Vec<u8>>,
    /// `headers_out.content_length_n` (-1: unknown).
    pub content_length_n: i64,
    /// Keep-alive with the client.
    pub keepalive: bool,
    /// Status and headers were sent to the client.
    pub header_sent: bool,
    /// The response has no body (HEAD, 204, 304).
    pub header_only: bool,
    /// Body bytes sent to the client.
    pub body_sent: Vec<u8>,
    /// Status of the upstream response, when proxied.
    pub upstream_status: Option<u16>,
    /// Upstream response headers, as received (for `$upstream_http_*`).
    pub upstream_headers: HeaderList,
    /// `host:port` of the upstream peer.
    pub upstream_addr: Option<String>,
}

/// Where a request stands in the emulated nginx phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Paused in a request step (waiting for dispatches).
    Waiting,
    /// Waiting for the upstream response.
    Upstream,
    /// Response sent, log and done steps run.
    Complete,
    /// Left paused with nothing pending.
    Stalled,
}

/// One request (`rctx` + `pwctx`).
pub(crate) struct Stream {
    pub id: u64,
    pub chain: usize,
    pub req: Request,
    pub resp: Response,
    pub pw: Chain,
    pub state: EnvState,
    pub stage: Stage,
    pub entered_content_phase: bool,
    pub entered_header_filter: bool,
    pub entered_body_filter: bool,
    pub entered_log_phase: bool,
    pub resp_content_chosen: bool,
    pub req_body_received: bool,
    pub local: Option<LocalResponse>,
    pub local_flushed: bool,
    /// The response sent is a local response (`send_http_response`).
    pub local_sent: bool,
    /// The body chunk in the body filter (`rctx->resp_chunk`).
    pub resp_chunk: Option<Chunk>,
    pub resp_chunk_eof: bool,
    /// `headers_out.content_length_n` when `on_http_response_headers` ran.
    pub resp_content_length_n: i64,
    pub resp_buffering: bool,
    /// Buffered body (`rctx->resp_bufs`), once buffering started.
    pub resp_bufs: Option<Vec<u8>>,
    /// Set by `send_http_response` from `on_http_response_headers`.
    pub resp_chunk_override: bool,
    pub upstream_requests: usize,
    pub trapped: bool,
    /// Kong: the upstream target set through `kong.service.target`.
    pub kong_target: Option<(String, u16)>,
    /// Kong: the upstream scheme set through `kong.service.request.scheme`.
    pub kong_scheme: Option<String>,
    /// Kong: `kong.ctx.shared`.
    pub kong_shared: HashMap<String, Vec<u8>>,
    /// Kong's request id (`$kong_request_id`).
    pub kong_request_id: String,
    /// Kong: the matched route prefix.
    pub kong_prefix: Option<String>,
    /// Cancels the proxied request in flight.
    pub upstream_cancel: Option<Arc<AtomicBool>>,
    /// Number of the latest proxied request (older completions are stale).
    pub upstream_job: u64,
    /// Status line and headers as sent to the client.
    pub client_headers: Vec<(String, Vec<u8>)>,
    /// The final response, once complete.
    pub outcome: Option<ClientResponse>,
    /// The client connection (`ClientRequest::connection`).
    pub connection: Option<u64>,
    /// A body replacement put a chain link of this request's pool on the
    /// connection pool's free list (what it emptied).
    pub freed_host_link: Option<String>,
}

impl Stream {
    /// nginx's header filter keeps the connection after this response
    /// (HTTP/1.x): keep-alive requested and still on, and, for HTTP/1.0,
    /// a known length (no chunked encoding to end the body).
    pub fn response_keepalive(&self) -> bool {
        let resp = &self.resp;
        resp.keepalive
            && (self.req.version == HttpVersion::Http11
                || resp.headers.contains(b"Content-Length")
                || resp.content_length_n >= 0)
    }
}

/// A route + service and the root contexts of its filter chain.
pub(crate) struct ChainDef {
    pub service: Service,
    pub route: Route,
    /// Indexes into [`HostCtx::roots`], in chain order.
    pub roots: Vec<usize>,
    /// `on_configure` failed when the chain was added: Kong refused it.
    pub refused: bool,
}

/// Who made a dispatch call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallOwner {
    Http { stream: u64, exec: usize },
    Root { root: usize },
}

/// A dispatch call in flight or being delivered.
pub(crate) struct Call {
    pub owner: CallOwner,
    pub cancel: Arc<AtomicBool>,
    /// Set when the response (or failure) arrived.
    pub result: Option<CallResult>,
    /// Its request finished while it was still pending (the filter returned
    /// `Continue` after dispatching): the host keeps reading it into the
    /// freed request (see `faults::orphaned_call_read`).
    pub orphaned: bool,
}

/// Which context the guest is running for (host functions use it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cur {
    None,
    Root { root: usize },
    Http { stream: u64, exec: usize },
}

/// Values kept in `proxy_set_shared_data`'s store.
pub(crate) struct SharedValue {
    pub data: Vec<u8>,
    pub cas: u32,
}

/// The worker crashed during the current operation.
pub(crate) struct Crash {
    pub message: String,
    /// Requests in flight when it crashed.
    pub lost: Vec<u64>,
}

/// The worker's fault state (see `faults.rs`).
#[derive(Default)]
pub(crate) struct Faults {
    /// Client connections whose pool's free list holds a chain link of an
    /// earlier request's (freed) pool, with what left it there.
    pub dangling: HashMap<u64, String>,
    pub crash: Option<Crash>,
    /// The emulated worker's pid (a new worker after a crash).
    pub worker_pid: u32,
}

impl Faults {
    /// The worker is dead (between a fault and `faults::reap`).
    pub fn crashed(&self) -> bool {
        self.crash.is_some()
    }
}

/// Log lines kept before the oldest half is dropped.
pub(crate) const MAX_LOG_RECORDS: usize = 200_000;

/// Everything the host functions can reach (the Wasmtime store's data).
pub(crate) struct HostCtx {
    pub opts: Arc<HostOptions>,
    pub logs: Vec<LogRecord>,
    pub echo_logs: bool,
    pub stats: HostStats,
    /// Generation of the current instance.
    pub gen: u64,
    /// The current instance trapped (or none exists).
    pub trapped: bool,
    /// Trap message recorded by a host function before it returned an error.
    pub trap_msg: Option<String>,
    pub cur: Cur,
    pub roots: Vec<RootCtx>,
    pub streams: BTreeMap<u64, Stream>,
    pub calls: HashMap<u32, Call>,
    /// Next HTTP context id (the host's `next_id`).
    pub next_ctx_id: u32,
    /// Next dispatch token (the host's `callout_ids`, starting at 0).
    pub next_token: u32,
    pub tx: Sender<Completion>,
    pub threads: Vec<JoinHandle<()>>,
    pub shared: HashMap<Vec<u8>, SharedValue>,
    /// The metrics shared memory zone (see `metrics.rs`).
    pub metrics: MetricsStore,
    pub hostname: String,
    /// TLS settings for dispatches (built once).
    pub tls: Arc<net::TlsSettings>,
    pub chains: Vec<ChainDef>,
    /// When the worker started (monotonic clock origin).
    pub started: Instant,
    /// The current instance's memory and allocator.
    pub memory: Option<Memory>,
    pub malloc: Option<Func>,
    /// Host faults (crashes of the worker) and what leads to them.
    pub faults: Faults,
    /// Answers dispatches and upstream requests in process instead of sockets.
    pub network: Option<Arc<dyn Network>>,
    /// When the outermost running host function was entered, and how deep
    /// host functions are nested (a host function may call the guest's
    /// allocator, which is not a host function).
    pub host_entered: Option<Instant>,
    pub host_depth: u32,
}

impl HostCtx {
    /// A worker with no instance yet, no chains and no requests.
    pub fn new(
        opts: Arc<HostOptions>,
        tx: Sender<Completion>,
        tls: Arc<net::TlsSettings>,
        echo_logs: bool,
        hostname: String,
        started: Instant,
    ) -> HostCtx {
        let metrics = MetricsStore::new(&opts);
        HostCtx {
            opts,
            logs: Vec::new(),
            echo_logs,
            stats: HostStats::default(),
            gen: 0,
            trapped: true,
            trap_msg: None,
            cur: Cur::None,
            roots: Vec::new(),
            streams: BTreeMap::new(),
            calls: HashMap::new(),
            next_ctx_id: 0,
            next_token: 0,
            tx,
            threads: Vec::new(),
            shared: HashMap::new(),
            metrics,
            hostname,
            tls,
            chains: Vec::new(),
            started,
            memory: None,
            malloc: None,
            faults: Faults::default(),
            network: None,
            host_entered: None,
            host_depth: 0,
        }
    }

    /// An empty value used while the real one moves to a new store.
    pub fn placeholder(from: &HostCtx) -> HostCtx {
        HostCtx::new(
            from.opts.clone(),
            from.tx.clone(),
            from.tls.clone(),
            false,
            String::new(),
            from.started,
        )
    }

    /// Records a log line (and echoes it when `PING_AUTH_EMU_LOG=1`). The
    /// oldest lines are dropped past [`MAX_LOG_RECORDS`] (long benchmarks
    /// should call `take_logs`).
    /// Nothing is logged while the worker is dead (after a host fault).
    pub fn log(&mut self, level: LogLevel, context_id: u32, from_filter: bool, message: String) {
        if self.faults.crashed() {
            return;
        }
        if self.echo_logs {
            eprintln!("[{level}] [emu] #{context_id} {message}");
        }
        if self.logs.len() >= MAX_LOG_RECORDS {
            self.logs.drain(..MAX_LOG_RECORDS / 2);
        }
        self.logs.push(LogRecord {
            level,
            message,
            context_id,
            from_filter,
        });
    }

    /// Records a line written by the host itself.
    pub fn host_log(&mut self, level: LogLevel, message: impl Into<String>) {
        let id = self.cur_context_id();
        self.log(level, id, false, message.into());
    }

    /// The context id of the running guest call (0 outside of one).
    pub fn cur_context_id(&self) -> u32 {
        match self.cur {
            Cur::None => 0,
            Cur::Root { root } => self.roots.get(root).map_or(0, |r| r.id),
            Cur::Http { stream, exec } => self
                .streams
                .get(&stream)
                .and_then(|s| s.pw.execs.get(exec))
                .map_or(0, |e| e.id),
        }
    }

    /// The step the running guest call belongs to (`pwctx->step`).
    pub fn cur_step(&self) -> Step {
        match self.cur {
            Cur::None => Step::None,
            Cur::Root { root } => self.roots.get(root).map_or(Step::None, |r| r.step),
            Cur::Http { stream, .. } => self.streams.get(&stream).map_or(Step::None, |s| s.pw.step),
        }
    }

    /// The request of the running guest call.
    pub fn cur_stream(&self) -> Option<&Stream> {
        match self.cur {
            Cur::Http { stream, .. } => self.streams.get(&stream),
            _ => None,
        }
    }

    pub fn cur_stream_mut(&mut self) -> Option<&mut Stream> {
        match self.cur {
            Cur::Http { stream, .. } => self.streams.get_mut(&stream),
            _ => None,
        }
    }

    /// Wasmtime's call hook: times host functions ([`HostStats::host_fn_time`]).
    pub fn on_call_hook(&mut self, hook: wasmtime::CallHook) {
        match hook {
            wasmtime::CallHook::CallingHost => {
                if self.host_depth == 0 {
                    self.host_entered = Some(Instant::now());
                }
                self.host_depth += 1;
            }
            wasmtime::CallHook::ReturningFromHost => {
                self.host_depth = self.host_depth.saturating_sub(1);
                if self.host_depth == 0 {
                    if let Some(t) = self.host_entered.take() {
                        self.stats.host_fn_time += t.elapsed();
                    }
                }
            }
            _ => {}
        }
    }

    /// Counts a host call made by the filter ([`HostStats::hostcalls`]).
    pub fn count_hostcall(&mut self, name: &'static str) {
        let calls = &mut self.stats.hostcalls;
        match calls.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                calls.insert(name.to_string(), 1);
            }
        }
    }

    /// The result of the dispatch call whose response is being delivered to
    /// the running context (`on_http_call_response`).
    pub fn current_call(&self) -> Option<&CallResult> {
        let token = match self.cur {
            Cur::Http { stream, exec } => self
                .streams
                .get(&stream)
                .and_then(|s| s.pw.execs.get(exec))
                .and_then(|e| e.dispatch_call),
            Cur::Root { root } => self.roots.get(root).and_then(|r| r.dispatch_call),
            Cur::None => None,
        }?;
        self.calls.get(&token)?.result.as_ref()
    }

    /// Records a trap message for the running host function.
    pub fn set_trap(&mut self, message: impl Into<String>) {
        if self.trap_msg.is_none() {
            self.trap_msg = Some(message.into());
        }
    }
}
