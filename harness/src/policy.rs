//! A Sideband API policy server (a stand-in for PingAuthorize / PingOne
//! Authorize / PingAccess), and a scriptable mock for error tests.
//!
//! [`PolicyServer`] answers `POST …/sideband/request` and `POST …/sideband/response`
//! from a [`Policy`] (a JSON policy file, see `docs/policy-server.md`):
//!
//! 1. a body larger than `request_limit_bytes` → 413 JSON;
//! 2. a missing or unknown shared secret → 401
//!    `{"message":"The Gateway Token is invalid","id":"…"}`;
//! 3. over the rate limit → 429 with `Retry-After`;
//! 4. not JSON, or a payload missing a field → 400 JSON naming the field;
//! 5. otherwise the rules decide: a deny (`{"response": {…}}`), or the request
//!    to forward (plus `state` in the `state` context method); for responses,
//!    the response the gateway must return.
//!
//! Every call is recorded as an [`Exchange`] ([`PolicyServer::received`]) and
//! every decision is logged as one line on stderr (never the secret), e.g.
//! `[sideband] decision=deny phase=request rule=deny-admin method=GET path=/echo/admin status=403`.
//!
//! [`MockSideband`] records calls the same way but answers with a closure.

pub mod config;
pub mod engine;
pub mod util;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

pub use config::{
    ContextMethod, DefaultDecision, DenySpec, OneOrMany, OrderedMap, Policy, PolicyError,
    RateLimit, RequestAction, RequestMatch, RequestModify, RequestRule, ResponseAction,
    ResponseMatch, ResponseModify, ResponseRule, StatusList, DEFAULT_SECRET_HEADER,
};
pub use engine::{
    decide_request, decide_response, decode_state, encode_state, Decision, Outcome, RequestPayload,
    ResponsePayload,
};

use crate::http::{find_header, Headers, Request, Response, Server};

/// The message PingAuthorize sends with a 401 for a bad shared secret.
pub const INVALID_TOKEN_MESSAGE: &str = "The Gateway Token is invalid";

/// At most this many log lines are kept in memory.
const MAX_LOG_LINES: usize = 10_000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------
// Exchange
// ---------------------------------------------------------------------------

/// Which sideband endpoint a call was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `…/sideband/request`
    Request,
    /// `…/sideband/response`
    Response,
}

/// The answer a server gave to a recorded call.
#[derive(Debug, Clone)]
pub struct RecordedReply {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl RecordedReply {
    /// The reply body parsed as JSON (`None` when it is not JSON).
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// One call received by a [`PolicyServer`] or [`MockSideband`].
#[derive(Debug, Clone)]
pub struct Exchange {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// The path without the query.
    pub path: String,
    /// Header lines in wire order (names as sent).
    pub headers: Headers,
    /// The raw body bytes.
    pub body: Vec<u8>,
    /// The body parsed as JSON (`None` when it is not JSON).
    pub json: Option<Value>,
    pub peer: SocketAddr,
    pub tls: bool,
    /// The answer; `None` while a [`MockSideband`] handler runs.
    pub reply: Option<RecordedReply>,
    /// The rules that matched, in evaluation order (`default` for the
    /// default deny), as in the decision log line; empty when the call was
    /// rejected before the rules ran, or no rule matched, and for
    /// [`MockSideband`] calls.
    pub rules: Vec<String>,
}

impl Exchange {
    fn from_request(request: &Request) -> Exchange {
        Exchange {
            method: request.method.clone(),
            target: request.target.clone(),
            path: request.path().to_string(),
            headers: request.headers.clone(),
            body: request.body.clone(),
            json: serde_json::from_slice(&request.body).ok(),
            peer: request.peer,
            tls: request.tls,
            reply: None,
            rules: Vec::new(),
        }
    }

    /// The endpoint, from the path's ending (any base path is accepted).
    pub fn phase(&self) -> Option<Phase> {
        if self.path.ends_with("/sideband/request") {
            Some(Phase::Request)
        } else if self.path.ends_with("/sideband/response") {
            Some(Phase::Response)
        } else {
            None
        }
    }

    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        find_header(&self.headers, name)
    }

