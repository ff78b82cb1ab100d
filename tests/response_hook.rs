//! Response hook, end to end (docs/sideband-protocol.md#response-hook):
//! the filter calls the upstream itself, posts the response to
//! `/sideband/response` and answers with the policy's version.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use common::*;
use ping_auth_harness::emulator::{HostOptions, Route};
use ping_auth_harness::http::{Request, Response};
use serde_json::{json, Value};
use std::time::Duration;

/// A policy server whose `/sideband/response` reply is built by `edit` from
/// the echo of the upstream response.
fn on_response(
    edit: impl Fn(&Value, &mut Value) + Send + Sync + 'static,
) -> impl Fn(&Request) -> Response + Send + Sync {
    move |req: &Request| {
        if req.path().ends_with("/sideband/response") {
            let payload = req.json().unwrap();
            let mut r = echo_response(req);
            edit(&payload, &mut r);
            return Response::json(200, &r);
        }
        Response::json(200, &echo(req))
    }
}

fn set_upstream(env: &Env, status: u16, headers: &[(&str, &str)], body: &str) {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    let body = body.to_string();
    env.upstream.set_behaviour(move |_r| {
        let mut resp = Response::new(status).with_body(body.clone());
        for (n, v) in &headers {
            resp = resp.with_header(n.clone(), v.clone());
        }
        Some(resp)
    });
}

const SMART_HUB: &[(&str, &str)] = &[
    ("Content-Type", "application/json"),
    ("X-Powered-By", "SmartHub Server Supreme"),
    ("Date", "Mon, 07 Dec 2020 19:35:37 GMT"),
    ("Vary", "Accept"),
    ("Set-Cookie", "sid=1"),
];

#[test]
fn case41_response_payload() {
    let mut env = Env::new(allow_all, json!({}));
    set_upstream(&env, 200, SMART_HUB, r#"{"a":1}"#);
    let resp = env.send(get("/devices"));
    assert_eq!(resp.status, 200);
    let p = &env.pdp.response_payloads()[0];
    assert_eq!(p["response_code"], "200");
    assert_eq!(p["response_status"], "OK");
    assert_eq!(p["body"], "{\"a\":1}");
    assert_eq!(p["method"], "GET");
    assert_eq!(p["url"], "http://kong:8000/devices");
    assert_eq!(p["http_version"], "1.1");
    let h = payload_headers(p);
    for name in [
        "content-type",
        "x-powered-by",
        "date",
        "vary",
        "set-cookie",
        "content-length",
    ] {
        assert!(h.iter().any(|(n, _)| n == name), "{name} in {h:?}");
    }
    assert_eq!(
        resp.upstream_requests, 0,
        "Kong did not proxy: the filter did"
    );
    assert_eq!(env.upstream.requests().len(), 1);
}

#[test]
fn case42_response_status_table() {
    let mut env = Env::new(allow_all, json!({}));
    for (code, text) in [
        (201, ""),
        (429, "TOO MANY REQUESTS"),
        (403, ""),
        (404, "NOT FOUND"),
        (503, "SERVICE UNAVAILABLE"),
    ] {
        set_upstream(&env, code, &[], "{}");
        let resp = env.send(get("/s"));
        assert_eq!(
            resp.status, code,
            "the echo policy keeps the upstream status"
        );
        let p = env.pdp.response_payloads().pop().unwrap();
        assert_eq!(p["response_code"], code.to_string());
        assert_eq!(p["response_status"], text);
    }
}

#[test]
fn case43_policy_response_replaces_upstream() {
    let mut env = Env::new(
        on_response(|_p, r| {
            *r = json!({"response_code": "200", "headers": [{"content-type": "application/json"}], "body": "{}"});
        }),
        json!({}),
    );
    set_upstream(&env, 200, SMART_HUB, r#"{"a":1}"#);
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"{}");
    assert_eq!(header(&resp, "content-length"), Some("2"));
    assert!(header(&resp, "x-powered-by").is_none());
    assert!(header(&resp, "set-cookie").is_none());
    assert_eq!(header(&resp, "date"), Some("Mon, 07 Dec 2020 19:35:37 GMT"));
    assert_eq!(header(&resp, "vary"), Some("Accept"));
}

#[test]
fn case44_45_status_and_missing_body() {
    let mut env = Env::new(
        on_response(|_p, r| r["response_code"] = "403".into()),
        json!({}),
    );
    set_upstream(&env, 200, &[], "ok");
    assert_eq!(env.send(get("/")).status, 403);

    let mut env = Env::new(
        on_response(|_p, r| drop(r.as_object_mut().unwrap().remove("body"))),
        json!({}),
    );
    set_upstream(&env, 200, &[], "ok");
    let resp = env.send(get("/"));
    assert_eq!((resp.status, resp.body.len()), (200, 0));
    assert_eq!(header(&resp, "content-length"), Some("0"));
}

#[test]
fn case46_47_errors_carry_no_upstream_headers_rec() {
    let mut env = Env::new(
        on_response(|_p, r| drop(r.as_object_mut().unwrap().remove("headers"))),
        json!({}),
    );
    set_upstream(&env, 200, SMART_HUB, "{}");
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 502, "[REC] 502, Lua crashed into 500");
    assert!(header(&resp, "set-cookie").is_none() && header(&resp, "x-powered-by").is_none());

    let mut env = Env::new(
        |req: &Request| {
            if req.path().ends_with("/sideband/response") {
                Response::json(500, &json!({"message": "down"}))
            } else {
                Response::json(200, &echo(req))
            }
        },
        json!({}),
    );
    set_upstream(
        &env,
        302,
        &[("Set-Cookie", "sid=1"), ("Location", "/elsewhere")],
        "",
    );
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 502);
    assert!(
        header(&resp, "set-cookie").is_none(),
        "[REC] the Lua plugin leaked Set-Cookie"
    );
    assert!(header(&resp, "location").is_none());
}

