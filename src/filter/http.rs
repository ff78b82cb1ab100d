//! HTTP context: one per request. A small state machine over the host's steps:
//!
//! ```text
//! request headers ──(no body)──────────────┐
//!        └─(body expected)→ request body ──┤ POST /sideband/request
//!                                          ▼
//!                     deny → local reply   allow ─┬─ hook off: apply directives, Kong proxies
//!                                                 └─ hook on: call the upstream ourselves,
//!                                                    POST /sideband/response, local reply
//! ```
//!
//! Every failure goes through [`Http::fail`], which answers the client.

use super::host::{self, Map};
use super::USER_AGENT;
use crate::backoff::Backoff;
use crate::cert;
use crate::config::Config;
use crate::debug;
use crate::decision::{self, CallResult, Directives, HeaderOp, RequestOutcome};
use crate::failure::{Call, Failure, Level};
use crate::json;
use crate::local_reply::{BodyCut, ChunkAction, Plan};
use crate::reply::{Members, Reply};
use crate::request::{self, ClientRequest, Header, MAX_HEADERS};
use crate::response_hook::{self, Context as HookContext, UpstreamResponse};
use crate::slots::{self, HeaderFix};
use crate::upstream::{self, Routing, Target};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Nothing decided yet.
    Start,
    /// The request has a body; waiting for `on_http_request_body`.
    AwaitingBody,
    /// `/sideband/request` in flight.
    SidebandRequest,
    /// The response hook's upstream call in flight.
    Upstream,
    /// `/sideband/response` in flight.
    SidebandResponse,
    /// Allowed; the host proxies the (modified) request.
    Forwarded,
    /// The filter answered with a local response.
    Replied,
}

pub struct Http {
    config: Option<Rc<Config>>,
    backoff: Rc<RefCell<Backoff>>,
    stage: Stage,
    token: Option<u32>,
    /// The request as sent to the policy provider.
    request: ClientRequest,
    /// Every request header, raw, for the response hook's upstream call.
    all_headers: Vec<Header>,
    /// The raw request target (`$request_uri`).
    client_target: String,
    client_host: String,
    /// The `/sideband/request` payload (sent back as `request` without state).
    payload: String,
    directives: Directives,
    target: Option<Target>,
    upstream_response: Option<UpstreamResponse>,
    /// How the local reply sent is delivered exactly.
    plan: Option<Plan>,
    body_cut: BodyCut,
    /// Where the body's JSON literal stands in `payload`.
    body_range: Option<std::ops::Range<usize>>,
    /// Size of a body the host could not hand over (spooled to a file).
    unread_body_size: usize,
}

impl Http {
    pub fn new(config: Option<Rc<Config>>, backoff: Rc<RefCell<Backoff>>) -> Self {
        Http {
            config,
            backoff,
            stage: Stage::Start,
            token: None,
            request: ClientRequest::default(),
            all_headers: Vec::new(),
            client_target: String::new(),
            client_host: String::new(),
            payload: String::new(),
            directives: Directives::default(),
            target: None,
            upstream_response: None,
            plan: None,
            body_cut: BodyCut::default(),
            unread_body_size: 0,
            body_range: None,
        }
    }

