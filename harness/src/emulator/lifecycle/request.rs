//! The request side: a new request as nginx reads it, nginx's checks and
//! Kong's `access` phase before the filters, attaching the filter chain,
//! the access phase (`on_http_request_headers`), the content phase (body
//! step, then a local response or proxying), and a request that waits or
//! stalls.

use super::Host;
use crate::emulator::api::{BodyMode, ClientRequest, ClientResponse, HttpVersion, LogLevel};
use crate::emulator::headers::HeaderList;
use crate::emulator::state::{
    Action, Buf, BufTag, CallOwner, Chain, Ecode, EnvState, Exec, Phase, Rc, Request, Response,
    Stage, Step, Stream,
};
use crate::emulator::{builtins, faults, kong, maps, properties};
use std::collections::HashMap;
use std::time::{Instant, SystemTime};

impl Host {
    pub(super) fn new_stream(&mut self, sid: u64, chain: usize, req: ClientRequest) -> Stream {
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
    pub(super) fn begin(&mut self, sid: u64) {
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
    pub(super) fn root_failed(&self, sid: u64, index: usize) -> bool {
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
    pub(super) fn kong_access(&mut self, sid: u64) -> bool {
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
    pub(super) fn access(&mut self, sid: u64) {
        match self.pw_resume(sid, Phase::Access, Step::ReqHeaders) {
            Rc::Again => self.wait(sid),
            Rc::Ok | Rc::Done => self.content(sid),
            Rc::Error | Rc::Status500 => self.finalize_error(sid, 500),
        }
    }

    /// The request waits for its dispatches; with none pending it would wait
    /// forever (a real client times out).
    pub(super) fn wait(&mut self, sid: u64) {
        if let Some(s) = self.stream_mut(sid) {
            s.state = EnvState::Yield;
            s.stage = Stage::Waiting;
        }
        self.check_stall(sid);
    }

    pub(super) fn pending_calls(&self, sid: u64) -> usize {
        self.ctx()
            .calls
            .values()
            .filter(|c| matches!(c.owner, CallOwner::Http { stream, .. } if stream == sid))
            .filter(|c| c.result.is_none())
            .count()
    }

    pub(super) fn check_stall(&mut self, sid: u64) {
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

    pub(super) fn stall(&mut self, sid: u64) {
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
    pub(super) fn content(&mut self, sid: u64) {
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
    pub(super) fn wev(&mut self, sid: u64) {
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
}

/// nginx's `$uri`: percent-decoded, dot segments resolved, slashes merged.
/// `None` for a path nginx rejects (400).
fn normalize_uri(raw: &str) -> Option<Vec<u8>> {
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
}
