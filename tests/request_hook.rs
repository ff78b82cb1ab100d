//! Request hook, end to end: docs/sideband-protocol.md#request-payload and
//! docs/sideband-protocol.md#decisions (with the fixes listed in
//! docs/sideband-protocol.md#differences-from-the-lua-plugin), through the built
//! `.wasm` in the Kong-like host emulator against a scripted policy server and
//! an echo upstream.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use common::*;
use ping_auth_harness::emulator::{BodyMode, ClientResponse, HostOptions, HttpVersion};
use ping_auth_harness::http::{Request, Response};
use serde_json::{json, Value};
use std::time::Duration;

/// Both ways an allowed request reaches the upstream: Kong proxies it
/// (response hook off) and the filter calls it itself (response hook on).
const MODES: [bool; 2] = [false, true];

fn mode(hook: bool) -> Value {
    json!({ "enable_response_hook": hook })
}

/// An allow reply built from the request payload by `edit`.
fn allow_with(
    edit: impl Fn(&mut Value) + Send + Sync + 'static,
) -> impl Fn(&Request) -> Response + Send + Sync {
    move |req: &Request| {
        if req.path().ends_with("/sideband/response") {
            return Response::json(200, &echo_response(req));
        }
        let mut v = echo(req);
        edit(&mut v);
        Response::json(200, &v)
    }
}

#[test]
fn case04_vault_reference_accepted_and_flagged() {
    // Kong resolves `{vault://...}` before a Lua plugin sees it; if the filter
    // receives one, nothing resolved it: accepted, and said loudly.
    let env = Env::new(
        allow_all,
        json!({"shared_secret": "{vault://env/paz-secret}"}),
    );
    assert!(env.log_contains("unresolved Kong vault reference"));
    assert!(
        !env.log_contains("paz-secret}\""),
        "the reference is not echoed"
    );
}

// --- Sideband request composition -------------------------------------------------

#[test]
fn case05_get_payload() {
    let mut env = Env::new(allow_all, json!({}));
    let resp = env.send(get("/a/b"));
    assert_eq!(resp.status, 200);
    let p = &env.pdp.request_payloads()[0];
    assert_eq!(p["source_ip"], "10.0.0.5");
    assert_eq!(p["source_port"], "40000", "source_port is a string");
    assert_eq!(p["method"], "GET");
    assert_eq!(p["url"], "http://kong:8000/a/b");
    assert_eq!(p["body"], "");
    assert_eq!(p["http_version"], "1.1");
    assert!(p.get("client_certificate").is_none());
    assert_eq!(
        payload_headers(p),
        vec![
            ("host".into(), "kong:8000".into()),
            ("user-agent".into(), "curl/8.5.0".into()),
            ("accept".into(), "*/*".into())
        ]
    );
}

#[test]
fn case06_https_443_port_is_explicit() {
    let mut env = Env::new(allow_all, json!({}));
    let mut r = get("/x");
    r.tls = true;
    r.server_port = 443;
    r.headers[0].1 = b"api.example".to_vec();
    env.send(r);
    assert_eq!(
        env.pdp.request_payloads()[0]["url"],
        "https://api.example:443/x"
    );
}

#[test]
fn case07_query_normalised_in_original_order() {
    let mut env = Env::new(allow_all, json!({}));
    env.send(get("/q?b=2&a=1+2&a=3&flag&=x"));
    assert_eq!(
        env.pdp.request_payloads()[0]["url"],
        "http://kong:8000/q?b=2&a=1%202&a=3&flag"
    );
}

#[test]
fn case08_query_capped_at_100_args() {
    let mut env = Env::new(allow_all, json!({}));
    let q: Vec<String> = (0..150).map(|i| format!("k{i}={i}")).collect();
    env.send(get(&format!("/q?{}", q.join("&"))));
    let url = env.pdp.request_payloads()[0]["url"]
        .as_str()
        .unwrap()
        .to_string();
    let query = url.split_once('?').unwrap().1;
    assert_eq!(query.split('&').count(), 100);
}

#[test]
fn case09_repeated_headers_one_object_per_value() {
    let mut env = Env::new(allow_all, json!({}));
    env.send(with_header(with_header(get("/"), "X-M", "1"), "X-M", "2"));
    let h = payload_headers(&env.pdp.request_payloads()[0]);
    let xm: Vec<&(String, String)> = h.iter().filter(|(n, _)| n == "x-m").collect();
    assert_eq!(
        xm,
        vec![
            &("x-m".to_string(), "1".to_string()),
            &("x-m".to_string(), "2".to_string())
        ]
    );
}

