//! Failure policy, end to end: docs/sideband-protocol.md#errors (with the fixes
//! listed in docs/sideband-protocol.md#differences-from-the-lua-plugin), and the
//! transport failures the host reports without `:status`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use common::*;
use ping_auth_harness::certs::TestPki;
use ping_auth_harness::emulator::{BodyMode, FilterEntry, HostOptions};
use ping_auth_harness::http::{Request, Response};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn reply(status: u16, body: &'static str) -> impl Fn(&Request) -> Response + Send + Sync {
    move |_req: &Request| {
        Response::new(status)
            .with_header("content-type", "application/json")
            .with_body(body)
    }
}

fn assert_closed(env: &Env, resp: &ping_auth_harness::emulator::ClientResponse, status: u16) {
    assert_eq!(resp.status, status);
    assert!(
        env.upstream.requests().is_empty(),
        "the upstream must never be called"
    );
    assert_eq!(resp.upstream_requests, 0);
}

#[test]
fn case31_wrong_secret_401_is_502() {
    let mut env = Env::new(
        reply(
            401,
            r#"{"message":"The Gateway Token is invalid","id":"x"}"#,
        ),
        json!({}),
    );
    let resp = env.send(get("/"));
    assert_closed(&env, &resp, 502);
    assert!(resp.body.is_empty());
    assert!(env.log_contains(
        "Sideband request denied with status code 401: The Gateway Token is invalid (x)"
    ));
}

#[test]
fn case32_413_json_is_relayed() {
    let mut env = Env::new(reply(413, r#"{"message":"too big"}"#), json!({}));
    let resp = env.send(post("/", b"x"));
    assert_closed(&env, &resp, 413);
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    let v: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v, json!({"message": "too big"}));
}

#[test]
fn case33_413_not_json_is_502() {
    let mut env = Env::new(reply(413, "<html>too big</html>"), json!({}));
    let resp = env.send(get("/"));
    assert_closed(&env, &resp, 502);
}

#[test]
fn case34_5xx_is_502() {
    let mut env = Env::new(reply(500, r#"{"message":"boom","id":"7"}"#), json!({}));
    let resp = env.send(get("/"));
    assert_closed(&env, &resp, 502);
    assert!(env.log_contains("Sideband request failed with status code 500: boom (7)"));

    let mut env = Env::new(reply(500, "<html>oops</html>"), json!({}));
    let resp = env.send(get("/"));
    assert_closed(&env, &resp, 502);
    assert!(env.log_contains("Unable to parse JSON body"));
}

#[test]
fn case35_200_empty_body_is_502() {
    let mut env = Env::new(reply(200, ""), json!({}));
    let resp = env.send(get("/"));
    assert_closed(&env, &resp, 502);
    assert!(env.log_contains("Unable to parse JSON body"));
}

#[test]
fn case36_unreachable_is_502_rec() {
    // Connection refused: a port nothing listens on.
    let closed = closed_port();
    let mut env = Env::new(allow_all, json!({}));
    let (mut emu, chain) = emulator(
        HostOptions::default(),
        service(env.upstream.addr().port()),
        route(),
        config(closed, json!({})).to_string().into_bytes(),
    );
    let resp = emu.send(chain, get("/"));
    assert_eq!(resp.status, 502, "[REC] Lua 1.1.0+ answered 500");
    assert!(env.upstream.requests().is_empty());
    assert!(emu
        .logs()
        .iter()
        .any(|l| l.message.contains("Failed to send sideband request")));
    drop(emu);

    // Timeout: the policy server answers after connection_timeout_ms.
    let mut env2 = Env::new(
        |_r: &Request| Response::json(200, &json!({})).with_delay(Duration::from_millis(1500)),
        json!({"connection_timeout_ms": 300}),
    );
    let t = Instant::now();
    let resp = env2.send(get("/"));
    assert_closed(&env2, &resp, 502);
    assert!(
        t.elapsed() < Duration::from_millis(1400),
        "timed out at connection_timeout_ms"
    );
    assert!(env2.log_contains("timeout"));
    env.send(get("/")); // keep env alive to here
}

/// A policy server that sends its status line, headers and part of the body,
/// then stalls: seen on a real build of Kong's host, the read times out, the
/// host still calls `on_http_call_response` with the headers and the partial
/// body size, and then refuses the body (`BadArgument`). The SDK's getter
/// panicked there, and the trap let the request through (200 from the
/// upstream). It must be a timeout: 502, upstream never called, no trap.
#[test]
fn policy_reply_that_stalls_mid_body_is_a_timeout_not_a_trap() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let mut buf = [0u8; 65536];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"method\":\"GET\"",
            );
            std::thread::sleep(Duration::from_millis(1200));
        }
    });
    for hook in [false, true] {
        let env = Env::new(allow_all, json!({}));
        let (mut emu, chain) = emulator(
            HostOptions::default(),
            service(env.upstream.addr().port()),
            route(),
            config(
                port,
                json!({"connection_timeout_ms": 300, "enable_response_hook": hook}),
            )
            .to_string()
            .into_bytes(),
        );
        let resp = emu.send(chain, get("/"));
        assert!(!resp.trapped, "hook {hook}: no trap");
        assert_eq!(resp.status, 502, "hook {hook}");
        assert!(
            env.upstream.requests().is_empty(),
            "hook {hook}: upstream never called"
        );
        assert!(
            emu.logs()
                .iter()
                .any(|l| l.message.contains("Failed to send sideband request")
                    && l.message.contains("timeout")),
            "hook {hook}: {:?}",
            emu.logs().iter().map(|l| &l.message).collect::<Vec<_>>()
        );
    }
    server.join().unwrap();
}