#[test]
fn case48_payload_shows_policy_method_and_query() {
    let mut env = Env::new(
        |req: &Request| {
            if req.path().ends_with("/sideband/response") {
                return Response::json(200, &echo_response(req));
            }
            let mut v = echo(req);
            v["method"] = "PUT".into();
            v["url"] = "http://kong:8000/v2/other?y=2".into();
            Response::json(200, &v)
        },
        json!({}),
    );
    env.send(get("/orig?x=1"));
    assert_eq!(env.upstream.last_request().unwrap().target, "/v2/other?y=2");
    let p = &env.pdp.response_payloads()[0];
    assert_eq!(p["method"], "PUT");
    assert_eq!(
        p["url"], "http://kong:8000/orig?y=2",
        "original path, new query (as Lua)"
    );
}

#[test]
fn case49_request_context_is_the_original_request() {
    let mut env = Env::new(
        |req: &Request| {
            if req.path().ends_with("/sideband/response") {
                return Response::json(200, &echo_response(req));
            }
            let mut v = echo(req);
            v["headers"]
                .as_array_mut()
                .unwrap()
                .push(json!({"x-added": "1"}));
            v["body"] = "changed".into();
            Response::json(200, &v)
        },
        json!({}),
    );
    env.send(post("/p", b"original"));
    let sent = env.pdp.request_payloads()[0].clone();
    let r = &env.pdp.response_payloads()[0];
    assert_eq!(r["request"], sent);
    assert_eq!(r["request"]["body"], "original");
    assert!(!payload_headers(&r["request"])
        .iter()
        .any(|(n, _)| n == "x-added"));
}

