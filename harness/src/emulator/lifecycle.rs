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

use super::builtins;
use super::faults::{self, Buf, BufTag};
use super::headers::HeaderList;
use super::kong;
use super::maps::{self, MapOp};
use super::net::{self, SockStatus, UpstreamRequest};
use super::properties;
use super::state::*;
use super::vm::{Export, Guest, Vm};
use super::{
    BodyMode, ChainId, ClientRequest, ClientResponse, ConfigureError, FilterEntry, HostOptions,
    HostStats, HttpVersion, LogLevel, LogRecord, Route, Service, StreamId,
};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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

/// CRC-32 (IEEE), used for root context ids as the host derives them.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc: u32 = 0xffff_ffff;
    for part in parts {
        for &b in *part {
            crc ^= u32::from(b);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0xedb8_8320 & mask);
            }
        }
    }
    !crc
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
        let (tx, rx) = mpsc::channel();
        let tls = Arc::new(net::TlsSettings::new(
            opts.tls_verify_cert,
            opts.tls_verify_host,
            opts.tls_trusted_certificate.as_deref(),
        ));
        let echo_logs = std::env::var("PING_AUTH_EMU_LOG").is_ok_and(|v| v == "1");
        let ctx = HostCtx {
            opts: Arc::new(opts),
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
            metrics: Vec::new(),
            hostname: machine_hostname(),
            tls,
            chains: Vec::new(),
            started: Instant::now(),
            memory: None,
            malloc: None,
            faults: faults::Faults::default(),
        };
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

    // ---------------------------------------------------------------- chains

    pub fn add_chain(
        &mut self,
        service: Service,
        route: Route,
        filters: Vec<FilterEntry>,
    ) -> Result<ChainId, ConfigureError> {
        let log_start = self.ctx().logs.len();
        let chain = self.ctx().chains.len();
        let mut roots = Vec::new();
        for (index, f) in filters.iter().enumerate() {
            let salt = format!("{chain}:{index}");
            let id = crc32(&[f.name.as_bytes(), &f.config, salt.as_bytes()]);
            let ctx = self.ctx_mut();
            ctx.roots.push(RootCtx {
                name: f.name.clone(),
                config: f.config.clone(),
                id,
                chain,
                index,
                started_gen: None,
                tick_period: 0,
                next_tick: None,
                step: Step::None,
                dispatch_ops: Vec::new(),
                dispatch_call: None,
            });
            roots.push(ctx.roots.len() - 1);
        }
        self.ctx_mut().chains.push(ChainDef {
            service,
            route,
            roots: roots.clone(),
            refused: false,
        });
        // The host starts filters in the order of their ids.
        let mut order = roots.clone();
        order.sort_by_key(|&r| self.ctx().roots.get(r).map_or(0, |x| x.id));
        for r in order {
            if let Err(reason) = self.start_root(r, true) {
                let (name, index) = self
                    .ctx()
                    .roots
                    .get(r)
                    .map(|x| (x.name.clone(), x.index))
                    .unwrap_or_default();
                self.log(
                    LogLevel::Critical,
                    0,
                    format!("failed initializing \"{name}\" filter ({reason})"),
                );
                if let Some(c) = self.ctx_mut().chains.get_mut(chain) {
                    c.refused = true;
                }
                let logs = self
                    .ctx()
                    .logs
                    .get(log_start..)
                    .unwrap_or_default()
                    .to_vec();
                return Err(ConfigureError {
                    entry: index,
                    filter: name,
                    reason,
                    logs,
                });
            }
        }
        Ok(ChainId(chain))
    }

    /// Starts a root context in the current instance (`on_context_create`,
    /// `on_vm_start` when the filter is first started, `on_configure`).
    fn start_root(&mut self, root: usize, vm_start: bool) -> Result<(), String> {
        self.vm.ensure_instance()?;
        let gen = self.ctx().gen;
        let Some(r) = self.ctx().roots.get(root) else {
            return Err("unknown filter".to_string());
        };
        if r.started_gen == Some(gen) {
            return Ok(());
        }
        let (id, config_len) = (r.id, r.config.len());
        if let Some(r) = self.ctx_mut().roots.get_mut(root) {
            // A new root context: no tick period yet.
            r.tick_period = 0;
            r.next_tick = None;
        }
        let cur = Cur::Root { root };
        if let Guest::Trap(msg) = self.vm.call(cur, Export::OnContextCreate, &[id_i32(id), 0]) {
            return Err(format!("trap in on_context_create: {msg}"));
        }
        if vm_start {
            match self.vm.call(cur, Export::OnVmStart, &[id_i32(id), 0]) {
                Guest::Trap(msg) => return Err(format!("trap in on_vm_start: {msg}")),
                Guest::Ok(Some(0)) => return Err("on_vm_start returned false".to_string()),
                _ => {}
            }
        }
        match self.vm.call(
            cur,
            Export::OnConfigure,
            &[id_i32(id), guest_i32(config_len)],
        ) {
            Guest::Trap(msg) => return Err(format!("trap in on_configure: {msg}")),
            Guest::Ok(Some(0)) => return Err("on_configure returned false".to_string()),
            _ => {}
        }
        if let Some(r) = self.ctx_mut().roots.get_mut(root) {
            r.started_gen = Some(gen);
        }
        Ok(())
    }

    // -------------------------------------------------------------- requests

    pub fn start(&mut self, chain: ChainId, req: ClientRequest) -> StreamId {
        let sid = self.next_stream;
        self.next_stream += 1;
        let stream = self.new_stream(sid, chain.0, req);
        self.ctx_mut().streams.insert(sid, stream);
        self.begin(sid);
        faults::reap(self.ctx_mut());
        StreamId(sid)
    }

    fn new_stream(&mut self, sid: u64, chain: usize, req: ClientRequest) -> Stream {
        let mut headers = HeaderList::new();
        for (name, value) in &req.headers {
            let name = if req.version == HttpVersion::Http2 {
                name.to_ascii_lowercase()
            } else {
                name.clone()
            };
            headers.push_raw(name.as_bytes(), value);
        }
        let has_cl = headers.contains(b"content-length");
        let has_te = headers.contains(b"transfer-encoding");
        match req.body_mode {
            BodyMode::ContentLength if !req.body.is_empty() && !has_cl => {
                headers.push_raw(b"Content-Length", req.body.len().to_string().as_bytes());
            }
            BodyMode::Chunked if !has_te => {
                headers.push_raw(b"Transfer-Encoding", b"chunked");
            }
            _ => {}
        }
        builtins::slot_client_request_headers(&mut headers);
        let has_body_framing = headers.contains(b"content-length")
            || headers.contains(b"transfer-encoding")
            || (req.version == HttpVersion::Http2 && !req.body.is_empty());
        let (raw_path, args) = match req.target.split_once('?') {
            Some((p, a)) => (p.to_string(), a.as_bytes().to_vec()),
            None => (req.target.clone(), Vec::new()),
        };
        let uri = normalize_uri(&raw_path).unwrap_or_else(|| raw_path.clone().into_bytes());
        let keepalive = match req.version {
            HttpVersion::Http11 => !headers.get(b"connection").is_some_and(|v| {
                String::from_utf8_lossy(v)
                    .to_ascii_lowercase()
                    .contains("close")
            }),
            HttpVersion::Http10 => headers.get(b"connection").is_some_and(|v| {
                String::from_utf8_lossy(v)
                    .to_ascii_lowercase()
                    .contains("keep-alive")
            }),
            HttpVersion::Http2 => false,
        };
        let header_bytes = req.method.len()
            + req.target.len()
            + 12
            + req
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>();
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ sid.wrapping_mul(0x9e37_79b9);
        let spooled = req.body.len() > self.ctx().opts.client_body_buffer_size;
        let connection = req.connection;
        Stream {
            id: sid,
            chain,
            req: Request {
                method: req.method.into_bytes(),
                uri,
                args,
                request_uri: req.target.into_bytes(),
                uri_changed: false,
                version: req.version,
                headers,
                body: req.body,
                has_body_framing,
                spooled,
                body_replaced: false,
                body_bufs: Vec::new(),
                keepalive,
                client_addr: req.client_addr,
                tls: req.tls,
                server_port: req.server_port,
                client_cert_pem: req.client_cert_pem,
                start: SystemTime::now(),
                started_at: Instant::now(),
                set_vars: HashMap::new(),
                host_props: HashMap::new(),
                request_id: kong::random_id(seed ^ 0x55),
                header_bytes,
            },
            resp: Response {
                content_length_n: -1,
                keepalive,
                ..Response::default()
            },
            pw: Chain {
                execs: Vec::new(),
                exec_index: 0,
                action: Action::Continue,
                step: Step::None,
                last_completed: Step::None,
                phase: Phase::Access,
                req_body_len: 0,
            },
            state: EnvState::Continue,
            stage: Stage::Waiting,
            entered_content_phase: false,
            entered_header_filter: false,
            entered_body_filter: false,
            entered_log_phase: false,
            resp_content_chosen: false,
            req_body_received: false,
            local: None,
            local_flushed: false,
            local_sent: false,
            resp_chunk: None,
            resp_chunk_eof: false,
            resp_content_length_n: -1,
            resp_buffering: false,
            resp_bufs: None,
            resp_chunk_override: false,
            upstream_requests: 0,
            trapped: false,
            kong_target: None,
            kong_scheme: None,
            kong_shared: HashMap::new(),
            kong_request_id: kong::random_id(seed),
            kong_prefix: None,
            upstream_cancel: None,
            upstream_job: 0,
            client_headers: Vec::new(),
            outcome: None,
            connection,
            freed_host_link: None,
        }
    }

    /// nginx reads the request, Kong routes it (access, before the filters),
    /// the filter chain is attached and `on_http_request_headers` runs.
    fn begin(&mut self, sid: u64) {
        let Some(s) = self.stream(sid) else {
            return;
        };
        let chain = s.chain;
        if s.req.version == HttpVersion::Http11 && !s.req.headers.contains(b"host") {
            self.log(
                LogLevel::Info,
                0,
                "client sent HTTP/1.1 request without \"Host\" header",
            );
            self.early_error(sid, 400);
            return;
        }
        if s.req.uri.first() != Some(&b'/') {
            self.log(LogLevel::Info, 0, "client sent invalid request");
            self.early_error(sid, 400);
            return;
        }
        let Some(def) = self.ctx().chains.get(chain) else {
            self.kong_exit(sid, 404, "no Route matched with those values");
            return;
        };
        if def.refused {
            self.early_error(sid, 500);
            return;
        }
        if self.ctx().opts.kong && !self.kong_access(sid) {
            return;
        }

        // Attach the filter chain: one HTTP context per entry.
        let roots = self
            .ctx()
            .chains
            .get(chain)
            .map(|c| c.roots.clone())
            .unwrap_or_default();
        for root in roots {
            let id = {
                let ctx = self.ctx_mut();
                ctx.next_ctx_id = ctx.next_ctx_id.wrapping_add(1);
                ctx.next_ctx_id
            };
            if let Some(s) = self.stream_mut(sid) {
                s.pw.execs.push(Exec {
                    root,
                    id,
                    ecode: None,
                    ecode_logged: false,
                    started_gen: None,
                    dispatch_ops: Vec::new(),
                    dispatch_call: None,
                });
            }
            let index = self.stream(sid).map_or(0, |s| s.pw.execs.len() - 1);
            if let Err(ecode) = self.create_http_context(sid, index) {
                if ecode == Ecode::StartFailed && self.root_failed(sid, index) {
                    // The host could not start the filter's root context: no
                    // chain at all, nginx answers 500.
                    self.finalize_error(sid, 500);
                    return;
                }
                if let Some(e) = self.stream_mut(sid).and_then(|s| s.pw.execs.get_mut(index)) {
                    e.ecode = Some(ecode);
                }
            }
        }
        self.access(sid);
    }

    /// Whether the root context of this exec is not started (its start failed).
    fn root_failed(&self, sid: u64, index: usize) -> bool {
        let gen = self.ctx().gen;
        let root = self
            .stream(sid)
            .and_then(|s| s.pw.execs.get(index))
            .map(|e| e.root);
        root.and_then(|r| self.ctx().roots.get(r))
            .is_none_or(|r| r.started_gen != Some(gen) || self.ctx().trapped)
    }

    /// Kong's router and `access` phase before the filters: route match and
    /// the `upstream_*` variables. Returns false when Kong answered itself.
    fn kong_access(&mut self, sid: u64) -> bool {
        let (service, route) = match self
            .stream(sid)
            .and_then(|s| self.ctx().chains.get(s.chain))
        {
            Some(c) => (c.service.clone(), c.route.clone()),
            None => return false,
        };
        let Some(s) = self.stream(sid) else {
            return false;
        };
        let raw = String::from_utf8_lossy(&s.req.request_uri).into_owned();
        let raw_path = raw.split('?').next().unwrap_or("/").to_string();
        let Some(m) = kong::match_route(&route, &service, &raw_path) else {
            self.kong_exit(sid, 404, "no Route matched with those values");
            return false;
        };
        let host = properties::host_var(self.ctx(), s);
        let port = s.req.server_port.to_string();
        let scheme = maps::scheme(&s.req).to_string();
        let remote = s.req.client_addr.ip().to_string();
        let xff = match s.req.headers.get(b"x-forwarded-for") {
            Some(v) => format!("{}, {remote}", String::from_utf8_lossy(v)),
            None => remote.clone(),
        };
        let mut upstream_uri = m.upstream_path.clone();
        if raw.contains('?') {
            upstream_uri.push('?');
            upstream_uri.push_str(&String::from_utf8_lossy(&s.req.args));
        }
        let upstream_host = if route.preserve_host {
            s.req
                .headers
                .get(b"host")
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .unwrap_or_else(|| host.clone())
        } else {
            kong::service_host_header(&service)
        };
        let te = s
            .req
            .headers
            .get(b"te")
            .is_some_and(|v| String::from_utf8_lossy(v).contains("trailers"));
        let version = match s.req.version {
            HttpVersion::Http10 => "1.0",
            HttpVersion::Http11 => "1.1",
            HttpVersion::Http2 => "2",
        };
        let server = kong::server_token(&self.ctx().opts.kong_version);
        let via = match s.req.headers.get(b"via") {
            Some(v) => format!("{}, {version} {server}", String::from_utf8_lossy(v)),
            None => format!("{version} {server}"),
        };
        let prefix = (route.strip_path && m.prefix != "/").then(|| m.prefix.clone());
        let mut vars: Vec<(&str, String)> = vec![
            ("upstream_scheme", service.protocol.clone()),
            ("upstream_uri", upstream_uri),
            ("upstream_host", upstream_host),
            ("upstream_connection", "keep-alive".to_string()),
            ("upstream_upgrade", String::new()),
            (
                "upstream_te",
                if te {
                    "trailers".to_string()
                } else {
                    String::new()
                },
            ),
            ("upstream_via", via),
            ("upstream_x_forwarded_for", xff),
            ("upstream_x_forwarded_proto", scheme),
            ("upstream_x_forwarded_host", host),
            ("upstream_x_forwarded_port", port),
            ("upstream_x_forwarded_path", raw_path.clone()),
            (
                "upstream_x_forwarded_prefix",
                prefix.clone().unwrap_or_default(),
            ),
            ("kong_proxy_mode", "http".to_string()),
            ("ctx_ref", String::new()),
        ];
        if let Some(s) = self.stream_mut(sid) {
            for (k, v) in vars.drain(..) {
                s.req.set_vars.insert(k.to_string(), Some(v.into_bytes()));
            }
            s.kong_prefix = prefix;
        }
        true
    }

    /// The access phase: `on_http_request_headers` for each filter.
    fn access(&mut self, sid: u64) {
        match self.pw_resume(sid, Phase::Access, Step::ReqHeaders) {
            Rc::Again => self.wait(sid),
            Rc::Ok | Rc::Done => self.content(sid),
            Rc::Error | Rc::Status500 => self.finalize_error(sid, 500),
        }
    }

    /// The request waits for its dispatches; with none pending it would wait
    /// forever (a real client times out).
    fn wait(&mut self, sid: u64) {
        if let Some(s) = self.stream_mut(sid) {
            s.state = EnvState::Yield;
            s.stage = Stage::Waiting;
        }
        self.check_stall(sid);
    }

    fn pending_calls(&self, sid: u64) -> usize {
        self.ctx()
            .calls
            .values()
            .filter(|c| matches!(c.owner, CallOwner::Http { stream, .. } if stream == sid))
            .filter(|c| c.result.is_none())
            .count()
    }

    fn check_stall(&mut self, sid: u64) {
        let waiting = self.stream(sid).is_some_and(|s| s.stage == Stage::Waiting);
        if waiting && self.pending_calls(sid) == 0 {
            self.log(
                LogLevel::Warn,
                0,
                "[emulator] request paused with nothing pending: the host leaves it hanging until the client times out",
            );
            self.stall(sid);
        }
    }

    fn stall(&mut self, sid: u64) {
        if let Some(s) = self.stream_mut(sid) {
            s.stage = Stage::Stalled;
            s.outcome = Some(ClientResponse {
                status: 0,
                stalled: true,
                trapped: s.trapped,
                upstream_requests: s.upstream_requests,
                ..ClientResponse::default()
            });
        }
    }

    /// The content phase (`ngx_http_wasm_content`): flush a stashed local
    /// response, or read the body and run `on_http_request_body`, then proxy.
    fn content(&mut self, sid: u64) {
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        if matches!(s.stage, Stage::Complete | Stage::Stalled) {
            return;
        }
        s.entered_content_phase = true;
        match s.state {
            EnvState::Error => {
                self.finalize_error(sid, 500);
                return;
            }
            EnvState::Yield => {
                self.wait(sid);
                return;
            }
            EnvState::Continue => {}
        }
        if s.local.is_some() && !s.local_flushed {
            self.flush_local(sid);
            return;
        }
        let run_body = if !s.req_body_received {
            if s.req.body.is_empty() {
                false
            } else {
                s.req_body_received = true;
                s.pw.req_body_len = s.req.body.len();
                if !s.req.body_replaced && !s.req.spooled {
                    // Read into memory by nginx (a spooled body is a file
                    // buffer, never empty for the chain code).
                    s.req.body_bufs = vec![Buf {
                        len: s.req.body.len(),
                        tag: BufTag::Host(faults::REQUEST_BODY),
                    }];
                }
                true
            }
        } else {
            s.pw.req_body_len > 0
        };
        if run_body {
            match self.pw_resume(sid, Phase::Content, Step::ReqBody) {
                Rc::Error | Rc::Status500 => {
                    if let Some(s) = self.stream_mut(sid) {
                        s.state = EnvState::Error;
                    }
                    self.finalize_error(sid, 500);
                    return;
                }
                Rc::Again => {
                    self.wait(sid);
                    return;
                }
                Rc::Ok | Rc::Done => {}
            }
        }
        let Some(s) = self.stream(sid) else {
            return;
        };
        if s.local.is_some() && !s.local_flushed {
            self.flush_local(sid);
        } else if !s.resp_content_chosen {
            self.proxy(sid);
        }
    }

    /// The write-event handler after the last dispatch of a paused request:
    /// continue the content phase, or finish the access phase and go on.
    fn wev(&mut self, sid: u64) {
        let Some(s) = self.stream(sid) else {
            return;
        };
        if matches!(s.stage, Stage::Complete | Stage::Stalled) {
            return;
        }
        if s.entered_content_phase || s.resp_content_chosen {
            self.content(sid);
            return;
        }
        match self.pw_resume(sid, Phase::Access, Step::ReqHeaders) {
            Rc::Again => self.wait(sid),
            Rc::Ok | Rc::Done => self.content(sid),
            Rc::Error | Rc::Status500 => {
                self.log(
                    LogLevel::Warn,
                    0,
                    "[emulator] the host does not finalize a request whose chain fails while resuming the access phase: it hangs",
                );
                self.stall(sid);
            }
        }
    }

    // ------------------------------------------------------- chain stepping

    /// Whether the exec's context lives in the current, untrapped instance.
    fn exec_live(&self, sid: u64, i: usize) -> bool {
        let ctx = self.ctx();
        !ctx.trapped
            && ctx
                .streams
                .get(&sid)
                .and_then(|s| s.pw.execs.get(i))
                .is_some_and(|e| e.started_gen == Some(ctx.gen))
    }

    /// `ngx_proxy_wasm_create_context` for an HTTP context: a new instance
    /// if needed, the root context (again, without `on_vm_start`), then
    /// `on_context_create` for the HTTP context.
    fn create_http_context(&mut self, sid: u64, i: usize) -> Result<(), Ecode> {
        let Some(root) = self
            .stream(sid)
            .and_then(|s| s.pw.execs.get(i))
            .map(|e| e.root)
        else {
            return Err(Ecode::Unknown);
        };
        if let Err(reason) = self.start_root(root, false) {
            let name = self
                .ctx()
                .roots
                .get(root)
                .map(|r| r.name.clone())
                .unwrap_or_default();
            self.log(
                LogLevel::Error,
                0,
                format!("\"{name}\" filter could not start its root context: {reason}"),
            );
            return Err(Ecode::StartFailed);
        }
        let gen = self.ctx().gen;
        let root_id = self.ctx().roots.get(root).map_or(0, |r| r.id);
        let Some(id) = self
            .stream(sid)
            .and_then(|s| s.pw.execs.get(i))
            .map(|e| e.id)
        else {
            return Err(Ecode::Unknown);
        };
        let cur = Cur::Http {
            stream: sid,
            exec: i,
        };
        if let Guest::Trap(_) =
            self.vm
                .call(cur, Export::OnContextCreate, &[id_i32(id), id_i32(root_id)])
        {
            return Err(Ecode::StartFailed);
        }
        if let Some(e) = self.stream_mut(sid).and_then(|s| s.pw.execs.get_mut(i)) {
            e.started_gen = Some(gen);
        }
        Ok(())
    }

    /// `ngx_proxy_wasm_resume`: runs `step` for the filters from
    /// `exec_index` on, stopping at the first that pauses or failed.
    fn pw_resume(&mut self, sid: u64, phase: Phase, step: Step) -> Rc {
        let Some(s) = self.stream_mut(sid) else {
            return Rc::Error;
        };
        s.pw.phase = phase;
        s.pw.step = step;
        match step {
            Step::Tick | Step::Done | Step::RespBody | Step::DispatchResponse => {}
            Step::RespHeaders => {
                if s.pw.last_completed < Step::RespHeaders {
                    s.pw.exec_index = 0;
                }
            }
            _ => {
                if step <= s.pw.last_completed {
                    return Rc::Ok;
                }
            }
        }
        let n = s.pw.execs.len();
        let mut rc = Rc::Ok;
        let mut i = s.pw.exec_index;
        while i < n {
            rc = self.action2rc(sid, i);
            if rc != Rc::Ok {
                break;
            }
            if step == Step::Done && !self.exec_live(sid, i) {
                rc = Rc::Ok;
                break;
            }
            let ecode = self.run_step(sid, i, step);
            let Some(s) = self.stream_mut(sid) else {
                return Rc::Error;
            };
            if let Some(e) = s.pw.execs.get_mut(i) {
                e.ecode = ecode;
            }
            if ecode.is_some() {
                rc = Rc::Status500;
                break;
            }
            match s.pw.action {
                Action::Continue | Action::Done => s.pw.exec_index += 1,
                Action::Pause => {
                    // Response body buffering re-enters the same filter.
                    if step != Step::RespBody {
                        s.pw.exec_index += 1;
                    }
                }
                Action::Other(_) => {}
            }
            rc = self.action2rc(sid, i);
            if rc != Rc::Ok && rc != Rc::Again {
                break;
            }
            if let Some(s) = self.stream_mut(sid) {
                if s.pw.exec_index >= n {
                    s.pw.last_completed = s.pw.step;
                    s.pw.exec_index = 0;
                }
            }
            i += 1;
        }
        rc
    }

    /// `action2rc`: what the chain's action means in the current phase.
    fn action2rc(&mut self, sid: u64, i: usize) -> Rc {
        let Some(s) = self.stream(sid) else {
            return Rc::Error;
        };
        let step = s.pw.step;
        let ecode = s.pw.execs.get(i).and_then(|e| e.ecode);
        if ecode.is_some() {
            let logged = s.pw.execs.get(i).is_some_and(|e| e.ecode_logged);
            if !logged && step != Step::Done {
                let id = s.pw.execs.get(i).map_or(0, |e| e.id);
                self.log(
                    LogLevel::Info,
                    id,
                    "filter chain failed resuming: previous error",
                );
                if let Some(e) = self.stream_mut(sid).and_then(|s| s.pw.execs.get_mut(i)) {
                    e.ecode_logged = true;
                }
            }
            return Rc::Status500;
        }
        if step == Step::Done {
            return Rc::Ok;
        }
        let (action, phase, override_) = (s.pw.action, s.pw.phase, s.resp_chunk_override);
        let exec_index = s.pw.exec_index;
        let id = s.pw.execs.get(i).map_or(0, |e| e.id);
        match action {
            Action::Done => {
                if let Some(s) = self.stream_mut(sid) {
                    s.pw.action = Action::Continue;
                }
                Rc::Done
            }
            Action::Continue => Rc::Ok,
            Action::Pause => match phase {
                Phase::HeaderFilter => {
                    if !override_ {
                        self.log(
                            LogLevel::Warn,
                            id,
                            "\"ResponseHeaders\" returned \"PAUSE\": local response expected but none produced",
                        );
                    }
                    Rc::Again
                }
                Phase::BodyFilter => {
                    if let Some(s) = self.stream_mut(sid) {
                        s.resp_buffering = true;
                    }
                    Rc::Again
                }
                Phase::Access | Phase::Content | Phase::Background => Rc::Again,
                Phase::Log | Phase::Done => {
                    self.log(
                        LogLevel::Error,
                        id,
                        format!("bad \"{}\" return action: \"PAUSE\"", step.host_name()),
                    );
                    if let Some(s) = self.stream_mut(sid) {
                        if let Some(e) = s.pw.execs.get_mut(exec_index) {
                            e.ecode = Some(Ecode::ReturnAction);
                        }
                        if let Some(e) = s.pw.execs.get_mut(i) {
                            e.ecode.get_or_insert(Ecode::Unknown);
                        }
                    }
                    Rc::Error
                }
            },
            Action::Other(v) => {
                self.log(
                    LogLevel::Warn,
                    id,
                    format!("NYI - \"{}\" return action: {v}", step.host_name()),
                );
                if let Some(e) = self.stream_mut(sid).and_then(|s| s.pw.execs.get_mut(i)) {
                    e.ecode.get_or_insert(Ecode::Unknown);
                }
                Rc::Error
            }
        }
    }

    /// `ngx_proxy_wasm_run_step`: one filter's callback for `step`.
    fn run_step(&mut self, sid: u64, i: usize, step: Step) -> Option<Ecode> {
        if !self.exec_live(sid, i) {
            if let Err(e) = self.create_http_context(sid, i) {
                return Some(e);
            }
        }
        let Some(s) = self.stream_mut(sid) else {
            return Some(Ecode::Unknown);
        };
        s.pw.step = step;
        let old_action = s.pw.action;
        let mut action = old_action;
        let prev_ecode = s.pw.execs.get(i).and_then(|e| e.ecode);
        let (id, root) = match s.pw.execs.get(i) {
            Some(e) => (e.id, e.root),
            None => return Some(Ecode::Unknown),
        };
        let cur = Cur::Http {
            stream: sid,
            exec: i,
        };
        let id32 = id_i32(id);
        let guest = match step {
            Step::ReqHeaders => {
                let n = s.req.headers.len();
                let g = self
                    .vm
                    .call(cur, Export::OnRequestHeaders, &[id32, guest_i32(n), 0]);
                if let Guest::Ok(Some(v)) = g {
                    action = Action::from_guest(v);
                }
                g
            }
            Step::ReqBody => {
                let len = s.pw.req_body_len;
                let g = self
                    .vm
                    .call(cur, Export::OnRequestBody, &[id32, guest_i32(len), 1]);
                if let Guest::Ok(Some(v)) = g {
                    action = Action::from_guest(v);
                }
                g
            }
            Step::RespHeaders => {
                let n = s.resp.headers.len() + maps::shims(s).len();
                s.resp_content_length_n = s.resp.content_length_n;
                let g = self
                    .vm
                    .call(cur, Export::OnResponseHeaders, &[id32, guest_i32(n), 0]);
                if let Guest::Ok(Some(v)) = g {
                    action = Action::from_guest(v);
                }
                g
            }
            Step::RespBody => {
                let len = s.resp_chunk.as_ref().map_or(0, |c| c.data.len());
                if s.resp_content_length_n > 0 {
                    s.resp_chunk_eof = i64::try_from(len).unwrap_or(-1) == s.resp_content_length_n;
                }
                let eof = s.resp_chunk_eof;
                let buffered = s.resp_bufs.is_some();
                if len > 0 || eof {
                    let g = self.vm.call(
                        cur,
                        Export::OnResponseBody,
                        &[id32, guest_i32(len), i32::from(eof)],
                    );
                    if let Guest::Ok(Some(v)) = g {
                        action = Action::from_guest(v);
                        if action == Action::Pause && buffered {
                            self.log(
                                LogLevel::Error,
                                id,
                                "invalid \"on_response_body\" return action (PAUSE): response body buffering already requested",
                            );
                            action = Action::Continue;
                        }
                    }
                    g
                } else {
                    Guest::Ok(None)
                }
            }
            Step::Log => {
                let _ = self.vm.call(cur, Export::OnDone, &[id32]);
                let _ = self.vm.call(cur, Export::OnLog, &[id32]);
                Guest::Ok(None)
            }
            Step::Done => {
                let _ = self.vm.call(cur, Export::OnDelete, &[id32]);
                Guest::Ok(None)
            }
            Step::DispatchResponse => {
                let token = s.pw.execs.get(i).and_then(|e| e.dispatch_call).unwrap_or(0);
                s.state = EnvState::Continue;
                let (nh, bl) = self
                    .ctx()
                    .calls
                    .get(&token)
                    .and_then(|c| c.result.as_ref())
                    .map_or((0, 0), |r| (r.headers.len(), r.body_size()));
                let root_id = self.ctx().roots.get(root).map_or(0, |r| r.id);
                self.vm.call(
                    cur,
                    Export::OnHttpCallResponse,
                    &[
                        id_i32(root_id),
                        id_i32(token),
                        guest_i32(nh),
                        guest_i32(bl),
                        0,
                    ],
                )
            }
            Step::None | Step::Tick => Guest::Ok(None),
        };
        let Some(s) = self.stream_mut(sid) else {
            return Some(Ecode::Unknown);
        };
        // Actions written by host functions win over the returned one,
        // except a local response's DONE which skips the rest.
        if s.pw.action != action {
            if s.pw.action == Action::Done {
                return prev_ecode;
            }
            s.pw.action = action;
        }
        match guest {
            Guest::Trap(_) => Some(Ecode::InstanceTrapped),
            _ => None,
        }
    }

    // ------------------------------------------------------------ responses

    /// Sends the stashed local response (`ngx_http_wasm_flush_local_response`).
    fn flush_local(&mut self, sid: u64) {
        let kong = self.ctx().opts.kong;
        let mut notes = Vec::new();
        let body = {
            let Some(s) = self.stream_mut(sid) else {
                return;
            };
            let Some(local) = s.local.take() else {
                return;
            };
            s.local_flushed = true;
            s.local_sent = true;
            s.resp.status = local.status;
            s.resp.reason = local.reason;
            for (k, v) in &local.headers {
                notes.extend(builtins::set_response_header(&mut s.resp, k, v, MapOp::Set));
            }
            let len = local.body.as_ref().map_or(0, Vec::len);
            if len > 0 && s.resp.content_type.is_none() {
                s.resp.content_type = default_type(kong, &s.req.uri);
            }
            let len_i = i64::try_from(len).unwrap_or(i64::MAX);
            if !(s.resp.content_length_n >= 0 && s.resp.content_length_n == len_i) {
                let _ = builtins::set_response_header(
                    &mut s.resp,
                    b"Content-Length",
                    len.to_string().as_bytes(),
                    MapOp::Set,
                );
            }
            local.body
        };
        if maps::apply_notes(self.ctx_mut(), notes).is_err() {
            return;
        }
        // One buffer for a body (the host appended its `\n`); without one,
        // nginx's empty last buffer.
        let chunk = match body {
            Some(data) => Chunk::host(data, true, faults::LOCAL_BODY),
            None => Chunk::host(Vec::new(), true, faults::LAST_BUF),
        };
        self.send_response(sid, vec![chunk]);
    }

    /// Proxies the request to the service (Kong) or the upstream (nginx).
    fn proxy(&mut self, sid: u64) {
        if self.ctx().faults.crashed() {
            return;
        }
        let kong = self.ctx().opts.kong;
        let Some(s) = self.stream(sid) else {
            return;
        };
        let Some(def) = self.ctx().chains.get(s.chain) else {
            self.finalize_error(sid, 502);
            return;
        };
        let service = def.service.clone();
        let req = &s.req;
        let var = |name: &str| -> String {
            req.set_vars
                .get(name)
                .and_then(|v| v.as_ref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let body = req.body.clone();
        let send_length = req.has_body_framing || req.body_replaced;
        let mut head = Vec::new();
        let (host, port, tls, sni);
        let ms = |v: u64| Duration::from_millis(v.max(1));
        if kong {
            let (h, p) = s
                .kong_target
                .clone()
                .unwrap_or_else(|| (service.host.clone(), service.port));
            let scheme = s
                .kong_scheme
                .clone()
                .unwrap_or_else(|| var("upstream_scheme"));
            let mut uri = var("upstream_uri");
            if uri.is_empty() {
                uri = "/".to_string();
            }
            let upstream_host = var("upstream_host");
            head.extend_from_slice(&req.method);
            head.extend_from_slice(format!(" {uri} HTTP/1.1\r\n").as_bytes());
            let mut set = |name: &str, value: String| {
                if !value.is_empty() {
                    head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
            };
            set("Host", upstream_host.clone());
            set("Connection", var("upstream_connection"));
            set("TE", var("upstream_te"));
            set("Upgrade", var("upstream_upgrade"));
            set("Via", var("upstream_via"));
            set("X-Forwarded-For", var("upstream_x_forwarded_for"));
            set("X-Forwarded-Proto", var("upstream_x_forwarded_proto"));
            set("X-Forwarded-Host", var("upstream_x_forwarded_host"));
            set("X-Forwarded-Port", var("upstream_x_forwarded_port"));
            set("X-Forwarded-Path", var("upstream_x_forwarded_path"));
            set("X-Forwarded-Prefix", var("upstream_x_forwarded_prefix"));
            set("X-Real-IP", req.client_addr.ip().to_string());
            set("X-Kong-Request-Id", s.kong_request_id.clone());
            if send_length {
                set("Content-Length", body.len().to_string());
            }
            const SKIP: [&str; 17] = [
                "host",
                "connection",
                "te",
                "upgrade",
                "via",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-forwarded-port",
                "x-forwarded-path",
                "x-forwarded-prefix",
                "x-real-ip",
                "x-kong-request-id",
                "content-length",
                "transfer-encoding",
                "keep-alive",
                "expect",
            ];
            let hop: Vec<String> = req
                .headers
                .get(b"connection")
                .map(|v| {
                    String::from_utf8_lossy(v)
                        .split(',')
                        .map(|t| t.trim().to_ascii_lowercase())
                        .filter(|t| !matches!(t.as_str(), "keep-alive" | "close" | "upgrade"))
                        .collect()
                })
                .unwrap_or_default();
            append_headers(&mut head, &req.headers, |n| {
                let lower = String::from_utf8_lossy(n).to_ascii_lowercase();
                SKIP.contains(&lower.as_str())
                    || hop.contains(&lower)
                    || lower == "proxy"
                    || lower == "proxy-connection"
            });
            tls = scheme == "https";
            sni = upstream_host.split(':').next().unwrap_or("").to_string();
            host = h;
            port = p;
        } else {
            let path = if req.uri_changed {
                let mut p = escape_path(&req.uri);
                if !req.args.is_empty() {
                    p.push(b'?');
                    p.extend_from_slice(&req.args);
                }
                p
            } else {
                req.request_uri.clone()
            };
            head.extend_from_slice(&req.method);
            head.push(b' ');
            head.extend_from_slice(&path);
            head.extend_from_slice(b" HTTP/1.1\r\n");
            let host_header = req
                .headers
                .get(b"host")
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .unwrap_or_else(|| service.host.clone());
            head.extend_from_slice(
                format!("Host: {host_header}\r\nConnection: close\r\n").as_bytes(),
            );
            if send_length {
                head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
            }
            append_headers(&mut head, &req.headers, |n| {
                let lower = String::from_utf8_lossy(n).to_ascii_lowercase();
                matches!(
                    lower.as_str(),
                    "host"
                        | "connection"
                        | "content-length"
                        | "transfer-encoding"
                        | "keep-alive"
                        | "te"
                        | "upgrade"
                        | "expect"
                )
            });
            tls = service.protocol == "https";
            sni = service.host.clone();
            host = service.host.clone();
            port = service.port;
        }
        head.extend_from_slice(b"\r\n");
        let head_request = req.method == b"HEAD";
        let request = UpstreamRequest {
            host,
            port,
            tls,
            sni,
            head,
            body,
            connect_timeout: ms(service.connect_timeout),
            send_timeout: ms(service.write_timeout),
            read_timeout: ms(service.read_timeout),
            head_request,
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let job = {
            let Some(s) = self.stream_mut(sid) else {
                return;
            };
            if let Some(old) = s.upstream_cancel.take() {
                old.store(true, Ordering::SeqCst);
            }
            s.upstream_requests += 1;
            s.upstream_job += 1;
            s.stage = Stage::Upstream;
            s.upstream_cancel = Some(cancel.clone());
            s.upstream_job
        };
        let ctx = self.ctx_mut();
        ctx.stats.upstream_requests += 1;
        match net::spawn_upstream(ctx.tx.clone(), sid, job, request, ctx.tls.clone(), cancel) {
            Ok(handle) => ctx.threads.push(handle),
            Err(e) => {
                self.log(
                    LogLevel::Error,
                    0,
                    format!("[emulator] could not start upstream I/O: {e}"),
                );
                self.finalize_error(sid, 502);
            }
        }
    }

    /// The service answered (or failed).
    fn upstream_done(
        &mut self,
        sid: u64,
        job: u64,
        result: Result<net::UpstreamResponse, net::UpstreamError>,
    ) {
        let Some(s) = self.stream(sid) else {
            return;
        };
        if s.upstream_job != job || s.stage != Stage::Upstream {
            return;
        }
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.log(LogLevel::Error, 0, e.message);
                self.finalize_error(sid, e.status);
                return;
            }
        };
        let kong = self.ctx().opts.kong;
        let chunk_size = self.ctx().opts.upstream_chunk_size.max(1);
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        s.resp.status = resp.status;
        s.resp.upstream_status = Some(resp.status);
        s.resp.upstream_addr = Some(resp.addr.clone());
        s.resp.upstream_headers = resp.headers.clone();
        let hop: Vec<String> = resp
            .headers
            .get(b"connection")
            .map(|v| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        for (name, value) in resp.headers.iter() {
            let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
            let hidden = matches!(
                lower.as_str(),
                "connection"
                    | "keep-alive"
                    | "transfer-encoding"
                    | "upgrade"
                    | "te"
                    | "trailer"
                    | "proxy-connection"
            ) || lower.starts_with("x-accel-")
                || (!kong && (lower == "date" || lower == "server"))
                || (kong && hop.contains(&lower));
            if hidden {
                continue;
            }
            if lower == "content-type" {
                s.resp.content_type = Some(value.to_vec());
            } else {
                builtins::copy_upstream_header(&mut s.resp.headers, name, value);
            }
        }
        s.resp.content_length_n = match resp.content_length {
            Some(n) if !resp.chunked => i64::try_from(n).unwrap_or(-1),
            _ => -1,
        };
        let mut chunks: Vec<Chunk> = resp
            .body
            .chunks(chunk_size)
            .map(|c| Chunk::host(c.to_vec(), false, faults::UPSTREAM_BUF))
            .collect();
        chunks.push(Chunk::host(Vec::new(), true, faults::LAST_BUF));
        self.send_response(sid, chunks);
    }

    /// Kong's header filter (before the Wasm filters' `on_http_response_headers`).
    fn kong_header_filter(&mut self, sid: u64) {
        let version = self.ctx().opts.kong_version.clone();
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        let server = kong::server_token(&version);
        let waited = s.req.started_at.elapsed().as_millis().to_string();
        s.resp
            .headers
            .push_raw(b"X-Kong-Upstream-Latency", waited.as_bytes());
        s.resp.headers.push_raw(b"X-Kong-Proxy-Latency", b"0");
        let via = match s.resp.upstream_headers.get(b"via") {
            Some(v) => format!("{}, 1.1 {server}", String::from_utf8_lossy(v)),
            None => format!("1.1 {server}"),
        };
        s.resp.headers.set(b"Via", via.as_bytes());
        builtins::kong_server_header(&mut s.resp, server.as_bytes());
        let rid = s.kong_request_id.clone();
        s.resp.headers.set(b"X-Kong-Request-Id", rid.as_bytes());
    }

    /// Headers go out (Kong's and the Wasm header filters run first), then
    /// the body through the body filter, then the log and done steps.
    fn send_response(&mut self, sid: u64, chunks: Vec<Chunk>) {
        let kong = self.ctx().opts.kong;
        if kong {
            self.kong_header_filter(sid);
        }
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        if s.entered_header_filter {
            return;
        }
        s.entered_header_filter = true;
        s.stage = Stage::Waiting;
        if let Some(c) = s.upstream_cancel.take() {
            c.store(true, Ordering::SeqCst);
        }
        let date = httpdate::fmt_http_date(SystemTime::now());
        builtins::produce_default_headers(&mut s.resp, b"nginx/1.27.1", date.as_bytes());
        let _ = self.pw_resume(sid, Phase::HeaderFilter, Step::RespHeaders);
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        s.resp_content_chosen = true;
        s.resp.header_only = s.req.method == b"HEAD"
            || s.resp.status == 204
            || s.resp.status == 304
            || (100..200).contains(&s.resp.status);
        s.client_headers = client_headers(s);
        s.resp.header_sent = true;
        if !s.resp.header_only {
            for chunk in chunks {
                self.body_filter(sid, chunk);
                if self.stream(sid).is_none_or(|s| s.stage == Stage::Complete) {
                    return;
                }
            }
        }
        self.finalize(sid);
    }

    /// `ngx_http_wasm_body_filter_handler` for one incoming chunk.
    fn body_filter(&mut self, sid: u64, incoming: Chunk) {
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        let mut input = incoming;
        if s.resp_chunk_override {
            s.resp_chunk_override = false;
            input = s.resp_chunk.take().unwrap_or_default();
        }
        s.entered_body_filter = true;
        self.body_filter_resume(sid, input);
        let (cap_n, cap_size) = self.ctx().opts.response_body_buffers;
        let cap = cap_n.saturating_mul(cap_size);
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        if s.resp_buffering {
            let chunk = s.resp_chunk.take().unwrap_or_default();
            let bufs = s.resp_bufs.get_or_insert_with(Vec::new);
            let full = bufs.len() + chunk.data.len() > cap;
            bufs.extend_from_slice(&chunk.data);
            let last = chunk.last;
            if !full && !s.resp_chunk_eof && !last {
                // More to come: nothing goes out yet.
                return;
            }
            s.resp_buffering = false;
            let data = s.resp_bufs.as_mut().map(std::mem::take).unwrap_or_default();
            // Keep the marker that buffering already happened.
            s.resp_bufs = Some(Vec::new());
            let bufs = buffered_chain(data.len(), cap, &chunk);
            self.body_filter_resume(sid, Chunk { data, last, bufs });
        }
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        if let Some(chunk) = s.resp_chunk.take() {
            s.resp.body_sent.extend_from_slice(&chunk.data);
        }
    }

    fn body_filter_resume(&mut self, sid: u64, chunk: Chunk) {
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        if chunk.last {
            s.resp_chunk_eof = true;
        }
        s.resp_chunk = Some(chunk);
        if !s.resp_buffering {
            s.pw.action = Action::Continue;
            let _ = self.pw_resume(sid, Phase::BodyFilter, Step::RespBody);
        }
    }

    /// Log and done steps, then the response is ready.
    fn finalize(&mut self, sid: u64) {
        if let Some(s) = self.stream_mut(sid) {
            s.entered_log_phase = true;
        }
        let _ = self.pw_resume(sid, Phase::Log, Step::Log);
        self.done(sid);
    }

    /// The request pool is freed: `on_delete`, pending work cancelled.
    fn done(&mut self, sid: u64) {
        let _ = self.pw_resume(sid, Phase::Done, Step::Done);
        self.cancel_calls(sid);
        faults::request_freed(self.ctx_mut(), sid);
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        if let Some(c) = s.upstream_cancel.take() {
            c.store(true, Ordering::SeqCst);
        }
        s.stage = Stage::Complete;
        s.outcome = Some(outcome(s));
    }

    /// A response Kong or nginx produces before the filters are attached.
    fn early_error(&mut self, sid: u64, status: u16) {
        if self.ctx().opts.kong {
            let msg = kong::error_message(status);
            self.kong_exit(sid, status, &msg);
        } else {
            self.nginx_error_page(sid, status, false);
        }
    }

    /// `kong.response.exit` with Kong's JSON error body (no filters run).
    fn kong_exit(&mut self, sid: u64, status: u16, message: &str) {
        let version = self.ctx().opts.kong_version.clone();
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        let accept = s
            .req
            .headers
            .get(b"accept")
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let (body, ctype) = kong::error_body(message, &s.kong_request_id, accept.as_deref());
        let mut headers = HeaderList::new();
        headers.push_raw(b"Content-Length", body.len().to_string().as_bytes());
        headers.push_raw(b"X-Kong-Response-Latency", b"0");
        headers.push_raw(b"Server", kong::server_token(&version).as_bytes());
        headers.push_raw(b"X-Kong-Request-Id", s.kong_request_id.as_bytes());
        s.resp = Response {
            status,
            headers,
            content_type: Some(ctype.as_bytes().to_vec()),
            content_length_n: i64::try_from(body.len()).unwrap_or(-1),
            keepalive: s.resp.keepalive,
            header_sent: true,
            body_sent: body,
            upstream_status: s.resp.upstream_status,
            ..Response::default()
        };
        s.client_headers = client_headers(s);
        s.stage = Stage::Complete;
        let mut out = outcome(s);
        out.local = false;
        s.outcome = Some(out);
    }

    /// An error status from nginx (500 for a failed filter, 502/504 for the
    /// upstream). Inside Kong, `error_page` redirects to Kong's error handler
    /// and the filters see nothing more (only `on_delete`); in plain nginx
    /// the error page goes through the response steps.
    fn finalize_error(&mut self, sid: u64, status: u16) {
        if self.stream(sid).is_none_or(|s| s.entered_header_filter) {
            self.done(sid);
            return;
        }
        if self.ctx().opts.kong {
            let msg = kong::error_message(status);
            let trapped = self.stream(sid).is_some_and(|s| s.trapped);
            let upstream_requests = self.stream(sid).map_or(0, |s| s.upstream_requests);
            self.kong_exit(sid, status, &msg);
            // The request pool is freed after the error page.
            if let Some(s) = self.stream_mut(sid) {
                s.stage = Stage::Waiting;
            }
            let _ = self.pw_resume(sid, Phase::Done, Step::Done);
            self.cancel_calls(sid);
            if let Some(s) = self.stream_mut(sid) {
                s.stage = Stage::Complete;
                let mut out = outcome(s);
                out.trapped = trapped || s.trapped;
                out.upstream_requests = upstream_requests;
                s.outcome = Some(out);
            }
        } else {
            self.nginx_error_page(sid, status, true);
        }
    }

    fn cancel_calls(&mut self, sid: u64) {
        let tokens: Vec<u32> = self
            .ctx()
            .calls
            .iter()
            .filter(|(_, c)| matches!(c.owner, CallOwner::Http { stream, .. } if stream == sid))
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            if let Some(call) = self.ctx_mut().calls.remove(&t) {
                call.cancel.store(true, Ordering::SeqCst);
            }
        }
    }

    /// nginx's own error page; with `filters`, it goes through the response
    /// steps of the chain (filters before a failed one still run).
    fn nginx_error_page(&mut self, sid: u64, status: u16, filters: bool) {
        let page = kong::nginx_error_page(status);
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        s.resp.status = status;
        s.resp.reason = None;
        s.resp.headers = HeaderList::new();
        s.resp.content_type = Some(b"text/html".to_vec());
        s.resp.content_length_n = i64::try_from(page.len()).unwrap_or(-1);
        if filters && !s.pw.execs.is_empty() {
            self.send_response(sid, vec![Chunk::host(page, true, faults::ERROR_PAGE)]);
        } else {
            s.resp.headers.set_first(b"Server", b"nginx/1.27.1");
            let date = httpdate::fmt_http_date(SystemTime::now());
            s.resp.headers.set_first(b"Date", date.as_bytes());
            s.client_headers = client_headers(s);
            s.resp.header_sent = true;
            s.resp.body_sent = page;
            s.stage = Stage::Complete;
            s.outcome = Some(outcome(s));
        }
    }

    // --------------------------------------------------------- completions

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
                let owner = {
                    let call = self.ctx_mut().calls.get_mut(&token)?;
                    call.result = Some(result);
                    call.owner
                };
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

    /// The dispatch resume handler: calls `on_http_call_response` (also for
    /// failures, with 0 headers and body), then resumes the request when this
    /// was its last pending dispatch.
    fn dispatch_done(&mut self, sid: u64, i: usize, token: u32) {
        let Some(result) = self.ctx().calls.get(&token).and_then(|c| c.result.clone()) else {
            return;
        };
        if let Some(e) = self.stream_mut(sid).and_then(|s| s.pw.execs.get_mut(i)) {
            e.dispatch_ops.retain(|t| *t != token);
        }
        let id = self
            .stream(sid)
            .and_then(|s| s.pw.execs.get(i))
            .map_or(0, |e| e.id);
        let mut failed = false;
        if result.status == SockStatus::Ok {
            if !self.exec_live(sid, i) {
                let (name, n) = self.filter_position(sid, i);
                if let Some(e) = self.stream_mut(sid).and_then(|s| s.pw.execs.get_mut(i)) {
                    e.ecode = Some(Ecode::InstanceTrapped);
                }
                self.log(
                    LogLevel::Error,
                    id,
                    format!(
                        "proxy_wasm \"{name}\" filter ({}/{n}) failed resuming after dispatch",
                        i + 1
                    ),
                );
                failed = true;
                self.log_dispatch_error(id, "");
                let _ = self.invoke_call_response(sid, i, token);
            } else if self.invoke_call_response(sid, i, token).is_err() {
                failed = true;
                self.log_dispatch_error(id, "");
            }
        } else {
            failed = true;
            self.log_dispatch_error(id, &result.error);
            let _ = self.invoke_call_response(sid, i, token);
        }
        if let Some(call) = self.ctx_mut().calls.remove(&token) {
            call.cancel.store(true, Ordering::SeqCst);
        }
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        let more =
            s.pw.execs
                .get(i)
                .is_some_and(|e| !e.dispatch_ops.is_empty());
        if more {
            s.state = EnvState::Yield;
            s.pw.action = Action::Pause;
            return;
        }
        s.state = EnvState::Continue;
        s.pw.action = Action::Continue;
        let rc = if failed {
            Rc::Error
        } else {
            let (phase, step) = (s.pw.phase, s.pw.step);
            self.pw_resume(sid, phase, step)
        };
        if rc == Rc::Again {
            self.check_stall(sid);
            return;
        }
        self.wev(sid);
    }

    fn filter_position(&self, sid: u64, i: usize) -> (String, usize) {
        let n = self.stream(sid).map_or(0, |s| s.pw.execs.len());
        let name = self
            .stream(sid)
            .and_then(|s| s.pw.execs.get(i))
            .and_then(|e| self.ctx().roots.get(e.root))
            .map(|r| r.name.clone())
            .unwrap_or_default();
        (name, n)
    }

    fn log_dispatch_error(&mut self, id: u32, error: &str) {
        if !self.ctx().opts.log_dispatch_errors {
            return;
        }
        let msg = if error.is_empty() {
            "dispatch failed".to_string()
        } else {
            format!("dispatch failed: {error}")
        };
        self.log(LogLevel::Error, id, msg);
    }

    /// `invoke_on_http_dispatch_response`.
    fn invoke_call_response(&mut self, sid: u64, i: usize, token: u32) -> Result<(), ()> {
        let saved = {
            let Some(s) = self.stream_mut(sid) else {
                return Err(());
            };
            if let Some(e) = s.pw.execs.get_mut(i) {
                e.dispatch_call = Some(token);
            }
            s.pw.phase = Phase::Background;
            s.pw.step
        };
        let ecode = self.run_step(sid, i, Step::DispatchResponse);
        let Some(s) = self.stream_mut(sid) else {
            return Err(());
        };
        if let Some(e) = s.pw.execs.get_mut(i) {
            e.ecode = ecode;
            e.dispatch_call = None;
        }
        if ecode.is_some() {
            return Err(());
        }
        s.pw.step = saved;
        Ok(())
    }

    /// A dispatch made from `on_tick` answered.
    fn root_dispatch_done(&mut self, root: usize, token: u32) {
        let result = self.ctx().calls.get(&token).and_then(|c| c.result.clone());
        if let Some(r) = self.ctx_mut().roots.get_mut(root) {
            r.dispatch_ops.retain(|t| *t != token);
        }
        let id = self.ctx().roots.get(root).map_or(0, |r| r.id);
        if let Some(result) = &result {
            if result.status != SockStatus::Ok {
                let e = result.error.clone();
                self.log_dispatch_error(id, &e);
            }
        }
        let live = self.vm.is_live()
            && self
                .ctx()
                .roots
                .get(root)
                .is_some_and(|r| r.started_gen == Some(self.ctx().gen));
        if live {
            let (nh, bl) = result
                .as_ref()
                .map_or((0, 0), |r| (r.headers.len(), r.body_size()));
            if let Some(r) = self.ctx_mut().roots.get_mut(root) {
                r.step = Step::DispatchResponse;
                r.dispatch_call = Some(token);
            }
            let _ = self.vm.call(
                Cur::Root { root },
                Export::OnHttpCallResponse,
                &[id_i32(id), id_i32(token), guest_i32(nh), guest_i32(bl), 0],
            );
            if let Some(r) = self.ctx_mut().roots.get_mut(root) {
                r.step = Step::None;
                r.dispatch_call = None;
            }
        }
        self.ctx_mut().calls.remove(&token);
    }

    /// Runs the ticks that are due.
    fn run_ticks(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = self
            .ctx()
            .roots
            .iter()
            .enumerate()
            .filter(|(_, r)| r.tick_period > 0 && r.next_tick.is_some_and(|t| t <= now))
            .map(|(i, _)| i)
            .collect();
        for root in due {
            let refused = self
                .ctx()
                .roots
                .get(root)
                .and_then(|r| self.ctx().chains.get(r.chain))
                .is_some_and(|c| c.refused);
            if refused {
                continue;
            }
            let period = self.ctx().roots.get(root).map_or(0, |r| r.tick_period);
            if self.start_root(root, false).is_err() {
                continue;
            }
            let id = self.ctx().roots.get(root).map_or(0, |r| r.id);
            if let Some(r) = self.ctx_mut().roots.get_mut(root) {
                r.step = Step::Tick;
            }
            let _ = self
                .vm
                .call(Cur::Root { root }, Export::OnTick, &[id_i32(id)]);
            if let Some(r) = self.ctx_mut().roots.get_mut(root) {
                r.step = Step::None;
                let p = if r.tick_period == 0 && period != 0 && r.started_gen.is_some() {
                    0
                } else {
                    r.tick_period
                };
                r.next_tick =
                    (p != 0).then(|| Instant::now() + Duration::from_millis(u64::from(p)));
            }
        }
    }

    fn next_tick_in(&self) -> Option<Duration> {
        self.ctx()
            .roots
            .iter()
            .filter(|r| r.tick_period > 0)
            .filter_map(|r| r.next_tick)
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()))
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

/// Appends the request headers not filtered out by `skip`, in list order,
/// as nginx's proxy module copies `r->headers_in.headers`
/// (`ngx_http_proxy_create_request`): entries a filter removed (blanked,
/// hash 0) are copied too, with their current name and value. `skip` is
/// the set of names the configuration's `proxy_set_header` (and Kong's Lua)
/// replaces; it is applied by name, blanked or not.
fn append_headers(head: &mut Vec<u8>, headers: &HeaderList, skip: impl Fn(&[u8]) -> bool) {
    for (n, v) in headers.iter_all() {
        if skip(n) {
            continue;
        }
        head.extend_from_slice(n);
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
}

/// Escapes a decoded path for the request line.
fn escape_path(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in path {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// nginx's `$uri`: percent-decoded, dot segments resolved, slashes merged.
/// `None` for a path nginx rejects (400).
pub(crate) fn normalize_uri(raw: &str) -> Option<Vec<u8>> {
    let path = if raw.starts_with('/') {
        raw.to_string()
    } else if let Some(rest) = raw.split_once("://").map(|(_, r)| r) {
        format!("/{}", rest.split_once('/').map_or("", |(_, p)| p))
    } else {
        return None;
    };
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            let v = hex.and_then(|h| u8::from_str_radix(h, 16).ok())?;
            decoded.push(v);
            i += 3;
            continue;
        }
        decoded.push(b);
        i += 1;
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let trailing = decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                segments.pop()?;
            }
            s => segments.push(s),
        }
    }
    let mut out = vec![b'/'];
    out.extend_from_slice(&segments.join(&b'/'));
    if trailing && out.len() > 1 {
        out.push(b'/');
    }
    Some(out)
}

