//! The built `.wasm` in the emulator (one long-lived worker, Kong's host
//! semantics), with arbitrary client requests and arbitrary answers to every
//! dispatch and upstream request, given in process by the emulator's scripted
//! network (`ping_auth_harness::emulator::Network`).
//!
//! Checked after every request: the guest never trapped and the worker never
//! crashed; the client got a response; the upstream was reached (Kong
//! proxying, or the response hook's call) only after a `/sideband/request`
//! answer that may be read as an allow; a failure is answered with a 4xx/5xx;
//! no log line carries the secret.
//!
//! Coverage: libFuzzer sees the emulator's (host) code, which tells it which
//! host functions the guest called with which results; the guest's own
//! compiled code is not instrumented. Its branches are fuzzed with coverage by
//! the native targets, which run the same core against the mock host.

use crate::{ScriptedBody, SECRET};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use ping_auth_harness::emulator::{
    BodyMode, CallAnswer, CallFailure, ChainId, ClientRequest, Emulator, FilterEntry, HostOptions,
    HttpVersion, Network, Outgoing, Route, Service, UpstreamAnswer,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// One request through the worker.
#[derive(Arbitrary, Debug)]
pub struct WasmStory {
    hook: bool,
    method: u8,
    raw_method: Option<String>,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Option<Vec<u8>>,
    chunked: bool,
    tls: bool,
    client_cert: Option<String>,
    /// Answers to the dispatches, in order (a missing one: a timeout).
    calls: Vec<Answer>,
    upstream: Upstream,
}

#[derive(Arbitrary, Debug)]
pub struct Answer {
    kind: u8,
    status: u16,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: ScriptedBody,
    received: u16,
}

#[derive(Arbitrary, Debug)]
pub struct Upstream {
    fail: bool,
    status: u16,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    body: Vec<u8>,
}

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the scripted network saw during one request.
/// An answer planned for a dispatch: fixed, or a reply whose body is made
/// from what the filter posts.
enum Planned {
    Fixed(CallAnswer),
    Reply {
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: ScriptedBody,
    },
}

#[derive(Default)]
struct Seen {
    answers: Vec<Planned>,
    next: usize,
    upstream: Option<UpstreamAnswer>,
    /// The last `/sideband/request` answer may be read as an allow.
    allow_possible: bool,
    /// The last `/sideband/request` answer is a well-formed deny.
    deny: bool,
    upstream_reached: bool,
    violations: Vec<String>,
}

struct Script(Mutex<Seen>);

fn may_allow(answer: &CallAnswer) -> bool {
    let CallAnswer::Reply { status, body, .. } = answer else {
        return false;
    };
    *status < 400 && *status != 429 && crate::object_without_deny(body)
}

fn is_deny(answer: &CallAnswer) -> bool {
    let CallAnswer::Reply { status, body, .. } = answer else {
        return false;
    };
    *status < 400 && crate::object_with_deny(body)
}

impl Network for Script {
    fn call(&self, request: &Outgoing<'_>) -> CallAnswer {
        let mut seen = lock(&self.0);
        let answer = match seen.answers.get(seen.next) {
            None => CallAnswer::Failed(CallFailure::Timeout),
            Some(Planned::Fixed(a)) => a.clone(),
            Some(Planned::Reply {
                status,
                headers,
                body,
            }) => CallAnswer::Reply {
                status: *status,
                headers: headers.clone(),
                body: body.render(request.body),
            },
        };
        seen.next += 1;
        let path = request.path();
        if path.ends_with("/sideband/request") {
            seen.allow_possible = may_allow(&answer);
            seen.deny = is_deny(&answer);
        } else if !path.ends_with("/sideband/response") {
            // The response hook's own call to the upstream.
            seen.upstream_reached = true;
            if !seen.allow_possible {
                seen.violations.push(format!(
                    "the hook called the upstream ({path}) without an allow"
                ));
            }
        }
        answer
    }

    fn upstream(&self, _request: &Outgoing<'_>) -> UpstreamAnswer {
        let mut seen = lock(&self.0);
        seen.upstream_reached = true;
        if !seen.allow_possible {
            seen.violations
                .push("Kong proxied to the upstream without an allow".into());
        }
        seen.upstream.clone().unwrap_or(UpstreamAnswer::Failed(502))
    }
}

struct Worker {
    emu: Emulator,
    script: Arc<Script>,
    hook_off: ChainId,
    hook_on: ChainId,
}

fn wasm_path() -> PathBuf {
    match std::env::var_os("PING_AUTH_WASM") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/wasm32-wasip1/release/ping_auth.wasm"
        )),
    }
}