#[test]
fn policy_body_is_byte_exact_with_multi_valued_headers() {
    for body in ["{\"redacted\":true}", "ends with newline\n", "", "ümlaut"] {
        let b = body.to_string();
        let mut env = Env::new(
            on_response(move |_p, r| {
                r["body"] = b.clone().into();
                r["headers"] = json!([{"set-cookie": "a=1"}, {"set-cookie": "b=2"}, {"content-type": "text/plain"}]);
            }),
            json!({}),
        );
        let resp = env.send(get("/"));
        assert_eq!(resp.body, body.as_bytes(), "no trailing LF added");
        assert_eq!(
            header(&resp, "content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(header_all(&resp, "set-cookie"), ["a=1", "b=2"]);
    }
}

/// The upstream's single-slot headers (`Date`, `Server`, `ETag`, a relative
/// `Location`...) reach the client once, with their values, through the
/// policy's reply.
#[test]
fn builtin_response_headers_of_the_policy_reply_reach_the_client_once() {
    let mut env = Env::new(on_response(|_p, _r| {}), json!({}));
    set_upstream(
        &env,
        200,
        &[
            ("Date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("Server", "upstream/1.0"),
            ("ETag", "\"abc\""),
            ("Location", "/next"),
            ("Last-Modified", "Tue, 20 Oct 2015 07:28:00 GMT"),
            ("Accept-Ranges", "bytes"),
        ],
        "body",
    );
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"body");
    assert_single_headers(
        &resp,
        &[
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("etag", "\"abc\""),
            ("location", "/next"),
            ("last-modified", "Tue, 20 Oct 2015 07:28:00 GMT"),
            ("accept-ranges", "bytes"),
        ],
    );
    assert_eq!(header_all(&resp, "server").len(), 1, "{:?}", resp.headers);
    assert!(!env.log_contains("cannot add new"), "{:?}", env.logs());
}

#[test]
fn upstream_failures_are_502_or_504() {
    let mut env = Env::new(allow_all, json!({"upstream_timeout_ms": 300}));
    env.upstream.set_behaviour(|_r| {
        Some(
            Response::new(200)
                .with_body("late")
                .with_delay(Duration::from_millis(1500)),
        )
    });
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 504);
    assert!(env.log_contains("Upstream call to"));
    assert_eq!(env.pdp.calls("/sideband/response").len(), 0);

    let closed = closed_port();
    let pdp = Pdp::start(allow_all);
    let (mut emu, chain) = emulator(
        HostOptions::default(),
        service(closed),
        route(),
        config(pdp.port(), json!({})).to_string().into_bytes(),
    );
    let resp = emu.send(chain, get("/"));
    assert_eq!(resp.status, 502);
}

#[test]
fn response_hook_413_and_429_relayed() {
    let mut env = Env::new(
        |req: &Request| {
            if req.path().ends_with("/sideband/response") {
                Response::json(413, &json!({"message": "response too large"}))
            } else {
                Response::json(200, &echo(req))
            }
        },
        json!({}),
    );
    set_upstream(&env, 200, &[("Set-Cookie", "s=1")], "{}");
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 413);
    assert_eq!(header(&resp, "content-type"), Some("application/json"));
    assert!(header(&resp, "set-cookie").is_none());

    let mut env = Env::new(
        |req: &Request| {
            if req.path().ends_with("/sideband/response") {
                Response::new(429).with_header("retry-after", "3")
            } else {
                Response::json(200, &echo(req))
            }
        },
        json!({}),
    );
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 429);
    assert_eq!(header(&resp, "retry-after"), Some("3"));
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 429, "back-off applies to both calls");
    assert_eq!(env.pdp.calls("/sideband/request").len(), 1);
}

#[test]
fn sizes_content_length_chunked_and_limit() {
    let mut env = Env::new(allow_all, json!({"max_response_body_bytes": 200000}));
    let resp = env.send(get("/bytes/150000"));
    assert_eq!((resp.status, resp.body.len()), (200, 150000));
    let resp = env.send(get("/chunked/bytes/100000"));
    assert_eq!((resp.status, resp.body.len()), (200, 100000));
    assert_eq!(
        env.pdp.response_payloads()[1]["body"]
            .as_str()
            .unwrap()
            .len(),
        100000
    );

    let resp = env.send(get("/bytes/250000"));
    assert_eq!(
        resp.status, 502,
        "over the limit: 502, never a truncated body"
    );
    assert!(resp.body.is_empty());
    assert!(env.log_contains("exceeds max_response_body_bytes"));

    let mut env = Env::new(allow_all, json!({}));
    assert_eq!(
        env.send(get("/bytes/1048576")).status,
        200,
        "1 MiB default limit is inclusive"
    );
    assert_eq!(env.send(get("/bytes/1048577")).status, 502);
}

