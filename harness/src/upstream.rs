//! An echo upstream for tests and the local demo.
//!
//! It records every request it receives ([`Upstream::requests`]) and answers,
//! by default, with JSON describing the request:
//!
//! ```json
//! { "method": "POST", "target": "/echo/a?x=1", "path": "/echo/a", "query": "x=1",
//!   "version": "HTTP/1.1", "tls": false,
//!   "headers": [["Host", "127.0.0.1:9000"], ["X-User", "demo"]],
//!   "body": "{\"ssn\":\"123\"}", "json": {"ssn": "123"} }
//! ```
//!
//! (`json` is there only when the body is JSON.) Every answer carries
//! `Content-Type: application/json`, `Date` and `X-Powered-By: echo-upstream`
//! (so response-header removal can be seen).
//!
//! A test can choose the answer per request with a closure
//! ([`Upstream::set_behaviour`]); otherwise these path and query conventions
//! apply (they can be combined, e.g. `/status/201/slow/50`):
//!
//! | convention | effect |
//! | --- | --- |
//! | `/status/<code>` | answer with that status |
//! | `/chunked/...` | send the body with `Transfer-Encoding: chunked` |
//! | `/bytes/<n>` | body = `n` bytes `a..z` repeated, `application/octet-stream` |
//! | `/slow/<ms>` | wait `ms` milliseconds before answering |
//! | `/json/<name>` | body = the sample document `<name>` (see [`sample_document`]) |
//! | `?header=Name:Value` | add a response header (repeatable; percent-decoded) |
//! | `?status=<code>` | same as `/status/<code>` |

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::http::{Request, Response, Server};

/// A per-request answer chosen by a test. Returning `None` falls back to the
/// default echo and path conventions.
pub type Behaviour = Arc<dyn Fn(&Request) -> Option<Response> + Send + Sync>;

/// The largest `/bytes/<n>` body, to keep a typo from eating memory.
const MAX_BYTES: usize = 64 * 1024 * 1024;
/// The longest `/slow/<ms>` delay.
const MAX_SLOW_MS: u64 = 60_000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct State {
    requests: Mutex<Vec<Request>>,
    behaviour: Mutex<Option<Behaviour>>,
}

/// The echo upstream server.
pub struct Upstream {
    server: Server,
    state: Arc<State>,
}

impl Upstream {
    /// Starts the upstream on `bind` (e.g. `127.0.0.1:0`), plain or TLS.
    pub fn start(bind: &str, tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<Upstream> {
        let state = Arc::new(State {
            requests: Mutex::new(Vec::new()),
            behaviour: Mutex::new(None),
        });
        let handler_state = Arc::clone(&state);
        let server = Server::start(
            bind,
            tls,
            Arc::new(move |request: Request| {
                lock(&handler_state.requests).push(request.clone());
                let behaviour = lock(&handler_state.behaviour).clone();
                behaviour
                    .and_then(|choose| choose(&request))
                    .unwrap_or_else(|| conventional_response(&request))
            }),
        )?;
        Ok(Upstream { server, state })
    }

    /// Starts the upstream with a behaviour already set.
    pub fn start_with(
        bind: &str,
        tls: Option<Arc<rustls::ServerConfig>>,
        behaviour: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static,
    ) -> io::Result<Upstream> {
        let upstream = Upstream::start(bind, tls)?;
        upstream.set_behaviour(behaviour);
        Ok(upstream)
    }

    /// Chooses the answer for later requests (`None` from the closure = default).
    pub fn set_behaviour(
        &self,
        behaviour: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static,
    ) {
        *lock(&self.state.behaviour) = Some(Arc::new(behaviour));
    }

    /// Back to the default echo and path conventions.
    pub fn clear_behaviour(&self) {
        *lock(&self.state.behaviour) = None;
    }

    /// The address the upstream listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state.requests).clone()
    }

    /// The most recent request, if any.
    pub fn last_request(&self) -> Option<Request> {
        lock(&self.state.requests).last().cloned()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
    }