    fn debug_enabled(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.enable_debug_logging)
    }

    /// Logs the failure and answers the client with its response.
    fn fail(&mut self, failure: Failure) {
        let (level, message) = failure.log();
        host::log(level, &message);
        if let Failure::RateLimited {
            retry_after_secs,
            from_provider: true,
        } = failure
        {
            let now = self.get_current_time();
            self.backoff.borrow_mut().trip(now, retry_after_secs.max(1));
        }
        self.send(failure.reply());
    }

    /// Sends a local response, delivered exactly per [`Plan`]: the header
    /// and body fix-ups run in `on_http_response_headers` and
    /// `on_http_response_body`, which the host runs for local responses too.
    fn send(&mut self, reply: Reply) {
        self.stage = Stage::Replied;
        self.token = None;
        let plan = Plan::new(&reply);
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let body = reply.body.get(..plan.send_len).filter(|b| !b.is_empty());
        self.send_http_response(u32::from(reply.status), headers, body);
        self.body_cut = BodyCut::new(&plan);
        self.plan = Some(plan);
    }

    /// Reads what the host knows about the client request.
    fn read_request(&mut self) -> Result<bool, Failure> {
        let (map, declared) = host::header_map_counted(Map::HttpRequestHeaders);
        if request::header_map_may_be_truncated(declared.max(map.len())) {
            return Err(Failure::TooManyHeaders {
                visible: map.iter().filter(|(n, _)| !n.starts_with(':')).count(),
            });
        }
        let pseudo =
            |name: &str| host::find(&map, name).map(|v| String::from_utf8_lossy(v).into_owned());
        let method = pseudo(":method").unwrap_or_default();
        let colon_path = pseudo(":path").unwrap_or_default();
        self.all_headers = map
            .iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .map(|(n, v)| Header::new(n, v.clone()))
            .collect();
        let header =
            |name: &str| host::find(&map, name).map(|v| String::from_utf8_lossy(v).into_owned());
        self.client_host = header("host").unwrap_or_default();

        let raw_target =
            host::property_text(&["request", "path"]).unwrap_or_else(|| colon_path.clone());
        self.client_target = raw_target.clone();
        let (raw_path, target_query) = match raw_target.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (raw_target.clone(), String::new()),
        };
        let raw_query =
            host::property(&["request", "query"]).unwrap_or_else(|| target_query.into_bytes());

        let scheme = host::property_text(&["kong", "request", "forwarded_scheme"])
            .or_else(|| host::property_text(&["request", "scheme"]))
            .or_else(|| pseudo(":scheme"))
            .unwrap_or_else(|| "http".into())
            .to_ascii_lowercase();
        let authority = pseudo(":authority").unwrap_or_default();
        let host_name = host::property_text(&["kong", "request", "forwarded_host"])
            .or_else(|| host::property_text(&["ngx", "host"]))
            .unwrap_or_else(|| strip_port(&self.client_host).to_string())
            .to_ascii_lowercase();
        let port = host::property_text(&["kong", "request", "forwarded_port"])
            .or_else(|| host::property_text(&["ngx", "server_port"]))
            .or_else(|| authority.rsplit_once(':').map(|(_, p)| p.to_string()))
            .unwrap_or_else(|| {
                if scheme == "https" {
                    "443".into()
                } else {
                    "80".into()
                }
            });

        let (source_ip, source_port) = source();
        let http_version = host::property_text(&["request", "protocol"])
            .map(|p| request::http_version_label(&p))
            .unwrap_or_else(|| "1.1".into());

        let client_certificate = match host::property(&["ngx", "ssl_client_raw_cert"]) {
            Some(pem) if !pem.is_empty() => match cert::client_certificate_json(&pem) {
                Ok(json) => Some(json),
                Err(e) => {
                    return Err(Failure::BadClientCertificate {
                        error: e.to_string(),
                    })
                }
            },
            _ => None,
        };

        let has_body = header("content-length")
            .map(|v| v.trim().parse::<u64>().map_or(true, |n| n > 0))
            .unwrap_or(false)
            || header("transfer-encoding").is_some();

        self.request = ClientRequest {
            source_ip,
            source_port,
            method,
            scheme,
            host: host_name,
            port,
            path: request::normalize_path(raw_path.as_bytes()),
            raw_query,
            headers: self.all_headers.iter().take(MAX_HEADERS).cloned().collect(),
            body: None,
            http_version,
            client_certificate,
        };
        Ok(has_body)
    }

    /// Posts a payload to `/sideband/<call>`.
    fn call_sideband(&mut self, call: Call, payload: &str) -> Result<(), Failure> {
        let Some(config) = self.config.clone() else {
            return Err(Failure::Host {
                what: "filter has no configuration".into(),
            });
        };
        let now = self.get_current_time();
        if let Some(secs) = self.backoff.borrow_mut().remaining(now) {
            return Err(Failure::RateLimited {
                retry_after_secs: secs,
                from_provider: false,
            });
        }
        let url = &config.service_url;
        let path = url.sideband_path(call.path());
        let authority = url.authority();
        let headers: Vec<(&str, &str)> = vec![
            (":method", "POST"),
            (":path", &path),
            (":authority", &authority),
            (":scheme", url.scheme.as_str()),
            ("content-type", "application/json"),
            ("user-agent", USER_AGENT),
            (&config.secret_header_name, config.shared_secret.expose()),
        ];
        if config.enable_debug_logging {
            let owned: Vec<(String, String)> = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            let label = match call {
                Call::Request => "Sending sideband request to policy provider:",
                Call::Response => "Sending sideband response request to policy provider:",
            };
            host::log(
                Level::Debug,
                &format!(
                    "{label}\n{}",
                    debug::dump_call(
                        &path,
                        &owned,
                        &config.secret_header_name,
                        payload.as_bytes()
                    )
                ),
            );
        }
        let timeout = Duration::from_millis(u64::from(config.connection_timeout_ms));
        match self.dispatch_http_call(
            &authority,
            headers,
            Some(payload.as_bytes()),
            vec![],
            timeout,
        ) {
            Ok(token) => {
                self.token = Some(token);
                self.stage = match call {
                    Call::Request => Stage::SidebandRequest,
                    Call::Response => Stage::SidebandResponse,
                };
                Ok(())
            }
            Err(status) => Err(Failure::Unreachable {
                call,
                target: authority,
                detail: format!("the host refused the call ({})", host::status_name(status)),
            }),
        }
    }

    fn start_request_call(&mut self) -> Action {
        let (payload, body_range) = self.request.payload_and_body_range();
        self.payload = payload;
        self.body_range = body_range;
        let payload = std::mem::take(&mut self.payload);
        let result = self.call_sideband(Call::Request, &payload);
        self.payload = payload;
        if let Err(f) = result {
            self.fail(f);
        }
        Action::Pause
    }

    /// The common checks of a sideband reply (transport, 429, JSON, 4xx, 5xx).
    fn checked_reply(&self, call: Call, r: CallResult<'_>) -> Result<Members, Failure> {
        let target = self
            .config
            .as_ref()
            .map(|c| c.service_url.authority())
            .unwrap_or_default();
        decision::check_reply(call, &target, r, self.get_current_time())
    }

    fn on_request_reply(&mut self, r: CallResult<'_>) {
        let outcome = self.checked_reply(Call::Request, r).and_then(|members| {
            let literal = self.body_range.clone().and_then(|r| self.payload.get(r));
            decision::interpret(&members, &self.request, literal, self.debug_enabled())
        });
        match outcome {
            Err(f) => self.fail(f),
            Ok(RequestOutcome::Deny(reply)) => {
                if self.debug_enabled() {
                    host::log(
                        Level::Debug,
                        &format!(
                            "Request authorization denied by the policy provider, returning status {} to client.",
                            reply.status
                        ),
                    );
                }
                self.send(reply);
            }
            Ok(RequestOutcome::Allow(d)) => {
                for w in &d.warnings {
                    host::log(Level::Warn, w);
                }
                if self.debug_enabled() {
                    for n in &d.notes {
                        host::log(Level::Debug, n);
                    }
                }
                self.directives = d;
                let hook = self.config.as_ref().is_some_and(|c| c.enable_response_hook);
                if hook {
                    if let Err(f) = self.call_upstream() {
                        self.fail(f);
                    }
                } else {
                    self.forward();
                }
            }
        }
    }

    /// Response hook off: apply the directives to the request the host
    /// proxies. Inside Kong the upstream path, query and Host are Kong's
    /// `ngx.upstream_uri` / `ngx.upstream_host`.
    fn forward(&mut self) {
        // Nothing reads the directives after this (the host proxies from here on).
        let d = std::mem::take(&mut self.directives);
        if d.body.is_some() {
            self.fail(Failure::BodyChangeUnsupported);
            return;
        }
        let ops: Vec<HeaderOp> = d
            .header_ops
            .iter()
            .filter(|op| !matches!(op, HeaderOp::Remove(n) | HeaderOp::Set(n, _) if n == "host"))
            .cloned()
            .collect();
        let (fixes, warnings) = slots::request_changes(&ops, &self.request.headers);
        for w in &warnings {
            host::log(Level::Warn, w);
        }
        for fix in &fixes {
            apply(Map::HttpRequestHeaders, fix);
        }
        if let Some(m) = &d.method {
            host::set_header(Map::HttpRequestHeaders, ":method", Some(m));
        }
        let kong_uri = host::property(&["ngx", "upstream_uri"]);
        if d.path.is_some() || d.query.is_some() {
            match &kong_uri {
                Some(uri) => {
                    let (new_uri, _) = upstream::rewrite(&String::from_utf8_lossy(uri), "", &d);
                    if !host::set_property(&["ngx", "upstream_uri"], new_uri.as_bytes()) {
                        self.fail(Failure::Host {
                            what: "cannot set ngx.upstream_uri".into(),
                        });
                        return;
                    }
                }
                None => {
                    // Read through the bounds-checked map reader: the SDK's
                    // getter unwraps UTF-8, and `:path` is nginx's decoded $uri.
                    let map = host::header_map(Map::HttpRequestHeaders);
                    let current = host::find(&map, ":path")
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    let (new_path, _) = upstream::rewrite(&current, "", &d);
                    host::set_header(Map::HttpRequestHeaders, ":path", Some(&new_path));
                }
            }
        }
        if let Some(h) = &d.host {
            if kong_uri.is_some() {
                if !host::set_property(&["ngx", "upstream_host"], h.as_bytes()) {
                    self.fail(Failure::Host {
                        what: "cannot set ngx.upstream_host".into(),
                    });
                    return;
                }
            } else {
                host::set_header(Map::HttpRequestHeaders, "host", Some(h));
            }
        }
        self.stage = Stage::Forwarded;
        self.resume_http_request();
    }

    /// Response hook on: send the (modified) request to the upstream ourselves.
    fn call_upstream(&mut self) -> Result<(), Failure> {
        let Some(config) = self.config.clone() else {
            return Err(Failure::Host {
                what: "filter has no configuration".into(),
            });
        };
        let routing = Routing {
            kong_service: host::property(&["kong", "router", "service"]),
            upstream_uri: host::property(&["ngx", "upstream_uri"]),
            upstream_host: host::property(&["ngx", "upstream_host"]),
            client_target: self.client_target.clone(),
            client_host: self.client_host.clone(),
        };
        let target = upstream::resolve(
            &routing,
            config.upstream_url.as_ref(),
            config.upstream_timeout_ms,
        )
        .map_err(|what| Failure::NoUpstream { what })?;
        let d = &self.directives;
        let (path, authority) = upstream::rewrite(&target.path, &target.authority, d);
        let method = d
            .method
            .clone()
            .unwrap_or_else(|| self.request.method.clone());
        let body = match (&d.body, &self.request.body) {
            (Some(b), _) => b.clone(),
            (None, Some(b)) => b.clone(),
            (None, None) => {
                return Err(Failure::RequestBodyUnreadable {
                    size: self.unread_body_size,
                })
            }
        };
        let mut headers = self.all_headers.clone();
        d.apply_headers(&mut headers);
        headers.retain(|h| {
            !response_hook::is_hop_by_hop(&h.name) && h.name != "host" && h.name != "content-length"
        });
        let forwarded_for = match headers.iter().find(|h| h.name == "x-forwarded-for") {
            Some(h) => format!(
                "{}, {}",
                String::from_utf8_lossy(&h.value),
                self.request.source_ip
            ),
            None => self.request.source_ip.clone(),
        };
        headers.retain(|h| !h.name.starts_with("x-forwarded-") && h.name != "x-real-ip");
        for (name, value) in [
            ("x-forwarded-for", forwarded_for),
            ("x-forwarded-proto", self.request.scheme.clone()),
            ("x-forwarded-host", self.request.host.clone()),
            ("x-forwarded-port", self.request.port.clone()),
            ("x-real-ip", self.request.source_ip.clone()),
        ] {
            headers.push(Header::new(name, value.into_bytes()));
        }
        // The SDK's dispatch takes text values: a header value that is not
        // UTF-8 travels as the UTF-8 of its Latin-1 text (see `json`).
        let texts: Vec<(String, String)> = headers
            .iter()
            .map(|h| (h.name.clone(), json::text(&h.value).into_owned()))
            .collect();
        let mut call_headers: Vec<(&str, &str)> = vec![
            (":method", &method),
            (":path", &path),
            (":authority", &authority),
            (":scheme", target.scheme.as_str()),
        ];
        call_headers.extend(texts.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let timeout = Duration::from_millis(u64::from(target.timeout_ms));
        let address = target.address.clone();
        match self.dispatch_http_call(&address, call_headers, Some(&body), vec![], timeout) {
            Ok(token) => {
                self.token = Some(token);
                self.stage = Stage::Upstream;
                self.target = Some(target);
                Ok(())
            }
            Err(status) => Err(Failure::UpstreamFailed {
                target: address,
                detail: format!("the host refused the call ({})", host::status_name(status)),
            }),
        }
    }

    fn on_upstream_response(
        &mut self,
        status: Option<u16>,
        dispatch_status: Option<&str>,
        map: &[(String, Vec<u8>)],
        body_size: usize,
    ) {
        let target = self
            .target
            .as_ref()
            .map(|t| t.address.clone())
            .unwrap_or_default();
        let Some(status) = status else {
            self.fail(Failure::UpstreamFailed {
                target,
                detail: dispatch_status
                    .unwrap_or("no :status in the response")
                    .to_string(),
            });
            return;
        };
        let limit = self
            .config
            .as_ref()
            .map_or(0, |c| c.max_response_body_bytes);
        if body_size > limit {
            self.fail(Failure::UpstreamTooLarge {
                size: body_size,
                limit,
            });
            return;
        }
        let body = host::call_response_body(body_size);
        let upstream = UpstreamResponse {
            status,
            headers: map
                .iter()
                .filter(|(n, _)| !n.starts_with(':'))
                .map(|(n, v)| Header::new(n, v.clone()))
                .collect(),
            body,
        };
        let d = &self.directives;
        let method = d
            .method
            .clone()
            .unwrap_or_else(|| self.request.method.clone());
        let query = match &d.query {
            Some(q) => request::normalize_query(q.as_bytes()),
            None => request::normalize_query(&self.request.raw_query),
        };
        let r = &self.request;
        let url = request::url_bytes(&r.scheme, &r.host, &r.port, &r.path, &query);
        let context = match &d.state {
            Some(raw) => HookContext::State(raw),
            None => HookContext::Request(&self.payload),
        };
        let payload = response_hook::payload(&method, &url, &upstream, &r.http_version, context);
        self.upstream_response = Some(upstream);
        if let Err(f) = self.call_sideband(Call::Response, &payload) {
            self.fail(f);
        }
    }

    fn on_response_reply(&mut self, r: CallResult<'_>) {
        let upstream = self.upstream_response.take().unwrap_or_default();
        let outcome = self
            .checked_reply(Call::Response, r)
            .and_then(|members| response_hook::client_response(&members, &upstream));
        match outcome {
            Ok(reply) => self.send(reply),
            Err(f) => self.fail(f),
        }
    }
}