/// `get("/")` plus `extra` headers `X-H<i>: v`.
fn with_headers(extra: usize) -> ping_auth_harness::emulator::ClientRequest {
    let mut r = get("/");
    for i in 0..extra {
        r.headers.push((format!("X-H{i}"), b"v".to_vec()));
    }
    r
}

#[test]
fn case10_requests_with_more_headers_than_the_host_shows_are_refused() {
    // Kong's host hands a filter at most 100 header pairs, the 4 request
    // pseudo-headers included (NGX_HTTP_WASM_MAX_REQ_HEADERS), and drops the
    // rest, which nginx still proxies. A full map may hide headers: 431, so
    // the upstream never gets a header the policy provider did not see.
    for hook in [false, true] {
        let mut env = Env::new(allow_all, json!({"enable_response_hook": hook}));
        for total in [96, 123] {
            let resp = env.send(with_headers(total - 3));
            assert_eq!(resp.status, 431, "{total} headers, hook {hook}");
            assert!(resp.body.is_empty());
        }
        assert!(env.pdp.requests().is_empty(), "no sideband call");
        assert!(env.upstream.requests().is_empty(), "no upstream call");
        assert!(env.log_contains("96 or more headers"), "{:?}", env.logs());

        // 95 headers: every one reaches the policy provider and the upstream.
        let resp = env.send(with_headers(92));
        assert_eq!(resp.status, 200, "hook {hook}");
        let sent = payload_headers(&env.pdp.request_payloads()[0]);
        assert_eq!(sent.len(), 95);
        assert_eq!(sent[3], ("x-h0".to_string(), "v".to_string()), "in order");
        let up = &env.upstream.requests()[0];
        assert_eq!(req_header(up, "x-h91"), vec!["v"]);
    }
}