fn chain(emu: &mut Emulator, hook: bool) -> ChainId {
    let config = format!(
        r#"{{"service_url":"https://pdp.example:8443","shared_secret":"{SECRET}","secret_header_name":"CLIENT-TOKEN","enable_response_hook":{hook},"connection_timeout_ms":500}}"#
    );
    let service = Service {
        name: "backend".into(),
        id: "6b8a1e4c-0000-4000-8000-00000000000b".into(),
        protocol: "http".into(),
        host: "backend.example".into(),
        port: 9000,
        path: None,
        connect_timeout: 500,
        write_timeout: 500,
        read_timeout: 500,
    };
    let route = Route {
        name: format!("route-{hook}"),
        id: format!("6b8a1e4c-0000-4000-8000-00000000001{}", u8::from(hook)),
        paths: vec!["/".into()],
        strip_path: false,
        preserve_host: false,
    };
    let filters = vec![FilterEntry {
        name: "ping_auth".into(),
        config: config.into_bytes(),
    }];
    match emu.add_chain(service, route, filters) {
        Ok(c) => c,
        Err(e) => panic!("the fuzz configuration must be accepted: {e:?}"),
    }
}

fn worker() -> &'static Mutex<Worker> {
    static WORKER: OnceLock<Mutex<Worker>> = OnceLock::new();
    WORKER.get_or_init(|| {
        let path = wasm_path();
        let opts = HostOptions {
            guest_call_limit: Duration::from_secs(5),
            ..HostOptions::default()
        };
        let mut emu = match Emulator::new(&path, opts) {
            Ok(e) => e,
            Err(e) => panic!("cannot load {} (make build first): {e}", path.display()),
        };
        let script = Arc::new(Script(Mutex::new(Seen::default())));
        emu.set_network(Some(script.clone()));
        let hook_off = chain(&mut emu, false);
        let hook_on = chain(&mut emu, true);
        Mutex::new(Worker {
            emu,
            script,
            hook_off,
            hook_on,
        })
    })
}

impl Answer {
    fn plan(&self) -> Planned {
        let status = 100 + self.status % 500;
        match self.kind % 10 {
            0 => Planned::Fixed(CallAnswer::Failed(CallFailure::Timeout)),
            1 => Planned::Fixed(CallAnswer::Failed(CallFailure::BrokenConnection)),
            2 => Planned::Fixed(CallAnswer::Failed(CallFailure::TlsFailure)),
            3 => Planned::Fixed(CallAnswer::TimedOutInBody {
                status,
                headers: self.headers.clone(),
                received: usize::from(self.received),
            }),
            // Mostly 200: what a policy server answers.
            kind => Planned::Reply {
                status: if kind >= 6 { 200 } else { status },
                headers: self.headers.clone(),
                body: self.body.clone(),
            },
        }
    }
}

/// Runs one story; panics on a broken property.
pub fn run(story: &WasmStory) {
    let mut w = lock(worker());
    {
        let mut seen = lock(&w.script.0);
        *seen = Seen {
            answers: story.calls.iter().map(Answer::plan).collect(),
            upstream: Some(if story.upstream.fail {
                UpstreamAnswer::Failed(if story.upstream.status.is_multiple_of(2) {
                    502
                } else {
                    504
                })
            } else {
                UpstreamAnswer::Reply {
                    status: 100 + story.upstream.status % 500,
                    headers: story.upstream.headers.clone(),
                    body: story.upstream.body.clone(),
                }
            }),
            ..Seen::default()
        };
    }
    let method = match &story.raw_method {
        Some(m) => m.clone(),
        None => METHODS[usize::from(story.method) % METHODS.len()].to_string(),
    };
    let mut headers = vec![("Host".to_string(), b"api.example".to_vec())];
    headers.extend(story.headers.iter().cloned());
    let request = ClientRequest {
        method,
        target: format!("/{}", story.target),
        version: HttpVersion::Http11,
        headers,
        body: story.body.clone().unwrap_or_default(),
        body_mode: if story.chunked {
            BodyMode::Chunked
        } else {
            BodyMode::ContentLength
        },
        client_addr: SocketAddr::from(([10, 0, 0, 7], 40000)),
        tls: story.tls,
        server_port: if story.tls { 8443 } else { 8000 },
        client_cert_pem: story.client_cert.clone(),
        connection: None,
    };
    let chain = if story.hook { w.hook_on } else { w.hook_off };
    let traps_before = w.emu.stats().traps;
    let response = w.emu.send(chain, request);
    let logs = w.emu.take_logs();
    let traps = w.emu.stats().traps - traps_before;
    let seen = lock(&w.script.0);

    assert!(
        !response.trapped && traps == 0,
        "the guest trapped: {logs:#?}\n{story:#?}"
    );
    assert!(
        response.host_fault.is_none(),
        "the worker crashed: {:?}",
        response.host_fault
    );
    assert!(!response.stalled, "the request never completed");
    assert!(
        seen.violations.is_empty(),
        "{:?}\n{story:#?}\nclient got {} {:?}\n{logs:#?}",
        seen.violations,
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    for record in &logs {
        assert!(
            !record.message.contains(SECRET),
            "the secret reached a log line: {}",
            record.message
        );
    }
    if response.local && !seen.upstream_reached && !seen.deny {
        assert!(
            (400..600).contains(&response.status),
            "a failure answered {}",
            response.status
        );
    }
}