/// One header change through the non-trapping wrappers.
fn apply(map: Map, fix: &HeaderFix) {
    match fix {
        HeaderFix::Remove(n) => host::set_header(map, n, None),
        HeaderFix::Set(n, v) => host::set_header(map, n, Some(v)),
        HeaderFix::Add(n, v) => host::add_header(map, n, v),
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split_once(']')
            .map_or(host, |(h, _)| h.get(..h.len() + 1).unwrap_or(host));
    }
    host.split_once(':').map_or(host, |(h, _)| h)
}

/// Client address and port: `source.address` may be `ip` (nginx) or
/// `ip:port` (Envoy); `source.port` may be text (nginx) or a little-endian
/// integer (Envoy).
fn source() -> (String, String) {
    let address = host::property_text(&["source", "address"]).unwrap_or_default();
    let (mut ip, mut port) = (address.clone(), String::new());
    if let Ok(sa) = address.parse::<std::net::SocketAddr>() {
        ip = sa.ip().to_string();
        port = sa.port().to_string();
    }
    if let Some(p) = host::property(&["source", "port"]) {
        if !p.is_empty() && p.iter().all(u8::is_ascii_digit) {
            port = String::from_utf8_lossy(&p).into_owned();
        } else if let Ok(arr) = <[u8; 8]>::try_from(p.as_slice()) {
            port = u64::from_le_bytes(arr).to_string();
        }
    }
    (ip, port)
}