#[test]
fn case36_tls() {
    let pki = TestPki::generate().unwrap();
    let pdp = Pdp::start_tls(Some(pki.server_config().unwrap()), allow_all);
    let upstream = upstream();
    let cfg = {
        let mut c = config(pdp.port(), json!({}));
        c["service_url"] = format!("https://localhost:{}", pdp.port()).into();
        c.to_string().into_bytes()
    };
    // Trusted CA: works over TLS.
    let opts = HostOptions {
        tls_trusted_certificate: Some(pki.ca_cert_path.clone()),
        ..HostOptions::default()
    };
    let (mut emu, chain) = emulator(opts, service(upstream.addr().port()), route(), cfg.clone());
    assert_eq!(emu.send(chain, get("/")).status, 200);
    assert!(pdp.requests()[0].tls);
    // Verification on (Kong's default) and no trust store: handshake failure.
    let (mut emu, chain) = emulator(
        HostOptions::default(),
        service(upstream.addr().port()),
        route(),
        cfg,
    );
    let resp = emu.send(chain, get("/"));
    assert_eq!(resp.status, 502);
    assert!(emu
        .logs()
        .iter()
        .any(|l| l.message.contains("tls handshake failure")));
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the first, allowed request reached the upstream"
    );
}

fn rate_limited(retry_after: Option<&'static str>) -> impl Fn(&Request) -> Response + Send + Sync {
    let first = std::sync::atomic::AtomicBool::new(true);
    move |req: &Request| {
        if first.swap(false, std::sync::atomic::Ordering::SeqCst) {
            let mut r = Response::new(429).with_body("slow down");
            if let Some(v) = retry_after {
                r = r.with_header("retry-after", v);
            }
            return r;
        }
        allow_all(req)
    }
}

#[test]
fn case37_429_backs_off_then_recovers() {
    let mut env = Env::new(rate_limited(Some("2")), json!({}));
    let resp = env.send(get("/"));
    assert_closed(&env, &resp, 429);
    assert_eq!(header(&resp, "retry-after"), Some("2"));
    let v: Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(v["code"], "LIMIT_EXCEEDED");

    std::thread::sleep(Duration::from_millis(1100));
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 429);
    assert_eq!(
        header(&resp, "retry-after"),
        Some("1"),
        "[REC] seconds remaining, not elapsed"
    );
    assert_eq!(env.pdp.requests().len(), 1, "no call while backing off");

    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(env.send(get("/")).status, 200);
    assert_eq!(env.pdp.calls("/sideband/request").len(), 2);
}

#[test]
fn case37_retry_after_http_date() {
    let date = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
    let date: &'static str = Box::leak(date.into_boxed_str());
    let mut env = Env::new(rate_limited(Some(date)), json!({}));
    let resp = env.send(get("/"));
    let secs: u64 = header(&resp, "retry-after").unwrap().parse().unwrap();
    assert!((28..=31).contains(&secs), "{secs}");
}