/// nginx's default content type for a local response body: by extension
/// (nginx's built-in types), else `default_type` (`''` in Kong's location,
/// `text/plain` in stock nginx).
fn default_type(kong: bool, uri: &[u8]) -> Option<Vec<u8>> {
    let ext = uri
        .rsplit(|&b| b == b'/')
        .next()
        .and_then(|last| {
            last.rsplit(|&b| b == b'.')
                .next()
                .filter(|e| e.len() < last.len())
        })
        .map(|e| String::from_utf8_lossy(e).to_ascii_lowercase());
    match ext.as_deref() {
        Some("html") => return Some(b"text/html".to_vec()),
        Some("gif") => return Some(b"image/gif".to_vec()),
        Some("jpg") => return Some(b"image/jpeg".to_vec()),
        _ => {}
    }
    if kong {
        None
    } else {
        Some(b"text/plain".to_vec())
    }
}

/// The status line's headers as nginx's header filter writes them.
fn client_headers(s: &Stream) -> Vec<(String, Vec<u8>)> {
    let resp = &s.resp;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let no_content = resp.status == 204;
    if let Some(ct) = resp
        .content_type
        .as_ref()
        .filter(|c| !c.is_empty() && !no_content)
    {
        out.push(("Content-Type".to_string(), ct.clone()));
    }
    let has_cl = resp.headers.contains(b"Content-Length");
    if !has_cl && resp.content_length_n >= 0 && !no_content {
        out.push((
            "Content-Length".to_string(),
            resp.content_length_n.to_string().into_bytes(),
        ));
    }
    let chunked = s.req.version == HttpVersion::Http11
        && !has_cl
        && (resp.content_length_n < 0 || no_content)
        && !resp.header_only
        && !(no_content || resp.status == 304 || s.req.method == b"HEAD");
    if chunked {
        out.push(("Transfer-Encoding".to_string(), b"chunked".to_vec()));
    }
    if s.req.version != HttpVersion::Http2 {
        let keepalive = s.response_keepalive();
        let value: &[u8] = if resp.status == 101 {
            b"upgrade"
        } else if keepalive {
            b"keep-alive"
        } else {
            b"close"
        };
        out.push(("Connection".to_string(), value.to_vec()));
    }
    for (n, v) in resp.headers.iter() {
        let name = String::from_utf8_lossy(n).into_owned();
        let name = if s.req.version == HttpVersion::Http2 {
            name.to_ascii_lowercase()
        } else {
            name
        };
        out.push((name, v.to_vec()));
    }
    out
}