impl Context for Http {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if self.token != Some(token) {
            return;
        }
        self.token = None;
        let map = host::header_map(Map::HttpCallResponseHeaders);
        let text =
            |name: &str| host::find(&map, name).map(|v| String::from_utf8_lossy(v).into_owned());
        let dispatch_status = text(":dispatch_status");
        // A call the host reports as failed is failed, even with a `:status`
        // (a read that timed out mid-body): its body is partial or gone.
        let status = text(":status")
            .and_then(|s| s.trim().parse::<u16>().ok())
            .filter(|_| decision::dispatch_ok(dispatch_status.as_deref()));
        let body_size = if status.is_some() { body_size } else { 0 };
        if self.stage == Stage::Upstream {
            self.on_upstream_response(status, dispatch_status.as_deref(), &map, body_size);
            return;
        }
        let body = host::call_response_body(body_size);
        if self.debug_enabled() {
            let headers: Vec<(String, String)> = map
                .iter()
                .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect();
            host::log(
                Level::Debug,
                &format!(
                    "Received sideband response from policy provider:\n{}",
                    debug::dump_reply(status, &headers, &body)
                ),
            );
        }
        let retry_after = text("retry-after");
        let r = CallResult {
            status,
            dispatch_status: dispatch_status.as_deref(),
            retry_after: retry_after.as_deref(),
            body: &body,
        };
        match self.stage {
            Stage::SidebandRequest => self.on_request_reply(r),
            Stage::SidebandResponse => self.on_response_reply(r),
            _ => {}
        }
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.config.is_none() {
            self.fail(Failure::Host {
                what: "filter has no valid configuration".into(),
            });
            return Action::Pause;
        }
        let has_body = match self.read_request() {
            Ok(b) => b,
            Err(f) => {
                self.fail(f);
                return Action::Pause;
            }
        };
        if has_body {
            self.stage = Stage::AwaitingBody;
            return Action::Continue;
        }
        self.request.body = Some(Vec::new());
        self.start_request_call()
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        match self.stage {
            Stage::AwaitingBody if !end_of_stream => Action::Pause,
            Stage::AwaitingBody => {
                let body = if body_size == 0 {
                    Some(Vec::new())
                } else {
                    host::buffer(BufferType::HttpRequestBody, body_size)
                };
                if body.is_none() {
                    self.unread_body_size = body_size;
                    host::log(
                        Level::Warn,
                        &format!(
                            "request body of {body_size} bytes cannot be read (larger than \
                             client_body_buffer_size); it is not sent to the policy provider"
                        ),
                    );
                }
                self.request.body = body;
                self.start_request_call()
            }
            Stage::Forwarded if body_size > 0 => {
                self.fail(Failure::Host {
                    what: "a request body arrived after the request was authorized without one \
                           (no Content-Length or Transfer-Encoding); refusing it"
                        .into(),
                });
                Action::Pause
            }
            _ => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match self.stage {
            Stage::Replied => {
                // Header changes are free functions: borrowing the plan suffices.
                let Some(plan) = &self.plan else {
                    return Action::Continue;
                };
                for w in &plan.warnings {
                    host::log(Level::Warn, w);
                }
                for fix in &plan.header_fixes {
                    apply(Map::HttpResponseHeaders, fix);
                }
                Action::Continue
            }
            // Never saw the request: an earlier filter of the chain answered.
            Stage::Forwarded | Stage::Start => Action::Continue,
            Stage::AwaitingBody
            | Stage::SidebandRequest
            | Stage::Upstream
            | Stage::SidebandResponse => {
                // The host proxied the request before a decision: it announced
                // a body (Transfer-Encoding) but sent none, and the host skips the
                // body step for empty bodies; or the host went on without calling
                // back a failed dispatch (Kong 3.8). Do not let the response through.
                host::log(
                    Level::Error,
                    "the upstream was called before a policy decision (request announced a body but \
                     sent none, so the host skipped the body step); answering 502",
                );
                // Not `connection`: the host's handler for it reads the value a
                // remove does not have (ngx_http_wasm_set_connection_header_handler)
                // and crashes the worker; it is set to `close` below.
                let names: Vec<String> = host::header_map(Map::HttpResponseHeaders)
                    .into_iter()
                    .map(|(n, _)| n)
                    .filter(|n| !n.starts_with(':') && !n.eq_ignore_ascii_case("connection"))
                    .collect();
                for n in names {
                    host::set_header(Map::HttpResponseHeaders, &n, None);
                }
                self.send(Reply::empty(502));
                host::set_header(Map::HttpResponseHeaders, "content-length", Some("0"));
                // The upstream's body still comes and must be dropped, which
                // empties the host's buffers: safe only if nginx does not
                // reuse this connection (see `local_reply`).
                host::set_header(Map::HttpResponseHeaders, "connection", Some("close"));
                self.body_cut = BodyCut::discard();
                Action::Continue
            }
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if self.stage != Stage::Replied {
            return Action::Continue;
        }
        match self.body_cut.on_chunk(body_size) {
            ChunkAction::Keep => {}
            ChunkAction::CutFrom(at) => host::set_response_body(at, body_size - at),
            ChunkAction::Empty => host::set_response_body(0, body_size),
            ChunkAction::CannotCut => host::log(
                Level::Error,
                "the host handed over the local reply's final newline as a chunk of its own; \
                 it is left in place (cutting it would corrupt the worker's memory)",
            ),
        }
        Action::Continue
    }
}
