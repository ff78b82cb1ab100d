//! Shared end-to-end test environment: the built `ping_auth.wasm` in the
//! Kong-like host emulator, a scripted policy server and an echo upstream,
//! all on 127.0.0.1.
#![allow(dead_code)]

use ping_auth_harness::emulator::{
    BodyMode, ChainId, ClientRequest, ClientResponse, Emulator, FilterEntry, HostOptions,
    HttpVersion, Route, Service,
};
use ping_auth_harness::http::{Request, Response, Server};
use ping_auth_harness::upstream::Upstream;
use ping_auth_harness::wasm_build;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub fn wasm() -> PathBuf {
    wasm_build::build("ping-auth").expect("building ping_auth.wasm")
}

/// A scripted policy server that records every call it receives.
pub struct Pdp {
    pub server: Server,
    received: Arc<Mutex<Vec<Request>>>,
}

impl Pdp {
    pub fn start(handler: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Pdp {
        Self::start_tls(None, handler)
    }

    pub fn start_tls(
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Pdp {
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let server = Server::start(
            "127.0.0.1:0",
            tls,
            Arc::new(move |req: Request| {
                let resp = handler(&req);
                log.lock().unwrap().push(req);
                resp
            }),
        )
        .expect("policy server");
        Pdp { server, received }
    }

    pub fn port(&self) -> u16 {
        self.server.addr().port()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.received.lock().unwrap().clone()
    }

    pub fn calls(&self, path_suffix: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.path().ends_with(path_suffix))
            .collect()
    }

    /// JSON bodies of the `/sideband/request` calls.
    pub fn request_payloads(&self) -> Vec<Value> {
        self.calls("/sideband/request")
            .iter()
            .map(|r| r.json().unwrap())
            .collect()
    }

    pub fn response_payloads(&self) -> Vec<Value> {
        self.calls("/sideband/response")
            .iter()
            .map(|r| r.json().unwrap())
            .collect()
    }
}

/// The allow reply that changes nothing: the request payload echoed back.
pub fn echo(req: &Request) -> Value {
    req.json().unwrap_or(Value::Null)
}

/// The `/sideband/response` reply that changes nothing: the upstream response.
pub fn echo_response(req: &Request) -> Value {
    let v = req.json().unwrap_or(Value::Null);
    json!({
        "response_code": v["response_code"],
        "response_status": v["response_status"],
        "headers": v["headers"],
        "body": v["body"],
    })
}

/// A policy server that allows everything unchanged (both hooks).
pub fn allow_all(req: &Request) -> Response {
    if req.path().ends_with("/sideband/response") {
        Response::json(200, &echo_response(req))
    } else {
        Response::json(200, &echo(req))
    }
}

pub struct Env {
    pub emu: Emulator,
    pub chain: ChainId,
    pub pdp: Pdp,
    pub upstream: Upstream,
}

pub fn config(pdp_port: u16, extra: Value) -> Value {
    let mut c = json!({
        "service_url": format!("http://127.0.0.1:{pdp_port}/"),
        "shared_secret": "s3cr3t",
        "secret_header_name": "CLIENT-TOKEN",
        "connection_timeout_ms": 2000,
    });
    if let (Some(obj), Value::Object(more)) = (c.as_object_mut(), extra) {
        for (k, v) in more {
            obj.insert(k, v);
        }
    }
    c
}

pub fn service(port: u16) -> Service {
    Service {
        name: "echo".into(),
        id: "6b8a1e4c-0000-4000-8000-000000000001".into(),
        protocol: "http".into(),
        host: "127.0.0.1".into(),
        port,
        path: None,
        connect_timeout: 5000,
        write_timeout: 5000,
        read_timeout: 5000,
    }
}

pub fn route() -> Route {
    Route {
        name: "echo-route".into(),
        id: "6b8a1e4c-0000-4000-8000-000000000002".into(),
        paths: vec!["/".into()],
        strip_path: false,
        preserve_host: false,
    }
}

/// An echo upstream on 127.0.0.1.
pub fn upstream() -> Upstream {
    Upstream::start("127.0.0.1:0", None).expect("upstream")
}

/// A port on 127.0.0.1 with nothing listening (connections are refused).
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain ngx_wasm_module host (nginx without Kong).
pub fn plain_host() -> HostOptions {
    HostOptions {
        kong: false,
        ..HostOptions::default()
    }
}

/// A fresh emulator (one worker) with one chain running the filter with the
/// given configuration bytes.
pub fn emulator(
    opts: HostOptions,
    service: Service,
    route: Route,
    config: Vec<u8>,
) -> (Emulator, ChainId) {
    let mut emu = Emulator::new(&wasm(), opts).expect("emulator");
    let chain = emu
        .add_chain(
            service,
            route,
            vec![FilterEntry {
                name: "ping_auth".into(),
                config,
            }],
        )
        .expect("on_configure accepted the config");
    (emu, chain)
}

/// A fresh emulator (one worker) with no chain yet.
pub fn bare_emulator() -> Emulator {
    Emulator::new(&wasm(), HostOptions::default()).expect("emulator")
}

/// Adds a chain running the filter with `config`, which `on_configure` must
/// refuse; the refusal's text.
pub fn refused_config(emu: &mut Emulator, config: &Value) -> String {
    let err = emu
        .add_chain(
            service(1),
            route(),
            vec![FilterEntry {
                name: "ping_auth".into(),
                config: config.to_string().into_bytes(),
            }],
        )
        .expect_err("refused");
    format!("{err:?}")
}

impl Env {
    /// Kong host, filter configured with `extra` merged into the base config.
    pub fn new(
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
        extra: Value,
    ) -> Env {
        Self::with(HostOptions::default(), route(), handler, extra)
    }