#[test]
fn case11_body_sent_and_large_body_omitted() {
    let mut env = Env::new(allow_all, json!({"enable_response_hook": false}));
    let resp = env.send(post("/p", br#"{"amount":5}"#));
    assert_eq!(resp.status, 200);
    assert_eq!(env.pdp.request_payloads()[0]["body"], "{\"amount\":5}");
    // 9 KiB with Kong's default client_body_buffer_size (8k): spooled, not readable.
    let big = vec![b'a'; 9 * 1024];
    let resp = env.send(post("/p", &big));
    assert_eq!(resp.status, 200, "still authorised, as in Lua");
    let p = &env.pdp.request_payloads()[1];
    assert!(
        p.get("body").is_none(),
        "no body key for an unreadable body"
    );
    assert_eq!(
        env.upstream.last_request().unwrap().body.len(),
        9 * 1024,
        "original body forwarded"
    );
    assert!(env.log_contains("cannot be read"));
}

#[test]
fn case12_http10_version() {
    let mut env = Env::new(allow_all, json!({}));
    let mut r = get("/");
    r.version = HttpVersion::Http10;
    env.send(r);
    assert_eq!(env.pdp.request_payloads()[0]["http_version"], "1");
}

#[test]
fn case13_http2_is_authorised_rec() {
    // Lua answered 400 to HTTP/2; the reason (no response buffering in
    // Kong < 3.9) does not apply to this filter.
    let mut env = Env::new(allow_all, json!({}));
    let mut r = get("/h2");
    r.version = HttpVersion::Http2;
    r.body_mode = BodyMode::NoLength;
    let resp = env.send(r);
    assert_eq!(resp.status, 200);
    assert_eq!(env.pdp.request_payloads()[0]["http_version"], "2");
}

#[test]
fn case14_client_certificate_jwk() {
    let pem = std::fs::read_to_string("tests/fixtures/certs/rsa-chain.pem").unwrap();
    let expected: Value = serde_json::from_str(
        &std::fs::read_to_string("tests/fixtures/certs/rsa-leaf.expected.json").unwrap(),
    )
    .unwrap();
    let mut env = Env::new(allow_all, json!({}));
    let mut r = get("/mtls");
    r.tls = true;
    r.server_port = 8443;
    r.client_cert_pem = Some(pem);
    env.send(r);
    let p = &env.pdp.request_payloads()[0];
    assert_eq!(p["client_certificate"], expected);
    assert_eq!(p["client_certificate"]["x5c"].as_array().unwrap().len(), 1);

    let ec = std::fs::read_to_string("tests/fixtures/certs/ec-p256.pem").unwrap();
    let mut r = get("/mtls");
    r.tls = true;
    r.client_cert_pem = Some(ec);
    env.send(r);
    let p = &env.pdp.request_payloads()[1];
    assert_eq!(p["client_certificate"]["kty"], "EC");
    assert_eq!(p["client_certificate"]["crv"], "P-256");

    let mut r = get("/mtls");
    r.tls = true;
    r.client_cert_pem =
        Some("-----BEGIN CERTIFICATE-----\nnot a cert\n-----END CERTIFICATE-----\n".into());
    let resp = env.send(r);
    assert_eq!(resp.status, 400);
    assert_eq!(
        env.pdp.request_payloads().len(),
        2,
        "no sideband call for a bad certificate"
    );
    assert!(env.log_contains("Failed to parse client certificate"));
}

#[test]
fn case15_sideband_http_request() {
    let mut env = Env::new(allow_all, json!({}));
    env.send(get("/"));
    let call = &env.pdp.requests()[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.target, "/sideband/request");
    assert_eq!(
        call.header_str("host").unwrap(),
        format!("127.0.0.1:{}", env.pdp.port())
    );
    assert_eq!(call.header_str("content-type").unwrap(), "application/json");
    assert_eq!(call.header_str("client-token").unwrap(), "s3cr3t");
    assert!(call
        .header_str("user-agent")
        .unwrap()
        .starts_with("ping_auth-wasm/"));
    assert_eq!(
        call.header_str("content-length").unwrap(),
        call.body.len().to_string()
    );

    for (base, expected) in [
        ("/base", "/base/sideband/request"),
        ("/base/", "/base/sideband/request"),
        ("/base?x=1", "/base/sideband/request?x=1"),
    ] {
        let mut env = Env::with_config(allow_all, |pdp_port| {
            let mut c = config(pdp_port, json!({}));
            c["service_url"] = format!("http://127.0.0.1:{pdp_port}{base}").into();
            c
        });
        env.send(get("/"));
        assert_eq!(env.pdp.requests()[0].target, expected);
    }
}

#[test]
fn case16_forwarded_headers_of_untrusted_clients_are_ignored() {
    // The url's scheme, host and port come from Kong's forwarded_* values,
    // which honour X-Forwarded-* only from `trusted_ips` (none by default).
    let mut env = Env::new(allow_all, json!({}));
    let r = with_header(
        with_header(
            with_header(get("/p"), "X-Forwarded-Proto", "https"),
            "X-Forwarded-Host",
            "pub.example",
        ),
        "X-Forwarded-Port",
        "9443",
    );
    env.send(r.clone());
    assert_eq!(env.pdp.request_payloads()[0]["url"], "http://kong:8000/p");

    // From a client in Kong's trusted_ips, Kong's forwarded values are used.
    let opts = HostOptions {
        trusted_ips: vec!["10.0.0.5".parse().unwrap()],
        ..HostOptions::default()
    };
    let mut env = Env::with(opts, route(), allow_all, json!({}));
    env.send(r);
    assert_eq!(
        env.pdp.request_payloads()[0]["url"],
        "https://pub.example:9443/p"
    );
}

#[test]
fn non_utf8_bytes_never_break_json() {
    for hook in MODES {
        let mut env = Env::new(allow_all, mode(hook));
        let mut r = post("/bin", &[0xff, 0xfe, b'a', 0x00, b'"']);
        r.headers.push(("X-Bin".into(), vec![b'v', 0xe9]));
        let resp = env.send(r);
        assert_eq!(resp.status, 200);
        let call = &env.pdp.requests()[0];
        let p: Value = serde_json::from_slice(&call.body).expect("valid JSON");
        assert_eq!(p["body"], "\u{ff}\u{fe}a\u{0}\"");
        assert!(payload_headers(&p).contains(&("x-bin".into(), "v\u{e9}".into())));
        // The echo keeps the body's original bytes upstream.
        let up = env.upstream.last_request().unwrap();
        assert_eq!(up.body, vec![0xff, 0xfe, b'a', 0x00, b'"'], "hook {hook}");
        // Kong forwards header bytes as received; the filter's own call can
        // only send text (the SDK's dispatch API), so there the byte 0xE9 is
        // sent as the UTF-8 of U+00E9.
        let expected: &[u8] = if hook {
            "vé".as_bytes()
        } else {
            &[b'v', 0xe9]
        };
        assert_eq!(up.header("x-bin").unwrap(), expected, "hook {hook}");
    }
}

// --- Allow replies (directives) -----------------------------------------------------

/// What the upstream gets for a client's `Accept-Encoding`: removed by the
/// response hook's own call; with the hook off the host cannot remove a
/// request header from a request it proxies (docs/emulator.md, "Request
/// headers and what is proxied"), so the filter sets it to `identity`.
fn accept_encoding_upstream(hook: bool) -> Vec<&'static str> {
    if hook {
        vec![]
    } else {
        vec!["identity"]
    }
}

/// What the upstream gets for a header the policy removed: nothing with the
/// response hook; with the hook off, the line emptied in place (the closest
/// the host allows).
fn removed_upstream(hook: bool) -> Vec<&'static str> {
    if hook {
        vec![]
    } else {
        vec![""]
    }
}