    /// The first value of a header as text (lossy UTF-8).
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The body as text (lossy UTF-8).
    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A top-level field of the JSON body.
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.json.as_ref().and_then(|json| json.get(name))
    }

    /// Whether the rule named `rule` matched this call.
    pub fn matched(&self, rule: &str) -> bool {
        self.rules.iter().any(|r| r == rule)
    }
}

fn record_reply(response: &Response) -> RecordedReply {
    RecordedReply {
        status: response.status,
        headers: response.headers.clone(),
        body: response.body.clone(),
    }
}

// ---------------------------------------------------------------------------
// Policy server
// ---------------------------------------------------------------------------

struct RateWindow {
    started: Instant,
    count: u32,
}

struct Shared {
    policy: Mutex<Policy>,
    exchanges: Mutex<Vec<Exchange>>,
    log: Mutex<Vec<String>>,
    window: Mutex<RateWindow>,
    next_id: AtomicU64,
    log_to_stderr: AtomicBool,
}

impl Shared {
    fn log(&self, line: String) {
        if self.log_to_stderr.load(Ordering::SeqCst) {
            eprintln!("{line}");
        }
        let mut log = lock(&self.log);
        if log.len() < MAX_LOG_LINES {
            log.push(line);
        }
    }

    /// An error id like PingAuthorize's (unique per server run).
    fn new_id(&self) -> String {
        let count = self.next_id.fetch_add(1, Ordering::SeqCst);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default();
        format!("{:08x}-{count:04x}", (nanos >> 10) as u32)
    }
}

/// The Sideband API policy server.
pub struct PolicyServer {
    server: Server,
    shared: Arc<Shared>,
}