    pub fn with(
        opts: HostOptions,
        route: Route,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
        extra: Value,
    ) -> Env {
        Self::build(opts, route, handler, |pdp_port| config(pdp_port, extra))
    }

    /// Kong host, filter configured with what `make` returns for the policy
    /// server's port (for a configuration that needs the port more than once).
    pub fn with_config(
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
        make: impl FnOnce(u16) -> Value,
    ) -> Env {
        Self::build(HostOptions::default(), route(), handler, make)
    }

    fn build(
        opts: HostOptions,
        route: Route,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
        make: impl FnOnce(u16) -> Value,
    ) -> Env {
        let pdp = Pdp::start(handler);
        let upstream = upstream();
        let cfg = make(pdp.port());
        let (emu, chain) = emulator(
            opts,
            service(upstream.addr().port()),
            route,
            cfg.to_string().into_bytes(),
        );
        Env {
            emu,
            chain,
            pdp,
            upstream,
        }
    }

    pub fn send(&mut self, req: ClientRequest) -> ClientResponse {
        self.emu.send(self.chain, req)
    }

    pub fn logs(&self) -> Vec<String> {
        self.emu.logs().iter().map(|l| l.message.clone()).collect()
    }

    pub fn log_contains(&self, needle: &str) -> bool {
        self.emu.logs().iter().any(|l| l.message.contains(needle))
    }
}

/// A typical curl request to Kong's proxy port.
pub fn get(target: &str) -> ClientRequest {
    ClientRequest {
        method: "GET".into(),
        target: target.into(),
        version: HttpVersion::Http11,
        headers: vec![
            ("Host".into(), b"kong:8000".to_vec()),
            ("User-Agent".into(), b"curl/8.5.0".to_vec()),
            ("Accept".into(), b"*/*".to_vec()),
        ],
        body: Vec::new(),
        body_mode: BodyMode::ContentLength,
        client_addr: "10.0.0.5:40000".parse().unwrap(),
        tls: false,
        server_port: 8000,
        client_cert_pem: None,
        connection: None,
    }
}

pub fn post(target: &str, body: &[u8]) -> ClientRequest {
    let mut r = get(target);
    r.method = "POST".into();
    r.headers
        .push(("Content-Type".into(), b"application/json".to_vec()));
    r.body = body.to_vec();
    r
}

pub fn with_header(mut r: ClientRequest, name: &str, value: &str) -> ClientRequest {
    r.headers.push((name.into(), value.as_bytes().to_vec()));
    r
}

/// A header of a client response (first value).
pub fn header<'a>(resp: &'a ClientResponse, name: &str) -> Option<&'a str> {
    resp.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

pub fn header_all(resp: &ClientResponse, name: &str) -> Vec<String> {
    resp.headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Header values of a request the upstream received.
pub fn req_header(r: &Request, name: &str) -> Vec<String> {
    r.header_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// The single-key header objects of a payload, as (name, value) pairs.
pub fn payload_headers(v: &Value) -> Vec<(String, String)> {
    v["headers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|o| o.as_object())
                .flat_map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Each header is sent to the client once, with this value.
pub fn assert_single_headers(resp: &ClientResponse, expected: &[(&str, &str)]) {
    for (name, value) in expected {
        assert_eq!(
            header_all(resp, name),
            [*value],
            "{name}: {:?}",
            resp.headers
        );
    }
}