#[test]
fn case17_echo_forwards_unchanged_minus_accept_encoding() {
    for hook in MODES {
        let mut env = Env::new(allow_all, mode(hook));
        let r = with_header(
            with_header(post("/a/b?x=1", b"{\"k\":1}"), "Accept-Encoding", "gzip"),
            "X-Keep",
            "yes",
        );
        let resp = env.send(r);
        assert_eq!(resp.status, 200, "hook {hook}");
        let up = env.upstream.last_request().expect("upstream called");
        assert_eq!(up.method, "POST");
        assert_eq!(up.target, "/a/b?x=1");
        assert_eq!(up.body, b"{\"k\":1}");
        assert_eq!(req_header(&up, "x-keep"), ["yes"]);
        assert_eq!(
            req_header(&up, "accept-encoding"),
            accept_encoding_upstream(hook),
            "hook {hook}"
        );
        assert_eq!(
            resp.upstream_requests,
            if hook { 0 } else { 1 },
            "who proxied (hook {hook})"
        );
    }
}

#[test]
fn case18_19_20_header_add_remove_reorder() {
    for hook in MODES {
        let mut env = Env::new(
            allow_with(|v| {
                let mut h: Vec<Value> = v["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|o| o.get("authorization").is_none() && o.get("x-m").is_none())
                    .cloned()
                    .collect();
                h.push(json!({"x-user": "alice"}));
                h.push(json!({"X-M": "2"}));
                h.push(json!({"x-m": "1"}));
                v["headers"] = Value::Array(h);
            }),
            mode(hook),
        );
        let r = with_header(
            with_header(
                with_header(get("/"), "Authorization", "Bearer t"),
                "X-M",
                "1",
            ),
            "X-M",
            "2",
        );
        assert_eq!(env.send(r).status, 200);
        let up = env.upstream.last_request().unwrap();
        assert_eq!(req_header(&up, "x-user"), ["alice"], "hook {hook}");
        assert_eq!(
            req_header(&up, "authorization"),
            removed_upstream(hook),
            "hook {hook}"
        );
        if hook {
            assert_eq!(req_header(&up, "x-m"), ["2", "1"]);
        } else {
            // The client sent X-M twice: the host replaces only the first
            // line of a proxied request; the second keeps its value (warned).
            assert_eq!(req_header(&up, "x-m"), ["2", "2", "1"]);
            assert!(env.log_contains("request header 'x-m' came 2 times"));
            assert!(env.log_contains("cannot remove from a request it proxies"));
        }
    }
}

/// Seen on a real build of Kong's host: with the hook off, a remove-then-add
/// of `Authorization` is refused (`cannot add new "Authorization" builtin
/// request header`) and the upstream gets the client's token.
#[test]
fn replaced_builtin_request_headers_reach_the_upstream_with_the_policy_value() {
    for hook in MODES {
        let mut env = Env::new(
            allow_with(|v| {
                for h in v["headers"].as_array_mut().unwrap() {
                    if let Some(o) = h.as_object_mut() {
                        if o.contains_key("authorization") {
                            o.insert("authorization".into(), json!("Bearer exchanged"));
                        }
                        if o.contains_key("user-agent") {
                            o.insert("user-agent".into(), json!("policy/1"));
                        }
                    }
                }
            }),
            mode(hook),
        );
        let resp = env.send(with_header(get("/"), "Authorization", "Bearer client"));
        assert_eq!(resp.status, 200);
        let up = env.upstream.last_request().unwrap();
        assert_eq!(
            req_header(&up, "authorization"),
            ["Bearer exchanged"],
            "hook {hook}"
        );
        assert_eq!(req_header(&up, "user-agent"), ["policy/1"], "hook {hook}");
        assert!(!env.log_contains("cannot add new"), "{:?}", env.logs());
    }
}

#[test]
fn case21_accept_encoding_removed_even_if_policy_keeps_it() {
    for hook in MODES {
        let mut env = Env::new(
            allow_with(|v| {
                v["headers"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"accept-encoding": "br"}))
            }),
            mode(hook),
        );
        env.send(with_header(get("/"), "Accept-Encoding", "gzip"));
        let up = env.upstream.last_request().unwrap();
        assert_eq!(
            req_header(&up, "accept-encoding"),
            accept_encoding_upstream(hook),
            "hook {hook}"
        );
    }
}