#[test]
fn case38_429_without_retry_after_never_breaks_later_requests_rec() {
    let mut env = Env::new(rate_limited(None), json!({}));
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 429);
    assert_eq!(header(&resp, "retry-after"), Some("1"));
    std::thread::sleep(Duration::from_millis(1100));
    for _ in 0..3 {
        assert_eq!(
            env.send(get("/")).status,
            200,
            "[REC] Lua answered 500 forever"
        );
    }
}

#[test]
fn case39_429_scope_is_one_filter_configuration_rec() {
    let pdp = Pdp::start(rate_limited(Some("30")));
    let upstream = upstream();
    let mut emu = bare_emulator();
    let entry = |secret: &str| FilterEntry {
        name: "ping_auth".into(),
        config: config(pdp.port(), json!({"shared_secret": secret}))
            .to_string()
            .into_bytes(),
    };
    let a = emu
        .add_chain(service(upstream.addr().port()), route(), vec![entry("a")])
        .unwrap();
    let b = emu
        .add_chain(service(upstream.addr().port()), route(), vec![entry("b")])
        .unwrap();
    assert_eq!(emu.send(a, get("/")).status, 429);
    assert_eq!(emu.send(a, get("/")).status, 429);
    assert_eq!(
        emu.send(b, get("/")).status,
        200,
        "route B is not blocked by route A's 429"
    );
}

#[test]
fn case40_uppercase_scheme_works_rec() {
    let mut env = Env::with_config(allow_all, |pdp_port| {
        let mut c = config(pdp_port, json!({}));
        c["service_url"] = format!("HTTP://127.0.0.1:{pdp_port}").into();
        c
    });
    assert_eq!(
        env.send(get("/")).status,
        200,
        "[REC] Lua answered 500 to every request"
    );
}

#[test]
fn bad_config_is_refused_with_one_line_naming_the_field() {
    let mut emu = bare_emulator();
    for (cfg, field) in [
        (
            json!({"shared_secret": "s", "secret_header_name": "H"}),
            "service_url",
        ),
        (
            json!({"service_url": "ftp://x", "shared_secret": "s", "secret_header_name": "H"}),
            "service_url",
        ),
        (
            json!({"service_url": "http://p", "shared_secret": "s", "secret_header_name": "H", "connection_timeout_ms": 0}),
            "connection_timeout_ms",
        ),
    ] {
        let text = refused_config(&mut emu, &cfg);
        assert!(text.contains(field), "{text}");
    }
    let lines: Vec<_> = emu
        .logs()
        .iter()
        .filter(|l| l.message.contains("invalid configuration"))
        .collect();
    assert_eq!(lines.len(), 3, "one line per refusal");
    assert!(lines[1]
        .message
        .contains("URL scheme must be either 'http' or 'https'"));
}