impl PolicyServer {
    /// Validates `policy` and serves it on `bind` (e.g. `127.0.0.1:0`), plain or TLS.
    pub fn start(
        policy: Policy,
        bind: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> io::Result<PolicyServer> {
        policy
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        let shared = Arc::new(Shared {
            policy: Mutex::new(policy),
            exchanges: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            window: Mutex::new(RateWindow {
                started: Instant::now(),
                count: 0,
            }),
            next_id: AtomicU64::new(1),
            log_to_stderr: AtomicBool::new(true),
        });
        let handler_shared = Arc::clone(&shared);
        let server = Server::start(
            bind,
            tls,
            Arc::new(move |request: Request| {
                let mut exchange = Exchange::from_request(&request);
                let mut rules = Vec::new();
                let response = answer(&handler_shared, &exchange, &mut rules);
                exchange.reply = Some(record_reply(&response));
                exchange.rules = rules;
                lock(&handler_shared.exchanges).push(exchange);
                response
            }),
        )?;
        Ok(PolicyServer { server, shared })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// A `service_url` for the filter: `http://127.0.0.1:<port>` (or `https://…`).
    pub fn service_url(&self, scheme: &str) -> String {
        self.server.url(scheme)
    }

    /// Every call received so far, in arrival order, with the replies.
    pub fn received(&self) -> Vec<Exchange> {
        lock(&self.shared.exchanges).clone()
    }

    /// The calls received for one endpoint (`.len()` counts them).
    pub fn received_for(&self, phase: Phase) -> Vec<Exchange> {
        self.received()
            .into_iter()
            .filter(|exchange| exchange.phase() == Some(phase))
            .collect()
    }

    /// How many calls the rule named `rule` matched, on either endpoint
    /// (rule names are per list: a request rule and a response rule may
    /// share one; filter [`PolicyServer::received_for`] with
    /// [`Exchange::matched`] to tell them apart).
    pub fn matched_count(&self, rule: &str) -> usize {
        lock(&self.shared.exchanges)
            .iter()
            .filter(|exchange| exchange.matched(rule))
            .count()
    }

    /// Forgets the recorded calls.
    pub fn clear_received(&self) {
        lock(&self.shared.exchanges).clear();
    }

    /// The decision log lines so far (also printed on stderr unless turned off).
    pub fn log_lines(&self) -> Vec<String> {
        lock(&self.shared.log).clone()
    }

    /// Turns printing the log lines on stderr on or off.
    pub fn set_log_to_stderr(&self, enabled: bool) {
        self.shared.log_to_stderr.store(enabled, Ordering::SeqCst);
    }

    /// Replaces the policy (e.g. to rotate secrets) for later calls.
    pub fn set_policy(&self, policy: Policy) -> Result<(), PolicyError> {
        policy.validate()?;
        *lock(&self.shared.policy) = policy;
        Ok(())
    }

    /// A copy of the policy in force.
    pub fn policy(&self) -> Policy {
        lock(&self.shared.policy).clone()
    }

    /// Stops the server (also done on drop).
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

fn error_reply(shared: &Shared, status: u16, message: &str) -> Response {
    Response::json(
        status,
        &json!({ "message": message, "id": shared.new_id() }),
    )
}

/// Logs a rejection that happened before the rules ran.
fn reject(shared: &Shared, phase: &str, status: u16, reason: &str, message: &str) -> Response {
    shared.log(format!(
        "[sideband] decision=reject phase={phase} reason={reason} status={status}"
    ));
    error_reply(shared, status, message)
}

/// Checks the shared secret against every active secret.
fn secret_is_valid(policy: &Policy, exchange: &Exchange) -> bool {
    let values: Vec<&[u8]> = exchange
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case(&policy.secret_header_name))
        .map(|(_, value)| value.as_slice())
        .collect();
    let [value] = values.as_slice() else {
        return false; // Missing, or sent more than once.
    };
    policy
        .shared_secrets
        .iter()
        .any(|secret| secret.as_bytes() == *value)
}

/// Counts the call in the fixed window; `Some(retry_after)` when over the limit.
fn rate_limited(shared: &Shared, limit: &RateLimit) -> Option<Option<String>> {
    let window = Duration::from_millis(limit.window_ms);
    let mut state = lock(&shared.window);
    let now = Instant::now();
    if now.duration_since(state.started) >= window {
        state.started = now;
        state.count = 0;
    }
    state.count = state.count.saturating_add(1);
    if state.count <= limit.max_requests {
        return None;
    }
    let header = match limit.retry_after.as_deref() {
        Some("none") => None,
        Some(fixed) => Some(fixed.to_string()),
        None => {
            let left = window.saturating_sub(now.duration_since(state.started));
            let seconds = left.as_millis().div_ceil(1000).max(1);
            Some(seconds.to_string())
        }
    };
    Some(header)
}

/// The reply to a call; the rules that matched it go to `matched`.
fn answer(shared: &Shared, exchange: &Exchange, matched: &mut Vec<String>) -> Response {
    let policy = lock(&shared.policy).clone();
    let Some(phase) = exchange.phase() else {
        let message = format!("No Sideband API endpoint at {}", exchange.path);
        return reject(shared, "unknown", 404, "unknown-path", &message);
    };
    let phase_name = match phase {
        Phase::Request => "request",
        Phase::Response => "response",
    };
    if exchange.method != "POST" {
        let message = format!("Method {} is not allowed; use POST", exchange.method);
        return reject(shared, phase_name, 405, "method-not-allowed", &message)
            .with_header("Allow", "POST");
    }
    if let Some(limit) = policy.request_limit_bytes {
        if exchange.body.len() > limit {
            let message = format!(
                "The request body of {} bytes exceeds the request limit of {limit} bytes",
                exchange.body.len()
            );
            return reject(shared, phase_name, 413, "request-limit", &message);
        }
    }
    if !secret_is_valid(&policy, exchange) {
        return reject(
            shared,
            phase_name,
            401,
            "invalid-gateway-token",
            INVALID_TOKEN_MESSAGE,
        );
    }
    if let Some(limit) = &policy.rate_limit {
        if let Some(retry_after) = rate_limited(shared, limit) {
            let response = reject(
                shared,
                phase_name,
                429,
                "rate-limit",
                "Too many requests; try again later",
            );
            return match retry_after {
                Some(value) => response.with_header("Retry-After", value),
                None => response,
            };
        }
    }
    let Some(body) = &exchange.json else {
        return reject(
            shared,
            phase_name,
            400,
            "bad-json",
            "The request body is not valid JSON",
        );
    };
    let result = match phase {
        Phase::Request => answer_request(&policy, body),
        Phase::Response => answer_response(&policy, body),
    };
    match result {
        Ok((outcome, method, path)) => {
            let rules = if outcome.rules.is_empty() {
                "-".to_string()
            } else {
                outcome.rules.join(",")
            };
            let status = outcome
                .status
                .map(|s| s.to_string())
                .unwrap_or_else(|| "-".to_string());
            shared.log(format!(
                "[sideband] decision={} phase={phase_name} rule={rules} method={method} path={path} status={status}",
                outcome.decision.as_str()
            ));
            matched.clone_from(&outcome.rules);
            let reply = Response::json(200, &outcome.reply);
            match &outcome.cache_control {
                Some(value) => reply.with_header("Cache-Control", value),
                None => reply,
            }
        }
        Err(message) => reject(shared, phase_name, 400, "bad-payload", &message),
    }
}

/// Decides a `/sideband/request`; returns the outcome, the client method and path.
fn answer_request(policy: &Policy, body: &Value) -> Result<(Outcome, String, String), String> {
    let request = RequestPayload::parse(body)?;
    let mut outcome = decide_request(policy, &request);
    let forwarded = outcome.decision != Decision::Deny;
    if forwarded && policy.request_context_method == ContextMethod::State {
        if let Some(reply) = outcome.reply.as_object_mut() {
            reply.insert("state".to_string(), Value::String(encode_state(&request)));
        }
    }
    let path = util::UrlParts::parse(&request.url).match_path().to_string();
    Ok((outcome, request.method, path))
}

/// Decides a `/sideband/response`.
///
/// The request context comes from `state` or `request` as the context method
/// says. When the gateway sent neither, the rules run without it (like the
/// PingDataGovernance test vectors that post bare responses); a `state` or
/// `request` that is present but unusable is a 400.
fn answer_response(policy: &Policy, body: &Value) -> Result<(Outcome, String, String), String> {
    let response = ResponsePayload::parse(body)?;
    let context = match policy.request_context_method {
        ContextMethod::State => match body.get("state") {
            Some(state) => Some(decode_state(state)?),
            None => None,
        },
        ContextMethod::Request => match body.get("request") {
            Some(request) => {
                Some(RequestPayload::parse(request).map_err(|e| format!("in `request`: {e}"))?)
            }
            None => None,
        },
        ContextMethod::None => None,
    };
    let outcome = decide_response(policy, &response, context.as_ref());
    let path = util::UrlParts::parse(&response.url)
        .match_path()
        .to_string();
    Ok((outcome, response.method, path))
}

// ---------------------------------------------------------------------------
// Mock
// ---------------------------------------------------------------------------

/// A sideband server whose answers a test scripts with a closure; it records
/// calls like [`PolicyServer`].
pub struct MockSideband {
    server: Server,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

impl MockSideband {
    pub fn start(
        bind: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Exchange) -> Response + Send + Sync + 'static,
    ) -> io::Result<MockSideband> {
        let exchanges = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&exchanges);
        let server = Server::start(
            bind,
            tls,
            Arc::new(move |request: Request| {
                let mut exchange = Exchange::from_request(&request);
                let response = handler(&exchange);
                exchange.reply = Some(record_reply(&response));
                lock(&recorded).push(exchange);
                response
            }),
        )?;
        Ok(MockSideband { server, exchanges })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// A `service_url` for the filter: `http://127.0.0.1:<port>` (or `https://…`).
    pub fn service_url(&self, scheme: &str) -> String {
        self.server.url(scheme)
    }

    pub fn received(&self) -> Vec<Exchange> {
        lock(&self.exchanges).clone()
    }

    pub fn clear_received(&self) {
        lock(&self.exchanges).clear();
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }
}