#[test]
fn case22_method_change_and_bad_method() {
    for hook in MODES {
        let mut env = Env::new(allow_with(|v| v["method"] = "PUT".into()), mode(hook));
        assert_eq!(env.send(get("/m")).status, 200);
        assert_eq!(
            env.upstream.last_request().unwrap().method,
            "PUT",
            "hook {hook}"
        );
    }
    let mut env = Env::new(allow_with(|v| v["method"] = "put".into()), json!({}));
    let resp = env.send(get("/m"));
    assert_eq!(
        resp.status, 502,
        "[REC] malformed reply is 502, Lua crashed into 500"
    );
    assert!(env.upstream.requests().is_empty());
    assert!(env.log_contains("'method'"));
}

#[test]
fn case23_url_path_query_host_scheme() {
    for hook in MODES {
        let (env, _) = send_with_url(hook, "http://kong:8000/v2/x?y=2", "/a/b?x=1");
        assert_eq!(
            env.upstream.last_request().unwrap().target,
            "/v2/x?y=2",
            "hook {hook}"
        );

        let (env, _) = send_with_url(hook, "http://kong:8000/a/b", "/a/b?x=1");
        assert_eq!(
            env.upstream.last_request().unwrap().target,
            "/a/b",
            "query removed (hook {hook})"
        );

        let (env, _) = send_with_url(hook, "http://other:8443/a", "/a");
        let up = env.upstream.last_request().unwrap();
        assert_eq!(
            req_header(&up, "host"),
            ["other:8443"],
            "Host changed, same target (hook {hook})"
        );

        let (env, resp) = send_with_url(hook, "https://kong:8000/a", "/a");
        assert_eq!(resp.status, 200);
        assert!(env.log_contains("not supported. (\"http\" => \"https\")"));
    }
}

/// Sends `GET <target>`, allowed with the policy's `url` set to `url`.
fn send_with_url(hook: bool, url: &'static str, target: &str) -> (Env, ClientResponse) {
    let mut env = Env::new(allow_with(move |v| v["url"] = url.into()), mode(hook));
    let resp = env.send(get(target));
    (env, resp)
}

#[test]
fn case24_body_change_clear_keep_null() {
    // Body changes reach the upstream through the response hook's own call.
    let mut env = Env::new(allow_with(|v| v["body"] = "{\"k\":2}".into()), json!({}));
    env.send(post("/b", b"{\"k\":1}"));
    let up = env.upstream.last_request().unwrap();
    assert_eq!(up.body, b"{\"k\":2}");
    assert_eq!(up.header_str("content-length").unwrap(), "7");

    let mut env = Env::new(
        allow_with(|v| drop(v.as_object_mut().unwrap().remove("body"))),
        json!({}),
    );
    env.send(post("/b", b"{\"k\":1}"));
    assert!(
        env.upstream.last_request().unwrap().body.is_empty(),
        "omitted body clears it"
    );

    for hook in MODES {
        let mut env = Env::new(
            allow_with(|v| drop(v.as_object_mut().unwrap().remove("body"))),
            mode(hook),
        );
        assert_eq!(
            env.send(get("/b")).status,
            200,
            "empty original + omitted body: untouched (hook {hook})"
        );
    }

    let mut env = Env::new(allow_with(|v| v["body"] = Value::Null), json!({}));
    assert_eq!(env.send(post("/b", b"x")).status, 502);
    assert!(env.upstream.requests().is_empty());

    // With the hook off Kong's host cannot set a request body from a dispatch
    // callback (it traps); the filter refuses deliberately instead.
    let mut env = Env::new(
        allow_with(|v| v["body"] = "changed".into()),
        json!({"enable_response_hook": false}),
    );
    let resp = env.send(post("/b", b"x"));
    assert_eq!(resp.status, 502);
    assert!(env.upstream.requests().is_empty());
    assert!(env.log_contains("enable_response_hook"));
}