/// What the client receives.
fn outcome(s: &Stream) -> ClientResponse {
    let mut body = s.resp.body_sent.clone();
    let mut framing_error = None;
    let announced = s
        .client_headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
    if s.resp.header_only {
        body.clear();
    } else if let Some(n) = announced {
        if body.len() > n {
            framing_error = Some(format!(
                "{} body bytes sent with Content-Length: {n}; the client reads {n} and sees the rest as garbage",
                body.len()
            ));
            body.truncate(n);
        } else if body.len() < n {
            framing_error = Some(format!(
                "{} body bytes sent with Content-Length: {n}; the client waits for the missing bytes",
                body.len()
            ));
        }
    }
    ClientResponse {
        status: s.resp.status,
        headers: s.client_headers.clone(),
        body,
        local: s.local_sent,
        upstream_requests: s.upstream_requests,
        trapped: s.trapped,
        stalled: false,
        framing_error,
        host_fault: None,
    }
}

/// The chain of a buffered response body (`ngx_http_wasm_body_filter_buffer`):
/// the bytes copied into the module's buffers (up to their capacity), the
/// rest of the chunk that filled them, and the incoming empty last buffer,
/// which is linked as it is.
fn buffered_chain(total: usize, cap: usize, last_in: &Chunk) -> Vec<Buf> {
    let own = total.min(cap);
    let mut bufs = vec![Buf {
        len: own,
        tag: BufTag::Module,
    }];
    let rest_tag = last_in
        .bufs
        .last()
        .map_or(BufTag::Host(faults::UPSTREAM_BUF), |b| b.tag);
    if total > own {
        bufs.push(Buf {
            len: total - own,
            tag: rest_tag,
        });
    }
    if last_in.last && last_in.data.is_empty() {
        bufs.push(Buf {
            len: 0,
            tag: rest_tag,
        });
    }
    bufs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_normalisation() {
        assert_eq!(normalize_uri("/a/%7Eb/../c").as_deref(), Some(&b"/a/c"[..]));
        assert_eq!(normalize_uri("//a///b/").as_deref(), Some(&b"/a/b/"[..]));
        assert_eq!(normalize_uri("/.."), None);
        assert_eq!(normalize_uri("/%zz"), None);
    }

    #[test]
    fn crc() {
        assert_eq!(crc32(&[b"123456789"]), 0xcbf4_3926);
    }
}