#[test]
fn no_error_path_lets_a_request_through() {
    // Each malformed or failing reply, with the hook on and off: the client
    // gets an error and the upstream is never called.
    let cases: [(u16, &'static str); 9] = [
        (200, "not json"),
        (200, "[1,2]"),
        (200, r#"{"response": {}}"#),
        (200, r#"{"response": null}"#),
        (200, r#"{"headers": []}"#),
        (400, "{}"),
        (404, "{}"),
        (503, "{}"),
        (302, "{}"),
    ];
    for hook in [false, true] {
        for (status, body) in cases {
            let mut env = Env::new(reply(status, body), json!({"enable_response_hook": hook}));
            let resp = env.send(post("/x", b"{}"));
            assert!(
                resp.status >= 400,
                "{status} {body} hook {hook}: got {}",
                resp.status
            );
            assert!(!resp.trapped, "a bad reply must never trap the instance");
            assert!(
                env.upstream.requests().is_empty(),
                "{status} {body} hook {hook}"
            );
        }
    }
}

#[test]
fn an_empty_chunked_request_reaches_the_upstream_only_as_the_policy_allowed_it() {
    // Kong's host runs no body step for an empty body: a request with
    // `Transfer-Encoding: chunked` and no data is proxied as soon as the
    // request headers step continues. So the filter decides such a request
    // first as it would be without a body (docs/sideband-protocol.md).
    let mut r = post("/x", b"");
    r.body_mode = BodyMode::Chunked;

    // Hook off: allowed, with the policy's header, and the upstream's answer passes.
    let mut env = Env::new(
        |req: &Request| {
            let mut v = echo(req);
            v["headers"]
                .as_array_mut()
                .unwrap()
                .push(json!({"x-gate": "yes"}));
            Response::json(200, &v)
        },
        json!({"enable_response_hook": false}),
    );
    let resp = env.send(r.clone());
    assert_eq!(resp.status, 200, "{:?}", env.logs());
    let calls = env.pdp.request_payloads();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["body"], "");
    let up = env.upstream.requests();
    assert_eq!(up.len(), 1);
    assert_eq!(req_header(&up[0], "x-gate"), vec!["yes"]);

    // Denied: the upstream is never reached, hook on or off.
    for hook in [false, true] {
        let mut env = Env::new(
            reply(
                200,
                r#"{"response":{"response_code":403,"headers":[],"body":"no"}}"#,
            ),
            json!({"enable_response_hook": hook}),
        );
        let resp = env.send(r.clone());
        assert_closed(&env, &resp, 403);
        assert_eq!(resp.body, b"no");
    }

    // Hook on and allowed: the host fetched the response itself, which the
    // policy cannot see: 502, the upstream's answer kept from the client.
    let mut env = Env::new(allow_all, json!({"enable_response_hook": true}));
    env.upstream.set_behaviour(|_r| {
        Some(
            Response::new(200)
                .with_header("Set-Cookie", "s=1")
                .with_body("secret"),
        )
    });
    let resp = env.send(r.clone());
    assert_eq!(resp.status, 502);
    assert!(resp.body.is_empty() && header(&resp, "set-cookie").is_none());
    assert_eq!(env.pdp.calls("/sideband/request").len(), 1);
    assert!(env.pdp.calls("/sideband/response").is_empty());
    assert!(env.log_contains("the response hook cannot run for this request"));

    // A chunked request with a body is decided twice: without it, then with it.
    let mut env = Env::new(allow_all, json!({"enable_response_hook": false}));
    let mut r = post("/x", br#"{"a":1}"#);
    r.body_mode = BodyMode::Chunked;
    let resp = env.send(r);
    assert_eq!(resp.status, 200);
    let bodies: Vec<Value> = env
        .pdp
        .request_payloads()
        .iter()
        .map(|p| p["body"].clone())
        .collect();
    assert_eq!(bodies, vec![json!(""), json!(r#"{"a":1}"#)]);
    assert_eq!(env.upstream.requests()[0].body, br#"{"a":1}"#);
}

#[test]
fn options_the_host_cannot_honour_are_accepted_and_logged_once() {
    let env = Env::new(
        allow_all,
        json!({"connection_keepAlive_ms": 120000, "verify_service_certificate": false}),
    );
    let configured: Vec<String> = env
        .logs()
        .into_iter()
        .filter(|l| l.contains("configured:"))
        .collect();
    assert_eq!(configured.len(), 1, "one line per configuration");
    assert!(configured[0].contains("connection_keepAlive_ms is not applied"));
    assert!(configured[0].contains("global wasm TLS settings"));
    let verify: Vec<String> = env
        .logs()
        .into_iter()
        .filter(|l| l.contains("verify_service_certificate=false is not applied"))
        .collect();
    assert_eq!(verify.len(), 1);
    assert!(!env.logs().join("\n").contains("s3cr3t"));
}

#[test]
fn a_punycode_host_that_trips_an_idna_debug_assertion_configures_without_a_trap() {
    // Found by the `url` fuzz target, which is built with debug assertions:
    // idna 1.1.0 asserts (`debug_assert_ne!` in uts46.rs, `is_bidi`) on this
    // label, a panic in such a build. The shipped `.wasm` has no debug
    // assertions: the ASCII host is taken as written and nothing traps.
    let host = "xn--1bcr-nnnnnnnnehkvan11nnnnnnnnn111nnnnnnnnnnnnn";
    let mut emu = bare_emulator();
    let config = json!({
        "service_url": format!("http://{host}"),
        "shared_secret": "s3cr3t",
        "secret_header_name": "CLIENT-TOKEN",
    });
    let added = emu.add_chain(
        service(1),
        route(),
        vec![FilterEntry {
            name: "ping_auth".into(),
            config: config.to_string().into_bytes(),
        }],
    );
    assert!(added.is_ok(), "{added:?}");
    assert_eq!(emu.stats().traps, 0);
    let announced = emu.logs().iter().any(|l| {
        l.message.starts_with(&format!(
            "configured: sideband http://{host}:80/sideband/request"
        ))
    });
    assert!(announced, "{:?}", emu.logs());
}