#[test]
fn case25_headers_missing_or_empty() {
    let mut env = Env::new(
        allow_with(|v| drop(v.as_object_mut().unwrap().remove("headers"))),
        json!({}),
    );
    assert_eq!(env.send(get("/")).status, 502);
    assert!(env.upstream.requests().is_empty());
    assert!(env.log_contains("'headers' is missing"));

    for hook in MODES {
        let mut env = Env::new(allow_with(|v| v["headers"] = json!([])), mode(hook));
        assert_eq!(env.send(with_header(get("/"), "X-Gone", "1")).status, 200);
        let up = env.upstream.last_request().unwrap();
        assert_eq!(
            req_header(&up, "x-gone"),
            removed_upstream(hook),
            "hook {hook}"
        );
        assert_eq!(
            req_header(&up, "user-agent"),
            removed_upstream(hook),
            "hook {hook}"
        );
    }
}

#[test]
fn case26_unsupported_field_warns() {
    let mut env = Env::new(
        allow_with(|v| drop(v.as_object_mut().unwrap().remove("source_ip"))),
        json!({}),
    );
    assert_eq!(env.send(get("/")).status, 200);
    assert!(env.log_contains("(\"10.0.0.5\" => \"nil\")"));
}

// --- Deny replies ---------------------------------------------------------------------

fn deny(resp: Value) -> impl Fn(&Request) -> Response + Send + Sync {
    move |_req: &Request| Response::json(200, &json!({ "response": resp }))
}

#[test]
fn case27_deny() {
    let mut env = Env::new(
        deny(
            json!({"response_code": "403", "headers": [{"Content-Type": "text/plain"}], "body": "no"}),
        ),
        json!({}),
    );
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 403);
    assert_eq!(resp.body, b"no", "byte for byte, no trailing LF");
    assert_eq!(header(&resp, "content-type"), Some("text/plain"));
    assert_eq!(header(&resp, "content-length"), Some("2"));
    assert!(env.upstream.requests().is_empty());
    assert_eq!(
        env.pdp.calls("/sideband/response").len(),
        0,
        "no response phase after a deny"
    );
}

#[test]
fn case28_deny_variants() {
    let mut env = Env::new(
        deny(json!({"response_code": "401", "headers": []})),
        json!({}),
    );
    let resp = env.send(get("/"));
    assert_eq!((resp.status, resp.body.len()), (401, 0));
    assert_eq!(header(&resp, "content-length"), Some("0"));

    let mut env = Env::new(
        deny(json!({"response_code": "403", "body": "x"})),
        json!({}),
    );
    assert_eq!(
        env.send(get("/")).status,
        502,
        "[REC] missing headers: 502, not 500"
    );

    let mut env = Env::new(
        deny(json!({"response_code": "abc", "headers": []})),
        json!({}),
    );
    assert_eq!(env.send(get("/")).status, 502);

    let mut env = Env::new(
        deny(json!({"response_code": 200, "headers": [], "body": "synthetic ok"})),
        json!({}),
    );
    let resp = env.send(get("/"));
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, &b"synthetic ok"[..])
    );
    assert!(env.upstream.requests().is_empty());
}

#[test]
fn case29_deny_multi_valued_headers() {
    let mut env = Env::new(
        deny(
            json!({"response_code": "302", "headers": [{"set-cookie": "a=1"}, {"Set-Cookie": "b=2"}, {"location": "/login"}], "body": ""}),
        ),
        json!({}),
    );
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 302);
    assert_eq!(header_all(&resp, "set-cookie"), ["a=1", "b=2"]);
    assert_eq!(header(&resp, "location"), Some("/login"));
}