    /// Stops the server (also done on drop).
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

/// The JSON description of a request used as the default answer body.
pub fn describe_request(request: &Request) -> Value {
    let headers: Vec<Value> = request
        .headers
        .iter()
        .map(|(name, value)| json!([name, String::from_utf8_lossy(value)]))
        .collect();
    let mut description = json!({
        "method": request.method,
        "target": request.target,
        "path": request.path(),
        "query": request.query(),
        "version": request.version,
        "tls": request.tls,
        "headers": headers,
        "body": request.body_str(),
    });
    if let (Ok(body), Some(object)) = (request.json(), description.as_object_mut()) {
        object.insert("json".to_string(), body);
    }
    description
}

/// The default echo answer: 200 with [`describe_request`] as JSON.
pub fn echo_response(request: &Request) -> Response {
    Response::json(200, &describe_request(request))
        .with_header("Date", httpdate::fmt_http_date(SystemTime::now()))
        .with_header("X-Powered-By", "echo-upstream")
}

/// Sample JSON documents served under `/json/<name>`.
///
/// - `person`: a person with an `ssn` (for redaction demos);
/// - `control`: a PDG smart-hub control with `callsRemaining: 0`;
/// - `device`: a device with an `audit` field.
pub fn sample_document(name: &str) -> Option<Value> {
    let document = match name {
        "person" => json!({
            "id": "p-1", "name": "Alice Example", "username": "alice",
            "email": "alice@example.com", "ssn": "123-45-6789"
        }),
        "control" => json!({
            "name": "power", "value": "80000", "status": "on",
            "callsRemaining": 0, "readOnly": false
        }),
        "device" => json!({"id": "d-1", "name": "sedan", "audit": "a-1"}),
        _ => return None,
    };
    Some(document)
}

/// The answer chosen from the request's path and query conventions
/// (see the module documentation).
pub fn conventional_response(request: &Request) -> Response {
    let mut response = echo_response(request);
    let segments: Vec<&str> = request.path().split('/').collect();
    let mut index = 0;
    while let Some(segment) = segments.get(index) {
        let argument = segments.get(index + 1).copied().unwrap_or_default();
        match *segment {
            "status" => match argument.parse::<u16>() {
                Ok(status) if (100..=999).contains(&status) => response.status = status,
                _ => return bad_convention(format!("bad status {argument:?}")),
            },
            "chunked" => response.chunked = true,
            "bytes" => match argument.parse::<usize>() {
                Ok(count) if count <= MAX_BYTES => {
                    response.body = (0..count).map(|i| b'a' + (i % 26) as u8).collect();
                    set_header(&mut response, "Content-Type", "application/octet-stream");
                }
                _ => return bad_convention(format!("bad byte count {argument:?}")),
            },
            "slow" => match argument.parse::<u64>() {
                Ok(ms) if ms <= MAX_SLOW_MS => {
                    response.delay = Some(Duration::from_millis(ms));
                }
                _ => return bad_convention(format!("bad delay {argument:?}")),
            },
            "json" => match sample_document(argument) {
                Some(document) => response.body = document.to_string().into_bytes(),
                None => return bad_convention(format!("no sample document {argument:?}")),
            },
            _ => {}
        }
        index += 1;
    }
    for (key, value) in request.query_params() {
        match key.as_str() {
            "header" => match value.split_once(':') {
                Some((name, header_value)) => {
                    response.headers.push((
                        name.trim().to_string(),
                        header_value.trim().as_bytes().to_vec(),
                    ));
                }
                None => return bad_convention(format!("header {value:?} has no ':'")),
            },
            "status" => match value.parse::<u16>() {
                Ok(status) if (100..=999).contains(&status) => response.status = status,
                _ => return bad_convention(format!("bad status {value:?}")),
            },
            _ => {}
        }
    }
    response
}

fn set_header(response: &mut Response, name: &str, value: &str) {
    response
        .headers
        .retain(|(existing, _)| !existing.eq_ignore_ascii_case(name));
    response
        .headers
        .push((name.to_string(), value.as_bytes().to_vec()));
}

fn bad_convention(message: String) -> Response {
    Response::json(
        400,
        &json!({"message": format!("echo-upstream: {message}")}),
    )
}