#[test]
fn kong_routing_strip_path_service_path_preserve_host() {
    let pdp = Pdp::start(allow_all);
    let upstream = upstream();
    for hook in [true, false] {
        let mut svc = service(upstream.addr().port());
        svc.path = Some("/api".into());
        let r = Route {
            paths: vec!["/public".into()],
            strip_path: true,
            preserve_host: true,
            ..route()
        };
        let cfg = config(pdp.port(), json!({"enable_response_hook": hook}))
            .to_string()
            .into_bytes();
        let (mut emu, chain) = emulator(HostOptions::default(), svc, r, cfg);
        let resp = emu.send(chain, get("/public/items?x=1"));
        assert_eq!(resp.status, 200);
        let up = upstream.last_request().unwrap();
        assert_eq!(up.target, "/api/items?x=1", "hook {hook}");
        assert_eq!(
            req_header(&up, "host"),
            ["kong:8000"],
            "preserve_host (hook {hook})"
        );
        // The policy provider sees the client-facing URL.
        assert_eq!(
            pdp.request_payloads().last().unwrap()["url"],
            "http://kong:8000/public/items?x=1"
        );
    }
}

#[test]
fn plain_host_uses_upstream_url_or_fails_closed() {
    let pdp = Pdp::start(allow_all);
    let upstream = upstream();
    let plain = plain_host();

    let cfg = config(pdp.port(), json!({})).to_string().into_bytes();
    let (mut emu, chain) = emulator(plain.clone(), service(upstream.addr().port()), route(), cfg);
    let resp = emu.send(chain, get("/x"));
    assert_eq!(resp.status, 500);
    assert_eq!(resp.upstream_requests, 0);
    assert!(emu
        .logs()
        .iter()
        .any(|l| l.message.contains("upstream_url is not configured")));

    let cfg = config(
        pdp.port(),
        json!({"upstream_url": format!("http://127.0.0.1:{}", upstream.addr().port())}),
    )
    .to_string()
    .into_bytes();
    let (mut emu, chain) = emulator(plain, service(upstream.addr().port()), route(), cfg);
    let resp = emu.send(chain, get("/x?y=1"));
    assert_eq!(resp.status, 200);
    assert_eq!(upstream.last_request().unwrap().target, "/x?y=1");
}

#[test]
fn hook_off_means_no_response_call_and_no_self_call() {
    let mut env = Env::new(allow_all, json!({"enable_response_hook": false}));
    set_upstream(&env, 200, SMART_HUB, "{}");
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.upstream_requests, 1, "Kong proxied");
    assert!(env.pdp.calls("/sideband/response").is_empty());
    assert_eq!(
        header(&resp, "x-powered-by"),
        Some("SmartHub Server Supreme"),
        "response untouched"
    );
}

#[test]
fn https_upstream_uses_tls() {
    let pki = ping_auth_harness::certs::TestPki::generate().unwrap();
    let pdp = Pdp::start(allow_all);
    let upstream = ping_auth_harness::upstream::Upstream::start(
        "127.0.0.1:0",
        Some(pki.server_config().unwrap()),
    )
    .unwrap();
    let opts = HostOptions {
        tls_trusted_certificate: Some(pki.ca_cert_path.clone()),
        ..HostOptions::default()
    };
    let mut svc = service(upstream.addr().port());
    svc.protocol = "https".into();
    svc.host = "localhost".into();
    let cfg = config(pdp.port(), json!({})).to_string().into_bytes();
    let (mut emu, chain) = emulator(opts, svc, route(), cfg);
    let resp = emu.send(chain, get("/secure"));
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.upstream_requests, 0,
        "the filter called the upstream itself"
    );
    let up = upstream.last_request().unwrap();
    assert!(up.tls, "the response hook's upstream call used TLS");
    assert_eq!(up.target, "/secure");
}