/// Headers nginx keeps in one slot each (`headers_out`): on Kong's host a
/// remove-then-add drops them, so the filter must leave them as the local
/// response set them.
#[test]
fn deny_builtin_headers_reach_the_client_with_their_values() {
    let mut env = Env::new(
        deny(json!({"response_code": "401", "headers": [
            {"WWW-Authenticate": "Bearer realm=\"api\""},
            {"Location": "/login"},
            {"ETag": "\"v1\""},
            {"Expires": "Thu, 01 Jan 1970 00:00:00 GMT"},
            {"Last-Modified": "Wed, 21 Oct 2015 07:28:00 GMT"},
            {"Date": "Wed, 21 Oct 2015 07:28:00 GMT"},
            {"Content-Encoding": "identity"},
            {"Cache-Control": "no-store"},
            {"Cache-Control": "private"},
            {"Set-Cookie": "a=1"},
            {"Set-Cookie": "b=2"},
        ], "body": "login first"})),
        json!({}),
    );
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 401);
    assert_eq!(resp.body, b"login first");
    assert_single_headers(
        &resp,
        &[
            ("www-authenticate", "Bearer realm=\"api\""),
            ("location", "/login"),
            ("etag", "\"v1\""),
            ("expires", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
            ("content-encoding", "identity"),
        ],
    );
    assert_eq!(header_all(&resp, "cache-control"), ["no-store", "private"]);
    assert_eq!(header_all(&resp, "set-cookie"), ["a=1", "b=2"]);
    assert!(!env.log_contains("cannot add new"), "{:?}", env.logs());
}

#[test]
fn a_builtin_header_given_twice_is_sent_once_with_the_last_value_and_a_warning() {
    let mut env = Env::new(
        deny(json!({"response_code": "302", "headers": [
            {"Location": "/first"},
            {"Location": "/second"},
            {"WWW-Authenticate": "Basic"},
            {"WWW-Authenticate": "Bearer"},
        ], "body": ""})),
        json!({}),
    );
    let resp = env.send(get("/"));
    assert_eq!(resp.status, 302);
    assert_eq!(header_all(&resp, "location"), ["/second"]);
    assert_eq!(header_all(&resp, "www-authenticate"), ["Bearer"]);
    let warned = |name: &str| {
        env.emu.logs().iter().any(|l| {
            l.level == ping_auth_harness::emulator::LogLevel::Warn
                && l.message.contains(&format!("'{name}'"))
                && l.message.contains("only once")
        })
    };
    assert!(
        warned("location") && warned("www-authenticate"),
        "{:?}",
        env.logs()
    );
    assert!(!env.log_contains("cannot add new"), "{:?}", env.logs());
}

#[test]
fn case30_state_or_request_reaches_response_hook() {
    let mut env = Env::new(allow_with(|v| v["state"] = "S1".into()), json!({}));
    env.send(get("/s"));
    let r = &env.pdp.response_payloads()[0];
    assert_eq!(r["state"], "S1");
    assert!(r.get("request").is_none());

    let mut env = Env::new(allow_all, json!({}));
    env.send(get("/s"));
    let sent = env.pdp.request_payloads()[0].clone();
    let r = &env.pdp.response_payloads()[0];
    assert_eq!(r["request"], sent);
    assert!(r.get("state").is_none());
}

#[test]
fn state_is_returned_byte_for_byte() {
    let raw = r#"{"n": 1.50, "s": "a\/b", "l": []}"#;
    let mut env = Env::new(
        move |req: &Request| {
            if req.path().ends_with("/sideband/response") {
                return Response::json(200, &echo_response(req));
            }
            let text = echo(req).to_string();
            let text = format!("{},\"state\":{raw}}}", text.strip_suffix('}').unwrap());
            Response::new(200)
                .with_header("content-type", "application/json")
                .with_body(text)
        },
        json!({}),
    );
    env.send(get("/s"));
    let body = String::from_utf8(env.pdp.calls("/sideband/response")[0].body.clone()).unwrap();
    assert!(body.contains(&format!("\"state\":{raw}")), "{body}");
}

// --- Logging -----------------------------------------------------------------------

#[test]
fn case50_debug_dumps_redact_secret_and_credentials() {
    let mut env = Env::new(allow_all, json!({"enable_debug_logging": true}));
    // An upstream that does not echo the request back in its body.
    env.upstream
        .set_behaviour(|_r| Some(Response::json(200, &json!({"ok": true}))));
    env.send(with_header(
        with_header(get("/"), "Authorization", "Bearer tok"),
        "Cookie",
        "sid=9",
    ));
    let logs = env.logs().join("\n");
    assert!(logs.contains("Sending sideband request to policy provider"));
    assert!(logs.contains("Received sideband response from policy provider"));
    assert!(!logs.contains("s3cr3t"), "shared secret never logged");
    for l in env
        .logs()
        .iter()
        .filter(|l| l.contains("Bearer tok") || l.contains("sid=9"))
    {
        eprintln!("LEAK: {l}");
    }
    assert!(
        !logs.contains("Bearer tok") && !logs.contains("sid=9"),
        "credentials redacted"
    );
}

#[test]
fn case51_no_debug_dumps_by_default() {
    let mut env = Env::new(
        allow_with(|v| drop(v.as_object_mut().unwrap().remove("source_ip"))),
        json!({}),
    );
    env.send(get("/"));
    let logs = env.logs().join("\n");
    assert!(!logs.contains("Sending sideband request"));
    assert!(logs.contains("not supported"), "warnings still logged");
    assert!(!logs.contains("s3cr3t"));
}

// --- Concurrency ---------------------------------------------------------------------

#[test]
fn case52_overlapping_requests_keep_their_own_state() {
    let mut env = Env::new(
        |req: &Request| {
            if req.path().ends_with("/sideband/response") {
                let v = req.json().unwrap();
                let mut r = echo_response(req);
                r["headers"] = json!([{"x-state": v["state"]}]);
                return Response::json(200, &r);
            }
            let mut v = echo(req);
            let path = v["url"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_string();
            v["state"] = format!("state-of-{path}").into();
            // The first request's decision arrives last.
            let delay = if path == "first" { 300 } else { 0 };
            Response::json(200, &v).with_delay(Duration::from_millis(delay))
        },
        json!({}),
    );
    let a = env.emu.start(env.chain, get("/first"));
    let b = env.emu.start(env.chain, get("/second"));
    let rb = env.emu.finish(b);
    let ra = env.emu.finish(a);
    assert_eq!(header(&ra, "x-state"), Some("state-of-first"));
    assert_eq!(header(&rb, "x-state"), Some("state-of-second"));
}

#[test]
fn plain_proxy_wasm_host_applies_path_query_host_through_headers() {
    // Without Kong's properties the filter rewrites `:path` and `host`.
    let mut env = Env::with(
        plain_host(),
        route(),
        allow_with(|v| {
            v["url"] = "http://other:9000/v2/x?y=2".into();
            v["method"] = "PUT".into();
            v["headers"]
                .as_array_mut()
                .unwrap()
                .push(json!({"x-user": "alice"}));
        }),
        json!({"enable_response_hook": false}),
    );
    assert_eq!(env.send(get("/a?b=1")).status, 200);
    let up = env.upstream.last_request().unwrap();
    assert_eq!(up.method, "PUT");
    assert_eq!(up.target, "/v2/x?y=2");
    assert_eq!(req_header(&up, "host"), ["other:9000"]);
    assert_eq!(req_header(&up, "x-user"), ["alice"]);
}

#[test]
fn plain_host_path_with_non_utf8_bytes_does_not_trap() {
    // nginx's `:path` is the decoded $uri: `%FF` is a raw 0xFF byte there.
    let mut env = Env::with(
        plain_host(),
        route(),
        allow_with(|v| v["url"] = "http://kong:8000/x%FF?changed=1".into()),
        json!({"enable_response_hook": false}),
    );
    let resp = env.send(get("/x%FF?a=1"));
    assert!(!resp.trapped, "reading :path must not trap");
    assert_eq!(resp.status, 200);
    assert!(env
        .upstream
        .last_request()
        .unwrap()
        .target
        .ends_with("?changed=1"));
}

#[test]
fn second_values_of_single_value_headers_never_trap() {
    // nginx keeps one entry for headers such as User-Agent and Content-Type
    // and refuses a second one: no trap, one value kept.
    let mut env = Env::new(
        allow_with(|v| {
            let h = v["headers"].as_array_mut().unwrap();
            h.push(json!({"user-agent": "second"}));
        }),
        json!({"enable_response_hook": false}),
    );
    let resp = env.send(get("/"));
    assert!(!resp.trapped);
    assert_eq!(resp.status, 200);
    // A single-slot header gets one value, the policy's last, replaced in place
    // (a remove-then-add would be refused by the host and keep the client's).
    assert_eq!(
        req_header(&env.upstream.last_request().unwrap(), "user-agent"),
        ["second"]
    );
    assert!(env.log_contains("can send only once"));
    assert!(!env.log_contains("cannot add new"));

    let mut env = Env::new(
        |_r: &Request| {
            Response::json(
                200,
                &json!({"response": {"response_code": "403", "headers": [{"content-type": "text/plain"}, {"content-type": "text/html"}], "body": "no"}}),
            )
        },
        json!({}),
    );
    let resp = env.send(get("/"));
    assert!(!resp.trapped);
    assert_eq!((resp.status, resp.body.as_slice()), (403, &b"no"[..]));
    assert_eq!(header_all(&resp, "content-type").len(), 1);
}
